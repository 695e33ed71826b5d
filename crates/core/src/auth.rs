//! Bearer API keys for `/v1`: stored as SHA-256 hashes, each scoped to one tenant.

use crate::{api_error::ApiError, config::ApiKeyConfig};
use axum::{
    extract::{Request, State},
    http::header,
    middleware::Next,
    response::Response,
};
use sha2::{Digest, Sha256};
use std::{collections::HashMap, sync::Arc};
use subtle::ConstantTimeEq;

/// The tenant a request acts for, set by [`require_api_key`] as a request extension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant(pub String);

/// The configured keys, indexed by hash.
#[derive(Debug, Clone, Default)]
pub struct ApiKeys {
    by_hash: Arc<HashMap<[u8; 32], (String, String)>>,
}

impl ApiKeys {
    /// Indexes the configured keys. Invalid hashes are rejected by config validation first.
    pub fn new(keys: &[ApiKeyConfig]) -> Self {
        let by_hash = keys
            .iter()
            .filter_map(|k| {
                let mut hash = [0u8; 32];
                hex::decode_to_slice(&k.sha256, &mut hash).ok()?;
                Some((hash, (k.name.clone(), k.tenant.clone())))
            })
            .collect();
        Self {
            by_hash: Arc::new(by_hash),
        }
    }

    /// Returns the tenant of a presented key.
    pub fn tenant_of(&self, presented: &str) -> Option<&str> {
        let hash: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        // The map lookup is on a hash of the key, so its timing reveals nothing useful
        // about the key; the final compare is constant-time anyway.
        let (stored, (_, tenant)) = self.by_hash.get_key_value(&hash)?;
        bool::from(stored.ct_eq(&hash)).then_some(tenant.as_str())
    }
}

/// Middleware: answers 401 unless `Authorization: Bearer <key>` names a configured key.
pub async fn require_api_key(
    State(keys): State<ApiKeys>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| {
            ApiError::unauthorized("missing_api_key", "send Authorization: Bearer <api key>")
        })?;
    let tenant = keys
        .tenant_of(presented)
        .ok_or_else(|| ApiError::unauthorized("invalid_api_key", "the API key is not valid"))?;
    request.extensions_mut().insert(Tenant(tenant.to_string()));
    Ok(next.run(request).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_match_by_hash_and_scope_to_tenant() {
        let hash = hex::encode(Sha256::digest(b"omnigate-dev-key"));
        let keys = ApiKeys::new(&[ApiKeyConfig {
            name: "dev".into(),
            tenant: "default".into(),
            sha256: hash,
        }]);
        assert_eq!(keys.tenant_of("omnigate-dev-key"), Some("default"));
        assert_eq!(keys.tenant_of("omnigate-dev-kez"), None);
        assert_eq!(keys.tenant_of(""), None);
    }
}

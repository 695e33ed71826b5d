//! Standard Webhooks signatures: `v1,` + base64 HMAC-SHA256 over `id.timestamp.body`,
//! keyed by the base64-decoded part of a `whsec_` secret.

use base64::{Engine as _, engine::general_purpose::STANDARD};
use hmac::{Hmac, Mac};
use sha2::Sha256;

const PREFIX: &str = "whsec_";

/// A secret that is not `whsec_` followed by base64.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("a webhook secret is `whsec_` followed by base64 of at least 24 bytes")]
pub struct InvalidSecret;

/// An endpoint's signing key, parsed from its `whsec_…` form.
#[derive(Clone)]
pub struct SigningKey {
    bytes: Vec<u8>,
    /// HMAC keyed with `bytes`, cloned for each signature: keying hashes the key's
    /// padded blocks, the same for every message.
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(redacted)")
    }
}

impl SigningKey {
    /// A new random key of 32 bytes (the spec asks for 24 to 64).
    pub fn generate() -> Self {
        let mut bytes = Vec::with_capacity(32);
        bytes.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
        bytes.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
        Self::from_bytes(bytes)
    }

    fn from_bytes(bytes: Vec<u8>) -> Self {
        // HMAC takes keys of any length, so this cannot fail.
        let mac = <Hmac<Sha256> as Mac>::new_from_slice(&bytes)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        Self { bytes, mac }
    }

    /// Parses `whsec_<base64>`.
    pub fn parse(secret: &str) -> Result<Self, InvalidSecret> {
        let encoded = secret.strip_prefix(PREFIX).ok_or(InvalidSecret)?;
        let bytes = STANDARD.decode(encoded).map_err(|_| InvalidSecret)?;
        if bytes.len() < 24 {
            return Err(InvalidSecret);
        }
        Ok(Self::from_bytes(bytes))
    }

    /// The `whsec_…` form given to the endpoint's owner.
    pub fn to_secret(&self) -> String {
        format!("{PREFIX}{}", STANDARD.encode(&self.bytes))
    }

    /// `v1,<base64 signature>` of one message.
    pub fn sign(&self, webhook_id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut mac = self.mac.clone();
        mac.update(webhook_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

/// How far a `webhook-timestamp` may be from now, either way, when verifying (the
/// reference libraries' five minutes).
pub const TOLERANCE_SECS: i64 = 300;

impl SigningKey {
    /// True if any `v1,` entry of `header` signs (`webhook_id`, `timestamp`, `body`)
    /// with this key (constant-time compare) and `timestamp` is within
    /// [`TOLERANCE_SECS`] of `now`.
    pub fn verify(
        &self,
        webhook_id: &str,
        timestamp: i64,
        body: &[u8],
        header: &str,
        now: i64,
    ) -> bool {
        if (now - timestamp).abs() > TOLERANCE_SECS {
            return false;
        }
        header.split(' ').any(|entry| {
            let Some(encoded) = entry.strip_prefix("v1,") else {
                return false;
            };
            let Ok(signature) = STANDARD.decode(encoded) else {
                return false;
            };
            let mut mac = self.mac.clone();
            mac.update(webhook_id.as_bytes());
            mac.update(b".");
            mac.update(timestamp.to_string().as_bytes());
            mac.update(b".");
            mac.update(body);
            mac.verify_slice(&signature).is_ok()
        })
    }
}

/// The `webhook-signature` header: one signature per key, space-separated, so a
/// receiver that knows either the old or the new secret during a rotation accepts it.
pub fn signature_header<'a>(
    keys: impl IntoIterator<Item = &'a SigningKey>,
    webhook_id: &str,
    timestamp: i64,
    body: &[u8],
) -> String {
    keys.into_iter()
        .map(|key| key.sign(webhook_id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_standard_webhooks_test_vector() {
        let key = SigningKey::parse("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();
        let signature = key.sign(
            "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
            1649367553,
            br#"{"email":"test@example.com","username":"test_user"}"#,
        );
        assert_eq!(signature, "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=");
    }

    #[test]
    fn generated_secrets_round_trip_and_bad_ones_are_refused() {
        let key = SigningKey::generate();
        let secret = key.to_secret();
        assert!(secret.starts_with("whsec_"));
        let parsed = SigningKey::parse(&secret).unwrap();
        assert_eq!(parsed.sign("a", 1, b"x"), key.sign("a", 1, b"x"));
        assert!(SigningKey::parse("C2FVsBQIhrscChlQIMV").is_err());
        assert!(SigningKey::parse("whsec_!!!").is_err());
        assert!(SigningKey::parse("whsec_YWJj").is_err());
        assert_eq!(format!("{key:?}"), "SigningKey(redacted)");
    }

    #[test]
    fn verify_accepts_any_matching_entry_within_the_tolerance() {
        let (old, new) = (SigningKey::generate(), SigningKey::generate());
        let header = signature_header(&[new.clone(), old.clone()], "msg_1", 1000, b"{}");
        assert!(old.verify("msg_1", 1000, b"{}", &header, 1000));
        assert!(new.verify("msg_1", 1000, b"{}", &header, 1299));
        assert!(!new.verify("msg_1", 1000, b"{}", &header, 1301), "too old");
        assert!(
            !new.verify("msg_1", 1000, b"{ }", &header, 1000),
            "another body"
        );
        assert!(
            !new.verify("msg_2", 1000, b"{}", &header, 1000),
            "another id"
        );
        assert!(!SigningKey::generate().verify("msg_1", 1000, b"{}", &header, 1000));
    }

    #[test]
    fn rotation_sends_both_signatures() {
        let (old, new) = (SigningKey::generate(), SigningKey::generate());
        let header = signature_header(&[new.clone(), old.clone()], "msg_1", 7, b"{}");
        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(
            parts,
            [new.sign("msg_1", 7, b"{}"), old.sign("msg_1", 7, b"{}")]
        );
    }
}

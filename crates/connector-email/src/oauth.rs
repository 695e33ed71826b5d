//! OAuth2 access tokens for XOAUTH2, from a refresh token (the refresh-token grant at
//! the channel's token endpoint), cached until shortly before they expire.

use crate::config::OAuth2Config;
use secrecy::ExposeSecret as _;
use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

/// A token is refreshed this long before it expires, so a command started with it
/// never runs into its expiry.
const REFRESH_MARGIN: Duration = Duration::from_secs(120);

/// Why no access token could be had. Names what an operator should do.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The token endpoint could not be reached or answered 5xx: try again later.
    #[error("the token endpoint is unavailable: {0}")]
    Unavailable(String),
    /// The endpoint refused the refresh token (revoked, expired, unused for too long):
    /// an operator must issue a new one.
    #[error("the refresh token was refused ({0}); issue a new refresh token for this mailbox")]
    Refused(String),
}

/// Hands out access tokens for one channel.
#[derive(Debug)]
pub struct TokenSource {
    config: OAuth2Config,
    http: reqwest::Client,
    cached: Mutex<Option<(String, Instant)>>,
}

#[derive(serde::Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

impl TokenSource {
    /// A source for `config`, calling the endpoint with `http`.
    pub fn new(config: OAuth2Config, http: reqwest::Client) -> Self {
        Self {
            config,
            http,
            cached: Mutex::new(None),
        }
    }

    /// When the current token must be replaced, if one is cached.
    pub fn expires_at(&self) -> Option<Instant> {
        let cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        cached.as_ref().map(|(_, at)| *at)
    }

    /// Drops the cached token (the server refused it): the next call refreshes.
    pub fn forget(&self) {
        *self.cached.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// A valid access token: the cached one, or a fresh one.
    pub async fn access_token(&self) -> Result<String, TokenError> {
        {
            let cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((token, refresh_at)) = cached.as_ref()
                && Instant::now() < *refresh_at
            {
                return Ok(token.clone());
            }
        }
        let mut form = vec![
            ("grant_type", "refresh_token".to_string()),
            (
                "refresh_token",
                self.config.refresh_token.expose_secret().to_string(),
            ),
            ("client_id", self.config.client_id.clone()),
        ];
        if let Some(secret) = &self.config.client_secret {
            form.push(("client_secret", secret.expose_secret().to_string()));
        }
        if let Some(scope) = &self.config.scope {
            form.push(("scope", scope.clone()));
        }
        let response = self
            .http
            .post(self.config.token_url.clone())
            .form(&form)
            .send()
            .await
            .map_err(|e| TokenError::Unavailable(e.without_url().to_string()))?;
        let status = response.status();
        if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            return Err(TokenError::Unavailable(format!("HTTP {status}")));
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| TokenError::Unavailable(e.without_url().to_string()))?;
        if !status.is_success() {
            // The error body (`invalid_grant`, AADSTS codes) says why; it holds no secret.
            let detail = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
            return Err(TokenError::Refused(format!("HTTP {status}: {detail}")));
        }
        let token: TokenResponse = serde_json::from_slice(&body)
            .map_err(|e| TokenError::Refused(format!("unreadable token response: {e}")))?;
        let lifetime = Duration::from_secs(token.expires_in.unwrap_or(3600));
        let refresh_at = Instant::now() + lifetime.saturating_sub(REFRESH_MARGIN);
        *self.cached.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((token.access_token.clone(), refresh_at));
        Ok(token.access_token)
    }
}

//! One delivery attempt over HTTP: the signed POST, with the SSRF guard, no redirects,
//! a total timeout and a capped response body.

use crate::{
    retry::{AttemptEnd, parse_retry_after},
    signing::signature_header,
    ssrf::{AddressPolicy, GuardedResolver, Refused},
    store::Endpoint,
};
use bytes::Bytes;
use std::time::{Duration, Instant};

/// What an attempt produced.
#[derive(Debug, Clone)]
pub struct AttemptReport {
    /// How it ended.
    pub end: AttemptEnd,
    /// The start of the response body, at most the configured cap, as text.
    pub response_body: String,
    /// How long it took.
    pub duration: Duration,
}

/// The HTTP client deliveries go out through.
#[derive(Debug, Clone)]
pub struct WebhookClient {
    client: reqwest::Client,
    policy: AddressPolicy,
    body_cap: usize,
}

impl WebhookClient {
    /// A client whose attempts take at most `timeout` and keep `body_cap` response bytes.
    pub fn new(
        policy: AddressPolicy,
        timeout: Duration,
        body_cap: usize,
    ) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .dns_resolver(GuardedResolver::new(policy.clone()))
            .redirect(reqwest::redirect::Policy::none())
            // A proxy would dial on our behalf and bypass the address check.
            .no_proxy()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .pool_idle_timeout(Duration::from_secs(30))
            .user_agent(concat!("Omnigate-Webhooks/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            client,
            policy,
            body_cap,
        })
    }

    /// POSTs `body` to `endpoint`, signed with its current keys at `timestamp` (Unix s).
    pub async fn attempt(
        &self,
        endpoint: &Endpoint,
        webhook_id: &str,
        body: Bytes,
        timestamp: i64,
    ) -> AttemptReport {
        let started = Instant::now();
        let (end, response_body) = match self.post(endpoint, webhook_id, body, timestamp).await {
            Ok(answer) => answer,
            Err(end) => (end, String::new()),
        };
        AttemptReport {
            end,
            response_body,
            duration: started.elapsed(),
        }
    }

    async fn post(
        &self,
        endpoint: &Endpoint,
        webhook_id: &str,
        body: Bytes,
        timestamp: i64,
    ) -> Result<(AttemptEnd, String), AttemptEnd> {
        let url = url::Url::parse(&endpoint.url)
            .map_err(|e| AttemptEnd::ConnectionFailed(format!("invalid URL: {e}")))?;
        // Literal addresses never reach the resolver: check them here.
        let literal = match url.host() {
            Some(url::Host::Ipv4(ip)) => Some(std::net::IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => Some(std::net::IpAddr::V6(ip)),
            _ => None,
        };
        if let Some(ip) = literal {
            self.policy
                .check(&ip.to_string(), ip)
                .map_err(|refused| AttemptEnd::AddressRefused(refused.to_string()))?;
        }
        let keys = endpoint.signing_keys(timestamp.saturating_mul(1000));
        let signature = signature_header(&keys, webhook_id, timestamp, &body);
        let mut request = self
            .client
            .post(url)
            .header(http::header::CONTENT_TYPE, "application/json");
        for (name, value) in &endpoint.headers {
            request = request.header(name, value);
        }
        let mut response = request
            .header("webhook-id", webhook_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await
            .map_err(|e| classify(&e))?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, chrono::Utc::now()));
        let mut kept = Vec::new();
        // Read only what is kept; a huge or endless body must not hold the attempt.
        while kept.len() < self.body_cap {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    let room = self.body_cap - kept.len();
                    kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
                }
                Ok(None) | Err(_) => break,
            }
        }
        Ok((
            AttemptEnd::Answered {
                status,
                retry_after,
            },
            String::from_utf8_lossy(&kept).into_owned(),
        ))
    }
}

fn classify(error: &reqwest::Error) -> AttemptEnd {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    let mut chain = Vec::new();
    while let Some(err) = source {
        if let Some(refused) = err.downcast_ref::<Refused>() {
            return AttemptEnd::AddressRefused(refused.to_string());
        }
        chain.push(err.to_string());
        source = err.source();
    }
    if error.is_timeout() {
        AttemptEnd::TimedOut
    } else {
        chain.dedup();
        AttemptEnd::ConnectionFailed(chain.join(": "))
    }
}

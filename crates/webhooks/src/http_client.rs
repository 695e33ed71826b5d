//! One delivery attempt over HTTP: the signed POST, with the SSRF guard, no redirects,
//! a total timeout and a capped response body.
//!
//! Deliveries go out through hyper's own pooled client rather than reqwest's. On the
//! development machine reqwest cost about 30 us more CPU per request (its tower
//! layers clone each request for a possible retry and redirect, and convert the URL
//! again on every send), which was a third of the dispatcher's CPU per delivery.
//! The endpoint's URL and fixed headers are prepared once per endpoint ([`Target`]),
//! not once per attempt.

use crate::{
    retry::{AttemptEnd, parse_retry_after},
    signing::{SigningKey, signature_header},
    ssrf::{AddressPolicy, GuardedResolver, Refused},
    store::Endpoint,
};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, header};
use http_body_util::{BodyExt as _, Full};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioTimer},
};
use std::{
    sync::Arc,
    time::{Duration, Instant},
};

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

/// The HTTP client could not be built.
#[derive(Debug, thiserror::Error)]
#[error("webhook HTTP client: {0}")]
pub struct ClientError(#[from] rustls::Error);

/// An endpoint as the client sends to it: its URL parsed and checked, its fixed
/// headers and its signing keys, made once when the dispatcher reads the endpoints.
#[derive(Debug, Clone)]
pub struct Target {
    /// The URL, or why no attempt can reach it (invalid, or a refused literal address).
    uri: Result<http::Uri, AttemptEnd>,
    /// `content-type`, `user-agent` and the endpoint's own headers.
    headers: HeaderMap,
    /// The current signing key.
    key: Option<SigningKey>,
    /// The key before the last rotation, and when it stops signing (Unix ms).
    previous_key: Option<(SigningKey, i64)>,
}

impl Target {
    /// The keys that sign at `now` (Unix ms): the current one, and the previous one
    /// during the rotation overlap.
    fn signing_keys(&self, now: i64) -> impl Iterator<Item = &SigningKey> {
        let previous = self
            .previous_key
            .as_ref()
            .filter(|(_, until)| now < *until)
            .map(|(key, _)| key);
        self.key.iter().chain(previous)
    }
}

type Connector = hyper_rustls::HttpsConnector<HttpConnector<GuardedResolver>>;

/// The HTTP client deliveries go out through; cheap to clone.
#[derive(Debug, Clone)]
pub struct WebhookClient {
    client: Client<Connector, Full<Bytes>>,
    policy: AddressPolicy,
    timeout: Duration,
    body_cap: usize,
}

impl WebhookClient {
    /// A client whose attempts take at most `timeout` and keep `body_cap` response bytes.
    pub fn new(
        policy: AddressPolicy,
        timeout: Duration,
        body_cap: usize,
    ) -> Result<Self, ClientError> {
        // Every address it dials comes from the guarded resolver (a literal address in
        // a URL is checked by `target`); there is no proxy that could dial for us.
        let mut http = HttpConnector::new_with_resolver(GuardedResolver::new(policy.clone()));
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(timeout.min(Duration::from_secs(5))));
        let tls = tls_config()?;
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        // Redirects are never followed: hyper's client does not follow them.
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_timer(TokioTimer::new())
            .build(https);
        Ok(Self {
            client,
            policy,
            timeout,
            body_cap,
        })
    }

    /// Prepares `endpoint` for attempts: parses its URL, checks a literal address
    /// against the policy (names are checked by the resolver when dialled), and builds
    /// its fixed headers and keys.
    pub fn target(&self, endpoint: &Endpoint) -> Target {
        let mut headers = HeaderMap::with_capacity(8 + endpoint.headers.len());
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(
            header::USER_AGENT,
            HeaderValue::from_static(concat!("Omnigate-Webhooks/", env!("CARGO_PKG_VERSION"))),
        );
        let mut invalid_header = None;
        for (name, value) in &endpoint.headers {
            match (
                HeaderName::try_from(name.as_str()),
                HeaderValue::try_from(value.as_str()),
            ) {
                (Ok(name), Ok(value)) => {
                    headers.append(name, value);
                }
                _ => invalid_header = Some(name.clone()),
            }
        }
        let uri = match invalid_header {
            // The API refuses such headers; one stored before is reported on each attempt.
            Some(name) => Err(AttemptEnd::ConnectionFailed(format!(
                "invalid header {name:?} in the endpoint's headers"
            ))),
            None => self.checked_uri(&endpoint.url),
        };
        // hyper's client formats `host` for every request that has none (2% of the
        // dispatcher's samples); it is the same for every attempt to this endpoint.
        if let Some(host) = uri.as_ref().ok().and_then(host_header) {
            headers.entry(header::HOST).or_insert(host);
        }
        let key = SigningKey::parse(&endpoint.secret).ok();
        let previous_key = SigningKey::parse(&endpoint.previous_secret)
            .ok()
            .map(|key| (key, endpoint.previous_secret_until));
        Target {
            uri,
            headers,
            key,
            previous_key,
        }
    }

    fn checked_uri(&self, url: &str) -> Result<http::Uri, AttemptEnd> {
        let parsed = url::Url::parse(url)
            .map_err(|e| AttemptEnd::ConnectionFailed(format!("invalid URL: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(AttemptEnd::ConnectionFailed(format!(
                "invalid URL: the scheme is {}, not http or https",
                parsed.scheme()
            )));
        }
        // Literal addresses never reach the resolver: check them here.
        let literal = match parsed.host() {
            Some(url::Host::Ipv4(ip)) => Some(std::net::IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => Some(std::net::IpAddr::V6(ip)),
            _ => None,
        };
        if let Some(ip) = literal {
            self.policy
                .check(&ip.to_string(), ip)
                .map_err(|refused| AttemptEnd::AddressRefused(refused.to_string()))?;
        }
        // The WHATWG form (`url` has percent-encoded and normalized it) is a valid URI.
        http::Uri::try_from(parsed.as_str())
            .map_err(|e| AttemptEnd::ConnectionFailed(format!("invalid URL: {e}")))
    }

    /// POSTs `body` to `target`, signed with its keys at `timestamp` (Unix s).
    pub async fn attempt(
        &self,
        target: &Target,
        webhook_id: &str,
        body: Bytes,
        timestamp: i64,
    ) -> AttemptReport {
        let started = Instant::now();
        let post = self.post(target, webhook_id, body, timestamp);
        let (end, response_body) = match tokio::time::timeout(self.timeout, post).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(end)) => (end, String::new()),
            Err(_) => (AttemptEnd::TimedOut, String::new()),
        };
        AttemptReport {
            end,
            response_body,
            duration: started.elapsed(),
        }
    }

    async fn post(
        &self,
        target: &Target,
        webhook_id: &str,
        body: Bytes,
        timestamp: i64,
    ) -> Result<(AttemptEnd, String), AttemptEnd> {
        let uri = target.uri.clone()?;
        let keys = target.signing_keys(timestamp.saturating_mul(1000));
        let signature = signature_header(keys, webhook_id, timestamp, &body);
        let mut request = http::Request::new(Full::new(body));
        *request.method_mut() = http::Method::POST;
        *request.uri_mut() = uri;
        let headers = request.headers_mut();
        headers.clone_from(&target.headers);
        for (name, value) in [
            ("webhook-id", webhook_id.to_string()),
            ("webhook-timestamp", timestamp.to_string()),
            ("webhook-signature", signature),
        ] {
            let value = HeaderValue::try_from(value)
                .map_err(|e| AttemptEnd::ConnectionFailed(format!("{name}: {e}")))?;
            headers.insert(HeaderName::from_static(name), value);
        }
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| classify(&e))?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, chrono::Utc::now()));
        let mut kept = Vec::new();
        let mut body = response.into_body();
        // Read only what is kept; a huge or endless body must not hold the attempt.
        while kept.len() < self.body_cap {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Some(chunk) = frame.data_ref() {
                        let room = self.body_cap - kept.len();
                        kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
                    }
                }
                None | Some(Err(_)) => break,
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

/// The `host` header for `uri`, as hyper's client would make it: the host, and the
/// port unless it is the scheme's default.
fn host_header(uri: &http::Uri) -> Option<HeaderValue> {
    let host = uri.host()?;
    let default_port = match uri.scheme_str() {
        Some("https") => 443,
        _ => 80,
    };
    let value = match uri.port_u16() {
        Some(port) if port != default_port => format!("{host}:{port}"),
        _ => host.to_string(),
    };
    HeaderValue::try_from(value).ok()
}

/// TLS as reqwest does it: rustls with the platform's certificate verifier.
fn tls_config() -> Result<rustls::ClientConfig, rustls::Error> {
    use rustls_platform_verifier::BuilderVerifierExt as _;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_platform_verifier()?
        .with_no_client_auth())
}

fn classify(error: &hyper_util::client::legacy::Error) -> AttemptEnd {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    let mut chain = Vec::new();
    while let Some(err) = source {
        if let Some(refused) = err.downcast_ref::<Refused>() {
            return AttemptEnd::AddressRefused(refused.to_string());
        }
        chain.push(err.to_string());
        source = err.source();
    }
    chain.dedup();
    AttemptEnd::ConnectionFailed(chain.join(": "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(url: &str) -> Endpoint {
        Endpoint {
            id: "ep_1".into(),
            tenant: "acme".into(),
            url: url.into(),
            description: String::new(),
            events: vec![],
            filters: Default::default(),
            headers: Default::default(),
            rate_limit: 0,
            ordered: false,
            enabled: true,
            disabled_reason: String::new(),
            secret: SigningKey::generate().to_secret(),
            previous_secret: SigningKey::generate().to_secret(),
            previous_secret_until: 2_000,
            failing_since: 0,
            created_at: 0,
            updated_at: 0,
        }
    }

    fn client() -> WebhookClient {
        WebhookClient::new(AddressPolicy::default(), Duration::from_secs(1), 64).unwrap()
    }

    #[test]
    fn targets_check_literal_addresses_and_schemes_once() {
        let client = client();
        let refused = client.target(&endpoint("http://127.0.0.1:9/hook")).uri;
        assert!(
            matches!(&refused, Err(AttemptEnd::AddressRefused(why)) if why.contains("loopback")),
            "{refused:?}"
        );
        let mapped = client.target(&endpoint("http://[::ffff:10.0.0.1]/")).uri;
        assert!(
            matches!(mapped, Err(AttemptEnd::AddressRefused(_))),
            "{mapped:?}"
        );
        let scheme = client.target(&endpoint("ftp://example.com/")).uri;
        assert!(
            matches!(scheme, Err(AttemptEnd::ConnectionFailed(_))),
            "{scheme:?}"
        );
        let public = client
            .target(&endpoint("https://example.com/hooks?a=1"))
            .uri;
        assert_eq!(public.unwrap().to_string(), "https://example.com/hooks?a=1");
    }

    #[test]
    fn the_previous_key_signs_only_until_its_overlap_ends() {
        let target = client().target(&endpoint("https://example.com/"));
        assert_eq!(target.signing_keys(1_999).count(), 2);
        assert_eq!(target.signing_keys(2_000).count(), 1);
    }

    #[test]
    fn an_invalid_stored_header_fails_each_attempt_with_its_name() {
        let mut bad = endpoint("https://example.com/");
        bad.headers.insert("bad header".into(), "x".into());
        let uri = client().target(&bad).uri;
        assert!(
            matches!(&uri, Err(AttemptEnd::ConnectionFailed(why)) if why.contains("bad header")),
            "{uri:?}"
        );
    }

    /// An https endpoint is spoken to in TLS: what reaches the server first is a TLS
    /// handshake record, and a server that answers in plain HTTP fails the attempt.
    #[tokio::test]
    async fn https_endpoints_get_a_tls_handshake() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut first = [0u8; 3];
            socket.read_exact(&mut first).await.unwrap();
            let _ = socket.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").await;
            first
        });
        let policy = AddressPolicy::new(vec!["127.0.0.0/8".parse().unwrap()]);
        let client = WebhookClient::new(policy, Duration::from_secs(5), 64).unwrap();
        let target = client.target(&endpoint(&format!("https://127.0.0.1:{port}/hook")));
        let report = client
            .attempt(&target, "msg_1", Bytes::from_static(b"{}"), 1_000)
            .await;
        // 0x16: a TLS handshake record; 0x03: TLS's major version.
        assert_eq!(server.await.unwrap()[..2], [0x16, 0x03]);
        assert!(
            matches!(&report.end, AttemptEnd::ConnectionFailed(_)),
            "{:?}",
            report.end
        );
    }
}

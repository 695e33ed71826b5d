//! One delivery attempt over HTTP: the signed POST, with the SSRF guard, no redirects,
//! a total timeout and a capped response body.
//!
//! Deliveries go out over hyper's HTTP/1.1 connections, kept alive in a small pool of
//! our own, rather than through reqwest or hyper-util's pooled client: reqwest's tower
//! layers clone each request for a possible retry and redirect and convert the URL
//! again on every send; hyper-util's client builds and moves a connect future of
//! several kilobytes for every request, races it against its pool, and spawns a task
//! per request to return the connection. At tens of thousands of deliveries a second
//! both cost more than the delivery itself. The endpoint's URL and fixed headers are
//! prepared once per endpoint ([`Target`]), not once per attempt.

use crate::{
    retry::{AttemptEnd, parse_retry_after},
    signing::{SigningKey, signature_header},
    ssrf::{AddressPolicy, GuardedResolver, Refused},
    store::Endpoint,
};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, header};
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1;
use hyper_util::client::legacy::connect::HttpConnector;
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
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
    /// Where the URL leads, or why no attempt can reach it (invalid, or a refused
    /// literal address).
    destination: Result<Destination, AttemptEnd>,
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

/// An endpoint's URL as the client uses it.
#[derive(Debug, Clone)]
struct Destination {
    /// The whole URL, which the connector dials.
    uri: http::Uri,
    /// Its path and query: the request line's target on a direct connection.
    path: http::Uri,
    /// Scheme, host and port: the connections kept for one may serve the others.
    origin: Arc<str>,
    /// The `host` header: the host, and the port unless it is the scheme's default.
    host: HeaderValue,
}

type Connector = hyper_rustls::HttpsConnector<HttpConnector<GuardedResolver>>;

/// A kept-alive HTTP/1.1 connection: requests go through it one at a time.
type Connection = http1::SendRequest<Full<Bytes>>;

/// How long a connection may stay idle before it is closed instead of reused.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// The most idle connections kept per origin; more are closed as they free up.
const IDLE_PER_ORIGIN: usize = 256;

/// A connection kept for reuse, and since when it is idle.
type IdleConnection = (Connection, Instant);

/// Idle connections by origin, the most recently used last.
#[derive(Debug, Default)]
struct IdleConnections(Mutex<HashMap<Arc<str>, Vec<IdleConnection>>>);

impl IdleConnections {
    /// The most recently used connection to `origin` that is still open and fresh.
    fn take(&self, origin: &str) -> Option<Connection> {
        let mut idle = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let kept = idle.get_mut(origin)?;
        let now = Instant::now();
        while let Some(candidate) = kept.pop() {
            if is_fresh(&candidate, now) {
                return Some(candidate.0);
            }
        }
        None
    }

    fn put(&self, origin: &Arc<str>, connection: Connection) {
        let mut idle = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let kept = idle.entry(Arc::clone(origin)).or_default();
        let now = Instant::now();
        // The oldest come first: only when one is stale is the list swept.
        if kept
            .first()
            .is_some_and(|(_, since)| now.duration_since(*since) >= IDLE_TIMEOUT)
        {
            kept.retain(|kept| is_fresh(kept, now));
        }
        if kept.len() < IDLE_PER_ORIGIN {
            kept.push((connection, now));
        }
    }

    /// Closes the connections idle too long, for every origin: an origin no attempt
    /// goes to any more would otherwise keep its connections open.
    fn close_stale(&self) {
        let mut idle = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        idle.retain(|_, kept| {
            kept.retain(|kept| is_fresh(kept, now));
            !kept.is_empty()
        });
    }
}

/// Whether a kept connection may still be used at `now`.
fn is_fresh((connection, since): &IdleConnection, now: Instant) -> bool {
    !connection.is_closed() && now.duration_since(*since) < IDLE_TIMEOUT
}

/// The HTTP client deliveries go out through; cheap to clone.
#[derive(Debug, Clone)]
pub struct WebhookClient {
    connector: Connector,
    idle: Arc<IdleConnections>,
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
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        // Redirects are never followed: a connection sends one request per attempt.
        Ok(Self {
            connector,
            idle: Arc::default(),
            policy,
            timeout,
            body_cap,
        })
    }

    /// Closes kept connections that have been idle for longer than 30 s.
    pub fn close_stale_connections(&self) {
        self.idle.close_stale();
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
        let destination = match invalid_header {
            // The API refuses such headers; one stored before is reported on each attempt.
            Some(name) => Err(AttemptEnd::ConnectionFailed(format!(
                "invalid header {name:?} in the endpoint's headers"
            ))),
            None => self.checked_uri(&endpoint.url).and_then(destination),
        };
        if let Ok(destination) = &destination {
            // Unless the endpoint sets its own.
            headers
                .entry(header::HOST)
                .or_insert(destination.host.clone());
        }
        let key = SigningKey::parse(&endpoint.secret).ok();
        let previous_key = SigningKey::parse(&endpoint.previous_secret)
            .ok()
            .map(|key| (key, endpoint.previous_secret_until));
        Target {
            destination,
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
        let destination = target.destination.as_ref().map_err(Clone::clone)?;
        let keys = target.signing_keys(timestamp.saturating_mul(1000));
        let signature = signature_header(keys, webhook_id, timestamp, &body);
        let mut request = http::Request::new(Full::new(body));
        *request.method_mut() = http::Method::POST;
        *request.uri_mut() = destination.path.clone();
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
        let (connection, response) = self.send(destination, request).await?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, chrono::Utc::now()));
        let mut kept = Vec::new();
        let mut body = response.into_body();
        let mut read_to_end = false;
        // Read only what is kept; a huge or endless body must not hold the attempt.
        while kept.len() < self.body_cap {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Some(chunk) = frame.data_ref() {
                        let room = self.body_cap - kept.len();
                        kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
                    }
                }
                None => {
                    read_to_end = true;
                    break;
                }
                Some(Err(_)) => break,
            }
        }
        // A connection is kept only once its answer has been read whole; one left
        // halfway is closed when dropped. It is ready for the next request as soon as
        // its task has seen the answer end, which `send` waits for.
        if read_to_end {
            self.idle.put(&destination.origin, connection);
        }
        Ok((
            AttemptEnd::Answered {
                status,
                retry_after,
            },
            String::from_utf8_lossy(&kept).into_owned(),
        ))
    }

    /// Sends `request` on a kept connection to `destination`, or on a new one, and
    /// returns the connection with the answer's head.
    async fn send(
        &self,
        destination: &Destination,
        request: http::Request<Full<Bytes>>,
    ) -> Result<(Connection, http::Response<hyper::body::Incoming>), AttemptEnd> {
        while let Some(mut connection) = self.idle.take(&destination.origin) {
            if connection.ready().await.is_err() {
                continue; // closed meanwhile
            }
            match connection.try_send_request(request).await {
                Ok(response) => return Ok((connection, response)),
                Err(mut failed) => match failed.take_message() {
                    // The endpoint closed the kept connection before the request went
                    // out (an idle timeout of its own): nothing was sent, so send it
                    // on a new connection.
                    Some(request) => return self.send_on_new(destination, request).await,
                    None => return Err(classify(failed.error())),
                },
            }
        }
        self.send_on_new(destination, request).await
    }

    async fn send_on_new(
        &self,
        destination: &Destination,
        request: http::Request<Full<Bytes>>,
    ) -> Result<(Connection, http::Response<hyper::body::Incoming>), AttemptEnd> {
        use tower_service::Service as _;
        let mut connector = self.connector.clone();
        std::future::poll_fn(|cx| connector.poll_ready(cx))
            .await
            .map_err(|e| classify(&*e))?;
        let stream = connector
            .call(destination.uri.clone())
            .await
            .map_err(|e| classify(&*e))?;
        let (mut connection, driver) = http1::handshake(stream).await.map_err(|e| classify(&e))?;
        // The connection's own task reads and writes it; it ends when the connection
        // closes, or once every handle to it (here and in the idle list) is dropped.
        tokio::spawn(async move {
            if let Err(err) = driver.await {
                tracing::debug!(error = %err, "Webhook connection closed");
            }
        });
        let response = connection
            .send_request(request)
            .await
            .map_err(|e| classify(&e))?;
        Ok((connection, response))
    }
}

/// The parts of a checked URL that each attempt uses.
fn destination(uri: http::Uri) -> Result<Destination, AttemptEnd> {
    let invalid = |why: &str| AttemptEnd::ConnectionFailed(format!("invalid URL: {why}"));
    let host = uri.host().ok_or_else(|| invalid("no host"))?;
    let default_port = if uri.scheme_str() == Some("https") {
        443
    } else {
        80
    };
    let port = uri.port_u16().unwrap_or(default_port);
    let host_header = if port == default_port {
        host.to_string()
    } else {
        format!("{host}:{port}")
    };
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    Ok(Destination {
        origin: format!("{}://{host}:{port}", uri.scheme_str().unwrap_or("http")).into(),
        host: HeaderValue::try_from(host_header).map_err(|e| invalid(&e.to_string()))?,
        path: http::Uri::try_from(path).map_err(|e| invalid(&e.to_string()))?,
        uri,
    })
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

fn classify(error: &(dyn std::error::Error + 'static)) -> AttemptEnd {
    let mut source = Some(error);
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
        let refused = client
            .target(&endpoint("http://127.0.0.1:9/hook"))
            .destination;
        assert!(
            matches!(&refused, Err(AttemptEnd::AddressRefused(why)) if why.contains("loopback")),
            "{refused:?}"
        );
        let mapped = client
            .target(&endpoint("http://[::ffff:10.0.0.1]/"))
            .destination;
        assert!(
            matches!(mapped, Err(AttemptEnd::AddressRefused(_))),
            "{mapped:?}"
        );
        let scheme = client.target(&endpoint("ftp://example.com/")).destination;
        assert!(
            matches!(scheme, Err(AttemptEnd::ConnectionFailed(_))),
            "{scheme:?}"
        );
        let public = client
            .target(&endpoint("https://example.com/hooks?a=1"))
            .destination
            .unwrap();
        assert_eq!(public.uri.to_string(), "https://example.com/hooks?a=1");
        assert_eq!(public.path.to_string(), "/hooks?a=1");
        assert_eq!(public.host, "example.com");
        let with_port = client
            .target(&endpoint("http://example.com:8080"))
            .destination
            .unwrap();
        assert_eq!(with_port.path.to_string(), "/");
        assert_eq!(with_port.host, "example.com:8080");
        assert_eq!(&*with_port.origin, "http://example.com:8080");
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
        let destination = client().target(&bad).destination;
        assert!(
            matches!(&destination, Err(AttemptEnd::ConnectionFailed(why)) if why.contains("bad header")),
            "{destination:?}"
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
        let client = loopback_client();
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

    /// A local HTTP/1.1 server answering 204 to every request; it closes each
    /// connection after its first answer when `close_after_one`. Returns its port and
    /// the number of connections it accepted, and records each request's head.
    async fn counting_server(
        close_after_one: bool,
    ) -> (
        u16,
        Arc<std::sync::atomic::AtomicUsize>,
        Arc<Mutex<Vec<String>>>,
    ) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let heads = Arc::new(Mutex::new(Vec::new()));
        let (counter, seen) = (Arc::clone(&accepted), Arc::clone(&heads));
        tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let seen = Arc::clone(&seen);
                tokio::spawn(async move {
                    let mut buffer = Vec::new();
                    loop {
                        while let Some((head, used)) = whole_request(&buffer) {
                            buffer.drain(..used);
                            seen.lock().unwrap().push(head);
                            let answered =
                                socket.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").await;
                            if answered.is_err() || close_after_one {
                                return;
                            }
                        }
                        match socket.read_buf(&mut buffer).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                    }
                });
            }
        });
        (port, accepted, heads)
    }

    /// The first request wholly in `buffer`: its head (lowercased) and how many bytes
    /// it takes, head and a body of content-length bytes.
    fn whole_request(buffer: &[u8]) -> Option<(String, usize)> {
        let head_end = buffer.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
        let head = String::from_utf8_lossy(&buffer[..head_end]).to_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .map_or(0, |v| v.trim().parse().unwrap());
        (buffer.len() >= head_end + length).then_some((head, head_end + length))
    }

    /// Makes attempt `n` to `target` and checks the server's 204 came back.
    async fn assert_answered(client: &WebhookClient, target: &Target, n: usize) {
        let report = client
            .attempt(
                target,
                &format!("msg_{n}"),
                Bytes::from_static(b"{}"),
                1_000,
            )
            .await;
        assert!(
            matches!(report.end, AttemptEnd::Answered { status: 204, .. }),
            "attempt {n}: {:?}",
            report.end
        );
    }

    fn loopback_client() -> WebhookClient {
        let policy = AddressPolicy::new(vec!["127.0.0.0/8".parse().unwrap()]);
        WebhookClient::new(policy, Duration::from_secs(5), 64).unwrap()
    }

    /// Attempts one after another to an endpoint share one kept-alive connection, and
    /// each request line carries the path, with the host in its own header.
    #[tokio::test]
    async fn attempts_reuse_a_kept_connection() {
        let (port, accepted, heads) = counting_server(false).await;
        let client = loopback_client();
        let target = client.target(&endpoint(&format!("http://127.0.0.1:{port}/hook?x=1")));
        for n in 0..3 {
            assert_answered(&client, &target, n).await;
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
        let heads = heads.lock().unwrap();
        assert_eq!(heads.len(), 3);
        assert!(
            heads[0].starts_with("post /hook?x=1 http/1.1\r\n"),
            "{}",
            heads[0]
        );
        assert!(
            heads[0].contains(&format!("host: 127.0.0.1:{port}\r\n")),
            "{}",
            heads[0]
        );
    }

    /// A kept connection the endpoint has closed is not used: the next attempt opens
    /// a new one and succeeds.
    #[tokio::test]
    async fn a_connection_closed_by_the_endpoint_is_replaced() {
        let (port, accepted, _) = counting_server(true).await;
        let client = loopback_client();
        let target = client.target(&endpoint(&format!("http://127.0.0.1:{port}/hook")));
        for n in 0..2 {
            assert_answered(&client, &target, n).await;
            // Let the client's connection task see the close.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
        // The closed connections kept meanwhile are let go by the periodic sweep.
        assert!(!client.idle.0.lock().unwrap().is_empty());
        client.close_stale_connections();
        assert!(client.idle.0.lock().unwrap().is_empty());
    }
}

//! The accept loop: what one client, or many, may hold of the listener.
//!
//! hyper's own deadline covers the request head; this loop adds an idle deadline
//! (no request in flight and no bytes moving), a cap on open connections and a lower
//! cap per client address. Past a cap a connection is closed at once, never queued,
//! so a flood of half-open connections cannot exhaust the process's open files and
//! take every channel on the listener down with it.

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tower::ServiceExt as _;

/// Files the process keeps for itself beside the listener's connections: Kafka, SQL
/// pools, outbound webhook and provider connections, blobs, logs.
const RESERVED_FILES: u64 = 512;

/// What a listener lets its clients hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `public` or `admin`: the `listener` label of the metrics.
    pub listener: &'static str,
    /// Longest a client may take to send a request head.
    pub header_timeout: Duration,
    /// A connection with no request in flight and no bytes moving for this long is closed.
    pub idle_timeout: Duration,
    /// Most connections open at once.
    pub max_connections: usize,
    /// Most connections open at once from one client address; 0: no per-client cap.
    pub max_per_client: usize,
}

/// Which deadline cut a connection or a request.
#[derive(Debug, Clone, Copy)]
pub enum Deadline {
    /// The request head was not complete in time.
    Header,
    /// The request body was not complete in time.
    Body,
    /// The connection sat idle too long.
    Idle,
}

impl Deadline {
    fn label(self) -> &'static str {
        match self {
            Deadline::Header => "header",
            Deadline::Body => "body",
            Deadline::Idle => "idle",
        }
    }
}

/// Counts a connection or request cut by `deadline` (`omnigate_http_deadline_cuts_total`).
pub fn count_cut(deadline: Deadline) {
    metrics::counter!(crate::telemetry::metric::HTTP_DEADLINE_CUTS_TOTAL, "deadline" => deadline.label())
        .increment(1);
}

/// Raises the open-file limit to its hard limit where the system allows it; returns
/// the soft limit in force afterwards (None where it cannot be read).
pub fn raise_open_file_limit() -> Option<u64> {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => Some(limit),
        Err(err) => {
            tracing::warn!(error = %err, "Cannot read or raise the open-file limit");
            rlimit::getrlimit(rlimit::Resource::NOFILE)
                .ok()
                .map(|(soft, _)| soft)
        }
    }
}

/// The connection cap that fits under `open_files`, leaving room for the rest of the
/// process: the configured cap, or less when the file limit is lower.
pub fn fit_to_file_limit(configured: usize, open_files: Option<u64>) -> usize {
    let Some(files) = open_files else {
        return configured;
    };
    let room = if files > 2 * RESERVED_FILES {
        files - RESERVED_FILES
    } else {
        files / 2
    };
    configured
        .min(usize::try_from(room).unwrap_or(usize::MAX))
        .max(1)
}

/// Serves `app` on `listener` within `limits` until `shutdown`, then lets open
/// requests finish for up to `grace` before returning the number of connections
/// still open then (their requests are abandoned unanswered; providers retry them).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: CancellationToken,
    grace: Duration,
) -> usize {
    let open = Arc::new(AtomicUsize::new(0));
    let per_client: Arc<Mutex<HashMap<IpAddr, usize>>> = Arc::default();
    let connections = TaskTracker::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    let gauge = metrics::gauge!(crate::telemetry::metric::HTTP_CONNECTIONS_OPEN, "listener" => limits.listener);
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of files or a transient accept error: pause instead of spinning.
                    tracing::warn!(listener = limits.listener, error = %err, "Accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(slot) = Slot::take(&open, &per_client, peer.ip(), limits) else {
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        gauge.set(open.load(Ordering::Relaxed) as f64);
        let (app, http, shutdown, gauge, open) = (
            app.clone(),
            http.clone(),
            shutdown.clone(),
            gauge.clone(),
            Arc::clone(&open),
        );
        connections.spawn(async move {
            serve_connection(stream, peer, slot, app, &http, limits, shutdown).await;
            gauge.set(open.load(Ordering::Relaxed) as f64);
        });
    }
    drop(listener);
    connections.close();
    if tokio::time::timeout(grace, connections.wait())
        .await
        .is_ok()
    {
        return 0;
    }
    let open = connections.len();
    tracing::warn!(
        listener = limits.listener,
        open,
        grace_ms = grace.as_millis() as u64,
        "Connections still open after the grace period; closing them"
    );
    open
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    slot: Slot,
    app: Router,
    http: &hyper::server::conn::http1::Builder,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let activity = Arc::new(Activity::new());
    let in_flight = Arc::new(AtomicUsize::new(0));
    let io = Tracked {
        inner: stream,
        activity: Arc::clone(&activity),
        _slot: slot,
    };
    let service = {
        let in_flight = Arc::clone(&in_flight);
        hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request
                .extensions_mut()
                .insert(axum::extract::ConnectInfo(peer));
            let busy = InFlight::enter(&in_flight);
            let app = app.clone();
            async move {
                let response = app.oneshot(request).await;
                drop(busy);
                response
            }
        })
    };
    // The slot travels inside the IO, so an upgraded connection (a websocket) keeps
    // counting against the caps for as long as it lives.
    let connection = http
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(connection);
    let check = (limits.idle_timeout / 2).clamp(Duration::from_millis(100), Duration::from_secs(5));
    let mut draining = false;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(err) = result
                    && err.is_timeout()
                {
                    count_cut(Deadline::Header);
                }
                return;
            }
            () = shutdown.cancelled(), if !draining => {
                connection.as_mut().graceful_shutdown();
                draining = true;
            }
            () = tokio::time::sleep(check) => {
                if in_flight.load(Ordering::Relaxed) == 0 && activity.idle_for() >= limits.idle_timeout {
                    count_cut(Deadline::Idle);
                    return;
                }
            }
        }
    }
}

/// One connection's place under the caps, given back when the connection is dropped.
struct Slot {
    open: Arc<AtomicUsize>,
    per_client: Arc<Mutex<HashMap<IpAddr, usize>>>,
    client: IpAddr,
    counted_per_client: bool,
}

impl Slot {
    fn take(
        open: &Arc<AtomicUsize>,
        per_client: &Arc<Mutex<HashMap<IpAddr, usize>>>,
        client: IpAddr,
        limits: Limits,
    ) -> Option<Self> {
        let refuse = |cap: &'static str| {
            metrics::counter!(
                crate::telemetry::metric::HTTP_CONNECTIONS_REFUSED_TOTAL,
                "listener" => limits.listener,
                "cap" => cap
            )
            .increment(1);
        };
        if open.fetch_add(1, Ordering::AcqRel) >= limits.max_connections {
            open.fetch_sub(1, Ordering::AcqRel);
            refuse("total");
            return None;
        }
        let mut slot = Self {
            open: Arc::clone(open),
            per_client: Arc::clone(per_client),
            client,
            counted_per_client: false,
        };
        if limits.max_per_client > 0 {
            let mut clients = per_client.lock().unwrap_or_else(|e| e.into_inner());
            let count = clients.entry(client).or_insert(0);
            if *count >= limits.max_per_client {
                drop(clients);
                refuse("per_client");
                return None;
            }
            *count += 1;
            slot.counted_per_client = true;
        }
        Some(slot)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
        if self.counted_per_client {
            let mut clients = self.per_client.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(count) = clients.get_mut(&self.client) {
                *count -= 1;
                if *count == 0 {
                    clients.remove(&self.client);
                }
            }
        }
    }
}

/// When bytes last moved on a connection.
struct Activity {
    started: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let now = self.started.elapsed().as_millis() as u64;
        self.last_ms.store(now, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last)
    }
}

/// Counts a request in flight on its connection for as long as it lives.
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn enter(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(Arc::clone(count))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A TCP stream that notes when bytes move, and holds the connection's [`Slot`].
struct Tracked {
    inner: TcpStream,
    activity: Arc<Activity>,
    _slot: Slot,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        result
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_fits_under_the_file_limit() {
        assert_eq!(fit_to_file_limit(8192, Some(1_048_576)), 8192);
        assert_eq!(fit_to_file_limit(8192, Some(4096)), 4096 - 512);
        assert_eq!(fit_to_file_limit(8192, Some(1024)), 512);
        assert_eq!(fit_to_file_limit(8192, None), 8192);
    }

    #[test]
    fn slots_count_per_client_and_free_on_drop() {
        let open = Arc::new(AtomicUsize::new(0));
        let clients = Arc::default();
        let limits = Limits {
            listener: "test",
            header_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
            max_connections: 3,
            max_per_client: 2,
        };
        let a: IpAddr = [127, 0, 0, 1].into();
        let b: IpAddr = [127, 0, 0, 2].into();
        let first = Slot::take(&open, &clients, a, limits).expect("first");
        let second = Slot::take(&open, &clients, a, limits).expect("second");
        assert!(
            Slot::take(&open, &clients, a, limits).is_none(),
            "per-client cap"
        );
        let third = Slot::take(&open, &clients, b, limits).expect("another client");
        assert!(
            Slot::take(&open, &clients, b, limits).is_none(),
            "total cap"
        );
        drop(first);
        assert!(
            Slot::take(&open, &clients, a, limits).is_some(),
            "freed on drop"
        );
        drop((second, third));
        assert_eq!(open.load(Ordering::Relaxed), 0);
        assert!(clients.lock().expect("lock").is_empty());
    }
}

//! `make bench`: live chat visitor sockets on one gateway, beside a bare websocket
//! echo server measured in the same run.
//!
//! 1. Memory: resident memory of the gateway with `BENCH_SOCKETS` (10,000) visitor
//!    sockets open and idle (after `hello`), per socket, over the same gateway with
//!    none. Goal: under 16 KiB per idle socket.
//! 2. Rate: `BENCH_CHAT_CONCURRENCY` (512) sockets each sending a message and waiting
//!    for its answer, as fast as they can: acks (Kafka-acknowledged) per second from
//!    the gateway, echoes per second from the echo server (`bench-bare-websocket`, its
//!    own process like the gateway). After `BENCH_WARMUP_SECONDS` (5) of each
//!    unmeasured, the two take `BENCH_SLICE_SECONDS` (2) turns until each has had
//!    `BENCH_SECONDS` (10), so that both see the same host. Each side prints the cores
//!    it kept busy: a side well under the host's cores was waiting, not working.
//!    Goal: at least 50% of the echo.
//! 3. Latency: `BENCH_CHAT_RATE` (2,000) messages per second spread over every socket:
//!    ack latency p50/p99. Goal: p99 under 50 ms.
//!
//! Needs the broker `make bench` starts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use futures::{SinkExt as _, StreamExt as _, stream::SplitSink};
use omnigate_e2e::{
    bench::{
        Running, broker_cpu_seconds, cpu_seconds, env_or, fresh_broker, own_cpu_seconds, rss_mib,
        start_baseline, start_omnigate, wait_http, warmup,
    },
    brokers, free_port, unique_prefix,
};
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use tokio::net::TcpStream;
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream,
    tungstenite::{Message, client::IntoClientRequest as _},
};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;
type Sink = SplitSink<Socket, Message>;

/// Sockets in the closed loop, each with one message in flight. An ack waits for the
/// producer's batch (`linger_ms`) and the broker's answer, so the gateway needs more
/// messages in flight than the echo to keep the CPU busy: with 256 it waits on the
/// round trip with a third of a core idle; with 512 both sides keep both cores busy.
fn closed_loop_sockets() -> usize {
    env_or("BENCH_CHAT_CONCURRENCY", 512)
}

/// Opens a socket; for the gateway, with the subprotocol and a `hello` answered.
async fn open(url: &str, gateway: bool) -> Socket {
    let mut request = url.into_client_request().unwrap();
    if gateway {
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            "omnigate.livechat.v1".parse().unwrap(),
        );
        request
            .headers_mut()
            .insert("Origin", "https://shop.example.test".parse().unwrap());
    }
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    if gateway {
        socket
            .send(Message::Text(r#"{"type":"hello","last_seq":0}"#.into()))
            .await
            .unwrap();
        let welcome = socket.next().await.unwrap().unwrap();
        assert!(welcome.to_text().unwrap().contains("welcome"), "{welcome}");
    }
    socket
}

fn message(client_id: &str) -> Message {
    Message::Text(
        format!(r#"{{"type":"message","client_id":"{client_id}","text":"Hello, where is my order 48213? It has not shipped yet.","attachments":[]}}"#)
            .into(),
    )
}

/// The client id an answer is for: an ack's, or the echoed message's.
fn answered(text: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(text).ok()?;
    matches!(value["type"].as_str(), Some("ack" | "message"))
        .then(|| value["client_id"].as_str().map(str::to_string))
        .flatten()
}

/// Closed loop: each socket sends, waits for its answer, sends again. Answers, and
/// the sockets for the next turn.
async fn closed_loop(sockets: Vec<Socket>, duration: Duration, tag: &str) -> (u64, Vec<Socket>) {
    let deadline = Instant::now() + duration;
    let tasks: Vec<_> = sockets
        .into_iter()
        .enumerate()
        .map(|(s, mut socket)| {
            let tag = tag.to_string();
            tokio::spawn(async move {
                let mut done = 0u64;
                while Instant::now() < deadline {
                    let id = format!("{tag}-{s}-{done}");
                    socket.send(message(&id)).await.unwrap();
                    loop {
                        let frame = socket.next().await.unwrap().unwrap();
                        if let Ok(text) = frame.to_text()
                            && answered(text).as_deref() == Some(id.as_str())
                        {
                            break;
                        }
                    }
                    done += 1;
                }
                (done, socket)
            })
        })
        .collect();
    let (mut total, mut sockets) = (0, Vec::new());
    for task in tasks {
        let (done, socket) = task.await.unwrap();
        total += done;
        sockets.push(socket);
    }
    (total, sockets)
}

/// One side of the closed-loop phase: its server process, its sockets, and what its
/// turns measured so far.
struct Side {
    label: &'static str,
    server: Running,
    sockets: Vec<Socket>,
    answers: u64,
    seconds: f64,
    cpu_seconds: f64,
    broker_cpu_seconds: f64,
    client_cpu_seconds: f64,
    turns: usize,
}

impl Side {
    fn new(label: &'static str, server: Running, sockets: Vec<Socket>) -> Self {
        Self {
            label,
            server,
            sockets,
            answers: 0,
            seconds: 0.0,
            cpu_seconds: 0.0,
            broker_cpu_seconds: 0.0,
            client_cpu_seconds: 0.0,
            turns: 0,
        }
    }

    /// Runs the closed loop for `duration`, unmeasured when `measured` is false; the
    /// turn's rate.
    async fn turn(&mut self, duration: Duration, measured: bool) -> f64 {
        let mark = |server: &Running| {
            (
                cpu_seconds(&server.0),
                broker_cpu_seconds(),
                own_cpu_seconds(),
            )
        };
        let sockets = std::mem::take(&mut self.sockets);
        // Client ids stay unique over every turn of the run.
        let tag = format!("turn{}", self.turns);
        self.turns += 1;
        let before = mark(&self.server);
        let started = Instant::now();
        let (done, sockets) = closed_loop(sockets, duration, &tag).await;
        let elapsed = started.elapsed().as_secs_f64();
        let after = mark(&self.server);
        self.sockets = sockets;
        if measured {
            self.answers += done;
            self.seconds += elapsed;
            self.cpu_seconds += after.0 - before.0;
            self.broker_cpu_seconds += after.1 - before.1;
            self.client_cpu_seconds += after.2 - before.2;
        }
        done as f64 / elapsed
    }

    fn rate(&self) -> f64 {
        self.answers as f64 / self.seconds.max(f64::MIN_POSITIVE)
    }

    /// Cores busy on average over the measured turns: server, broker and load generator.
    fn cores(&self) -> f64 {
        (self.cpu_seconds + self.broker_cpu_seconds + self.client_cpu_seconds)
            / self.seconds.max(f64::MIN_POSITIVE)
    }

    /// CPU per answer, in us: the server's, the broker's, the load generator's.
    fn cpu_us(&self) -> (f64, f64, f64) {
        let per = |seconds: f64| seconds / self.answers.max(1) as f64 * 1e6;
        (
            per(self.cpu_seconds),
            per(self.broker_cpu_seconds),
            per(self.client_cpu_seconds),
        )
    }
}

/// Starts the bare websocket echo server, the baseline, as its own process.
async fn echo_server() -> (Running, String) {
    let port = free_port();
    let echo = start_baseline("bench-bare-websocket", port);
    for _ in 0..300 {
        if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return (echo, format!("ws://127.0.0.1:{port}/"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the echo server never came up on port {port}");
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    omnigate_e2e::bench::block_on(async {
        let sockets: usize = env_or("BENCH_SOCKETS", 10_000);
        let rate: u64 = env_or("BENCH_CHAT_RATE", 2_000);
        let duration = Duration::from_secs(env_or("BENCH_SECONDS", 10));
        let warmup = warmup();
        let concurrency = closed_loop_sockets();
        rlimit::increase_nofile_limit(u64::MAX).unwrap();
        println!(
            "livechat_sockets: {sockets} idle sockets, closed loop on {concurrency}, then {rate} messages/s, {}s per run\n",
            duration.as_secs()
        );

        // Baseline: the echo server, its sockets opened now.
        let (echo, echo_url) = echo_server().await;
        let mut echo_sockets = Vec::new();
        for _ in 0..concurrency {
            echo_sockets.push(open(&echo_url, false).await);
        }

        fresh_broker();
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let config = format!(
            "roles = [\"livechat\"]\n[server]\nlisten = \"127.0.0.1:{port}\"\nmax_connections = {}\nmax_connections_per_client = 0\n[log]\nlevel = \"warn\"\n[kafka]\nbrokers = \"{}\"\ntopic_prefix = \"{}\"\npartitions = 3\nlinger_ms = {}\n[blobs]\nurl = \"file://{}\"\n[router]\ndatabase_url = \"sqlite://{}?mode=rwc\"\n[livechat]\nsockets_per_ip = 1000000\nidle_timeout_secs = 600\nmessages_per_second = 1000.0\nmessage_burst = 1000\n[livechat.channels.shop]\nallowed_origins = [\"https://shop.example.test\"]\nidentity_secret = \"bench-secret\"\n",
            sockets + 1000,
            brokers(),
            unique_prefix("bench-livechat"),
            // The gateway's producer batching delay; the default config's value unless set.
            env_or("BENCH_LINGER_MS", 5),
            dir.path().join("blobs").display(),
            dir.path().join("omnigate.db").display(),
        );
        let path = dir.path().join("bench.toml");
        std::fs::write(&path, config).unwrap();
        let gateway = Running(start_omnigate(&path));
        wait_http(&format!("http://127.0.0.1:{port}/readyz")).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let before = rss_mib(&gateway.0);
        let url = format!("ws://127.0.0.1:{port}/livechat/shop/ws");
        let started = Instant::now();
        let mut all = Vec::with_capacity(sockets);
        for _ in 0..sockets {
            all.push(open(&url, true).await);
        }
        let opened_in = started.elapsed();
        tokio::time::sleep(Duration::from_secs(3)).await;
        let after = rss_mib(&gateway.0);
        println!(
            "{:<46} {:>10.1} s to open; {after:.1} MiB RSS ({before:.1} with none): {:.1} KiB per idle socket (goal under 16)",
            format!("omnigate: {sockets} visitor sockets"),
            opened_in.as_secs_f64(),
            (after - before) * 1024.0 / sockets as f64
        );

        // The echo and the gateway take turns, so that both see the same mix of the
        // host's fast and slow moments.
        let closed: Vec<Socket> = all.drain(..concurrency.min(sockets)).collect();
        let mut sides = [
            Side::new("baseline: websocket echo", echo, echo_sockets),
            Side::new("omnigate: message -> Kafka ack", gateway, closed),
        ];
        for side in &mut sides {
            side.turn(warmup, false).await;
        }
        let slice = Duration::from_secs(env_or("BENCH_SLICE_SECONDS", 2).max(1));
        let rounds = duration.as_secs().div_ceil(slice.as_secs());
        for round in 0..rounds as usize {
            let mut line = format!("turn {}:", round + 1);
            for i in 0..sides.len() {
                let side = &mut sides[(round + i) % sides.len()];
                let rate = side.turn(slice, true).await;
                line.push_str(&format!("  {} {rate:.0}/s", side.label));
            }
            println!("{line}");
        }
        println!();
        for side in &sides {
            let (server, broker, client) = side.cpu_us();
            println!(
                "{:<46} {:>10.0} messages/s  CPU per message: server {server:.1} us, broker {broker:.1} us, load generator {client:.1} us; {:.2} cores busy",
                format!("{} (closed loop)", side.label),
                side.rate(),
                side.cores(),
            );
        }
        let [echo, gateway] = sides;
        println!(
            "ratio: omnigate / echo = {:.2} (goal 0.5)\n",
            gateway.rate() / echo.rate()
        );
        drop(echo);
        let gateway = gateway.server;

        // Fixed rate over the remaining sockets: ack latency.
        let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
        let latencies: Arc<Mutex<Vec<f64>>> = Arc::default();
        let mut sinks: Vec<Sink> = Vec::with_capacity(all.len());
        for socket in all {
            let (sink, mut stream) = socket.split();
            sinks.push(sink);
            let (sent, latencies) = (Arc::clone(&sent), Arc::clone(&latencies));
            tokio::spawn(async move {
                while let Some(Ok(frame)) = stream.next().await {
                    if let Ok(text) = frame.to_text()
                        && let Some(id) = answered(text)
                        && let Some(at) = sent.lock().unwrap().remove(&id)
                    {
                        latencies
                            .lock()
                            .unwrap()
                            .push(at.elapsed().as_secs_f64() * 1000.0);
                    }
                }
            });
        }
        let total = (rate * duration.as_secs()) as usize;
        let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate.max(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        for i in 0..total {
            tick.tick().await;
            let id = format!("rate-{i}");
            sent.lock().unwrap().insert(id.clone(), Instant::now());
            let n = sinks.len();
            sinks[i % n].send(message(&id)).await.unwrap();
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        let mut measured = latencies.lock().unwrap().clone();
        measured.sort_by(f64::total_cmp);
        println!(
            "{:<46} {:>10} of {total} acked; p50 {:.1} ms, p99 {:.1} ms (goal p99 under 50 ms)",
            format!("omnigate: {rate} messages/s over the sockets"),
            measured.len(),
            percentile(&measured, 0.5),
            percentile(&measured, 0.99)
        );
        drop(gateway);
    });
}

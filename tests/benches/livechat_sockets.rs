//! `make bench`: live chat visitor sockets on one gateway, beside a bare websocket
//! echo server measured in the same run.
//!
//! 1. Memory: resident memory of the gateway with `BENCH_SOCKETS` (10,000) visitor
//!    sockets open and idle (after `hello`), per socket, over the same gateway with
//!    none. Goal: under 16 KiB per idle socket.
//! 2. Rate: 256 sockets each sending a message and waiting for its answer, as fast as
//!    they can, for `BENCH_SECONDS` after `BENCH_WARMUP_SECONDS` (5) unmeasured: acks
//!    (Kafka-acknowledged) per second from the gateway, echoes per second from the
//!    echo server. Goal: at least 50% of the echo.
//! 3. Latency: `BENCH_CHAT_RATE` (2,000) messages per second spread over every socket:
//!    ack latency p50/p99. Goal: p99 under 50 ms.
//!
//! Needs the broker `make bench` starts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use futures::{SinkExt as _, StreamExt as _, stream::SplitSink};
use omnigate_e2e::{
    bench::{Running, env_or, fresh_broker, rss_mib, start_omnigate, warmup},
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

const CLOSED_LOOP_SOCKETS: usize = 256;

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

/// Closed loop: each socket sends, waits for its answer, sends again. Answers/s, and
/// the sockets for the next run.
async fn closed_loop(sockets: Vec<Socket>, duration: Duration, tag: &str) -> (f64, Vec<Socket>) {
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
    (total as f64 / duration.as_secs_f64(), sockets)
}

/// A bare websocket echo server (tokio-tungstenite), the baseline.
async fn echo_server() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut socket) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(frame)) = socket.next().await {
                    if frame.is_text() && socket.send(frame).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
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
        rlimit::increase_nofile_limit(u64::MAX).unwrap();
        println!(
            "livechat_sockets: {sockets} idle sockets, closed loop on {CLOSED_LOOP_SOCKETS}, then {rate} messages/s, {}s per run\n",
            duration.as_secs()
        );

        // Baseline: the echo server.
        let echo = echo_server().await;
        let url = format!("ws://127.0.0.1:{echo}/");
        let mut opened = Vec::new();
        for _ in 0..CLOSED_LOOP_SOCKETS {
            opened.push(open(&url, false).await);
        }
        let (_, opened) = closed_loop(opened, warmup, "echo-warm").await;
        let (echo_rate, _) = closed_loop(opened, duration, "echo").await;
        println!(
            "{:<46} {echo_rate:>10.0} messages/s",
            "baseline: websocket echo (closed loop)"
        );

        fresh_broker();
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let config = format!(
            "roles = [\"livechat\"]\n[server]\nlisten = \"127.0.0.1:{port}\"\nmax_connections = {}\nmax_connections_per_client = 0\n[log]\nlevel = \"warn\"\n[kafka]\nbrokers = \"{}\"\ntopic_prefix = \"{}\"\npartitions = 3\n[blobs]\nurl = \"file://{}\"\n[router]\ndatabase_url = \"sqlite://{}?mode=rwc\"\n[livechat]\nsockets_per_ip = 1000000\nmessages_per_second = 1000.0\nmessage_burst = 1000\n[livechat.channels.shop]\nallowed_origins = [\"https://shop.example.test\"]\nidentity_secret = \"bench-secret\"\n",
            sockets + 1000,
            brokers(),
            unique_prefix("bench-livechat"),
            dir.path().join("blobs").display(),
            dir.path().join("omnigate.db").display(),
        );
        let path = dir.path().join("bench.toml");
        std::fs::write(&path, config).unwrap();
        let gateway = Running(start_omnigate(&path));
        let base = format!("http://127.0.0.1:{port}");
        for _ in 0..300 {
            if reqwest::get(format!("{base}/readyz"))
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
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

        let closed: Vec<Socket> = all.drain(..CLOSED_LOOP_SOCKETS.min(sockets)).collect();
        let (_, closed) = closed_loop(closed, warmup, "warm").await;
        let (gateway_rate, _) = closed_loop(closed, duration, "loop").await;
        println!(
            "{:<46} {gateway_rate:>10.0} messages/s  ratio {:.2} of the echo (goal 0.5)",
            "omnigate: message -> Kafka ack (closed loop)",
            gateway_rate / echo_rate
        );

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

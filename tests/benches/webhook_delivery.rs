//! `make bench`: the webhook dispatcher (release binary, SQLite delivery log) posting
//! signed deliveries of routed events to a fast local receiver, beside a baseline
//! measured in the same run that posts the same bodies with a bare reqwest loop (the
//! issue's baseline), and beside the same loop through hyper's pooled client (the
//! dispatcher posts over hyper's connections too). The dispatcher works off a backlog
//! and the reqwest loop runs in the bench process; the two take `BENCH_SLICE_SECONDS`
//! (2) turns until each has had `BENCH_SECONDS` (10), the dispatcher held with
//! SIGSTOP while the loop runs, so that both see the same host. Prints deliveries/s,
//! CPU per delivery, publish-to-delivery latency at a moderate rate, and memory.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use axum::{extract::State, http::HeaderMap};
use omnigate_core::publish::{Publisher, Topic};
use omnigate_e2e::{
    bench::{
        Run, Running, cpu_seconds, env_or, fresh_broker, latencies, own_cpu_seconds, own_peak_mib,
        paced_rate, peak_mib, publish_paced, start_omnigate, stop, warmup,
    },
    brokers, free_port, kafka_config, unique_prefix,
};
use omnigate_kafka::{KafkaPublisher, admin};
use omnigate_model::{EventType, pb};
use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// Arrivals at the receiver: `webhook-id` (or "" for the baseline) and when.
type Arrivals = Arc<Mutex<Vec<(String, Instant)>>>;

async fn receiver() -> (String, Arrivals) {
    let arrivals: Arrivals = Arc::default();
    let app = axum::Router::new()
        .fallback(
            |State(arrivals): State<Arrivals>, headers: HeaderMap| async move {
                let id = headers
                    .get("webhook-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                arrivals.lock().unwrap().push((id, Instant::now()));
                axum::http::StatusCode::NO_CONTENT
            },
        )
        .with_state(Arc::clone(&arrivals));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, arrivals)
}

/// A routed WhatsApp message of about 700 bytes of JSON.
fn event(n: usize) -> pb::Event {
    pb::Event {
        id: uuid::Uuid::new_v4().to_string(),
        r#type: EventType::MessageReceived.as_str().into(),
        source: "/omnigate/whatsapp/demo".into(),
        time: Some(omnigate_model::timestamp(chrono::Utc::now())),
        tenant: "acme".into(),
        conversation_key: format!("whatsapp:106540352242922:4917{:08}", n % 5000),
        payload: Some(pb::event::Payload::Message(pb::Message {
            channel: Some(pb::Channel {
                kind: pb::ChannelKind::Whatsapp as i32,
                channel_id: "demo".into(),
                address: "106540352242922".into(),
            }),
            contact: Some(pb::Contact {
                display_name: "Ana Example".into(),
                phone_e164: format!("+4917{:08}", n % 5000),
                ..Default::default()
            }),
            provider_message_id: format!("wamid.HBgLNDkxNzEyMzQ1Njc4FQIAEhggQjVGRkQ{n}"),
            parts: vec![pb::ContentPart {
                part: Some(pb::content_part::Part::Text(
                    "Hello, my order #12345 has not arrived yet. Could you check where it is? Thanks!".into(),
                )),
            }],
            ..Default::default()
        })),
        routing: Some(pb::Routing {
            conversation_id: format!("conv-{}", n % 5000),
            contact_id: format!("contact-{}", n % 5000),
            inbox: "support".into(),
        }),
    }
}

/// `concurrency` tasks posting a routed event's JSON through `post` for `duration`;
/// `post` answers whether the receiver took it.
async fn post_loop<P, F>(duration: Duration, concurrency: usize, post: P) -> Run
where
    P: Fn(bytes::Bytes) -> F + Clone + Send + 'static,
    F: Future<Output = bool> + Send,
{
    let body = bytes::Bytes::from(omnigate_model::to_json(&event(0)));
    let started = Instant::now();
    let until = started + duration;
    let tasks = (0..concurrency)
        .map(|_| {
            let (post, body) = (post.clone(), body.clone());
            tokio::spawn(async move {
                let (mut latencies, mut errors) = (Vec::new(), 0);
                loop {
                    let sent = Instant::now();
                    if sent >= until {
                        break;
                    }
                    if post(body.clone()).await {
                        latencies.push(sent.elapsed().as_micros() as u32);
                    } else {
                        errors += 1;
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    Run::collect(tasks, started).await
}

/// The baseline: the post loop with one reqwest client, for `duration`.
async fn bare_reqwest(
    client: &reqwest::Client,
    url: &str,
    duration: Duration,
    concurrency: usize,
) -> Run {
    let client = client.clone();
    let url: Arc<str> = url.into();
    post_loop(duration, concurrency, move |body| {
        let (client, url) = (client.clone(), Arc::clone(&url));
        async move {
            client
                .post(&*url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        }
    })
    .await
}

/// A second, informational baseline: the same loop through hyper-util's pooled client.
/// The dispatcher posts over hyper's connections too, kept in a pool of its own
/// (reqwest costs more CPU per request).
async fn bare_hyper(url: &str, duration: Duration, concurrency: usize) -> Run {
    use hyper_util::client::legacy::{Client, connect::HttpConnector};
    let client: Client<HttpConnector, http_body_util::Full<bytes::Bytes>> =
        Client::builder(hyper_util::rt::TokioExecutor::new()).build(HttpConnector::new());
    let uri: hyper::Uri = url.parse().unwrap();
    post_loop(duration, concurrency, move |body| {
        let request = hyper::Request::post(uri.clone())
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(body))
            .unwrap();
        let response = client.request(request);
        async move { response.await.is_ok_and(|r| r.status().is_success()) }
    })
    .await
}

/// Runs one of the bare loops, prints its line with the bench process's CPU per post
/// (client and receiver), and forgets its arrivals.
async fn timed(name: &str, arrivals: &Arrivals, run: impl Future<Output = Run>) -> Run {
    let cpu_before = own_cpu_seconds();
    let run = run.await;
    let cpu = own_cpu_seconds() - cpu_before;
    run.print(name, own_peak_mib());
    println!(
        "{:<38} CPU {:.1} us per delivery (client and receiver)",
        "",
        cpu / run.requests.max(1) as f64 * 1e6
    );
    arrivals.lock().unwrap().clear();
    run
}

/// Publishes events `0..n` to the routed topic, each made as it is sent.
async fn publish(publisher: &Publisher, n: usize) {
    // Many in flight: each waits for the producer's batch.
    const WORKERS: usize = 512;
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let publisher = publisher.clone();
            tokio::spawn(async move {
                for i in (w..n).step_by(WORKERS) {
                    publisher.event(Topic::Routed, event(i)).await.unwrap();
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
}

/// The delivery log alone, as the dispatcher's writer fills it: `n` deliveries that
/// succeeded at their first attempt, written in batches of `batch` (message, delivery
/// and attempt rows). The log has one writer, so its time per delivery bounds the
/// dispatcher's rate. Returns the elapsed time.
async fn log_only(n: usize, batch: usize, path: &std::path::Path) -> Duration {
    use omnigate_webhooks::store::{
        Attempt, NewDelivery, NewMessage, Outcome, WebhookStore, WriteBatch, status,
    };
    let store = WebhookStore::connect(&format!("sqlite://{}?mode=rwc", path.display()))
        .await
        .unwrap();
    let now = omnigate_webhooks::dispatcher::now_ms();
    let batches: Vec<WriteBatch> = (0..n)
        .collect::<Vec<_>>()
        .chunks(batch)
        .map(|chunk| WriteBatch {
            messages: chunk
                .iter()
                .map(|&i| {
                    let event = event(i);
                    let id = omnigate_webhooks::dispatcher::delivery_id("ep_bench", &event);
                    NewMessage {
                        key: omnigate_webhooks::dispatcher::message_key(&event),
                        event_id: event.id.clone(),
                        event_type: event.r#type.clone(),
                        body: bytes::Bytes::from(omnigate_model::to_json(&event)),
                        deliveries: vec![NewDelivery {
                            id: id.clone(),
                            endpoint_id: "ep_bench".into(),
                            tenant: "acme".into(),
                            ordering_key: event.conversation_key.clone(),
                            seq: i as i64,
                            first_attempt_at: now,
                            first_outcome: Some(Outcome {
                                delivery_id: id,
                                status: status::SUCCEEDED,
                                next_attempt_at: 0,
                                attempt: Attempt {
                                    attempt: 1,
                                    started_at: now,
                                    duration_ms: 2,
                                    status_code: 204,
                                    error: String::new(),
                                    response_body: String::new(),
                                },
                            }),
                        }],
                    }
                })
                .collect(),
            ..Default::default()
        })
        .collect();
    let started = Instant::now();
    for batch in &batches {
        store.write(batch, now).await.unwrap();
    }
    started.elapsed()
}

async fn wait_for(arrivals: &Arrivals, n: usize, timeout: Duration) -> usize {
    let deadline = Instant::now() + timeout;
    loop {
        let got = arrivals.lock().unwrap().len();
        if got >= n || Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Holds (`STOP`) or resumes (`CONT`) a process.
fn signal(child: &std::process::Child, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([format!("-{signal}"), child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} failed");
}

/// Deliveries (arrivals with a `webhook-id`) that came between `from` and `to`.
fn delivered_between(arrivals: &Arrivals, from: Instant, to: Instant) -> usize {
    arrivals
        .lock()
        .unwrap()
        .iter()
        .filter(|(id, at)| !id.is_empty() && *at >= from && *at <= to)
        .count()
}

/// What the dispatcher's turns measured.
#[derive(Default)]
struct DispatcherTurns {
    delivered: usize,
    seconds: f64,
    cpu_seconds: f64,
    receiver_cpu_seconds: f64,
}

fn main() {
    omnigate_e2e::bench::block_on(async {
        let n: usize = env_or("BENCH_DELIVERIES", 600_000);
        let concurrency: usize = env_or("BENCH_CONCURRENCY", 64);
        let duration = Duration::from_secs(env_or("BENCH_SECONDS", 10));
        let slice = Duration::from_secs(env_or("BENCH_SLICE_SECONDS", 2).max(1));
        let rounds = duration.as_secs().div_ceil(slice.as_secs()) as usize;
        println!(
            "webhook_delivery: a backlog of {n} deliveries to one local receiver, {concurrency} concurrent posts in the baseline and per endpoint in the dispatcher, {rounds} turns of {} s each\n",
            slice.as_secs()
        );
        let (url, arrivals) = receiver().await;

        let hyper_baseline = timed(
            "baseline: bare hyper client loop",
            &arrivals,
            bare_hyper(&url, duration, concurrency),
        )
        .await;

        let log_dir = tempfile::tempdir().unwrap();
        let log_batch: usize = env_or(
            "BENCH_LOG_BATCH",
            omnigate_webhooks::dispatcher::WRITE_BATCH,
        );
        // Its rows are made up front: a bounded count keeps them in memory.
        let logged = n.min(100_000);
        let log = log_only(logged, log_batch, &log_dir.path().join("log.db")).await;
        println!(
            "{:<38} {:>9.0} /s  ({:.1} us per delivery on the log's one writer, batches of {log_batch})",
            "delivery log alone (SQLite)",
            logged as f64 / log.as_secs_f64(),
            log.as_secs_f64() / logged as f64 * 1e6
        );

        // An empty broker, as in the other benches.
        fresh_broker();
        let prefix = unique_prefix("bench-hooks");
        let kafka = kafka_config(&brokers(), &prefix);
        admin::ensure_topics(&kafka).await.unwrap();
        let publisher = Publisher::new(KafkaPublisher::new(&kafka).unwrap());
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let config = format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n[log]\nlevel = \"warn\"\n[kafka]\nbrokers = \"{}\"\ntopic_prefix = \"{prefix}\"\npartitions = 3\n[blobs]\nurl = \"file://{}\"\n[router]\ndatabase_url = \"sqlite://{}?mode=rwc\"\n[webhooks]\ndatabase_url = \"sqlite://{}?mode=rwc\"\nallow_networks = [\"127.0.0.0/8\"]\nmax_in_flight_per_endpoint = {concurrency}\n[[api_keys]]\nname = \"bench\"\ntenant = \"acme\"\nsha256 = \"bb2c3471b1d4f3a48f740bf10b04cc830d5cd528b47ba699f9f0d733dbc5e397\"\n",
            brokers(),
            dir.path().join("blobs").display(),
            dir.path().join("router.db").display(),
            dir.path().join("webhooks.db").display(),
        );
        // The API alone first: the endpoint is registered and the backlog published
        // before the dispatcher starts, so the run times the dispatcher, not the publisher.
        let start = |roles: &str| {
            let path = dir.path().join("omnigate.toml");
            std::fs::write(&path, format!("roles = [{roles}]\n{config}")).unwrap();
            start_omnigate(&path)
        };
        let api_only = start("\"api\"");
        let client = reqwest::Client::new();
        let api = format!("http://127.0.0.1:{port}");
        let registered = loop {
            let answer = client
                .post(format!("{api}/v1/webhooks"))
                .bearer_auth("omnigate-dev-key")
                .json(&serde_json::json!({"url": url, "events": ["message.*"]}))
                .send()
                .await;
            match answer {
                Ok(r) if r.status() == 201 => break r.json::<serde_json::Value>().await.unwrap(),
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        };
        let endpoint_id = registered["id"].as_str().unwrap().to_string();
        stop(api_only);

        // Throughput: the dispatcher works off the backlog in its turns and is held
        // with SIGSTOP in the reqwest loop's.
        publish(&publisher, n).await;
        // Killed when dropped: a bench that fails midway leaves no held process behind.
        let running = Running(start("\"api\", \"webhooks\""));
        let gateway = &running.0;
        wait_for(&arrivals, 1, Duration::from_secs(120)).await;
        tokio::time::sleep(warmup()).await;
        signal(gateway, "STOP");
        bare_reqwest(&client, &url, warmup(), concurrency).await;
        let mut baseline = Run::default();
        let mut baseline_cpu_seconds = 0.0;
        let mut dispatcher = DispatcherTurns::default();
        for round in 0..rounds {
            let mut line = format!("turn {}:", round + 1);
            for side in [round % 2, (round + 1) % 2] {
                let own_cpu = own_cpu_seconds();
                if side == 0 {
                    let run = bare_reqwest(&client, &url, slice, concurrency).await;
                    baseline_cpu_seconds += own_cpu_seconds() - own_cpu;
                    line.push_str(&format!("  reqwest loop {:.0}/s", run.rate()));
                    baseline.absorb(run);
                } else {
                    let cpu = cpu_seconds(gateway);
                    let started = Instant::now();
                    signal(gateway, "CONT");
                    tokio::time::sleep(slice).await;
                    signal(gateway, "STOP");
                    let ended = Instant::now();
                    let delivered = delivered_between(&arrivals, started, ended);
                    let seconds = (ended - started).as_secs_f64();
                    dispatcher.delivered += delivered;
                    dispatcher.seconds += seconds;
                    dispatcher.cpu_seconds += cpu_seconds(gateway) - cpu;
                    dispatcher.receiver_cpu_seconds += own_cpu_seconds() - own_cpu;
                    line.push_str(&format!("  dispatcher {:.0}/s", delivered as f64 / seconds));
                }
            }
            println!("{line}");
        }
        // The rest of the backlog, worked off before the latency phase.
        let remaining = {
            let mut arrivals = arrivals.lock().unwrap();
            let delivered = arrivals.iter().filter(|(id, _)| !id.is_empty()).count();
            arrivals.clear();
            assert!(
                delivered < n,
                "the backlog ran out during the turns: raise BENCH_DELIVERIES"
            );
            n - delivered
        };
        signal(gateway, "CONT");
        let got = wait_for(&arrivals, remaining, Duration::from_secs(600)).await;
        assert_eq!(got, remaining, "deliveries missing after the turns");
        println!();
        baseline.print("baseline: bare reqwest loop", own_peak_mib());
        println!(
            "{:<38} CPU {:.1} us per post (client and receiver)",
            "",
            baseline_cpu_seconds / baseline.requests.max(1) as f64 * 1e6
        );
        let per = |seconds: f64| seconds / dispatcher.delivered.max(1) as f64 * 1e6;
        let rate = dispatcher.delivered as f64 / dispatcher.seconds.max(f64::MIN_POSITIVE);
        println!(
            "{:<38} {rate:>9.0} /s  ({} in {:.1} s)  peak RSS {:>6.1} MiB  CPU {:.1} us per delivery (receiver {:.1} us)",
            "omnigate dispatcher (signed, logged)",
            dispatcher.delivered,
            dispatcher.seconds,
            peak_mib(gateway),
            per(dispatcher.cpu_seconds),
            per(dispatcher.receiver_cpu_seconds),
        );

        // Latency at a moderate rate: publish to delivery, per event.
        arrivals.lock().unwrap().clear();
        let published = publish_paced(
            &publisher,
            Topic::Routed,
            |i| event(n + i),
            |event| omnigate_webhooks::dispatcher::delivery_id(&endpoint_id, event),
        )
        .await;
        wait_for(&arrivals, published.len(), Duration::from_secs(120)).await;
        let latency = latencies(&published, &arrivals.lock().unwrap());
        println!(
            "{:<38} p50 {:>7.2} ms  p99 {:>7.2} ms  ({} events at {}/s; baseline post p99 {:.2} ms)",
            "publish -> signed delivery",
            latency.percentile(0.5),
            latency.percentile(0.99),
            latency.requests,
            paced_rate(),
            baseline.percentile(0.99),
        );
        drop(running);
        println!(
            "\nratio: dispatcher / baseline = {:.2} (target >= 0.60; baseline {:.0} /s); deliveries/s = {rate:.0} (target >= 5000)",
            rate / baseline.rate(),
            baseline.rate(),
        );
        println!(
            "       dispatcher / bare hyper client loop = {:.2} (no target: hyper, which the dispatcher posts over)",
            rate / hyper_baseline.rate()
        );
    });
}

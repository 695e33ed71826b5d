//! `make bench`: signed WhatsApp webhook POSTs (about 1.5 KB) at the real gateway,
//! each answered only after Kafka acknowledged its event, beside two baselines
//! measured in the same run:
//!   1. a bare hyper server that reads the body and answers 200;
//!   2. rdkafka producing the same event bytes with no HTTP at all.
//!
//! Both run before and after the gateway's runs, and the ratio takes the mean of the
//! two: on a small shared machine one run of either moves by a third.
//!
//! Then signed Twilio status callbacks (one call each) at the voice connector, against
//! the same two baselines.
//!
//! Prints requests/s, p50/p99 latency and peak memory, and the gateway's ratio to the
//! lower baseline. Needs the broker `make bench` starts (Apache Kafka, KRaft); each
//! measured phase restarts it empty and runs its own load unmeasured first.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use omnigate_connector_voice::verify::twilio_signature;
use omnigate_connector_whatsapp::{NormalizeCtx, normalize, verify::sign};
use omnigate_core::publish::{Publisher, Topic};
use omnigate_e2e::{
    bench::{
        Run, broker_cpu_seconds, cpu_seconds, env_or, fresh_broker, own_cpu_seconds, peak_mib,
        release_bin, start_omnigate, stop, warmup,
    },
    brokers, free_port, kafka_config, unique_prefix,
};
use omnigate_kafka::{KafkaPublisher, admin};
use std::{
    process::{Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

/// Requests in flight, for the HTTP runs and the produce baseline alike. Meta delivers
/// webhooks over many connections at once; 256 keeps the broker's batching busy.
fn concurrency() -> usize {
    env_or("BENCH_CONCURRENCY", 256)
}
const BODIES: usize = 50_000;
/// Voice calls generated per second of a run, above any rate this bench reaches.
const VOICE_CALLS_PER_SECOND: usize = 30_000;

fn seconds() -> u64 {
    env_or("BENCH_SECONDS", 10)
}

/// Realistic bodies: a text message with a contact and a 1 KB text, unique wamids.
fn bodies() -> Vec<(String, String)> {
    let text =
        "Hello, I ordered a blue jacket last week (order #48213) and it still has not shipped. "
            .repeat(12);
    (0..BODIES)
        .map(|i| {
            let body = serde_json::json!({"object": "whatsapp_business_account", "entry": [{"id": "102290129340398", "changes": [{"field": "messages", "value": {
                "messaging_product": "whatsapp",
                "metadata": {"display_phone_number": "15550783881", "phone_number_id": "106540352242922"},
                "contacts": [{"profile": {"name": "Sheena Nelson"}, "wa_id": format!("1650555{:04}", i % 5000)}],
                "messages": [{"from": format!("1650555{:04}", i % 5000), "id": format!("wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQTRBNjU5OUFFRTAz{i:08}"),
                              "timestamp": "1749416383", "type": "text", "text": {"body": text}}]
            }}]}]})
            .to_string();
            let signature = sign(b"bench-secret", body.as_bytes());
            (body, signature)
        })
        .collect()
}

/// Signed requests to one URL: each body with its signature header's value.
#[derive(Clone)]
struct Requests {
    url: String,
    content_type: &'static str,
    signature_header: &'static str,
    bodies: Arc<Vec<(String, String)>>,
    /// Each body may be sent once only: the receiver drops a repeat without publishing
    /// (the voice connector's call book), so a repeat would measure nothing.
    once: bool,
}

impl Requests {
    /// WhatsApp webhook bodies, signed with `X-Hub-Signature-256`.
    fn whatsapp(url: String, bodies: Arc<Vec<(String, String)>>) -> Self {
        Self {
            url,
            content_type: "application/json",
            signature_header: "x-hub-signature-256",
            bodies,
            once: false,
        }
    }
}

/// Twilio status callbacks (`ringing`, one call each) for the channel at `url`,
/// signed with `X-Twilio-Signature` under `auth_token`: `count` calls, their ids
/// starting at `first`.
fn twilio_requests(url: String, auth_token: &[u8], first: usize, count: usize) -> Requests {
    let bodies = (first..first + count)
        .map(|i| {
            let call = format!("CA{i:032x}");
            let from = format!("+1650555{:04}", i % 5000);
            let params: Vec<(String, String)> = [
                ("AccountSid", "AC00000000000000000000000000000000"),
                ("ApiVersion", "2010-04-01"),
                ("CallSid", call.as_str()),
                ("CallStatus", "ringing"),
                ("CallbackSource", "call-progress-events"),
                ("Direction", "inbound"),
                ("From", from.as_str()),
                ("SequenceNumber", "1"),
                ("To", "+15550100200"),
            ]
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
            let signature = twilio_signature(auth_token, &url, &params);
            let body = form_urlencoded::Serializer::new(String::new())
                .extend_pairs(&params)
                .finish();
            (body, signature)
        })
        .collect();
    Requests {
        url,
        content_type: "application/x-www-form-urlencoded",
        signature_header: "x-twilio-signature",
        bodies: Arc::new(bodies),
        once: true,
    }
}

/// POSTs the requests with `concurrency()` keep-alive connections for `duration`;
/// `rate` paces the total to that many requests per second when set.
async fn load(requests: Requests, duration: Duration, rate: Option<f64>) -> Run {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency())
        .build()
        .unwrap();
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency())
        .map(|worker| {
            let (client, requests) = (client.clone(), requests.clone());
            tokio::spawn(async move {
                let bodies = &requests.bodies;
                let mut latencies = Vec::new();
                let mut errors = 0;
                let mut n = 0usize;
                let interval = rate.map(|r| Duration::from_secs_f64(concurrency() as f64 / r));
                while started.elapsed() < duration {
                    if let Some(interval) = interval {
                        let due = started
                            + interval.mul_f64(n as f64)
                            + interval.mul_f64(worker as f64 / concurrency() as f64);
                        tokio::time::sleep_until(due.into()).await;
                    }
                    let index = worker + n * concurrency();
                    assert!(
                        !requests.once || index < bodies.len(),
                        "the run outpaced its {} one-shot bodies; raise VOICE_CALLS_PER_SECOND",
                        bodies.len()
                    );
                    let (body, signature) = &bodies[index % bodies.len()];
                    n += 1;
                    let sent = Instant::now();
                    let response = client
                        .post(&requests.url)
                        .header("content-type", requests.content_type)
                        .header(requests.signature_header, signature)
                        .body(body.clone())
                        .send()
                        .await;
                    match response {
                        Ok(r) if r.status().is_success() => {
                            latencies.push(sent.elapsed().as_micros() as u32)
                        }
                        _ => errors += 1,
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    Run::collect(tasks, started).await
}

/// A measured run: `warm` for the warm-up, then `requests` for `duration`. Returns the
/// run with the CPU seconds `server` and the broker used over the measured part.
async fn measure(
    warm: Requests,
    requests: Requests,
    duration: Duration,
    rate: Option<f64>,
    server: &std::process::Child,
) -> (Run, f64, f64) {
    load(warm, warmup(), rate).await;
    let (cpu_before, broker_before) = (cpu_seconds(server), broker_cpu_seconds());
    let run = load(requests, duration, rate).await;
    (
        run,
        cpu_seconds(server) - cpu_before,
        broker_cpu_seconds() - broker_before,
    )
}

/// Runs the bodies at a bare hyper server that reads each body and answers 200, and
/// prints the run under `label`. Returns the run and the server's CPU seconds over it.
async fn bare_hyper(
    bodies: &Arc<Vec<(String, String)>>,
    duration: Duration,
    label: &str,
) -> (Run, f64) {
    let port = free_port();
    let hyper = Command::new(release_bin("bench-bare-hyper"))
        .arg(port.to_string())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/");
    wait_http(&url).await;
    let requests = Requests::whatsapp(url, bodies.clone());
    let (run, cpu, _) = measure(requests.clone(), requests, duration, None, &hyper).await;
    let memory = peak_mib(&hyper);
    stop(hyper);
    run.print(label, memory);
    (run, cpu)
}

/// Produces the normalized event of every body, the same number in flight, for
/// `duration` after the warm-up. Returns the run with this process's CPU seconds and
/// the broker's over the measured part.
async fn produce_baseline(bodies: &[(String, String)], duration: Duration) -> (Run, f64, f64) {
    let prefix = unique_prefix("bench-produce");
    let config = kafka_config(&brokers(), &prefix);
    admin::ensure_topics(&config).await.unwrap();
    let cx = NormalizeCtx {
        channel_id: "bench",
        tenant: "bench",
        received_at: chrono_now(),
    };
    let events: Arc<Vec<_>> = Arc::new(
        bodies
            .iter()
            .map(|(b, _)| normalize(b.as_bytes(), &cx).unwrap().events.remove(0))
            .collect(),
    );
    let publisher = Publisher::new(KafkaPublisher::new(&config).unwrap());
    produce_for(&publisher, &events, warmup()).await;
    let (cpu_before, broker_before) = (own_cpu_seconds(), broker_cpu_seconds());
    let run = produce_for(&publisher, &events, duration).await;
    (
        run,
        own_cpu_seconds() - cpu_before,
        broker_cpu_seconds() - broker_before,
    )
}

/// Publishes `events` round-robin, `concurrency()` in flight, for `duration`.
async fn produce_for(
    publisher: &Publisher,
    events: &Arc<Vec<omnigate_model::pb::Event>>,
    duration: Duration,
) -> Run {
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency())
        .map(|worker| {
            let (publisher, events) = (publisher.clone(), events.clone());
            tokio::spawn(async move {
                let (mut latencies, mut errors, mut n) = (Vec::new(), 0, 0usize);
                while started.elapsed() < duration {
                    let event = events[(worker + n * concurrency()) % events.len()].clone();
                    n += 1;
                    let sent = Instant::now();
                    match publisher.event(Topic::Inbound, event).await {
                        Ok(_) => latencies.push(sent.elapsed().as_micros() as u32),
                        Err(_) => errors += 1,
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    Run::collect(tasks, started).await
}

fn chrono_now() -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now()
}

/// Starts the gateway with `config` and waits until it is ready on `port`.
async fn start_gateway(config: &std::path::Path, port: u16) -> std::process::Child {
    let gateway = start_omnigate(config);
    wait_http(&format!("http://127.0.0.1:{port}/readyz")).await;
    gateway
}

async fn wait_http(url: &str) {
    for _ in 0..300 {
        if reqwest::get(url)
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{url} never came up");
}

fn main() {
    omnigate_e2e::bench::block_on(async {
        let duration = Duration::from_secs(seconds());
        let bodies = Arc::new(bodies());
        let mean = bodies.iter().map(|(b, _)| b.len()).sum::<usize>() / bodies.len();
        println!(
            "webhook_ingest: {} connections, {}s per run, bodies of {mean} bytes\n",
            concurrency(),
            duration.as_secs()
        );

        // Baseline 1: bare hyper.
        let (bare, bare_cpu) = bare_hyper(&bodies, duration, "baseline: bare hyper, 200").await;

        // Baseline 2: rdkafka producing the same event bytes, no HTTP.
        fresh_broker();
        let (produce, produce_cpu, produce_broker_cpu) = produce_baseline(&bodies, duration).await;
        produce.print("baseline: rdkafka produce, acked", f64::NAN);

        // The gateway, on an empty broker too, into the same topic layout as the baseline
        // (3 partitions).
        fresh_broker();
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        // The gateway's producer batching delay; the default config's value unless set.
        let linger: u64 = env_or("BENCH_LINGER_MS", 5);
        let config = format!(
            "roles = [\"whatsapp\"]\n[server]\nlisten = \"127.0.0.1:{port}\"\n[log]\nlevel = \"warn\"\n[kafka]\nbrokers = \"{}\"\ntopic_prefix = \"{}\"\npartitions = 3\nlinger_ms = {linger}\n[blobs]\nurl = \"file://{}\"\n[whatsapp.channels.bench]\nphone_number_id = \"106540352242922\"\nverify_token = \"v\"\napp_secret = \"bench-secret\"\naccess_token = \"t\"\n",
            brokers(),
            unique_prefix("bench-gateway"),
            dir.path().join("blobs").display()
        );
        let path = dir.path().join("bench.toml");
        std::fs::write(&path, config).unwrap();
        let gateway = start_gateway(&path, port).await;
        let url = format!("http://127.0.0.1:{port}/webhooks/whatsapp/bench");
        let requests = Requests::whatsapp(url, bodies.clone());
        let (full, gateway_cpu, gateway_broker_cpu) =
            measure(requests.clone(), requests.clone(), duration, None, &gateway).await;
        full.print("omnigate: signed POST -> Kafka ack", peak_mib(&gateway));
        stop(gateway);

        // Half the measured rate, for the latency at moderate load; again from empty.
        fresh_broker();
        let gateway = start_gateway(&path, port).await;
        let half_rate = full.rate() / 2.0;
        let (half, _, _) = measure(
            requests.clone(),
            requests,
            duration,
            Some(half_rate),
            &gateway,
        )
        .await;
        half.print(
            &format!("omnigate at half rate ({half_rate:.0}/s)"),
            peak_mib(&gateway),
        );
        stop(gateway);

        println!(
            "CPU per request: omnigate {:.1} us, bare hyper {:.1} us (server processes only); rdkafka produce {:.1} us per event",
            gateway_cpu / full.requests as f64 * 1e6,
            bare_cpu / bare.requests as f64 * 1e6,
            produce_cpu / produce.requests as f64 * 1e6
        );
        println!(
            "Broker (Kafka) CPU per event: {:.1} us under the gateway, {:.1} us under the produce baseline",
            gateway_broker_cpu / full.requests as f64 * 1e6,
            produce_broker_cpu / produce.requests as f64 * 1e6
        );
        // Voice: signed Twilio status callbacks, one call each, on an empty broker.
        fresh_broker();
        let port = free_port();
        let config = format!(
            "roles = [\"voice\"]\n[server]\nlisten = \"127.0.0.1:{port}\"\n[log]\nlevel = \"warn\"\n[kafka]\nbrokers = \"{}\"\ntopic_prefix = \"{}\"\npartitions = 3\nlinger_ms = {linger}\n[blobs]\nurl = \"file://{}\"\n[voice.channels.bench]\nprovider = \"twilio\"\nnumber = \"+15550100200\"\naccount_sid = \"AC00000000000000000000000000000000\"\nauth_token = \"bench-token\"\npublic_url = \"http://127.0.0.1:{port}\"\n",
            brokers(),
            unique_prefix("bench-voice"),
            dir.path().join("blobs").display()
        );
        let voice_path = dir.path().join("voice.toml");
        std::fs::write(&voice_path, config).unwrap();
        let gateway = start_gateway(&voice_path, port).await;
        // Distinct calls for the warm-up and the measured run: a call already rung is
        // not published again.
        let url = format!("http://127.0.0.1:{port}/webhooks/twilio/voice/bench");
        let calls = |seconds: u64| VOICE_CALLS_PER_SECOND * seconds as usize;
        let warm = twilio_requests(url.clone(), b"bench-token", 0, calls(warmup().as_secs()));
        let requests = twilio_requests(
            url,
            b"bench-token",
            calls(warmup().as_secs()),
            calls(duration.as_secs()),
        );
        let (voice, voice_cpu, voice_broker_cpu) =
            measure(warm, requests, duration, None, &gateway).await;
        voice.print("omnigate: Twilio callback -> Kafka ack", peak_mib(&gateway));
        stop(gateway);
        println!(
            "Voice: CPU per request {:.1} us; broker CPU per event {:.1} us",
            voice_cpu / voice.requests.max(1) as f64 * 1e6,
            voice_broker_cpu / voice.requests.max(1) as f64 * 1e6
        );

        // The producer baseline again, after the gateway: its rate spreads by half between
        // runs on a small machine, so the ratio takes the mean of before and after.
        fresh_broker();
        let (produce_after, _, _) = produce_baseline(&bodies, duration).await;
        produce_after.print("baseline: rdkafka produce, acked (after)", f64::NAN);
        let produce_rate = (produce.rate() + produce_after.rate()) / 2.0;
        println!("rdkafka produce, mean of before and after: {produce_rate:.0} /s");
        // Bare hyper again, after the gateway: like the producer's, its rate moves by a
        // third between runs here, so the ratio takes the mean of before and after.
        let (bare_after, _) =
            bare_hyper(&bodies, duration, "baseline: bare hyper, 200 (after)").await;
        let bare_rate = (bare.rate() + bare_after.rate()) / 2.0;
        println!("bare hyper, mean of before and after: {bare_rate:.0} /s");

        let lower = bare_rate.min(produce_rate);
        println!(
            "\nratio: omnigate / lower baseline = {:.2} (target >= 0.50); acknowledged events/s = {:.0} (target >= 10000); p99 at half rate = {:.2} ms (target < 25)",
            full.rate() / lower,
            full.rate(),
            half.percentile(0.99)
        );
        println!(
            "ratio: voice / lower baseline = {:.2} (target >= 0.50); acknowledged call events/s = {:.0}",
            voice.rate() / lower,
            voice.rate()
        );
    });
}

//! `make bench`: signed WhatsApp webhook POSTs (about 1.5 KB) at the real gateway,
//! each answered only after Kafka acknowledged its event, beside two baselines
//! measured in the same run:
//!   1. a bare hyper server that reads the body and answers 200;
//!   2. rdkafka producing the same event bytes with no HTTP at all.
//!
//! and signed Twilio status callbacks (one call each) at the voice connector, against
//! the same two baselines.
//!
//! The four take turns in short slices (`BENCH_SLICE_SECONDS`, 2 s), in a rotating
//! order, until each has had `BENCH_SECONDS` (10 s): a shared host's speed moves by
//! more than half from one run of a few seconds to the next, and turns give every
//! side the same mix of fast and slow moments. Then the gateway at half its measured rate, for
//! the latency at moderate load.
//!
//! Prints requests/s, p50/p99 latency and peak memory, and the gateway's ratio to the
//! lower baseline. Needs the broker `make bench` starts (Apache Kafka, KRaft); the
//! bench restarts it empty, and each side runs its load unmeasured first.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use omnigate_connector_voice::verify::twilio_signature;
use omnigate_connector_whatsapp::{NormalizeCtx, normalize, verify::sign};
use omnigate_core::publish::{Publisher, Topic};
use omnigate_e2e::{
    bench::{
        Run, Running, broker_cpu_seconds, cpu_seconds, env_or, fresh_broker, own_cpu_seconds,
        peak_mib, start_baseline, start_omnigate, wait_http, warmup,
    },
    brokers, free_port, kafka_config, unique_prefix,
};
use omnigate_kafka::{KafkaPublisher, admin};
use std::{
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
const VOICE_CALLS_PER_SECOND: usize = 80_000;

/// Measured seconds per side, over all its slices.
fn seconds() -> u64 {
    env_or("BENCH_SECONDS", 10)
}

/// Seconds of one slice: one side's turn.
fn slice_seconds() -> u64 {
    env_or("BENCH_SLICE_SECONDS", 2)
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

/// POSTs the requests with `concurrency()` keep-alive connections of `client` for
/// `duration`; `rate` paces the total to that many requests per second when set.
async fn load(
    client: &reqwest::Client,
    requests: Requests,
    duration: Duration,
    rate: Option<f64>,
) -> Run {
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

/// A keep-alive client with a connection for each request in flight.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency())
        .build()
        .unwrap()
}

/// What one side of the bench loads.
enum Load {
    /// Signed POSTs at a server, the same bodies over and over.
    Http(reqwest::Client, Requests),
    /// Twilio callbacks at the voice connector: new calls every slice, since a call
    /// already rung is not published again.
    Voice {
        client: reqwest::Client,
        url: String,
        next_call: usize,
    },
    /// The Kafka producer alone, in this process.
    Produce(Publisher, Arc<Vec<omnigate_model::pb::Event>>),
}

/// One side of the bench: its load, the process whose CPU it is billed, and what its
/// slices measured so far.
struct Side {
    label: &'static str,
    load: Load,
    /// `None`: the load runs in this process (the producer).
    server: Option<Running>,
    run: Run,
    cpu_seconds: f64,
    broker_cpu_seconds: f64,
}

impl Side {
    fn new(label: &'static str, load: Load, server: Option<Running>) -> Self {
        Self {
            label,
            load,
            server,
            run: Run::default(),
            cpu_seconds: 0.0,
            broker_cpu_seconds: 0.0,
        }
    }

    /// Runs the load for `duration`, unmeasured when `measured` is false.
    async fn turn(&mut self, duration: Duration, measured: bool) -> f64 {
        let server = &self.server;
        let mark = || {
            let cpu = server
                .as_ref()
                .map_or_else(own_cpu_seconds, |s| cpu_seconds(&s.0));
            (cpu, broker_cpu_seconds())
        };
        // Each arm marks the CPU clocks right before its load starts.
        let ((cpu_before, broker_before), run) = match &mut self.load {
            Load::Http(client, requests) => {
                (mark(), load(client, requests.clone(), duration, None).await)
            }
            Load::Voice {
                client,
                url,
                next_call,
            } => {
                // This turn's calls are made before its clock starts.
                let count = VOICE_CALLS_PER_SECOND * duration.as_secs().max(1) as usize;
                let requests = twilio_requests(url.clone(), b"bench-token", *next_call, count);
                *next_call += count;
                (mark(), load(client, requests, duration, None).await)
            }
            Load::Produce(publisher, events) => {
                (mark(), produce_for(publisher, events, duration).await)
            }
        };
        let rate = run.rate();
        if measured {
            let (cpu_after, broker_after) = mark();
            self.cpu_seconds += cpu_after - cpu_before;
            self.broker_cpu_seconds += broker_after - broker_before;
            self.run.absorb(run);
        }
        rate
    }

    fn print(&self) {
        let memory = self.server.as_ref().map_or(f64::NAN, |s| peak_mib(&s.0));
        self.run.print(self.label, memory);
    }

    /// CPU per operation of its own process (server, or the producer), in us.
    fn cpu_us(&self) -> f64 {
        self.cpu_seconds / self.run.requests.max(1) as f64 * 1e6
    }

    /// The broker's CPU per operation, in us.
    fn broker_us(&self) -> f64 {
        self.broker_cpu_seconds / self.run.requests.max(1) as f64 * 1e6
    }
}

/// Starts the bare hyper server that reads each body and answers 200.
async fn bare_hyper() -> (Running, String) {
    let port = free_port();
    let hyper = start_baseline("bench-bare-hyper", port);
    let url = format!("http://127.0.0.1:{port}/");
    wait_http(&url).await;
    (hyper, url)
}

/// A publisher and the normalized event of every body, for the producer baseline.
async fn producer(bodies: &[(String, String)]) -> (Publisher, Arc<Vec<omnigate_model::pb::Event>>) {
    let prefix = unique_prefix("bench-produce");
    let config = kafka_config(&brokers(), &prefix);
    admin::ensure_topics(&config).await.unwrap();
    let cx = NormalizeCtx {
        channel_id: "bench",
        tenant: "bench",
        received_at: chrono::Utc::now(),
    };
    let events = bodies
        .iter()
        .map(|(b, _)| normalize(b.as_bytes(), &cx).unwrap().events.remove(0))
        .collect();
    let publisher = Publisher::new(KafkaPublisher::new(&config).unwrap());
    (publisher, Arc::new(events))
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

/// Starts the gateway with the config `toml` (written under `dir` as `name`) and
/// waits until it is ready on `port`.
async fn start_gateway(dir: &std::path::Path, name: &str, toml: &str, port: u16) -> Running {
    let path = dir.join(name);
    std::fs::write(&path, toml).unwrap();
    let gateway = Running(start_omnigate(&path));
    wait_http(&format!("http://127.0.0.1:{port}/readyz")).await;
    gateway
}

fn main() {
    omnigate_e2e::bench::block_on(async {
        let (duration, slice) = (seconds(), slice_seconds().max(1));
        let rounds = duration.div_ceil(slice);
        let bodies = Arc::new(bodies());
        let mean = bodies.iter().map(|(b, _)| b.len()).sum::<usize>() / bodies.len();
        println!(
            "webhook_ingest: {} connections, {rounds} turns of {slice} s per side, bodies of {mean} bytes\n",
            concurrency(),
        );
        fresh_broker();
        let dir = tempfile::tempdir().unwrap();
        // The gateway's producer batching delay; the default config's value unless set.
        let linger: u64 = env_or("BENCH_LINGER_MS", 5);
        let kafka = |prefix: &str| {
            format!(
                "[log]\nlevel = \"warn\"\n[kafka]\nbrokers = \"{}\"\ntopic_prefix = \"{}\"\npartitions = 3\nlinger_ms = {linger}\n[blobs]\nurl = \"file://{}\"\n",
                brokers(),
                unique_prefix(prefix),
                dir.path().join(prefix).display()
            )
        };

        let (hyper, hyper_url) = bare_hyper().await;
        let (publisher, events) = producer(&bodies).await;
        let port = free_port();
        // The same topic layout as the producer baseline (3 partitions).
        let whatsapp = start_gateway(
            dir.path(),
            "whatsapp.toml",
            &format!(
                "roles = [\"whatsapp\"]\n[server]\nlisten = \"127.0.0.1:{port}\"\n{}[whatsapp.channels.bench]\nphone_number_id = \"106540352242922\"\nverify_token = \"v\"\napp_secret = \"bench-secret\"\naccess_token = \"t\"\n",
                kafka("bench-gateway")
            ),
            port,
        )
        .await;
        let whatsapp_requests = Requests::whatsapp(
            format!("http://127.0.0.1:{port}/webhooks/whatsapp/bench"),
            bodies.clone(),
        );
        let voice_port = free_port();
        let voice = start_gateway(
            dir.path(),
            "voice.toml",
            &format!(
                "roles = [\"voice\"]\n[server]\nlisten = \"127.0.0.1:{voice_port}\"\n{}[voice.channels.bench]\nprovider = \"twilio\"\nnumber = \"+15550100200\"\naccount_sid = \"AC00000000000000000000000000000000\"\nauth_token = \"bench-token\"\npublic_url = \"http://127.0.0.1:{voice_port}\"\n",
                kafka("bench-voice")
            ),
            voice_port,
        )
        .await;

        let mut sides = [
            Side::new(
                "baseline: bare hyper, 200",
                Load::Http(client(), Requests::whatsapp(hyper_url, bodies.clone())),
                Some(hyper),
            ),
            Side::new(
                "baseline: rdkafka produce, acked",
                Load::Produce(publisher, events),
                None,
            ),
            Side::new(
                "omnigate: signed POST -> Kafka ack",
                Load::Http(client(), whatsapp_requests.clone()),
                Some(whatsapp),
            ),
            Side::new(
                "omnigate: Twilio callback -> Kafka ack",
                Load::Voice {
                    client: client(),
                    url: format!("http://127.0.0.1:{voice_port}/webhooks/twilio/voice/bench"),
                    next_call: 0,
                },
                Some(voice),
            ),
        ];
        for side in &mut sides {
            side.turn(warmup(), false).await;
        }
        // Each side takes every place in the order in turn.
        for round in 0..rounds as usize {
            let mut line = format!("turn {}:", round + 1);
            for i in 0..sides.len() {
                let side = &mut sides[(round + i) % sides.len()];
                let rate = side.turn(Duration::from_secs(slice), true).await;
                line.push_str(&format!("  {} {rate:.0}/s", side.label));
            }
            println!("{line}");
        }
        println!();
        for side in &sides {
            side.print();
        }
        let [bare, produce, full, voice] = &sides;

        // Half the measured rate, for the latency at moderate load.
        let half_rate = full.run.rate() / 2.0;
        let Load::Http(whatsapp_client, _) = &full.load else {
            unreachable!("the WhatsApp side posts over HTTP")
        };
        let half = load(
            whatsapp_client,
            whatsapp_requests,
            Duration::from_secs(duration),
            Some(half_rate),
        )
        .await;
        half.print(
            &format!("omnigate at half rate ({half_rate:.0}/s)"),
            f64::NAN,
        );

        println!(
            "CPU per request: omnigate {:.1} us, bare hyper {:.1} us (server processes only); rdkafka produce {:.1} us per event",
            full.cpu_us(),
            bare.cpu_us(),
            produce.cpu_us()
        );
        println!(
            "Broker (Kafka) CPU per event: {:.1} us under the gateway, {:.1} us under the produce baseline",
            full.broker_us(),
            produce.broker_us()
        );
        println!(
            "Voice: CPU per request {:.1} us; broker CPU per event {:.1} us",
            voice.cpu_us(),
            voice.broker_us()
        );
        let lower = bare.run.rate().min(produce.run.rate());
        println!(
            "\nratio: omnigate / lower baseline = {:.2} (target >= 0.50); acknowledged events/s = {:.0} (target >= 10000); p99 at half rate = {:.2} ms (target < 25)",
            full.run.rate() / lower,
            full.run.rate(),
            half.percentile(0.99)
        );
        println!(
            "ratio: voice / lower baseline = {:.2} (target >= 0.50); acknowledged call events/s = {:.0}",
            voice.run.rate() / lower,
            voice.run.rate()
        );
    });
}

//! `make bench`: the router (release binary, SQLite contact store) over a backlog of
//! inbound events, beside a baseline measured in the same run that consumes and
//! re-produces the same records with no routing logic. Prints events/s and memory,
//! then the publish-to-routed latency at a moderate rate.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use omnigate_core::publish::{Outgoing, Publisher, Topic};
use omnigate_e2e::{
    bench::{
        Run, broker_cpu_seconds, cpu_seconds, env_or, fresh_broker, latencies, own_cpu_seconds,
        own_peak_mib, paced_rate, peak_mib, publish_paced, start_omnigate, stop,
    },
    brokers, free_port, kafka_config, unique_prefix,
};
use omnigate_kafka::{
    KafkaPublisher, admin,
    consumer::{self, Completion},
};
use omnigate_model::{EventType, event_id, pb};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

fn events() -> usize {
    env_or("BENCH_EVENTS", 300_000)
}

const CONVERSATIONS: usize = 5_000;

/// A realistic mix: email, WhatsApp, live chat and calls, ten events per conversation.
fn event(n: usize) -> pb::Event {
    let k = n % CONVERSATIONS;
    let (kind, key, email, phone) = match k % 4 {
        0 => (
            pb::ChannelKind::Email,
            format!("email:mail:<t{k}@x>"),
            format!("user{k}@example.com"),
            String::new(),
        ),
        1 => (
            pb::ChannelKind::Whatsapp,
            format!("whatsapp:1065:49170{k:07}"),
            String::new(),
            format!("+49170{k:07}"),
        ),
        2 => (
            pb::ChannelKind::Livechat,
            format!("livechat:web:v{k}"),
            format!("user{k}@example.com"),
            String::new(),
        ),
        _ => (
            pb::ChannelKind::Voice,
            format!("voice:pbx:+1650{k:07}"),
            String::new(),
            format!("+1650{k:07}"),
        ),
    };
    let text = if n.is_multiple_of(7) {
        "I need a refund for my last invoice"
    } else {
        "Where is my order? It has not arrived yet."
    };
    pb::Event {
        id: event_id(kind, "bench", &format!("m{n}"), "message.received").to_string(),
        r#type: EventType::MessageReceived.as_str().into(),
        source: "/omnigate/bench".into(),
        time: Some(omnigate_model::Timestamp {
            seconds: 1_781_085_600 + n as i64 / 100,
            nanos: 0,
        }),
        tenant: "acme".into(),
        conversation_key: key,
        payload: Some(pb::event::Payload::Message(pb::Message {
            channel: Some(pb::Channel {
                kind: kind as i32,
                channel_id: "bench".into(),
                address: String::new(),
            }),
            contact: Some(pb::Contact {
                email,
                phone_e164: phone,
                ..Default::default()
            }),
            provider_message_id: format!("m{n}"),
            parts: vec![pb::ContentPart {
                part: Some(pb::content_part::Part::Text(text.into())),
            }],
            ..Default::default()
        })),
        routing: None,
    }
}

async fn backlog(prefix: &str, n: usize) {
    let config = kafka_config(&brokers(), prefix);
    admin::ensure_topics(&config).await.unwrap();
    let publisher = Publisher::new(KafkaPublisher::new(&config).unwrap());
    let workers: Vec<_> = (0..64)
        .map(|w| {
            let publisher = publisher.clone();
            tokio::spawn(async move {
                for i in (w..n).step_by(64) {
                    publisher.event(Topic::Inbound, event(i)).await.unwrap();
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
}

/// Consumes the backlog in a group and re-produces every record unchanged.
async fn passthrough(prefix: &str, n: usize) -> Duration {
    let config = kafka_config(&brokers(), prefix);
    let publisher = Publisher::new(KafkaPublisher::new(&config).unwrap());
    let consumer = consumer::subscribe(&config, "bench-passthrough", &[Topic::Inbound]).unwrap();
    let shutdown = CancellationToken::new();
    let done = shutdown.clone();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let run = tokio::spawn(consumer::run_pipelined(
        consumer,
        shutdown,
        2000,
        1,
        move |record| {
            let (publisher, tx) = (publisher.clone(), tx.clone());
            async move {
                let key =
                    String::from_utf8_lossy(record.key.as_deref().unwrap_or_default()).into_owned();
                let completion: Completion = Box::pin(async move {
                    let out = Outgoing::State {
                        key,
                        value: record.value.to_vec(),
                        ce_type: "io.omnigate.bench.v1",
                        source: "/bench".into(),
                    };
                    while publisher.publish(Topic::Routed, out.clone()).await.is_err() {}
                    let _ = tx.send(());
                });
                Ok(completion)
            }
        },
    ));
    // Timed from the first re-produced record to the last, as the router is: joining
    // the group and the first fetch are not part of either run.
    rx.recv().await.unwrap();
    let first = Instant::now();
    for _ in 1..n {
        rx.recv().await.unwrap();
    }
    let elapsed = first.elapsed();
    done.cancel();
    let _ = run.await;
    elapsed
}

/// Latency at a moderate rate, once the router has worked off the backlog: publishes
/// the paced events ([`publish_paced`]) and times each from its publish call to its
/// routed record on Kafka.
async fn routed_latency(prefix: &str, first: usize) -> Run {
    use rdkafka::{
        Message, Offset, TopicPartitionList,
        consumer::{Consumer, StreamConsumer},
        message::Headers,
    };
    let config = kafka_config(&brokers(), prefix);
    let routed = Topic::Routed.name(prefix);
    let reader: StreamConsumer = config
        .client_config()
        .set("group.id", unique_prefix("bench-latency"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut partitions = TopicPartitionList::new();
    for partition in 0..3 {
        partitions
            .add_partition_offset(&routed, partition, Offset::End)
            .unwrap();
    }
    reader.assign(&partitions).unwrap();
    // The end offsets are looked up as the reader starts; nothing is published before.
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Every routed record's id as it arrives (conversation.* records have ids of their own).
    let (arrived, mut arrivals) = tokio::sync::mpsc::unbounded_channel();
    let reading = tokio::spawn(async move {
        while let Ok(message) = reader.recv().await {
            let id = message
                .headers()
                .and_then(|h| h.iter().find(|h| h.key == "ce_id"))
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned());
            if let Some(id) = id
                && arrived.send((id, Instant::now())).is_err()
            {
                return;
            }
        }
    });

    let publisher = Publisher::new(KafkaPublisher::new(&config).unwrap());
    // A new producer's first publish waits for its connection and producer id: that is
    // not the router's latency. This event (numbered past any paced one) is routed
    // too, untimed.
    publisher
        .event(Topic::Inbound, event(first + 10_000_000))
        .await
        .unwrap();
    let published = publish_paced(
        &publisher,
        Topic::Inbound,
        |i| event(first + i),
        |event| event.id.clone(),
    )
    .await;
    let mut seen = Vec::with_capacity(published.len());
    let mut outstanding = published.len();
    while outstanding > 0 {
        let (id, at) = tokio::time::timeout(Duration::from_secs(120), arrivals.recv())
            .await
            .expect("every paced event routed within 120 s")
            .unwrap();
        if published.contains_key(&id) {
            outstanding -= 1;
        }
        seen.push((id, at));
    }
    reading.abort();
    latencies(&published, &seen)
}

async fn routed_so_far(metrics: &str) -> i64 {
    let Ok(response) = reqwest::get(metrics).await else {
        return 0;
    };
    let text = response.text().await.unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with("omnigate_kafka_produced_total{topic=\"routed.v1\"}"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v as i64)
        .unwrap_or(0)
}

fn main() {
    omnigate_e2e::bench::block_on(async {
        let n = events();
        println!("router_throughput: {n} events over {CONVERSATIONS} conversations\n");
        let baseline_prefix = unique_prefix("bench-pass");
        let router_prefix = unique_prefix("bench-router");
        // Each side works off its own backlog on an empty broker, so neither pays for
        // the other's data.
        fresh_broker();
        backlog(&baseline_prefix, n).await;

        let (cpu_before, broker_before) = (own_cpu_seconds(), broker_cpu_seconds());
        let elapsed = passthrough(&baseline_prefix, n).await;
        let baseline_cpu = (own_cpu_seconds() - cpu_before) / n as f64 * 1e6;
        let baseline_broker_cpu = (broker_cpu_seconds() - broker_before) / n as f64 * 1e6;
        let baseline = n as f64 / elapsed.as_secs_f64();
        println!(
            "{:<38} {baseline:>9.0} /s  ({:.1} s)  peak RSS {:>6.1} MiB (bench process)  CPU {baseline_cpu:.1} us per event",
            "baseline: consume + re-produce",
            elapsed.as_secs_f64(),
            own_peak_mib()
        );

        fresh_broker();
        backlog(&router_prefix, n).await;
        let broker_before = broker_cpu_seconds();
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let config = format!(
            "roles = [\"router\"]\n[server]\nlisten = \"127.0.0.1:{}\"\n[log]\nlevel = \"warn\"\n[kafka]\nbrokers = \"{}\"\ntopic_prefix = \"{router_prefix}\"\npartitions = 3\n[blobs]\nurl = \"file://{}\"\n[router]\nrules_file = \"{}\"\ndatabase_url = \"sqlite://{}?mode=rwc\"\n",
            port,
            brokers(),
            dir.path().join("blobs").display(),
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../config/routing.toml")
                .display(),
            dir.path().join("router.db").display(),
        );
        let path = dir.path().join("router.toml");
        std::fs::write(&path, config).unwrap();
        let router = start_omnigate(&path);
        // Routed records: one per event plus one conversation.assigned per conversation,
        // counted by the router's own acknowledged-produce metric.
        let target = (n + CONVERSATIONS) as i64;
        let metrics = format!("http://127.0.0.1:{port}/metrics");
        let mut first: Option<Instant> = None;
        let deadline = Instant::now() + Duration::from_secs(600);
        let size = loop {
            let size = routed_so_far(&metrics).await;
            if size > 0 && first.is_none() {
                first = Some(Instant::now());
            }
            if size >= target || Instant::now() > deadline {
                break size;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let elapsed = first.map(|f| f.elapsed()).unwrap_or_default();
        let rate = n as f64 * (size as f64 / target as f64) / elapsed.as_secs_f64();
        println!(
            "{:<38} {rate:>9.0} /s  ({:.1} s)  peak RSS {:>6.1} MiB  CPU {:.1} us per event",
            "omnigate router",
            elapsed.as_secs_f64(),
            peak_mib(&router),
            cpu_seconds(&router) / n as f64 * 1e6
        );
        let router_broker_cpu = (broker_cpu_seconds() - broker_before) / n as f64 * 1e6;
        let latency = routed_latency(&router_prefix, n).await;
        println!(
            "{:<38} p50 {:>7.2} ms  p99 {:>7.2} ms  ({} events at {}/s)",
            "publish -> routed",
            latency.percentile(0.5),
            latency.percentile(0.99),
            latency.requests,
            paced_rate(),
        );
        stop(router);
        println!(
            "Broker (Kafka) CPU per event: {router_broker_cpu:.1} us under the router, {baseline_broker_cpu:.1} us under the baseline"
        );
        println!(
            "\nratio: router / baseline = {:.2} (target >= 0.70); routed events/s = {rate:.0} (target >= 20000)",
            rate / baseline
        );
    });
}

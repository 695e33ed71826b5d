//! The publisher against a real Kafka-compatible broker (Apache Kafka): 10,000 events from
//! many tasks, consumed back with none missing, per-key order kept, headers and ids
//! as the contract says.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use omnigate_core::publish::{Publisher, Topic};
use omnigate_e2e::{brokers, kafka_config, read_topic, unique_prefix};
use omnigate_kafka::{KafkaPublisher, admin};
use omnigate_model::{EventType, event_id, pb};
use std::{collections::HashMap, time::Duration};

const TASKS: usize = 50;
const PER_TASK: usize = 200;

fn event(task: usize, seq: usize) -> pb::Event {
    let wamid = format!("wamid.{task}.{seq}");
    let key = omnigate_model::conversation_key::whatsapp("1065", &format!("4915{task:06}"));
    pb::Event {
        id: event_id(
            pb::ChannelKind::Whatsapp,
            "spine",
            &wamid,
            "message.received",
        )
        .to_string(),
        r#type: EventType::MessageReceived.as_str().into(),
        source: "/omnigate/whatsapp/spine".into(),
        time: Some(omnigate_model::Timestamp {
            seconds: 1_749_416_383,
            nanos: 0,
        }),
        tenant: "acme".into(),
        conversation_key: key,
        payload: Some(pb::event::Payload::Message(pb::Message {
            provider_message_id: wamid,
            parts: vec![pb::ContentPart {
                part: Some(pb::content_part::Part::Text(format!("{seq}"))),
            }],
            ..Default::default()
        })),
        routing: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_events_round_trip_in_order() {
    let prefix = unique_prefix("spine");
    let config = kafka_config(&brokers(), &prefix);
    let created = admin::ensure_topics(&config).await.unwrap();
    assert_eq!(
        created.len(),
        Topic::ALL.len(),
        "every contract topic is created: {created:?}"
    );
    assert!(
        created.contains(&Topic::Jobs.name(&prefix)),
        "the jobs topic too: {created:?}"
    );
    assert!(
        admin::ensure_topics(&config).await.unwrap().is_empty(),
        "a second bootstrap creates nothing"
    );
    let assignments = admin::topic_settings(&config, &Topic::Assignments.name(&prefix))
        .await
        .unwrap();
    assert_eq!(
        assignments.get("cleanup.policy").map(String::as_str),
        Some("compact"),
        "the router's state topic is compacted: {assignments:?}"
    );
    let inbound = admin::topic_settings(&config, &Topic::Inbound.name(&prefix))
        .await
        .unwrap();
    assert_eq!(
        inbound.get("cleanup.policy").map(String::as_str),
        Some("delete"),
        "event topics keep their retention: {inbound:?}"
    );

    let publisher = Publisher::new(KafkaPublisher::new(&config).unwrap());
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let publisher = publisher.clone();
        tasks.push(tokio::spawn(async move {
            // Sequential per task, so each key's events are produced in order.
            for seq in 0..PER_TASK {
                publisher
                    .event(Topic::Inbound, event(task, seq))
                    .await
                    .unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }

    let total = TASKS * PER_TASK;
    let records = read_topic(
        &brokers(),
        &Topic::Inbound.name(&prefix),
        total,
        Duration::from_secs(120),
    );
    assert_eq!(
        records.len(),
        total,
        "every published event is on the topic, once"
    );

    let mut next_seq: HashMap<String, usize> = HashMap::new();
    let mut partition_of: HashMap<String, i32> = HashMap::new();
    let mut by_partition: Vec<_> = records.iter().collect();
    by_partition.sort_by_key(|r| (r.partition, r.offset));
    for record in by_partition {
        let event = omnigate_model::from_json(&record.value).unwrap();
        let h = &record.headers;
        assert_eq!(h["ce_specversion"], "1.0");
        assert_eq!(h["ce_id"], event.id);
        assert_eq!(h["ce_type"], "io.omnigate.message.received.v1");
        assert_eq!(h["ce_source"], "/omnigate/whatsapp/spine");
        assert_eq!(h["ce_time"], "2025-06-08T20:59:43Z");
        assert_eq!(h["ce_subject"], record.key);
        assert_eq!(h["ce_tenant"], "acme");
        assert_eq!(h["content-type"], "application/json");
        assert_eq!(
            record.key, event.conversation_key,
            "keyed by conversation key"
        );
        let Some(pb::event::Payload::Message(message)) = &event.payload else {
            panic!("not a message");
        };
        let (task, seq) = message.provider_message_id["wamid.".len()..]
            .split_once('.')
            .unwrap();
        let (task, seq): (usize, usize) = (task.parse().unwrap(), seq.parse().unwrap());
        assert_eq!(
            event.id,
            event_id(
                pb::ChannelKind::Whatsapp,
                "spine",
                &message.provider_message_id,
                "message.received"
            )
            .to_string(),
            "deterministic UUIDv5 id"
        );
        let expected = next_seq.entry(record.key.clone()).or_default();
        assert_eq!(seq, *expected, "per-key order kept for task {task}");
        *expected += 1;
        let partition = *partition_of
            .entry(record.key.clone())
            .or_insert(record.partition);
        assert_eq!(partition, record.partition, "one key, one partition");
    }
    assert_eq!(next_seq.len(), TASKS);
    assert!(next_seq.values().all(|n| *n == PER_TASK));
}

/// `run_pipelined` with lanes: partitions are decided at once, each in offset order,
/// and every offset is stored and committed, so the group re-reads nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_lanes_decide_partitions_at_once_each_in_order() {
    use omnigate_kafka::consumer::{self, Completion};
    use std::sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    };
    use tokio_util::sync::CancellationToken;

    const KEYS: usize = 12;
    const PER_KEY: usize = 100;
    let prefix = unique_prefix("lanes");
    let config = kafka_config(&brokers(), &prefix);
    admin::ensure_topics(&config).await.unwrap();
    let publisher = Publisher::new(KafkaPublisher::new(&config).unwrap());
    let publish = |keys: std::ops::Range<usize>, per_key: usize| {
        let publisher = publisher.clone();
        async move {
            let tasks: Vec<_> = keys
                .map(|task| {
                    let publisher = publisher.clone();
                    tokio::spawn(async move {
                        for seq in 0..per_key {
                            publisher
                                .event(Topic::Inbound, event(task, seq))
                                .await
                                .unwrap();
                        }
                    })
                })
                .collect();
            for task in tasks {
                task.await.unwrap();
            }
        }
    };
    publish(0..KEYS, PER_KEY).await;

    // Decided (partition, offset, key, seq) in deciding order, and how many decide at once.
    type Seen = Arc<Mutex<Vec<(i32, i64, String, usize)>>>;
    let run = |expected: usize| {
        let config = config.clone();
        async move {
            let seen: Seen = Arc::default();
            let (deciding, most_at_once) =
                (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
            let (done, mut finished) = tokio::sync::mpsc::unbounded_channel::<()>();
            let consumer = consumer::subscribe(&config, "lanes", &[Topic::Inbound]).unwrap();
            let shutdown = CancellationToken::new();
            let decide = {
                let (seen, deciding, most_at_once) = (
                    Arc::clone(&seen),
                    Arc::clone(&deciding),
                    Arc::clone(&most_at_once),
                );
                move |record: Arc<consumer::ConsumedRecord>| {
                    let (seen, deciding, most_at_once, done) = (
                        Arc::clone(&seen),
                        Arc::clone(&deciding),
                        Arc::clone(&most_at_once),
                        done.clone(),
                    );
                    async move {
                        let now = deciding.fetch_add(1, Ordering::SeqCst) + 1;
                        most_at_once.fetch_max(now, Ordering::SeqCst);
                        // A decision that waits (as the router's does on its database).
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        let event: pb::Event = record.decode().unwrap();
                        let Some(pb::event::Payload::Message(m)) = &event.payload else {
                            panic!("not a message");
                        };
                        let seq: usize = m.parts[0]
                            .part
                            .as_ref()
                            .map(|p| match p {
                                pb::content_part::Part::Text(t) => t.parse().unwrap(),
                                _ => panic!("not text"),
                            })
                            .unwrap();
                        seen.lock().unwrap().push((
                            record.partition,
                            record.offset,
                            event.conversation_key,
                            seq,
                        ));
                        deciding.fetch_sub(1, Ordering::SeqCst);
                        let completion: Completion = Box::pin(async move {
                            // Completions finish out of order; offsets must not.
                            tokio::time::sleep(Duration::from_millis(seq as u64 % 5)).await;
                            let _ = done.send(());
                        });
                        Ok(completion)
                    }
                }
            };
            let task = tokio::spawn(consumer::run_pipelined(
                consumer,
                shutdown.clone(),
                200,
                3,
                decide,
            ));
            for _ in 0..expected {
                tokio::time::timeout(Duration::from_secs(60), finished.recv())
                    .await
                    .unwrap()
                    .unwrap();
            }
            // Anything beyond `expected` would be a record read twice.
            tokio::time::sleep(Duration::from_millis(1500)).await;
            shutdown.cancel();
            task.await.unwrap().unwrap();
            let seen = std::mem::take(&mut *seen.lock().unwrap());
            (seen, most_at_once.load(Ordering::SeqCst))
        }
    };

    let (seen, most_at_once) = run(KEYS * PER_KEY).await;
    assert_eq!(seen.len(), KEYS * PER_KEY, "every record decided once");
    assert!(
        most_at_once > 1,
        "lanes decide at once: at most {most_at_once} did"
    );
    let mut last_offset: HashMap<i32, i64> = HashMap::new();
    let mut next_seq: HashMap<String, usize> = HashMap::new();
    for (partition, offset, key, seq) in &seen {
        let last = last_offset.entry(*partition).or_insert(-1);
        assert!(
            offset > last,
            "partition {partition} decided in order: {offset} after {last}"
        );
        *last = *offset;
        let expected = next_seq.entry(key.clone()).or_default();
        assert_eq!(seq, expected, "key {key} decided in order");
        *expected += 1;
    }

    // The offsets were committed: the group, started again, sees only what is new.
    publish(KEYS..KEYS + 2, 5).await;
    let (again, _) = run(10).await;
    assert_eq!(
        again.len(),
        10,
        "only the 10 new records are read again: {again:?}"
    );
    let new_keys: std::collections::HashSet<String> = (KEYS..KEYS + 2)
        .map(|task| event(task, 0).conversation_key)
        .collect();
    assert!(again.iter().all(|(_, _, key, _)| new_keys.contains(key)));
}

/// `run` commits what it handled soon after, while it keeps running (not only when it
/// stops, nor at librdkafka's once-a-minute timer): a crash re-reads only the last
/// moment's records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handled_records_are_committed_while_the_consumer_runs() {
    use omnigate_kafka::consumer;
    use rdkafka::{
        Offset, TopicPartitionList,
        consumer::{BaseConsumer, Consumer},
    };
    use tokio_util::sync::CancellationToken;

    const RECORDS: usize = 30;
    let prefix = unique_prefix("commits");
    let config = kafka_config(&brokers(), &prefix);
    admin::ensure_topics(&config).await.unwrap();
    let publisher = Publisher::new(KafkaPublisher::new(&config).unwrap());
    let topic = Topic::Inbound.name(&prefix);
    let reader: BaseConsumer = config
        .client_config()
        .set("group.id", format!("{prefix}commits"))
        .create()
        .unwrap();
    let consumer = consumer::subscribe(&config, "commits", &[Topic::Inbound]).unwrap();
    let shutdown = CancellationToken::new();
    let (handled_tx, mut handled) = tokio::sync::mpsc::unbounded_channel();
    let task = tokio::spawn(consumer::run(consumer, shutdown.clone(), move |record| {
        let handled_tx = handled_tx.clone();
        async move {
            let _ = handled_tx.send((record.partition, record.offset));
            Ok(())
        }
    }));

    // Two rounds, each checked while the consumer keeps running.
    let mut next: HashMap<i32, i64> = HashMap::new();
    for round in 0..2 {
        for seq in 0..RECORDS {
            publisher
                .event(Topic::Inbound, event(seq % 3, round * RECORDS + seq))
                .await
                .unwrap();
        }
        for _ in 0..RECORDS {
            let (partition, offset) = tokio::time::timeout(Duration::from_secs(60), handled.recv())
                .await
                .unwrap()
                .unwrap();
            next.insert(partition, offset + 1);
        }
        let handled_at = std::time::Instant::now();
        let mut partitions = TopicPartitionList::new();
        for partition in next.keys() {
            partitions.add_partition(&topic, *partition);
        }
        loop {
            let committed = reader
                .committed_offsets(partitions.clone(), Duration::from_secs(5))
                .unwrap();
            let all = next.iter().all(|(partition, offset)| {
                committed
                    .find_partition(&topic, *partition)
                    .map(|entry| entry.offset())
                    == Some(Offset::Offset(*offset))
            });
            if all {
                break;
            }
            assert!(
                handled_at.elapsed() < Duration::from_secs(3),
                "round {round}: handled offsets {next:?} committed within 3 s, got {committed:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

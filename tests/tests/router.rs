//! The router end to end: the `omnigate` binary with the router role, Apache Kafka, and the
//! contact store (SQLite, and PostgreSQL for the two-instance test).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use omnigate_core::publish::Topic;
use omnigate_e2e::{
    Gateway, Record, brokers, fresh_postgres_database, json, read_topic, unique_prefix,
};
use omnigate_model::{EventType, event_id, pb};
use serde_json::Value;
use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

/// Wednesday 2026-06-10 10:00 UTC (12:00 in Berlin: billing is open).
const T0: i64 = 1_781_085_600;

struct Msg<'a> {
    kind: pb::ChannelKind,
    channel: &'a str,
    key: String,
    email: &'a str,
    phone: &'a str,
    verified: bool,
    subject: &'a str,
    text: &'a str,
    id: String,
    at: i64,
}

fn event(m: Msg<'_>) -> pb::Event {
    pb::Event {
        id: event_id(m.kind, m.channel, &m.id, "message.received").to_string(),
        r#type: EventType::MessageReceived.as_str().into(),
        source: format!("/omnigate/{}/{}", m.kind.short_name(), m.channel),
        time: Some(omnigate_model::Timestamp {
            seconds: m.at,
            nanos: 0,
        }),
        tenant: "acme".into(),
        conversation_key: m.key,
        payload: Some(pb::event::Payload::Message(pb::Message {
            channel: Some(pb::Channel {
                kind: m.kind as i32,
                channel_id: m.channel.into(),
                address: String::new(),
            }),
            contact: Some(pb::Contact {
                email: m.email.into(),
                phone_e164: m.phone.into(),
                provider_id: if m.kind == pb::ChannelKind::Livechat {
                    "visitor-7".into()
                } else {
                    String::new()
                },
                verified: m.verified,
                ..Default::default()
            }),
            provider_message_id: m.id,
            parts: vec![pb::ContentPart {
                part: Some(pb::content_part::Part::Text(m.text.into())),
            }],
            metadata: (!m.subject.is_empty()).then(|| {
                pb::message::Metadata::Email(pb::EmailMetadata {
                    subject: m.subject.into(),
                    ..Default::default()
                })
            }),
            ..Default::default()
        })),
        routing: None,
    }
}

fn email(from: &str, subject: &str, root: &str, n: usize) -> pb::Event {
    event(Msg {
        kind: pb::ChannelKind::Email,
        channel: "support-mail",
        key: format!("email:support-mail:{root}"),
        email: from,
        phone: "",
        verified: false,
        subject,
        text: "Hello, a question about my account.",
        id: format!("{root}-{n}"),
        at: T0 + n as i64,
    })
}

fn whatsapp(phone: &str, text: &str, n: usize) -> pb::Event {
    event(Msg {
        kind: pb::ChannelKind::Whatsapp,
        channel: "wa",
        key: format!("whatsapp:1065:{}", phone.trim_start_matches('+')),
        email: "",
        phone,
        verified: false,
        subject: "",
        text,
        id: format!("wamid.{phone}.{n}"),
        at: T0 + n as i64,
    })
}

fn call(phone: &str, n: usize) -> pb::Event {
    event(Msg {
        kind: pb::ChannelKind::Voice,
        channel: "pbx",
        key: format!("voice:pbx:{phone}"),
        email: "",
        phone,
        verified: false,
        subject: "",
        text: "",
        id: format!("call-{phone}-{n}"),
        at: T0 + n as i64,
    })
}

fn chat(email: &str, phone: &str, n: usize) -> pb::Event {
    event(Msg {
        kind: pb::ChannelKind::Livechat,
        channel: "web",
        key: "livechat:web:visitor-7".into(),
        email,
        phone,
        verified: true,
        subject: "",
        text: "hi there, quick question",
        id: format!("chat-{n}"),
        at: T0 + n as i64,
    })
}

async fn publish(prefix: &str, events: Vec<pb::Event>) {
    omnigate_e2e::publish_events(prefix, Topic::Inbound, events).await;
}

fn routed(prefix: &str, expected: usize) -> Vec<Value> {
    read_topic(
        &brokers(),
        &format!("{prefix}routed.v1"),
        expected,
        Duration::from_secs(60),
    )
    .iter()
    .map(|r: &Record| json(r))
    .collect()
}

/// conversation key -> inbox, from the routed message events.
fn inboxes(events: &[Value]) -> HashMap<String, HashSet<String>> {
    let mut map: HashMap<String, HashSet<String>> = HashMap::new();
    for e in events.iter().filter(|e| e["type"] == "message.received") {
        map.entry(e["conversationKey"].as_str().unwrap().to_string())
            .or_default()
            .insert(e["routing"]["inbox"].as_str().unwrap().to_string());
    }
    map
}

fn one(map: &HashMap<String, HashSet<String>>, key: &str) -> String {
    let set = &map[key];
    assert_eq!(set.len(), 1, "{key} in several inboxes: {set:?}");
    set.iter().next().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_stream_lands_in_the_expected_inboxes() {
    let prefix = unique_prefix("router-mixed");
    let events = vec![
        email("ceo@bigcustomer.example", "Invoice 7", "<vip@x>", 0),
        email("alice@example.com", "Refund for order 12", "<refund@x>", 1),
        email(
            "alice@example.com",
            "Re: Refund for order 12",
            "<refund@x>",
            2,
        ),
        whatsapp("+491701234567", "hallo", 3),
        whatsapp("+16505551234", "do you ship to Canada?", 4),
        email("bob@example.com", "Hello", "<bob@x>", 6),
        whatsapp("+14155550000", "hi", 7),
        email("alice@example.com", "Refund for order 12", "<refund@x>", 1),
    ];
    publish(&prefix, events).await;
    let gateway =
        Gateway::start_roles(&brokers(), &prefix, &["router", "api"], "", None, &[]).await;
    // Keys sit in different partitions, so the router sees them in any order. Later,
    // the WhatsApp customer calls, and Bob, known by email and by phone, opens a
    // verified chat that carries both.
    assert_eq!(routed(&prefix, 7 + 6).len(), 7 + 6);
    publish(
        &prefix,
        vec![
            call("+16505551234", 5),
            chat("bob@example.com", "+14155550000", 8),
        ],
    )
    .await;
    // 9 routed messages (the last is a duplicate), 8 conversations, 1 contact link.
    let routed = routed(&prefix, 9 + 8 + 1);
    let map = inboxes(&routed);
    assert_eq!(one(&map, "email:support-mail:<vip@x>"), "vip");
    assert_eq!(one(&map, "email:support-mail:<refund@x>"), "billing");
    assert_eq!(one(&map, "whatsapp:1065:491701234567"), "germany");
    assert_eq!(one(&map, "whatsapp:1065:16505551234"), "whatsapp-sales");
    assert_eq!(
        one(&map, "voice:pbx:+16505551234"),
        "whatsapp-sales",
        "the caller's open WhatsApp conversation pulls the call"
    );
    assert_eq!(one(&map, "email:support-mail:<bob@x>"), "general");
    let messages = routed
        .iter()
        .filter(|e| e["type"] == "message.received")
        .count();
    assert_eq!(
        messages,
        9,
        "the duplicate is dropped; log:\n{}",
        gateway.log()
    );

    let assigned: Vec<&Value> = routed
        .iter()
        .filter(|e| e["type"] == "conversation.assigned")
        .collect();
    assert_eq!(assigned.len(), 8);
    let call_assignment = assigned
        .iter()
        .find(|e| e["conversationKey"] == "voice:pbx:+16505551234")
        .unwrap();
    assert_eq!(call_assignment["assignment"]["rule"], "continuity");
    let whatsapp_conversation = assigned
        .iter()
        .find(|e| e["conversationKey"] == "whatsapp:1065:16505551234")
        .unwrap()["assignment"]["conversationId"]
        .clone();
    assert_eq!(
        call_assignment["assignment"]["linkedConversationIds"][0],
        whatsapp_conversation
    );

    let linked: Vec<&Value> = routed
        .iter()
        .filter(|e| e["type"] == "contact.linked")
        .collect();
    assert_eq!(linked.len(), 1, "bob's email and phone are one person");

    // The API shows a conversation with its contact's other conversations.
    let id = call_assignment["assignment"]["conversationId"]
        .as_str()
        .unwrap();
    let view: Value = reqwest::Client::new()
        .get(format!("{}/v1/conversations/{id}", gateway.url))
        .bearer_auth("omnigate-dev-key")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(view["inbox"], "whatsapp-sales");
    assert_eq!(view["channelKind"], "voice");
    assert!(
        view["linkedConversationIds"]
            .as_array()
            .unwrap()
            .contains(&whatsapp_conversation),
        "{view}"
    );
    let missing = reqwest::Client::new()
        .get(format!("{}/v1/conversations/nope", gateway.url))
        .bearer_auth("omnigate-dev-key")
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}

fn stream(keys: usize, per_key: usize) -> Vec<pb::Event> {
    let mut events = Vec::new();
    for n in 0..per_key {
        for k in 0..keys {
            events.push(match k % 3 {
                0 => email(
                    &format!("user{k}@example.com"),
                    if k % 2 == 0 { "refund" } else { "hi" },
                    &format!("<k{k}@x>"),
                    n,
                ),
                1 => whatsapp(&format!("+49170000{k:04}"), "hallo", n),
                _ => call(&format!("+1650555{k:04}"), n),
            });
        }
    }
    events
}

/// key -> (conversation ids, inboxes) over every routed message.
fn assignments(events: &[Value]) -> HashMap<String, (HashSet<String>, HashSet<String>)> {
    let mut map: HashMap<String, (HashSet<String>, HashSet<String>)> = HashMap::new();
    for e in events.iter().filter(|e| e["type"] == "message.received") {
        let entry = map
            .entry(e["conversationKey"].as_str().unwrap().to_string())
            .or_default();
        entry
            .0
            .insert(e["routing"]["conversationId"].as_str().unwrap().to_string());
        entry
            .1
            .insert(e["routing"]["inbox"].as_str().unwrap().to_string());
    }
    map
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_killed_mid_stream_loses_and_reassigns_nothing() {
    let prefix = unique_prefix("router-kill");
    // Large enough that the kill lands mid-stream even on a fast, idle machine.
    let (keys, per_key) = (100, 150);
    let events = stream(keys, per_key);
    let ids: HashSet<String> = events.iter().map(|e| e.id.clone()).collect();
    publish(&prefix, events).await;

    // The restarted process is the same instance: static group membership hands it the
    // partitions of the one that died.
    let instance = [("OMNIGATE_KAFKA__INSTANCE_ID", "router-0".to_string())];
    let first = Gateway::start_roles(&brokers(), &prefix, &["router"], "", None, &instance).await;
    // Let it route part of the stream, then kill -9. Its own count is watched, not the
    // routed topic: a reader joining the topic took long enough for the router to route
    // nearly all of the stream first.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while first.metric_sum("omnigate_kafka_consumed_total").await < 100.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the router routed nothing"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let dir = first.kill_keep_dir();
    let routed_before_restart = read_topic(
        &brokers(),
        &format!("{prefix}routed.v1"),
        0,
        Duration::from_secs(5),
    )
    .len();
    assert!(
        routed_before_restart < keys * per_key,
        "killed mid-stream, not after: {routed_before_restart} routed"
    );
    let second =
        Gateway::start_roles(&brokers(), &prefix, &["router"], "", Some(dir), &instance).await;

    let total = keys * per_key + keys;
    let routed = routed(&prefix, total);
    let found: HashSet<String> = routed
        .iter()
        .filter(|e| e["type"] == "message.received")
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    let missing = ids.difference(&found).count();
    let messages = routed
        .iter()
        .filter(|e| e["type"] == "message.received")
        .count();
    println!(
        "router kill -9: {} inbound, {routed_before_restart} routed records before restart, {messages} routed messages after, {missing} missing, {} duplicates",
        ids.len(),
        messages - found.len()
    );
    assert_eq!(missing, 0, "log:\n{}", second.log());
    for (key, (conversations, inboxes)) in assignments(&routed) {
        assert_eq!(
            conversations.len(),
            1,
            "{key} got two conversation ids: {conversations:?}"
        );
        assert_eq!(inboxes.len(), 1, "{key} got two inboxes: {inboxes:?}");
    }
    let assigned: HashSet<String> = routed
        .iter()
        .filter(|e| e["type"] == "conversation.assigned")
        .map(|e| {
            e["assignment"]["conversationId"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        assigned.len(),
        keys,
        "one conversation per key, even with replays"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_routers_agree_with_one() {
    let (keys, per_key) = (24, 10);
    let events = stream(keys, per_key);
    let single = unique_prefix("router-one");
    let pair = unique_prefix("router-two");
    publish(&single, events.clone()).await;
    publish(&pair, events).await;

    let one = Gateway::start_roles(
        &brokers(),
        &single,
        &["router"],
        "",
        None,
        &[("OMNIGATE_ROUTER__DATABASE_URL", fresh_postgres_database())],
    )
    .await;
    let shared = fresh_postgres_database();
    let a = Gateway::start_roles(
        &brokers(),
        &pair,
        &["router"],
        "",
        None,
        &[("OMNIGATE_ROUTER__DATABASE_URL", shared.clone())],
    )
    .await;
    let b = Gateway::start_roles(
        &brokers(),
        &pair,
        &["router"],
        "",
        None,
        &[("OMNIGATE_ROUTER__DATABASE_URL", shared)],
    )
    .await;

    let total = keys * per_key + keys;
    let alone = assignments(&routed(&single, total));
    let together = assignments(&routed(&pair, total));
    assert_eq!(alone.len(), keys, "{}", one.log());
    assert_eq!(
        together,
        alone,
        "two instances decide exactly like one;\nA:\n{}\nB:\n{}",
        a.log(),
        b.log()
    );
    // Each instance follows the assignments of the other outside any group: the
    // broker knows the routers' one group and nothing else of theirs.
    assert_eq!(groups(&pair), [format!("{pair}router")]);
}

/// The consumer groups the broker knows whose names start with `prefix`.
fn groups(prefix: &str) -> Vec<String> {
    use rdkafka::consumer::{BaseConsumer, Consumer as _};
    let client: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    let list = client
        .fetch_group_list(None, Duration::from_secs(10))
        .unwrap();
    let mut names: Vec<String> = list
        .groups()
        .iter()
        .map(|g| g.name().to_string())
        .filter(|name| name.starts_with(prefix))
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_reload_without_restart_and_a_broken_edit_keeps_the_old_rules() {
    let prefix = unique_prefix("router-reload");
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("routing.toml");
    std::fs::write(&rules, include_str!("../../config/routing.toml")).unwrap();
    let env = [("OMNIGATE_ROUTER__RULES_FILE", rules.display().to_string())];
    let gateway = Gateway::start_roles(&brokers(), &prefix, &["router"], "", None, &env).await;

    publish(
        &prefix,
        vec![email("a@example.com", "refund please", "<r1@x>", 0)],
    )
    .await;
    assert_eq!(
        one(&inboxes(&routed(&prefix, 2)), "email:support-mail:<r1@x>"),
        "billing"
    );

    // A broken edit is refused and logged; the old rules keep routing.
    std::fs::write(
        &rules,
        "default_inbox = \"x\"\n[[rules]]\nname = \"bad\"\ninbox = \"nowhere\"\n",
    )
    .unwrap();
    let started = std::time::Instant::now();
    while !gateway.log().contains("Routing rules not reloaded") {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no reload attempt:\n{}",
            gateway.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        gateway.log().contains("rule `bad` field `inbox`"),
        "{}",
        gateway.log()
    );
    publish(
        &prefix,
        vec![email("b@example.com", "refund again", "<r2@x>", 1)],
    )
    .await;
    assert_eq!(
        one(&inboxes(&routed(&prefix, 4)), "email:support-mail:<r2@x>"),
        "billing"
    );

    // A good edit applies to new conversations without a restart.
    std::fs::write(&rules, "default_inbox = \"everything\"\n").unwrap();
    while !gateway.log().contains("Routing rules reloaded") {
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "no reload:\n{}",
            gateway.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    publish(&prefix, vec![email("c@example.com", "refund", "<r3@x>", 2)]).await;
    let map = inboxes(&routed(&prefix, 6));
    assert_eq!(one(&map, "email:support-mail:<r3@x>"), "everything");
    assert_eq!(one(&map, "email:support-mail:<r1@x>"), "billing");
}

#[test]
fn route_explain_names_the_rule_and_why_the_others_did_not_match() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("event.json");
    let event = email("alice@example.com", "Ihre Rechnung", "<e@x>", 0);
    std::fs::write(&path, omnigate_model::to_json(&event)).unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let output = std::process::Command::new(omnigate_e2e::omnigate_bin())
        .current_dir(&root)
        .args(["route", "explain", "--config", "config/standalone.toml"])
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        text.contains("rule vip: no match (sender not on the VIP list)"),
        "{text}"
    );
    assert!(text.contains("=> inbox billing by billing"), "{text}");
}

/// Exactly-once mode on the real broker: the router is killed with SIGKILL mid-batch
/// and restarted with the same transactional id; a read-committed reader then finds
/// every inbound message routed exactly once, and each conversation opened once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactional_router_killed_mid_batch_routes_exactly_once() {
    let prefix = unique_prefix("router-txn");
    let (keys, per_key) = (60, 150);
    let events = stream(keys, per_key);
    let ids: HashSet<String> = events.iter().map(|e| e.id.clone()).collect();
    publish(&prefix, events).await;
    let env = [
        ("OMNIGATE_ROUTER__TRANSACTIONS", "true".to_string()),
        ("OMNIGATE_KAFKA__INSTANCE_ID", "router-0".to_string()),
    ];

    let first = Gateway::start_roles(&brokers(), &prefix, &["router"], "", None, &env).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while first.metric_sum("omnigate_kafka_consumed_total").await < 600.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the router routed nothing; log:\n{}",
            first.log()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let dir = first.kill_keep_dir();
    let config = omnigate_e2e::kafka_config(&brokers(), "");
    let topic = Topic::Routed.name(&prefix);
    let committed_before = committed_messages(&config, &topic).len();
    assert!(
        committed_before < ids.len(),
        "killed mid-stream, not after: {committed_before} committed"
    );
    let second = Gateway::start_roles(&brokers(), &prefix, &["router"], "", Some(dir), &env).await;

    // Wait until the committed routed stream holds every message once, or time runs out.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let routed = loop {
        let routed = committed_messages(&config, &topic);
        let messages = routed
            .iter()
            .filter(|e| e["type"] == "message.received")
            .count();
        if messages >= ids.len() || std::time::Instant::now() > deadline {
            break routed;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    // A little longer, so duplicates committed late are seen too.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let routed = if committed_messages(&config, &topic).len() > routed.len() {
        committed_messages(&config, &topic)
    } else {
        routed
    };
    let messages: Vec<&str> = routed
        .iter()
        .filter(|e| e["type"] == "message.received")
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    let found: HashSet<&str> = messages.iter().copied().collect();
    let missing = ids.iter().filter(|id| !found.contains(id.as_str())).count();
    let duplicates = messages.len() - found.len();
    let assigned = routed
        .iter()
        .filter(|e| e["type"] == "conversation.assigned")
        .count();
    println!(
        "transactional router kill -9: {} inbound, {committed_before} committed before the kill, {} routed messages after, {missing} missing, {duplicates} duplicates, {assigned} conversations opened",
        ids.len(),
        messages.len()
    );
    assert_eq!(
        (missing, duplicates, assigned),
        (0, 0, keys),
        "log:\n{}",
        second.log()
    );
}

/// Every committed record of `topic`, read to its end offsets as JSON.
fn committed_messages(config: &omnigate_kafka::KafkaConfig, topic: &str) -> Vec<Value> {
    let mut records = Vec::new();
    omnigate_kafka::reader::read_to_end(config, topic, Duration::from_secs(60), |r| {
        records.push(json(&r));
    })
    .unwrap();
    records
}

/// A second router with the same transactional id fences the first: the first stops
/// its process (its supervisor restarts it) instead of routing on as a zombie.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_transactional_router_stops_its_process() {
    let prefix = unique_prefix("router-fenced");
    publish(&prefix, stream(6, 5)).await;
    let env = [
        ("OMNIGATE_ROUTER__TRANSACTIONS", "true".to_string()),
        ("OMNIGATE_KAFKA__INSTANCE_ID", "router-0".to_string()),
    ];
    let mut first = Gateway::start_roles(&brokers(), &prefix, &["router"], "", None, &env).await;
    first
        .wait_for("/readyz", 200, Duration::from_secs(60))
        .await;
    let second = Gateway::start_roles(&brokers(), &prefix, &["router"], "", None, &env).await;
    second
        .wait_for("/readyz", 200, Duration::from_secs(60))
        .await;
    // Traffic makes the first try a transaction with its fenced producer.
    let more = stream(6, 5)
        .into_iter()
        .map(|mut e| {
            e.id = format!("{}-more", e.id);
            e
        })
        .collect();
    publish(&prefix, more).await;
    let code = first.wait_exit(Duration::from_secs(60));
    println!("fenced router exited with {code:?}");
    assert!(
        code.is_some_and(|c| c != 0),
        "the fenced router kept running (exit {code:?}); log:\n{}",
        first.log()
    );
}

/// The router restores its state by reading the assignments topic to the end offsets
/// it takes at start, however slowly the broker answers: with every request taking
/// 800 ms (longer than any quiet spell a reader might wait for), a restarted router
/// still knows every conversation before it routes anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_is_restored_to_the_end_from_a_slow_broker() {
    let mock = rdkafka::mocking::MockCluster::new(1).unwrap();
    let brokers = mock.bootstrap_servers();
    let prefix = "omnigate.";
    for topic in Topic::ALL {
        mock.create_topic(&topic.name(prefix), 3, 1).unwrap();
    }
    let keys = 40;
    let config = omnigate_e2e::kafka_config(&brokers, prefix);
    let publisher = omnigate_core::publish::Publisher::new(
        omnigate_kafka::KafkaPublisher::new(&config).unwrap(),
    );
    for event in stream(keys, 1) {
        publisher.event(Topic::Inbound, event).await.unwrap();
    }
    let first = Gateway::start_roles(&brokers, prefix, &["router"], "", None, &[]).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while first.metric_sum("omnigate_kafka_consumed_total").await < keys as f64 {
        assert!(std::time::Instant::now() < deadline, "{}", first.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Let the last assignments be acknowledged, then stop it.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let dir = first.kill_keep_dir();

    mock.broker_round_trip_time(1, Duration::from_millis(800))
        .unwrap();
    let second = Gateway::start_roles(&brokers, prefix, &["router"], "", Some(dir), &[]).await;
    // The log file holds both processes' lines: the restarted one's come last.
    let loaded = second
        .log()
        .lines()
        .rfind(|l| l.contains("Router state loaded"))
        .unwrap_or("")
        .to_string();
    println!("slow broker (800 ms per request): {loaded}");
    assert!(
        loaded.contains(&format!("conversations={keys}")),
        "every conversation restored: {loaded}\n{}",
        second.log()
    );
}

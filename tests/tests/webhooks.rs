//! Outbound webhooks end to end: the `omnigate` binary (api + webhooks roles), Apache Kafka,
//! SQLite and PostgreSQL, and local receivers. Every delivery is checked with the
//! `standardwebhooks` crate, the reference verifier.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use omnigate_core::publish::Topic;
use omnigate_e2e::{
    Gateway, brokers, fresh_postgres_database, json, publish_events, read_at_least,
    receiver::{Received, Receiver, Reply},
    unique_prefix,
};
use omnigate_model::{EventType, pb};
use serde_json::{Value, json};
use std::time::Duration;

const KEY: &str = "Bearer omnigate-dev-key";
const WAIT: Duration = Duration::from_secs(30);

/// A routed WhatsApp message of conversation `conversation`, in `inbox`.
fn routed(n: usize, conversation: &str, inbox: &str) -> pb::Event {
    pb::Event {
        id: uuid::Uuid::new_v4().to_string(),
        r#type: EventType::MessageReceived.as_str().into(),
        source: "/omnigate/whatsapp/demo".into(),
        time: Some(omnigate_model::timestamp(chrono::Utc::now())),
        tenant: "acme".into(),
        conversation_key: format!("whatsapp:1065:{conversation}"),
        payload: Some(pb::event::Payload::Message(pb::Message {
            channel: Some(pb::Channel {
                kind: pb::ChannelKind::Whatsapp as i32,
                channel_id: "demo".into(),
                address: String::new(),
            }),
            provider_message_id: format!("wamid.{n}"),
            ..Default::default()
        })),
        routing: Some(pb::Routing {
            conversation_id: format!("conv-{conversation}"),
            contact_id: "contact-1".into(),
            inbox: inbox.into(),
        }),
    }
}

fn config(database_url: &str, extra: &str) -> String {
    format!(
        r#"
[webhooks]
database_url = "{database_url}"
retry_schedule = ["0s", "300ms", "300ms", "300ms"]
poll_interval = "100ms"
endpoint_refresh = "200ms"
{extra}
"#
    )
}

const ALLOW_LOOPBACK: &str = r#"allow_networks = ["127.0.0.0/8"]"#;

async fn gateway(prefix: &str, webhooks: &str) -> Gateway {
    Gateway::start_roles(
        &brokers(),
        prefix,
        &["api", "webhooks"],
        webhooks,
        None,
        &[],
    )
    .await
}

fn sqlite(dir: &tempfile::TempDir) -> String {
    format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("hooks.db").display()
    )
}

/// Registers an endpoint; returns (id, secret).
async fn register(gateway: &Gateway, body: Value) -> (String, String) {
    let answer = api(gateway, "POST", "/v1/webhooks", Some(body)).await;
    assert_eq!(answer.0, 201, "{}", answer.1);
    // Let the dispatcher see it (it re-reads endpoints every 200 ms in these tests).
    tokio::time::sleep(Duration::from_millis(400)).await;
    (
        answer.1["id"].as_str().unwrap().to_string(),
        answer.1["secret"].as_str().unwrap().to_string(),
    )
}

async fn api(gateway: &Gateway, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let client = reqwest::Client::new();
    let mut request = client
        .request(method.parse().unwrap(), format!("{}{path}", gateway.url))
        .header("authorization", KEY);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Verifies a delivery with the reference Standard Webhooks verifier.
fn verify(secret: &str, request: &Received) {
    let verifier = standardwebhooks::Webhook::new(secret).unwrap();
    verifier
        .verify(&request.body, &request.headers)
        .unwrap_or_else(|e| panic!("signature rejected: {e:?}; headers {:?}", request.headers));
}

async fn wait_until<F: AsyncFn() -> bool>(what: &str, check: F) {
    let started = std::time::Instant::now();
    while !check().await {
        assert!(started.elapsed() < WAIT, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn delivery_round_trip(database_url: String) {
    let prefix = unique_prefix("hooks-round-trip");
    let gateway = gateway(&prefix, &config(&database_url, ALLOW_LOOPBACK)).await;
    let receiver = Receiver::start(|_, _| Reply::status(204)).await;
    let (id, secret) = register(
        &gateway,
        json!({"url": format!("{}/hooks", receiver.url), "events": ["message.*"],
               "filters": {"channel_kinds": ["whatsapp"], "inboxes": ["support"]},
               "description": "helpdesk", "headers": {"x-helpdesk-token": "t0k"}}),
    )
    .await;
    assert!(secret.starts_with("whsec_"));
    let wanted = [routed(1, "a", "support"), routed(2, "b", "support")];
    let mut other_inbox = routed(3, "c", "sales");
    other_inbox.id = "not-for-this-endpoint".into();
    let mut events = wanted.to_vec();
    events.push(other_inbox);
    publish_events(&prefix, Topic::Routed, events).await;

    let received = receiver.wait_for(2, WAIT).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let received = receiver.received().len().max(received.len());
    assert_eq!(received, 2, "only the two events in inbox support match");
    let on_kafka = read_at_least(&brokers(), &format!("{prefix}routed.v1"), 3, WAIT);
    for request in receiver.received() {
        verify(&secret, &request);
        assert!(request.header("webhook-id").starts_with("msg_"));
        assert_eq!(request.header("content-type"), "application/json");
        assert_eq!(request.header("x-helpdesk-token"), "t0k");
        assert_eq!(request.path, "/hooks");
        // The same JSON as on Kafka, byte for byte.
        let body = request.json();
        let record = on_kafka
            .iter()
            .find(|r| json(r)["id"] == body["id"])
            .expect("the delivered event is on omnigate.routed.v1");
        assert_eq!(record.value, request.body.to_vec());
        assert!(wanted.iter().any(|e| e.id == body["id"]));
    }

    let client = &gateway;
    wait_until("both deliveries are recorded as succeeded", async || {
        let (status, list) = api(
            client,
            "GET",
            &format!("/v1/webhooks/{id}/deliveries?status=succeeded"),
            None,
        )
        .await;
        status == 200 && list["deliveries"].as_array().unwrap().len() == 2
    })
    .await;
    let (_, list) = api(
        &gateway,
        "GET",
        &format!("/v1/webhooks/{id}/deliveries"),
        None,
    )
    .await;
    let first = list["deliveries"][0]["id"].as_str().unwrap().to_string();
    let (status, detail) = api(
        &gateway,
        "GET",
        &format!("/v1/webhooks/{id}/deliveries/{first}"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{detail}");
    assert_eq!(detail["attempt_log"][0]["status_code"], 204);
    assert_eq!(detail["attempts"], 1);
    // A first attempt that succeeded is kept in the delivery's own row; a replay's
    // attempt is logged after it.
    let first_started = detail["attempt_log"][0]["started_at"].clone();
    let (status, _) = api(
        &gateway,
        "POST",
        &format!("/v1/webhooks/{id}/deliveries/{first}/replay"),
        None,
    )
    .await;
    assert_eq!(status, 202);
    let path = format!("/v1/webhooks/{id}/deliveries/{first}");
    wait_until("the replay is logged as attempt 2", async || {
        let (_, d) = api(client, "GET", &path, None).await;
        d["attempts"] == 2 && d["status"] == "succeeded"
    })
    .await;
    let (_, detail) = api(&gateway, "GET", &path, None).await;
    let log = detail["attempt_log"].as_array().unwrap();
    let numbers: Vec<&Value> = log.iter().map(|a| &a["attempt"]).collect();
    assert_eq!(numbers, [1, 2], "{detail}");
    assert_eq!(log[0]["started_at"], first_started, "{detail}");
    assert!(log.iter().all(|a| a["status_code"] == 204), "{detail}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routed_events_are_delivered_signed_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    delivery_round_trip(sqlite(&dir)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routed_events_are_delivered_signed_on_postgres() {
    delivery_round_trip(fresh_postgres_database()).await;
}

async fn retries_until_success(database_url: String) {
    let prefix = unique_prefix("hooks-retry");
    let gateway = gateway(&prefix, &config(&database_url, ALLOW_LOOPBACK)).await;
    // Fails twice (503, then a 500), then succeeds.
    let receiver = Receiver::start(|_, n| {
        Reply::status(match n {
            1 => 503,
            2 => 500,
            _ => 200,
        })
    })
    .await;
    let (id, secret) = register(&gateway, json!({"url": receiver.url, "events": ["*"]})).await;
    publish_events(&prefix, Topic::Routed, vec![routed(1, "a", "support")]).await;

    let received = receiver.wait_for(3, WAIT).await;
    for request in &received {
        verify(&secret, request);
    }
    let ids: Vec<&str> = received.iter().map(|r| r.header("webhook-id")).collect();
    assert!(
        ids.iter().all(|i| *i == ids[0]),
        "one webhook-id on every attempt: {ids:?}"
    );
    assert!(received[1].at.duration_since(received[0].at) >= Duration::from_millis(200));
    let delivery = ids[0].to_string();
    wait_until(
        "the delivery is recorded as succeeded after 3 attempts",
        async || {
            let (_, detail) = api(
                &gateway,
                "GET",
                &format!("/v1/webhooks/{id}/deliveries/{delivery}"),
                None,
            )
            .await;
            detail["status"] == "succeeded" && detail["attempts"] == 3
        },
    )
    .await;
    let (_, detail) = api(
        &gateway,
        "GET",
        &format!("/v1/webhooks/{id}/deliveries/{delivery}"),
        None,
    )
    .await;
    let codes: Vec<i64> = detail["attempt_log"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["status_code"].as_i64().unwrap())
        .collect();
    assert_eq!(codes, [503, 500, 200]);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        receiver.received().len(),
        3,
        "nothing more after the success"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_receiver_gets_retries_until_it_succeeds_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    retries_until_success(sqlite(&dir)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_receiver_gets_retries_until_it_succeeds_on_postgres() {
    retries_until_success(fresh_postgres_database()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = unique_prefix("hooks-retry-after");
    let gateway = gateway(&prefix, &config(&sqlite(&dir), ALLOW_LOOPBACK)).await;
    let receiver = Receiver::start(|_, n| {
        if n == 1 {
            Reply {
                headers: vec![("retry-after", "2".into())],
                ..Reply::status(429)
            }
        } else {
            Reply::status(200)
        }
    })
    .await;
    register(
        &gateway,
        json!({"url": receiver.url, "events": ["message.received"]}),
    )
    .await;
    publish_events(&prefix, Topic::Routed, vec![routed(1, "a", "support")]).await;
    let received = receiver.wait_for(2, WAIT).await;
    let gap = received[1].at.duration_since(received[0].at);
    // The schedule says 300 ms; the receiver asked for 2 s.
    assert!(gap >= Duration::from_millis(1900), "retried after {gap:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_disables_the_endpoint_and_publishes_an_event() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = unique_prefix("hooks-gone");
    let gateway = gateway(&prefix, &config(&sqlite(&dir), ALLOW_LOOPBACK)).await;
    let receiver = Receiver::start(|_, _| Reply::status(410)).await;
    let (id, _) = register(&gateway, json!({"url": receiver.url, "events": ["*"]})).await;
    publish_events(&prefix, Topic::Routed, vec![routed(1, "a", "support")]).await;
    receiver.wait_for(1, WAIT).await;
    wait_until("the endpoint is disabled", async || {
        let (_, endpoint) = api(&gateway, "GET", &format!("/v1/webhooks/{id}"), None).await;
        endpoint["enabled"] == false
    })
    .await;
    let (_, endpoint) = api(&gateway, "GET", &format!("/v1/webhooks/{id}"), None).await;
    assert!(
        endpoint["disabled_reason"]
            .as_str()
            .unwrap()
            .contains("410"),
        "{endpoint}"
    );

    let records = read_at_least(&brokers(), &format!("{prefix}routed.v1"), 2, WAIT);
    let disabled: Vec<Value> = records
        .iter()
        .map(json)
        .filter(|e| e["type"] == "webhook.endpoint_disabled")
        .collect();
    assert_eq!(disabled.len(), 1, "{disabled:?}");
    assert_eq!(
        disabled[0]["webhookEndpointDisabled"]["endpointId"],
        id.as_str()
    );
    assert_eq!(disabled[0]["tenant"], "acme");

    publish_events(&prefix, Topic::Routed, vec![routed(2, "a", "support")]).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        receiver.received().len(),
        1,
        "nothing goes to a disabled endpoint"
    );
    let (_, list) = api(
        &gateway,
        "GET",
        &format!("/v1/webhooks/{id}/deliveries?status=failed"),
        None,
    )
    .await;
    assert_eq!(list["deliveries"][0]["last_status_code"], 410);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = unique_prefix("hooks-redirect");
    let gateway = gateway(&prefix, &config(&sqlite(&dir), ALLOW_LOOPBACK)).await;
    let receiver = Receiver::start(|request, _| {
        if request.path == "/hook" {
            Reply {
                headers: vec![("location", "/elsewhere".into())],
                ..Reply::status(307)
            }
        } else {
            Reply::status(200)
        }
    })
    .await;
    let (id, _) = register(
        &gateway,
        json!({"url": format!("{}/hook", receiver.url), "events": ["*"]}),
    )
    .await;
    publish_events(&prefix, Topic::Routed, vec![routed(1, "a", "support")]).await;
    wait_until("the delivery failed", async || {
        let (_, list) = api(
            &gateway,
            "GET",
            &format!("/v1/webhooks/{id}/deliveries?status=failed"),
            None,
        )
        .await;
        list["deliveries"].as_array().is_some_and(|d| d.len() == 1)
    })
    .await;
    let (_, list) = api(
        &gateway,
        "GET",
        &format!("/v1/webhooks/{id}/deliveries"),
        None,
    )
    .await;
    assert_eq!(list["deliveries"][0]["last_status_code"], 307);
    assert_eq!(list["deliveries"][0]["attempts"], 1);
    let paths: Vec<String> = receiver.received().iter().map(|r| r.path.clone()).collect();
    assert_eq!(paths, ["/hook"], "the redirect target was never called");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_endpoints_are_refused_without_the_allowlist() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = unique_prefix("hooks-ssrf");
    let gateway = gateway(&prefix, &config(&sqlite(&dir), "")).await;
    let receiver = Receiver::start(|_, _| Reply::status(200)).await;
    let port = receiver.url.rsplit(':').next().unwrap().to_string();
    let (literal, _) = register(&gateway, json!({"url": receiver.url, "events": ["*"]})).await;
    let (named, _) = register(
        &gateway,
        json!({"url": format!("http://localhost:{port}/"), "events": ["*"]}),
    )
    .await;
    let (mapped, _) = register(
        &gateway,
        json!({"url": format!("http://[::ffff:127.0.0.1]:{port}/"), "events": ["*"]}),
    )
    .await;
    publish_events(&prefix, Topic::Routed, vec![routed(1, "a", "support")]).await;
    for id in [&literal, &named, &mapped] {
        wait_until("the delivery failed", async || {
            let (_, list) = api(
                &gateway,
                "GET",
                &format!("/v1/webhooks/{id}/deliveries?status=failed"),
                None,
            )
            .await;
            list["deliveries"].as_array().is_some_and(|d| d.len() == 1)
        })
        .await;
        let (_, list) = api(
            &gateway,
            "GET",
            &format!("/v1/webhooks/{id}/deliveries"),
            None,
        )
        .await;
        let error = list["deliveries"][0]["last_error"].as_str().unwrap();
        assert!(
            error.contains("loopback") && error.contains("allow_networks"),
            "{error}"
        );
    }
    assert!(
        receiver.received().is_empty(),
        "nothing reached the loopback receiver"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_retries_survive_a_kill_9_of_the_dispatcher() {
    let dir = tempfile::tempdir().unwrap();
    let database_url = sqlite(&dir);
    let prefix = unique_prefix("hooks-kill");
    let webhooks = format!(
        r#"
[webhooks]
database_url = "{database_url}"
retry_schedule = ["0s", "6s"]
poll_interval = "100ms"
endpoint_refresh = "200ms"
{ALLOW_LOOPBACK}
"#
    );
    // Static membership: the broker hands the restarted dispatcher its partitions back.
    let instance = [("OMNIGATE_KAFKA__INSTANCE_ID", "dispatcher-1".to_string())];
    // The first attempt of every event fails; later ones succeed.
    let receiver = Receiver::start(|request, _| {
        let first = FIRST_SEEN.with_id(request.header("webhook-id"));
        Reply::status(if first { 500 } else { 200 })
    })
    .await;
    let gateway = Gateway::start_roles(
        &brokers(),
        &prefix,
        &["api", "webhooks"],
        &webhooks,
        None,
        &instance,
    )
    .await;
    let (_, secret) = register(&gateway, json!({"url": receiver.url, "events": ["*"]})).await;
    let events: Vec<pb::Event> = (0..50)
        .map(|n| routed(n, &format!("c{n}"), "support"))
        .collect();
    let ids: std::collections::HashSet<String> = events.iter().map(|e| e.id.clone()).collect();
    publish_events(&prefix, Topic::Routed, events).await;
    receiver.wait_for(50, WAIT).await;
    // The failures are written within a few ms; then the process dies with 50 retries pending.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let data = gateway.kill_keep_dir();
    let before = receiver.received().len();
    assert_eq!(before, 50, "only first attempts before the kill");

    let restarted = Gateway::start_roles(
        &brokers(),
        &prefix,
        &["api", "webhooks"],
        &webhooks,
        Some(data),
        &instance,
    )
    .await;
    let started = std::time::Instant::now();
    let delivered = loop {
        let received = receiver.received();
        let mut ok: std::collections::HashMap<String, String> = std::collections::HashMap::new();
        for request in &received[before..] {
            verify(&secret, request);
            ok.insert(
                request.json()["id"].as_str().unwrap().to_string(),
                request.header("webhook-id").to_string(),
            );
        }
        if ok.len() == ids.len() || started.elapsed() > WAIT {
            break (received.len(), ok);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (requests, ok) = delivered;
    let missing = ids.iter().filter(|id| !ok.contains_key(*id)).count();
    println!(
        "dispatcher kill -9: 50 events, {before} failed first attempts before the kill, {requests} requests in all, {} delivered after restart, {missing} missing",
        ok.len()
    );
    assert_eq!(missing, 0, "log:\n{}", restarted.log());
    let first_ids: std::collections::HashSet<String> = receiver.received()[..before]
        .iter()
        .map(|r| r.header("webhook-id").to_string())
        .collect();
    assert!(
        ok.values().all(|id| first_ids.contains(id)),
        "every retry keeps its delivery's webhook-id"
    );
}

/// Remembers which `webhook-id`s a receiver has seen, to fail only first attempts.
struct SeenIds(std::sync::Mutex<Option<std::collections::HashSet<String>>>);

impl SeenIds {
    /// True the first time `id` is seen.
    fn with_id(&self, id: &str) -> bool {
        let mut seen = self.0.lock().unwrap();
        seen.get_or_insert_with(Default::default)
            .insert(id.to_string())
    }
}

static FIRST_SEEN: SeenIds = SeenIds(std::sync::Mutex::new(None));

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_secret_signs_beside_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = unique_prefix("hooks-rotate");
    let gateway = gateway(&prefix, &config(&sqlite(&dir), ALLOW_LOOPBACK)).await;
    let receiver = Receiver::start(|_, _| Reply::status(200)).await;
    let (id, old) = register(&gateway, json!({"url": receiver.url, "events": ["*"]})).await;
    let (status, rotated) = api(
        &gateway,
        "POST",
        &format!("/v1/webhooks/{id}/rotate-secret"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let new = rotated["secret"].as_str().unwrap().to_string();
    assert_ne!(new, old);
    tokio::time::sleep(Duration::from_millis(400)).await;
    publish_events(&prefix, Topic::Routed, vec![routed(1, "a", "support")]).await;
    let received = receiver.wait_for(1, WAIT).await;
    let signatures = received[0].header("webhook-signature");
    assert_eq!(signatures.split(' ').count(), 2, "{signatures}");
    verify(&old, &received[0]);
    verify(&new, &received[0]);
    let (_, shown) = api(&gateway, "GET", &format!("/v1/webhooks/{id}"), None).await;
    assert!(shown.get("secret").is_none(), "secrets are shown only once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_failing_too_long_is_disabled() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = unique_prefix("hooks-failing");
    let extra = format!("disable_after = \"1s\"\n{ALLOW_LOOPBACK}");
    let webhooks = config(&sqlite(&dir), &extra).replace(
        r#"retry_schedule = ["0s", "300ms", "300ms", "300ms"]"#,
        r#"retry_schedule = ["0s", "400ms", "400ms", "400ms", "400ms", "400ms", "400ms", "400ms"]"#,
    );
    let gateway = gateway(&prefix, &webhooks).await;
    let receiver = Receiver::start(|_, _| Reply::status(500)).await;
    let (id, _) = register(
        &gateway,
        json!({"url": receiver.url, "events": ["message.*"]}),
    )
    .await;
    publish_events(&prefix, Topic::Routed, vec![routed(1, "a", "support")]).await;
    wait_until("the endpoint is disabled", async || {
        let (_, endpoint) = api(&gateway, "GET", &format!("/v1/webhooks/{id}"), None).await;
        endpoint["enabled"] == false
    })
    .await;
    let (_, endpoint) = api(&gateway, "GET", &format!("/v1/webhooks/{id}"), None).await;
    assert!(
        endpoint["disabled_reason"]
            .as_str()
            .unwrap()
            .contains("no successful delivery"),
        "{endpoint}"
    );
    let records = read_at_least(&brokers(), &format!("{prefix}routed.v1"), 2, WAIT);
    assert!(
        records
            .iter()
            .map(json)
            .any(|e| e["type"] == "webhook.endpoint_disabled")
    );
    let attempts = receiver.received().len();
    assert!(
        (2..8).contains(&attempts),
        "disabled before the schedule ran out: {attempts}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ordered_endpoint_gets_a_conversation_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = unique_prefix("hooks-ordered");
    let gateway = gateway(&prefix, &config(&sqlite(&dir), ALLOW_LOOPBACK)).await;
    // The first request fails: the rest of the conversation must wait for its retry.
    let receiver = Receiver::start(|_, n| Reply::status(if n == 1 { 503 } else { 200 })).await;
    register(
        &gateway,
        json!({"url": receiver.url, "events": ["*"], "ordered": true}),
    )
    .await;
    let events: Vec<pb::Event> = (0..6).map(|n| routed(n, "a", "support")).collect();
    let order: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
    publish_events(&prefix, Topic::Routed, events).await;
    let received = receiver.wait_for(7, WAIT).await;
    let arrived: Vec<String> = received
        .iter()
        .map(|r| r.json()["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        arrived[0], arrived[1],
        "the failed first event is retried before anything else"
    );
    assert_eq!(arrived[1..], order[..], "in publish order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_endpoint_does_not_hold_up_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = unique_prefix("hooks-slow");
    let extra =
        format!("max_in_flight_per_endpoint = 2\nattempt_timeout = \"20s\"\n{ALLOW_LOOPBACK}");
    let gateway = gateway(&prefix, &config(&sqlite(&dir), &extra)).await;
    let slow = Receiver::start(|_, _| Reply {
        delay: Duration::from_secs(15),
        ..Reply::status(200)
    })
    .await;
    let fast = Receiver::start(|_, _| Reply::status(200)).await;
    register(&gateway, json!({"url": slow.url, "events": ["*"]})).await;
    register(&gateway, json!({"url": fast.url, "events": ["*"]})).await;
    publish_events(
        &prefix,
        Topic::Routed,
        (0..20)
            .map(|n| routed(n, &format!("c{n}"), "support"))
            .collect(),
    )
    .await;
    fast.wait_for(20, WAIT).await;
    assert!(
        slow.received().len() <= 2,
        "the slow endpoint is held to its 2 slots: {}",
        slow.received().len()
    );
}

/// A first attempt longer than the dispatcher waits (1 s) is logged as pending while it
/// runs, then completed by its own result: one request each, no second attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_first_attempt_is_logged_pending_then_completed_once() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = unique_prefix("hooks-handoff");
    let gateway = gateway(&prefix, &config(&sqlite(&dir), ALLOW_LOOPBACK)).await;
    let receiver = Receiver::start(|_, _| Reply {
        delay: Duration::from_secs(4),
        ..Reply::status(200)
    })
    .await;
    let (id, _) = register(&gateway, json!({"url": receiver.url, "events": ["*"]})).await;
    publish_events(
        &prefix,
        Topic::Routed,
        (0..3)
            .map(|n| routed(n, &format!("c{n}"), "support"))
            .collect(),
    )
    .await;
    let client = &gateway;
    let deliveries = async |status: &str| {
        let path = format!("/v1/webhooks/{id}/deliveries?status={status}");
        let (code, list) = api(client, "GET", &path, None).await;
        assert_eq!(code, 200, "{list}");
        list["deliveries"].as_array().unwrap().clone()
    };
    wait_until("the running deliveries are logged as pending", async || {
        deliveries("pending").await.len() == 3
    })
    .await;
    assert!(
        deliveries("pending")
            .await
            .iter()
            .all(|d| d["attempts"] == 0),
        "pending rows do not claim a finished attempt yet"
    );
    wait_until("the results complete the rows", async || {
        deliveries("succeeded").await.len() == 3
    })
    .await;
    for delivery in deliveries("succeeded").await {
        assert_eq!(delivery["attempts"], 1, "{delivery}");
        assert_eq!(delivery["last_status_code"], 200, "{delivery}");
    }
    // Held for its lease (attempt timeout + 10 s), so the poll never sends it again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(receiver.received().len(), 3, "one request per delivery");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_api_validates_manages_tests_and_replays() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = unique_prefix("hooks-api");
    let gateway = gateway(&prefix, &config(&sqlite(&dir), ALLOW_LOOPBACK)).await;
    let fail = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let failing = std::sync::Arc::clone(&fail);
    let receiver = Receiver::start(move |_, _| {
        Reply::status(if failing.load(std::sync::atomic::Ordering::SeqCst) {
            400
        } else {
            200
        })
    })
    .await;

    // 401 without a key.
    let status = reqwest::Client::new()
        .get(format!("{}/v1/webhooks", gateway.url))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 401);

    // 422 naming every field at fault.
    let (status, error) = api(
        &gateway,
        "POST",
        "/v1/webhooks",
        Some(
            json!({"url": "ftp://example.com", "events": ["mesage.*", "*"],
                    "filters": {"channel_kinds": ["fax"]}, "headers": {"webhook-id": "x"}}),
        ),
    )
    .await;
    assert_eq!(status, 422, "{error}");
    assert_eq!(error["code"], "invalid_request");
    let fields: Vec<&str> = error["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        [
            "url",
            "events[0]",
            "filters.channel_kinds[0]",
            "headers.webhook-id"
        ]
    );
    let (status, error) = api(
        &gateway,
        "POST",
        "/v1/webhooks",
        Some(json!({"url": "https://example.com"})),
    )
    .await;
    assert_eq!(
        (status, error["fields"][0]["field"].as_str()),
        (422, Some("events"))
    );
    let (status, error) = api(
        &gateway,
        "POST",
        "/v1/webhooks",
        Some(json!({"url": "https://example.com", "events": ["*"], "colour": "red"})),
    )
    .await;
    assert_eq!(
        (status, error["fields"][0]["field"].as_str()),
        (422, Some("colour"))
    );

    // Create, list, get, update, disable, enable.
    let (id, secret) = register(
        &gateway,
        json!({"url": receiver.url, "events": ["call.*"], "rate_limit": 50}),
    )
    .await;
    let (_, list) = api(&gateway, "GET", "/v1/webhooks", None).await;
    assert_eq!(list["endpoints"].as_array().unwrap().len(), 1);
    assert_eq!(list["endpoints"][0]["rate_limit"], 50);
    let (status, updated) = api(
        &gateway,
        "PATCH",
        &format!("/v1/webhooks/{id}"),
        Some(json!({"description": "crm"})),
    )
    .await;
    assert_eq!(
        (
            status,
            updated["description"].as_str(),
            updated["events"][0].as_str()
        ),
        (200, Some("crm"), Some("call.*"))
    );
    let (_, disabled) = api(
        &gateway,
        "POST",
        &format!("/v1/webhooks/{id}/disable"),
        None,
    )
    .await;
    assert_eq!(disabled["enabled"], false);
    let (_, enabled) = api(&gateway, "POST", &format!("/v1/webhooks/{id}/enable"), None).await;
    assert_eq!(enabled["enabled"], true);
    assert_eq!(
        api(&gateway, "GET", "/v1/webhooks/ep_missing", None)
            .await
            .0,
        404
    );

    // A test event reaches the endpoint whatever it subscribes to; the 400 fails it.
    let (status, sent) = api(&gateway, "POST", &format!("/v1/webhooks/{id}/test"), None).await;
    assert_eq!(status, 202);
    let delivery = sent["delivery_id"].as_str().unwrap().to_string();
    let received = receiver.wait_for(1, WAIT).await;
    verify(&secret, &received[0]);
    assert_eq!(received[0].json()["type"], "webhook.test");
    wait_until("the test delivery failed", async || {
        let (_, d) = api(
            &gateway,
            "GET",
            &format!("/v1/webhooks/{id}/deliveries/{delivery}"),
            None,
        )
        .await;
        d["status"] == "failed"
    })
    .await;
    let since = chrono::Utc::now() - chrono::Duration::minutes(5);
    let (status, _) = api(
        &gateway,
        "GET",
        &format!("/v1/webhooks/{id}/deliveries?status=lost"),
        None,
    )
    .await;
    assert_eq!(status, 422);

    // Replay one, then every failed one since a time, now that the receiver accepts.
    fail.store(false, std::sync::atomic::Ordering::SeqCst);
    let (status, replayed) = api(
        &gateway,
        "POST",
        &format!("/v1/webhooks/{id}/deliveries/{delivery}/replay"),
        None,
    )
    .await;
    assert_eq!((status, replayed["replayed"].as_u64()), (202, Some(1)));
    let received = receiver.wait_for(2, WAIT).await;
    assert_eq!(received[1].header("webhook-id"), delivery);
    wait_until("the replay succeeded", async || {
        let (_, d) = api(
            &gateway,
            "GET",
            &format!("/v1/webhooks/{id}/deliveries/{delivery}"),
            None,
        )
        .await;
        d["status"] == "succeeded"
    })
    .await;
    fail.store(true, std::sync::atomic::Ordering::SeqCst);
    api(&gateway, "POST", &format!("/v1/webhooks/{id}/test"), None).await;
    receiver.wait_for(3, WAIT).await;
    wait_until("the second test delivery failed", async || {
        let (_, l) = api(
            &gateway,
            "GET",
            &format!("/v1/webhooks/{id}/deliveries?status=failed"),
            None,
        )
        .await;
        l["deliveries"].as_array().is_some_and(|d| d.len() == 1)
    })
    .await;
    fail.store(false, std::sync::atomic::Ordering::SeqCst);
    let (status, replayed) = api(
        &gateway,
        "POST",
        &format!("/v1/webhooks/{id}/replay"),
        Some(json!({"since": since.to_rfc3339()})),
    )
    .await;
    assert_eq!((status, replayed["replayed"].as_u64()), (202, Some(1)));
    receiver.wait_for(4, WAIT).await;

    // The OpenAPI document lists every /v1 path.
    let doc: Value = reqwest::get(format!("{}/openapi.json", gateway.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let paths: Vec<&String> = doc["paths"].as_object().unwrap().keys().collect();
    for path in [
        "/v1/messages",
        "/v1/conversations/{id}",
        "/v1/webhooks",
        "/v1/webhooks/{id}",
        "/v1/webhooks/{id}/enable",
        "/v1/webhooks/{id}/disable",
        "/v1/webhooks/{id}/rotate-secret",
        "/v1/webhooks/{id}/test",
        "/v1/webhooks/{id}/deliveries",
        "/v1/webhooks/{id}/deliveries/{delivery_id}",
        "/v1/webhooks/{id}/deliveries/{delivery_id}/replay",
        "/v1/webhooks/{id}/replay",
    ] {
        assert!(
            paths.iter().any(|p| *p == path),
            "{path} missing from {paths:?}"
        );
    }

    assert_eq!(
        api(&gateway, "DELETE", &format!("/v1/webhooks/{id}"), None)
            .await
            .0,
        204
    );
    assert_eq!(
        api(&gateway, "GET", &format!("/v1/webhooks/{id}"), None)
            .await
            .0,
        404
    );
}

//! Broker outages, injected with rdkafka's MockCluster: publishing fails with a
//! retriable error within the bounded wait, `/readyz` goes false and comes back
//! without a restart, and a signed webhook gets 503 with `Retry-After`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use omnigate_connector_whatsapp::verify::sign;
use omnigate_core::publish::{ErrorKind, Publish, Topic};
use omnigate_e2e::{Gateway, kafka_config};
use omnigate_kafka::KafkaPublisher;
use omnigate_model::pb;
use std::time::{Duration, Instant};

const PREFIX: &str = "omnigate.";

fn event() -> pb::Event {
    pb::Event {
        id: "e1".into(),
        r#type: "message.received".into(),
        conversation_key: "whatsapp:1:2".into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_fails_retriably_within_the_bounded_wait() {
    let mock = omnigate_e2e::mock_cluster(PREFIX);
    let mut config = kafka_config(&mock.bootstrap_servers(), PREFIX);
    config.message_timeout_ms = 2000;
    let publisher = KafkaPublisher::new(&config).unwrap();
    // The first record also sets up the idempotent producer; on a loaded machine that
    // can take longer than one message timeout, so allow a few tries while the broker is up.
    let mut warm = Err(None);
    for _ in 0..5 {
        let outcome = publisher
            .publish(
                Topic::Inbound,
                &omnigate_core::publish::Outgoing::Event(Box::new(event())),
            )
            .await;
        warm = outcome.map_err(Some);
        if warm.is_ok() {
            break;
        }
    }
    warm.expect("publishes while the broker is up");

    mock.broker_down(1).unwrap();
    let started = Instant::now();
    let err = publisher
        .publish(
            Topic::Inbound,
            &omnigate_core::publish::Outgoing::Event(Box::new(event())),
        )
        .await
        .expect_err("nothing can be acknowledged while the broker is down");
    let waited = started.elapsed();
    assert_eq!(err.kind, ErrorKind::Retriable, "{err}");
    assert!(
        waited < Duration::from_secs(5),
        "bounded wait exceeded: {waited:?}"
    );
    mock.broker_up(1).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_and_webhooks_follow_the_broker() {
    let mock = omnigate_e2e::mock_cluster(PREFIX);
    let gateway = Gateway::start(
        &mock.bootstrap_servers(),
        PREFIX,
        r#"
[whatsapp.channels.demo]
phone_number_id = "106540352242922"
verify_token = "demo-verify-token"
app_secret = "demo-app-secret"
access_token = "demo-access-token"
"#,
    )
    .await;
    gateway
        .wait_for("/readyz", 200, Duration::from_secs(20))
        .await;

    mock.broker_down(1).unwrap();
    gateway
        .wait_for("/readyz", 503, Duration::from_secs(20))
        .await;

    let body = include_str!("../../crates/connector-whatsapp/tests/fixtures/text_reply.json");
    let response = reqwest::Client::new()
        .post(format!("{}/webhooks/whatsapp/demo", gateway.url))
        .header(
            "x-hub-signature-256",
            sign(b"demo-app-secret", body.as_bytes()),
        )
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        503,
        "never 2xx while Kafka cannot take the event"
    );
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1);

    mock.broker_up(1).unwrap();
    gateway
        .wait_for("/readyz", 200, Duration::from_secs(30))
        .await;
    // Like Meta, retry after a 503: the gateway recovers without a restart.
    let started = Instant::now();
    let status = loop {
        let status = reqwest::Client::new()
            .post(format!("{}/webhooks/whatsapp/demo", gateway.url))
            .header(
                "x-hub-signature-256",
                sign(b"demo-app-secret", body.as_bytes()),
            )
            .body(body)
            .send()
            .await
            .unwrap()
            .status();
        if status == 200 || started.elapsed() > Duration::from_secs(30) {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(
        status,
        200,
        "recovered without a restart; log:\n{}",
        gateway.log()
    );
}

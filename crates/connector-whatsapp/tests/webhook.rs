//! The webhook-to-publish mapping of the WhatsApp connector, without a broker: an
//! in-memory publisher stands in for Kafka.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use axum::{body::Body, http::Request};
use omnigate_connector_whatsapp::{WhatsappKind, verify::sign};
use omnigate_core::{
    connector::{ConfigSource, ConnectorContext, ConnectorKind},
    publish::{ErrorKind, MemoryPublisher, Outgoing, Publisher, Topic},
};
use std::time::Duration;
use tower::ServiceExt as _;

const DEFAULTS: &str = include_str!("../../../config/default.toml");
const CHANNEL: &str = r#"
[whatsapp.channels.demo]
tenant = "acme"
phone_number_id = "106540352242922"
verify_token = "demo-verify-token"
app_secret = "demo-app-secret"
access_token = "demo-access-token"
"#;

struct Setup {
    app: axum::Router,
    kafka: MemoryPublisher,
    _blobs: tempfile::TempDir,
}

async fn setup() -> Setup {
    let connector = WhatsappKind
        .configure(&ConfigSource::from_toml(DEFAULTS, CHANNEL))
        .unwrap();
    let kafka = MemoryPublisher::default();
    let dir = tempfile::tempdir().unwrap();
    let ctx = ConnectorContext::for_tests(Publisher::new(kafka.clone()), dir.path()).unwrap();
    let app = connector.start(ctx).await.unwrap();
    Setup {
        app,
        kafka,
        _blobs: dir,
    }
}

impl Setup {
    /// The gateway's answer to a webhook POST of `body` signed with `secret`.
    async fn post(&self, body: &str, secret: &[u8]) -> axum::response::Response {
        self.app.clone().oneshot(post(body, secret)).await.unwrap()
    }
}

fn text(wamid: &str) -> String {
    format!(
        r#"{{"object":"whatsapp_business_account","entry":[{{"id":"1","changes":[{{"field":"messages","value":{{"messaging_product":"whatsapp","metadata":{{"display_phone_number":"15550783881","phone_number_id":"106540352242922"}},"contacts":[{{"profile":{{"name":"Ada"}},"wa_id":"16505551234"}}],"messages":[{{"from":"16505551234","id":"{wamid}","timestamp":"1749416383","type":"text","text":{{"body":"Hello!"}}}}]}}}}]}}]}}"#
    )
}

fn post(body: &str, secret: &[u8]) -> Request<Body> {
    Request::post("/webhooks/whatsapp/demo")
        .header("content-type", "application/json")
        .header("x-hub-signature-256", sign(secret, body.as_bytes()))
        .body(Body::from(body.to_string()))
        .unwrap()
}

fn topics(kafka: &MemoryPublisher) -> Vec<Topic> {
    kafka.records().into_iter().map(|(t, _)| t).collect()
}

#[tokio::test]
async fn a_signed_post_is_answered_only_after_kafka_acknowledged() {
    let setup = setup().await;
    setup.kafka.hold();
    let answer = tokio::spawn(
        setup
            .app
            .clone()
            .oneshot(post(&text("wamid.1"), b"demo-app-secret")),
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !answer.is_finished(),
        "no answer before the acknowledgement"
    );
    setup.kafka.release(1);
    let response = answer.await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    let records = setup.kafka.records();
    assert_eq!(records.len(), 1);
    assert!(
        matches!(&records[0], (Topic::Inbound, Outgoing::Event(e)) if e.r#type == "message.received")
    );
}

#[tokio::test]
async fn a_broker_that_cannot_take_it_now_gets_503_with_retry_after() {
    let setup = setup().await;
    setup.kafka.fail_next(ErrorKind::Retriable, 1);
    let response = setup.post(&text("wamid.2"), b"demo-app-secret").await;
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    assert!(setup.kafka.records().is_empty(), "nothing published");
}

#[tokio::test]
async fn a_permanent_refusal_is_dead_lettered_and_answered_200() {
    let setup = setup().await;
    setup.kafka.fail_next(ErrorKind::Permanent, 1);
    let body = text("wamid.3");
    let response = setup.post(&body, b"demo-app-secret").await;
    assert_eq!(response.status(), 200, "the provider stops retrying");
    let records = setup.kafka.records();
    assert_eq!(topics(&setup.kafka), [Topic::Deadletter]);
    let (_, Outgoing::DeadLetter(letter)) = &records[0] else {
        panic!("a dead letter: {records:?}");
    };
    assert_eq!(letter.raw, body.as_bytes(), "with the exact bytes");
    assert!(letter.reason.contains("refused"), "{}", letter.reason);
}

#[tokio::test]
async fn a_bad_signature_is_401_and_publishes_nothing() {
    let setup = setup().await;
    let response = setup.post(&text("wamid.4"), b"not-the-secret").await;
    assert_eq!(response.status(), 401);
    assert!(setup.kafka.records().is_empty());
}

#[tokio::test]
async fn an_unreadable_signed_body_is_dead_lettered_and_answered_200() {
    let setup = setup().await;
    let response = setup.post("{not json", b"demo-app-secret").await;
    assert_eq!(response.status(), 200);
    assert_eq!(topics(&setup.kafka), [Topic::Deadletter]);
}

#[tokio::test]
async fn an_image_goes_to_the_jobs_topic_too_and_a_text_does_not() {
    let setup = setup().await;
    let image = include_str!("fixtures/image.json");
    let response = setup.post(image, b"demo-app-secret").await;
    assert_eq!(response.status(), 200);
    let records = setup.kafka.records();
    let [
        (Topic::Inbound, Outgoing::Event(inbound)),
        (Topic::Jobs, Outgoing::Event(job)),
    ] = records.as_slice()
    else {
        panic!("expected the image on inbound.v1 and jobs.v1: {records:?}");
    };
    assert_eq!(inbound, job, "the job is the same event");
    assert_eq!(inbound.r#type, "message.received");

    let response = setup.post(&text("wamid.5"), b"demo-app-secret").await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        topics(&setup.kafka),
        [Topic::Inbound, Topic::Jobs, Topic::Inbound],
        "a text has nothing to download"
    );
}

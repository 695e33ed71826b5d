//! WhatsApp end to end: the `omnigate` binary, Apache Kafka, and a fake Graph API that speaks
//! Meta's wire format on 127.0.0.1.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use axum::{
    Json, Router,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use omnigate_connector_whatsapp::verify::sign;
use omnigate_e2e::{Gateway, Record, brokers, json as record_json, read_topic, unique_prefix};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

const PNID: &str = "106540352242922";
const JPEG: &[u8] = b"\xff\xd8\xff\xe0 not really a jpeg, but bytes with a hash";

#[derive(Default)]
struct Fake {
    base: String,
    sends: Vec<Value>,
    fail_next_sends: u32,
    media_lookups: u32,
    uploads: Vec<Vec<u8>>,
}

type Shared = Arc<Mutex<Fake>>;

fn authorized(headers: &HeaderMap) -> bool {
    headers.get("authorization").and_then(|v| v.to_str().ok()) == Some("Bearer demo-access-token")
}

async fn media_info(
    State(fake): State<Shared>,
    Path((_version, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if !authorized(&headers) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": {"message": "bad token", "code": 190}})),
        )
            .into_response();
    }
    let mut fake = fake.lock().unwrap();
    fake.media_lookups += 1;
    if id == "broken" {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": {"message": "boom", "code": 1}})),
        )
            .into_response();
    }
    Json(json!({
        "messaging_product": "whatsapp",
        "url": format!("{}/lookaside/{id}", fake.base),
        "mime_type": "image/jpeg",
        "sha256": hex::encode(Sha256::digest(JPEG)),
        "file_size": JPEG.len().to_string(),
        "id": id,
    }))
    .into_response()
}

async fn download(headers: HeaderMap) -> Response {
    if !authorized(&headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    ([("content-type", "image/jpeg")], JPEG).into_response()
}

async fn send(State(fake): State<Shared>, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    assert!(authorized(&headers));
    let mut fake = fake.lock().unwrap();
    fake.sends.push(body.clone());
    // Only text sends fail, so the test knows which command the retry belongs to.
    if fake.fail_next_sends > 0 && body["type"] == "text" {
        fake.fail_next_sends -= 1;
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": {"message": "Service temporarily unavailable", "type": "OAuthException", "code": 2, "fbtrace_id": "x"}})),
        )
            .into_response();
    }
    if body["to"] == "16505559999" {
        // Meta's synchronous refusal for a recipient outside the window.
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": {"message": "(#131047) Re-engagement message", "type": "OAuthException", "code": 131047, "fbtrace_id": "y"}})),
        )
            .into_response();
    }
    if body["status"] == "read" {
        return Json(json!({"success": true})).into_response();
    }
    let n = fake.sends.len();
    Json(json!({
        "messaging_product": "whatsapp",
        "contacts": [{"input": body["to"], "wa_id": body["to"]}],
        "messages": [{"id": format!("wamid.SENT{n}")}],
    }))
    .into_response()
}

async fn upload(
    State(fake): State<Shared>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    assert!(authorized(&headers));
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.contains("name=\"messaging_product\"") && text.contains("whatsapp"),
        "multipart upload: {text}"
    );
    fake.lock().unwrap().uploads.push(body.to_vec());
    Json(json!({"id": "uploaded-media-1"})).into_response()
}

async fn start_fake() -> (Shared, String) {
    let fake: Shared = Arc::default();
    let app = Router::new()
        .route("/{version}/{id}", get(media_info))
        .route("/{version}/{pnid}/messages", post(send))
        .route("/{version}/{pnid}/media", post(upload))
        .route("/lookaside/{id}", get(download))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    fake.lock().unwrap().base = base.clone();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (fake, base)
}

async fn gateway(test: &str, graph: &str) -> Gateway {
    let channel = format!(
        r#"
[whatsapp]
graph_api_base = "{graph}"
media_retry_delays_ms = [50, 100]
send_retry_delays_ms = [50, 100]
[whatsapp.channels.demo]
tenant = "acme"
phone_number_id = "{PNID}"
verify_token = "demo-verify-token"
app_secret = "demo-app-secret"
access_token = "demo-access-token"
"#
    );
    let gateway = Gateway::start(&brokers(), &unique_prefix(test), &channel).await;
    gateway
        .wait_for("/readyz", 200, Duration::from_secs(30))
        .await;
    gateway
}

async fn post_signed(gateway: &Gateway, body: &str, secret: &[u8]) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{}/webhooks/whatsapp/demo", gateway.url))
        .header("content-type", "application/json")
        .header("x-hub-signature-256", sign(secret, body.as_bytes()))
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

fn fixture(name: &str) -> String {
    std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../crates/connector-whatsapp/tests/fixtures")
            .join(format!("{name}.json")),
    )
    .unwrap()
}

fn inbound(gateway: &Gateway, expected: usize) -> Vec<Record> {
    read_topic(
        &brokers(),
        &format!("{}inbound.v1", gateway.prefix),
        expected,
        Duration::from_secs(30),
    )
}

fn text_from(wa_id: &str, wamid: &str, unix: i64, body: &str) -> String {
    json!({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "messages", "value": {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550783881", "phone_number_id": PNID},
        "contacts": [{"profile": {"name": "Test"}, "wa_id": wa_id}],
        "messages": [{"from": wa_id, "id": wamid, "timestamp": unix.to_string(), "type": "text", "text": {"body": body}}]
    }}]}]})
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_and_signed_post_land_on_inbound() {
    let (_fake, graph) = start_fake().await;
    let gateway = gateway("wa-post", &graph).await;
    let client = reqwest::Client::new();

    let ok = client
        .get(format!("{}/webhooks/whatsapp/demo?hub.mode=subscribe&hub.verify_token=demo-verify-token&hub.challenge=1158201444", gateway.url))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(
        ok.text().await.unwrap(),
        "1158201444",
        "the raw challenge, nothing else"
    );
    let wrong = client
        .get(format!(
            "{}/webhooks/whatsapp/demo?hub.mode=subscribe&hub.verify_token=nope&hub.challenge=1",
            gateway.url
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 403);
    let unknown = post_signed(&gateway, "{}", b"demo-app-secret").await;
    assert_eq!(
        unknown.status(),
        200,
        "known channel, unparseable: dead-lettered, not refused"
    );
    let response = client
        .post(format!("{}/webhooks/whatsapp/nope", gateway.url))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);

    let response = post_signed(&gateway, &fixture("text_reply"), b"demo-app-secret").await;
    assert_eq!(response.status(), 200);
    let records = inbound(&gateway, 1);
    assert_eq!(records.len(), 1, "one message, one event");
    let record = &records[0];
    assert_eq!(record.key, format!("whatsapp:{PNID}:16505551234"));
    assert_eq!(record.headers["ce_type"], "io.omnigate.message.received.v1");
    assert_eq!(record.headers["ce_source"], "/omnigate/whatsapp/demo");
    assert_eq!(record.headers["ce_subject"], record.key);
    assert_eq!(record.headers["ce_tenant"], "acme");
    let event = record_json(record);
    assert_eq!(record.headers["ce_id"], event["id"].as_str().unwrap());
    assert_eq!(
        event["message"]["parts"][0]["text"],
        "Does it come in another color?"
    );
    assert_eq!(
        event["message"]["replyToProviderId"],
        "wamid.HBgLMTY1MDM4NzZBQkNEAA=="
    );
    assert_eq!(
        event["message"]["whatsapp"]["windowExpiresAt"],
        "2025-06-09T20:59:43+00:00"
    );

    // Meta redelivers: same event id.
    assert_eq!(
        post_signed(&gateway, &fixture("text_reply"), b"demo-app-secret")
            .await
            .status(),
        200
    );
    let records = inbound(&gateway, 2);
    assert_eq!(records.len(), 2);
    assert_eq!(records[0].headers["ce_id"], records[1].headers["ce_id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_signatures_are_401_and_publish_nothing() {
    let (_fake, graph) = start_fake().await;
    let gateway = gateway("wa-sig", &graph).await;
    let body = fixture("text_reply");
    assert_eq!(
        post_signed(&gateway, &body, b"wrong-secret").await.status(),
        401
    );
    let unsigned = reqwest::Client::new()
        .post(format!("{}/webhooks/whatsapp/demo", gateway.url))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(unsigned.status(), 401);
    let error: Value = unsigned.json().await.unwrap();
    assert_eq!(error["code"], "invalid_signature");
    // A signature made for another body.
    let other = fixture("image");
    let response = reqwest::Client::new()
        .post(format!("{}/webhooks/whatsapp/demo", gateway.url))
        .header(
            "x-hub-signature-256",
            sign(b"demo-app-secret", other.as_bytes()),
        )
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);

    // Then one good POST: the topic holds exactly its event, so the bad ones left nothing.
    assert_eq!(
        post_signed(&gateway, &fixture("reaction"), b"demo-app-secret")
            .await
            .status(),
        200
    );
    let records = inbound(&gateway, 1);
    assert_eq!(records.len(), 1);
    assert_eq!(
        record_json(&records[0])["message"]["parts"][0]["reaction"]["emoji"],
        "\u{2764}\u{fe0f}"
    );
    let dead = read_topic(
        &brokers(),
        &format!("{}deadletter.v1", gateway.prefix),
        0,
        Duration::from_secs(3),
    );
    assert!(
        dead.is_empty(),
        "unauthenticated bodies are never dead-lettered either"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unparseable_signed_bodies_go_to_the_dead_letter_topic() {
    let (_fake, graph) = start_fake().await;
    let gateway = gateway("wa-dead", &graph).await;
    let garbage = "{\"object\":\"whatsapp_business_account\",\"entry\":[{\"changes\":[tru";
    assert_eq!(
        post_signed(&gateway, garbage, b"demo-app-secret")
            .await
            .status(),
        200
    );
    // A batch where one message is broken: the good one is published, the body dead-lettered.
    assert_eq!(
        post_signed(&gateway, &fixture("partly_malformed"), b"demo-app-secret")
            .await
            .status(),
        200
    );

    let dead = read_topic(
        &brokers(),
        &format!("{}deadletter.v1", gateway.prefix),
        2,
        Duration::from_secs(30),
    );
    assert_eq!(dead.len(), 2);
    let raws: Vec<Vec<u8>> = dead
        .iter()
        .map(|r| {
            let letter: omnigate_model::pb::DeadLetter = serde_json::from_slice(&r.value).unwrap();
            assert!(!letter.reason.is_empty());
            assert_eq!(letter.channel_id, "demo");
            letter.raw
        })
        .collect();
    assert!(
        raws.contains(&garbage.as_bytes().to_vec()),
        "raw bytes kept exactly"
    );
    assert!(raws.contains(&fixture("partly_malformed").into_bytes()));
    let records = inbound(&gateway, 1);
    assert_eq!(records.len(), 1);
    assert_eq!(
        record_json(&records[0])["message"]["providerMessageId"],
        "wamid.OK1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_is_stored_and_announced() {
    let (fake, graph) = start_fake().await;
    let gateway = gateway("wa-media", &graph).await;
    let good = fixture("image").replace("9Y2xJ0uOq0v1mK6mN0cR8d0l5zq3o1d5m8n6b2v4c0E=", "");
    assert_eq!(
        post_signed(&gateway, &good, b"demo-app-secret")
            .await
            .status(),
        200
    );
    let broken = fixture("document").replace("\"4444\"", "\"broken\"");
    assert_eq!(
        post_signed(&gateway, &broken, b"demo-app-secret")
            .await
            .status(),
        200
    );

    let records = inbound(&gateway, 4);
    let types: Vec<String> = records
        .iter()
        .map(|r| r.headers["ce_type"].clone())
        .collect();
    assert_eq!(records.len(), 4, "{types:?}\n{}", gateway.log());
    let updates: Vec<Value> = records
        .iter()
        .filter(|r| r.headers["ce_type"] == "io.omnigate.message.media_updated.v1")
        .map(record_json)
        .collect();
    assert_eq!(updates.len(), 2);
    let stored = updates
        .iter()
        .find(|u| u["mediaUpdated"]["providerMessageId"] == "wamid.IMG")
        .unwrap();
    let attachment = &stored["mediaUpdated"]["attachment"];
    assert_eq!(attachment["state"], "MEDIA_STATE_STORED");
    let digest = hex::encode(Sha256::digest(JPEG));
    assert_eq!(attachment["sha256"], digest.as_str());
    let key = attachment["blob"]["key"].as_str().unwrap();
    let stored_bytes = std::fs::read(gateway.dir.path().join("blobs").join(key)).unwrap();
    assert_eq!(stored_bytes, JPEG);

    let failed = updates
        .iter()
        .find(|u| u["mediaUpdated"]["providerMessageId"] == "wamid.DOC")
        .unwrap();
    assert_eq!(
        failed["mediaUpdated"]["attachment"]["state"],
        "MEDIA_STATE_FAILED"
    );
    // One lookup for the image, three for the broken document (first try and two retries).
    assert_eq!(fake.lock().unwrap().media_lookups, 4);
}

async fn send_command(gateway: &Gateway, body: Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{}/v1/messages", gateway.url))
        .bearer_auth("omnigate-dev-key")
        .json(&body)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_check_the_window_retry_and_report() {
    let (fake, graph) = start_fake().await;
    let gateway = gateway("wa-send", &graph).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let recent = text_from("16505551234", "wamid.IN1", now - 60, "where is my order?");
    let stale = text_from(
        "16505550000",
        "wamid.IN2",
        now - 2 * 86_400,
        "hello from two days ago",
    );
    assert_eq!(
        post_signed(&gateway, &recent, b"demo-app-secret")
            .await
            .status(),
        200
    );
    assert_eq!(
        post_signed(&gateway, &stale, b"demo-app-secret")
            .await
            .status(),
        200
    );

    let unauthorized = reqwest::Client::new()
        .post(format!("{}/v1/messages", gateway.url))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorized.status(), 401);
    let invalid = send_command(
        &gateway,
        json!({"channel": {"channelId": "demo"}, "to": "1"}),
    )
    .await;
    assert_eq!(invalid.status(), 422);

    fake.lock().unwrap().fail_next_sends = 1;
    let accepted = send_command(
        &gateway,
        json!({"channel": {"channelId": "demo"}, "to": "16505551234", "replyToProviderId": "wamid.IN1",
               "text": "It ships today", "idempotencyKey": "reply-1"}),
    )
    .await;
    assert_eq!(accepted.status(), 202);
    let command_id = accepted.json::<Value>().await.unwrap()["commandId"]
        .as_str()
        .unwrap()
        .to_string();
    // The same idempotency key again: sent once.
    let again = send_command(
        &gateway,
        json!({"channel": {"channelId": "demo"}, "to": "16505551234", "text": "It ships today", "idempotencyKey": "reply-1"}),
    )
    .await;
    assert_eq!(
        again.json::<Value>().await.unwrap()["commandId"],
        command_id.as_str()
    );
    let closed = send_command(
        &gateway,
        json!({"channel": {"channelId": "demo"}, "to": "16505550000", "text": "too late"}),
    )
    .await;
    assert_eq!(closed.status(), 202);
    let template = send_command(
        &gateway,
        json!({"channel": {"channelId": "demo"}, "to": "16505550000",
               "template": {"name": "order_update", "language": "en_US", "components": [{"type": "body", "parameters": [{"type": "text", "text": "#1234"}]}]}}),
    )
    .await;
    assert_eq!(template.status(), 202);

    // 2 inbound + sent (reply) + failed (window) + sent (template).
    let records = inbound(&gateway, 5);
    assert_eq!(records.len(), 5, "{}", gateway.log());
    let results: Vec<Value> = records
        .iter()
        .map(record_json)
        .filter(|e| e["type"] != "message.received")
        .collect();
    let sent: Vec<&Value> = results
        .iter()
        .filter(|e| e["type"] == "message.sent")
        .collect();
    assert_eq!(sent.len(), 2);
    let reply = sent
        .iter()
        .find(|e| e["sent"]["commandId"] == command_id.as_str())
        .unwrap();
    assert_eq!(reply["sent"]["recipient"], "16505551234");
    assert!(
        reply["sent"]["providerMessageId"]
            .as_str()
            .unwrap()
            .starts_with("wamid.SENT")
    );
    let failed = results
        .iter()
        .find(|e| e["type"] == "message.status")
        .unwrap();
    assert_eq!(failed["status"]["status"], "DELIVERY_STATUS_FAILED");
    assert_eq!(
        failed["status"]["errors"][0]["code"],
        "omnigate.window_closed"
    );

    let fake = fake.lock().unwrap();
    // The reply: a 503, then its retry. The template. Nothing for the closed window or the duplicate.
    assert_eq!(fake.sends.len(), 3, "{:#?}", fake.sends);
    let replies: Vec<&Value> = fake
        .sends
        .iter()
        .filter(|s| s["to"] == "16505551234")
        .collect();
    assert_eq!(replies.len(), 2);
    assert_eq!(replies[0], replies[1], "the retry sends the same body");
    assert_eq!(replies[0]["context"]["message_id"], "wamid.IN1");
    assert_eq!(replies[0]["text"]["body"], "It ships today");
    let stale: Vec<&Value> = fake
        .sends
        .iter()
        .filter(|s| s["to"] == "16505550000")
        .collect();
    assert_eq!(
        stale.len(),
        1,
        "only the template reaches a customer outside the window"
    );
    assert_eq!(stale[0]["type"], "template");
    assert_eq!(stale[0]["template"]["language"]["code"], "en_US");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_mark_read_and_provider_errors_round_trip() {
    let (fake, graph) = start_fake().await;
    let gateway = gateway("wa-send2", &graph).await;
    // A blob to send: put it where the gateway's blob store reads.
    let key = "outbound/invoice.pdf";
    let path = gateway.dir.path().join("blobs").join(key);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, b"%PDF-1.4 invoice").unwrap();

    let commands = [
        json!({"channel": {"channelId": "demo"}, "to": "16505551234",
               "media": {"kind": "document", "blob": {"key": key, "mimeType": "application/pdf"}, "filename": "invoice.pdf", "caption": "Your invoice"}}),
        json!({"channel": {"channelId": "demo"}, "to": "16505551234", "markRead": "wamid.IN9"}),
        json!({"channel": {"channelId": "demo"}, "to": "16505559999", "text": "hello?"}),
        json!({"channel": {"channelId": "demo"}, "to": "16505551234",
               "media": {"kind": "image", "link": "https://cdn.example.com/parcel.jpg", "caption": "Your parcel"}}),
    ];
    for command in commands {
        assert_eq!(send_command(&gateway, command).await.status(), 202);
    }
    let records = inbound(&gateway, 4);
    assert_eq!(records.len(), 4, "{}", gateway.log());
    let events: Vec<Value> = records.iter().map(record_json).collect();
    let failed = events
        .iter()
        .find(|e| e["type"] == "message.status")
        .unwrap();
    assert_eq!(
        failed["status"]["errors"][0]["code"], "131047",
        "the provider's code is kept"
    );
    assert_eq!(failed["status"]["recipient"], "16505559999");
    assert_eq!(
        events
            .iter()
            .filter(|e| e["type"] == "message.sent")
            .count(),
        3
    );

    let fake = fake.lock().unwrap();
    assert_eq!(fake.uploads.len(), 1);
    assert!(String::from_utf8_lossy(&fake.uploads[0]).contains("%PDF-1.4 invoice"));
    let document = fake.sends.iter().find(|s| s["type"] == "document").unwrap();
    assert_eq!(document["document"]["id"], "uploaded-media-1");
    assert_eq!(document["document"]["filename"], "invoice.pdf");
    assert_eq!(document["document"]["caption"], "Your invoice");
    // Media by link goes as a link: nothing is uploaded for it.
    let image = fake.sends.iter().find(|s| s["type"] == "image").unwrap();
    assert_eq!(image["image"]["link"], "https://cdn.example.com/parcel.jpg");
    assert_eq!(image["image"]["caption"], "Your parcel");
    assert!(image["image"].get("id").is_none());
    let read = fake.sends.iter().find(|s| s["status"] == "read").unwrap();
    assert_eq!(read["message_id"], "wamid.IN9");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_metrics_and_graceful_shutdown() {
    let (_fake, graph) = start_fake().await;
    let mut gateway = gateway("wa-ops", &graph).await;
    let client = reqwest::Client::new();

    let huge = format!(
        "{{\"object\":\"whatsapp_business_account\",\"pad\":\"{}\"}}",
        "x".repeat(4 * 1024 * 1024)
    );
    let response = post_signed(&gateway, &huge, b"demo-app-secret").await;
    assert_eq!(
        response.status(),
        413,
        "bodies over server.body_limit_bytes are refused"
    );

    // Requests in flight when SIGTERM arrives are finished, and every 200 is on Kafka.
    let mut posts = Vec::new();
    for i in 0..200 {
        let body = text_from(
            "16505551234",
            &format!("wamid.SHUT{i}"),
            1_749_416_383,
            "bye",
        );
        let url = format!("{}/webhooks/whatsapp/demo", gateway.url);
        let client = client.clone();
        posts.push(tokio::spawn(async move {
            client
                .post(url)
                .header(
                    "x-hub-signature-256",
                    sign(b"demo-app-secret", body.as_bytes()),
                )
                .body(body)
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        }));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let metrics = client
        .get(format!("{}/metrics", gateway.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("omnigate_http_requests_total"),
        "{metrics}"
    );
    assert!(metrics.contains("omnigate_kafka_reachable 1"), "{metrics}");
    assert!(
        metrics.contains(
            "omnigate_channel_events_total{kind=\"whatsapp\",channel=\"demo\",outcome=\"published\"}"
        ),
        "one metric scheme for every channel: {metrics}"
    );
    assert!(
        metrics.contains("omnigate_channel_request_duration_seconds_count{kind=\"whatsapp\"}"),
        "{metrics}"
    );
    let status = std::process::Command::new("kill")
        .args(["-TERM", &gateway.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut ok = 0;
    for post in posts {
        if post.await.unwrap() == 200 {
            ok += 1;
        }
    }
    let exit = gateway.wait_exit(Duration::from_secs(20));
    assert_eq!(
        exit,
        Some(0),
        "clean exit after SIGTERM; log:\n{}",
        gateway.log()
    );
    assert!(
        gateway.log().contains("unacknowledged=0") || gateway.log().contains("unacknowledged: 0"),
        "{}",
        gateway.log()
    );
    let records = inbound(&gateway, ok);
    assert!(ok > 0, "some requests were accepted before the shutdown");
    let unique: std::collections::HashSet<_> =
        records.iter().map(|r| r.headers["ce_id"].clone()).collect();
    assert!(
        unique.len() >= ok,
        "every 200 is on Kafka: {} events for {ok} 200s",
        unique.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_into_a_conversation_finds_its_channel_and_recipient() {
    let (fake, graph) = start_fake().await;
    let gateway = gateway("wa-reply", &graph).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let inbound = text_from("16505551234", "wamid.CONV1", now - 30, "is it in stock?");
    assert_eq!(
        post_signed(&gateway, &inbound, b"demo-app-secret")
            .await
            .status(),
        200
    );
    // The helpdesk knows the conversation by the id the router gave it.
    let routed = read_topic(
        &brokers(),
        &format!("{}routed.v1", gateway.prefix),
        2,
        Duration::from_secs(30),
    );
    let conversation_id = routed
        .iter()
        .map(record_json)
        .find_map(|e| e["routing"]["conversationId"].as_str().map(String::from))
        .expect("a routed message with a conversation id");
    let reply = |id: &str, body: Value| {
        let url = format!("{}/v1/conversations/{id}/messages", gateway.url);
        async move {
            reqwest::Client::new()
                .post(url)
                .bearer_auth("omnigate-dev-key")
                .json(&body)
                .send()
                .await
                .unwrap()
        }
    };
    let accepted = reply(&conversation_id, json!({"text": "Yes, 3 left."})).await;
    assert_eq!(accepted.status(), 202, "{}", gateway.log());
    let missing = reply("no-such-conversation", json!({"text": "hi"})).await;
    assert_eq!(missing.status(), 404);
    let addressed = reply(&conversation_id, json!({"to": "1", "text": "hi"})).await;
    assert_eq!(
        addressed.status(),
        422,
        "the conversation picks the recipient"
    );

    let started = std::time::Instant::now();
    loop {
        let sends = fake.lock().unwrap().sends.clone();
        if let Some(send) = sends.iter().find(|s| s["text"]["body"] == "Yes, 3 left.") {
            assert_eq!(
                send["to"], "16505551234",
                "to the customer of that conversation"
            );
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the reply never reached the Graph API; sends {sends:?}; log:\n{}",
            gateway.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

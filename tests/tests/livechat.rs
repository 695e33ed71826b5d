//! Live chat end to end: visitor websockets against the real binary, messages
//! acknowledged only after the broker `make test` starts has them, agent replies
//! through the API pushed live and replayed on reconnect, hostile clients refused,
//! and the widget driven in Debian's Chromium through Playwright.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use futures::{SinkExt as _, StreamExt as _};
use omnigate_e2e::{Gateway, brokers, json, read_at_least, unique_prefix};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest as _};

const SHOP: &str = r#"
[livechat]
reply_poll_ms = 100
[livechat.channels.shop]
tenant = "acme"
allowed_origins = ["https://shop.example.test"]
identity_secret = "demo-identity-secret"
"#;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(gateway: &Gateway, origin: &str) -> Socket {
    let url = format!(
        "{}/livechat/shop/ws",
        gateway.url.replace("http://", "ws://")
    );
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("Origin", origin.parse().unwrap());
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "omnigate.livechat.v1".parse().unwrap(),
    );
    let (socket, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(
        response.headers().get("sec-websocket-protocol").unwrap(),
        "omnigate.livechat.v1"
    );
    socket
}

async fn send(socket: &mut Socket, frame: Value) {
    socket
        .send(tungstenite::Message::Text(frame.to_string().into()))
        .await
        .unwrap();
}

/// The next frame that is not a heartbeat, as JSON; a close as `{"close": code}`.
async fn next(socket: &mut Socket) -> Value {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(60), socket.next())
            .await
            .expect("a frame within 60 s");
        match frame {
            Some(Ok(tungstenite::Message::Text(text))) => {
                let value: Value = serde_json::from_str(&text).unwrap();
                if value["type"] != "ping" {
                    return value;
                }
            }
            Some(Ok(tungstenite::Message::Close(close))) => {
                return json!({"close": close.map(|c| u16::from(c.code)).unwrap_or(0)});
            }
            Some(Ok(_)) => {}
            None | Some(Err(_)) => return json!({"close": 0}),
        }
    }
}

/// Reads frames until an `error` and the close that follows; the close code.
async fn closed_with(socket: &mut Socket) -> u16 {
    loop {
        let frame = next(socket).await;
        if let Some(code) = frame["close"].as_u64() {
            return code as u16;
        }
    }
}

async fn hello(socket: &mut Socket, extra: Value) -> Value {
    let mut frame = json!({"type": "hello", "last_seq": 0});
    for (k, v) in extra.as_object().unwrap() {
        frame[k] = v.clone();
    }
    send(socket, frame).await;
    next(socket).await
}

fn inbound(prefix: &str, n: usize) -> Vec<Value> {
    read_at_least(
        &brokers(),
        &format!("{prefix}inbound.v1"),
        n,
        Duration::from_secs(30),
    )
    .iter()
    .map(json)
    .collect()
}

/// Posts a send command to `POST /v1/messages`: the status and the JSON answer.
async fn command(gateway: &Gateway, body: Value) -> (u16, Value) {
    let answer = reqwest::Client::new()
        .post(format!("{}/v1/messages", gateway.url))
        .bearer_auth("omnigate-dev-key")
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = answer.status().as_u16();
    (status, answer.json().await.unwrap())
}

async fn reply(gateway: &Gateway, visitor: &str, text: &str) {
    let (status, answer) = command(
        gateway,
        json!({"channel": {"channelId": "shop"}, "to": visitor, "text": text}),
    )
    .await;
    assert_eq!(status, 202, "{answer}");
}

/// The browser test's next progress line, as JSON (`null` when it is not JSON).
async fn next_step(
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    what: &str,
) -> Value {
    let line = tokio::time::timeout(Duration::from_secs(90), lines.next_line())
        .await
        .unwrap_or_else(|_| panic!("{what} within 90 s"))
        .unwrap()
        .unwrap_or_default();
    serde_json::from_str(&line).unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_are_acked_after_kafka_and_replies_reach_the_visitor_live_and_on_resume() {
    let prefix = unique_prefix("livechat");
    let gateway =
        Gateway::start_roles(&brokers(), &prefix, &["livechat", "api"], SHOP, None, &[]).await;
    let mut socket = connect(&gateway, "https://shop.example.test").await;
    let welcome = hello(
        &mut socket,
        json!({"page": {"url": "https://shop.example.test/cart", "language": "de-DE"}}),
    )
    .await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    assert_eq!(welcome["verified"], false);
    let token = welcome["visitor_token"].as_str().unwrap().to_string();
    let key = welcome["conversation_key"].as_str().unwrap().to_string();
    let visitor = key.rsplit(':').next().unwrap().to_string();

    send(&mut socket, json!({"type": "message", "client_id": "c-1", "text": "Where is my order?", "attachments": []})).await;
    let ack = next(&mut socket).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let event_id = ack["event_id"].as_str().unwrap().to_string();
    // A second tab opened right after the ack already has the message in its history.
    let mut tab = connect(&gateway, "https://shop.example.test").await;
    let second = hello(&mut tab, json!({"visitor_token": token})).await;
    assert_eq!(second["history"][0]["client_id"], "c-1", "{second}");
    assert_eq!(second["history"][0]["event_id"], event_id.as_str());
    drop(tab);
    // Acknowledged means on Kafka.
    let events = inbound(&prefix, 1);
    let event = events
        .iter()
        .find(|e| e["id"] == event_id.as_str())
        .expect("the acked event is on Kafka");
    assert_eq!(event["conversationKey"], key.as_str());
    assert_eq!(event["message"]["parts"][0]["text"], "Where is my order?");
    assert_eq!(
        event["message"]["livechat"]["pageUrl"],
        "https://shop.example.test/cart"
    );

    // An upload, then a message carrying it.
    let client = reqwest::Client::new();
    let uploads = format!("{}/livechat/shop/uploads", gateway.url);
    let file = || {
        reqwest::multipart::Form::new().part(
            "file",
            reqwest::multipart::Part::bytes(b"%PDF-1.4 receipt".to_vec())
                .file_name("receipt.pdf")
                .mime_str("application/pdf")
                .unwrap(),
        )
    };
    let refused = client
        .post(&uploads)
        .multipart(file())
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401, "uploads need the visitor token");
    let preflight = client
        .request(reqwest::Method::OPTIONS, &uploads)
        .header("Origin", "https://shop.example.test")
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), 204);
    assert_eq!(
        preflight.headers()["access-control-allow-origin"],
        "https://shop.example.test"
    );
    let uploaded: Value = client
        .post(&uploads)
        .bearer_auth(&token)
        .multipart(file())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let upload_id = uploaded["upload_id"].as_str().unwrap();
    send(
        &mut socket,
        json!({"type": "message", "client_id": "c-2", "text": "", "attachments": [upload_id]}),
    )
    .await;
    let ack = next(&mut socket).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let events = inbound(&prefix, 2);
    let event = events
        .iter()
        .find(|e| e["id"] == ack["event_id"])
        .expect("the message with the upload");
    let attachment = &event["message"]["parts"][0]["attachment"];
    assert_eq!(attachment["mimeType"], "application/pdf");
    assert_eq!(attachment["filename"], "receipt.pdf");
    let stored = std::fs::read(
        gateway
            .dir
            .path()
            .join("blobs")
            .join(attachment["blob"]["key"].as_str().unwrap()),
    )
    .unwrap();
    assert_eq!(stored, b"%PDF-1.4 receipt");

    // A live reply, then the socket drops.
    reply(&gateway, &visitor, "It ships today.").await;
    let live = next(&mut socket).await;
    assert_eq!(live["type"], "reply", "{live}");
    assert_eq!(live["seq"], 1);
    assert_eq!(live["text"], "It ships today.");
    drop(socket);

    // Offline: a second reply. The visitor comes back, re-sends the message whose ack
    // it missed, and gets the reply it did not see, and the same event id.
    reply(&gateway, &visitor, "Tracking: 1Z999.").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut socket = connect(&gateway, "https://shop.example.test").await;
    let welcome = hello(&mut socket, json!({"visitor_token": token, "last_seq": 1})).await;
    assert_eq!(welcome["conversation_key"], key.as_str());
    let replies = welcome["replies"].as_array().unwrap();
    assert_eq!(replies.len(), 1, "{welcome}");
    assert_eq!(replies[0]["text"], "Tracking: 1Z999.");
    assert_eq!(welcome["history"][0]["client_id"], "c-1");
    send(&mut socket, json!({"type": "message", "client_id": "c-1", "text": "Where is my order?", "attachments": []})).await;
    let again = next(&mut socket).await;
    assert_eq!(
        again["event_id"],
        event_id.as_str(),
        "same client id, same event id"
    );
    send(&mut socket, json!({"type": "read", "seq": 2})).await;

    // Statuses: sent, delivered and read for the replies.
    let started = Instant::now();
    let events = loop {
        let events = inbound(&prefix, 1);
        let reads = events
            .iter()
            .filter(|e| {
                e["type"] == "message.status" && e["status"]["status"] == "DELIVERY_STATUS_READ"
            })
            .count();
        if reads >= 2 || started.elapsed() > Duration::from_secs(20) {
            break events;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let count = |kind: &str, status: &str| {
        events
            .iter()
            .filter(|e| e["type"] == kind && (status.is_empty() || e["status"]["status"] == status))
            .count()
    };
    assert_eq!(count("message.sent", ""), 2);
    assert!(count("message.status", "DELIVERY_STATUS_DELIVERED") >= 2);
    assert_eq!(count("message.status", "DELIVERY_STATUS_READ"), 2);
    let received: std::collections::BTreeSet<&str> = events
        .iter()
        .filter(|e| e["type"] == "message.received")
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        received.len(),
        2,
        "no duplicate reached Kafka under a new id"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_tokens_and_identities_foreign_origins_and_oversized_frames_are_refused() {
    let prefix = unique_prefix("livechat-hostile");
    let gateway =
        Gateway::start_roles(&brokers(), &prefix, &["livechat", "api"], SHOP, None, &[]).await;

    let mut socket = connect(&gateway, "https://evil.example.test").await;
    assert_eq!(closed_with(&mut socket).await, 4403, "foreign origin");

    let mut socket = connect(&gateway, "https://shop.example.test").await;
    send(&mut socket, json!({"type": "hello", "visitor_token": "vt_someoneelse.0123456789abcdef0123456789abcdef"})).await;
    assert_eq!(closed_with(&mut socket).await, 4401, "forged visitor token");

    let mut socket = connect(&gateway, "https://shop.example.test").await;
    send(&mut socket, json!({"type": "hello", "identity": {"id": "cust-42", "email": "jo@example.com", "hash": "00ff"}})).await;
    assert_eq!(closed_with(&mut socket).await, 4401, "wrong identity hash");

    // The documented hash verifies; the same customer is the same visitor everywhere.
    let identity = json!({"id": "cust-42", "email": "jo@example.com", "name": "Jo", "hash": "9e09798732969aeb09d1980478b79a70c3b3a830c42299b36480d805232a2545"});
    let mut first = connect(&gateway, "https://shop.example.test").await;
    let one = hello(&mut first, json!({"identity": identity})).await;
    assert_eq!(one["verified"], true);
    let mut second = connect(&gateway, "https://shop.example.test").await;
    let two = hello(&mut second, json!({"identity": identity})).await;
    assert_eq!(one["conversation_key"], two["conversation_key"]);

    // An unverified claim is kept apart from the contact.
    let mut claimed = connect(&gateway, "https://shop.example.test").await;
    let welcome = hello(
        &mut claimed,
        json!({"identity": {"email": "ceo@example.com"}}),
    )
    .await;
    assert_eq!(welcome["verified"], false);
    send(
        &mut claimed,
        json!({"type": "message", "client_id": "x", "text": "I am the CEO", "attachments": []}),
    )
    .await;
    let ack = next(&mut claimed).await;
    let events = inbound(&prefix, 1);
    let event = events.iter().find(|e| e["id"] == ack["event_id"]).unwrap();
    assert!(event["message"]["contact"]["email"].is_null(), "{event}");
    assert_eq!(
        event["message"]["livechat"]["claimedEmail"],
        "ceo@example.com"
    );

    // Too large a frame closes the socket; too many messages get nack with a retry hint.
    let big = "x".repeat(70 * 1024);
    send(
        &mut claimed,
        json!({"type": "message", "client_id": "big", "text": big, "attachments": []}),
    )
    .await;
    assert_eq!(closed_with(&mut claimed).await, 4413);
    let mut fast = connect(&gateway, "https://shop.example.test").await;
    hello(&mut fast, json!({})).await;
    let mut limited = None;
    for i in 0..30 {
        send(&mut fast, json!({"type": "message", "client_id": format!("m{i}"), "text": "spam", "attachments": []})).await;
        let answer = next(&mut fast).await;
        if answer["type"] == "nack" {
            limited = Some(answer);
            break;
        }
    }
    let limited = limited.expect("the rate limit answered nack");
    assert_eq!(limited["code"], "rate_limited");
    assert!(limited["retry_after_ms"].as_u64().unwrap() > 0);

    let log = gateway.log();
    assert!(
        !log.contains("I am the CEO") && !log.contains("spam"),
        "no message content in the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_widget_in_chromium_sends_shows_the_reply_and_keeps_the_history_over_a_reload() {
    let prefix = unique_prefix("livechat-browser");
    let gateway = Gateway::start_roles(
        &brokers(),
        &prefix,
        &["livechat", "api"],
        "[livechat]\nreply_poll_ms = 100\n[livechat.channels.shop]\ntenant = \"acme\"\nallowed_origins = [\"*\"]\nidentity_secret = \"demo-identity-secret\"\n",
        None,
        &[],
    )
    .await;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let artifacts = root.join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let screenshot = artifacts.join("livechat-widget.png");
    let node_path = std::env::var("OMNIGATE_CACHE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| {
            std::path::PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/omnigate")
        })
        .join("node/node_modules");
    let mut child = tokio::process::Command::new("node")
        .arg(root.join("tests/livechat/widget_test.mjs"))
        .args(["--url", &format!("{}/livechat/shop/demo", gateway.url)])
        .args(["--text", "hello from chromium"])
        .args(["--expect-reply", "Hi from the helpdesk"])
        .args(["--expect-typing", "Ana"])
        .arg("--screenshot")
        .arg(&screenshot)
        .env("NODE_PATH", node_path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let sent = next_step(&mut lines, "the page sent the message").await;
    assert_eq!(sent["step"], "sent", "{sent}");
    let event_id = sent["event_id"].as_str().unwrap().to_string();
    let events = inbound(&prefix, 1);
    let event = events
        .iter()
        .find(|e| e["id"] == event_id.as_str())
        .expect("the browser's message is on Kafka");
    assert_eq!(event["message"]["parts"][0]["text"], "hello from chromium");
    let visitor = event["conversationKey"]
        .as_str()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .to_string();
    // The agent types first: the page shows it before the reply arrives.
    let (status, answer) = command(&gateway, json!({"channel": {"channelId": "shop"}, "to": visitor, "typing": {"on": true, "agent": "Ana"}})).await;
    assert_eq!(status, 202, "{answer}");
    let shown = next_step(&mut lines, "the page showed the agent typing").await;
    assert_eq!(shown["step"], "typing", "{shown}");
    assert!(
        shown["text"].as_str().unwrap().contains("Ana is typing"),
        "{shown}"
    );
    reply(&gateway, &visitor, "Hi from the helpdesk").await;
    let output = tokio::time::timeout(Duration::from_secs(90), child.wait_with_output())
        .await
        .expect("the browser test ends")
        .unwrap();
    let mut rest = Vec::new();
    while let Ok(Some(line)) = lines.next_line().await {
        rest.push(line);
    }
    assert!(
        output.status.success(),
        "widget test failed: {rest:?}\n{}\nlog:\n{}",
        String::from_utf8_lossy(&output.stderr),
        gateway.log()
    );
    assert!(
        rest.iter().any(|l| l.contains("\"step\":\"reply\"")),
        "{rest:?}"
    );
    assert!(
        rest.iter().any(|l| l.contains("\"step\":\"history\"")),
        "{rest:?}"
    );
    assert!(screenshot.exists(), "the screenshot artifact is saved");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_reaches_a_visitor_on_the_other_replica_and_survives_a_killed_replica() {
    let prefix = unique_prefix("livechat-replicas");
    let env = [(
        "OMNIGATE_ROUTER__DATABASE_URL",
        omnigate_e2e::fresh_postgres_database(),
    )];
    let mut holding =
        Gateway::start_roles(&brokers(), &prefix, &["livechat", "api"], SHOP, None, &env).await;
    let other =
        Gateway::start_roles(&brokers(), &prefix, &["livechat", "api"], SHOP, None, &env).await;
    let mut socket = connect(&holding, "https://shop.example.test").await;
    let welcome = hello(&mut socket, json!({})).await;
    let token = welcome["visitor_token"].as_str().unwrap().to_string();
    let visitor = welcome["conversation_key"]
        .as_str()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .to_string();

    // Posted through the other replica's API: whichever replica sends it, the one
    // holding the socket pushes it.
    reply(&other, &visitor, "First answer").await;
    let live = next(&mut socket).await;
    assert_eq!(live["text"], "First answer", "{live}");

    // The replica holding the socket dies; the visitor reconnects to the survivor and
    // gets every reply it has not seen.
    holding.kill();
    drop(socket);
    reply(&other, &visitor, "Second answer").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The killed replica's send commands wait for the consumer group to move its
    // partitions to the survivor; every reply still arrives, in the welcome or live.
    let mut socket = connect(&other, "https://shop.example.test").await;
    let welcome = hello(&mut socket, json!({"visitor_token": token, "last_seq": 1})).await;
    let mut texts: Vec<String> = welcome["replies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["text"].as_str().unwrap().to_string())
        .collect();
    reply(&other, &visitor, "Third answer").await;
    let started = Instant::now();
    while texts.len() < 2 && started.elapsed() < Duration::from_secs(90) {
        let frame = next(&mut socket).await;
        if frame["type"] == "reply" {
            texts.push(frame["text"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(
        texts,
        ["Second answer", "Third answer"],
        "log:\n{}",
        other.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_broker_down_a_message_gets_nack_and_nothing_acknowledged_is_lost() {
    use omnigate_core::publish::Topic;
    let prefix = "omnigate.";
    let mock = omnigate_e2e::mock_cluster(prefix);
    let brokers = mock.bootstrap_servers();
    let gateway = Gateway::start_roles(&brokers, prefix, &["livechat"], SHOP, None, &[]).await;
    gateway
        .wait_for("/readyz", 200, Duration::from_secs(30))
        .await;
    let mut socket = connect(&gateway, "https://shop.example.test").await;
    hello(&mut socket, json!({})).await;
    send(
        &mut socket,
        json!({"type": "message", "client_id": "before", "text": "one", "attachments": []}),
    )
    .await;
    let before = next(&mut socket).await;
    assert_eq!(before["type"], "ack", "{before}");

    mock.broker_down(1).unwrap();
    send(
        &mut socket,
        json!({"type": "message", "client_id": "during", "text": "two", "attachments": []}),
    )
    .await;
    let during = next(&mut socket).await;
    assert_eq!(during["type"], "nack", "{during}");
    assert_eq!(during["code"], "kafka_unavailable");
    assert!(during["retry_after_ms"].as_u64().unwrap() > 0);
    mock.broker_up(1).unwrap();
    gateway
        .wait_for("/readyz", 200, Duration::from_secs(30))
        .await;

    // The client retries as told, with the same client id.
    let mut acked = None;
    for _ in 0..20 {
        send(
            &mut socket,
            json!({"type": "message", "client_id": "during", "text": "two", "attachments": []}),
        )
        .await;
        let answer = next(&mut socket).await;
        if answer["type"] == "ack" {
            acked = Some(answer);
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let acked = acked.expect("acknowledged once the broker is back");
    let config = omnigate_e2e::kafka_config(&brokers, prefix);
    let records = omnigate_kafka::reader::read_topic(
        &config,
        &Topic::Inbound.name(prefix),
        2,
        Duration::from_secs(1),
        Duration::from_secs(30),
    )
    .unwrap();
    let ids: Vec<String> = records
        .iter()
        .map(|r| json(r)["id"].as_str().unwrap().to_string())
        .collect();
    assert!(ids.contains(&before["event_id"].as_str().unwrap().to_string()));
    assert!(ids.contains(&acked["event_id"].as_str().unwrap().to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_typing_reaches_the_visitor_and_is_no_message() {
    let prefix = unique_prefix("livechat-typing");
    let config = format!("{SHOP}{}", omnigate_e2e::DEMO_CHANNEL);
    let gateway = Gateway::start_roles(
        &brokers(),
        &prefix,
        &["livechat", "api"],
        &config,
        None,
        &[],
    )
    .await;
    let mut socket = connect(&gateway, "https://shop.example.test").await;
    let welcome = hello(&mut socket, json!({})).await;
    let key = welcome["conversation_key"].as_str().unwrap().to_string();
    let visitor = key.rsplit(':').next().unwrap().to_string();

    let (status, answer) = command(&gateway, json!({"channel": {"channelId": "shop"}, "to": visitor, "typing": {"on": true, "agent": "Ana"}})).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(
        next(&mut socket).await,
        json!({"type": "typing", "on": true, "agent": {"name": "Ana"}})
    );
    let (status, _) = command(
        &gateway,
        json!({"channel": {"channelId": "shop"}, "to": visitor, "typing": {"on": false}}),
    )
    .await;
    assert_eq!(status, 202);
    assert_eq!(
        next(&mut socket).await,
        json!({"type": "typing", "on": false, "agent": {"name": "Support"}})
    );

    // A reply after them is the conversation's first message: typing took no sequence
    // and made no event.
    reply(&gateway, &visitor, "Found it").await;
    let answer = next(&mut socket).await;
    assert_eq!(answer["type"], "reply", "{answer}");
    assert_eq!(answer["seq"], 1);
    let events = inbound(&prefix, 1);
    let sent: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "message.sent")
        .collect();
    assert_eq!(sent.len(), 1, "{events:?}");
    assert_eq!(sent[0]["id"], answer["event_id"], "{events:?}");

    // Other channel kinds refuse typing at the API.
    let (status, refused) = command(
        &gateway,
        json!({"channel": {"channelId": "demo"}, "to": "16505551234", "typing": {"on": true}}),
    )
    .await;
    assert_eq!(status, 422, "{refused}");
    assert!(refused.to_string().contains("live chat"), "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_a_socket_open_a_silent_one_is_closed_and_each_address_gets_a_few() {
    let prefix = unique_prefix("livechat-limits");
    let config = SHOP.replace(
        "[livechat]\n",
        "[livechat]\nheartbeat_secs = 1\nidle_timeout_secs = 3\nsockets_per_ip = 2\n",
    );
    let gateway =
        Gateway::start_roles(&brokers(), &prefix, &["livechat"], &config, None, &[]).await;
    let mut talking = connect(&gateway, "https://shop.example.test").await;
    hello(&mut talking, json!({})).await;
    let mut silent = connect(&gateway, "https://shop.example.test").await;
    hello(&mut silent, json!({})).await;

    // A third socket from the same address is refused.
    let mut third = connect(&gateway, "https://shop.example.test").await;
    assert_eq!(closed_with(&mut third).await, 4429, "sockets per address");

    // One socket answers every ping for twice the idle timeout; the other says nothing.
    let started = Instant::now();
    let mut pings = 0;
    while started.elapsed() < Duration::from_secs(6) {
        let Ok(frame) = tokio::time::timeout(Duration::from_millis(500), talking.next()).await
        else {
            continue;
        };
        let text = frame.unwrap().unwrap().into_text().unwrap();
        let value: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["type"], "ping", "{value}");
        pings += 1;
        send(&mut talking, json!({"type": "pong"})).await;
    }
    assert!(pings >= 3, "the server pings every second: {pings}");
    assert_eq!(
        closed_with(&mut silent).await,
        4408,
        "a silent socket is closed"
    );

    // The answering socket is alive, and the closed one's place is free again.
    send(
        &mut talking,
        json!({"type": "message", "client_id": "alive", "text": "still here", "attachments": []}),
    )
    .await;
    assert_eq!(next(&mut talking).await["type"], "ack");
    let mut welcomed = false;
    for _ in 0..20 {
        let mut again = connect(&gateway, "https://shop.example.test").await;
        if hello(&mut again, json!({})).await["type"] == "welcome" {
            welcomed = true;
            break;
        }
        // The closed socket's session may not have ended yet.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(welcomed, "a closed socket frees its place");
}

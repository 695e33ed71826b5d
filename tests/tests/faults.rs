//! The fault suite: hostile input at every HTTP endpoint, and the gateway killed
//! (SIGKILL) in the middle of a flood of signed WhatsApp POSTs. Each scenario prints
//! its figures; any loss fails the test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use base64::Engine as _;
use omnigate_connector_whatsapp::verify::sign;
use omnigate_e2e::{
    DEMO_CHANNEL, Gateway, brokers, json, mock_cluster, read_topic, unique_prefix, whatsapp_text,
};
use std::{
    collections::{HashMap, HashSet},
    io::{Read as _, Write as _},
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant},
};

async fn post(
    url: &str,
    path: &str,
    headers: &[(&str, String)],
    body: Vec<u8>,
) -> Result<u16, String> {
    let mut request = reqwest::Client::new()
        .post(format!("{url}{path}"))
        .body(body);
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    request
        .send()
        .await
        .map(|r| r.status().as_u16())
        .map_err(|e| e.to_string())
}

fn signed(body: &[u8]) -> Vec<(&'static str, String)> {
    vec![
        ("content-type", "application/json".into()),
        ("x-hub-signature-256", sign(b"demo-app-secret", body)),
    ]
}

/// Sends raw bytes over TCP (so no client library normalizes the path) and returns
/// the status code of the answer, or None if the server closed the connection.
fn raw_request(url: &str, request: &[u8]) -> Option<u16> {
    let address = url.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(request).ok()?;
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer);
    text.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_gets_the_right_status_and_loses_nothing() {
    let prefix = unique_prefix("faults-hostile");
    let gateway = Gateway::start_roles(
        &brokers(),
        &prefix,
        &["api", "whatsapp"],
        DEMO_CHANNEL,
        None,
        &[],
    )
    .await;
    let url = gateway.url.clone();
    let wa = "/webhooks/whatsapp/demo";
    let key = ("authorization", "Bearer omnigate-dev-key".to_string());

    let valid = whatsapp_text("wamid.valid").into_bytes();
    let truncated = valid[..valid.len() / 2].to_vec();
    let invalid_utf8 = [
        b"{\"object\":\"whatsapp_business_account\",\"entry\":[\"".as_slice(),
        &[0xff, 0xfe, 0xfd],
        b"\"]}",
    ]
    .concat();
    let nested = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)).into_bytes();
    let oversized = vec![b' '; 3 * 1024 * 1024 + 1];
    let mut changed = valid.clone();
    changed.extend_from_slice(b" ");

    let mut cases: Vec<(&str, u16, Result<u16, String>)> = Vec::new();
    // Authenticated but unparseable: 200 (the provider must not retry) and dead-lettered.
    cases.push((
        "truncated JSON, signed",
        200,
        post(&url, wa, &signed(&truncated), truncated.clone()).await,
    ));
    cases.push((
        "invalid UTF-8, signed",
        200,
        post(&url, wa, &signed(&invalid_utf8), invalid_utf8.clone()).await,
    ));
    cases.push((
        "100,000-deep JSON, signed",
        200,
        post(&url, wa, &signed(&nested), nested.clone()).await,
    ));
    // Never authenticated: nothing published, nothing dead-lettered.
    cases.push((
        "no signature",
        401,
        post(
            &url,
            wa,
            &[("content-type", "application/json".into())],
            valid.clone(),
        )
        .await,
    ));
    cases.push((
        "signature of another body",
        401,
        post(
            &url,
            wa,
            &[("x-hub-signature-256", sign(b"demo-app-secret", b"other"))],
            valid.clone(),
        )
        .await,
    ));
    cases.push((
        "replayed signature, changed body",
        401,
        post(
            &url,
            wa,
            &[("x-hub-signature-256", sign(b"demo-app-secret", &valid))],
            changed,
        )
        .await,
    ));
    cases.push((
        "malformed signature header",
        401,
        post(
            &url,
            wa,
            &[("x-hub-signature-256", "sha256=zz".into())],
            valid.clone(),
        )
        .await,
    ));
    cases.push((
        "body over the limit",
        413,
        post(&url, wa, &signed(&oversized), oversized).await,
    ));
    cases.push((
        "unknown channel",
        404,
        post(
            &url,
            "/webhooks/whatsapp/nope",
            &signed(&valid),
            valid.clone(),
        )
        .await,
    ));
    // The API: bad bodies are 422, no key is 401.
    for body in [truncated.clone(), invalid_utf8.clone(), nested.clone()] {
        cases.push((
            "POST /v1/messages: bad body",
            422,
            post(
                &url,
                "/v1/messages",
                std::slice::from_ref(&key),
                body.clone(),
            )
            .await,
        ));
        cases.push((
            "POST /v1/webhooks: bad body",
            422,
            post(&url, "/v1/webhooks", std::slice::from_ref(&key), body).await,
        ));
    }
    cases.push((
        "POST /v1/messages without a key",
        401,
        post(&url, "/v1/messages", &[], valid.clone()).await,
    ));
    cases.push((
        "POST /v1/webhooks with a wrong key",
        401,
        post(
            &url,
            "/v1/webhooks",
            &[("authorization", "Bearer nope".into())],
            b"{}".to_vec(),
        )
        .await,
    ));
    // Authenticated with a wrong content type: the signature is what counts.
    cases.push((
        "valid body as text/plain, signed",
        200,
        post(
            &url,
            wa,
            &[
                ("content-type", "text/plain".into()),
                ("x-hub-signature-256", sign(b"demo-app-secret", &valid)),
            ],
            valid.clone(),
        )
        .await,
    ));

    let traversal = raw_request(&url, b"POST /webhooks/whatsapp/..%2F..%2Fv1%2Fmessages HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}");
    let dotted = raw_request(&url, b"POST /webhooks/whatsapp/../../v1/messages HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}");
    let huge = format!(
        "POST {wa} HTTP/1.1\r\nhost: x\r\nx-filler: {}\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{{}}",
        "a".repeat(1024 * 1024)
    );
    let huge_header = raw_request(&url, huge.as_bytes());

    let mut failures = Vec::new();
    for (name, expected, got) in &cases {
        println!("{name:<40} expected {expected}, got {got:?}");
        if got.as_ref().ok() != Some(expected) {
            failures.push(format!("{name}: expected {expected}, got {got:?}"));
        }
    }
    println!(
        "{:<40} got {traversal:?} and {dotted:?}",
        "path traversal in the channel name"
    );
    println!("{:<40} got {huge_header:?}", "1 MiB header");
    for (name, got) in [
        ("encoded traversal", traversal),
        ("dotted traversal", dotted),
    ] {
        if !matches!(got, Some(404) | Some(400)) {
            failures.push(format!("{name}: expected 404 or 400, got {got:?}"));
        }
    }
    if !matches!(huge_header, Some(431) | Some(400) | None) {
        failures.push(format!(
            "huge header: expected 431, 400 or a closed connection, got {huge_header:?}"
        ));
    }
    assert!(failures.is_empty(), "{failures:#?}");
    gateway
        .wait_for("/healthz", 200, Duration::from_secs(5))
        .await;

    // Only the one authenticated, valid message was published...
    let inbound = read_topic(
        &brokers(),
        &format!("{prefix}inbound.v1"),
        1,
        Duration::from_secs(20),
    );
    assert_eq!(inbound.len(), 1, "only the authenticated valid message");
    assert_eq!(
        json(&inbound[0])["message"]["providerMessageId"],
        "wamid.valid"
    );
    // ...and exactly the three authenticated unparseable bodies were dead-lettered, bytes intact.
    let dead = read_topic(
        &brokers(),
        &format!("{prefix}deadletter.v1"),
        3,
        Duration::from_secs(20),
    );
    let raws: HashSet<Vec<u8>> = dead
        .iter()
        .map(|r| {
            base64::engine::general_purpose::STANDARD
                .decode(json(r)["raw"].as_str().unwrap())
                .unwrap()
        })
        .collect();
    let expected: HashSet<Vec<u8>> = [truncated, invalid_utf8, nested].into_iter().collect();
    println!(
        "hostile input: {} requests, 1 event published, {} dead letters",
        cases.len() + 3,
        dead.len()
    );
    assert_eq!(dead.len(), 3);
    assert_eq!(raws, expected, "dead letters keep the exact bytes received");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gateway_killed_mid_flood_loses_no_acknowledged_message() {
    let prefix = unique_prefix("faults-kill");
    let first =
        Gateway::start_roles(&brokers(), &prefix, &["whatsapp"], DEMO_CHANNEL, None, &[]).await;
    first
        .wait_for("/readyz", 200, Duration::from_secs(30))
        .await;
    let url = Arc::new(RwLock::new(first.url.clone()));
    let (clients, per_client) = (16, 150);
    let acked: Arc<Mutex<HashSet<String>>> = Arc::default();
    let counts: Arc<Mutex<HashMap<&'static str, usize>>> = Arc::default();
    let deadline = Instant::now() + Duration::from_secs(120);
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let (url, acked, counts) = (Arc::clone(&url), Arc::clone(&acked), Arc::clone(&counts));
            tokio::spawn(async move {
                let client = reqwest::Client::builder()
                    .timeout(Duration::from_secs(5))
                    .build()
                    .unwrap();
                for n in 0..per_client {
                    let wamid = format!("wamid.c{c}n{n}");
                    let body = whatsapp_text(&wamid);
                    // Like Meta: retry until a 2xx.
                    loop {
                        assert!(Instant::now() < deadline, "{wamid} never acknowledged");
                        let target = url.read().unwrap().clone();
                        let answer = client
                            .post(format!("{target}/webhooks/whatsapp/demo"))
                            .header(
                                "x-hub-signature-256",
                                sign(b"demo-app-secret", body.as_bytes()),
                            )
                            .body(body.clone())
                            .send()
                            .await;
                        let outcome = match &answer {
                            Ok(r) if r.status().is_success() => "2xx",
                            Ok(r) if r.status() == 503 => "503",
                            Ok(_) => "other status",
                            Err(_) => "connection error",
                        };
                        *counts.lock().unwrap().entry(outcome).or_default() += 1;
                        if outcome == "2xx" {
                            acked.lock().unwrap().insert(wamid);
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            })
        })
        .collect();

    // Kill -9 once part of the flood is acknowledged, then start a new gateway.
    while acked.lock().unwrap().len() < clients * per_client / 4 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let dir = first.kill_keep_dir();
    let acked_at_kill = acked.lock().unwrap().len();
    let second = Gateway::start_roles(
        &brokers(),
        &prefix,
        &["whatsapp"],
        DEMO_CHANNEL,
        Some(dir),
        &[],
    )
    .await;
    *url.write().unwrap() = second.url.clone();
    for task in tasks {
        task.await.unwrap();
    }

    let total = clients * per_client;
    let records = read_topic(
        &brokers(),
        &format!("{prefix}inbound.v1"),
        total,
        Duration::from_secs(60),
    );
    let mut ids_by_wamid: HashMap<String, HashSet<String>> = HashMap::new();
    for record in &records {
        let event = json(record);
        let wamid = event["message"]["providerMessageId"]
            .as_str()
            .unwrap()
            .to_string();
        ids_by_wamid
            .entry(wamid)
            .or_default()
            .insert(event["id"].as_str().unwrap().to_string());
    }
    let acked = acked.lock().unwrap().clone();
    let missing = acked
        .iter()
        .filter(|w| !ids_by_wamid.contains_key(*w))
        .count();
    let duplicates = records.len() - ids_by_wamid.len();
    let counts = counts.lock().unwrap().clone();
    let sent: usize = counts.values().sum();
    println!(
        "gateway kill -9: {sent} requests, {} 2xx ({acked_at_kill} before the kill), {} 503, {} connection errors, {} events found, {missing} missing, {duplicates} duplicates",
        counts.get("2xx").copied().unwrap_or(0),
        counts.get("503").copied().unwrap_or(0),
        counts.get("connection error").copied().unwrap_or(0),
        records.len()
    );
    assert_eq!(acked.len(), total, "every message acknowledged in the end");
    assert_eq!(missing, 0, "every acknowledged message is on Kafka");
    assert!(
        ids_by_wamid.values().all(|ids| ids.len() == 1),
        "a message delivered twice has one event id"
    );
    drop(second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_and_erroring_broker_never_hangs_a_webhook() {
    use omnigate_core::publish::Topic;
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let prefix = "omnigate.";
    let mock = mock_cluster(prefix);
    // The test config bounds the wait for an acknowledgement at 3 s (message_timeout_ms).
    let gateway = Gateway::start_roles(
        &mock.bootstrap_servers(),
        prefix,
        &["whatsapp"],
        DEMO_CHANNEL,
        None,
        &[],
    )
    .await;
    gateway
        .wait_for("/readyz", 200, Duration::from_secs(30))
        .await;
    let send = |n: usize| {
        let (url, body) = (
            gateway.url.clone(),
            whatsapp_text(&format!("wamid.slow{n}")).into_bytes(),
        );
        async move {
            let started = Instant::now();
            let status = post(&url, "/webhooks/whatsapp/demo", &signed(&body), body)
                .await
                .unwrap();
            (status, started.elapsed())
        }
    };
    let bound = Duration::from_secs(8);
    let (status, _) = send(0).await;
    assert_eq!(status, 200, "warm-up");

    // Slow: every request takes 7 s, longer than the bounded wait (3 s for the
    // acknowledgement, plus the gateway's 2 s safety deadline).
    mock.broker_round_trip_time(1, Duration::from_secs(7))
        .unwrap();
    let (slow_status, slow_took) = send(1).await;
    mock.broker_round_trip_time(1, Duration::ZERO).unwrap();
    // Erroring, retriable: the idempotent producer retries within the bound.
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 3],
    );
    let (retried_status, retried_took) = send(2).await;
    // Refused for good: the event can never be written. The request is dead-lettered
    // with its exact bytes and answered 200, so the provider stops retrying it.
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE; 1],
    );
    let (refused_status, refused_took) = send(3).await;
    mock.clear_request_errors(RDKafkaApiKey::Produce);
    println!(
        "slow broker: {slow_status} in {slow_took:?}; 3 retriable errors: {retried_status} in {retried_took:?}; permanent error: {refused_status} in {refused_took:?}"
    );
    assert_eq!(slow_status, 503);
    assert!(slow_took < bound, "bounded wait exceeded: {slow_took:?}");
    assert_eq!(retried_status, 200);
    assert!(retried_took < bound);
    assert_eq!(refused_status, 200, "dead-lettered, not retried forever");
    assert!(refused_took < bound);
    let config = omnigate_e2e::kafka_config(&mock.bootstrap_servers(), prefix);
    let letters = omnigate_kafka::reader::read_topic(
        &config,
        &Topic::Deadletter.name(prefix),
        1,
        Duration::from_millis(500),
        Duration::from_secs(20),
    )
    .unwrap();
    let refused_body = whatsapp_text("wamid.slow3");
    let letter = letters
        .iter()
        .map(json)
        .find(|l| l["reason"].as_str().unwrap_or("").contains("refused"))
        .expect("a dead letter for the refused request");
    let raw = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        letter["raw"].as_str().unwrap(),
    )
    .unwrap();
    assert_eq!(raw, refused_body.as_bytes(), "the exact bytes are kept");
    let errors = gateway
        .metric_sum("omnigate_kafka_produce_errors_total")
        .await;
    println!("omnigate_kafka_produce_errors_total = {errors}");
    assert!(
        errors >= 2.0,
        "the slow and the refused record are counted: {errors}"
    );
    gateway
        .wait_for("/healthz", 200, Duration::from_secs(5))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broker_outage_during_a_flood_loses_no_acknowledged_message() {
    use omnigate_core::publish::Topic;
    let prefix = "omnigate.";
    let mock = mock_cluster(prefix);
    let brokers = mock.bootstrap_servers();
    let gateway =
        Gateway::start_roles(&brokers, prefix, &["whatsapp"], DEMO_CHANNEL, None, &[]).await;
    gateway
        .wait_for("/readyz", 200, Duration::from_secs(30))
        .await;
    let (clients, per_client) = (8, 100);
    let acked: Arc<Mutex<HashSet<String>>> = Arc::default();
    let counts: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let retry_after_seen = Arc::new(Mutex::new(0usize));
    let deadline = Instant::now() + Duration::from_secs(120);
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let (url, acked, counts, retry_after_seen) = (
                gateway.url.clone(),
                Arc::clone(&acked),
                Arc::clone(&counts),
                Arc::clone(&retry_after_seen),
            );
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                for n in 0..per_client {
                    let wamid = format!("wamid.o{c}n{n}");
                    let body = whatsapp_text(&wamid);
                    loop {
                        assert!(Instant::now() < deadline, "{wamid} never acknowledged");
                        let answer = client
                            .post(format!("{url}/webhooks/whatsapp/demo"))
                            .header(
                                "x-hub-signature-256",
                                sign(b"demo-app-secret", body.as_bytes()),
                            )
                            .body(body.clone())
                            .send()
                            .await
                            .unwrap();
                        let status = answer.status().as_u16();
                        if status == 503 && answer.headers().contains_key("retry-after") {
                            *retry_after_seen.lock().unwrap() += 1;
                        }
                        *counts
                            .lock()
                            .unwrap()
                            .entry(status.to_string())
                            .or_default() += 1;
                        if status == 200 {
                            acked.lock().unwrap().insert(wamid);
                            break;
                        }
                        assert_eq!(status, 503, "only 200 or 503");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            })
        })
        .collect();
    while acked.lock().unwrap().len() < clients * per_client / 4 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    mock.broker_down(1).unwrap();
    gateway
        .wait_for("/readyz", 503, Duration::from_secs(20))
        .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    mock.broker_up(1).unwrap();
    gateway
        .wait_for("/readyz", 200, Duration::from_secs(30))
        .await;
    for task in tasks {
        task.await.unwrap();
    }
    let total = clients * per_client;
    let config = omnigate_e2e::kafka_config(&brokers, prefix);
    let records = omnigate_kafka::reader::read_topic(
        &config,
        &Topic::Inbound.name(prefix),
        total,
        Duration::from_secs(1),
        Duration::from_secs(60),
    )
    .unwrap();
    let found: HashSet<String> = records
        .iter()
        .map(|r| {
            json(r)["message"]["providerMessageId"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let acked = acked.lock().unwrap().clone();
    let missing = acked.iter().filter(|w| !found.contains(*w)).count();
    let counts = counts.lock().unwrap().clone();
    println!(
        "broker outage: {} requests, {} 2xx, {} 503 ({} with Retry-After), {} events found, {missing} missing, {} duplicates",
        counts.values().sum::<usize>(),
        counts.get("200").copied().unwrap_or(0),
        counts.get("503").copied().unwrap_or(0),
        retry_after_seen.lock().unwrap(),
        records.len(),
        records.len() - found.len()
    );
    assert_eq!(acked.len(), total);
    assert_eq!(missing, 0, "every acknowledged message is on Kafka");
    assert!(
        counts.get("503").copied().unwrap_or(0) > 0,
        "the outage was felt"
    );
    assert_eq!(
        *retry_after_seen.lock().unwrap(),
        counts.get("503").copied().unwrap_or(0),
        "every 503 carries Retry-After"
    );
}

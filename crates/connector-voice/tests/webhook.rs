//! The voice endpoints without a broker: an in-memory publisher stands in for Kafka.
//! Twilio's signatures are made by Twilio's own Python library (its request
//! validator), installed by `make test`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use axum::{body::Body, http::Request};
use omnigate_connector_voice::{VoiceKind, verify};
use omnigate_core::{
    connector::{ConfigSource, ConnectorContext, ConnectorKind},
    publish::{MemoryPublisher, Outgoing, Publisher, Topic},
};
use omnigate_model::pb;
use std::process::Command;
use tower::ServiceExt as _;

const DEFAULTS: &str = include_str!("../../../config/default.toml");
const CHANNELS: &str = r#"
[voice.channels.demo-twilio]
provider = "twilio"
number = "+15550100200"
default_country = "US"
account_sid = "AC00000000000000000000000000000000"
auth_token = "demo-auth-token"
public_url = "https://voice.example.test"

[voice.channels.demo-cti]
tenant = "acme"
provider = "cti"
number = "+493055571600"
default_country = "DE"
token = "demo-cti-token"
hmac_secret = "demo-cti-hmac"
"#;
const ACCOUNT: &str = "AC00000000000000000000000000000000";

struct Setup {
    app: axum::Router,
    kafka: MemoryPublisher,
    _blobs: tempfile::TempDir,
}

async fn setup() -> Setup {
    let connector = VoiceKind
        .configure(&ConfigSource::from_toml(DEFAULTS, CHANNELS))
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

/// The Python with Twilio's library, from `scripts/python-tools.sh`.
fn python() -> String {
    std::env::var("OMNIGATE_PYTHON").unwrap_or_else(|_| {
        let cache = std::env::var("OMNIGATE_CACHE")
            .unwrap_or_else(|_| format!("{}/.cache/omnigate", std::env::var("HOME").unwrap()));
        format!("{cache}/venv/bin/python")
    })
}

/// `X-Twilio-Signature` for `url` and `params`, computed by twilio-python's
/// `RequestValidator`.
fn twilio_signs(token: &str, url: &str, params: &[(&str, &str)]) -> String {
    let params: serde_json::Map<String, serde_json::Value> = params
        .iter()
        .map(|(n, v)| (n.to_string(), serde_json::Value::from(*v)))
        .collect();
    let script = "import json,sys\nfrom twilio.request_validator import RequestValidator\n\
                  print(RequestValidator(sys.argv[1]).compute_signature(sys.argv[2], json.loads(sys.argv[3])))";
    let output = Command::new(python())
        .args(["-c", script, token, url])
        .arg(serde_json::Value::Object(params).to_string())
        .output()
        .expect("Python with the twilio library (make test installs it: scripts/python-tools.sh)");
    assert!(
        output.status.success(),
        "twilio's validator failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

fn form(params: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params)
        .finish()
}

fn twilio_post(path: &str, params: &[(&str, &str)], signature: &str) -> Request<Body> {
    Request::post(path)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-twilio-signature", signature)
        .body(Body::from(form(params)))
        .unwrap()
}

fn status<'a>(call: &'a str, status: &'a str, sequence: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("AccountSid", ACCOUNT),
        ("ApiVersion", "2010-04-01"),
        ("CallSid", call),
        ("CallStatus", status),
        ("CallbackSource", "call-progress-events"),
        ("Direction", "inbound"),
        ("From", "+16505551234"),
        ("To", "+15550100200"),
        ("SequenceNumber", sequence),
        ("Timestamp", "Sat, 28 Nov 2026 10:00:00 +0000"),
    ]
}

fn call_events(kafka: &MemoryPublisher) -> Vec<pb::Event> {
    kafka
        .records()
        .into_iter()
        .filter_map(|(topic, record)| match (topic, record) {
            (Topic::Inbound, Outgoing::Event(event)) => Some(*event),
            _ => None,
        })
        .collect()
}

async fn send(app: &axum::Router, request: Request<Body>) -> u16 {
    app.clone()
        .oneshot(request)
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn twilio_callbacks_signed_by_twilios_library_become_one_event_per_step() {
    let setup = setup().await;
    let path = "/webhooks/twilio/voice/demo-twilio";
    let url = format!("https://voice.example.test{path}");
    let ringing = status("CA0001", "ringing", "1");
    let mut answered = status("CA0001", "in-progress", "2");
    answered.push(("AnsweredBy", "human"));
    let mut completed = status("CA0001", "completed", "3");
    completed.push(("CallDuration", "49"));
    // Out of order and repeated, as Twilio may deliver them.
    for params in [&ringing, &completed, &answered, &completed, &ringing] {
        let signature = twilio_signs("demo-auth-token", &url, params);
        assert_eq!(
            send(&setup.app, twilio_post(path, params, &signature)).await,
            200
        );
    }
    let events = call_events(&setup.kafka);
    let types: Vec<&str> = events.iter().map(|e| e.r#type.as_str()).collect();
    assert_eq!(types, ["call.ringing", "call.ended"]);
    let ended = &events[1];
    assert_eq!(ended.conversation_key, "voice:demo-twilio:+16505551234");
    let Some(pb::event::Payload::Call(call)) = &ended.payload else {
        panic!("not a call event: {ended:?}");
    };
    assert_eq!(call.duration_seconds, 49);
    assert_eq!(call.cause, "completed");
    assert_eq!(call.call_id, "CA0001");

    // A missed call: busy, straight away.
    let busy = status("CA0002", "busy", "1");
    let signature = twilio_signs("demo-auth-token", &url, &busy);
    assert_eq!(
        send(&setup.app, twilio_post(path, &busy, &signature)).await,
        200
    );
    let last = call_events(&setup.kafka).pop().unwrap();
    assert_eq!(last.r#type, "call.missed");
}

#[tokio::test]
async fn twilio_callbacks_with_a_bad_signature_or_another_account_publish_nothing() {
    let setup = setup().await;
    let path = "/webhooks/twilio/voice/demo-twilio";
    let url = format!("https://voice.example.test{path}");
    let params = status("CA0003", "ringing", "1");
    let wrong_token = twilio_signs("not-the-token", &url, &params);
    assert_eq!(
        send(&setup.app, twilio_post(path, &params, &wrong_token)).await,
        401
    );
    let unsigned = Request::post(path)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Body::from(form(&params)))
        .unwrap();
    assert_eq!(send(&setup.app, unsigned).await, 401);
    let mut other = params.clone();
    other[0] = ("AccountSid", "AC11111111111111111111111111111111");
    let signature = twilio_signs("demo-auth-token", &url, &other);
    assert_eq!(
        send(&setup.app, twilio_post(path, &other, &signature)).await,
        403
    );
    assert!(setup.kafka.records().is_empty());
}

#[tokio::test]
async fn a_signed_but_unreadable_twilio_callback_is_dead_lettered_with_its_bytes() {
    let setup = setup().await;
    let path = "/webhooks/twilio/voice/demo-twilio";
    let url = format!("https://voice.example.test{path}");
    let params = [("AccountSid", ACCOUNT), ("CallStatus", "ringing")];
    let signature = twilio_signs("demo-auth-token", &url, &params);
    assert_eq!(
        send(&setup.app, twilio_post(path, &params, &signature)).await,
        200
    );
    let records = setup.kafka.records();
    assert_eq!(records.len(), 1);
    let (topic, Outgoing::DeadLetter(letter)) = &records[0] else {
        panic!("not a dead letter: {records:?}");
    };
    assert_eq!(*topic, Topic::Deadletter);
    assert_eq!(letter.raw, form(&params).into_bytes());
    assert!(letter.reason.contains("CallSid"), "{}", letter.reason);
}

fn cti_form(event: &str, call: &str, extra: &[(&str, &str)]) -> String {
    let mut params = vec![
        ("event", event),
        ("from", "493023125741"),
        ("to", "493055571600"),
        ("direction", "in"),
        ("callId", call),
        ("user[]", "Emma Taylor"),
    ];
    params.extend_from_slice(extra);
    form(&params)
}

fn cti_post(path: &str, body: String) -> Request<Body> {
    Request::post(path)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Body::from(body))
        .unwrap()
}

#[tokio::test]
async fn a_cti_call_sequence_with_a_path_token_rings_answers_and_ends() {
    let setup = setup().await;
    let path = "/webhooks/cti/demo-cti/demo-cti-token";
    for body in [
        cti_form("newCall", "c-1", &[]),
        cti_form("answer", "c-1", &[("answeringNumber", "emma@example.com")]),
        cti_form("hangup", "c-1", &[("cause", "normalClearing")]),
    ] {
        assert_eq!(send(&setup.app, cti_post(path, body)).await, 200);
    }
    let events = call_events(&setup.kafka);
    let types: Vec<&str> = events.iter().map(|e| e.r#type.as_str()).collect();
    assert_eq!(types, ["call.ringing", "call.answered", "call.ended"]);
    assert!(
        events
            .iter()
            .all(|e| e.conversation_key == "voice:demo-cti:+493023125741")
    );
    assert!(events.iter().all(|e| e.tenant == "acme"));
    let Some(pb::event::Payload::Call(ended)) = &events[2].payload else {
        panic!("not a call event");
    };
    assert_eq!(ended.answered_by, "emma@example.com");
    assert_eq!(ended.cause, "normalClearing");
}

#[tokio::test]
async fn a_cti_call_hung_up_while_ringing_is_missed_whatever_the_cause_is_called() {
    let setup = setup().await;
    let path = "/webhooks/cti/demo-cti/demo-cti-token";
    for body in [
        cti_form("newCall", "c-2", &[]),
        // FreeSWITCH's name for it: kept as sent, not refused.
        cti_form("hangup", "c-2", &[("cause", "ORIGINATOR_CANCEL")]),
    ] {
        assert_eq!(send(&setup.app, cti_post(path, body)).await, 200);
    }
    let events = call_events(&setup.kafka);
    let types: Vec<&str> = events.iter().map(|e| e.r#type.as_str()).collect();
    assert_eq!(types, ["call.ringing", "call.missed"]);
    let Some(pb::event::Payload::Call(missed)) = &events[1].payload else {
        panic!("not a call event");
    };
    assert_eq!(missed.cause, "ORIGINATOR_CANCEL");
}

#[tokio::test]
async fn cti_requests_are_authenticated_by_token_or_body_signature() {
    let setup = setup().await;
    let wrong = cti_post(
        "/webhooks/cti/demo-cti/wrong-token",
        cti_form("newCall", "c-3", &[]),
    );
    assert_eq!(send(&setup.app, wrong).await, 401);
    let unsigned = cti_post("/webhooks/cti/demo-cti", cti_form("newCall", "c-3", &[]));
    assert_eq!(send(&setup.app, unsigned).await, 401);
    assert!(setup.kafka.records().is_empty());

    let body = serde_json::json!({
        "event": "newCall", "from": "anonymous", "to": "493055571600",
        "direction": "in", "callId": "c-3", "user": ["Emma Taylor", "Jacob Smith"]
    })
    .to_string();
    let signed = Request::post("/webhooks/cti/demo-cti")
        .header("content-type", "application/json")
        .header(
            "x-omnigate-signature",
            verify::cti_signature(b"demo-cti-hmac", body.as_bytes()),
        )
        .body(Body::from(body))
        .unwrap();
    assert_eq!(send(&setup.app, signed).await, 200);
    let events = call_events(&setup.kafka);
    assert_eq!(events.len(), 1);
    // A withheld caller: the call is its own conversation.
    assert_eq!(events[0].conversation_key, "voice:demo-cti:c-3");
}

#[tokio::test]
async fn a_cti_request_with_an_invalid_direction_is_dead_lettered() {
    let setup = setup().await;
    let body = form(&[
        ("event", "newCall"),
        ("from", "493023125741"),
        ("to", "493055571600"),
        ("direction", "sideways"),
        ("callId", "c-4"),
    ]);
    let request = cti_post("/webhooks/cti/demo-cti/demo-cti-token", body.clone());
    assert_eq!(send(&setup.app, request).await, 200);
    let records = setup.kafka.records();
    let [(Topic::Deadletter, Outgoing::DeadLetter(letter))] = records.as_slice() else {
        panic!("not one dead letter: {records:?}");
    };
    assert_eq!(letter.raw, body.into_bytes());
    assert!(letter.reason.contains("direction"), "{}", letter.reason);
}

#[tokio::test]
async fn kafka_refusing_a_call_event_is_answered_503_and_the_retry_publishes_it() {
    let setup = setup().await;
    let path = "/webhooks/cti/demo-cti/demo-cti-token";
    setup
        .kafka
        .fail_next(omnigate_core::publish::ErrorKind::Retriable, 1);
    let status = send(&setup.app, cti_post(path, cti_form("newCall", "c-5", &[]))).await;
    assert_eq!(status, 503);
    assert!(call_events(&setup.kafka).is_empty());
    let status = send(&setup.app, cti_post(path, cti_form("newCall", "c-5", &[]))).await;
    assert_eq!(status, 200);
    let types: Vec<String> = call_events(&setup.kafka)
        .into_iter()
        .map(|e| e.r#type)
        .collect();
    assert_eq!(types, ["call.ringing"]);
}

#[tokio::test]
async fn the_voice_url_answers_twiml_and_the_recording_becomes_one_voicemail_event() {
    let setup = setup().await;
    let base = "https://voice.example.test/webhooks/twilio/voice/demo-twilio";
    let incoming = [
        ("AccountSid", ACCOUNT),
        ("CallSid", "CA0009"),
        ("CallStatus", "ringing"),
        ("Direction", "inbound"),
        ("From", "+16505551234"),
        ("To", "+15550100200"),
    ];
    let path = "/webhooks/twilio/voice/demo-twilio/incoming";
    let signature = twilio_signs("demo-auth-token", &format!("{base}/incoming"), &incoming);
    let response = setup
        .app
        .clone()
        .oneshot(twilio_post(path, &incoming, &signature))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/xml");
    let body = axum::body::to_bytes(response.into_body(), 1 << 16)
        .await
        .unwrap();
    let twiml = String::from_utf8(body.to_vec()).unwrap();
    // No forward_to on this channel: straight to the greeting and the recording,
    // whose callback carries the caller.
    let callback = format!("{base}/recording?from=%2B16505551234");
    assert!(twiml.starts_with("<?xml"), "{twiml}");
    assert!(
        twiml.contains("<Say>Sorry, nobody can take your call"),
        "{twiml}"
    );
    assert!(
        twiml.contains(&format!(r#"recordingStatusCallback="{callback}""#)),
        "{twiml}"
    );

    let recording = [
        ("AccountSid", ACCOUNT),
        ("CallSid", "CA0009"),
        ("RecordingSid", "RE0009"),
        (
            "RecordingUrl",
            "https://api.twilio.com/2010-04-01/Accounts/AC00000000000000000000000000000000/Recordings/RE0009",
        ),
        ("RecordingStatus", "completed"),
        ("RecordingDuration", "17"),
        ("RecordingChannels", "1"),
        ("RecordingSource", "RecordVerb"),
    ];
    let signature = twilio_signs("demo-auth-token", &callback, &recording);
    let path = "/webhooks/twilio/voice/demo-twilio/recording?from=%2B16505551234";
    for _ in 0..2 {
        // Twilio may send it twice; one event.
        assert_eq!(
            send(&setup.app, twilio_post(path, &recording, &signature)).await,
            200
        );
    }
    let events = call_events(&setup.kafka);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].r#type, "call.voicemail");
    assert_eq!(events[0].conversation_key, "voice:demo-twilio:+16505551234");
    let Some(pb::event::Payload::Call(call)) = &events[0].payload else {
        panic!("not a call event");
    };
    assert_eq!(call.duration_seconds, 17);
    assert!(call.recording_url.ends_with("/Recordings/RE0009"));
    // Its copy for the recording consumer; no other event has a job.
    let jobs: Vec<_> = setup
        .kafka
        .records()
        .into_iter()
        .filter_map(|(topic, record)| match (topic, record) {
            (Topic::Jobs, Outgoing::Event(event)) => Some(*event),
            _ => None,
        })
        .collect();
    assert_eq!(jobs, events, "the voicemail is on jobs.v1 too, once");

    // A caller forged into the callback URL breaks Twilio's signature.
    let forged = "/webhooks/twilio/voice/demo-twilio/recording?from=%2B19995550000";
    assert_eq!(
        send(&setup.app, twilio_post(forged, &recording, &signature)).await,
        401
    );
}

//! Voice end to end: a CTI bridge's calls through the gateway onto a real Kafka broker,
//! and routed beside the caller's WhatsApp conversation.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use omnigate_e2e::{
    DEMO_CHANNEL, Gateway, brokers, json, post_whatsapp, read_topic, unique_prefix, whatsapp_text,
};
use serde_json::Value;
use std::time::{Duration, Instant};

const PBX: &str = r#"
[voice.channels.pbx]
provider = "cti"
number = "+15550100200"
default_country = "US"
token = "pbx-path-token"
"#;

/// The routed topic's records once `done` holds for them, or after a minute.
fn routed_until(prefix: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let started = Instant::now();
    loop {
        let records: Vec<Value> = read_topic(
            &brokers(),
            &format!("{prefix}routed.v1"),
            usize::MAX,
            Duration::from_secs(2),
        )
        .iter()
        .map(json)
        .collect();
        if done(&records) || started.elapsed() > Duration::from_secs(60) {
            return records;
        }
    }
}

fn assignment<'a>(routed: &'a [Value], key: &str) -> Option<&'a Value> {
    routed
        .iter()
        .find(|e| e["type"] == "conversation.assigned" && e["conversationKey"] == key)
}

async fn cti(client: &reqwest::Client, url: &str, token: &str, fields: &[(&str, &str)]) -> u16 {
    client
        .post(format!("{url}/webhooks/cti/pbx/{token}"))
        .form(fields)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn a_missed_cti_call_is_routed_beside_the_callers_whatsapp_conversation() {
    let prefix = unique_prefix("voice-cti");
    let gateway = Gateway::start_roles(
        &brokers(),
        &prefix,
        &["whatsapp", "voice", "router"],
        &format!("{DEMO_CHANNEL}{PBX}"),
        None,
        &[],
    )
    .await;
    let client = reqwest::Client::new();
    let answer = post_whatsapp(&client, &gateway.url, whatsapp_text("wamid.voice-1"))
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let whatsapp_key = "whatsapp:106540352242922:16505551234";
    let routed = routed_until(&prefix, |r| assignment(r, whatsapp_key).is_some());
    let whatsapp_conversation =
        assignment(&routed, whatsapp_key)
            .unwrap_or_else(|| panic!("WhatsApp not routed; log:\n{}", gateway.log()))["assignment"]
            ["conversationId"]
            .clone();

    // The same customer calls (a US number without its country code) and gives up
    // while it rings.
    let call = [
        ("from", "6505551234"),
        ("to", "15550100200"),
        ("direction", "in"),
        ("callId", "pbx-call-1"),
    ];
    let with = |event: &'static str, extra: &[(&'static str, &'static str)]| {
        let mut fields = vec![("event", event)];
        fields.extend_from_slice(&call);
        fields.extend_from_slice(extra);
        fields
    };
    assert_eq!(
        cti(&client, &gateway.url, "wrong-token", &with("newCall", &[])).await,
        401
    );
    assert_eq!(
        cti(
            &client,
            &gateway.url,
            "pbx-path-token",
            &with("newCall", &[])
        )
        .await,
        200
    );
    let hangup = with("hangup", &[("cause", "cancel")]);
    assert_eq!(
        cti(&client, &gateway.url, "pbx-path-token", &hangup).await,
        200
    );
    // The bridge retries: nothing new.
    assert_eq!(
        cti(&client, &gateway.url, "pbx-path-token", &hangup).await,
        200
    );

    let call_key = "voice:pbx:+16505551234";
    let routed = routed_until(&prefix, |r| {
        r.iter().any(|e| e["type"] == "call.missed") && assignment(r, call_key).is_some()
    });
    let calls: Vec<&str> = routed
        .iter()
        .filter(|e| {
            e["conversationKey"] == call_key && e["type"].as_str().unwrap().starts_with("call.")
        })
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        calls,
        ["call.ringing", "call.missed"],
        "log:\n{}",
        gateway.log()
    );
    let call_assignment = assignment(&routed, call_key).unwrap();
    assert_eq!(
        call_assignment["assignment"]["linkedConversationIds"][0], whatsapp_conversation,
        "the call is linked to the caller's WhatsApp conversation: {call_assignment}"
    );
    let log = gateway.log();
    assert!(
        !log.contains("pbx-path-token") && !log.contains("wrong-token"),
        "a CTI path token reached the log"
    );
    assert!(
        log.contains("/webhooks/cti/pbx/***"),
        "requests are logged, masked"
    );
}

/// The bytes the fake Twilio serves as a recording.
const RECORDING: &[u8] = b"RIFF\x24\x00\x00\x00WAVEfmt fake voicemail audio";
const ACCOUNT: &str = "AC00000000000000000000000000000000";

/// A fake Twilio REST API serving one recording, as Twilio does: `.wav` appended to
/// the RecordingUrl, HTTP basic auth with the account SID and auth token.
async fn fake_twilio() -> u16 {
    use axum::{extract::Path, http::HeaderMap, routing::get};
    use base64::Engine as _;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{ACCOUNT}:demo-auth-token"))
    );
    let app = axum::Router::new().route(
        "/2010-04-01/Accounts/{account}/Recordings/{file}",
        get(
            move |Path((account, file)): Path<(String, String)>, headers: HeaderMap| {
                let expected = expected.clone();
                async move {
                    let authorized = headers
                        .get("authorization")
                        .is_some_and(|v| v.to_str().ok() == Some(expected.as_str()));
                    if !authorized || account != ACCOUNT {
                        return (axum::http::StatusCode::UNAUTHORIZED, Vec::new());
                    }
                    if file != "RE0000000000000000000000000000000a.wav" {
                        return (axum::http::StatusCode::NOT_FOUND, Vec::new());
                    }
                    (axum::http::StatusCode::OK, RECORDING.to_vec())
                }
            },
        ),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    port
}

// Two workers: the fake Twilio serves while the test blocks reading Kafka.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voicemail_recording_is_copied_into_the_blob_store_after_the_callback() {
    let prefix = unique_prefix("voice-recording");
    let twilio = fake_twilio().await;
    let extra = format!(
        "[voice]\ntwilio_api_base = \"http://127.0.0.1:{twilio}\"\n[voice.channels.line]\nprovider = \"twilio\"\nnumber = \"+15550100200\"\ndefault_country = \"US\"\naccount_sid = \"{ACCOUNT}\"\nauth_token = \"demo-auth-token\"\npublic_url = \"https://voice.example.test\"\n"
    );
    let gateway = Gateway::start_roles(&brokers(), &prefix, &["voice"], &extra, None, &[]).await;
    // Twilio signs the public URL it calls; the request reaches the gateway directly.
    let path = "/webhooks/twilio/voice/line/recording?from=%2B16505551234";
    let callback = format!("https://voice.example.test{path}");
    let params: Vec<(String, String)> = [
        ("AccountSid", ACCOUNT),
        ("CallSid", "CA0000000000000000000000000000000a"),
        ("RecordingSid", "RE0000000000000000000000000000000a"),
        (
            "RecordingUrl",
            &format!("http://127.0.0.1:{twilio}/2010-04-01/Accounts/{ACCOUNT}/Recordings/RE0000000000000000000000000000000a"),
        ),
        ("RecordingStatus", "completed"),
        ("RecordingDuration", "9"),
    ]
    .iter()
    .map(|(n, v)| (n.to_string(), v.to_string()))
    .collect();
    let signature =
        omnigate_connector_voice::verify::twilio_signature(b"demo-auth-token", &callback, &params);
    let status = reqwest::Client::new()
        .post(format!("{}{path}", gateway.url))
        .header("x-twilio-signature", signature)
        .form(&params)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200, "log:\n{}", gateway.log());

    let started = Instant::now();
    let updated = loop {
        let inbound: Vec<Value> = read_topic(
            &brokers(),
            &format!("{prefix}inbound.v1"),
            2,
            Duration::from_secs(2),
        )
        .iter()
        .map(json)
        .collect();
        if let Some(update) = inbound
            .iter()
            .find(|e| e["type"] == "message.media_updated")
        {
            assert!(inbound.iter().any(|e| e["type"] == "call.voicemail"));
            break update.clone();
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no media update; log:\n{}",
            gateway.log()
        );
    };
    let attachment = &updated["mediaUpdated"]["attachment"];
    assert_eq!(attachment["state"], "MEDIA_STATE_STORED");
    assert_eq!(attachment["size"], RECORDING.len().to_string());
    let key = attachment["blob"]["key"].as_str().unwrap();
    let stored = std::fs::read(gateway.dir.path().join("blobs").join(key)).unwrap();
    assert_eq!(stored, RECORDING);
    assert_eq!(updated["conversationKey"], "voice:line:+16505551234");
}

/// Stops the test's Kamailio when the test ends, passed or not.
struct Kamailio {
    logs: tempfile::TempDir,
}

impl Drop for Kamailio {
    fn drop(&mut self) {
        let _ = std::process::Command::new(repo().join("scripts/sip.sh"))
            .arg("stop")
            .arg(self.logs.path())
            .status();
    }
}

fn repo() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Places one real SIP call through Kamailio (two baresip user agents) and returns
/// its SIP Call-ID.
fn sip_call(port: u16, scenario: &str, caller: &str) -> String {
    let output = std::process::Command::new("python3")
        .arg(repo().join("tests/voice/sip_call.py"))
        .args(["--proxy", &format!("127.0.0.1:{port}")])
        .args(["--scenario", scenario, "--caller", caller])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{scenario} call failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout.lines().last().unwrap().trim().to_string()
}

// Two workers: the gateway's CTI requests are answered while the test blocks on calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_sip_calls_through_kamailio_give_the_right_call_events() {
    let prefix = unique_prefix("voice-sip");
    let gateway = Gateway::start_roles(&brokers(), &prefix, &["voice"], PBX, None, &[]).await;
    let kamailio = Kamailio {
        logs: tempfile::tempdir().unwrap(),
    };
    let port = omnigate_e2e::free_port();
    let started = std::process::Command::new(repo().join("scripts/sip.sh"))
        .arg("start")
        .arg(port.to_string())
        .arg(format!("{}/webhooks/cti/pbx/pbx-path-token", gateway.url))
        .arg(kamailio.logs.path())
        .status()
        .unwrap();
    assert!(started.success(), "Kamailio did not start");
    // Each scenario from its own caller, so each call has a conversation of its own.
    let scenarios = [
        ("answered", "+15550001111"),
        ("busy", "+15550001112"),
        ("cancel", "+15550001113"),
        ("noanswer", "+15550001114"),
    ];
    let calls: Vec<(&str, String)> = scenarios
        .iter()
        .map(|(scenario, caller)| (*scenario, sip_call(port, scenario, caller)))
        .collect();
    let expected_events = 3 + 2 + 2 + 2;
    let inbound: Vec<Value> = read_topic(
        &brokers(),
        &format!("{prefix}inbound.v1"),
        expected_events,
        Duration::from_secs(30),
    )
    .iter()
    .map(json)
    .collect();
    let of_call = |call_id: &str| -> Vec<(String, String)> {
        let mut events: Vec<&Value> = inbound
            .iter()
            .filter(|e| e["call"]["callId"] == call_id)
            .collect();
        events.sort_by_key(|e| {
            e["call"]["sequence"]
                .as_str()
                .unwrap_or("0")
                .parse::<u64>()
                .unwrap_or(0)
        });
        events
            .iter()
            .map(|e| {
                (
                    e["type"].as_str().unwrap().to_string(),
                    e["call"]["cause"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    };
    let kamailio_log =
        || std::fs::read_to_string(kamailio.logs.path().join("kamailio.log")).unwrap_or_default();
    for (scenario, call_id) in &calls {
        let got = of_call(call_id);
        let types: Vec<&str> = got.iter().map(|(t, _)| t.as_str()).collect();
        let last_cause = got.last().map(|(_, c)| c.as_str()).unwrap_or_default();
        let (want_types, want_cause): (&[&str], &str) = match *scenario {
            "answered" => (
                &["call.ringing", "call.answered", "call.ended"],
                "normalClearing",
            ),
            "busy" => (&["call.ringing", "call.missed"], "busy"),
            "cancel" => (&["call.ringing", "call.missed"], "cancel"),
            _ => (&["call.ringing", "call.missed"], "noAnswer"),
        };
        assert_eq!(
            types,
            want_types,
            "{scenario} call {call_id}: {got:?}\ngateway log:\n{}\nkamailio log:\n{}",
            gateway.log(),
            kamailio_log()
        );
        assert_eq!(last_cause, want_cause, "{scenario}: {got:?}");
    }
    let busy = inbound
        .iter()
        .find(|e| e["call"]["callId"] == calls[1].1.as_str() && e["type"] == "call.missed")
        .unwrap();
    assert_eq!(busy["conversationKey"], "voice:pbx:+15550001112");
    assert_eq!(busy["call"]["from"], "+15550001112");
}

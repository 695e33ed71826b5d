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

//! Asterisk AMI against a local server that speaks the AMI wire protocol (banner,
//! login response, event blocks), replaying the events Asterisk documents for a call
//! that rings out unanswered; an in-memory publisher stands in for Kafka.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use omnigate_connector_voice::VoiceKind;
use omnigate_core::{
    connector::{ChannelState, ConfigSource, Connector, ConnectorContext, ConnectorKind},
    publish::{MemoryPublisher, Outgoing, Publisher, Topic},
};
use std::{sync::Arc, time::Duration};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::TcpListener,
};

const DEFAULTS: &str = include_str!("../../../config/default.toml");

/// A missed call as Asterisk reports it: the caller's channel, the dial to an agent
/// that nobody picks up, the hang-up.
const MISSED_CALL: &str = "Event: Newchannel\r\nPrivilege: call,all\r\nChannel: PJSIP/trunk-00000001\r\nChannelState: 0\r\nChannelStateDesc: Down\r\nCallerIDNum: 6505551234\r\nExten: 200\r\nUniqueid: 1700000000.1\r\nLinkedid: 1700000000.1\r\n\r\n\
Event: Newchannel\r\nPrivilege: call,all\r\nChannel: PJSIP/agent-00000002\r\nCallerIDNum: 201\r\nUniqueid: 1700000000.2\r\nLinkedid: 1700000000.1\r\n\r\n\
Event: DialEnd\r\nPrivilege: call,all\r\nChannel: PJSIP/trunk-00000001\r\nDestChannel: PJSIP/agent-00000002\r\nDialStatus: NOANSWER\r\nUniqueid: 1700000000.1\r\nLinkedid: 1700000000.1\r\n\r\n\
Event: Hangup\r\nPrivilege: call,all\r\nChannel: PJSIP/agent-00000002\r\nUniqueid: 1700000000.2\r\nLinkedid: 1700000000.1\r\nCause: 19\r\nCause-txt: No answer\r\n\r\n\
Event: Hangup\r\nPrivilege: call,all\r\nChannel: PJSIP/trunk-00000001\r\nUniqueid: 1700000000.1\r\nLinkedid: 1700000000.1\r\nCause: 16\r\nCause-txt: Normal Clearing\r\n\r\n";

/// Serves one AMI connection: banner, login (accepted when the secret is right),
/// then `events`, then closes.
async fn serve_once(listener: &TcpListener, events: &str) -> Vec<String> {
    let (stream, _) = listener.accept().await.unwrap();
    let (read, mut write) = stream.into_split();
    write
        .write_all(b"Asterisk Call Manager/9.0.0\r\n")
        .await
        .unwrap();
    let mut lines = BufReader::new(read).lines();
    let mut login = Vec::new();
    while let Some(line) = lines.next_line().await.unwrap() {
        if line.is_empty() {
            break;
        }
        login.push(line);
    }
    let accepted = login.iter().any(|l| l == "Secret: ami-secret");
    let answer = if accepted {
        "Response: Success\r\nActionID: login\r\nMessage: Authentication accepted\r\n\r\n"
    } else {
        "Response: Error\r\nActionID: login\r\nMessage: Authentication failed\r\n\r\n"
    };
    write.write_all(answer.as_bytes()).await.unwrap();
    if accepted {
        write.write_all(events.as_bytes()).await.unwrap();
        // Keep the connection open a moment, as a PBX would.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    login
}

async fn start(
    port: u16,
    secret: &str,
) -> (Arc<dyn Connector>, MemoryPublisher, tempfile::TempDir) {
    let channel = format!(
        "[voice.channels.pbx]\nprovider = \"asterisk\"\nnumber = \"+15550100200\"\ndefault_country = \"US\"\nami_url = \"tcp://127.0.0.1:{port}\"\nusername = \"omnigate\"\nsecret = \"{secret}\"\n"
    );
    let connector = VoiceKind
        .configure(&ConfigSource::from_toml(DEFAULTS, &channel))
        .unwrap();
    let kafka = MemoryPublisher::default();
    let dir = tempfile::tempdir().unwrap();
    let ctx = ConnectorContext::for_tests(Publisher::new(kafka.clone()), dir.path()).unwrap();
    let _no_routes_needed = connector.start(ctx).await.unwrap();
    (connector, kafka, dir)
}

fn call_types(kafka: &MemoryPublisher) -> Vec<String> {
    kafka
        .records()
        .into_iter()
        .filter_map(|(topic, record)| match (topic, record) {
            (Topic::Inbound, Outgoing::Event(event)) => Some(event.r#type.clone()),
            _ => None,
        })
        .collect()
}

async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..100 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what} did not happen within 5 s");
}

#[tokio::test]
async fn an_unanswered_call_on_asterisk_becomes_ringing_then_missed() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (connector, kafka, _dir) = start(port, "ami-secret").await;
    let login = serve_once(&listener, MISSED_CALL).await;
    assert!(login.contains(&"Action: Login".to_string()), "{login:?}");
    assert!(
        login.contains(&"Username: omnigate".to_string()),
        "{login:?}"
    );
    eventually("two call events", || call_types(&kafka).len() >= 2).await;
    assert_eq!(call_types(&kafka), ["call.ringing", "call.missed"]);
    let records = kafka.records();
    let Outgoing::Event(missed) = &records[1].1 else {
        panic!("not an event");
    };
    assert_eq!(missed.conversation_key, "voice:pbx:+16505551234");

    // The PBX went away: the channel is in error, and it comes back on reconnect.
    eventually("the channel in error", || {
        matches!(connector.health()[0].1, ChannelState::Error(_))
    })
    .await;
    serve_once(&listener, "").await;
    eventually("the channel working again", || {
        connector.health()[0].1 == ChannelState::Ok
    })
    .await;
}

#[tokio::test]
async fn a_refused_login_puts_the_channel_in_error_with_the_reason() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (connector, kafka, _dir) = start(port, "wrong-secret").await;
    serve_once(&listener, MISSED_CALL).await;
    eventually("the channel in error", || {
        matches!(&connector.health()[0].1, ChannelState::Error(reason) if reason.contains("Authentication failed"))
    })
    .await;
    assert!(kafka.records().is_empty());
}

//! Asterisk's Manager Interface (AMI), watched passively: one long-lived TCP
//! connection per channel, logged in for call events, whose `Newchannel`, `DialEnd`,
//! `BridgeEnter` and `Hangup` events, tied together by `Linkedid`, become the same
//! call reports as Twilio's and CTI's. A PBX that goes away puts the channel in
//! error and is reconnected with backoff; no read waits without a deadline.

use crate::{
    Voice,
    config::ChannelConfig,
    normalize::{CallReport, Step},
    webhook,
};
use chrono::Utc;
use omnigate_core::{connector::ChannelState, retry::Backoff};
use omnigate_model::pb;
use secrecy::ExposeSecret as _;
use std::{collections::HashMap, time::Duration};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::TcpStream,
};

/// How often an idle connection is pinged; a PBX that does not answer within twice
/// this is taken for gone.
const PING_INTERVAL: Duration = Duration::from_secs(20);
/// How long connecting and logging in may take.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(10);

/// One AMI message: its `Key: Value` lines, in order.
pub type Block = Vec<(String, String)>;

/// The value of `key` in `block`, matched without regard to case as AMI allows.
pub fn value<'a>(block: &'a Block, key: &str) -> Option<&'a str> {
    block
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v.as_str())
}

/// Parses one line of a block; `None` for a line without `: `.
pub fn parse_line(line: &str) -> Option<(String, String)> {
    let (key, value) = line.split_once(':')?;
    Some((key.trim().to_string(), value.trim().to_string()))
}

/// What is remembered of one call (one `Linkedid`) between its events.
#[derive(Debug, Default, Clone)]
struct Leg {
    from: String,
    to: String,
    /// The last `DialEnd` status that was not `ANSWER`.
    dial_status: Option<String>,
}

/// Turns AMI events into call reports, correlating them by `Linkedid`.
#[derive(Debug, Default)]
pub struct Correlator {
    calls: HashMap<String, Leg>,
}

impl Correlator {
    /// The call report `event` makes, if any.
    pub fn report(&mut self, event: &Block, at: chrono::DateTime<Utc>) -> Option<CallReport> {
        let name = value(event, "Event")?;
        let linked = value(event, "Linkedid")?.to_string();
        let first_leg = value(event, "Uniqueid") == Some(linked.as_str());
        let report = |leg: &Leg, step: Step, answered_by: &str, cause: &str| CallReport {
            call_id: linked.clone(),
            step,
            direction: pb::Direction::Inbound,
            from: leg.from.clone(),
            to: leg.to.clone(),
            at,
            sequence: 0,
            duration_seconds: None,
            answered_by: answered_by.to_string(),
            cause: cause.to_string(),
            recording_url: String::new(),
        };
        match name {
            "Newchannel" if first_leg => {
                let leg = Leg {
                    from: value(event, "CallerIDNum").unwrap_or_default().to_string(),
                    to: value(event, "Exten").unwrap_or_default().to_string(),
                    dial_status: None,
                };
                let ringing = report(&leg, Step::Ringing, "", "");
                self.calls.insert(linked, leg);
                Some(ringing)
            }
            "DialEnd" => {
                let leg = self.calls.get_mut(&linked)?;
                match value(event, "DialStatus")? {
                    "ANSWER" => {
                        let by = value(event, "DestCallerIDNum").unwrap_or_default();
                        let leg = leg.clone();
                        Some(report(&leg, Step::Answered, by, ""))
                    }
                    other => {
                        leg.dial_status = Some(other.to_string());
                        None
                    }
                }
            }
            "BridgeEnter" if !first_leg => {
                let leg = self.calls.get(&linked)?.clone();
                let by = value(event, "CallerIDNum").unwrap_or_default();
                Some(report(&leg, Step::Answered, by, ""))
            }
            "Hangup" if first_leg => {
                let leg = self.calls.remove(&linked)?;
                // A dial that ended busy, unanswered or cancelled says the call was not
                // answered; otherwise the call's history decides.
                let (answered, cause) = match &leg.dial_status {
                    Some(status) => (Some(false), status.clone()),
                    None => (
                        None,
                        value(event, "Cause-txt").unwrap_or_default().to_string(),
                    ),
                };
                Some(report(&leg, Step::Ended { answered }, "", &cause))
            }
            _ => None,
        }
    }
}

/// Follows the channel's PBX until shutdown: connect, log in, read events; on any
/// failure the channel is in error until the next connection works.
pub(crate) async fn follow(voice: Voice, channel_id: String, config: ChannelConfig) {
    let shutdown = voice.inner.ctx.shutdown.clone();
    let mut backoff = reconnect_backoff();
    loop {
        let result = tokio::select! {
            () = shutdown.cancelled() => return,
            result = session(&voice, &channel_id, &config, &mut backoff) => result,
        };
        if let Err(reason) = result {
            tracing::warn!(channel = channel_id, %reason, "Asterisk AMI connection lost; reconnecting");
            voice.set_state(
                &channel_id,
                ChannelState::Error(format!("Asterisk AMI: {reason}")),
            );
        }
        if !backoff.sleep_unless(&shutdown).await {
            return;
        }
    }
}

/// Waits between connection attempts: from half a second up to 30 s.
fn reconnect_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(500), Duration::from_secs(30))
}

/// One connection's life; returns why it ended.
async fn session(
    voice: &Voice,
    channel_id: &str,
    config: &ChannelConfig,
    backoff: &mut Backoff,
) -> Result<(), String> {
    let address = config
        .ami_url
        .as_ref()
        .and_then(|url| Some(format!("{}:{}", url.host_str()?, url.port()?)))
        .ok_or("ami_url has no host and port")?;
    let stream = tokio::time::timeout(LOGIN_TIMEOUT, TcpStream::connect(&address))
        .await
        .map_err(|_| format!("no connection to {address} within {LOGIN_TIMEOUT:?}"))?
        .map_err(|e| format!("cannot connect to {address}: {e}"))?;
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    let banner = tokio::time::timeout(LOGIN_TIMEOUT, lines.next_line())
        .await
        .map_err(|_| "no banner".to_string())?
        .map_err(|e| e.to_string())?
        .unwrap_or_default();
    if !banner.starts_with("Asterisk Call Manager") {
        return Err(format!("not an AMI server (banner `{banner}`)"));
    }
    let login = format!(
        "Action: Login\r\nActionID: login\r\nUsername: {}\r\nSecret: {}\r\nEvents: call\r\n\r\n",
        config.username.as_deref().unwrap_or_default(),
        config
            .secret
            .as_ref()
            .map(|s| s.expose_secret())
            .unwrap_or_default(),
    );
    write
        .write_all(login.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let answer = tokio::time::timeout(LOGIN_TIMEOUT, read_block(&mut lines))
        .await
        .map_err(|_| "no answer to the login".to_string())??;
    if value(&answer, "Response") != Some("Success") {
        return Err(format!(
            "login refused: {}",
            value(&answer, "Message").unwrap_or("no reason given")
        ));
    }
    tracing::info!(channel = channel_id, %address, "Following Asterisk AMI");
    voice.set_state(channel_id, ChannelState::Ok);
    *backoff = reconnect_backoff();
    let mut correlator = Correlator::default();
    let mut pings = 0u64;
    loop {
        let block = match tokio::time::timeout(PING_INTERVAL, read_block(&mut lines)).await {
            Ok(block) => block?,
            Err(_) => {
                // Quiet: ask, and give the PBX one more interval to say anything.
                pings += 1;
                let ping = format!("Action: Ping\r\nActionID: ping-{pings}\r\n\r\n");
                write
                    .write_all(ping.as_bytes())
                    .await
                    .map_err(|e| e.to_string())?;
                tokio::time::timeout(PING_INTERVAL, read_block(&mut lines))
                    .await
                    .map_err(|_| "the PBX stopped answering".to_string())??
            }
        };
        let Some(report) = correlator.report(&block, Utc::now()) else {
            continue;
        };
        // AMI does not replay: keep trying until Kafka takes the event.
        let mut retry = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        while let Err(err) = webhook::publish_report(voice, channel_id, config, &report, || {
            omnigate_core::ingest::raw_dead_letter(
                pb::ChannelKind::Voice,
                channel_id,
                &config.tenant,
                "text/plain",
                format!("{block:?}").as_bytes(),
                "",
                Utc::now(),
            )
        })
        .await
        {
            tracing::warn!(channel = channel_id, error = ?err, "Call event not published; retrying");
            if !retry.sleep_unless(&voice.inner.ctx.shutdown).await {
                return Ok(());
            }
        }
    }
}

/// Reads one block: lines up to an empty line. Lines without a key (command output)
/// are skipped.
async fn read_block<R: tokio::io::AsyncBufRead + Unpin>(
    lines: &mut tokio::io::Lines<R>,
) -> Result<Block, String> {
    let mut block = Block::new();
    loop {
        match lines.next_line().await.map_err(|e| e.to_string())? {
            None => return Err("the PBX closed the connection".into()),
            Some(line) if line.trim().is_empty() => {
                if !block.is_empty() {
                    return Ok(block);
                }
            }
            Some(line) => block.extend(parse_line(&line)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(text: &str) -> Block {
        text.lines().filter_map(parse_line).collect()
    }

    #[test]
    fn an_answered_call_is_correlated_by_linkedid() {
        let mut calls = Correlator::default();
        let at = Utc::now();
        let events = [
            "Event: Newchannel\nChannel: PJSIP/trunk-1\nCallerIDNum: 6505551234\nExten: 200\nUniqueid: 1.1\nLinkedid: 1.1",
            "Event: Newchannel\nChannel: PJSIP/agent-2\nCallerIDNum: 201\nUniqueid: 1.2\nLinkedid: 1.1",
            "Event: DialEnd\nDialStatus: ANSWER\nDestCallerIDNum: 201\nUniqueid: 1.1\nLinkedid: 1.1",
            "Event: BridgeEnter\nCallerIDNum: 201\nUniqueid: 1.2\nLinkedid: 1.1",
            "Event: Hangup\nUniqueid: 1.2\nLinkedid: 1.1\nCause: 16\nCause-txt: Normal Clearing",
            "Event: Hangup\nUniqueid: 1.1\nLinkedid: 1.1\nCause: 16\nCause-txt: Normal Clearing",
        ];
        let steps: Vec<_> = events
            .iter()
            .filter_map(|e| calls.report(&block(e), at))
            .map(|r| (r.step, r.answered_by, r.cause))
            .collect();
        assert_eq!(
            steps,
            [
                (Step::Ringing, String::new(), String::new()),
                (Step::Answered, "201".into(), String::new()),
                (Step::Answered, "201".into(), String::new()),
                (
                    Step::Ended { answered: None },
                    String::new(),
                    "Normal Clearing".into()
                ),
            ]
        );
    }

    #[test]
    fn a_busy_dial_ends_the_call_unanswered() {
        let mut calls = Correlator::default();
        let at = Utc::now();
        for e in [
            "Event: Newchannel\nCallerIDNum: 6505551234\nExten: 200\nUniqueid: 2.1\nLinkedid: 2.1",
            "Event: DialEnd\nDialStatus: BUSY\nUniqueid: 2.1\nLinkedid: 2.1",
        ] {
            calls.report(&block(e), at);
        }
        let ended = calls
            .report(
                &block("Event: Hangup\nUniqueid: 2.1\nLinkedid: 2.1\nCause-txt: User busy"),
                at,
            )
            .map(|r| (r.step, r.cause));
        assert_eq!(
            ended,
            Some((
                Step::Ended {
                    answered: Some(false)
                },
                "BUSY".into()
            ))
        );
    }
}

//! One state machine for the calls of every source: what a report means given what
//! was already said about its call, and the `call.*` event it becomes.
//!
//! Providers retry and reorder (Twilio says so; CTI bridges retry on timeouts). A
//! report decides against the call's state, and the state moves only after Kafka has
//! the event, so a report that failed to publish decides the same way when it comes
//! again. Event ids derive from the call id and the step, so even a duplicate that
//! slips through (two copies in flight at once, or a restart) carries the same id.

use crate::normalize::{CallReport, Step};
use chrono::{DateTime, Utc};
use omnigate_model::{EventBuilder, EventType, conversation_key, pb, phone::to_e164, timestamp};
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// What is known of one call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallState {
    /// `call.ringing` was published.
    pub rang: bool,
    /// When it was answered (`call.answered` was published).
    pub answered_at: Option<DateTime<Utc>>,
    /// Who answered.
    pub answered_by: String,
    /// `call.ended` or `call.missed` was published.
    pub ended: bool,
    /// `call.voicemail` was published.
    pub voicemail: bool,
}

/// The event a report calls for, and the call's state once it is published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// `call.ringing`, `call.answered`, `call.ended` or `call.missed`.
    pub event_type: EventType,
    /// The report, completed from the call's history (duration, who answered).
    pub report: CallReport,
    /// The state to keep after Kafka acknowledged the event.
    pub next: CallState,
}

/// What `report` means for a call in `state`: an event, or nothing when it repeats or
/// comes after a later step (a `ringing` after `answered`, anything after the end).
pub fn decide(state: &CallState, report: &CallReport) -> Option<Decision> {
    let mut next = state.clone();
    let mut report = report.clone();
    let event_type = match report.step {
        // A voicemail comes after the end of its call (Twilio sends the recording
        // once the caller hangs up): it has a once-only flag of its own.
        Step::Voicemail if state.voicemail => return None,
        Step::Voicemail => {
            next.voicemail = true;
            EventType::CallVoicemail
        }
        _ if state.ended => return None,
        Step::Ringing if state.rang || state.answered_at.is_some() => return None,
        Step::Ringing => {
            next.rang = true;
            EventType::CallRinging
        }
        Step::Answered if state.answered_at.is_some() => return None,
        Step::Answered => {
            next.answered_at = Some(report.at);
            next.answered_by = report.answered_by.clone();
            EventType::CallAnswered
        }
        Step::Ended { answered } => {
            next.ended = true;
            // An answer seen wins; then the provider's own word (Twilio's `completed`
            // means answered, and Twilio sends only that by default); then the history
            // (rang and never answered is missed, whatever the cause is called, as
            // Zammad counts it); with no history at all, a normal clearing.
            let was_answered = state.answered_at.is_some()
                || answered.unwrap_or_else(|| !state.rang && is_normal_clearing(&report.cause));
            if report.answered_by.is_empty() {
                report.answered_by = state.answered_by.clone();
            }
            if report.duration_seconds.is_none() {
                report.duration_seconds = state.answered_at.map(|answered_at| {
                    (report.at - answered_at)
                        .num_seconds()
                        .clamp(0, i64::from(u32::MAX)) as u32
                });
            }
            if was_answered {
                EventType::CallEnded
            } else {
                EventType::CallMissed
            }
        }
    };
    Some(Decision {
        event_type,
        report,
        next,
    })
}

fn is_normal_clearing(cause: &str) -> bool {
    matches!(cause, "normalClearing" | "NORMAL_CLEARING" | "completed")
}

/// The state of the calls seen lately, by call id; the oldest are forgotten past
/// `capacity` (a call's reports come within hours, and a forgotten call still gets
/// deterministic event ids).
#[derive(Debug)]
pub struct CallBook {
    book: Mutex<Book>,
}

#[derive(Debug)]
struct Book {
    calls: HashMap<String, CallState>,
    order: VecDeque<String>,
    capacity: usize,
}

impl CallBook {
    /// A book that remembers up to `capacity` calls.
    pub fn new(capacity: usize) -> Self {
        Self {
            book: Mutex::new(Book {
                calls: HashMap::new(),
                order: VecDeque::new(),
                capacity: capacity.max(1),
            }),
        }
    }

    /// What is known of call `key`.
    pub fn state(&self, key: &str) -> CallState {
        let book = self.book.lock().unwrap_or_else(|e| e.into_inner());
        book.calls.get(key).cloned().unwrap_or_default()
    }

    /// Keeps `state` for call `key`.
    pub fn keep(&self, key: &str, state: CallState) {
        let mut book = self.book.lock().unwrap_or_else(|e| e.into_inner());
        if book.calls.insert(key.to_string(), state).is_none() {
            book.order.push_back(key.to_string());
            while book.order.len() > book.capacity {
                if let Some(oldest) = book.order.pop_front() {
                    book.calls.remove(&oldest);
                }
            }
        }
    }
}

/// The channel a call event comes from.
#[derive(Debug, Clone)]
pub struct CallChannel<'a> {
    /// The channel's id in config.
    pub channel_id: &'a str,
    /// Its tenant.
    pub tenant: &'a str,
    /// Our number, E.164.
    pub number: &'a str,
    /// The country of numbers sent without a country code.
    pub default_country: Option<phonenumber::country::Id>,
}

/// `raw` in E.164, when it is a phone number: international forms as they are,
/// national ones in the channel's default country.
pub fn to_e164_in(raw: &str, country: Option<phonenumber::country::Id>) -> Option<String> {
    let trimmed = raw.trim();
    if trimmed.is_empty() || trimmed.starts_with('+') || trimmed.starts_with("00") {
        return to_e164(trimmed);
    }
    let national = country
        .and_then(|country| phonenumber::parse(Some(country), trimmed).ok())
        .filter(phonenumber::is_valid)
        .map(|number| number.format().mode(phonenumber::Mode::E164).to_string());
    // CTI bridges send international numbers without the `+` (493055571600).
    national.or_else(|| to_e164(trimmed))
}

/// The `call.*` event of a decision.
pub fn call_event(channel: &CallChannel<'_>, decision: &Decision) -> pb::Event {
    let report = &decision.report;
    let caller_raw = match report.direction {
        pb::Direction::Outbound => &report.to,
        _ => &report.from,
    };
    let caller = to_e164_in(caller_raw, channel.default_country);
    // A withheld caller has no number to join other channels by: the call is its own
    // conversation.
    let key = conversation_key::voice(
        channel.channel_id,
        caller.as_deref().unwrap_or(&report.call_id),
    );
    let number =
        |raw: &str| to_e164_in(raw, channel.default_country).unwrap_or_else(|| raw.to_string());
    let payload = pb::CallEvent {
        channel: Some(pb::Channel {
            kind: pb::ChannelKind::Voice as i32,
            channel_id: channel.channel_id.to_string(),
            address: channel.number.to_string(),
        }),
        call_id: report.call_id.clone(),
        direction: report.direction as i32,
        from: number(&report.from),
        to: number(&report.to),
        contact: Some(pb::Contact {
            phone_e164: caller.unwrap_or_default(),
            provider_id: caller_raw.clone(),
            ..Default::default()
        }),
        at: Some(timestamp(report.at)),
        duration_seconds: report.duration_seconds.unwrap_or(0),
        answered_by: report.answered_by.clone(),
        cause: report.cause.clone(),
        recording: None,
        sequence: report.sequence,
        recording_url: report.recording_url.clone(),
    };
    EventBuilder::channel(pb::ChannelKind::Voice, channel.channel_id, channel.tenant).event(
        decision.event_type,
        &report.call_id,
        key,
        report.at,
        pb::event::Payload::Call(payload),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone as _;

    fn report(step: Step, second: u32) -> CallReport {
        CallReport {
            call_id: "c1".into(),
            step,
            direction: pb::Direction::Inbound,
            from: "+16505551234".into(),
            to: "+15550100200".into(),
            at: Utc
                .with_ymd_and_hms(2026, 11, 28, 10, 0, second)
                .single()
                .unwrap_or_default(),
            sequence: 0,
            duration_seconds: None,
            answered_by: String::new(),
            cause: String::new(),
            recording_url: String::new(),
        }
    }

    fn run(steps: &[(Step, u32)]) -> Vec<(EventType, Option<u32>)> {
        let mut state = CallState::default();
        let mut out = Vec::new();
        for (step, second) in steps {
            if let Some(decision) = decide(&state, &report(*step, *second)) {
                out.push((decision.event_type, decision.report.duration_seconds));
                state = decision.next;
            }
        }
        out
    }

    #[test]
    fn an_answered_call_rings_answers_and_ends_with_its_duration() {
        let ended = Step::Ended { answered: None };
        assert_eq!(
            run(&[(Step::Ringing, 0), (Step::Answered, 5), (ended, 50)]),
            [
                (EventType::CallRinging, None),
                (EventType::CallAnswered, None),
                (EventType::CallEnded, Some(45)),
            ]
        );
    }

    #[test]
    fn an_unanswered_call_is_missed_whatever_its_cause_says() {
        let unknown = Step::Ended { answered: None };
        assert_eq!(
            run(&[(Step::Ringing, 0), (unknown, 20)]),
            [
                (EventType::CallRinging, None),
                (EventType::CallMissed, None)
            ]
        );
        let busy = Step::Ended {
            answered: Some(false),
        };
        assert_eq!(run(&[(busy, 1)]), [(EventType::CallMissed, None)]);
    }

    #[test]
    fn repeats_and_late_steps_give_no_second_event() {
        let ended = Step::Ended {
            answered: Some(true),
        };
        assert_eq!(
            run(&[
                (Step::Answered, 5),
                (Step::Ringing, 0),
                (Step::Answered, 5),
                (ended, 30),
                (ended, 30),
                (Step::Ringing, 0),
            ]),
            [
                (EventType::CallAnswered, None),
                (EventType::CallEnded, Some(25)),
            ]
        );
    }

    #[test]
    fn the_book_forgets_the_oldest_calls_past_its_capacity() {
        let book = CallBook::new(2);
        let rang = CallState {
            rang: true,
            ..Default::default()
        };
        for key in ["a", "b", "c"] {
            book.keep(key, rang.clone());
        }
        assert_eq!(book.state("a"), CallState::default());
        assert_eq!(book.state("c"), rang);
    }

    #[test]
    fn callers_are_keyed_in_e164_and_withheld_ones_by_call() {
        let us = "US".parse().ok();
        assert_eq!(
            to_e164_in("(650) 555-1234", us).as_deref(),
            Some("+16505551234")
        );
        assert_eq!(
            to_e164_in("493055571600", us).as_deref(),
            Some("+493055571600")
        );
        assert_eq!(to_e164_in("anonymous", us), None);
        let channel = CallChannel {
            channel_id: "hotline",
            tenant: "default",
            number: "+15550100200",
            default_country: us,
        };
        let mut withheld = report(Step::Ringing, 0);
        withheld.from = "anonymous".into();
        let decision = decide(&CallState::default(), &withheld);
        let event = call_event(
            &channel,
            decision.as_ref().unwrap_or_else(|| unreachable!()),
        );
        assert_eq!(event.conversation_key, "voice:hotline:c1");
    }
}

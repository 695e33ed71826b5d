//! Pure parsing of a verified provider request into one provider-neutral
//! [`CallReport`]. No I/O, no clock: the receive time comes in as an argument, so
//! fixtures and fuzzers drive it.

use chrono::{DateTime, Utc};
use omnigate_model::pb;

/// Which step of a call a provider reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The phone rings.
    Ringing,
    /// Someone picked up.
    Answered,
    /// The call is over. `answered` is what the provider's own status says about
    /// whether it was ever answered (Twilio's `completed` or `busy`, CTI's `busy` or
    /// `cancel`), or `None` when only the call's history can tell.
    Ended {
        /// Whether the provider says the call was answered.
        answered: Option<bool>,
    },
    /// The caller left a message; the report's `recording_url` says where it is.
    Voicemail,
}

/// One provider request about one call, in provider-neutral terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallReport {
    /// The provider's call id (Twilio `CallSid`, CTI `callId`).
    pub call_id: String,
    /// What happened.
    pub step: Step,
    /// Inbound (a customer calls us) or outbound.
    pub direction: pb::Direction,
    /// The caller as the provider spelt it.
    pub from: String,
    /// The callee as the provider spelt it.
    pub to: String,
    /// When it happened: the provider's time when it sends one, else the receive time.
    pub at: DateTime<Utc>,
    /// The provider's order of events within the call (Twilio `SequenceNumber`).
    pub sequence: u64,
    /// The call's length in seconds, when the provider says (Twilio `CallDuration`).
    pub duration_seconds: Option<u32>,
    /// The agent, extension or machine that answered.
    pub answered_by: String,
    /// The provider's cause for the end of the call, kept as spelt (`completed`,
    /// `no-answer`, `normalClearing`, `NORMAL_CLEARING`, …).
    pub cause: String,
    /// Where the provider keeps a voicemail's recording.
    pub recording_url: String,
}

/// A verified request that is not a call report we can read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub String);

/// What a request said, once parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// A step of a call.
    Report(CallReport),
    /// A status with nothing for the helpdesk (Twilio `queued`, `initiated`).
    Ignored(String),
}

/// The form fields of a request body, in order, repeated names kept.
pub fn form_pairs(body: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(body).into_owned().collect()
}

fn field<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

fn required<'a>(pairs: &'a [(String, String)], name: &str) -> Result<&'a str, ParseError> {
    field(pairs, name)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| ParseError(format!("`{name}` is missing")))
}

/// A Twilio Voice status callback (form fields as Twilio posts them).
pub fn twilio_status(
    pairs: &[(String, String)],
    received_at: DateTime<Utc>,
) -> Result<Parsed, ParseError> {
    let call_id = required(pairs, "CallSid")?.to_string();
    let status = required(pairs, "CallStatus")?;
    let step = match status {
        "queued" | "initiated" => return Ok(Parsed::Ignored(format!("CallStatus {status}"))),
        "ringing" => Step::Ringing,
        "in-progress" => Step::Answered,
        "completed" => Step::Ended {
            answered: Some(true),
        },
        "busy" | "no-answer" | "canceled" | "failed" => Step::Ended {
            answered: Some(false),
        },
        other => return Err(ParseError(format!("unknown CallStatus `{other}`"))),
    };
    let direction = match field(pairs, "Direction").unwrap_or("inbound") {
        "inbound" | "trunking-originating" => pb::Direction::Inbound,
        _ => pb::Direction::Outbound,
    };
    let at = field(pairs, "Timestamp")
        .and_then(|t| DateTime::parse_from_rfc2822(t).ok())
        .map_or(received_at, |t| t.with_timezone(&Utc));
    let number = |name: &str| -> Result<Option<u64>, ParseError> {
        field(pairs, name)
            .filter(|v| !v.is_empty())
            .map(|v| {
                v.parse()
                    .map_err(|_| ParseError(format!("`{name}` is not a number: `{v}`")))
            })
            .transpose()
    };
    let sequence = number("SequenceNumber")?.unwrap_or(0);
    let duration_seconds = number("CallDuration")?.map(|d| d.min(u64::from(u32::MAX)) as u32);
    Ok(Parsed::Report(CallReport {
        call_id,
        step,
        direction,
        from: field(pairs, "From").unwrap_or_default().to_string(),
        to: field(pairs, "To").unwrap_or_default().to_string(),
        at,
        sequence,
        duration_seconds,
        answered_by: field(pairs, "AnsweredBy").unwrap_or_default().to_string(),
        cause: if matches!(step, Step::Ended { .. }) {
            status.to_string()
        } else {
            String::new()
        },
        recording_url: String::new(),
    }))
}

/// A Twilio recording status callback for the voicemail `<Record>` of
/// `/incoming`; `caller` is the `from` the recording callback URL carries (Twilio's
/// recording callbacks do not say who called).
pub fn twilio_recording(
    pairs: &[(String, String)],
    caller: &str,
    received_at: DateTime<Utc>,
) -> Result<Parsed, ParseError> {
    let call_id = required(pairs, "CallSid")?.to_string();
    let status = required(pairs, "RecordingStatus")?;
    if status != "completed" {
        return Ok(Parsed::Ignored(format!("RecordingStatus {status}")));
    }
    let recording_url = required(pairs, "RecordingUrl")?.to_string();
    let duration_seconds = match field(pairs, "RecordingDuration").filter(|v| !v.is_empty()) {
        Some(v) => Some(
            v.parse::<u32>()
                .map_err(|_| ParseError(format!("`RecordingDuration` is not a number: `{v}`")))?,
        ),
        None => None,
    };
    Ok(Parsed::Report(CallReport {
        call_id,
        step: Step::Voicemail,
        direction: pb::Direction::Inbound,
        from: caller.to_string(),
        to: String::new(),
        at: received_at,
        sequence: 0,
        duration_seconds,
        answered_by: String::new(),
        cause: String::new(),
        recording_url,
    }))
}

/// A CTI request in Zammad's generic format: a form (`user[]` repeated) or a JSON
/// object (`user` a string or an array).
pub fn cti(
    body: &[u8],
    content_type: &str,
    received_at: DateTime<Utc>,
) -> Result<Parsed, ParseError> {
    let pairs = if content_type.starts_with("application/json") {
        json_pairs(body)?
    } else {
        form_pairs(body)
    };
    let call_id = required(&pairs, "callId")?.to_string();
    let event = required(&pairs, "event")?;
    let cause = field(&pairs, "cause").unwrap_or_default();
    let step = match event {
        "newCall" => Step::Ringing,
        "answer" => Step::Answered,
        "hangup" => Step::Ended {
            answered: cti_cause_answered(cause),
        },
        other => return Err(ParseError(format!("unknown CTI event `{other}`"))),
    };
    let direction = match required(&pairs, "direction")? {
        "in" => pb::Direction::Inbound,
        "out" => pb::Direction::Outbound,
        other => {
            return Err(ParseError(format!(
                "direction must be `in` or `out`, not `{other}`"
            )));
        }
    };
    let users: Vec<&str> = pairs
        .iter()
        .filter(|(n, v)| (n == "user[]" || n == "user") && !v.is_empty())
        .map(|(_, v)| v.as_str())
        .collect();
    let answered_by = field(&pairs, "answeringNumber")
        .filter(|v| !v.is_empty())
        .map(str::to_string)
        .unwrap_or_else(|| {
            if step == Step::Answered {
                users.join(", ")
            } else {
                String::new()
            }
        });
    Ok(Parsed::Report(CallReport {
        call_id,
        step,
        direction,
        from: field(&pairs, "from").unwrap_or_default().to_string(),
        to: field(&pairs, "to").unwrap_or_default().to_string(),
        at: received_at,
        sequence: 0,
        duration_seconds: None,
        answered_by,
        cause: cause.to_string(),
        recording_url: String::new(),
    }))
}

/// What a CTI hang-up cause says about whether the call was answered. Zammad's own
/// names are known; anything else (FreeSWITCH and Q.850 names such as
/// `NORMAL_CLEARING`) is kept and left to the call's history.
fn cti_cause_answered(cause: &str) -> Option<bool> {
    match cause {
        "busy" | "cancel" | "noAnswer" | "congestion" | "notFound" | "forwarded" => Some(false),
        _ => None,
    }
}

/// A JSON CTI body as name/value pairs: strings and numbers as they are, each element
/// of an array under `name[]`.
fn json_pairs(body: &[u8]) -> Result<Vec<(String, String)>, ParseError> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| ParseError(format!("not JSON: {e}")))?;
    let object = value
        .as_object()
        .ok_or_else(|| ParseError("not a JSON object".into()))?;
    let scalar = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    };
    let mut pairs = Vec::new();
    for (name, value) in object {
        match value {
            serde_json::Value::Array(items) => {
                pairs.extend(
                    items
                        .iter()
                        .filter_map(scalar)
                        .map(|v| (format!("{name}[]"), v)),
                );
            }
            other => pairs.extend(scalar(other).map(|v| (name.clone(), v))),
        }
    }
    Ok(pairs)
}

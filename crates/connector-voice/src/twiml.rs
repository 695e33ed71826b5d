//! The TwiML Omnigate answers a Twilio number's voice URL with.

use crate::config::ChannelConfig;

/// The answer to `/incoming`: hang up after a forwarded call that was answered;
/// otherwise ring `forward_to` (coming back here with the outcome) when the channel
/// has one and it was not tried yet; otherwise the greeting and a recording whose
/// callback carries the caller, since Twilio's recording callbacks do not.
pub fn incoming(
    config: &ChannelConfig,
    base: &str,
    caller: &str,
    dial_outcome: Option<&str>,
) -> String {
    let verbs = match (dial_outcome, &config.forward_to) {
        (Some("completed"), _) => "<Hangup/>".to_string(),
        (None, Some(forward_to)) => format!(
            r#"<Dial timeout="{}" action="{}">{}</Dial>"#,
            config.ring_seconds,
            xml_escape(&format!("{base}/incoming")),
            xml_escape(forward_to),
        ),
        _ => {
            let query = form_urlencoded::Serializer::new(String::new())
                .append_pair("from", caller)
                .finish();
            let callback = format!("{base}/recording?{query}");
            format!(
                r#"<Say>{}</Say><Record maxLength="{}" playBeep="true" recordingStatusCallback="{}" recordingStatusCallbackEvent="completed"/><Hangup/>"#,
                xml_escape(&config.voicemail_greeting),
                config.voicemail_max_seconds,
                xml_escape(&callback),
            )
        }
    };
    format!(r#"<?xml version="1.0" encoding="UTF-8"?><Response>{verbs}</Response>"#)
}

fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::VoiceConfig;
    use omnigate_core::connector::ConfigSource;

    fn channel(extra: &str) -> ChannelConfig {
        let toml = format!(
            "[voice.channels.line]\nprovider = \"twilio\"\nnumber = \"+15550100200\"\naccount_sid = \"AC00000000000000000000000000000000\"\nauth_token = \"t\"\npublic_url = \"https://o.example.test\"\n{extra}"
        );
        let config: Result<VoiceConfig, _> =
            ConfigSource::from_toml(include_str!("../../../config/default.toml"), &toml)
                .table("voice");
        match config {
            Ok(mut config) => config
                .channels
                .remove("line")
                .unwrap_or_else(|| unreachable!()),
            Err(err) => panic!("{err}"),
        }
    }

    #[test]
    fn a_forwarding_line_dials_first_and_records_only_when_nobody_answered() {
        let line = channel("forward_to = \"+15550100300\"\nring_seconds = 15\n");
        let base = "https://o.example.test/webhooks/twilio/voice/line";
        let first = incoming(&line, base, "+16505551234", None);
        assert!(first.contains(r#"<Dial timeout="15" action="https://o.example.test/webhooks/twilio/voice/line/incoming">+15550100300</Dial>"#), "{first}");
        let answered = incoming(&line, base, "+16505551234", Some("completed"));
        assert!(
            answered.contains("<Response><Hangup/></Response>"),
            "{answered}"
        );
        let no_answer = incoming(&line, base, "+16505551234", Some("no-answer"));
        assert!(no_answer.contains("<Record "), "{no_answer}");
        assert!(
            no_answer.contains("recording?from=%2B16505551234"),
            "{no_answer}"
        );
    }

    #[test]
    fn greetings_are_escaped() {
        let line = channel("voicemail_greeting = \"Tom & Jerry <support>\"\n");
        let twiml = incoming(&line, "https://o.example.test/x", "anonymous", None);
        assert!(
            twiml.contains("<Say>Tom &amp; Jerry &lt;support&gt;</Say>"),
            "{twiml}"
        );
    }
}

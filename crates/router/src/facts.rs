//! What an event offers the rules: who sent it, through which channel, saying what.

use omnigate_model::pb::{self, content_part::Part, event::Payload};

/// The routable facts of one event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// Tenant.
    pub tenant: String,
    /// `email`, `whatsapp`, `livechat` or `voice`.
    pub channel_kind: String,
    /// The channel's config name.
    pub channel_id: String,
    /// Sender email address, lowercase.
    pub email: String,
    /// Sender phone in E.164.
    pub phone: String,
    /// Provider id of the sender (wa_id, visitor id).
    pub provider_id: String,
    /// Whether the channel verified the sender (live-chat HMAC identity).
    pub verified: bool,
    /// Email subject.
    pub subject: String,
    /// Plain text of the message.
    pub text: String,
    /// The detected language, computed on first use: only rules that ask pay for it.
    language: std::sync::OnceLock<Option<String>>,
}

impl Facts {
    /// Extracts the facts of `event`.
    pub fn of(event: &pb::Event) -> Self {
        let mut facts = Facts {
            tenant: event.tenant.clone(),
            ..Default::default()
        };
        let (channel, contact) = match &event.payload {
            Some(Payload::Message(m)) => {
                for part in &m.parts {
                    if let Some(Part::Text(text)) = &part.part {
                        if !facts.text.is_empty() {
                            facts.text.push('\n');
                        }
                        facts.text.push_str(text);
                    }
                }
                if let Some(pb::message::Metadata::Email(email)) = &m.metadata {
                    facts.subject = email.subject.clone();
                }
                (m.channel.as_ref(), m.contact.as_ref())
            }
            Some(Payload::Call(c)) => {
                if c.contact.is_none() {
                    facts.phone = c.from.clone();
                }
                (c.channel.as_ref(), c.contact.as_ref())
            }
            Some(Payload::Status(s)) => (s.channel.as_ref(), None),
            Some(Payload::Sent(s)) => (s.channel.as_ref(), None),
            Some(Payload::MediaUpdated(u)) => (u.channel.as_ref(), None),
            _ => (None, None),
        };
        if let Some(channel) = channel {
            facts.channel_kind = pb::ChannelKind::try_from(channel.kind)
                .map(|k| k.short_name())
                .unwrap_or("unspecified")
                .to_string();
            facts.channel_id = channel.channel_id.clone();
        }
        if let Some(contact) = contact {
            facts.email = contact.email.trim().to_lowercase();
            facts.phone = contact.phone_e164.clone();
            facts.provider_id = contact.provider_id.clone();
            facts.verified = contact.verified;
        }
        facts
    }

    /// ISO 639-1 code of the language of subject and text, when the text is long enough
    /// to tell; detected on first call.
    pub fn language(&self) -> Option<&str> {
        self.language
            .get_or_init(|| detect_language(&format!("{} {}", self.subject, self.text)))
            .as_deref()
    }

    /// The sender's identifiers as rules compare them: email and phone.
    pub fn senders(&self) -> impl Iterator<Item = String> + '_ {
        [self.email.clone(), self.phone.clone()]
            .into_iter()
            .filter(|s| !s.is_empty())
    }

    /// The domain of the sender's email address.
    pub fn email_domain(&self) -> Option<String> {
        self.email.rsplit_once('@').map(|(_, d)| d.to_string())
    }

    /// The phone number's digits without `+`.
    pub fn phone_digits(&self) -> Option<&str> {
        self.phone.strip_prefix('+')
    }

    /// Subject and text, for keywords and regexes.
    pub fn searchable_text(&self) -> String {
        format!("{}\n{}", self.subject, self.text)
    }

    /// Identifiers that belong to one person, for contact linking: `email:…`, `phone:…`,
    /// and for a verified live-chat identity `livechat:…`.
    pub fn identifiers(&self) -> Vec<String> {
        let mut ids = Vec::new();
        if !self.email.is_empty() {
            ids.push(format!("email:{}", self.email));
        }
        if !self.phone.is_empty() {
            ids.push(format!("phone:{}", self.phone));
        }
        if self.channel_kind == "livechat" && self.verified && !self.provider_id.is_empty() {
            ids.push(format!("livechat:{}", self.provider_id));
        }
        ids
    }
}

/// Detects the language of `text` when the detector is confident; `None` otherwise.
fn detect_language(text: &str) -> Option<String> {
    let text = text.trim();
    if text.chars().count() < 12 {
        return None;
    }
    let info = DETECTOR.detect(text)?;
    if !info.is_reliable() {
        return None;
    }
    LANGUAGES
        .iter()
        .find(|(lang, _)| *lang == info.lang())
        .map(|(_, code)| (*code).to_string())
}

/// The ISO 639-1 codes of the languages the router detects, which rules can name.
pub fn language_codes() -> Vec<&'static str> {
    LANGUAGES.iter().map(|(_, code)| *code).collect()
}

/// The languages the router detects, with their ISO 639-1 codes.
const LANGUAGES: [(whatlang::Lang, &str); 20] = {
    use whatlang::Lang::*;
    [
        (Eng, "en"),
        (Deu, "de"),
        (Fra, "fr"),
        (Spa, "es"),
        (Por, "pt"),
        (Ita, "it"),
        (Nld, "nl"),
        (Pol, "pl"),
        (Rus, "ru"),
        (Tur, "tr"),
        (Ara, "ar"),
        (Hin, "hi"),
        (Jpn, "ja"),
        (Cmn, "zh"),
        (Kor, "ko"),
        (Swe, "sv"),
        (Dan, "da"),
        (Fin, "fi"),
        (Ukr, "uk"),
        (Ces, "cs"),
    ]
};

/// A detector that weighs only [`LANGUAGES`]: comparing a text with every language
/// whatlang knows costs far more, for answers outside the list that rules could not
/// name anyway.
static DETECTOR: std::sync::LazyLock<whatlang::Detector> = std::sync::LazyLock::new(|| {
    whatlang::Detector::with_allowlist(LANGUAGES.iter().map(|(lang, _)| *lang).collect())
});

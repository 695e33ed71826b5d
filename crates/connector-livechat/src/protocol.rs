//! The `omnigate.livechat.v1` frames (documented in `docs/livechat.md`), visitor
//! tokens and identity hashes. Pure: no I/O, so it is unit-tested and fuzzed.

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// The websocket subprotocol.
pub const SUBPROTOCOL: &str = "omnigate.livechat.v1";

/// A frame from the visitor's client.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    /// The first frame: who the visitor is and what they have seen.
    Hello {
        /// The token of an earlier visit.
        #[serde(default)]
        visitor_token: Option<String>,
        /// A signed-in visitor's identity, claimed by the page.
        #[serde(default)]
        identity: Option<Identity>,
        /// The last agent reply sequence the client has shown.
        #[serde(default)]
        last_seq: u64,
        /// Where the visitor is.
        #[serde(default)]
        page: Option<Page>,
    },
    /// A visitor message.
    Message {
        /// The client's id of the message: the same id gets the same event id.
        client_id: String,
        /// The text.
        #[serde(default)]
        text: String,
        /// Upload ids.
        #[serde(default)]
        attachments: Vec<String>,
    },
    /// The visitor has seen replies up to `seq`.
    Read {
        /// The highest sequence seen.
        seq: u64,
    },
    /// The visitor is typing, or stopped.
    Typing {
        /// On or off.
        on: bool,
    },
    /// A heartbeat asking for a `pong`.
    Ping,
    /// The answer to the server's `ping`.
    Pong,
    /// Any other type: ignored, so newer clients work with this server.
    #[serde(other)]
    Unknown,
}

/// A signed-in visitor, as the shop's page says.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Identity {
    /// The shop's id of the customer.
    #[serde(default)]
    pub id: Option<String>,
    /// Their email address.
    #[serde(default)]
    pub email: Option<String>,
    /// Their name.
    #[serde(default)]
    pub name: Option<String>,
    /// Lowercase hex HMAC-SHA256 of `id` (of `email` without an id) under the
    /// channel's identity secret.
    #[serde(default)]
    pub hash: Option<String>,
}

/// The page the visitor is on.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Page {
    /// The page URL.
    #[serde(default)]
    pub url: Option<String>,
    /// Its referrer.
    #[serde(default)]
    pub referrer: Option<String>,
    /// The browser's language.
    #[serde(default)]
    pub language: Option<String>,
}

/// A frame to the visitor's client.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// The answer to `hello`.
    Welcome {
        /// The token to send in the next `hello`.
        visitor_token: String,
        /// The conversation's key on Kafka.
        conversation_key: String,
        /// Whether the identity was verified by its hash.
        verified: bool,
        /// Every reply after the client's `last_seq`.
        replies: Vec<ServerFrame>,
        /// The visitor's own acknowledged messages, oldest first.
        history: Vec<HistoryItem>,
    },
    /// A message is on Kafka.
    Ack {
        /// The client's id.
        client_id: String,
        /// Its event id.
        event_id: String,
    },
    /// A message could not be stored now (or ever, without `retry_after_ms`).
    Nack {
        /// The client's id.
        client_id: String,
        /// Why.
        code: String,
        /// When to send it again.
        #[serde(skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
    /// An agent's reply.
    Reply {
        /// Sequence within the conversation.
        seq: u64,
        /// The reply's event id.
        event_id: String,
        /// The text.
        text: String,
        /// Attachments (none yet from agents).
        attachments: Vec<serde_json::Value>,
        /// Who answered.
        agent: Agent,
    },
    /// The agent is typing, or stopped.
    Typing {
        /// On or off.
        on: bool,
        /// Who is typing.
        agent: Agent,
    },
    /// A heartbeat; answer `pong`.
    Ping,
    /// The answer to a `ping`.
    Pong,
    /// What went wrong, before a close.
    Error {
        /// A stable code.
        code: String,
        /// For people.
        message: String,
    },
}

/// An agent as the visitor sees them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Agent {
    /// Display name.
    pub name: String,
}

/// One of the visitor's own acknowledged messages.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HistoryItem {
    /// The client's id.
    pub client_id: String,
    /// The text.
    pub text: String,
    /// Its event id.
    pub event_id: String,
    /// The highest reply sequence when it was stored.
    pub after_seq: u64,
}

/// Why a frame was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// Not a JSON object with a known shape.
    #[error("unreadable frame: {0}")]
    Unreadable(String),
}

/// Reads one text frame.
pub fn parse_client(frame: &str) -> Result<ClientFrame, FrameError> {
    serde_json::from_str(frame).map_err(|e| FrameError::Unreadable(e.to_string()))
}

type HmacSha256 = Hmac<Sha256>;

fn hmac_hex(key: &[u8], message: &[u8]) -> String {
    // HMAC takes keys of any length.
    let mut mac = HmacSha256::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    mac.update(message);
    hex::encode(mac.finalize().into_bytes())
}

fn equal(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq as _;
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// What an identity claim is worth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityCheck {
    /// No hash: the visitor's own claim, never used to link contacts.
    Unverified,
    /// The hash matches.
    Verified,
    /// A hash that does not match: refused.
    Forged,
}

/// Checks `identity.hash` against the HMAC of its id (its email without an id).
pub fn check_identity(secret: &[u8], identity: &Identity) -> IdentityCheck {
    let Some(hash) = identity.hash.as_deref().filter(|h| !h.is_empty()) else {
        return IdentityCheck::Unverified;
    };
    let Some(subject) = identity
        .id
        .as_deref()
        .filter(|id| !id.is_empty())
        .or(identity.email.as_deref())
    else {
        return IdentityCheck::Forged;
    };
    if equal(
        &hmac_hex(secret, subject.as_bytes()),
        &hash.to_ascii_lowercase(),
    ) {
        IdentityCheck::Verified
    } else {
        IdentityCheck::Forged
    }
}

/// A visitor token: `vt_<visitor id>.<signature>`, signed with the channel's identity
/// secret so nobody can resume a conversation by guessing an id.
pub fn issue_token(secret: &[u8], channel: &str, visitor: &str) -> String {
    let signature = hmac_hex(
        secret,
        format!("visitor-token:{channel}:{visitor}").as_bytes(),
    );
    format!("vt_{visitor}.{}", &signature[..32])
}

/// The visitor id of a token this channel issued.
pub fn check_token(secret: &[u8], channel: &str, token: &str) -> Option<String> {
    let (visitor, _) = token.strip_prefix("vt_")?.split_once('.')?;
    let valid = !visitor.is_empty()
        && visitor.len() <= 64
        && visitor
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    (valid && equal(&issue_token(secret, channel, visitor), token)).then(|| visitor.to_string())
}

/// The visitor id of a verified identity: the same customer gets the same visitor (and
/// conversation) on every device.
pub fn verified_visitor(identity: &Identity) -> String {
    let subject = identity
        .id
        .as_deref()
        .filter(|id| !id.is_empty())
        .map(|id| format!("id:{id}"))
        .or_else(|| {
            identity
                .email
                .as_deref()
                .map(|e| format!("email:{}", e.to_lowercase()))
        })
        .unwrap_or_default();
    const NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x6f6d_6e69_6761_7465_8000_0000_0000_1c17);
    uuid::Uuid::new_v5(&NAMESPACE, subject.as_bytes())
        .simple()
        .to_string()
}

/// `livechat:{channel}:{visitor}`.
pub fn conversation_key(channel: &str, visitor: &str) -> String {
    format!("livechat:{channel}:{visitor}")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_documented_identity_hashes_verify() {
        let secret = b"demo-identity-secret";
        let by_id = Identity {
            id: Some("cust-42".into()),
            hash: Some("9e09798732969aeb09d1980478b79a70c3b3a830c42299b36480d805232a2545".into()),
            ..Default::default()
        };
        assert_eq!(check_identity(secret, &by_id), IdentityCheck::Verified);
        let by_email = Identity {
            email: Some("jo@example.com".into()),
            hash: Some("8cd07ff5262979152fe56e64da673ab0e64c021a087fa7884fd7bc8c759f87f2".into()),
            ..Default::default()
        };
        assert_eq!(check_identity(secret, &by_email), IdentityCheck::Verified);
        let forged = Identity {
            hash: Some("00".into()),
            ..by_id.clone()
        };
        assert_eq!(check_identity(secret, &forged), IdentityCheck::Forged);
        let claimed = Identity {
            hash: None,
            ..by_email
        };
        assert_eq!(check_identity(secret, &claimed), IdentityCheck::Unverified);
    }

    #[test]
    fn tokens_are_bound_to_their_channel_and_secret() {
        let token = issue_token(b"s", "shop", "abc123");
        assert_eq!(check_token(b"s", "shop", &token).as_deref(), Some("abc123"));
        assert_eq!(check_token(b"s", "other", &token), None);
        assert_eq!(check_token(b"t", "shop", &token), None);
        assert_eq!(check_token(b"s", "shop", "vt_abc123.0000"), None);
        assert_eq!(check_token(b"s", "shop", "garbage"), None);
    }

    #[test]
    fn frames_parse_and_unknown_types_are_ignored() {
        let hello = parse_client(r#"{"type":"hello","last_seq":3,"extra":1}"#).unwrap();
        assert!(matches!(hello, ClientFrame::Hello { last_seq: 3, .. }));
        assert_eq!(
            parse_client(r#"{"type":"future_thing"}"#).unwrap(),
            ClientFrame::Unknown
        );
        assert!(parse_client("not json").is_err());
        let ack = serde_json::to_value(ServerFrame::Ack {
            client_id: "c".into(),
            event_id: "e".into(),
        })
        .unwrap();
        assert_eq!(
            ack,
            serde_json::json!({"type": "ack", "client_id": "c", "event_id": "e"})
        );
    }
}

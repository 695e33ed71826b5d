//! Any bytes through the email normalizer: never a panic, and every event survives the
//! JSON round trip consumers depend on.
#![no_main]

use libfuzzer_sys::fuzz_target;
use omnigate_connector_email::normalize::{Mailbox, normalize};

fuzz_target!(|raw: &[u8]| {
    let at = chrono::DateTime::from_timestamp(1_796_000_000, 0).unwrap_or_default();
    let mailbox = Mailbox {
        channel_id: "support",
        tenant: "acme",
        address: "support@omnigate.test",
        folder: "INBOX",
    };
    if let Ok(mail) = normalize(raw, mailbox, at) {
        let json = omnigate_model::to_json(&mail.event);
        let back = omnigate_model::from_json(&json).expect("an event's JSON parses back");
        assert_eq!(back, mail.event, "the JSON round trip changes nothing");
        assert!(mail.event.conversation_key.starts_with("email:support:"));
    }
});

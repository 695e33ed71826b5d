//! Any bytes through the Twilio and CTI parsers and the call state machine: never a
//! panic, and every call event survives the JSON round trip consumers depend on.
#![no_main]

use libfuzzer_sys::fuzz_target;
use omnigate_connector_voice::{
    calls::{CallChannel, CallState, call_event, decide},
    normalize::{self, Parsed},
};

fuzz_target!(|body: &[u8]| {
    let at = chrono::DateTime::from_timestamp(1_796_000_000, 0).unwrap_or_default();
    let channel = CallChannel {
        channel_id: "pbx",
        tenant: "acme",
        number: "+15550100200",
        default_country: "US".parse().ok(),
    };
    let parsed = [
        normalize::twilio_status(&normalize::form_pairs(body), at),
        normalize::cti(body, "application/x-www-form-urlencoded", at),
        normalize::cti(body, "application/json", at),
    ];
    for parsed in parsed {
        if let Ok(Parsed::Report(report)) = parsed
            && let Some(decision) = decide(&CallState::default(), &report)
        {
            let event = call_event(&channel, &decision);
            let json = omnigate_model::to_json(&event);
            let back = omnigate_model::from_json(&json).expect("an event's JSON parses back");
            assert_eq!(back, event, "the JSON round trip changes nothing");
        }
    }
});

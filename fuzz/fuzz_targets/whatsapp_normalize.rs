//! Any bytes through the WhatsApp normalizer: never a panic, and every event it makes
//! survives the JSON round trip consumers depend on.
#![no_main]

use libfuzzer_sys::fuzz_target;
use omnigate_connector_whatsapp::{NormalizeCtx, normalize};

fuzz_target!(|body: &[u8]| {
    let cx = NormalizeCtx {
        channel_id: "demo",
        tenant: "acme",
        received_at: chrono::DateTime::from_timestamp(1_749_416_383, 0).unwrap_or_default(),
    };
    if let Ok(normalized) = normalize(body, &cx) {
        for event in &normalized.events {
            let json = omnigate_model::to_json(event);
            let back = omnigate_model::from_json(&json).expect("an event's JSON parses back");
            assert_eq!(&back, event, "the JSON round trip changes nothing");
        }
    }
});

//! Any `X-Hub-Signature-256` header and body: never a panic, and only the right
//! signature verifies.
#![no_main]

use libfuzzer_sys::fuzz_target;
use omnigate_connector_whatsapp::verify::{sign, verify_signature};

fuzz_target!(|input: (&str, &[u8])| {
    let (header, body) = input;
    let accepted = verify_signature(b"demo-app-secret", Some(header), body).is_ok();
    if accepted {
        assert_eq!(header.to_ascii_lowercase(), sign(b"demo-app-secret", body));
    }
    assert!(verify_signature(b"demo-app-secret", Some(&sign(b"demo-app-secret", body)), body).is_ok());
});

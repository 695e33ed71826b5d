//! Any `whsec_` secret, `webhook-signature` header and body: parsing and verifying
//! never panic, and a header we sign always verifies.
#![no_main]

use libfuzzer_sys::fuzz_target;
use omnigate_webhooks::signing::{SigningKey, signature_header};

fuzz_target!(|input: (&str, &str, &[u8], i64)| {
    let (secret, header, body, timestamp) = input;
    let _ = SigningKey::parse(secret);
    let key = SigningKey::parse("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").expect("test secret");
    let _ = key.verify("msg_1", timestamp, body, header, timestamp);
    let ours = signature_header(std::slice::from_ref(&key), "msg_1", timestamp, body);
    assert!(key.verify("msg_1", timestamp, body, &ours, timestamp));
    let _ = omnigate_webhooks::retry::parse_retry_after(header, chrono::Utc::now());
});

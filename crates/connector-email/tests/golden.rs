//! Golden fixtures: every `fixtures/<case>.eml` normalizes to exactly
//! `fixtures/<case>.expected.json` (the event, and the blobs it asks to be stored).
//! Run with `BLESS=1` to write the expected files after a deliberate change, then
//! review the diff.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use omnigate_connector_email::normalize::{Mailbox, normalize};
use serde_json::{Value, json};
use std::path::Path;

fn mailbox() -> Mailbox<'static> {
    Mailbox {
        channel_id: "support",
        tenant: "acme",
        address: "support@omnigate.test",
        folder: "INBOX",
    }
}

/// What a fixture normalizes to, as JSON.
fn actual(raw: &[u8]) -> Value {
    let received_at = chrono::DateTime::from_timestamp(1_796_000_000, 0).unwrap();
    match normalize(raw, mailbox(), received_at) {
        Ok(mail) => {
            let event: Value =
                serde_json::from_slice(&omnigate_model::to_json(&mail.event)).unwrap();
            let blobs: Vec<Value> = mail
                .blobs
                .iter()
                .map(|b| json!({"key": b.blob.key, "size": b.blob.size, "mimeType": b.blob.mime_type}))
                .collect();
            json!({"event": event, "blobs": blobs, "fromUs": mail.from_us, "root": mail.root})
        }
        Err(err) => json!({"error": err.to_string()}),
    }
}

#[test]
fn every_fixture_matches_its_golden_file() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let bless = std::env::var_os("BLESS").is_some();
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "eml"))
        .collect();
    paths.sort();
    assert!(paths.len() >= 20, "fixtures missing");
    let mut failures = Vec::new();
    for path in &paths {
        let raw = std::fs::read(path).unwrap();
        let got = actual(&raw);
        let expected_path = path.with_extension("expected.json");
        if bless {
            std::fs::write(
                &expected_path,
                serde_json::to_string_pretty(&got).unwrap() + "\n",
            )
            .unwrap();
            continue;
        }
        let expected: Value =
            serde_json::from_slice(&std::fs::read(&expected_path).unwrap_or_else(|_| {
                panic!("{} has no expected file; run with BLESS=1", path.display())
            }))
            .unwrap();
        if got != expected {
            failures.push(path.file_name().unwrap().to_string_lossy().into_owned());
        }
    }
    assert!(
        failures.is_empty(),
        "differ from their golden files: {failures:?}"
    );
}

/// The same mail with LF and with CRLF line ends reads the same.
#[test]
fn line_endings_do_not_change_the_content() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let lf = std::fs::read(dir.join("plain_lf.eml")).unwrap();
    assert!(!lf.contains(&b'\r'));
    let crlf: Vec<u8> = String::from_utf8(lf.clone())
        .unwrap()
        .replace('\n', "\r\n")
        .into_bytes();
    let a = actual(&lf);
    let b = actual(&crlf);
    assert_eq!(
        a["event"]["message"]["parts"],
        b["event"]["message"]["parts"]
    );
    assert_eq!(a["event"]["id"], b["event"]["id"]);
}

/// Truncated and mangled copies of every fixture never panic.
#[test]
fn truncated_and_mangled_mail_never_panics() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "eml") {
            continue;
        }
        let raw = std::fs::read(&path).unwrap();
        for cut in (0..raw.len()).step_by(97) {
            let _ = actual(&raw[..cut]);
            let mut mangled = raw.clone();
            mangled[cut] ^= 0x80;
            let _ = actual(&mangled);
        }
    }
}

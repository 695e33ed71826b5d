//! Golden fixtures: every `fixtures/<case>.json` (one call's requests, in the order
//! they arrive) gives exactly the call events of `fixtures/<case>.expected.json`. Run
//! with `BLESS=1` to write the expected files after a deliberate change, then review
//! the diff.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use omnigate_connector_voice::{
    calls::{CallChannel, CallState, call_event, decide},
    normalize::{self, Parsed},
};
use serde::Deserialize;
use std::path::Path;

/// One fixture: a source and the bodies it posts about one call.
#[derive(Deserialize)]
struct Case {
    /// `twilio` or `cti`.
    source: String,
    /// The requests' content type; form-encoded when absent.
    #[serde(default)]
    content_type: Option<String>,
    /// Each request body, as sent.
    requests: Vec<String>,
}

#[test]
fn every_fixture_matches_its_golden_file() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let bless = std::env::var_os("BLESS").is_some();
    let received_at = chrono::DateTime::from_timestamp(1_796_000_000, 0).unwrap();
    let mut cases = 0;
    let mut failures = Vec::new();
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    for path in paths {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !name.ends_with(".json")
            || name.ends_with(".expected.json")
            || name.ends_with(".actual.json")
        {
            continue;
        }
        cases += 1;
        let case: Case = serde_json::from_slice(&std::fs::read(&path).unwrap())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let (channel_id, number, country) = match case.source.as_str() {
            "twilio" => ("demo-twilio", "+15550100200", "US"),
            _ => ("demo-cti", "+493055571600", "DE"),
        };
        let channel = CallChannel {
            channel_id,
            tenant: "acme",
            number,
            default_country: country.parse().ok(),
        };
        let content_type = case
            .content_type
            .as_deref()
            .unwrap_or("application/x-www-form-urlencoded");
        let mut state = CallState::default();
        let mut outcomes = Vec::new();
        for body in &case.requests {
            let parsed = match case.source.as_str() {
                "twilio" => {
                    normalize::twilio_status(&normalize::form_pairs(body.as_bytes()), received_at)
                }
                _ => normalize::cti(body.as_bytes(), content_type, received_at),
            };
            let outcome = match parsed {
                Err(err) => serde_json::json!({"deadLetter": err.to_string()}),
                Ok(Parsed::Ignored(what)) => serde_json::json!({"ignored": what}),
                Ok(Parsed::Report(report)) => match decide(&state, &report) {
                    None => serde_json::json!({"repeat": format!("{:?}", report.step)}),
                    Some(decision) => {
                        state = decision.next.clone();
                        serde_json::json!({"event": call_event(&channel, &decision)})
                    }
                },
            };
            outcomes.push(outcome);
        }
        let actual = serde_json::to_string_pretty(&outcomes).unwrap() + "\n";
        let expected_path = path.with_extension("expected.json");
        if bless {
            std::fs::write(&expected_path, &actual).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if expected != actual {
            std::fs::write(path.with_extension("actual.json"), &actual).unwrap();
            failures.push(name);
        }
    }
    assert!(cases >= 8, "only {cases} fixtures found");
    assert!(
        failures.is_empty(),
        "golden mismatch (see *.actual.json): {failures:?}"
    );
}

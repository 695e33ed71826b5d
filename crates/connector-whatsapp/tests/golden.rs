//! Golden fixtures: every `fixtures/<case>.json` webhook body normalizes to exactly
//! `fixtures/<case>.expected.json`. Run with `BLESS=1` to write the expected files
//! after a deliberate change, then review the diff.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use omnigate_connector_whatsapp::{NormalizeCtx, normalize};
use std::path::Path;

#[test]
fn every_fixture_matches_its_golden_file() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let bless = std::env::var_os("BLESS").is_some();
    let cx = NormalizeCtx {
        channel_id: "demo",
        tenant: "acme",
        received_at: chrono::DateTime::from_timestamp(1_749_416_400, 0).unwrap(),
    };
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
        let body = std::fs::read(&path).unwrap();
        let normalized = normalize(&body, &cx).unwrap_or_else(|e| panic!("{name}: {e}"));
        let actual = serde_json::json!({
            "events": normalized.events,
            "rejected": normalized.rejected,
            "ignoredChanges": normalized.ignored_changes,
        });
        let actual = serde_json::to_string_pretty(&actual).unwrap() + "\n";
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
    assert!(cases >= 25, "only {cases} fixtures found");
    assert!(
        failures.is_empty(),
        "golden mismatch (see *.actual.json): {failures:?}"
    );
}

#[test]
fn redelivery_gives_the_same_ids_and_bodies_that_are_not_webhooks_are_errors() {
    let body = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/batch_multi_entry.json"),
    )
    .unwrap();
    let first = NormalizeCtx {
        channel_id: "demo",
        tenant: "acme",
        received_at: chrono::DateTime::from_timestamp(1_749_416_400, 0).unwrap(),
    };
    let later = NormalizeCtx {
        received_at: chrono::DateTime::from_timestamp(1_749_999_999, 0).unwrap(),
        ..first.clone()
    };
    let ids = |cx: &NormalizeCtx<'_>| {
        normalize(&body, cx)
            .unwrap()
            .events
            .into_iter()
            .map(|e| e.id)
            .collect::<Vec<_>>()
    };
    let (a, b) = (ids(&first), ids(&later));
    assert_eq!(a.len(), 4);
    assert_eq!(a, b, "a redelivered POST yields the same event ids");
    let unique: std::collections::HashSet<_> = a.iter().collect();
    assert_eq!(unique.len(), 4);

    for bad in [
        &b"not json"[..],
        b"{}",
        b"{\"object\":\"page\",\"entry\":[]}",
        b"[1,2]",
        b"\xff\xfe",
    ] {
        assert!(
            normalize(bad, &first).is_err(),
            "{:?} must not normalize",
            String::from_utf8_lossy(bad)
        );
    }
}

/// Inputs the fuzzer (`make fuzz`) found crashing, kept so the bug stays fixed: each
/// normalizes without a panic, and every event it makes survives the JSON round trip.
#[test]
fn fuzz_regressions_stay_fixed() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_regressions");
    let cx = NormalizeCtx {
        channel_id: "demo",
        tenant: "acme",
        received_at: chrono::DateTime::from_timestamp(1_749_416_400, 0).unwrap(),
    };
    let mut cases = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let body = std::fs::read(&path).unwrap();
        cases += 1;
        if let Ok(normalized) = normalize(&body, &cx) {
            for event in &normalized.events {
                let json = omnigate_model::to_json(event);
                let back = omnigate_model::from_json(&json).unwrap_or_else(|e| {
                    panic!("{}: event JSON does not parse back: {e}", path.display())
                });
                assert_eq!(&back, event, "{}", path.display());
            }
        }
    }
    assert!(cases > 0, "no regression inputs in {}", dir.display());
}

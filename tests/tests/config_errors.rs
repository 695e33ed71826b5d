//! `omnigate check-config` names the key and the problem, and exits non-zero.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use omnigate_e2e::omnigate_bin;
use std::process::Command;

fn check(config: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.toml");
    std::fs::write(&path, config).unwrap();
    let output = Command::new(omnigate_bin())
        .args(["check-config", "--config"])
        .arg(&path)
        .env_remove("OMNIGATE_WHATSAPP__CHANNELS__DEMO__APP_SECRET")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

const CHANNEL: &str = r#"
[whatsapp.channels.demo]
phone_number_id = "106540352242922"
verify_token = "t"
access_token = "a"
"#;

#[test]
fn unknown_key_is_named() {
    let (ok, out) = check("[kafka]\nbrokerz = \"127.0.0.1:9092\"\n");
    assert!(!ok, "{out}");
    assert!(
        out.contains("kafka.brokerz") && out.contains("unknown field"),
        "{out}"
    );
}

#[test]
fn unknown_tables_roles_and_connector_keys_are_named() {
    let (ok, out) = check("[telegram.channels.x]\ntoken = \"t\"\n");
    assert!(!ok, "{out}");
    assert!(
        out.contains("`telegram`") && out.contains("connector's table"),
        "{out}"
    );
    let (ok, out) = check("roles = [\"api\", \"fax\"]\n");
    assert!(!ok, "{out}");
    assert!(
        out.contains("unknown role `fax`") && out.contains("whatsapp"),
        "{out}"
    );
    let (ok, out) = check("[whatsapp]\napi_versoin = \"v1\"\n");
    assert!(!ok, "{out}");
    assert!(
        out.contains("whatsapp.api_versoin") && out.contains("unknown field"),
        "{out}"
    );
}

#[test]
fn missing_secret_is_named() {
    let (ok, out) = check(CHANNEL);
    assert!(!ok, "{out}");
    assert!(out.contains("whatsapp.channels.demo.app_secret"), "{out}");
    let (ok, out) = check(&format!("{CHANNEL}app_secret = \"\"\n"));
    assert!(!ok, "{out}");
    assert!(
        out.contains("whatsapp.channels.demo.app_secret")
            && out.contains("OMNIGATE_WHATSAPP__CHANNELS__DEMO__APP_SECRET"),
        "{out}"
    );
}

#[test]
fn bad_url_is_named() {
    let (ok, out) = check("[whatsapp]\ngraph_api_base = \"not a url\"\n");
    assert!(!ok, "{out}");
    assert!(out.contains("whatsapp.graph_api_base"), "{out}");
    let (ok, out) = check("[kafka]\nbrokers = \"localhost\"\n");
    assert!(!ok, "{out}");
    assert!(
        out.contains("kafka.brokers") && out.contains("host:port"),
        "{out}"
    );
}

#[test]
fn fetch_waits_past_librdkafkas_limit_are_named() {
    for key in ["fetch_wait_max_ms", "background_fetch_wait_max_ms"] {
        let (ok, out) = check(&format!("[kafka]\n{key} = 300001\n"));
        assert!(!ok, "{out}");
        assert!(
            out.contains(&format!("kafka.{key}")) && out.contains("300000"),
            "{out}"
        );
    }
}

#[test]
fn the_shipped_configs_are_valid() {
    for file in ["default.toml", "standalone.toml"] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../config")
            .join(file);
        let output = Command::new(omnigate_bin())
            .args(["check-config", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn secrets_are_redacted_from_debug() {
    let config: omnigate_connector_whatsapp::ChannelConfig = toml_channel();
    let debug = format!("{config:?}");
    assert!(
        !debug.contains("s3cr3t-app") && debug.contains("REDACTED"),
        "{debug}"
    );
}

fn toml_channel() -> omnigate_connector_whatsapp::ChannelConfig {
    serde_json::from_value(serde_json::json!({
        "phone_number_id": "1",
        "verify_token": "s3cr3t-verify",
        "app_secret": "s3cr3t-app",
        "access_token": "s3cr3t-token",
    }))
    .unwrap()
}

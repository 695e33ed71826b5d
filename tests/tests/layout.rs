//! The workspace's shape, as DESIGN.md states it: one crate links librdkafka.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

#[test]
fn only_the_kafka_crate_and_the_binary_link_librdkafka() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    for package in [
        "omnigate-core",
        "omnigate-model",
        "omnigate-router",
        "omnigate-webhooks",
        "omnigate-connector-whatsapp",
    ] {
        let output = Command::new(&cargo)
            .args(["tree", "--offline", "-e", "normal,build", "-p", package])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "cargo tree -p {package}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let tree = String::from_utf8_lossy(&output.stdout);
        assert!(
            tree.lines().count() > 1,
            "cargo tree printed the dependencies of {package}: {tree}"
        );
        assert!(
            !tree.contains("rdkafka"),
            "{package} links librdkafka:\n{tree}"
        );
    }
}

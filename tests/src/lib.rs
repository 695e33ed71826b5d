//! Helpers for end-to-end tests: the broker `make test` starts, the `omnigate` binary
//! run as a real process, and readers that collect what landed on a topic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod bench;
pub mod receiver;

use omnigate_kafka::KafkaConfig;
use std::{
    collections::BTreeMap,
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

/// The broker `make test` started (Apache Kafka, KRaft), or `OMNIGATE_TEST_BROKERS`.
pub fn brokers() -> String {
    std::env::var("OMNIGATE_TEST_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// A topic prefix no other test (or earlier run) uses.
pub fn unique_prefix(test: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "t-{test}-{}-{nanos}-{}.",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Kafka settings for tests: the given brokers and prefix, defaults otherwise.
pub fn kafka_config(brokers: &str, prefix: &str) -> KafkaConfig {
    KafkaConfig {
        brokers: brokers.into(),
        topic_prefix: prefix.into(),
        partitions: 3,
        replication_factor: 1,
        create_topics: true,
        message_timeout_ms: 5000,
        linger_ms: 5,
        compression: "lz4".into(),
        client_id: "omnigate-test".into(),
        probe_interval_ms: 500,
        fetch_wait_max_ms: 5000,
        background_fetch_wait_max_ms: 5000,
        fetch_min_bytes: 1,
        background_fetch_min_bytes: 1,
        instance_id: String::new(),
        protobuf_topics: vec![],
        properties: BTreeMap::new(),
    }
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The `omnigate` binary built beside this test (`make test` builds it first).
///
/// Cargo does not rebuild another package's binary for this package's tests, so a
/// binary older than the sources fails here instead of testing old code.
pub fn omnigate_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("omnigate");
    let built = std::fs::metadata(&bin)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| {
            panic!(
                "{} is missing: run `cargo build --bin omnigate` (make test does)",
                bin.display()
            )
        });
    let sources = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates");
    if let Some(newest) = newest_mtime(&sources) {
        assert!(
            newest <= built,
            "{} is older than the sources: run `cargo build --bin omnigate` (make test does)",
            bin.display()
        );
    }
    bin
}

fn newest_mtime(dir: &std::path::Path) -> Option<std::time::SystemTime> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let path = entry.path();
            if path.is_dir() {
                newest_mtime(&path)
            } else if path.extension().is_some_and(|e| e == "rs") {
                entry.metadata().and_then(|m| m.modified()).ok()
            } else {
                None
            }
        })
        .max()
}

/// A running `omnigate serve` process, killed on drop.
pub struct Gateway {
    child: Child,
    /// `http://127.0.0.1:PORT`
    pub url: String,
    /// Topic prefix of this gateway.
    pub prefix: String,
    /// Temporary folder with the config file and blobs.
    pub dir: tempfile::TempDir,
}

impl Gateway {
    /// Starts the binary with `extra` TOML appended to a test config; waits for `/healthz`.
    pub async fn start(brokers: &str, prefix: &str, extra: &str) -> Self {
        Self::start_roles(
            brokers,
            prefix,
            &["api", "whatsapp", "router"],
            extra,
            None,
            &[],
        )
        .await
    }

    /// Starts the binary with `roles`, `extra` TOML, and a data folder (a fresh one when `None`).
    pub async fn start_roles(
        brokers: &str,
        prefix: &str,
        roles: &[&str],
        extra: &str,
        dir: Option<tempfile::TempDir>,
        env: &[(&str, String)],
    ) -> Self {
        let mut dir = dir.unwrap_or_else(|| tempfile::tempdir().unwrap());
        // A port found free can be taken by a concurrent test before the gateway binds
        // it: then the gateway exits at once, and it is started again on another port.
        for attempt in 0..3 {
            let port = free_port();
            let logged = std::fs::metadata(dir.path().join("omnigate.log"))
                .map(|m| m.len() as usize)
                .unwrap_or(0);
            let webhooks = if extra.contains("[webhooks]") {
                String::new()
            } else {
                format!(
                    "[webhooks]\ndatabase_url = \"sqlite://{}?mode=rwc\"",
                    dir.path().join("webhooks.db").display()
                )
            };
            let config = format!(
                r#"
roles = {roles:?}
[server]
listen = "127.0.0.1:{port}"
[log]
format = "pretty"
level = "info,omnigate=debug"
[kafka]
brokers = "{brokers}"
topic_prefix = "{prefix}"
partitions = 3
probe_interval_ms = 300
message_timeout_ms = 3000
[blobs]
url = "file://{blobs}"
[router]
rules_file = "{rules}"
database_url = "sqlite://{db}?mode=rwc"
[[api_keys]]
name = "test"
tenant = "acme"
sha256 = "bb2c3471b1d4f3a48f740bf10b04cc830d5cd528b47ba699f9f0d733dbc5e397"
{webhooks}
{extra}
"#,
                blobs = dir.path().join("blobs").display(),
                rules = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../config/routing.toml")
                    .display(),
                db = dir.path().join("omnigate.db").display(),
            );
            let path = dir.path().join("omnigate.toml");
            std::fs::write(&path, config).unwrap();
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.path().join("omnigate.log"))
                .unwrap();
            let child = Command::new(omnigate_bin())
                .args(["serve", "--config"])
                .arg(&path)
                .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap();
            let mut started = Self {
                child,
                url: format!("http://127.0.0.1:{port}"),
                prefix: prefix.into(),
                dir,
            };
            if started.healthy_or_exited(Duration::from_secs(60)).await {
                return started;
            }
            let log = started.log();
            let this_start = log.get(logged..).unwrap_or_default();
            if attempt == 2 || !this_start.contains("Address already in use") {
                panic!("the gateway exited or never answered /healthz; log:\n{log}");
            }
            dir = started.kill_keep_dir();
        }
        unreachable!("the third attempt returns or panics")
    }

    /// Waits for `/healthz` to answer 200: true when it did, false when the process
    /// exited first or `timeout` passed.
    async fn healthy_or_exited(&mut self, timeout: Duration) -> bool {
        let client = reqwest::Client::new();
        let started = Instant::now();
        while started.elapsed() < timeout {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            let answer = client.get(format!("{}/healthz", self.url)).send().await;
            if answer.is_ok_and(|r| r.status().as_u16() == 200) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    /// The process's log so far (for assertion messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("omnigate.log")).unwrap_or_default()
    }

    /// Polls `path` until it answers `status`, or panics with the log after `timeout`.
    pub async fn wait_for(&self, path: &str, status: u16, timeout: Duration) {
        let client = reqwest::Client::new();
        let started = Instant::now();
        while started.elapsed() < timeout {
            let answer = client.get(format!("{}{path}", self.url)).send().await;
            if answer.is_ok_and(|r| r.status().as_u16() == status) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "{path} never answered {status} within {timeout:?}; log:\n{}",
            self.log()
        );
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits up to `timeout` for the process to exit; its exit code, if it did.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let started = Instant::now();
        while started.elapsed() < timeout {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// The sum of every series of the Prometheus metric `name` on `/metrics` (0 when
    /// it has none yet).
    pub async fn metric_sum(&self, name: &str) -> f64 {
        let metrics = reqwest::get(format!("{}/metrics", self.url))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        metrics
            .lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with([' ', '{']))
            })
            .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
            .sum()
    }

    /// Kills the process and hands back its data folder, for a restart.
    pub fn kill_keep_dir(mut self) -> tempfile::TempDir {
        self.kill();
        let dir = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self.dir, dir)
    }

    /// Sends SIGKILL.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One record read back from a topic.
pub type Record = omnigate_kafka::reader::ReadRecord;

/// The value of a record as JSON.
pub fn json(record: &Record) -> serde_json::Value {
    serde_json::from_slice(&record.value).unwrap()
}

/// Reads `topic` until at least `n` records arrived, without waiting for quiet.
pub fn read_at_least(brokers: &str, topic: &str, n: usize, timeout: Duration) -> Vec<Record> {
    let config = kafka_config(brokers, "");
    omnigate_kafka::reader::read_topic(&config, topic, n, Duration::ZERO, timeout)
        .unwrap_or_else(|e| panic!("reading {topic}: {e}"))
}

/// Reads `topic` from the beginning of every partition until `expected` records
/// arrived (then a short quiet period, to catch extras) or `timeout` passed.
pub fn read_topic(brokers: &str, topic: &str, expected: usize, timeout: Duration) -> Vec<Record> {
    let config = kafka_config(brokers, "");
    omnigate_kafka::reader::read_topic(
        &config,
        topic,
        expected,
        Duration::from_millis(700),
        timeout,
    )
    .unwrap_or_else(|e| panic!("reading {topic}: {e}"))
}

/// A new, empty database on the machine's PostgreSQL (127.0.0.1:5432, which
/// `make test` checks and starts), as a URL.
pub fn fresh_postgres_database() -> String {
    let name = format!(
        "omnigate_test_{}_{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    );
    let status = Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-q",
            "-c",
            &format!("CREATE DATABASE {name}"),
        ])
        .status()
        .expect("psql runs (make test relies on the machine's PostgreSQL)");
    assert!(status.success(), "cannot create database {name}");
    format!("postgres://postgres@127.0.0.1:5432/{name}")
}

/// Publishes `events` on `topic` under `prefix`, creating the topics first.
pub async fn publish_events(
    prefix: &str,
    topic: omnigate_core::publish::Topic,
    events: Vec<omnigate_model::pb::Event>,
) {
    let config = kafka_config(&brokers(), prefix);
    omnigate_kafka::admin::ensure_topics(&config).await.unwrap();
    let publisher = omnigate_core::publish::Publisher::new(
        omnigate_kafka::KafkaPublisher::new(&config).unwrap(),
    );
    for event in events {
        publisher.event(topic, event).await.unwrap();
    }
}

/// The demo WhatsApp channel every gateway test configures (tenant `acme`).
pub const DEMO_CHANNEL: &str = r#"
[whatsapp.channels.demo]
tenant = "acme"
phone_number_id = "106540352242922"
verify_token = "demo-verify-token"
app_secret = "demo-app-secret"
access_token = "demo-access-token"
"#;

/// A WhatsApp text message webhook for the demo channel, with message id `wamid`.
pub fn whatsapp_text(wamid: &str) -> String {
    format!(
        r#"{{"object":"whatsapp_business_account","entry":[{{"id":"1","changes":[{{"field":"messages","value":{{"messaging_product":"whatsapp","metadata":{{"display_phone_number":"15550783881","phone_number_id":"106540352242922"}},"contacts":[{{"profile":{{"name":"Ada"}},"wa_id":"16505551234"}}],"messages":[{{"from":"16505551234","id":"{wamid}","timestamp":"1749416383","type":"text","text":{{"body":"Hello!"}}}}]}}}}]}}]}}"#
    )
}

/// An rdkafka MockCluster of one broker with every contract topic under `prefix`
/// (3 partitions), for fault injection: broker down, slow, erroring.
pub fn mock_cluster(
    prefix: &str,
) -> rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
    let mock = rdkafka::mocking::MockCluster::new(1).unwrap();
    for topic in omnigate_core::publish::Topic::ALL {
        mock.create_topic(&topic.name(prefix), 3, 1).unwrap();
    }
    mock
}

/// POSTs `body` to the demo WhatsApp channel of the gateway at `url`, signed with the
/// demo app secret, through `client`.
pub async fn post_whatsapp(
    client: &reqwest::Client,
    url: &str,
    body: String,
) -> reqwest::Result<reqwest::Response> {
    let signature = omnigate_connector_whatsapp::verify::sign(b"demo-app-secret", body.as_bytes());
    client
        .post(format!("{url}/webhooks/whatsapp/demo"))
        .header("content-type", "application/json")
        .header("x-hub-signature-256", signature)
        .body(body)
        .send()
        .await
}

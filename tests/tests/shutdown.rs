//! Shutdown is bounded whatever the broker does: with the broker gone (MockCluster
//! down, or a real Kafka broker stopped), SIGTERM ends the process within
//! `server.shutdown_grace_ms` plus the producer flush (`kafka.message_timeout_ms`),
//! non-zero when work was abandoned, and nothing acknowledged is lost; a second
//! signal exits at once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use omnigate_core::publish::Topic;
use omnigate_e2e::{
    DEMO_CHANNEL, Gateway, free_port, json, mock_cluster, post_whatsapp, unique_prefix,
    whatsapp_text,
};
use std::{
    collections::HashSet,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

// Requests wait for Kafka longer than the grace period: at the deadline they are
// still in flight, so the shutdown abandons them and must say so.
const GRACE_MS: u64 = 1000;
const FLUSH_MS: u64 = 4000;

/// The shutdown budget's settings, as environment.
fn budget(grace_ms: u64, flush_ms: u64) -> [(&'static str, String); 2] {
    [
        ("OMNIGATE_SERVER__SHUTDOWN_GRACE_MS", grace_ms.to_string()),
        ("OMNIGATE_KAFKA__MESSAGE_TIMEOUT_MS", flush_ms.to_string()),
    ]
}

async fn post(url: &str, wamid: &str) -> Option<u16> {
    post_whatsapp(&reqwest::Client::new(), url, whatsapp_text(wamid))
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

/// A gateway with `roles`, the demo channel, `extra` config and the test's shutdown
/// budget, ready.
async fn start(brokers: &str, prefix: &str, roles: &[&str], extra: &str) -> Gateway {
    let gateway = Gateway::start_roles(
        brokers,
        prefix,
        roles,
        &format!("{DEMO_CHANNEL}\n{extra}"),
        None,
        &budget(GRACE_MS, FLUSH_MS),
    )
    .await;
    gateway
        .wait_for("/readyz", 200, Duration::from_secs(60))
        .await;
    gateway
}

/// Posts `n` messages that must be acknowledged; returns their ids.
async fn acknowledged(gateway: &Gateway, tag: &str, n: usize) -> HashSet<String> {
    let mut acked = HashSet::new();
    for i in 0..n {
        let wamid = format!("wamid.{tag}.{i}");
        assert_eq!(post(&gateway.url, &wamid).await, Some(200));
        acked.insert(wamid);
    }
    acked
}

fn signal(gateway: &Gateway, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &gateway.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Starts requests that cannot be acknowledged (the broker is gone) and leaves them
/// in flight.
fn requests_in_flight(gateway: &Gateway, n: usize) -> Vec<tokio::task::JoinHandle<Option<u16>>> {
    (0..n)
        .map(|i| {
            let url = gateway.url.clone();
            tokio::spawn(async move { post(&url, &format!("wamid.in-flight.{i}")).await })
        })
        .collect()
}

/// SIGTERM, then the time to exit and the exit code (None: did not exit in `limit`).
fn terminate(gateway: &mut Gateway, limit: Duration) -> (Duration, Option<i32>) {
    let started = Instant::now();
    signal(gateway, "TERM");
    let code = gateway.wait_exit(limit);
    (started.elapsed(), code)
}

fn provider_ids(brokers: &str, prefix: &str, expected: usize) -> HashSet<String> {
    let config = omnigate_e2e::kafka_config(brokers, prefix);
    omnigate_kafka::reader::read_topic(
        &config,
        &Topic::Inbound.name(prefix),
        expected,
        Duration::from_secs(1),
        Duration::from_secs(60),
    )
    .unwrap()
    .iter()
    .map(|r| {
        json(r)["message"]["providerMessageId"]
            .as_str()
            .unwrap()
            .to_string()
    })
    .collect()
}

/// The line in which the gateway says why its shutdown was not clean.
fn unclean_reason(gateway: &Gateway) -> String {
    gateway
        .log()
        .lines()
        .find(|l| l.contains("not clean") || l.contains("overran"))
        .unwrap_or("")
        .to_string()
}

/// With the broker gone: requests in flight, then SIGTERM. The process must exit within
/// the budget, say that work was abandoned, and never have answered 200 for it.
async fn terminate_with_requests_in_flight(gateway: &mut Gateway, case: &str) {
    let in_flight = requests_in_flight(gateway, 5);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (took, code) = terminate(gateway, bound() + Duration::from_secs(10));
    let answers: Vec<Option<u16>> = futures::future::join_all(in_flight)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    println!(
        "{case}: SIGTERM to exit {took:?} (bound {:?}), exit code {code:?}, in-flight answers {answers:?}; {}",
        bound(),
        unclean_reason(gateway)
    );
    assert!(code.is_some(), "exited; log:\n{}", gateway.log());
    assert!(took <= bound(), "{took:?}; log:\n{}", gateway.log());
    assert_ne!(code, Some(0), "work was abandoned: the exit says so");
    assert!(
        answers.iter().all(|a| *a != Some(200)),
        "nothing unacknowledged was answered 200: {answers:?}"
    );
}

/// The longest a shutdown may take: grace, flush, and the budget's margin.
fn bound() -> Duration {
    Duration::from_millis(GRACE_MS + FLUSH_MS + 2000)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_the_mock_broker_down_exits_within_the_budget() {
    let prefix = "omnigate.";
    let mock = mock_cluster(prefix);
    let brokers = mock.bootstrap_servers();
    let roles = ["whatsapp", "router", "webhooks", "api"];
    // Deliveries pending too: an endpoint that accepts connections and never answers.
    let receiver = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let receiver_url = format!("http://{}/", receiver.local_addr().unwrap());
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    {
        let accepted = std::sync::Arc::clone(&accepted);
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for stream in receiver.incoming().flatten() {
                accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                held.push(stream);
            }
        });
    }
    let data = tempfile::tempdir().unwrap();
    let webhooks = format!(
        "[webhooks]\ndatabase_url = \"sqlite://{}?mode=rwc\"\nallow_networks = [\"127.0.0.0/8\"]\nendpoint_refresh = \"200ms\"\n",
        data.path().join("webhooks.db").display()
    );
    let mut gateway = start(&brokers, prefix, &roles, &webhooks).await;
    let registered = reqwest::Client::new()
        .post(format!("{}/v1/webhooks", gateway.url))
        .bearer_auth("omnigate-dev-key")
        .json(&serde_json::json!({"url": receiver_url, "events": ["message.*"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(registered.status(), 201);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let acked = acknowledged(&gateway, "mock", 20).await;
    let started = Instant::now();
    while accepted.load(std::sync::atomic::Ordering::Relaxed) == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no delivery was attempted; log:\n{}",
            gateway.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "deliveries pending at the signal: {} connections held by the silent endpoint",
        accepted.load(std::sync::atomic::Ordering::Relaxed)
    );

    mock.broker_down(1).unwrap();
    terminate_with_requests_in_flight(&mut gateway, "mock broker down").await;

    mock.broker_up(1).unwrap();
    let dir = gateway.kill_keep_dir();
    let restarted =
        Gateway::start_roles(&brokers, prefix, &roles, DEMO_CHANNEL, Some(dir), &[]).await;
    restarted
        .wait_for("/readyz", 200, Duration::from_secs(30))
        .await;
    let found = provider_ids(&brokers, prefix, acked.len());
    let missing = acked.difference(&found).count();
    println!(
        "after restart: {} acknowledged, {missing} missing",
        acked.len()
    );
    assert_eq!(missing, 0);
}

/// A Kafka broker of this test's own, so it can be stopped and started again.
struct ScratchBroker {
    child: Child,
    port: u16,
    data: tempfile::TempDir,
}

impl ScratchBroker {
    fn start(port: u16, data: tempfile::TempDir) -> Self {
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/kafka.sh");
        let log = std::fs::File::create(data.path().join("broker.log")).unwrap();
        let child = Command::new(script)
            .args(["scratch", &port.to_string()])
            .arg(data.path().join("kafka"))
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(90),
                "the scratch broker did not start"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        Self { child, port, data }
    }

    fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kills the broker (no controlled shutdown) and hands back its data folder.
    fn kill(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::mem::replace(&mut self.data, tempfile::tempdir().unwrap())
    }
}

impl Drop for ScratchBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_the_real_broker_stopped_exits_within_the_budget() {
    let port = free_port();
    let broker = ScratchBroker::start(port, tempfile::tempdir().unwrap());
    let brokers = broker.brokers();
    let prefix = unique_prefix("shutdown-real");
    let roles = ["whatsapp", "router"];
    let mut gateway = start(&brokers, &prefix, &roles, "").await;
    let acked = acknowledged(&gateway, "real", 20).await;

    let data = broker.kill();
    terminate_with_requests_in_flight(&mut gateway, "real broker stopped").await;

    let broker = ScratchBroker::start(port, data);
    let dir = gateway.kill_keep_dir();
    let restarted =
        Gateway::start_roles(&brokers, &prefix, &roles, DEMO_CHANNEL, Some(dir), &[]).await;
    restarted
        .wait_for("/readyz", 200, Duration::from_secs(60))
        .await;
    let found = provider_ids(&broker.brokers(), &prefix, acked.len());
    let missing = acked.difference(&found).count();
    println!(
        "after restart: {} acknowledged, {missing} missing",
        acked.len()
    );
    assert_eq!(missing, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_during_a_slow_shutdown_exits_at_once() {
    let prefix = "omnigate.";
    let mock = mock_cluster(prefix);
    let brokers = mock.bootstrap_servers();
    // A long budget: only the second signal can end this shutdown quickly.
    let mut gateway = Gateway::start_roles(
        &brokers,
        prefix,
        &["whatsapp", "router"],
        DEMO_CHANNEL,
        None,
        &budget(30_000, 30_000),
    )
    .await;
    gateway
        .wait_for("/readyz", 200, Duration::from_secs(30))
        .await;
    mock.broker_down(1).unwrap();
    let _in_flight = requests_in_flight(&gateway, 3);
    tokio::time::sleep(Duration::from_millis(300)).await;
    signal(&gateway, "TERM");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(gateway.wait_exit(Duration::ZERO), None, "still draining");
    let started = Instant::now();
    signal(&gateway, "INT");
    let code = gateway.wait_exit(Duration::from_secs(5));
    let took = started.elapsed();
    println!("second signal: exit after {took:?}, exit code {code:?}");
    assert_eq!(code, Some(130), "log:\n{}", gateway.log());
    assert!(took <= Duration::from_secs(1), "{took:?}");
    assert!(
        gateway.log().contains("Second signal during shutdown"),
        "it says so"
    );
}

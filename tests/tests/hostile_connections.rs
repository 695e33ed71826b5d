//! Hostile clients against the `omnigate` binary: half-sent request heads, trickled
//! bodies and idle connections beyond the caps. The gateway must close what they hold
//! within its deadlines and keep answering everyone else.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use omnigate_connector_whatsapp::verify::sign;
use omnigate_e2e::{
    DEMO_CHANNEL, Gateway, brokers, free_port, post_whatsapp, read_topic, unique_prefix,
};
use serde_json::json;
use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
};

const PNID: &str = "106540352242922";
const HEADER_TIMEOUT_MS: u64 = 1500;
const BODY_TIMEOUT_MS: u64 = 1500;
const IDLE_TIMEOUT_MS: u64 = 2000;

/// A gateway with the api, whatsapp and router roles and these caps and deadlines.
async fn gateway(
    test: &str,
    max_connections: usize,
    per_client: usize,
    admin: Option<u16>,
) -> Gateway {
    let mut env = vec![
        (
            "OMNIGATE_SERVER__HEADER_TIMEOUT_MS",
            HEADER_TIMEOUT_MS.to_string(),
        ),
        (
            "OMNIGATE_SERVER__BODY_TIMEOUT_MS",
            BODY_TIMEOUT_MS.to_string(),
        ),
        (
            "OMNIGATE_SERVER__IDLE_TIMEOUT_MS",
            IDLE_TIMEOUT_MS.to_string(),
        ),
        (
            "OMNIGATE_SERVER__MAX_CONNECTIONS",
            max_connections.to_string(),
        ),
        (
            "OMNIGATE_SERVER__MAX_CONNECTIONS_PER_CLIENT",
            per_client.to_string(),
        ),
    ];
    // The slow-body test needs none: a second port is a second chance of a clash.
    if let Some(admin) = admin {
        env.push((
            "OMNIGATE_SERVER__ADMIN_LISTEN",
            format!("127.0.0.1:{admin}"),
        ));
    }
    let gateway = Gateway::start_roles(
        &brokers(),
        &unique_prefix(test),
        &["api", "whatsapp", "router"],
        DEMO_CHANNEL,
        None,
        &env,
    )
    .await;
    gateway
        .wait_for("/readyz", 200, Duration::from_secs(30))
        .await;
    gateway
}

/// `server.listen` of a gateway started by [`Gateway::start_roles`] (it writes the
/// port into its own config; the URL carries it).
fn address(gateway: &Gateway) -> SocketAddr {
    gateway
        .url
        .trim_start_matches("http://")
        .parse()
        .expect("host:port")
}

async fn connect_from(source: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    socket.connect(to).await
}

/// Waits until the server closes `stream` (EOF or reset), up to `limit`; how long it took.
async fn closed_by_server(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout_at(
            tokio::time::Instant::from_std(started + limit),
            stream.read(&mut buf),
        )
        .await
        {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => continue,
        }
    }
}

fn text_message(wamid: &str) -> String {
    json!({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "messages", "value": {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550783881", "phone_number_id": PNID},
        "contacts": [{"profile": {"name": "Test"}, "wa_id": "16505551234"}],
        "messages": [{"from": "16505551234", "id": wamid, "timestamp": "1749416383", "type": "text", "text": {"body": "still here?"}}]
    }}]}]})
    .to_string()
}

fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn soft_file_limit(pid: u32) -> usize {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    line.split_whitespace().nth(3).unwrap().parse().unwrap()
}

fn raise_own_file_limit() {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_heads_are_closed_and_others_are_served_meanwhile() {
    raise_own_file_limit();
    let admin = free_port();
    let (cap, per_client, attackers) = (1000, 300, 2000);
    let gateway = gateway("slow-head", cap, per_client, Some(admin)).await;
    let target = address(&gateway);

    // The attack: every connection from 127.0.0.1 sends a partial head, then nothing.
    let closed = Arc::new(AtomicUsize::new(0));
    let slowest_ms = Arc::new(AtomicUsize::new(0));
    let attack = {
        let (closed, slowest_ms) = (Arc::clone(&closed), Arc::clone(&slowest_ms));
        tokio::spawn(async move {
            let mut held = Vec::new();
            for _ in 0..attackers {
                let Ok(mut stream) = connect_from([127, 0, 0, 1].into(), target).await else {
                    continue;
                };
                let _ = stream
                    .write_all(
                        b"POST /webhooks/whatsapp/demo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n",
                    )
                    .await;
                let (closed, slowest_ms) = (Arc::clone(&closed), Arc::clone(&slowest_ms));
                held.push(tokio::spawn(async move {
                    let limit = Duration::from_millis(HEADER_TIMEOUT_MS * 4);
                    if let Some(took) = closed_by_server(&mut stream, limit).await {
                        closed.fetch_add(1, Ordering::Relaxed);
                        slowest_ms.fetch_max(took.as_millis() as usize, Ordering::Relaxed);
                    }
                }));
            }
            for task in held {
                task.await.unwrap();
            }
        })
    };

    // Meanwhile: a provider from another address and the orchestrator's probes.
    let provider = reqwest::Client::builder()
        .local_address(IpAddr::from([127, 0, 0, 2]))
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let probes = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let (mut answered, mut ready, mut tries) = (0, 0, 0);
    let mut wamids = Vec::new();
    while !attack.is_finished() {
        tries += 1;
        let wamid = format!("wamid.during-attack-{tries}");
        let body = text_message(&wamid);
        let post = post_whatsapp(&provider, &gateway.url, body).await;
        if post.is_ok_and(|r| r.status() == 200) {
            answered += 1;
            wamids.push(wamid);
        }
        let probe = probes
            .get(format!("http://127.0.0.1:{admin}/readyz"))
            .send()
            .await;
        if probe.is_ok_and(|r| r.status() == 200) {
            ready += 1;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    attack.await.unwrap();
    let closed = closed.load(Ordering::Relaxed);
    let slowest = slowest_ms.load(Ordering::Relaxed);
    let refused = gateway
        .metric_sum("omnigate_http_connections_refused_total")
        .await;
    let cut = gateway
        .metric_sum("omnigate_http_deadline_cuts_total")
        .await;
    println!(
        "slow heads: {attackers} opened, {closed} closed by the server (slowest after {slowest} ms, head deadline {HEADER_TIMEOUT_MS} ms), {refused} refused at a cap, {cut} cut by a deadline; meanwhile {answered}/{tries} signed posts answered 200 and {ready}/{tries} readiness probes"
    );
    assert_eq!(closed, attackers, "every half-sent head is closed");
    assert!(
        slowest <= (HEADER_TIMEOUT_MS + 1500) as usize,
        "closed within the head deadline: slowest {slowest} ms"
    );
    // Heads cut by the deadline free their slots while the attack still opens more, so
    // on a slow machine more than `per_client` get in; each is refused or cut all the same.
    assert!(refused > 0.0, "the per-client cap refused none");
    assert!(
        refused + cut >= attackers as f64,
        "every half-sent head is refused at the cap or cut: {refused} + {cut}"
    );
    assert!(tries >= 2, "the attack lasted long enough to probe");
    assert_eq!(
        answered, tries,
        "every signed post answered during the attack"
    );
    assert_eq!(ready, tries, "readiness answered throughout");
    let records = read_topic(
        &brokers(),
        &format!("{}inbound.v1", gateway.prefix),
        answered,
        Duration::from_secs(30),
    );
    assert_eq!(records.len(), answered, "each answered post is on Kafka");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_body_is_cut_off_and_nothing_is_published() {
    let gateway = gateway("slow-body", 100, 50, None).await;
    let body = text_message("wamid.trickled");
    let head = format!(
        "POST /webhooks/whatsapp/demo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-Hub-Signature-256: {}\r\nContent-Length: {}\r\n\r\n",
        sign(b"demo-app-secret", body.as_bytes()),
        body.len()
    );
    let mut stream = TcpStream::connect(address(&gateway)).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let mut sent = 0;
    // One byte every 100 ms: the whole body would take far longer than the deadline.
    let trickle = async {
        for byte in body.as_bytes() {
            if stream.write_all(&[*byte]).await.is_err() {
                break;
            }
            sent += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_millis(BODY_TIMEOUT_MS * 3), trickle).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut answer)).await;
    let took = started.elapsed();
    let answer = String::from_utf8_lossy(&answer);
    println!(
        "slow body: {sent} of {} bytes sent in {took:?}, answer: {:?}",
        body.len(),
        answer.lines().next().unwrap_or("")
    );
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(sent < body.len(), "cut off before the body was complete");
    let cut = gateway
        .metric_sum("omnigate_http_deadline_cuts_total")
        .await;
    assert!(cut >= 1.0, "the cut is counted");
    let records = read_topic(
        &brokers(),
        &format!("{}inbound.v1", gateway.prefix),
        0,
        Duration::from_secs(3),
    );
    assert!(records.is_empty(), "nothing published: {records:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_beyond_the_cap_are_closed() {
    raise_own_file_limit();
    let admin = free_port();
    let (cap, clients) = (200, 500);
    let gateway = gateway("idle", cap, 0, Some(admin)).await;
    let target = address(&gateway);
    let pid = gateway.pid();
    let limit = soft_file_limit(pid);
    let baseline_files = open_files(pid);

    // Each client makes one kept-alive request, then sits on the connection.
    let mut held = Vec::new();
    let mut served = 0;
    for _ in 0..clients {
        let mut stream = TcpStream::connect(target).await.unwrap();
        let _ = stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await;
        let mut buf = [0u8; 256];
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf)).await
            && n > 0
        {
            served += 1;
        }
        held.push(stream);
    }
    let peak_files = open_files(pid);
    let started = Instant::now();
    let mut closed = 0;
    let mut slowest = Duration::ZERO;
    for mut stream in held {
        let left = Duration::from_millis(IDLE_TIMEOUT_MS * 4).saturating_sub(started.elapsed());
        if let Some(_took) = closed_by_server(&mut stream, left).await {
            closed += 1;
            slowest = slowest.max(started.elapsed());
        }
    }
    let after_files = open_files(pid);
    let refused = gateway
        .metric_sum("omnigate_http_connections_refused_total")
        .await;
    let idle_cuts = gateway
        .metric_sum("omnigate_http_deadline_cuts_total")
        .await;
    println!(
        "idle: {clients} opened, {served} served before going idle, {refused} refused at the cap of {cap}, {closed} closed by the server (last {slowest:?} after the last opened; idle deadline {IDLE_TIMEOUT_MS} ms), {idle_cuts} idle cuts; open files {baseline_files} before, {peak_files} at peak, {after_files} after (limit {limit})"
    );
    assert_eq!(closed, clients, "every idle connection is closed");
    assert!(
        served <= cap,
        "no more than the cap served at once: {served}"
    );
    assert!(refused >= (clients - cap) as f64, "{refused}");
    assert!(peak_files < limit, "{peak_files} open files, limit {limit}");
    assert!(
        peak_files < baseline_files + cap + 50,
        "connections past the cap hold no file: {peak_files}"
    );
    assert!(
        slowest <= Duration::from_millis(IDLE_TIMEOUT_MS * 2 + 1000),
        "closed within the idle deadline: {slowest:?}"
    );
    // The admin listener and the public one still answer.
    let ok = reqwest::get(format!("http://127.0.0.1:{admin}/healthz"))
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let ok = reqwest::get(format!("{}/healthz", gateway.url))
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
}

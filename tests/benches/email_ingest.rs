//! `make bench`: one gateway following 1,000 IMAP mailboxes (Dovecot users, each
//! folder on its own IDLE connection), then mail delivered over LMTP at 50/s spread
//! over them.
//!
//! Prints the time to follow every mailbox, resident memory with the mailboxes idle
//! beside the same gateway with no mailbox (the baseline, same run), memory per
//! mailbox, and the delivery-to-Kafka latency (from Dovecot's LMTP acceptance to the
//! record's Kafka timestamp), p50 and p99. Goals: p99 under 1 s, under 150 MiB for
//! the 1,000 idle mailboxes. Needs the broker and the mail server `make bench` starts
//! (`scripts/mail.sh bench`: IMAP 127.0.0.1:21143, LMTP :22424).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use omnigate_e2e::{
    bench::{Running, env_or, fresh_broker, peak_mib, rss_mib, start_omnigate},
    brokers, free_port, kafka_config, unique_prefix,
};
use std::{
    collections::HashMap,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};

const IMAP_PORT: u16 = 21143;
const LMTP_PORT: u16 = 22424;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// The gateway's config: the email role with `mailboxes` channels.
fn config(dir: &std::path::Path, port: u16, prefix: &str, mailboxes: usize, run: &str) -> String {
    let mut config = format!(
        "roles = [\"email\"]\n[server]\nlisten = \"127.0.0.1:{port}\"\n[log]\nlevel = \"warn\"\n[kafka]\nbrokers = \"{}\"\ntopic_prefix = \"{prefix}\"\npartitions = 3\n[blobs]\nurl = \"file://{}\"\n[router]\ndatabase_url = \"sqlite://{}?mode=rwc\"\n",
        brokers(),
        dir.join("blobs").display(),
        dir.join("omnigate.db").display(),
    );
    for i in 0..mailboxes {
        config.push_str(&format!(
            "[email.channels.box{i:04}]\naddress = \"box{i:04}.{run}@bench.test\"\nimap_url = \"imap://127.0.0.1:{IMAP_PORT}\"\nusername = \"box{i:04}.{run}@bench.test\"\npassword = \"test-password\"\nsmtp_url = \"smtp://127.0.0.1:22525\"\nsmtp_auth = false\n"
        ));
    }
    config
}

/// Waits until `/readyz` answers and names no channel in error (every mailbox
/// followed); the time it took.
async fn wait_followed(port: u16, timeout: Duration) -> Duration {
    let started = Instant::now();
    let url = format!("http://127.0.0.1:{port}/readyz");
    while started.elapsed() < timeout {
        if let Ok(answer) = reqwest::get(&url).await
            && answer.status().is_success()
            && !answer.text().await.unwrap_or_default().contains("channel ")
        {
            return started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("not every mailbox was followed within {timeout:?}");
}

/// One LMTP session that delivers mails one at a time.
struct Lmtp {
    reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
}

impl Lmtp {
    async fn connect() -> Self {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", LMTP_PORT))
            .await
            .expect("the bench mail server listens (scripts/mail.sh bench)");
        let (read, writer) = stream.into_split();
        let mut lmtp = Self {
            reader: BufReader::new(read),
            writer,
        };
        lmtp.reply().await;
        lmtp.command("LHLO bench.test\r\n").await;
        lmtp
    }

    /// Reads one (possibly multi-line) reply; panics unless it is 2xx or 3xx.
    async fn reply(&mut self) {
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).await.unwrap();
            assert!(
                line.starts_with('2') || line.starts_with('3'),
                "LMTP: {line}"
            );
            if line.as_bytes().get(3) != Some(&b'-') {
                return;
            }
        }
    }

    async fn command(&mut self, command: &str) {
        self.writer.write_all(command.as_bytes()).await.unwrap();
        self.reply().await;
    }

    /// Delivers one mail; returns once Dovecot stored it.
    async fn deliver(&mut self, to: &str, message_id: &str) {
        self.command("MAIL FROM:<customer@bench.test>\r\n").await;
        self.command(&format!("RCPT TO:<{to}>\r\n")).await;
        self.command("DATA\r\n").await;
        let mail = format!(
            "From: <customer@bench.test>\r\nTo: <{to}>\r\nSubject: Order question\r\nMessage-ID: <{message_id}>\r\nDate: Mon, 9 Nov 2026 10:00:00 +0000\r\n\r\nHello, where is my order?\r\n.\r\n"
        );
        self.command(&mail).await;
    }
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return -1;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    omnigate_e2e::bench::block_on(async {
        let mailboxes: usize = env_or("BENCH_MAILBOXES", 1000);
        let rate: u64 = env_or("BENCH_MAIL_RATE", 50);
        let seconds: u64 = env_or("BENCH_MAIL_SECONDS", 20);
        let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
        println!("email_ingest: {mailboxes} mailboxes, {rate} mails/s for {seconds}s over LMTP\n");
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();

        // Baseline: the same gateway with the email role and no mailbox.
        fresh_broker();
        let path = dir.path().join("none.toml");
        std::fs::write(
            &path,
            config(dir.path(), port, &unique_prefix("bench-email0"), 0, &run),
        )
        .unwrap();
        let gateway = Running(start_omnigate(&path));
        wait_followed(port, Duration::from_secs(60)).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let baseline = rss_mib(&gateway.0);
        drop(gateway);
        println!(
            "{:<44} {baseline:>8.1} MiB RSS",
            "baseline: gateway, no mailbox"
        );

        fresh_broker();
        let prefix = unique_prefix("bench-email");
        let path = dir.path().join("bench.toml");
        std::fs::write(&path, config(dir.path(), port, &prefix, mailboxes, &run)).unwrap();
        let gateway = Running(start_omnigate(&path));
        let followed = wait_followed(port, Duration::from_secs(300)).await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        let idle = rss_mib(&gateway.0);
        println!(
            "{:<44} {:>8.1} s",
            format!("omnigate: {mailboxes} mailboxes followed in"),
            followed.as_secs_f64()
        );
        println!(
            "{:<44} {idle:>8.1} MiB RSS  ({:.1} KiB per mailbox over the baseline; goal under 150 MiB)",
            format!("omnigate: {mailboxes} idle mailboxes"),
            (idle - baseline) * 1024.0 / mailboxes as f64
        );

        // Mail at a steady rate, spread over the mailboxes.
        let total = (rate * seconds) as usize;
        let mut lmtp = Lmtp::connect().await;
        let mut sent_at: HashMap<String, i64> = HashMap::new();
        let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate.max(1)));
        for i in 0..total {
            tick.tick().await;
            let to = format!("box{:04}.{run}@bench.test", i % mailboxes.max(1));
            let id = format!("bench-{i}.{run}@bench.test");
            lmtp.deliver(&to, &id).await;
            sent_at.insert(id, now_ms());
        }
        let config = kafka_config(&brokers(), "");
        let topic = format!("{prefix}inbound.v1");
        let records = tokio::task::spawn_blocking(move || {
            omnigate_kafka::reader::read_topic(
                &config,
                &topic,
                total,
                Duration::ZERO,
                Duration::from_secs(120),
            )
            .unwrap()
        })
        .await
        .unwrap();
        let mut latencies: Vec<i64> = records
            .iter()
            .filter_map(|r| {
                let event: serde_json::Value = serde_json::from_slice(&r.value).ok()?;
                let id = event["message"]["providerMessageId"].as_str()?;
                Some(r.timestamp_ms? - sent_at.get(id)?)
            })
            .collect();
        latencies.sort_unstable();
        println!(
            "{:<44} {:>8} of {total} on Kafka; latency p50 {} ms, p99 {} ms (goal p99 under 1000 ms); peak {:.1} MiB",
            "omnigate: LMTP delivery -> Kafka",
            latencies.len(),
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.99),
            peak_mib(&gateway.0)
        );
        drop(gateway);
    });
}

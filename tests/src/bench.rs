//! Shared pieces of the `make bench` programs.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

/// Throughput and latency of one measured run.
#[derive(Debug, Default)]
pub struct Run {
    /// Successful operations.
    pub requests: usize,
    /// Failed operations.
    pub errors: usize,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Latency of each successful operation, sorted, in microseconds.
    pub latencies_us: Vec<u32>,
}

impl Run {
    /// Gathers the (latencies, errors) of every worker task into one run.
    pub async fn collect(
        tasks: Vec<tokio::task::JoinHandle<(Vec<u32>, usize)>>,
        started: std::time::Instant,
    ) -> Self {
        let mut run = Self::default();
        for task in tasks {
            let (latencies, errors) = task.await.expect("bench worker");
            run.requests += latencies.len();
            run.errors += errors;
            run.latencies_us.extend(latencies);
        }
        run.elapsed = started.elapsed();
        run.latencies_us.sort_unstable();
        run
    }

    /// Adds another run of the same load (a later slice of it) to this one.
    pub fn absorb(&mut self, other: Run) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.elapsed += other.elapsed;
        self.latencies_us.extend(other.latencies_us);
        self.latencies_us.sort_unstable();
    }

    /// Operations per second.
    pub fn rate(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    /// A latency percentile in milliseconds (`p` in 0..=1); NaN without samples.
    pub fn percentile(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        let index = ((self.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        f64::from(self.latencies_us[index]) / 1000.0
    }

    /// Prints one line of the report.
    pub fn print(&self, name: &str, memory_mib: f64) {
        println!(
            "{name:<38} {:>9.0} /s  p50 {:>7.2} ms  p99 {:>7.2} ms  errors {:>5}  peak RSS {:>6.1} MiB",
            self.rate(),
            self.percentile(0.50),
            self.percentile(0.99),
            self.errors,
            memory_mib
        );
    }
}

/// A binary built beside the running bench (`make bench` builds them in release).
pub fn release_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let bin = exe
        .parent()
        .and_then(|p| p.parent())
        .map(|dir| dir.join(name))
        .expect("target folder");
    assert!(
        bin.exists(),
        "{} missing: make bench builds it",
        bin.display()
    );
    bin
}

/// Starts the release `omnigate serve --config <config>`, its stdout discarded.
pub fn start_omnigate(config: &Path) -> Child {
    Command::new(release_bin("omnigate"))
        .args(["serve", "--config"])
        .arg(config)
        .stdout(Stdio::null())
        .spawn()
        .expect("omnigate starts")
}

/// Starts a baseline server built beside the bench (`bench-bare-hyper`,
/// `bench-bare-websocket`) on 127.0.0.1:`port`, its stdout discarded.
pub fn start_baseline(name: &str, port: u16) -> Running {
    Running(
        Command::new(release_bin(name))
            .arg(port.to_string())
            .stdout(Stdio::null())
            .spawn()
            .expect("the baseline server starts"),
    )
}

/// The `main` of a baseline server: accepts on 127.0.0.1 at the port given as the first
/// argument (`default_port` without one), on a multi-threaded runtime like the gateway's,
/// and runs `connection` on each accepted stream in a task of its own.
pub fn serve_baseline<F>(
    default_port: u16,
    connection: fn(tokio::net::TcpStream) -> F,
) -> std::io::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(default_port);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
            loop {
                let (stream, _) = listener.accept().await?;
                tokio::spawn(connection(stream));
            }
        })
}

/// Peak resident memory of a child process, in MiB (VmHWM); NaN when unknown.
pub fn peak_mib(child: &Child) -> f64 {
    peak_mib_of(&format!("/proc/{}/status", child.id()))
}

/// Resident memory of a child process now, in MiB (VmRSS); NaN when unknown.
pub fn rss_mib(child: &Child) -> f64 {
    status_mib(&format!("/proc/{}/status", child.id()), "VmRSS:")
}

/// Peak resident memory of this process, in MiB.
pub fn own_peak_mib() -> f64 {
    peak_mib_of("/proc/self/status")
}

fn peak_mib_of(path: &str) -> f64 {
    status_mib(path, "VmHWM:")
}

/// A memory field (`VmHWM:`, `VmRSS:`) of a `/proc/<pid>/status` file, in MiB.
fn status_mib(path: &str, field: &str) -> f64 {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// CPU time (user + system, every thread) a child process has used so far, in seconds.
/// Unlike throughput it barely depends on what else the machine is doing, so it is the
/// figure to compare between builds.
pub fn cpu_seconds(child: &Child) -> f64 {
    cpu_seconds_of(&format!("/proc/{}/stat", child.id()))
}

/// CPU time this process has used so far, in seconds (see [`cpu_seconds`]).
pub fn own_cpu_seconds() -> f64 {
    cpu_seconds_of("/proc/self/stat")
}

fn cpu_seconds_of(path: &str) -> f64 {
    // utime and stime are fields 14 and 15, in USER_HZ ticks (100 per second on Linux);
    // the command name (field 2) may hold spaces, so count from its closing parenthesis.
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// The workspace root, where `scripts/` and `.tmp/` live.
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
        .to_path_buf()
}

/// Restarts `make bench`'s broker empty (`scripts/kafka.sh bench`) before a measured
/// phase, so that no phase pays for an earlier phase's log segments, page cache or
/// leftover consumer groups, and phases stay comparable.
pub fn fresh_broker() {
    let root = workspace_root();
    let status = Command::new(root.join("scripts/kafka.sh"))
        .arg("bench")
        .current_dir(&root)
        .stdout(Stdio::null())
        .status()
        .expect("scripts/kafka.sh runs");
    assert!(status.success(), "scripts/kafka.sh bench failed");
}

/// CPU time the bench broker has used so far, in seconds; NaN when it is not running.
pub fn broker_cpu_seconds() -> f64 {
    std::fs::read_to_string(workspace_root().join(".tmp/kafka-bench.pid"))
        .map(|pid| cpu_seconds_of(&format!("/proc/{}/stat", pid.trim())))
        .unwrap_or(f64::NAN)
}

/// Waits until `url` answers a GET with a 2xx, for up to 30 s.
pub async fn wait_http(url: &str) {
    for _ in 0..300 {
        if reqwest::get(url)
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{url} never came up");
}

/// Kills a child process and reaps it.
pub fn stop(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// A child process killed when this is dropped, so a bench that panics midway leaves
/// no gateway running behind it.
pub struct Running(pub Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A numeric setting from the environment, or `default`.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Unmeasured load before each measured run (`BENCH_WARMUP_SECONDS`, default 5). A
/// fresh broker is a cold JVM: its JIT compilers take seconds of CPU on the same cores
/// while the first load arrives, which would be billed to whichever run comes first.
pub fn warmup() -> Duration {
    Duration::from_secs(env_or("BENCH_WARMUP_SECONDS", 5))
}

/// The rate of a latency phase: `BENCH_PACED_RATE` events a second (default 1,000).
pub fn paced_rate() -> u64 {
    env_or("BENCH_PACED_RATE", 1_000)
}

/// A latency phase's load: publishes `BENCH_PACED` events (default 2,000), `event(i)`
/// for i from 0, to `topic` at [`paced_rate`], each in a task of its own so a slow
/// acknowledgement holds up no other. Returns once every one was acknowledged, with
/// the instant each publish began, by the id `id_of` gives its event.
pub async fn publish_paced(
    publisher: &omnigate_core::publish::Publisher,
    topic: omnigate_core::publish::Topic,
    event: impl Fn(usize) -> omnigate_model::pb::Event,
    id_of: impl Fn(&omnigate_model::pb::Event) -> String,
) -> std::collections::HashMap<String, std::time::Instant> {
    let paced: usize = env_or("BENCH_PACED", 2_000);
    let mut published = std::collections::HashMap::with_capacity(paced);
    let mut ticker = tokio::time::interval(Duration::from_micros(1_000_000 / paced_rate()));
    let mut pending = Vec::with_capacity(paced);
    for i in 0..paced {
        ticker.tick().await;
        let event = event(i);
        published.insert(id_of(&event), std::time::Instant::now());
        let publisher = publisher.clone();
        pending.push(tokio::spawn(async move {
            publisher.event(topic, event).await.unwrap()
        }));
    }
    for p in pending {
        p.await.unwrap();
    }
    published
}

/// The latency of every arrival of a published id (publish began to arrival), as a
/// run; arrivals of other ids are left out.
pub fn latencies(
    published: &std::collections::HashMap<String, std::time::Instant>,
    arrivals: &[(String, std::time::Instant)],
) -> Run {
    let mut latency = Run::default();
    for (id, at) in arrivals {
        if let Some(sent) = published.get(id) {
            latency.requests += 1;
            latency
                .latencies_us
                .push(at.duration_since(*sent).as_micros() as u32);
        }
    }
    latency.latencies_us.sort_unstable();
    latency
}

/// Runs a bench's `main` body on a multi-threaded runtime.
pub fn block_on<F: Future>(body: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(body)
}

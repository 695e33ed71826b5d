//! Process shutdown: Ctrl-C or SIGTERM cancels one token that every task watches.
//!
//! A second signal during the drain exits at once: an operator who presses Ctrl-C
//! twice, or a supervisor that signals again, never waits on a stuck broker. A task
//! that cannot go on (a fenced transactional producer, say) calls [`fail`], which
//! shuts the process down like a signal but makes it exit non-zero.

use std::{
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};
use tokio_util::sync::CancellationToken;

/// Exit code of a second signal during shutdown (128 + SIGINT, as shells report it).
pub const EXIT_SECOND_SIGNAL: i32 = 130;

/// Exit code when shutdown overran its whole budget and the process ended itself.
pub const EXIT_BUDGET_EXCEEDED: i32 = 3;

/// Margin past grace and flush before the budget's last resort ends the process.
const BUDGET_MARGIN: Duration = Duration::from_secs(2);

/// The shutdown budget: `grace` for requests, consumers and background tasks, then
/// `flush` for the producer. Every wait on the way out takes its deadline from here,
/// and, as a last resort, a thread of its own ends the process once grace, flush and
/// a small margin have passed, whatever is still blocked (a librdkafka call waiting
/// on a broker that is gone, say).
#[derive(Clone)]
pub struct Budget {
    began: Arc<OnceLock<Instant>>,
    grace: Duration,
}

impl Budget {
    /// Starts watching `shutdown`; from its cancellation on, the budget runs.
    pub fn enforce(shutdown: &CancellationToken, grace: Duration, flush: Duration) -> Self {
        let began = Arc::new(OnceLock::new());
        let (token, marker) = (shutdown.clone(), Arc::clone(&began));
        let watcher = std::thread::Builder::new()
            .name("shutdown-budget".into())
            .spawn(move || {
                futures::executor::block_on(token.cancelled());
                let _ = marker.set(Instant::now());
                let whole = grace + flush + BUDGET_MARGIN;
                std::thread::sleep(whole);
                tracing::error!(
                    budget_ms = whole.as_millis() as u64,
                    "Shutdown overran its budget; exiting without finishing"
                );
                eprintln!(
                    "omnigate: shutdown overran its budget of {} ms; exiting",
                    whole.as_millis()
                );
                std::process::exit(EXIT_BUDGET_EXCEEDED);
            });
        if let Err(err) = watcher {
            tracing::warn!(error = %err, "Cannot start the shutdown budget's watcher");
        }
        Self { began, grace }
    }

    /// What is left of the grace period: all of it until shutdown begins.
    pub fn grace_left(&self) -> Duration {
        match self.began.get() {
            Some(began) => (*began + self.grace).saturating_duration_since(Instant::now()),
            None => self.grace,
        }
    }
}

static FAILURE: OnceLock<String> = OnceLock::new();

/// Stops the process because of an unrecoverable error: records `reason` (the first
/// one wins) and cancels `shutdown`. The process then exits non-zero.
pub fn fail(shutdown: &CancellationToken, reason: impl Into<String>) {
    let reason = reason.into();
    tracing::error!(reason, "Stopping the process");
    let _ = FAILURE.set(reason);
    shutdown.cancel();
}

/// Why the process is stopping, when a task called [`fail`].
pub fn failure() -> Option<&'static str> {
    FAILURE.get().map(String::as_str)
}

/// Returns a token cancelled on SIGINT or SIGTERM; a second one exits at once.
pub fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        let mut signals = Signals::new();
        signals.next().await;
        tracing::info!("Shutdown requested; draining (a second signal exits at once)");
        trigger.cancel();
        signals.next().await;
        tracing::warn!("Second signal during shutdown; exiting now without draining");
        eprintln!("omnigate: second signal during shutdown; exiting now");
        std::process::exit(EXIT_SECOND_SIGNAL);
    });
    token
}

/// SIGINT and SIGTERM as one stream.
struct Signals {
    #[cfg(unix)]
    interrupt: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    terminate: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn new() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Self {
                interrupt: signal(SignalKind::interrupt()).ok(),
                terminate: signal(SignalKind::terminate()).ok(),
            }
        }
        #[cfg(not(unix))]
        Self {}
    }

    /// Waits for the next SIGINT or SIGTERM.
    async fn next(&mut self) {
        #[cfg(unix)]
        {
            async fn recv(signal: &mut Option<tokio::signal::unix::Signal>) {
                match signal {
                    Some(signal) => {
                        signal.recv().await;
                    }
                    None => std::future::pending().await,
                }
            }
            tokio::select! {
                () = recv(&mut self.interrupt) => {},
                () = recv(&mut self.terminate) => {},
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}

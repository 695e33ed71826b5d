//! Pauses between tries of the same work: one helper for every retry loop (consumers,
//! the router's store, the webhook log), so caps and shutdown handling are the same.

use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Doubling pauses from `first` up to `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    /// Pauses of `first`, then twice as long each time, never above `max`.
    pub fn new(first: Duration, max: Duration) -> Self {
        Self { next: first, max }
    }

    /// The next pause (the one [`Backoff::sleep`] would take), and moves on.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }

    /// Sleeps the next pause.
    pub async fn sleep(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }

    /// Sleeps the next pause unless `shutdown` fires first; false when it did.
    pub async fn sleep_unless(&mut self, shutdown: &CancellationToken) -> bool {
        pause(self.next_delay(), shutdown).await
    }
}

/// A configured list of pauses (`*_retry_delays_ms`), after which the work is given
/// up: for provider calls whose failure must be reported, not retried forever.
#[derive(Debug, Clone)]
pub struct Schedule<'a> {
    delays_ms: &'a [u64],
    taken: usize,
}

impl<'a> Schedule<'a> {
    /// Pauses of `delays_ms` milliseconds, in order.
    pub fn millis(delays_ms: &'a [u64]) -> Self {
        Self {
            delays_ms,
            taken: 0,
        }
    }

    /// How many pauses were taken so far.
    pub fn attempts(&self) -> usize {
        self.taken
    }

    /// The next pause, or None when the schedule is used up.
    pub fn next_delay(&mut self) -> Option<Duration> {
        let delay = self.delays_ms.get(self.taken).copied()?;
        self.taken += 1;
        Some(Duration::from_millis(delay))
    }
}

/// Sleeps `delay` unless `shutdown` fires first; false when it did.
pub async fn pause(delay: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        () = shutdown.cancelled() => false,
        () = tokio::time::sleep(delay) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_up_to_the_cap() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(500));
        let pauses: Vec<u128> = (0..5).map(|_| backoff.next_delay().as_millis()).collect();
        assert_eq!(pauses, [100, 200, 400, 500, 500]);
    }

    #[test]
    fn a_schedule_ends() {
        let mut schedule = Schedule::millis(&[10, 20]);
        assert_eq!(schedule.next_delay(), Some(Duration::from_millis(10)));
        assert_eq!(schedule.next_delay(), Some(Duration::from_millis(20)));
        assert_eq!(schedule.next_delay(), None);
        assert_eq!(schedule.attempts(), 2);
    }

    #[tokio::test]
    async fn shutdown_cuts_a_pause_short() {
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        let mut backoff = Backoff::new(Duration::from_secs(60), Duration::from_secs(60));
        assert!(!backoff.sleep_unless(&shutdown).await);
    }
}

//! What to do after an attempt: done, retry later (and when), or give up. Pure.

use chrono::{DateTime, Utc};
use std::time::Duration;

/// How one attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptEnd {
    /// The endpoint answered with this status.
    Answered {
        /// HTTP status code.
        status: u16,
        /// The `Retry-After` header, already parsed.
        retry_after: Option<Duration>,
    },
    /// No answer within the attempt timeout.
    TimedOut,
    /// The connection failed (refused, reset, TLS, DNS).
    ConnectionFailed(String),
    /// The SSRF guard refused the endpoint's address.
    AddressRefused(String),
}

/// The decision after an attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// A 2xx: delivered.
    Delivered,
    /// Try again after this delay.
    RetryIn(Duration),
    /// Give up on this delivery, for this reason.
    Failed(String),
    /// 410 Gone: give up and disable the endpoint.
    EndpointGone,
}

/// The retry policy from config.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Delay before each attempt; its length is the number of attempts.
    pub schedule: Vec<Duration>,
    /// Random spread of each delay, as a fraction (0.2 = ±20%).
    pub jitter: f64,
    /// The longest `Retry-After` honoured.
    pub retry_after_max: Duration,
}

impl RetryPolicy {
    /// Decides after attempt number `attempt` (1-based) ended as `end`; `random` is a
    /// number in [0, 1) that places the jitter.
    pub fn verdict(&self, attempt: usize, end: &AttemptEnd, random: f64) -> Verdict {
        let retriable = match end {
            AttemptEnd::Answered { status, .. } if (200..300).contains(status) => {
                return Verdict::Delivered;
            }
            AttemptEnd::Answered { status: 410, .. } => return Verdict::EndpointGone,
            AttemptEnd::Answered { status, .. } if (300..400).contains(status) => {
                return Verdict::Failed(format!("answered {status}: redirects are not followed"));
            }
            AttemptEnd::Answered { status, .. } => *status == 429 || *status >= 500,
            AttemptEnd::TimedOut | AttemptEnd::ConnectionFailed(_) => true,
            AttemptEnd::AddressRefused(reason) => return Verdict::Failed(reason.clone()),
        };
        let reason = describe(end);
        if !retriable {
            return Verdict::Failed(format!("{reason}: not retried"));
        }
        let Some(base) = self.schedule.get(attempt) else {
            return Verdict::Failed(format!("{reason}: all {attempt} attempts used"));
        };
        let spread = (random * 2.0 - 1.0) * self.jitter;
        let jittered = base.mul_f64((1.0 + spread).max(0.0));
        let asked = match end {
            AttemptEnd::Answered {
                retry_after: Some(after),
                ..
            } => (*after).min(self.retry_after_max),
            _ => Duration::ZERO,
        };
        Verdict::RetryIn(jittered.max(asked))
    }
}

/// A short human description of how an attempt ended.
pub fn describe(end: &AttemptEnd) -> String {
    match end {
        AttemptEnd::Answered { status, .. } => format!("answered {status}"),
        AttemptEnd::TimedOut => "timed out".into(),
        AttemptEnd::ConnectionFailed(reason) => format!("connection failed: {reason}"),
        AttemptEnd::AddressRefused(reason) => reason.clone(),
    }
}

/// Parses `Retry-After`: delay seconds or an HTTP date.
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = DateTime::parse_from_rfc2822(value).ok()?;
    Some(
        (at.with_timezone(&Utc) - now)
            .to_std()
            .unwrap_or(Duration::ZERO),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            schedule: [0, 5, 300].map(Duration::from_secs).to_vec(),
            jitter: 0.2,
            retry_after_max: Duration::from_secs(3600),
        }
    }

    fn answered(status: u16) -> AttemptEnd {
        AttemptEnd::Answered {
            status,
            retry_after: None,
        }
    }

    #[test]
    fn status_codes_decide() {
        let p = policy();
        assert_eq!(p.verdict(1, &answered(200), 0.5), Verdict::Delivered);
        assert_eq!(p.verdict(1, &answered(204), 0.5), Verdict::Delivered);
        assert_eq!(p.verdict(1, &answered(410), 0.5), Verdict::EndpointGone);
        for status in [429, 500, 502, 503, 504] {
            assert_eq!(
                p.verdict(1, &answered(status), 0.5),
                Verdict::RetryIn(Duration::from_secs(5))
            );
        }
        for status in [400, 401, 403, 404, 413, 422] {
            assert!(
                matches!(p.verdict(1, &answered(status), 0.5), Verdict::Failed(r) if r.contains("not retried"))
            );
        }
        assert!(
            matches!(p.verdict(1, &answered(307), 0.5), Verdict::Failed(r) if r.contains("redirects"))
        );
        assert_eq!(
            p.verdict(1, &AttemptEnd::TimedOut, 0.5),
            Verdict::RetryIn(Duration::from_secs(5))
        );
        assert_eq!(
            p.verdict(2, &AttemptEnd::ConnectionFailed("refused".into()), 0.5),
            Verdict::RetryIn(Duration::from_secs(300))
        );
        assert!(
            matches!(p.verdict(1, &AttemptEnd::AddressRefused("loopback".into()), 0.5), Verdict::Failed(r) if r == "loopback")
        );
    }

    #[test]
    fn the_schedule_runs_out() {
        assert!(
            matches!(policy().verdict(3, &answered(500), 0.5), Verdict::Failed(r) if r.contains("all 3 attempts"))
        );
    }

    #[test]
    fn jitter_stays_within_twenty_percent() {
        let p = policy();
        assert_eq!(
            p.verdict(1, &answered(500), 0.0),
            Verdict::RetryIn(Duration::from_secs(4))
        );
        assert_eq!(
            p.verdict(1, &answered(500), 1.0),
            Verdict::RetryIn(Duration::from_secs(6))
        );
    }

    #[test]
    fn retry_after_is_honoured_within_bounds() {
        let p = policy();
        let after = |secs| AttemptEnd::Answered {
            status: 429,
            retry_after: Some(Duration::from_secs(secs)),
        };
        assert_eq!(
            p.verdict(1, &after(60), 0.5),
            Verdict::RetryIn(Duration::from_secs(60))
        );
        // Sooner than the schedule: the schedule wins.
        assert_eq!(
            p.verdict(2, &after(1), 0.5),
            Verdict::RetryIn(Duration::from_secs(300))
        );
        // Longer than the cap: cut to the cap.
        assert_eq!(
            p.verdict(1, &after(86_400), 0.5),
            Verdict::RetryIn(Duration::from_secs(3600))
        );
    }

    #[test]
    fn retry_after_parses_seconds_and_dates() {
        let now = DateTime::parse_from_rfc3339("2015-10-21T07:27:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }
}

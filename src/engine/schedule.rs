//! When to poll a job next, and how long to back off after an error.
//!
//! The schedule learns how long the gateway takes: once a few jobs have completed, the first
//! poll of a job is aimed just before the typical completion time and later polls come at a
//! fraction of it, so a job costs few polls and its output arrives soon after it is ready.
//! Before anything is learned it starts fast and doubles up to the configured interval.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct PollSchedule {
    /// The longest wait between two polls of one job.
    pub max: Duration,
    /// The shortest.
    pub min: Duration,
    /// Smoothed time from submission to COMPLETED, once seen.
    typical: Option<Duration>,
}

impl PollSchedule {
    pub fn new(max: Duration) -> Self {
        PollSchedule {
            max,
            min: (max / 10).max(Duration::from_millis(1)),
            typical: None,
        }
    }

    /// Learns from a job that completed `took` after it was sent.
    pub fn observe(&mut self, took: Duration) {
        self.typical = Some(match self.typical {
            None => took,
            Some(t) => (t * 7 + took) / 8,
        });
    }

    /// The wait before the next poll of a job sent `elapsed` ago and polled `polls` times.
    pub fn next_delay(&self, elapsed: Duration, polls: u32) -> Duration {
        let delay = match self.typical {
            Some(typical) if elapsed < typical * 9 / 10 => typical * 9 / 10 - elapsed,
            Some(typical) => typical / 8,
            None => self.min * 2u32.saturating_pow(polls.min(16)),
        };
        delay.clamp(self.min, self.max)
    }
}

/// Exponential backoff with jitter after the `failures`-th consecutive failure.
pub fn backoff(failures: u32, base: Duration, cap: Duration) -> Duration {
    let exp = base.saturating_mul(2u32.saturating_pow(failures.min(16)));
    let capped = exp.min(cap);
    let jitter = fastrand::f64() * 0.5 + 0.75;
    capped.mul_f64(jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learns_to_poll_near_completion() {
        let mut s = PollSchedule::new(Duration::from_secs(5));
        assert_eq!(s.next_delay(Duration::ZERO, 0), Duration::from_millis(500));
        assert_eq!(s.next_delay(Duration::ZERO, 10), Duration::from_secs(5));
        s.observe(Duration::from_secs(4));
        assert!(s.next_delay(Duration::ZERO, 0) >= Duration::from_millis(3500));
        assert_eq!(
            s.next_delay(Duration::from_secs(4), 1),
            Duration::from_millis(500)
        );
    }

    #[test]
    fn backoff_is_capped() {
        let d = backoff(30, Duration::from_millis(100), Duration::from_secs(2));
        assert!(d <= Duration::from_millis(2500));
    }
}

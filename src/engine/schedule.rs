//! When to poll a job, and which request the budget serves first.
//!
//! The schedule learns the distribution of job durations in this run (the gateway's own
//! `created_at` to `completed_at` when it gives both). Once a few jobs have completed, no job is
//! polled before the low quantile of that distribution; its first poll comes one poll interval
//! after the low quantile, or at the high quantile when that is sooner, and later polls one
//! poll interval apart (`--poll-interval` stays the longest wait between two polls of a job,
//! and is the lag to the output that a user accepts). Before anything is learned the engine
//! polls every interval (`Engine::next_poll_delay`); this schedule's own unlearned answer
//! starts fast and doubles up to the interval.
//!
//! When the request budget is what limits, due polls go first, the jobs most likely done
//! first ([`PollSchedule::p_done`]), and a waiting submission gets at least one request in
//! every [`POLLS_PER_SEND`] + 1 ([`poll_next`]), so neither side is starved.

use std::time::Duration;

/// Completions seen before the learned schedule replaces the doubling one.
pub const MIN_SAMPLES: usize = 5;
/// The quantiles the schedule uses.
pub const LOW_QUANTILE: f64 = 0.1;
pub const HIGH_QUANTILE: f64 = 0.9;
/// Durations kept (a random one gives way past this).
const MAX_SAMPLES: usize = 4096;
/// When the budget is short and submissions wait, at most this many polls go between two of
/// them.
pub const POLLS_PER_SEND: u32 = 3;

#[derive(Debug, Clone)]
pub struct PollSchedule {
    /// The longest wait between two polls of one job.
    pub max: Duration,
    /// The shortest.
    pub min: Duration,
    /// Durations of completed jobs, sorted.
    samples: Vec<Duration>,
}

impl PollSchedule {
    pub fn new(max: Duration) -> Self {
        PollSchedule {
            max,
            min: (max / 10).max(Duration::from_millis(1)),
            samples: Vec::new(),
        }
    }

    /// Learns from a job that completed `took` after it was created.
    pub fn observe(&mut self, took: Duration) {
        if self.samples.len() >= MAX_SAMPLES {
            self.samples.remove(fastrand::usize(..self.samples.len()));
        }
        let at = self.samples.partition_point(|d| *d <= took);
        self.samples.insert(at, took);
    }

    /// Whether enough completions were seen to poll by the distribution.
    pub fn learned(&self) -> bool {
        self.samples.len() >= MIN_SAMPLES
    }

    /// The `q` quantile of the durations seen, once learned.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        if !self.learned() {
            return None;
        }
        let idx = ((self.samples.len() - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize;
        self.samples.get(idx).copied()
    }

    /// The earliest time after its creation that a job is polled, once learned.
    pub fn not_before(&self) -> Option<Duration> {
        self.quantile(LOW_QUANTILE)
    }

    /// When a job that was never polled is first polled, once learned.
    pub fn first_poll(&self) -> Option<Duration> {
        let low = self.quantile(LOW_QUANTILE)?;
        let high = self.quantile(HIGH_QUANTILE)?;
        Some((low + self.max).min(high).max(low))
    }

    /// The wait before the next poll of a job sent `elapsed` ago and polled `polls` times.
    pub fn next_delay(&self, elapsed: Duration, polls: u32) -> Duration {
        let (Some(low), Some(first)) = (self.not_before(), self.first_poll()) else {
            return (self.min * 2u32.saturating_pow(polls.min(16))).clamp(self.min, self.max);
        };
        let delay = if polls == 0 {
            first.saturating_sub(elapsed)
        } else {
            low.saturating_sub(elapsed).max(self.max)
        };
        delay.max(self.min)
    }

    /// The share of completed jobs that took at most `elapsed`: how likely a job sent that
    /// long ago is done (one half before anything is learned).
    pub fn p_done(&self, elapsed: Duration) -> f64 {
        if !self.learned() {
            return 0.5;
        }
        self.samples.partition_point(|d| *d <= elapsed) as f64 / self.samples.len() as f64
    }
}

/// Whether the next request of a short budget goes to a due poll rather than a waiting
/// submission: polls go first (finishing started jobs before starting new ones), but after
/// [`POLLS_PER_SEND`] polls in a row a waiting submission goes.
pub fn poll_next(polls_since_send: u32, poll_due: bool, send_waiting: bool) -> bool {
    poll_due && (!send_waiting || polls_since_send < POLLS_PER_SEND)
}

/// Due polls in the order a short budget serves them: most likely done first; among equals
/// (all done, or nothing learned) the one due longest first. Items are (elapsed, due at).
pub fn poll_order(schedule: &PollSchedule, due: &[(Duration, i64)]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..due.len()).collect();
    order.sort_by(|&a, &b| {
        let (pa, pb) = (schedule.p_done(due[a].0), schedule.p_done(due[b].0));
        pb.total_cmp(&pa).then(due[a].1.cmp(&due[b].1))
    });
    order
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

    fn s(n: f64) -> Duration {
        Duration::from_secs_f64(n)
    }

    /// Jobs of 2-8 s, evenly spread.
    fn learned_2_to_8(max: Duration) -> PollSchedule {
        let mut sched = PollSchedule::new(max);
        for i in 0..=60 {
            sched.observe(s(2.0 + i as f64 * 0.1));
        }
        sched
    }

    #[test]
    fn doubles_until_learned() {
        let mut sched = PollSchedule::new(s(5.0));
        assert_eq!(sched.next_delay(Duration::ZERO, 0), s(0.5));
        assert_eq!(sched.next_delay(Duration::ZERO, 1), s(1.0));
        assert_eq!(sched.next_delay(Duration::ZERO, 10), s(5.0));
        for _ in 0..MIN_SAMPLES - 1 {
            sched.observe(s(4.0));
        }
        assert_eq!(sched.next_delay(Duration::ZERO, 0), s(0.5));
        assert!(sched.not_before().is_none());
    }

    #[test]
    fn never_before_the_low_quantile_then_one_interval_apart() {
        let sched = learned_2_to_8(s(5.0));
        let low = sched.not_before().unwrap();
        assert!((low.as_secs_f64() - 2.6).abs() < 0.01, "{low:?}");
        // First poll: the low quantile plus one interval, capped at the high quantile.
        let first = sched.first_poll().unwrap();
        assert!((first.as_secs_f64() - 7.4).abs() < 0.01, "{first:?}");
        assert_eq!(sched.next_delay(Duration::ZERO, 0), first);
        assert_eq!(sched.next_delay(s(7.4), 1), s(5.0));
        // A job polled early (before anything was learned) waits for the low quantile.
        assert_eq!(sched.next_delay(s(0.5), 1), s(5.0));
        // With a short interval: the low quantile plus the interval.
        let quick = learned_2_to_8(s(1.0));
        assert!((quick.first_poll().unwrap().as_secs_f64() - 3.6).abs() < 0.01);
        assert_eq!(quick.next_delay(s(3.6), 1), s(1.0));
        // Past the low quantile every wait between two polls is the interval.
        for e in 26..200 {
            assert_eq!(quick.next_delay(s(e as f64 * 0.1), 3), s(1.0));
        }
    }

    #[test]
    fn p_done_follows_the_durations_seen() {
        let sched = learned_2_to_8(s(5.0));
        assert_eq!(sched.p_done(s(1.0)), 0.0);
        assert!((sched.p_done(s(5.0)) - 0.5).abs() < 0.02);
        assert_eq!(sched.p_done(s(9.0)), 1.0);
        assert_eq!(PollSchedule::new(s(5.0)).p_done(s(3.0)), 0.5);
    }

    #[test]
    fn most_likely_done_first_then_longest_due() {
        let sched = learned_2_to_8(s(5.0));
        let due = [(s(3.0), 10), (s(9.0), 30), (s(6.0), 5), (s(12.0), 20)];
        assert_eq!(poll_order(&sched, &due), vec![3, 1, 2, 0]);
    }

    /// The rule of a short budget: polls before submissions, and no side starved. A
    /// simulated budget serves a steady stream of due polls (more than it can serve) and a
    /// queue of submissions: both get requests, polls at least 3 of every 4.
    #[test]
    fn polls_first_and_nobody_starves() {
        let (mut polls, mut sends, mut since) = (0u32, 0u32, 0u32);
        let mut waiting_sends = 100u32;
        for _ in 0..400 {
            if poll_next(since, true, waiting_sends > 0) {
                polls += 1;
                since += 1;
            } else {
                assert!(waiting_sends > 0);
                sends += 1;
                waiting_sends -= 1;
                since = 0;
            }
        }
        assert_eq!(sends, 100, "every submission went");
        assert_eq!(polls, 300);
        // Nothing waits: whatever is there goes.
        assert!(poll_next(99, true, false));
        assert!(!poll_next(0, false, true));
        // A poll waiting among ever newer ones is served once it is the most likely done:
        // its chance only grows with time, and among the sure ones the oldest goes first.
        let sched = learned_2_to_8(s(5.0));
        let old = (s(30.0), 1);
        let newer: Vec<_> = (0..50).map(|i| (s(9.0 + i as f64), 100 + i)).collect();
        let mut due = newer.clone();
        due.push(old);
        assert_eq!(poll_order(&sched, &due)[0], due.len() - 1);
    }

    #[test]
    fn backoff_is_capped() {
        let d = backoff(30, Duration::from_millis(100), Duration::from_secs(2));
        assert!(d <= Duration::from_millis(2500));
    }
}

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
//! The distribution is a Kaplan-Meier estimate: a run's first completions are its short jobs,
//! so the jobs still running (each known to run at least until its last poll) count too.
//!
//! When the request budget is what limits, due polls are served the jobs most likely done
//! first ([`PollSchedule::p_done`], which counts what the job's last poll found). Whether
//! polls or waiting submissions go first is decided by what sets the batch's end
//! ([`polls_first`]): while fewer jobs are at the gateway than the budget serves during one
//! long job (the rate times the high quantile of durations, unknown and so taken as long
//! until enough jobs completed to tell it), the end is the last submission plus its run
//! time, so submissions go first. Past that, the polls owed keep the
//! budget busy longer than a new job takes, so finishing started jobs comes first: due polls
//! likely to find their job done ([`LIKELY`], or a poll interval overdue), with a waiting
//! submission getting one request in every [`POLLS_PER_SEND`] + 1 ([`poll_next`]). Neither
//! side starves: sending first fills the gateway until polls come first, polling first
//! empties it until submissions do.

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
/// While submissions wait for the budget, a poll goes before them only when its job is at
/// least this likely to be done.
pub const LIKELY: f64 = 0.5;

#[derive(Debug, Clone)]
pub struct PollSchedule {
    /// The longest wait between two polls of one job.
    pub max: Duration,
    /// The shortest.
    pub min: Duration,
    /// Durations of completed jobs, sorted.
    samples: Vec<Duration>,
    /// Jobs not done yet: how long after it was sent each was last found still running,
    /// sorted. A run's first completions are its short jobs; without these the long ones
    /// would be missing from what is learned.
    censored: Vec<Duration>,
    /// The share of jobs done by each duration seen (Kaplan-Meier over the completions and the
    /// jobs still running), in the order of `samples`.
    done_by: Vec<f64>,
    /// Completions seen in this run (not counting durations from an earlier one).
    pub seen: usize,
}

/// Points of an earlier run's distribution a run starts from: as many completions' worth, so
/// that a run's own first completions refine them and a few hundred outweigh them.
pub const HISTORY_POINTS: usize = 32;

/// Past this many durations, a completion updates the estimate only every so often (the
/// engine refreshes it on its own, see [`PollSchedule::still_running`]).
const EAGER: usize = 512;

impl PollSchedule {
    pub fn new(max: Duration) -> Self {
        PollSchedule {
            max,
            min: (max / 10).max(Duration::from_millis(1)),
            samples: Vec::new(),
            censored: Vec::new(),
            done_by: Vec::new(),
            seen: 0,
        }
    }

    /// Starts from the durations an earlier run learned (`HISTORY_POINTS` of its quantiles).
    pub fn seed(&mut self, durations: &[Duration]) {
        for d in durations {
            self.add(*d);
        }
        self.estimate();
    }

    /// What to remember of this run for the next: `HISTORY_POINTS` evenly spaced quantiles,
    /// once the durations can tell a long job (enough jobs completed, not merely the short
    /// ones) and this run saw at least a few completions of its own.
    pub fn summary(&self) -> Option<Vec<Duration>> {
        if self.seen < MIN_SAMPLES {
            return None;
        }
        self.long_job()?;
        (0..HISTORY_POINTS)
            .map(|i| self.quantile((i as f64 + 0.5) / HISTORY_POINTS as f64))
            .collect()
    }

    /// Learns from a job that completed `took` after it was created.
    pub fn observe(&mut self, took: Duration) {
        self.seen += 1;
        self.add(took);
        if self.samples.len() + self.censored.len() <= EAGER
            || self.samples.len().is_multiple_of(32)
        {
            self.estimate();
        }
    }

    fn add(&mut self, took: Duration) {
        if self.samples.len() >= MAX_SAMPLES {
            self.samples.remove(fastrand::usize(..self.samples.len()));
        }
        let at = self.samples.partition_point(|d| *d <= took);
        self.samples.insert(at, took);
    }

    /// Tells how long the jobs not done yet were known to be running (each one's elapsed time
    /// at its last poll that found it running).
    pub fn still_running(&mut self, running: impl IntoIterator<Item = Duration>) {
        self.censored.clear();
        self.censored.extend(running);
        self.censored.sort_unstable();
        self.estimate();
    }

    /// Kaplan-Meier: at each duration seen, the share still running falls by the completions
    /// there over the jobs then at risk (completed no sooner, or known running no sooner).
    fn estimate(&mut self) {
        self.done_by.clear();
        let (n, mut survive, mut censored_before) = (self.samples.len(), 1.0f64, 0usize);
        for (i, d) in self.samples.iter().enumerate() {
            while censored_before < self.censored.len() && self.censored[censored_before] < *d {
                censored_before += 1;
            }
            let at_risk = (n - i) + (self.censored.len() - censored_before);
            survive *= 1.0 - 1.0 / at_risk as f64;
            self.done_by.push(1.0 - survive);
        }
    }

    /// How long a long job runs: the high quantile, once the durations can tell it (enough
    /// jobs have completed, not merely the short ones).
    pub fn long_job(&self) -> Option<Duration> {
        let told = self
            .done_by
            .last()
            .is_some_and(|p| *p >= HIGH_QUANTILE - 1e-9);
        self.quantile(HIGH_QUANTILE).filter(|_| told)
    }

    /// Whether enough completions were seen to poll by the distribution.
    pub fn learned(&self) -> bool {
        self.samples.len() >= MIN_SAMPLES
    }

    /// The share of jobs done within `t` (0 before anything is learned).
    fn cdf(&self, t: Duration) -> f64 {
        let seen = self.samples.partition_point(|d| *d <= t);
        match seen.checked_sub(1) {
            Some(i) => self.done_by.get(i).copied().unwrap_or(1.0),
            None => 0.0,
        }
    }

    /// The `q` quantile of the durations, once learned: the shortest duration seen by which
    /// that share of jobs is done, or the longest seen when too many still run to tell.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        if !self.learned() {
            return None;
        }
        let idx = self
            .done_by
            .partition_point(|p| *p < q.clamp(0.0, 1.0) - 1e-9);
        self.samples.get(idx.min(self.samples.len() - 1)).copied()
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

    /// How likely a job sent `elapsed` ago is done, given that its last poll, `last` after it
    /// was sent, found it not done: of the jobs still running at `last`, the share estimated
    /// done by `elapsed` (one half before anything is learned; certain once every job is
    /// estimated done by `last`).
    pub fn p_done(&self, elapsed: Duration, last: Option<Duration>) -> f64 {
        if !self.learned() {
            return 0.5;
        }
        let before = last.map_or(0.0, |l| self.cdf(l));
        if before >= 1.0 - 1e-9 {
            return 1.0;
        }
        ((self.cdf(elapsed) - before) / (1.0 - before)).clamp(0.0, 1.0)
    }
}

/// Whether the next request of a short budget goes to a due poll rather than a waiting
/// submission: polls go first (finishing started jobs before starting new ones), but after
/// [`POLLS_PER_SEND`] polls in a row a waiting submission goes.
pub fn poll_next(polls_since_send: u32, poll_due: bool, send_waiting: bool) -> bool {
    poll_due && (!send_waiting || polls_since_send < POLLS_PER_SEND)
}

/// Whether due polls go before waiting submissions when the budget (`rate` requests a
/// second) is what limits: when more jobs are at the gateway than the budget serves while one
/// `long` job runs.
pub fn polls_first(at_gateway: u64, rate: f64, long: Duration) -> bool {
    at_gateway as f64 > rate * long.as_secs_f64()
}

/// A due poll, as the budget weighs it.
#[derive(Debug, Clone, Copy)]
pub struct DuePoll {
    /// Since the job was sent.
    pub elapsed: Duration,
    /// Since the job was sent, when its last poll in this run found it not done.
    pub last: Option<Duration>,
    /// When it was due (unix milliseconds).
    pub due_at: i64,
}

/// Due polls in the order a short budget serves them: most likely done first; among equals
/// (all done, or nothing learned) the one due longest first.
pub fn poll_order(schedule: &PollSchedule, due: &[DuePoll]) -> Vec<usize> {
    let p: Vec<f64> = due
        .iter()
        .map(|d| schedule.p_done(d.elapsed, d.last))
        .collect();
    let mut order: Vec<usize> = (0..due.len()).collect();
    order.sort_by(|&a, &b| {
        p[b].total_cmp(&p[a])
            .then(due[a].due_at.cmp(&due[b].due_at))
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

    fn due(elapsed: f64, last: Option<f64>, due_at: i64) -> DuePoll {
        DuePoll {
            elapsed: s(elapsed),
            last: last.map(s),
            due_at,
        }
    }

    #[test]
    fn p_done_follows_the_durations_seen() {
        let sched = learned_2_to_8(s(5.0));
        assert_eq!(sched.p_done(s(1.0), None), 0.0);
        assert!((sched.p_done(s(5.0), None) - 0.5).abs() < 0.02);
        assert_eq!(sched.p_done(s(9.0), None), 1.0);
        assert_eq!(PollSchedule::new(s(5.0)).p_done(s(3.0), None), 0.5);
        // A poll that found the job processing at 5 s: of the jobs longer than 5 s, about a
        // third are done by 6 s, all by 8 s.
        let after = sched.p_done(s(6.0), Some(s(5.0)));
        assert!((after - 1.0 / 3.0).abs() < 0.04, "{after}");
        assert_eq!(sched.p_done(s(8.0), Some(s(5.0))), 1.0);
        assert_eq!(sched.p_done(s(5.0), Some(s(5.0))), 0.0);
        // Past every duration seen, a job is as good as done.
        assert_eq!(sched.p_done(s(12.0), Some(s(10.0))), 1.0);
    }

    #[test]
    fn most_likely_done_first_then_longest_due() {
        let sched = learned_2_to_8(s(5.0));
        let due = [
            due(3.0, None, 10),
            due(9.0, None, 30),
            due(6.0, None, 5),
            due(12.0, None, 20),
            // Sent long ago, but found processing a moment ago.
            due(7.0, Some(6.9), 1),
        ];
        assert_eq!(poll_order(&sched, &due), vec![3, 1, 2, 0, 4]);
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
        let old = due(30.0, Some(8.0), 1);
        let newer: Vec<_> = (0..50)
            .map(|i| due(9.0 + i as f64, None, 100 + i))
            .collect();
        let mut due = newer.clone();
        due.push(old);
        assert_eq!(poll_order(&sched, &due)[0], due.len() - 1);
    }

    #[test]
    fn submissions_first_until_the_gateway_holds_more_than_one_long_job_of_requests() {
        // 20 requests a second, jobs up to 18 s: 360 requests pass while one runs.
        assert!(!polls_first(0, 20.0, s(18.0)));
        assert!(!polls_first(360, 20.0, s(18.0)));
        assert!(polls_first(361, 20.0, s(18.0)));
        assert!(polls_first(75, 10.0, s(7.4)));
    }

    #[test]
    fn jobs_still_running_lengthen_what_is_learned() {
        // The first five completions of a run are short; 20 more jobs are known to have run
        // past 10 s. Without them the high quantile would be 3 s.
        let mut sched = PollSchedule::new(s(5.0));
        for d in [1.0, 1.5, 2.0, 2.5, 3.0] {
            sched.observe(s(d));
        }
        assert_eq!(sched.quantile(HIGH_QUANTILE), Some(s(3.0)));
        sched.still_running((0..20).map(|_| s(10.0)));
        assert!(
            sched.p_done(s(3.0), None) < 0.25,
            "{}",
            sched.p_done(s(3.0), None)
        );
        // Too many still run to tell the high quantile: the longest seen, and how long a long
        // job runs is not known.
        assert_eq!(sched.quantile(HIGH_QUANTILE), Some(s(3.0)));
        assert_eq!(sched.long_job(), None);
        assert_eq!(learned_2_to_8(s(5.0)).long_job(), Some(s(7.4)));
        assert!(sched.quantile(LOW_QUANTILE).unwrap() <= s(3.0));
        // A job found running at 2 s, now at 3 s: one in about twenty of those still
        // running at 2 s has completed by 3 s.
        let p = sched.p_done(s(3.0), Some(s(2.0)));
        assert!(p > 0.0 && p < 0.15, "{p}");
    }

    #[test]
    fn a_run_remembers_its_quantiles_and_the_next_starts_from_them() {
        let mut sched = PollSchedule::new(s(5.0));
        for i in 0..MIN_SAMPLES - 1 {
            sched.observe(s(2.0 + i as f64));
        }
        assert_eq!(sched.summary(), None, "too few completions to remember");
        let sched = learned_2_to_8(s(5.0));
        let points = sched.summary().unwrap();
        assert_eq!(points.len(), HISTORY_POINTS);
        assert!(points.windows(2).all(|w| w[0] <= w[1]));
        assert!(points[0] >= s(2.0) && points[HISTORY_POINTS - 1] <= s(8.0));
        let mut next = PollSchedule::new(s(5.0));
        next.seed(&points);
        assert!(next.learned() && next.seen == 0);
        let low = next.not_before().unwrap().as_secs_f64();
        assert!((low - 2.6).abs() < 0.3, "{low}");
        // Remembering needs completions of the run's own.
        assert_eq!(next.summary(), None);
        // Too many still running to tell a long job: nothing worth remembering.
        let mut early = learned_2_to_8(s(5.0));
        early.still_running((0..500).map(|_| s(9.0)));
        assert_eq!(early.summary(), None);
    }

    #[test]
    fn backoff_is_capped() {
        let d = backoff(30, Duration::from_millis(100), Duration::from_secs(2));
        assert!(d <= Duration::from_millis(2500));
    }
}

//! The request budget: one token bucket for every request to the gateway (submissions, status
//! calls, `doctor`'s checks), shared by every clone of a [`super::Gateway`] and so by every
//! worker. Downloads from the output host and uploads to a bucket do not draw from it.
//!
//! Its rate is learned: until the gateway first answers 429 only `--max-rps` (when given)
//! limits it. A 429 pauses every request for its `Retry-After` and cuts the rate at once, to
//! a little below what the gateway answered in the last second; then the rate comes back
//! quickly to just under the level that met the 429, and probes above it slowly, and only
//! while the budget is what limits (no request wants a token that is not there, nothing is
//! learned). The pure part, [`Bucket`], takes the time as an argument.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The longest a blocking take waits, whatever the pauses say.
const MAX_BLOCKING_WAIT: Duration = Duration::from_secs(300);
/// After a 429, the rate is cut to this share of what the gateway answered in the last second.
const CUT: f64 = 0.9;
/// The rate comes back quickly (by `RECOVER` a second) up to this share of the level cut from,
const PLATEAU: f64 = 0.97;
const RECOVER: f64 = 0.03;
/// and above it by `PROBE` a second.
const PROBE: f64 = 0.002;
/// The lowest rate learned, in requests a second.
const FLOOR: f64 = 0.2;

/// A token bucket with a learned rate; every method takes `now`.
#[derive(Debug, Clone)]
pub struct Bucket {
    /// The user's known quota (`--max-rps`): the rate never goes above it.
    ceiling: Option<f64>,
    /// The rate learned from 429s; `None` until the first.
    learned: Option<f64>,
    /// The rate (or the gateway's answers a second) at the last cut.
    cut_from: f64,
    tokens: f64,
    last: Instant,
    paused_until: Option<Instant>,
    last_cut: Option<Instant>,
    /// When the answers of the last second came (not 429s).
    answered: VecDeque<Instant>,
    /// When a take last found no token: the budget was what limited.
    short_at: Option<Instant>,
    /// 429s seen, and the cuts they caused.
    pub rate_limited: u64,
    pub cuts: u64,
}

impl Bucket {
    pub fn new(ceiling: Option<f64>, now: Instant) -> Self {
        Bucket {
            ceiling: ceiling.filter(|r| r.is_finite() && *r > 0.0),
            learned: None,
            cut_from: 0.0,
            tokens: 1.0,
            last: now,
            paused_until: None,
            last_cut: None,
            answered: VecDeque::new(),
            short_at: None,
            rate_limited: 0,
            cuts: 0,
        }
    }

    /// Sets the known quota (`--max-rps`); `None` lifts it.
    pub fn set_ceiling(&mut self, ceiling: Option<f64>) {
        self.ceiling = ceiling.filter(|r| r.is_finite() && *r > 0.0);
    }

    /// Requests a second allowed now; `None` when nothing limits them.
    pub fn rate(&self) -> Option<f64> {
        match (self.ceiling, self.learned) {
            (Some(c), Some(l)) => Some(c.min(l)),
            (c, l) => c.or(l),
        }
    }

    /// At most one second's worth of requests at once (at least one).
    fn capacity(&self) -> f64 {
        self.rate().map_or(f64::INFINITY, |r| r.max(1.0))
    }

    /// Takes a token, or tells how long until one is there.
    pub fn try_take(&mut self, now: Instant) -> Result<(), Duration> {
        if let Some(until) = self.paused_until {
            if now < until {
                self.short_at = Some(now);
                return Err(until - now);
            }
            self.paused_until = None;
        }
        self.refill(now);
        let Some(rate) = self.rate() else {
            return Ok(());
        };
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        self.short_at = Some(now);
        Err(Duration::from_secs_f64((1.0 - self.tokens) / rate))
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.probe(now, elapsed);
        match self.rate() {
            Some(rate) => self.tokens = (self.tokens + elapsed * rate).min(self.capacity()),
            None => self.tokens = 1.0,
        }
    }

    /// Raises the learned rate while the budget limits and no 429 came for a second.
    fn probe(&mut self, now: Instant, elapsed: f64) {
        let Some(learned) = self.learned else {
            return;
        };
        let limiting = self
            .short_at
            .is_some_and(|t| now.saturating_duration_since(t) < Duration::from_secs(1));
        let calm = self
            .last_cut
            .is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(1));
        if !limiting || !calm || self.ceiling.is_some_and(|c| learned >= c) {
            return;
        }
        let step = if learned < self.cut_from * PLATEAU {
            RECOVER
        } else {
            PROBE
        };
        let raised = learned * (1.0 + step * elapsed.min(1.0));
        let raised = if learned < self.cut_from * PLATEAU {
            raised.min(self.cut_from * PLATEAU)
        } else {
            raised
        };
        self.learned = Some(raised);
    }

    /// A token taken for nothing comes back.
    pub fn give_back(&mut self) {
        if self.rate().is_some() {
            self.tokens = (self.tokens + 1.0).min(self.capacity());
        }
    }

    /// An answer that was not a 429 came back.
    pub fn answered(&mut self, now: Instant) {
        self.answered.push_back(now);
        self.forget_old(now);
    }

    fn forget_old(&mut self, now: Instant) {
        while self
            .answered
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) > Duration::from_secs(1))
        {
            self.answered.pop_front();
        }
        while self.answered.len() > 100_000 {
            self.answered.pop_front();
        }
    }

    /// A 429 for a request sent at `sent`: every request waits for `retry_after` (1 s when
    /// none is given), and, unless it was sent before the last cut, the rate is cut.
    pub fn rate_limited(&mut self, sent: Instant, retry_after: Option<Duration>, now: Instant) {
        self.rate_limited += 1;
        let pause = retry_after
            .unwrap_or(Duration::from_secs(1))
            .min(MAX_BLOCKING_WAIT);
        let until = now + pause;
        self.paused_until = Some(self.paused_until.map_or(until, |u| u.max(until)));
        if self.last_cut.is_some_and(|cut| sent <= cut) {
            return;
        }
        self.forget_old(now);
        let answered = self.answered.len() as f64;
        let from = match self.rate() {
            Some(rate) if answered > 0.0 => rate.min(answered),
            Some(rate) => rate,
            None => answered.max(1.0),
        };
        self.cut_from = from;
        self.learned = Some((from * CUT).max(FLOOR));
        self.tokens = self.tokens.min(0.0);
        self.last = self.last.max(now);
        self.last_cut = Some(now);
        self.cuts += 1;
    }

    /// The rate, when the budget is what limits the requests (a take found no token in the
    /// last two seconds).
    pub fn limiting_rate(&self, now: Instant) -> Option<f64> {
        let short = self
            .short_at
            .is_some_and(|t| now.saturating_duration_since(t) < Duration::from_secs(2));
        if short {
            self.rate()
        } else {
            None
        }
    }
}

/// Proof that a token was taken for one request.
#[derive(Debug)]
pub struct Ticket {
    /// When it was taken: a 429 for a request sent before the last cut cuts nothing more.
    pub(super) at: Instant,
}

/// The bucket shared by every clone of a gateway.
#[derive(Debug, Clone)]
pub struct RequestBudget {
    inner: Arc<Mutex<Bucket>>,
}

impl Default for RequestBudget {
    fn default() -> Self {
        RequestBudget::new(None)
    }
}

impl RequestBudget {
    pub fn new(ceiling: Option<f64>) -> Self {
        RequestBudget {
            inner: Arc::new(Mutex::new(Bucket::new(ceiling, Instant::now()))),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Bucket> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_ceiling(&self, ceiling: Option<f64>) {
        self.lock().set_ceiling(ceiling);
    }

    /// A token now, or how long until one is there.
    pub fn try_take(&self) -> Result<Ticket, Duration> {
        let now = Instant::now();
        self.lock().try_take(now).map(|_| Ticket { at: now })
    }

    /// A token, waiting for it (at most 300 s: then the request goes all the same).
    pub fn take(&self) -> Ticket {
        let start = Instant::now();
        for _ in 0..100_000 {
            match self.try_take() {
                Ok(ticket) => return ticket,
                Err(wait) if start.elapsed() < MAX_BLOCKING_WAIT => {
                    std::thread::sleep(wait.clamp(Duration::from_millis(1), Duration::from_secs(1)))
                }
                Err(_) => break,
            }
        }
        Ticket { at: Instant::now() }
    }

    /// Returns a token taken for a request that was not made after all.
    pub fn give_back(&self, ticket: Ticket) {
        let _ = ticket;
        self.lock().give_back();
    }

    pub(super) fn answered(&self) {
        self.lock().answered(Instant::now());
    }

    pub(super) fn rate_limited(&self, ticket: &Ticket, retry_after: Option<Duration>) {
        self.lock()
            .rate_limited(ticket.at, retry_after, Instant::now());
    }

    /// Requests a second allowed now, if anything limits them.
    pub fn rate(&self) -> Option<f64> {
        self.lock().rate()
    }

    /// The rate, when it is what limits the requests.
    pub fn limiting_rate(&self) -> Option<f64> {
        self.lock().limiting_rate(Instant::now())
    }

    /// 429s seen so far.
    pub fn rate_limited_count(&self) -> u64 {
        self.lock().rate_limited
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn unlimited_until_told_or_cut() {
        let t0 = Instant::now();
        let mut b = Bucket::new(None, t0);
        for _ in 0..1000 {
            assert!(b.try_take(t0).is_ok());
        }
        assert_eq!(b.rate(), None);
    }

    #[test]
    fn a_ceiling_spaces_requests() {
        let t0 = Instant::now();
        let mut b = Bucket::new(Some(10.0), t0);
        let mut taken = 0;
        for i in 0..=2000 {
            if b.try_take(t0 + ms(i)).is_ok() {
                taken += 1;
            }
        }
        // One token at the start, then ten a second for two seconds.
        assert!((20..=22).contains(&taken), "{taken}");
        let wait = b.try_take(t0 + ms(2000)).unwrap_err();
        assert!(wait <= ms(100), "{wait:?}");
    }

    #[test]
    fn a_429_pauses_everything_and_cuts_to_what_was_answered() {
        let t0 = Instant::now();
        let mut b = Bucket::new(None, t0);
        for i in 0..10 {
            b.answered(t0 + ms(i * 10));
        }
        b.rate_limited(t0 + ms(95), Some(Duration::from_secs(1)), t0 + ms(100));
        let rate = b.rate().unwrap();
        assert!((rate - 9.0).abs() < 1e-9, "{rate}");
        assert_eq!(
            b.try_take(t0 + ms(600)).unwrap_err(),
            ms(500),
            "paused for Retry-After"
        );
        // 429s of requests sent before the cut cut nothing more.
        b.rate_limited(t0 + ms(99), Some(Duration::from_secs(1)), t0 + ms(120));
        assert_eq!(b.cuts, 1);
        assert_eq!(b.rate_limited, 2);
        assert!(b.try_take(t0 + ms(1200)).is_ok() || b.try_take(t0 + ms(1300)).is_ok());
    }

    #[test]
    fn recovers_quickly_then_probes_slowly_and_only_when_short() {
        let t0 = Instant::now();
        let mut b = Bucket::new(None, t0);
        for _ in 0..20 {
            b.answered(t0);
        }
        b.rate_limited(t0, None, t0);
        assert!((b.rate().unwrap() - 18.0).abs() < 1e-9);
        // Idle (never short): no probing.
        let _ = b.try_take(t0 + Duration::from_secs(5));
        let _ = b.try_take(t0 + Duration::from_secs(6));
        assert!(b.rate().unwrap() < 18.1, "{:?}", b.rate());
        // Busy: every millisecond a take.
        let mut t = t0 + Duration::from_secs(6);
        for _ in 0..10_000 {
            t += ms(1);
            let _ = b.try_take(t);
        }
        let after_10s = b.rate().unwrap();
        assert!(after_10s > 19.3 && after_10s < 20.0, "{after_10s}");
        for _ in 0..10_000 {
            t += ms(1);
            let _ = b.try_take(t);
        }
        let after_20s = b.rate().unwrap();
        assert!(after_20s > after_10s && after_20s < 20.5, "{after_20s}");
    }

    #[test]
    fn the_ceiling_bounds_the_learned_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(None, t0);
        for _ in 0..50 {
            b.answered(t0);
        }
        b.rate_limited(t0, None, t0);
        assert!((b.rate().unwrap() - 45.0).abs() < 1e-9);
        b.set_ceiling(Some(5.0));
        assert_eq!(b.rate(), Some(5.0));
        b.set_ceiling(None);
        assert!((b.rate().unwrap() - 45.0).abs() < 1e-9);
    }
}

//! The engine's own state: whether it sends (its [`Mode`]), how many requests it keeps in
//! flight, an outage of the gateway, and why the run stops. How many requests a second go to
//! the gateway is the request budget's business (`gateway::budget`), learned from 429s.

use super::{backoff, Engine, EngineError, StopReason, MAX_RATE_LIMIT_WAIT};
use crate::ledger::Event;
use std::time::{Duration, Instant};

/// Whether the engine sends new jobs.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Mode {
    /// Sending as jobs become sendable.
    Sending,
    /// Sending waits until then (a 429's `Retry-After`, or a pause after a failed connection).
    PausedUntil(Instant),
    /// Nothing new is sent; the jobs at the gateway are still polled and downloaded to the end
    /// (a budget, an empty wallet).
    Draining(StopReason),
    /// Nothing new is dispatched at all (a refused key, a gone or wrong gateway, Ctrl-C): the
    /// run ends once what is in flight returns.
    Halted(StopReason),
}

impl Mode {
    /// Why the run stops, the first reason met (Ctrl-C replaces it).
    pub(super) fn stop_reason(&self) -> Option<&StopReason> {
        match self {
            Mode::Draining(reason) | Mode::Halted(reason) => Some(reason),
            Mode::Sending | Mode::PausedUntil(_) => None,
        }
    }

    pub(super) fn is_halted(&self) -> bool {
        matches!(self, Mode::Halted(_))
    }

    /// Sends, or will once a pause is over.
    pub(super) fn may_send(&self) -> bool {
        matches!(self, Mode::Sending | Mode::PausedUntil(_))
    }
}

/// Failed connections in a row, and when the first of them failed.
#[derive(Debug, Clone, Copy)]
pub(super) struct Outage {
    pub(super) failures: u32,
    pub(super) since: Instant,
}

/// What one pass of dispatching did.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) struct Pass {
    /// Some request was handed to a worker.
    pub(super) dispatched: bool,
    /// Jobs were held for the budget and none was sent: there may be more to look at right
    /// away.
    pub(super) held_only: bool,
}

/// What a worker is doing for a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum InFlight {
    Probe,
    Submit,
    Poll,
    Download,
}

impl<'a> Engine<'a> {
    /// Whether a submission may be sent now (room in flight, and no pause or stop); a pause
    /// that is over ends here.
    pub(super) fn can_send(&mut self) -> bool {
        if !self.mode.may_send() || self.in_flight.len() >= self.limit {
            return false;
        }
        match self.mode {
            Mode::PausedUntil(until) if Instant::now() < until => false,
            _ => {
                self.mode = Mode::Sending;
                true
            }
        }
    }

    /// Pauses sending until `until`; `keep_later` keeps a pause that already ends later.
    fn pause_until(&mut self, until: Instant, keep_later: bool) {
        self.mode = match self.mode {
            Mode::PausedUntil(u) if keep_later => Mode::PausedUntil(u.max(until)),
            Mode::Sending | Mode::PausedUntil(_) => Mode::PausedUntil(until),
            _ => return,
        };
    }

    pub(super) fn note_success(&mut self) {
        self.successes_since_429 += 1;
        if self.successes_since_429 >= 20 && self.limit < self.options.concurrency.max(1) {
            self.limit += 1;
            self.successes_since_429 = 0;
        }
    }

    /// A 429. The request budget (`gateway::budget`) already paused every request for its
    /// `Retry-After` (capped) and cut its rate; here a wait long enough to notice is
    /// recorded, and shown by the progress display.
    pub(super) fn on_rate_limited(
        &mut self,
        retry_after: Option<Duration>,
    ) -> Result<(), EngineError> {
        self.successes_since_429 = 0;
        let pause = retry_after
            .unwrap_or(Duration::from_secs(1))
            .min(MAX_RATE_LIMIT_WAIT);
        let until = Instant::now() + pause;
        let extends = self
            .rate_limited_until
            .is_none_or(|u| until > u + Duration::from_secs(1));
        self.rate_limited_until = Some(self.rate_limited_until.map_or(until, |u| u.max(until)));
        if pause >= Duration::from_secs(2) && extends {
            let asked = retry_after
                .map(|d| format!("Retry-After {} s", d.as_secs()))
                .unwrap_or_else(|| "no Retry-After".into());
            self.ledger
                .append(vec![Event::new(None, None, "rate_limited").detail(
                    format!(
                    "rate limited by the gateway: waiting {} s ({asked}; waits are capped at {} s)",
                    pause.as_secs(),
                    MAX_RATE_LIMIT_WAIT.as_secs()
                ),
                )])?;
        }
        Ok(())
    }

    pub(super) fn reachable(&mut self) {
        self.outage = None;
    }

    /// A connection could not be made. After `max_unreachable` such failures in a row, spread
    /// over at least a few seconds (a burst of parallel requests failing at once is one
    /// outage, not many), the run gives up and leaves the rest for the next one.
    pub(super) fn on_unreachable(&mut self, reason: &str) {
        let outage = self.outage.get_or_insert(Outage {
            failures: 0,
            since: Instant::now(),
        });
        outage.failures += 1;
        let Outage { failures, since } = *outage;
        let pause = backoff(failures, Duration::from_millis(250), Duration::from_secs(5));
        self.pause_until(Instant::now() + pause, false);
        if failures >= self.options.max_unreachable && since.elapsed() >= Duration::from_secs(2) {
            self.stop_with(StopReason::Unreachable {
                message: format!(
                    "the gateway at {} cannot be reached ({reason}); unsent jobs stay planned and the next `run` sends them",
                    self.gateway.config().base_url
                ),
            });
        }
    }

    /// Stops sending. A refused key or a gone gateway fails every request alike: the run
    /// halts once what is in flight returns. A budget or an empty wallet only stops sending;
    /// the jobs already at the gateway are still polled and downloaded to the end. The first
    /// reason is the one the run reports.
    pub(super) fn stop_with(&mut self, reason: StopReason) {
        let halts = matches!(
            reason,
            StopReason::Unauthorized { .. }
                | StopReason::Unreachable { .. }
                | StopReason::Misconfigured { .. }
                | StopReason::Interrupted
        );
        let mode = std::mem::replace(&mut self.mode, Mode::Sending);
        self.mode = match mode {
            Mode::Halted(first) => Mode::Halted(first),
            Mode::Draining(first) if halts => Mode::Halted(first),
            Mode::Draining(first) => Mode::Draining(first),
            Mode::Sending | Mode::PausedUntil(_) if halts => Mode::Halted(reason),
            Mode::Sending | Mode::PausedUntil(_) => Mode::Draining(reason),
        };
    }

    /// Ctrl-C: nothing new is dispatched, and the run reports the interruption whatever
    /// stopped it before.
    pub(super) fn interrupt(&mut self) {
        self.mode = Mode::Halted(StopReason::Interrupted);
    }
}

//! Fault injection: the rate limiter and the seeded dice.
//!
//! Every random choice is drawn from its own stream, keyed by the seed and by the index of the
//! request, job or callback it decides, so that one choice never shifts another: with the same
//! seed, the 7th job fails whether or not the 3rd request was answered 500.

use std::time::Instant;

/// The independent streams of random choices.
#[derive(Clone, Copy)]
#[repr(u64)]
pub enum Stream {
    Flaky = 1,
    Drop = 2,
    Outcome = 3,
    ProcessingTime = 4,
    CallbackDrop = 5,
}

/// A generator for one decision: the same (seed, stream, index) always gives the same numbers.
pub fn dice(seed: u64, stream: Stream, index: u64) -> fastrand::Rng {
    let mixed =
        splitmix(splitmix(seed ^ (stream as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)) ^ index);
    fastrand::Rng::with_seed(mixed)
}

/// `true` with probability `rate`.
pub fn chance(seed: u64, stream: Stream, index: u64, rate: f64) -> bool {
    rate > 0.0 && dice(seed, stream, index).f64() < rate
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A token bucket: `rps` tokens a second, holding at most one second's worth (at least one).
pub struct TokenBucket {
    rps: f64,
    capacity: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rps: f64) -> Self {
        let capacity = rps.max(1.0);
        TokenBucket {
            rps,
            capacity,
            tokens: capacity,
            last: Instant::now(),
        }
    }

    /// Takes a token, or tells how many whole seconds to wait before one is there.
    pub fn take(&mut self) -> Result<(), u64> {
        self.take_at(Instant::now())
    }

    fn take_at(&mut self, now: Instant) -> Result<(), u64> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rps).min(self.capacity);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            let wait = ((1.0 - self.tokens) / self.rps).ceil();
            Err((wait as u64).max(1))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_allows_a_burst_then_refuses_then_refills() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(5.0);
        bucket.last = start;
        for _ in 0..5 {
            assert!(bucket.take_at(start).is_ok());
        }
        assert_eq!(bucket.take_at(start), Err(1));
        assert!(bucket.take_at(start + Duration::from_millis(250)).is_ok());
        let mut slow = TokenBucket::new(0.1);
        slow.last = start;
        assert!(slow.take_at(start).is_ok());
        assert_eq!(slow.take_at(start), Err(10));
    }

    #[test]
    fn dice_are_reproducible_and_streams_independent() {
        assert_eq!(
            dice(7, Stream::Outcome, 3).u64(..),
            dice(7, Stream::Outcome, 3).u64(..)
        );
        assert_ne!(
            dice(7, Stream::Outcome, 3).u64(..),
            dice(7, Stream::Flaky, 3).u64(..)
        );
        assert!(!chance(1, Stream::Drop, 0, 0.0));
        assert!(chance(1, Stream::Drop, 0, 1.0));
        let hits = (0..10_000)
            .filter(|&i| chance(9, Stream::Flaky, i, 0.3))
            .count();
        assert!((2_700..3_300).contains(&hits), "{hits}");
    }
}

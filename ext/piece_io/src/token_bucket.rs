//! A token bucket for host-level rate limits, shared by threads.
//!
//! Tokens may go negative: a reservation always succeeds at once and returns how long the caller must wait for
//! the debt to be repaid. Waiting callers therefore queue in reservation order and share the rate, a request
//! larger than the burst simply waits `n / rate`, and asyncio callers can sleep on the loop instead of blocking.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::{Error, Result};

/// The arithmetic of the bucket at explicit instants (seconds since an origin), so tests drive the clock.
#[derive(Debug, Clone, PartialEq)]
pub struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: f64,
}

impl Bucket {
    /// A full bucket of `burst` tokens (one second of `rate` by default) refilling at `rate` per second.
    pub fn new(rate: f64, burst: Option<f64>, now: f64) -> Result<Self> {
        let burst = check(rate, burst)?;
        Ok(Bucket {
            rate,
            burst,
            tokens: burst,
            last: now,
        })
    }

    pub fn rate(&self) -> f64 {
        self.rate
    }

    pub fn burst(&self) -> f64 {
        self.burst
    }

    fn refill(&mut self, now: f64) {
        if now > self.last {
            self.tokens = (self.tokens + (now - self.last) * self.rate).min(self.burst);
            self.last = now;
        }
    }

    /// Take `n` tokens now and return the seconds until they are covered (0 when available or unlimited).
    pub fn reserve(&mut self, n: u64, now: f64) -> f64 {
        if self.rate == 0.0 {
            return 0.0;
        }
        self.refill(now);
        self.tokens -= n as f64;
        if self.tokens >= 0.0 {
            0.0
        } else {
            -self.tokens / self.rate
        }
    }

    /// Take `n` tokens only if they are available now.
    pub fn try_acquire(&mut self, n: u64, now: f64) -> bool {
        if self.rate == 0.0 {
            return true;
        }
        self.refill(now);
        if self.tokens >= n as f64 {
            self.tokens -= n as f64;
            true
        } else {
            false
        }
    }

    /// Change the rate and burst; tokens accrued so far count at the old rate, and debt is kept.
    pub fn set_rate(&mut self, rate: f64, burst: Option<f64>, now: f64) -> Result<()> {
        let burst = check(rate, burst)?;
        self.refill(now);
        if self.rate == 0.0 {
            // Leaving unlimited mode starts with a full bucket, as a new bucket would.
            self.tokens = burst;
        }
        self.rate = rate;
        self.burst = burst;
        self.tokens = self.tokens.min(burst);
        self.last = self.last.max(now);
        Ok(())
    }
}

fn check(rate: f64, burst: Option<f64>) -> Result<f64> {
    if !(rate.is_finite() && rate >= 0.0) {
        return Err(Error::InvalidArgument(
            "rate must be a finite number >= 0".into(),
        ));
    }
    let burst = burst.unwrap_or(rate);
    if !(burst.is_finite() && burst >= 0.0) {
        return Err(Error::InvalidArgument(
            "burst must be a finite number >= 0".into(),
        ));
    }
    Ok(burst)
}

/// A [`Bucket`] on the monotonic clock behind a mutex.
#[derive(Debug)]
pub struct TokenBucket {
    origin: Instant,
    bucket: Mutex<Bucket>,
}

impl TokenBucket {
    pub fn new(rate: f64, burst: Option<f64>) -> Result<Self> {
        Ok(TokenBucket {
            origin: Instant::now(),
            bucket: Mutex::new(Bucket::new(rate, burst, 0.0)?),
        })
    }

    fn now(&self) -> f64 {
        self.origin.elapsed().as_secs_f64()
    }

    fn lock(&self) -> MutexGuard<'_, Bucket> {
        // The bucket's state is valid after any panic (plain floats), so a poisoned lock is still usable.
        self.bucket.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn rate(&self) -> f64 {
        self.lock().rate()
    }

    pub fn burst(&self) -> f64 {
        self.lock().burst()
    }

    pub fn reserve(&self, n: u64) -> f64 {
        let now = self.now();
        self.lock().reserve(n, now)
    }

    /// Take `n` tokens, sleeping until they are covered.
    pub fn acquire(&self, n: u64) {
        let wait = self.reserve(n);
        if wait > 0.0 {
            // A wait too long for a Duration (a tiny rate, a huge n) is forever in practice.
            std::thread::sleep(Duration::try_from_secs_f64(wait).unwrap_or(Duration::MAX));
        }
    }

    pub fn try_acquire(&self, n: u64) -> bool {
        let now = self.now();
        self.lock().try_acquire(n, now)
    }

    pub fn set_rate(&self, rate: f64, burst: Option<f64>) -> Result<()> {
        let now = self.now();
        self.lock().set_rate(rate, burst, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: f64 = 1024.0 * 1024.0;

    #[test]
    fn starts_full_then_charges_debt() {
        let mut b = Bucket::new(100.0, Some(50.0), 0.0).unwrap();
        assert_eq!(b.reserve(50, 0.0), 0.0);
        assert_eq!(b.reserve(25, 0.0), 0.25);
        // A second caller queues behind the first one's debt.
        assert_eq!(b.reserve(25, 0.0), 0.5);
        // After 0.5 s the debt is repaid exactly.
        assert_eq!(b.reserve(0, 0.5), 0.0);
    }

    #[test]
    fn request_larger_than_burst_waits_n_over_rate() {
        let mut b = Bucket::new(MIB, Some(0.0), 0.0).unwrap();
        assert_eq!(b.reserve(4 * 1024 * 1024, 0.0), 4.0);
    }

    #[test]
    fn refill_is_capped_at_burst() {
        let mut b = Bucket::new(10.0, Some(5.0), 0.0).unwrap();
        assert!(b.try_acquire(5, 0.0));
        assert!(!b.try_acquire(1, 0.0));
        assert!(b.try_acquire(5, 100.0));
        assert!(!b.try_acquire(1, 100.0));
    }

    #[test]
    fn rate_over_time_matches() {
        let mut b = Bucket::new(100.0 * MIB, Some(MIB), 0.0).unwrap();
        let chunk = 256 * 1024;
        let mut now = 0.0;
        let mut total = 0u64;
        while now < 2.0 {
            now += b.reserve(chunk, now);
            total += chunk;
        }
        let expected = 200.0 * MIB + MIB;
        assert!(
            (total as f64 - expected).abs() <= 0.01 * expected,
            "{total}"
        );
    }

    #[test]
    fn zero_rate_is_unlimited() {
        let mut b = Bucket::new(0.0, None, 0.0).unwrap();
        assert_eq!(b.reserve(u64::MAX, 0.0), 0.0);
        assert!(b.try_acquire(u64::MAX, 0.0));
        assert_eq!(b.burst(), 0.0);
    }

    #[test]
    fn set_rate_keeps_accrued_tokens_and_clamps() {
        let mut b = Bucket::new(10.0, Some(100.0), 0.0).unwrap();
        assert_eq!(b.reserve(100, 0.0), 0.0);
        b.set_rate(20.0, Some(30.0), 1.0).unwrap();
        // 10 tokens accrued at the old rate; the next 10 arrive at the new one.
        assert_eq!(b.reserve(20, 1.0), 0.5);
        assert_eq!((b.rate(), b.burst()), (20.0, 30.0));
    }

    #[test]
    fn invalid_rates_are_rejected() {
        assert!(Bucket::new(-1.0, None, 0.0).is_err());
        assert!(Bucket::new(f64::NAN, None, 0.0).is_err());
        assert!(Bucket::new(1.0, Some(f64::INFINITY), 0.0).is_err());
    }

    #[test]
    fn threads_share_the_rate() {
        let bucket = std::sync::Arc::new(TokenBucket::new(20.0 * MIB, Some(0.0)).unwrap());
        let started = Instant::now();
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let bucket = bucket.clone();
                std::thread::spawn(move || (0..4).for_each(|_| bucket.acquire(256 * 1024)))
            })
            .collect();
        handles.into_iter().for_each(|h| h.join().unwrap());
        // 4 MiB at 20 MiB/s.
        let elapsed = started.elapsed().as_secs_f64();
        assert!((0.19..0.35).contains(&elapsed), "{elapsed}");
    }
}

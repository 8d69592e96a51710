//! A per-token rate limit: a token bucket for each API token (by its hash), refilled at
//! `rate` per second up to `burst`. A request that finds its bucket empty answers 429 with
//! `Retry-After` and the `RateLimit-*` fields of the IETF draft. Buckets live in one gateway
//! (a client spread over N replicas gets up to N times the rate); idle full buckets are
//! forgotten.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How fast tokens refill and how many a bucket holds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limit {
    /// Requests per second, sustained.
    pub rate: f64,
    /// Requests at once.
    pub burst: f64,
}

/// A request the limit refused: how long until one more is allowed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Refused {
    pub retry_after: Duration,
    pub limit: Limit,
}

/// The buckets of every token seen.
pub struct RateLimiter {
    limit: Option<Limit>,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    /// A limiter; `None` lets everything through.
    pub fn new(limit: Option<Limit>) -> RateLimiter {
        RateLimiter { limit: limit.filter(|l| l.rate > 0.0 && l.burst >= 1.0), buckets: Mutex::default() }
    }

    /// Takes one request from the bucket of `key` at `now`.
    pub fn check(&self, key: &str, now: Instant) -> Result<(), Refused> {
        let Some(limit) = self.limit else { return Ok(()) };
        let mut buckets = self.buckets.lock().expect("rate limit lock");
        if buckets.len() > 10_000 {
            // Forget buckets that have refilled: they hold nothing a new one would not.
            buckets
                .retain(|_, (tokens, at)| *tokens + now.duration_since(*at).as_secs_f64() * limit.rate < limit.burst);
        }
        let (tokens, at) = buckets.entry(key.to_string()).or_insert((limit.burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * limit.rate).min(limit.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            let retry_after = Duration::from_secs_f64((1.0 - *tokens) / limit.rate);
            Err(Refused { retry_after, limit })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate() {
        let limiter = RateLimiter::new(Some(Limit { rate: 10.0, burst: 5.0 }));
        let t0 = Instant::now();
        for _ in 0..5 {
            assert!(limiter.check("a", t0).is_ok());
        }
        let refused = limiter.check("a", t0).unwrap_err();
        assert!(refused.retry_after <= Duration::from_millis(100) && refused.retry_after > Duration::ZERO);
        assert!(limiter.check("b", t0).is_ok(), "each token has its own bucket");
        assert!(limiter.check("a", t0 + Duration::from_millis(100)).is_ok(), "one more after a tenth of a second");
        assert!(limiter.check("a", t0 + Duration::from_millis(100)).is_err());
        assert!(RateLimiter::new(None).check("a", t0).is_ok());
        assert!(RateLimiter::new(Some(Limit { rate: 0.0, burst: 5.0 })).check("a", t0).is_ok(), "0: no limit");
    }
}

//! [`RateLimit`]: a token bucket per caller, on the server.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::server::intercept::{CallContext, ServerInterceptor};
use crate::{Code, Error};

/// The most callers tracked at once; past it, idle ones are forgotten first, and new callers
/// share one bucket until room is made.
const MAX_CALLERS: usize = 10_000;

/// Limits each caller to `rate` calls a second with bursts of `burst`, answering the excess
/// with `resource_exhausted` and a retry hint (`retry-after-ms` in the error's metadata).
///
/// Callers are told apart by what the server verified, never by a header they choose: the
/// principal an authenticating interceptor established (add [`Auth`](super::Auth) first),
/// else the connection's peer address.
pub struct RateLimit {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<Arc<str>, Bucket>>,
    /// When idle callers were last forgotten (at most once a second, however busy).
    swept: Mutex<Instant>,
}

impl std::fmt::Debug for RateLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimit")
            .field("rate", &self.rate)
            .field("burst", &self.burst)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    refilled: Instant,
}

impl RateLimit {
    /// `rate` calls a second per caller (at least one a thousand seconds; not a number
    /// counts as that), in bursts of up to `burst`.
    pub fn per_second(rate: f64, burst: u32) -> Self {
        let rate = if rate.is_nan() {
            0.001
        } else {
            rate.clamp(0.001, 1e9)
        };
        Self {
            rate,
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
            swept: Mutex::new(Instant::now()),
        }
    }

    fn key(call: &CallContext<'_>) -> Arc<str> {
        match (call.principal(), call.peer_addr()) {
            (Some(principal), _) => Arc::from(format!("principal {principal}")),
            // An IPv6 host holds a whole /64: one bucket for it, not one per address.
            (None, Some(addr)) => match addr.ip() {
                std::net::IpAddr::V6(ip) if ip.to_ipv4_mapped().is_none() => {
                    let s = ip.segments();
                    Arc::from(format!(
                        "network {:x}:{:x}:{:x}:{:x}::/64",
                        s[0], s[1], s[2], s[3]
                    ))
                }
                ip => Arc::from(format!("address {}", ip.to_canonical())),
            },
            (None, None) => Arc::from("unknown caller"),
        }
    }

    /// Takes a token for `key`, or says how long until one is there.
    fn take(&self, key: Arc<str>, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= MAX_CALLERS && !buckets.contains_key(&key) {
            // Forget callers whose bucket has refilled (they are as if new), at most once a
            // second so that a crowd of new callers does not make every call sweep.
            let mut swept = self.swept.lock().unwrap_or_else(|e| e.into_inner());
            if now.saturating_duration_since(*swept) >= Duration::from_secs(1) {
                *swept = now;
                let (rate, burst) = (self.rate, self.burst);
                buckets.retain(|_, b| {
                    b.tokens + now.saturating_duration_since(b.refilled).as_secs_f64() * rate
                        < burst
                });
            }
        }
        let key = if buckets.len() >= MAX_CALLERS && !buckets.contains_key(&key) {
            Arc::from("too many callers")
        } else {
            key
        };
        let bucket = buckets.entry(key).or_insert(Bucket {
            tokens: self.burst,
            refilled: now,
        });
        let elapsed = now.saturating_duration_since(bucket.refilled).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate).min(self.burst);
        bucket.refilled = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - bucket.tokens) / self.rate;
            Err(Duration::try_from_secs_f64(wait).unwrap_or(Duration::MAX))
        }
    }
}

impl RateLimit {
    /// Takes a call of `caller` (an identity the server verified itself, e.g. a routing
    /// proxy's authenticated caller), or refuses it as the interceptor does.
    ///
    /// # Errors
    /// `resource_exhausted` with `retry-after-ms` when `caller` is over its rate.
    pub fn check(&self, caller: &str) -> Result<(), Error> {
        self.refuse(Arc::from(format!("caller {caller}")))
    }

    fn refuse(&self, key: Arc<str>) -> Result<(), Error> {
        let Err(wait) = self.take(Arc::clone(&key), Instant::now()) else {
            return Ok(());
        };
        let millis = wait.as_millis().clamp(1, u128::from(u64::MAX));
        let mut error = Error::new(
            Code::ResourceExhausted,
            format!(
                "rate limit: {} calls a second for {key} (bursts of {}); retry in {millis} ms",
                self.rate, self.burst
            ),
        );
        if let Ok(value) = http::HeaderValue::from_str(&millis.to_string()) {
            error.metadata_mut().insert("retry-after-ms", value);
        }
        Err(error)
    }
}

impl ServerInterceptor for RateLimit {
    fn before(&self, call: &mut CallContext<'_>) -> Result<(), Error> {
        self.refuse(Self::key(call))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn odd_rates_do_not_panic() {
        for rate in [0.0, -1.0, f64::NAN, f64::INFINITY, 1e-300] {
            let limit = RateLimit::per_second(rate, 1);
            let now = Instant::now();
            limit.take(Arc::from("a"), now).unwrap();
            assert!(limit.take(Arc::from("a"), now).is_err() || rate.is_infinite());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn each_caller_has_its_own_bucket_that_refills() {
        let limit = RateLimit::per_second(2.0, 3);
        let now = Instant::now();
        let alice: Arc<str> = Arc::from("alice");
        for _ in 0..3 {
            limit.take(Arc::clone(&alice), now).unwrap();
        }
        let wait = limit.take(Arc::clone(&alice), now).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        limit.take(Arc::from("bob"), now).expect("bob has his own");
        // Half a second later one token is back, and only one.
        let later = now + Duration::from_millis(500);
        limit.take(Arc::clone(&alice), later).unwrap();
        assert!(limit.take(alice, later).is_err());
    }
}

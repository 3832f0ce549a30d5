//! [`Retry`]: sends a failed call again (a stream only before any message of it went out), with exponential backoff and jitter, within the
//! call's deadline and a retry budget.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::interceptor::{Next, StreamCall, StreamFuture, StreamNext, UnaryCall, Wrap, WrapFuture};
use crate::{Code, Error, Idempotency, MethodDescriptor};

/// Retries calls that fail with a retryable code (connect-plugin-go's defaults: 3
/// attempts, 100 ms first backoff doubling to at most 10 s, with jitter; `unavailable`,
/// `resource_exhausted`, `internal`, `unknown`, and `deadline_exceeded` while the call's own
/// deadline allows).
///
/// - Never past the call's deadline: no backoff is waited that would end after it, and every
///   attempt is cut at it.
/// - Only methods marked idempotent or side-effect free, unless
///   [`Retry::non_idempotent`] says otherwise.
/// - Streams only while they fail to open and no message of them has gone out
///   ([`StreamCall::replayable`]); an error after that reaches the caller.
/// - A server's `retry-after-ms` hint (a rate limit's) is waited for, if longer.
/// - A retry budget: retries may add at most a fifth to the calls made (and 10 a second
///   whatever the traffic; unspent, at most 100 are saved up), so that when a server is down,
///   retries do not multiply the load.
///
/// Add it with [`ChannelBuilder::wrap`](crate::ChannelBuilder::wrap), after a circuit breaker
/// (so the breaker sees one outcome per call).
#[derive(Debug)]
pub struct Retry {
    max_attempts: u32,
    initial_backoff: Duration,
    max_backoff: Duration,
    multiplier: u32,
    jitter: f64,
    retryable: Vec<Code>,
    non_idempotent: bool,
    budget: Mutex<Budget>,
    seed: AtomicU64,
}

/// Tokens earned by calls and spent by retries.
#[derive(Debug)]
struct Budget {
    tokens: f64,
    refilled: Instant,
    ratio: f64,
    per_second: f64,
    cap: f64,
}

impl Budget {
    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.cap);
        self.refilled = now;
    }
}

/// A seed for the jitter that differs between processes and instances (so clients that saw
/// the same outage do not retry in step).
fn seed() -> u64 {
    use std::hash::BuildHasher as _;
    std::collections::hash_map::RandomState::new()
        .hash_one((std::process::id(), std::time::SystemTime::now()))
}

impl Default for Retry {
    fn default() -> Self {
        Self::new()
    }
}

impl Retry {
    /// The defaults above.
    pub fn new() -> Self {
        Self {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            multiplier: 2,
            jitter: 0.2,
            retryable: vec![
                Code::Unavailable,
                Code::ResourceExhausted,
                Code::Internal,
                Code::Unknown,
                Code::DeadlineExceeded,
            ],
            non_idempotent: false,
            budget: Mutex::new(Budget {
                tokens: 10.0,
                refilled: Instant::now(),
                ratio: 0.2,
                per_second: 10.0,
                cap: 100.0,
            }),
            seed: AtomicU64::new(seed()),
        }
    }

    /// At most `attempts` attempts in all (1: no retry).
    #[must_use]
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// The first backoff, its growth factor and its ceiling.
    #[must_use]
    pub fn backoff(mut self, initial: Duration, multiplier: u32, max: Duration) -> Self {
        self.initial_backoff = initial;
        self.multiplier = multiplier.max(1);
        self.max_backoff = max;
        self
    }

    /// How much each backoff varies at random, as a fraction of it (default 0.2; 0: none).
    #[must_use]
    pub fn jitter(mut self, fraction: f64) -> Self {
        self.jitter = fraction.clamp(0.0, 1.0);
        self
    }

    /// The codes that are retried.
    #[must_use]
    pub fn retryable(mut self, codes: impl IntoIterator<Item = Code>) -> Self {
        self.retryable = codes.into_iter().collect();
        self
    }

    /// Retries methods not marked idempotent too (their side effects may then happen twice).
    #[must_use]
    pub fn non_idempotent(mut self, retry: bool) -> Self {
        self.non_idempotent = retry;
        self
    }

    /// The retry budget: retries may add `ratio` of the calls made, plus `per_second` a second.
    #[must_use]
    pub fn budget(self, ratio: f64, per_second: f64) -> Self {
        {
            let mut budget = self.budget.lock().unwrap_or_else(|e| e.into_inner());
            budget.ratio = ratio.max(0.0);
            budget.per_second = per_second.max(0.0);
            budget.tokens = budget.tokens.min(budget.cap);
        }
        self
    }

    /// The backoff before retry number `retry` (1 for the first), without jitter.
    pub fn backoff_for(&self, retry: u32) -> Duration {
        let factor = self.multiplier.saturating_pow(retry.saturating_sub(1));
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }

    /// The backoff with jitter.
    fn jittered(&self, retry: u32) -> Duration {
        let base = self.backoff_for(retry);
        if self.jitter == 0.0 {
            return base;
        }
        // splitmix64: good enough to spread retries; no secret depends on it.
        let mut x = self
            .seed
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        x ^= x >> 31;
        let unit = (x >> 11) as f64 / (1u64 << 53) as f64; // [0, 1)
        base.mul_f64(1.0 - self.jitter + 2.0 * self.jitter * unit)
    }

    /// A call is made: it earns the budget its share.
    fn earn(&self) {
        let mut budget = self.budget.lock().unwrap_or_else(|e| e.into_inner());
        budget.refill(Instant::now());
        budget.tokens = (budget.tokens + budget.ratio).min(budget.cap);
    }

    /// Whether the budget allows one more retry (and spends it).
    fn spend(&self) -> bool {
        let mut budget = self.budget.lock().unwrap_or_else(|e| e.into_inner());
        budget.refill(Instant::now());
        // (Tolerant of the rounding of many small earnings.)
        if budget.tokens >= 1.0 - 1e-9 {
            budget.tokens = (budget.tokens - 1.0).max(0.0);
            true
        } else {
            false
        }
    }

    /// How long to wait before retry number `attempt` of a call to `method` that failed with
    /// `error`, or `None` if it is not to be retried.
    fn retry_after(
        &self,
        attempt: u32,
        method: &MethodDescriptor,
        deadline: Option<Instant>,
        error: &Error,
    ) -> Option<Duration> {
        let idempotent = !matches!(method.idempotency, Idempotency::Unknown);
        if attempt >= self.max_attempts
            || !(idempotent || self.non_idempotent)
            || !self.retryable.contains(&error.code())
        {
            return None;
        }
        // A server that says when to come back (`retry-after-ms`, as a rate limit does) is not
        // asked sooner.
        let hinted = error
            .metadata()
            .get("retry-after-ms")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .map(Duration::from_millis);
        let wait = self.jittered(attempt).max(hinted.unwrap_or_default());
        // Never past the call's deadline: a retry that could not finish is not made.
        if deadline.is_some_and(|deadline| Instant::now() + wait >= deadline) {
            return None;
        }
        if !self.spend() {
            tracing::debug!(procedure = method.path, "retry budget spent; not retrying");
            return None;
        }
        Some(wait)
    }
}

impl Wrap for Retry {
    fn unary<'a>(&'a self, call: UnaryCall, next: Next<'a>) -> WrapFuture<'a> {
        Box::pin(async move {
            self.earn();
            let mut attempt = 1;
            loop {
                let error = match next.run(call.clone()).await {
                    Ok(reply) => return Ok(reply),
                    Err(error) => error,
                };
                match self.retry_after(attempt, call.method, call.deadline, &error) {
                    Some(wait) => tokio::time::sleep(wait).await,
                    None => return Err(error),
                }
                attempt += 1;
            }
        })
    }

    /// Opens the stream again while it fails before any message of it went out (a
    /// server-streaming call, whose one request is kept, or a client or bidi stream whose
    /// first message was not sent yet), under the unary rules. Once open, a stream is not
    /// retried: an error after that reaches the caller.
    fn stream<'a>(&'a self, call: StreamCall, next: StreamNext<'a>) -> StreamFuture<'a> {
        Box::pin(async move {
            self.earn();
            let mut attempt = 1;
            loop {
                let error = match next.run(call.clone()).await {
                    Ok(reply) => return Ok(reply),
                    Err(error) => error,
                };
                if !call.replayable() {
                    return Err(error);
                }
                match self.retry_after(attempt, call.method, call.deadline, &error) {
                    Some(wait) => tokio::time::sleep(wait).await,
                    None => return Err(error),
                }
                attempt += 1;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_doubles_up_to_its_ceiling() {
        let retry = Retry::new();
        let schedule: Vec<u128> = (1..=9).map(|n| retry.backoff_for(n).as_millis()).collect();
        assert_eq!(
            schedule,
            [100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000]
        );
        for n in 1..50 {
            let jittered = retry.jittered(1).as_millis();
            assert!((80..=120).contains(&jittered), "{n}: {jittered}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_waits_for_the_servers_hint() {
        use crate::StreamKind;
        use crate::interceptor::UnaryReply;

        static METHOD: MethodDescriptor = MethodDescriptor {
            service: "t.T",
            method: "M",
            path: "/t.T/M",
            kind: StreamKind::Unary,
            idempotency: Idempotency::NoSideEffects,
        };
        let retry = Retry::new().jitter(0.0);
        let calls = std::sync::Mutex::new(Vec::new());
        let send = |_: UnaryCall| -> WrapFuture<'_> {
            calls.lock().unwrap().push(Instant::now());
            let first = calls.lock().unwrap().len() == 1;
            Box::pin(async move {
                if first {
                    let mut limited = Error::new(Code::ResourceExhausted, "slow down");
                    limited
                        .metadata_mut()
                        .insert("retry-after-ms", http::HeaderValue::from_static("700"));
                    Err(limited)
                } else {
                    Ok(UnaryReply::default())
                }
            })
        };
        let call = UnaryCall {
            method: &METHOD,
            headers: http::HeaderMap::new(),
            message: bytes::Bytes::new(),
            deadline: None,
        };
        retry.unary(call, Next::new(&[], &send)).await.unwrap();
        let calls = calls.lock().unwrap();
        assert_eq!(calls.len(), 2);
        assert_eq!(
            calls[1] - calls[0],
            Duration::from_millis(700),
            "not the 100 ms backoff"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_limits_retries_and_refills() {
        let retry = Retry::new().budget(0.2, 10.0);
        // The starting 10 tokens go first.
        let spent = (0..20).filter(|_| retry.spend()).count();
        assert_eq!(spent, 10);
        // 50 calls earn 10 retries.
        for _ in 0..50 {
            retry.earn();
        }
        assert_eq!((0..20).filter(|_| retry.spend()).count(), 10);
        // A second refills 10.
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!((0..20).filter(|_| retry.spend()).count(), 10);
    }
}

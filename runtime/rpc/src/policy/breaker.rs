//! [`CircuitBreaker`]: stops calling an endpoint that keeps failing, so callers fail at once
//! instead of waiting on it, and probes it again after a while.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::interceptor::{Next, StreamCall, StreamFuture, StreamNext, UnaryCall, Wrap, WrapFuture};
use crate::{Code, Error};

/// Where a [`CircuitBreaker`] stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through; consecutive failures are counted.
    Closed,
    /// Calls fail at once with `unavailable`, until the open time has passed.
    Open,
    /// A bounded number of probe calls go through; enough successes close the breaker, one
    /// failure opens it again.
    HalfOpen,
}

type OnChange = Arc<dyn Fn(BreakerState, BreakerState) + Send + Sync>;

/// A circuit breaker for the endpoint of the channel it wraps (one per channel): closed /
/// open / half-open, with connect-plugin-go's defaults (5 consecutive failures open it, it
/// stays open 10 s, then 2 successful probes close it; one probe at a time). Failures are
/// the codes that say the endpoint is in trouble (`unavailable`, `deadline_exceeded`,
/// `resource_exhausted`, `internal`, `unknown`), not the caller's mistakes. An open breaker
/// answers in well under a millisecond with `unavailable`.
///
/// Add it with [`ChannelBuilder::wrap`](crate::ChannelBuilder::wrap), before a retry.
pub struct CircuitBreaker {
    core: Arc<Core>,
}

/// The breaker's settings and state, shared with the streams it watches.
struct Core {
    failure_threshold: u32,
    success_threshold: u32,
    open_for: Duration,
    half_open_probes: u32,
    failures: Vec<Code>,
    on_change: Option<OnChange>,
    state: Mutex<Inner>,
}

impl std::fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct Inner {
    state: BreakerState,
    /// Consecutive failures while closed; successes while half-open.
    count: u32,
    opened: Instant,
    probes: u32,
    /// Counts state changes: a probe belongs to the half-open period it was admitted in.
    generation: u64,
}

/// A call let through: `Some(generation)` for a probe of that half-open period.
type Ticket = Option<u64>;

impl Default for CircuitBreaker {
    fn default() -> Self {
        Self::new()
    }
}

impl CircuitBreaker {
    /// A closed breaker with the defaults above.
    pub fn new() -> Self {
        let core = Core {
            failure_threshold: 5,
            success_threshold: 2,
            open_for: Duration::from_secs(10),
            half_open_probes: 1,
            failures: vec![
                Code::Unavailable,
                Code::DeadlineExceeded,
                Code::ResourceExhausted,
                Code::Internal,
                Code::Unknown,
            ],
            on_change: None,
            state: Mutex::new(Inner {
                state: BreakerState::Closed,
                count: 0,
                opened: Instant::now(),
                probes: 0,
                generation: 0,
            }),
        };
        Self {
            core: Arc::new(core),
        }
    }

    /// Changes a setting (the core is shared only once calls run, after building).
    fn set_up(mut self, change: impl FnOnce(&mut Core)) -> Self {
        if let Some(core) = Arc::get_mut(&mut self.core) {
            change(core);
        }
        self
    }

    /// Consecutive failures that open it (default 5).
    #[must_use]
    pub fn failure_threshold(self, failures: u32) -> Self {
        self.set_up(|c| c.failure_threshold = failures.max(1))
    }

    /// Successful probes that close it again (default 2).
    #[must_use]
    pub fn success_threshold(self, successes: u32) -> Self {
        self.set_up(|c| c.success_threshold = successes.max(1))
    }

    /// How long it stays open before probing (default 10 s).
    #[must_use]
    pub fn open_for(self, duration: Duration) -> Self {
        self.set_up(|c| c.open_for = duration)
    }

    /// How many probes may be in flight at once while half-open (default 1). A stream is a
    /// probe until its first message or its end: give long, quiet streams more.
    #[must_use]
    pub fn half_open_probes(self, probes: u32) -> Self {
        self.set_up(|c| c.half_open_probes = probes.max(1))
    }

    /// Called with the old and new state at every change.
    #[must_use]
    pub fn on_state_change(
        self,
        callback: impl Fn(BreakerState, BreakerState) + Send + Sync + 'static,
    ) -> Self {
        self.set_up(|c| c.on_change = Some(Arc::new(callback)))
    }

    /// The current state (an open breaker whose time has passed reads half-open).
    pub fn state(&self) -> BreakerState {
        self.core.state()
    }
}

impl Core {
    fn state(&self) -> BreakerState {
        let inner = self.inner();
        match inner.state {
            BreakerState::Open if inner.opened.elapsed() >= self.open_for => BreakerState::HalfOpen,
            state => state,
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set(&self, inner: &mut Inner, state: BreakerState) -> Option<(BreakerState, BreakerState)> {
        let old = inner.state;
        inner.state = state;
        inner.count = 0;
        inner.probes = 0;
        inner.generation += 1;
        if state == BreakerState::Open {
            inner.opened = Instant::now();
        }
        (old != state).then_some((old, state))
    }

    fn changed(&self, change: Option<(BreakerState, BreakerState)>) {
        if let (Some((old, new)), Some(on_change)) = (change, &self.on_change) {
            on_change(old, new);
        }
    }

    /// Lets a call through (a probe, or not), or refuses it.
    fn admit(&self) -> Result<Ticket, Error> {
        let mut inner = self.inner();
        let mut change = None;
        if inner.state == BreakerState::Open {
            let waited = inner.opened.elapsed();
            if waited < self.open_for {
                let left = self.open_for - waited;
                return Err(Error::unavailable(format!(
                    "circuit breaker open: the endpoint failed {} times in a row; calls resume in {} ms",
                    self.failure_threshold,
                    left.as_millis()
                )));
            }
            change = self.set(&mut inner, BreakerState::HalfOpen);
        }
        let probe = inner.state == BreakerState::HalfOpen;
        if probe {
            if inner.probes >= self.half_open_probes {
                drop(inner);
                self.changed(change);
                return Err(Error::unavailable(
                    "circuit breaker half-open: a probe call is testing the endpoint; try again shortly",
                ));
            }
            inner.probes += 1;
        }
        let ticket = probe.then_some(inner.generation);
        drop(inner);
        self.changed(change);
        Ok(ticket)
    }

    /// Records the outcome of a call let through; `canceled` (the caller gave up) is no
    /// verdict: a probe gives its place back.
    fn record(&self, ticket: Ticket, outcome: Result<(), Code>) {
        if outcome == Err(Code::Canceled) {
            self.release(ticket);
            return;
        }
        let failed = outcome.is_err_and(|code| self.failures.contains(&code));
        let mut inner = self.inner();
        // A probe of an earlier half-open period is old news.
        let probe = ticket == Some(inner.generation);
        let change = match (inner.state, failed) {
            (BreakerState::Closed, false) => {
                inner.count = 0;
                None
            }
            (BreakerState::Closed, true) => {
                inner.count += 1;
                (inner.count >= self.failure_threshold)
                    .then(|| self.set(&mut inner, BreakerState::Open))
                    .flatten()
            }
            (BreakerState::HalfOpen, false) if probe => {
                inner.probes = inner.probes.saturating_sub(1);
                inner.count += 1;
                (inner.count >= self.success_threshold)
                    .then(|| self.set(&mut inner, BreakerState::Closed))
                    .flatten()
            }
            (BreakerState::HalfOpen, true) if probe => self.set(&mut inner, BreakerState::Open),
            // A call admitted before the state changed: its outcome is old news.
            _ => None,
        };
        drop(inner);
        self.changed(change);
    }

    /// A probe that ended with no verdict gives its place back (in its own half-open period).
    fn release(&self, ticket: Ticket) {
        if let Some(generation) = ticket {
            let mut inner = self.inner();
            if inner.state == BreakerState::HalfOpen && inner.generation == generation {
                inner.probes = inner.probes.saturating_sub(1);
            }
        }
    }
}

/// A call let through; a probe given up before its outcome (the caller went away) gives its
/// place back, counting as neither success nor failure.
struct Admitted<'a> {
    breaker: &'a Core,
    probe: Ticket,
    recorded: bool,
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        if !self.recorded {
            self.breaker.release(self.probe);
        }
    }
}

impl Wrap for CircuitBreaker {
    fn unary<'a>(&'a self, call: UnaryCall, next: Next<'a>) -> WrapFuture<'a> {
        let probe = match self.core.admit() {
            Ok(probe) => probe,
            Err(refused) => return Box::pin(std::future::ready(Err(refused))),
        };
        let admitted = Admitted {
            breaker: &self.core,
            probe,
            recorded: false,
        };
        Box::pin(async move {
            // The whole guard moves in (not just a field), so dropping the future drops it.
            let mut admitted = admitted;
            let outcome = next.run(call).await;
            admitted.recorded = true;
            self.core
                .record(probe, outcome.as_ref().map(drop).map_err(Error::code));
            outcome
        })
    }

    /// A stream is judged by what it does first: a message or a clean end is a success, an
    /// error (in opening it, or before its first message) counts as the code says.
    fn stream<'a>(&'a self, call: StreamCall, next: StreamNext<'a>) -> StreamFuture<'a> {
        let probe = match self.core.admit() {
            Ok(probe) => probe,
            Err(refused) => return Box::pin(std::future::ready(Err(refused))),
        };
        let admitted = Admitted {
            breaker: &self.core,
            probe,
            recorded: false,
        };
        Box::pin(async move {
            let mut admitted = admitted;
            let outcome = next.run(call).await;
            admitted.recorded = true;
            match outcome {
                Err(error) => {
                    self.core.record(probe, Err(error.code()));
                    Err(error)
                }
                Ok(mut reply) => {
                    let core = Arc::clone(&self.core);
                    reply.on_first_outcome(move |first| {
                        let outcome = match first.map_err(Error::code) {
                            // Its own deadline ended a stream that opened: a quiet stream,
                            // not a failing endpoint.
                            Err(Code::DeadlineExceeded) => Err(Code::Canceled),
                            outcome => outcome,
                        };
                        core.record(probe, outcome);
                    });
                    Ok(reply)
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_probe_given_up_gives_its_place_back() {
        let breaker = CircuitBreaker::new().failure_threshold(1);
        breaker.core.record(None, Err(Code::Unavailable));
        tokio::time::advance(Duration::from_secs(10)).await;
        let probe = Admitted {
            breaker: &breaker.core,
            probe: breaker.core.admit().unwrap(),
            recorded: false,
        };
        assert!(breaker.core.admit().is_err(), "one probe at a time");
        drop(probe);
        assert!(
            breaker.core.admit().unwrap().is_some(),
            "the next call probes"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn closed_open_half_open_and_closed_again() {
        let changes = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&changes);
        let breaker = CircuitBreaker::new()
            .on_state_change(move |old, new| seen.lock().unwrap().push((old, new)));
        let fail = Err(Code::Unavailable);
        // Caller mistakes do not count; four failures do not open it; a success resets.
        for _ in 0..4 {
            breaker.core.record(None, fail);
        }
        breaker.core.record(None, Err(Code::InvalidArgument));
        breaker.core.record(None, Ok(()));
        for _ in 0..4 {
            breaker.core.record(None, fail);
        }
        assert_eq!(breaker.state(), BreakerState::Closed);
        breaker.core.record(None, fail);
        assert_eq!(breaker.state(), BreakerState::Open);
        let err = breaker.core.admit().unwrap_err();
        assert_eq!(err.code(), Code::Unavailable);
        assert!(err.message().contains("calls resume in"), "{err}");

        // After the open time, one probe at a time; a failed probe opens it again.
        tokio::time::advance(Duration::from_secs(10)).await;
        let probe = breaker.core.admit().unwrap();
        assert!(probe.is_some(), "a probe");
        assert!(breaker.core.admit().is_err(), "one probe at a time");
        breaker.core.record(probe, fail);
        assert_eq!(breaker.state(), BreakerState::Open);

        // Two successful probes close it.
        tokio::time::advance(Duration::from_secs(10)).await;
        let probe = breaker.core.admit().unwrap();
        breaker.core.record(probe, Ok(()));
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        let probe = breaker.core.admit().unwrap();
        breaker.core.record(probe, Ok(()));
        assert_eq!(breaker.state(), BreakerState::Closed);

        // A probe of an earlier half-open period does not count in a later one.
        let breaker = CircuitBreaker::new()
            .failure_threshold(1)
            .half_open_probes(2);
        breaker.core.record(None, fail);
        tokio::time::advance(Duration::from_secs(10)).await;
        let stale = breaker.core.admit().unwrap();
        let failing = breaker.core.admit().unwrap();
        breaker.core.record(failing, fail);
        tokio::time::advance(Duration::from_secs(10)).await;
        let fresh = breaker.core.admit().unwrap();
        breaker.core.record(stale, Ok(()));
        breaker.core.record(stale, Ok(()));
        assert_eq!(breaker.state(), BreakerState::HalfOpen, "old news");
        breaker.core.record(fresh, Ok(()));
        assert_eq!(
            breaker.state(),
            BreakerState::HalfOpen,
            "one success of two"
        );

        use BreakerState::{Closed, HalfOpen, Open};
        assert_eq!(
            *changes.lock().unwrap(),
            [
                (Closed, Open),
                (Open, HalfOpen),
                (HalfOpen, Open),
                (Open, HalfOpen),
                (HalfOpen, Closed)
            ]
        );
    }
}

//! Deadline propagation: while a handler runs, the deadline of the call it serves is known to
//! the task, and every client call it makes is bounded by it (spec "Timeouts": a server should
//! propagate the remaining time to the calls it makes).
//!
//! It only carries the deadline through the task: parsing `Connect-Timeout-Ms` is
//! `crate::protocol`'s, enforcing it on a handler is [`crate::server`]'s, and bounding an outgoing
//! call by it is [`crate::channel`]'s.

use std::future::Future;

use tokio::time::Instant;

tokio::task_local! {
    static DEADLINE: Instant;
}

/// Runs `fut` with `deadline` as the task's current deadline.
pub(crate) async fn scope<F: Future>(deadline: Option<Instant>, fut: F) -> F::Output {
    match deadline {
        Some(d) => DEADLINE.scope(d, fut).await,
        None => fut.await,
    }
}

/// The deadline of the call the current task is serving, if any.
pub fn current() -> Option<Instant> {
    DEADLINE.try_with(|d| *d).ok()
}

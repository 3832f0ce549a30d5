//! Call policies for clients, as [`Wrap`](crate::interceptor::Wrap)pers of a channel's unary
//! calls: [`Retry`] and [`CircuitBreaker`]. Add them in this order, after any auth wrapper:
//! auth, then the breaker, then retry (the breaker sees one outcome per call, retries stay
//! inside it).
//!
//! ```no_run
//! use connect_plugin_rpc::Channel;
//! use connect_plugin_rpc::policy::{CircuitBreaker, Retry};
//!
//! let channel = Channel::builder("http://127.0.0.1:8080")
//!     .wrap(CircuitBreaker::new())
//!     .wrap(Retry::new())
//!     .build()?;
//! # Ok::<(), connect_plugin_rpc::Error>(())
//! ```

mod breaker;
mod retry;

pub use breaker::{BreakerState, CircuitBreaker};
pub use retry::Retry;

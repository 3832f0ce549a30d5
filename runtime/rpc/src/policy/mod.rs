//! Call policies.
//!
//! Clients, as [`Wrap`](crate::interceptor::Wrap)pers of a channel's unary calls: [`Retry`],
//! [`CircuitBreaker`] and [`Failover`] between endpoints, and credentials as interceptors
//! ([`BearerToken`], [`ApiKey`]).
//! Add wrappers in this order: auth, then the breaker, then retry (the breaker sees one
//! outcome per call, retries stay inside it).
//!
//! Servers, as [`ServerInterceptor`](crate::server::ServerInterceptor)s: [`Auth`] (bearer
//! tokens, API keys, client certificates; the principal reaches handlers) and [`RateLimit`]
//! (per verified caller). Add `Auth` first, so the limit is per principal.
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

mod auth;
mod breaker;
mod failover;
mod rate_limit;
mod retry;

pub use auth::{ApiKey, Auth, BearerToken};
pub use breaker::{BreakerState, CircuitBreaker};
pub use failover::{Failover, WeakFailover};
pub use rate_limit::RateLimit;
pub use retry::Retry;

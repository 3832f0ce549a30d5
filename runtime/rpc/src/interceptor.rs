//! Client interceptors: code that sees every call a [`crate::Channel`] makes.
//!
//! - An [`Interceptor`] sees each attempt's headers before it is sent (to add metadata such as
//!   credentials or trace ids, or to refuse it) and its outcome (to log or count).
//! - A [`Wrap`] wraps a whole unary call: it gets the request (procedure, headers, encoded
//!   message) and the rest of the chain ([`Next`]), and may short-circuit, call the rest once or
//!   several times (retry), or look at the outcome (a circuit breaker). Wrappers run in the
//!   order added, the first outermost; the channel's timeout bounds the whole chain, retries
//!   included. A channel without wrappers pays nothing for them.
//!
//! [`crate::Channel`] runs them. Servers have interceptors of their own
//! ([`crate::server::intercept`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http::HeaderMap;

use crate::{Error, MethodDescriptor};

/// A boxed future of a wrapped call.
pub type WrapFuture<'a> = Pin<Box<dyn Future<Output = Result<UnaryReply, Error>> + Send + 'a>>;

/// A unary call on its way out, as a [`Wrap`] sees it. Cheap to clone (the message is
/// reference-counted), so a wrapper can send it again.
#[derive(Debug, Clone)]
pub struct UnaryCall {
    /// The procedure called.
    pub method: &'static MethodDescriptor,
    /// The request's metadata (the channel's own headers and the protocol's are added to each
    /// attempt).
    pub headers: HeaderMap,
    /// The request message, encoded with the channel's codec (not compressed).
    pub message: Bytes,
    /// When the call's timeout runs out, if it has one: no attempt or wait may go past it.
    pub deadline: Option<tokio::time::Instant>,
}

/// The answer to a unary call, before its message is decoded.
#[derive(Debug, Clone, Default)]
pub struct UnaryReply {
    /// The response headers.
    pub headers: HeaderMap,
    /// The response message, encoded (decompressed).
    pub message: Bytes,
    /// The response trailers.
    pub trailers: HeaderMap,
}

/// Wraps unary calls: see the [module docs](self).
///
/// ```
/// use connect_plugin_rpc::interceptor::{Next, UnaryCall, Wrap, WrapFuture};
///
/// /// Refuses calls to one procedure without sending them.
/// struct Deny(&'static str);
///
/// impl Wrap for Deny {
///     fn unary<'a>(&'a self, call: UnaryCall, next: Next<'a>) -> WrapFuture<'a> {
///         if call.method.path == self.0 {
///             let refused = connect_plugin_rpc::Error::new(
///                 connect_plugin_rpc::Code::PermissionDenied,
///                 "not from here",
///             );
///             return Box::pin(async move { Err(refused) });
///         }
///         next.run(call)
///     }
/// }
/// ```
pub trait Wrap: Send + Sync + 'static {
    /// Handles `call`, usually by passing it (once or more) to `next`.
    fn unary<'a>(&'a self, call: UnaryCall, next: Next<'a>) -> WrapFuture<'a>;
}

/// The rest of a wrapper chain: the wrappers after this one, then the call itself.
#[derive(Clone, Copy)]
pub struct Next<'a> {
    rest: &'a [Arc<dyn Wrap>],
    send: &'a (dyn Fn(UnaryCall) -> WrapFuture<'a> + Send + Sync),
}

impl std::fmt::Debug for Next<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Next")
            .field("wrappers_left", &self.rest.len())
            .finish()
    }
}

impl<'a> Next<'a> {
    pub(crate) fn new(
        rest: &'a [Arc<dyn Wrap>],
        send: &'a (dyn Fn(UnaryCall) -> WrapFuture<'a> + Send + Sync),
    ) -> Self {
        Self { rest, send }
    }

    /// Runs the rest of the chain with `call`; may be called again (a retry).
    pub fn run(self, call: UnaryCall) -> WrapFuture<'a> {
        match self.rest.split_first() {
            Some((first, rest)) => first.unary(
                call,
                Next {
                    rest,
                    send: self.send,
                },
            ),
            None => (self.send)(call),
        }
    }
}

/// Sees every call of a channel. Both methods have defaults, so implement only what you need.
///
/// ```
/// use connect_plugin_rpc::{Error, Interceptor, MethodDescriptor};
/// use http::HeaderMap;
///
/// /// Sends an API key with every call.
/// struct ApiKey(http::HeaderValue);
///
/// impl Interceptor for ApiKey {
///     fn before(&self, _: &MethodDescriptor, headers: &mut HeaderMap) -> Result<(), Error> {
///         headers.insert("x-api-key", self.0.clone());
///         Ok(())
///     }
/// }
/// ```
pub trait Interceptor: Send + Sync + 'static {
    /// Runs before the request is sent, with its headers; an error fails the call unsent.
    ///
    /// # Errors
    /// Whatever error should fail the call.
    fn before(&self, method: &MethodDescriptor, headers: &mut HeaderMap) -> Result<(), Error> {
        let _ = (method, headers);
        Ok(())
    }

    /// Runs once the outcome is known: the response headers of a success (for streams, when
    /// the stream opens), or the error.
    fn after(&self, method: &MethodDescriptor, outcome: Result<&HeaderMap, &Error>) {
        let _ = (method, outcome);
    }
}

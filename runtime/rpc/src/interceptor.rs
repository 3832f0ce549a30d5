//! Client interceptors: code that sees every call a [`crate::Channel`] makes, before it is
//! sent (to add metadata such as credentials or trace ids, or to refuse it) and after its
//! response headers arrive (to log, count, or feed a circuit breaker).
//!
//! Interceptors see the method, headers and outcome of a call, never its messages or bodies;
//! [`crate::Channel`] runs them. Servers have no interceptors here: a server-side hook goes in the
//! handler or in a tower layer around [`crate::server::HttpService`].

use http::HeaderMap;

use crate::{Error, MethodDescriptor};

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

//! The hooks `connect-plugin` builds on, and nothing else: the plugin crate reaches this
//! crate's internals only through this module.
//!
//! - Raw HTTP routes beside the Connect procedures (`/healthz`, the host's `/services/` and
//!   `/capabilities/` proxies): `RawHandler`, `route_raw`, `route_prefix`, `route_proxy`, and
//!   `error_response` for their Connect-shaped errors.
//! - In-process dispatch through a server's router (capabilities behind the broker's proxy):
//!   `Dispatcher`.
//! - The HTTP/2 client connection the host's routing proxy forwards calls on:
//!   `H2Connection`, with the bodies it sends and receives (`Body`, `RecvBody`).
//! - The in-memory transport (in-process plugins): `memory_pair`, `serve_memory`,
//!   `memory_channel`.
//! - `or_timeout`: a default timeout for a channel built elsewhere.
//! - `send_raw`: a plain HTTP request over a channel's transport (the routing proxy's way to
//!   providers over TLS or HTTP/1.1).
//! - `guard`: a check every request must pass (a launched plugin answers only its host).
//!
//! Not an API for users: it changes with `connect-plugin`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

pub use crate::body::{Body, RecvBody};
pub use crate::channel::h2::{BoxError, H2Connection};
pub use crate::memory::MemoryConnector;
use crate::server::Router;
pub use crate::server::{Guard, RawHandler};
use crate::{Channel, ChannelBuilder, Server};

/// A unary Connect error response: the code's HTTP status and the JSON error body.
pub fn error_response(error: &crate::Error) -> http::Response<Body> {
    crate::server::error_response(error)
}

/// Checks every request to `server` with `guard` before routing it (a plugin that answers
/// only its host); a refusal is answered with the error's code.
pub fn guard(server: Server, guard: Guard) -> Server {
    server.guard(guard)
}

/// Serves plain HTTP requests at exactly `path` with `handler`.
pub fn route_raw(server: Server, path: &'static str, handler: RawHandler) -> Server {
    server.route_raw(path, handler)
}

/// Serves plain HTTP requests under `prefix` with `handler`; Connect procedures and exact
/// paths take precedence.
pub fn route_prefix(server: Server, prefix: impl Into<String>, handler: RawHandler) -> Server {
    server.route_prefix(prefix, handler)
}

/// Forwards Connect calls under `prefix` with `handler` (a proxy): like [`route_prefix`],
/// and the server's interceptors see each forwarded call, its procedure being the end of its
/// path.
pub fn route_proxy(server: Server, prefix: impl Into<String>, handler: RawHandler) -> Server {
    server.route_proxy(prefix, handler)
}

/// A server's router, for dispatching requests in-process without a connection.
#[derive(Clone)]
pub struct Dispatcher(Arc<Router>);

impl Dispatcher {
    /// The router of `server`'s services and routes.
    pub fn new(server: Server) -> Self {
        Self(server.into_router())
    }

    /// Handles one request as the server would.
    pub async fn handle(&self, request: http::Request<RecvBody>) -> http::Response<Body> {
        self.0
            .handle(request, &crate::request::Peer::default())
            .await
    }
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher").finish_non_exhaustive()
    }
}

/// An in-memory connector and the server side's stream of accepted pipes.
pub fn memory_pair() -> (
    MemoryConnector,
    tokio::sync::mpsc::Receiver<tokio::io::DuplexStream>,
) {
    crate::memory::pair()
}

/// Serves `server` on in-memory pipes until `signal` completes (or every connector is gone),
/// with the same graceful shutdown as over TCP.
pub async fn serve_memory(
    server: Server,
    incoming: tokio::sync::mpsc::Receiver<tokio::io::DuplexStream>,
    signal: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    server
        .serve_incoming(crate::memory::Incoming::Memory(incoming), signal)
        .await
}

/// A channel builder that connects through `connector` instead of the network.
pub fn memory_channel(builder: ChannelBuilder, connector: MemoryConnector) -> ChannelBuilder {
    builder.memory(connector)
}

/// Sends a plain HTTP request (its URI absolute, under the channel's base URL) over
/// `channel`'s transport (HTTP/2 or HTTP/1.1, cleartext or TLS): the routing proxy's way to
/// providers that are not h2c. Failures to connect are `unavailable`.
pub async fn send_raw(
    channel: &Channel,
    request: http::Request<Body>,
) -> Result<http::Response<RecvBody>, crate::Error> {
    channel.send(request).await
}

/// `channel` with `timeout` as its default per-call timeout, unless it has one already.
pub fn or_timeout(channel: Channel, timeout: Duration) -> Channel {
    channel.or_timeout(timeout)
}

//! The Connect server: a router of procedures served on hyper 1, HTTP/1.1 and h2c on one port.
//!
//! Generated code turns a user's implementation of a service trait into a [`Service`] (a set of
//! typed handlers keyed by procedure path); a [`Server`] routes requests to them. Everything
//! protocol-specific (validation of content type, version, timeout and compression headers,
//! error bodies, envelopes) happens here and in `crate::protocol`, so handlers only see typed
//! messages.
//!
//! The server accepts connections and dispatches requests; it does not encode or parse wire bytes
//! itself (`crate::protocol` does) and knows no plugin concept: the handshake, health and the
//! host's `/services/` and `/capabilities/` proxies are `connect-plugin`'s, added as ordinary
//! services, or as raw routes through `connect_plugin_rpc::__private`.

mod accept;
mod handler;
mod http_service;
pub mod intercept;
mod response;
mod router;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::memory::Incoming;
use crate::tls::ServerTls;
pub use handler::Service;
pub use http_service::{HttpService, ResponseBody};
pub use intercept::{CallContext, CallSummary, ServerInterceptor};
pub(crate) use response::error_response;
pub(crate) use router::Router;
use router::{CallLimits, Route};
pub use router::{Guard, RawHandler};

pub use crate::protocol::{DEFAULT_COMPRESS_MIN_BYTES, DEFAULT_MAX_MESSAGE_SIZE};

/// Binds a TCP listener on `addr` with a backlog of 1,024 connections waiting to be accepted
/// (address reuse on, as servers want). `tokio::net::TcpListener::bind` asks for 128, and a
/// burst of connects beyond that is dropped by the kernel and retried by clients a second
/// later.
///
/// # Errors
/// The operating system's, e.g. the address is in use.
pub async fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // On Windows SO_REUSEADDR would let another process bind the same port.
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// A Connect server: add [`Service`]s, then serve them on a TCP listener. HTTP/1.1 and h2c
/// (HTTP/2 with prior knowledge) are served on the same port.
///
/// ```no_run
/// # async fn demo(service: connect_plugin_rpc::Service) -> std::io::Result<()> {
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// connect_plugin_rpc::Server::new()
///     .add_service(service)
///     .serve(listener)
///     .await
/// # }
/// ```
pub struct Server {
    routes: HashMap<&'static str, Route>,
    raw: HashMap<&'static str, RawHandler>,
    prefixes: Vec<router::PrefixRoute>,
    limits: CallLimits,
    shutdown_timeout: Duration,
    tls: Option<ServerTls>,
    connections: accept::ConnectionLimits,
    guard: Option<Guard>,
    interceptors: Vec<Arc<dyn ServerInterceptor>>,
}

impl Default for Server {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut paths: Vec<_> = self.routes.keys().collect();
        paths.sort();
        f.debug_struct("Server")
            .field("procedures", &paths)
            .field("limits", &self.limits)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Server {
    /// A server with no services, a 4 MiB message limit and a 30 s graceful-shutdown timeout.
    pub fn new() -> Self {
        Self {
            routes: HashMap::new(),
            raw: HashMap::new(),
            prefixes: Vec::new(),
            limits: CallLimits {
                max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
                compress_min_bytes: DEFAULT_COMPRESS_MIN_BYTES,
                body_timeout: Duration::from_secs(30),
            },
            shutdown_timeout: Duration::from_secs(30),
            tls: None,
            connections: accept::ConnectionLimits::default(),
            guard: None,
            interceptors: Vec::new(),
        }
    }

    /// Adds every procedure of `service`. A procedure path added twice keeps the last handler.
    #[must_use]
    pub fn add_service(mut self, service: Service) -> Self {
        for (method, handler) in service.routes {
            if self
                .routes
                .insert(method.path, Route { method, handler })
                .is_some()
            {
                tracing::warn!(
                    path = method.path,
                    "procedure registered twice; the last one wins"
                );
            }
        }
        self
    }

    /// The largest request message accepted, in bytes; larger ones get `resource_exhausted`.
    #[must_use]
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.limits.max_message_size = bytes;
        self
    }

    /// Responses smaller than this are sent uncompressed even when the client accepts gzip
    /// (default 1 KiB): compressing small messages costs more than it saves.
    #[must_use]
    pub fn compress_min_bytes(mut self, bytes: usize) -> Self {
        self.limits.compress_min_bytes = bytes;
        self
    }

    /// Serves over TLS (HTTPS, with HTTP/2 or HTTP/1.1 chosen by ALPN) instead of cleartext.
    #[must_use]
    pub fn tls(mut self, tls: ServerTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Serves plain HTTP requests at exactly `path` with `handler` (probes such as `/healthz`).
    pub(crate) fn route_raw(mut self, path: &'static str, handler: RawHandler) -> Self {
        self.raw.insert(path, handler);
        self
    }

    /// Adds an interceptor run before each call's handler (authentication, rate limiting);
    /// they run in the order added. See [`intercept`].
    #[must_use]
    pub fn intercept(mut self, interceptor: impl ServerInterceptor) -> Self {
        self.interceptors.push(Arc::new(interceptor));
        self
    }

    /// Checks every request with `guard` before routing it.
    pub(crate) fn guard(mut self, guard: Guard) -> Self {
        self.guard = Some(guard);
        self
    }

    /// Serves plain HTTP requests under `prefix` with `handler` (proxies such as
    /// `/capabilities/`). Connect procedures and exact paths take precedence.
    pub(crate) fn route_prefix(mut self, prefix: impl Into<String>, handler: RawHandler) -> Self {
        self.prefixes.push(router::PrefixRoute {
            prefix: prefix.into(),
            handler,
            proxy: false,
        });
        self
    }

    /// [`Server::route_prefix`] for a proxy of Connect calls (paths ending with the
    /// procedure): the server's interceptors see the calls it forwards.
    pub(crate) fn route_proxy(mut self, prefix: impl Into<String>, handler: RawHandler) -> Self {
        self.prefixes.push(router::PrefixRoute {
            prefix: prefix.into(),
            handler,
            proxy: true,
        });
        self
    }

    /// Builds a router of `services` for dispatching in-process (capabilities behind the
    /// broker's proxy).
    pub(crate) fn into_router(self) -> Arc<router::Router> {
        let mut prefixes = self.prefixes;
        prefixes.sort_by_key(|route| std::cmp::Reverse(route.prefix.len()));
        Arc::new(Router {
            routes: self.routes,
            raw: self.raw,
            prefixes,
            limits: self.limits,
            guard: self.guard,
            interceptors: self.interceptors.into(),
        })
    }

    /// This server's services and routes as an HTTP service, to mount inside another server
    /// (an axum router, a hyper connection) instead of serving a listener of its own. TLS,
    /// connection limits and graceful shutdown are then the outer server's.
    ///
    /// ```no_run
    /// # async fn demo(service: connect_plugin_rpc::Service) -> std::io::Result<()> {
    /// let connect = connect_plugin_rpc::Server::new().add_service(service).into_http_service();
    /// // axum: every path the router does not match goes to the Connect services.
    /// // let app = axum::Router::new().route("/", get(index)).fallback_service(connect);
    /// # let _ = connect; Ok(()) }
    /// ```
    pub fn into_http_service(self) -> HttpService {
        HttpService::new(self.into_router())
    }

    /// Whether the server serves TLS.
    pub fn has_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// How long a new connection may take to finish its TLS handshake and send the first bytes
    /// of a request before it is closed (default 10 s).
    #[must_use]
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.connections.handshake_timeout = timeout;
        self
    }

    /// How long a connection may go without a call in flight before it is closed gracefully
    /// (default 120 s; `Duration::ZERO` never closes idle connections). A stream that stays
    /// open is a call in flight; clients reconnect on their next call. A connection that has
    /// not closed within the handshake timeout after its GOAWAY is dropped. (Idle HTTP/1.1
    /// connections close sooner, at the header read timeout.)
    #[must_use]
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.connections.idle_timeout = timeout;
        self
    }

    /// The most connections open at once (default 10,000, or three quarters of the process's
    /// file descriptor limit when lower). At the cap a new connection evicts a sixteenth of
    /// the cap: connections that never sent a request first, then idle ones, then those whose
    /// calls made no progress for longest. Accepting never pauses, so a flood of idle or
    /// stalled connections cannot lock new clients out.
    #[must_use]
    pub fn max_connections(mut self, connections: usize) -> Self {
        self.connections.max_connections = connections.max(1);
        self
    }

    /// How long a unary request's body may take to arrive once its headers have (default 30 s;
    /// the client's `Connect-Timeout-Ms` bounds it too); past it, `deadline_exceeded`.
    /// Streaming requests are bounded by their deadline; a stalled one without a deadline
    /// holds its connection only until the server needs the slot (see `max_connections`).
    #[must_use]
    pub fn request_body_timeout(mut self, timeout: Duration) -> Self {
        self.limits.body_timeout = timeout;
        self
    }

    /// How long an HTTP/1.1 request's headers may take to arrive (default 30 s).
    #[must_use]
    pub fn header_read_timeout(mut self, timeout: Duration) -> Self {
        self.connections.header_read_timeout = timeout;
        self
    }

    /// How long a graceful shutdown waits for in-flight calls before closing connections.
    #[must_use]
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// Serves until the process ends.
    pub async fn serve(self, listener: TcpListener) -> std::io::Result<()> {
        self.serve_with_shutdown(listener, std::future::pending())
            .await
    }

    /// Serves until `signal` completes, then stops accepting, lets in-flight calls finish
    /// (up to the shutdown timeout) and returns.
    pub async fn serve_with_shutdown(
        self,
        listener: TcpListener,
        signal: impl Future<Output = ()> + Send,
    ) -> std::io::Result<()> {
        self.serve_incoming(Incoming::Tcp(listener), signal).await
    }

    pub(crate) async fn serve_incoming(
        self,
        incoming: Incoming,
        signal: impl Future<Output = ()> + Send,
    ) -> std::io::Result<()> {
        let tls = self
            .tls
            .as_ref()
            .map(|tls| tokio_rustls::TlsAcceptor::from(Arc::clone(&tls.config)));
        let limits = self.connections;
        let shutdown = accept::Shutdown {
            signal,
            timeout: self.shutdown_timeout,
        };
        let router = self.into_router();
        accept::run(incoming, router, tls, limits, shutdown).await
    }
}

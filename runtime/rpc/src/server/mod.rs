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

mod handler;
mod http_service;
mod response;
mod router;

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::body::{H2_MAX_FRAME_SIZE, RecvBody};
use crate::memory::{Conn, Incoming};
use crate::tls::ServerTls;
pub use handler::Service;
pub use http_service::{HttpService, ResponseBody};
pub(crate) use response::error_response;
pub use router::RawHandler;
pub(crate) use router::Router;
use router::{CallLimits, Route};

pub use crate::protocol::{DEFAULT_COMPRESS_MIN_BYTES, DEFAULT_MAX_MESSAGE_SIZE};

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
    prefixes: Vec<(String, RawHandler)>,
    limits: CallLimits,
    shutdown_timeout: Duration,
    tls: Option<ServerTls>,
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
            },
            shutdown_timeout: Duration::from_secs(30),
            tls: None,
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

    /// Serves plain HTTP requests under `prefix` with `handler` (proxies such as
    /// `/capabilities/`). Connect procedures and exact paths take precedence.
    pub(crate) fn route_prefix(mut self, prefix: impl Into<String>, handler: RawHandler) -> Self {
        self.prefixes.push((prefix.into(), handler));
        self
    }

    /// Builds a router of `services` for dispatching in-process (capabilities behind the
    /// broker's proxy).
    pub(crate) fn into_router(self) -> Arc<router::Router> {
        let mut prefixes = self.prefixes;
        prefixes.sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
        Arc::new(Router {
            routes: self.routes,
            raw: self.raw,
            prefixes,
            limits: self.limits,
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
        mut incoming: Incoming,
        signal: impl Future<Output = ()> + Send,
    ) -> std::io::Result<()> {
        let tls = self.tls.clone();
        let shutdown_timeout = self.shutdown_timeout;
        let router = self.into_router();
        let builder = Protocols::new();
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        let tls = tls.map(|tls| tokio_rustls::TlsAcceptor::from(tls.config));
        let mut connections = JoinSet::new();
        let mut signal = std::pin::pin!(signal);
        loop {
            tokio::select! {
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                accepted = incoming.accept() => {
                    let (stream, peer) = match accepted {
                        Some(Ok(accepted)) => accepted,
                        // Every in-memory connector is gone: nobody can connect any more.
                        None => break,
                        Some(Err(e)) => {
                            // Per-connection failures (EMFILE, ECONNABORTED) must not stop the
                            // server; back off briefly so a full fd table does not spin.
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    };
                    serve_connection(&builder, &graceful, &router, tls.as_ref(), &mut connections, stream, peer);
                }
                () = &mut signal => break,
            }
        }
        drop(incoming);
        tokio::select! {
            () = graceful.shutdown() => {}
            () = tokio::time::sleep(shutdown_timeout) => {
                tracing::warn!("graceful shutdown timed out; closing remaining connections");
            }
        }
        connections.abort_all();
        while connections.join_next().await.is_some() {}
        Ok(())
    }
}

/// The HTTP connection builders. A connection whose protocol is known up front (ALPN on TLS,
/// or the first bytes of a cleartext connection) gets the HTTP/1.1 or HTTP/2 builder
/// directly; measured, that serves about 5% more calls per second than hyper-util's auto
/// builder, which wraps every read to sniff the protocol. The auto builder remains the
/// fallback when the first bytes do not tell yet.
#[derive(Clone)]
struct Protocols {
    auto: hyper_util::server::conn::auto::Builder<TokioExecutor>,
    http1: hyper::server::conn::http1::Builder,
    http2: hyper::server::conn::http2::Builder<TokioExecutor>,
}

/// Which builder serves a connection.
enum Wire {
    Http1,
    Http2,
    Sniff,
}

/// The first bytes of an HTTP/2 connection preface.
const H2_PREFACE_START: &[u8] = b"PRI";

impl Protocols {
    fn new() -> Self {
        // Without a timer hyper silently drops its header-read timeout and HTTP/2 keep-alive,
        // so idle or slow-loris connections would hold descriptors forever.
        let header_read_timeout = Duration::from_secs(30);
        let (keep_alive, keep_alive_timeout) = (Duration::from_secs(30), Duration::from_secs(20));
        let mut auto = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        auto.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(header_read_timeout);
        auto.http2()
            .timer(TokioTimer::new())
            .max_frame_size(H2_MAX_FRAME_SIZE)
            .keep_alive_interval(keep_alive)
            .keep_alive_timeout(keep_alive_timeout);
        let mut http1 = hyper::server::conn::http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            .header_read_timeout(header_read_timeout);
        let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .max_frame_size(H2_MAX_FRAME_SIZE)
            .keep_alive_interval(keep_alive)
            .keep_alive_timeout(keep_alive_timeout);
        Self { auto, http1, http2 }
    }

    async fn serve<I, S>(
        &self,
        io: I,
        wire: Wire,
        service: S,
        watcher: hyper_util::server::graceful::Watcher,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
        S: hyper::service::Service<
                http::Request<hyper::body::Incoming>,
                Response = http::Response<crate::body::Body>,
                Error = Infallible,
            > + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
    {
        let io = TokioIo::new(io);
        match wire {
            Wire::Http2 => Ok(watcher
                .watch(self.http2.serve_connection(io, service))
                .await?),
            Wire::Http1 => Ok(watcher
                .watch(self.http1.serve_connection(io, service))
                .await?),
            Wire::Sniff => {
                watcher
                    .watch(self.auto.serve_connection(io, service).into_owned())
                    .await
            }
        }
    }
}

/// The protocol of a cleartext TCP connection, from its first bytes (without consuming them).
async fn sniff(stream: &tokio::net::TcpStream) -> Wire {
    let mut first = [0u8; 3];
    match stream.peek(&mut first).await {
        Ok(n) if n >= first.len() && first == H2_PREFACE_START => Wire::Http2,
        Ok(n) if n >= first.len() => Wire::Http1,
        // Too few bytes to tell yet: let the auto builder wait for more.
        _ => Wire::Sniff,
    }
}

fn serve_connection(
    builder: &Protocols,
    graceful: &hyper_util::server::graceful::GracefulShutdown,
    router: &Arc<Router>,
    tls: Option<&tokio_rustls::TlsAcceptor>,
    connections: &mut JoinSet<()>,
    stream: Conn,
    peer: SocketAddr,
) {
    let router = Arc::clone(router);
    let service = hyper::service::service_fn(move |request| {
        let router = Arc::clone(&router);
        async move {
            let request = request.map(RecvBody::Hyper);
            Ok::<_, Infallible>(router.handle(request).await)
        }
    });
    let builder = builder.clone();
    let watcher = graceful.watcher();
    let tls = tls.cloned();
    connections.spawn(async move {
        let served = match (tls, stream) {
            (None, Conn::Tcp(stream)) => {
                let wire = sniff(&stream).await;
                builder.serve(stream, wire, service, watcher).await
            }
            (None, memory @ Conn::Memory(_)) => {
                builder.serve(memory, Wire::Sniff, service, watcher).await
            }
            (Some(acceptor), stream) => {
                // A client that never finishes its handshake must not hold the slot forever.
                let handshake =
                    tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream));
                let stream = match handshake.await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                };
                let wire = match stream.get_ref().1.alpn_protocol() {
                    Some(b"h2") => Wire::Http2,
                    Some(b"http/1.1") => Wire::Http1,
                    _ => Wire::Sniff,
                };
                builder.serve(stream, wire, service, watcher).await
            }
        };
        if let Err(e) = served {
            tracing::debug!(%peer, error = %e, "connection closed with an error");
        }
    });
}

const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

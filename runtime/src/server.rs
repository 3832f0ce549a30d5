//! The Connect server: a router of procedures served on hyper 1, HTTP/1.1 and h2c on one port.
//!
//! Generated code turns a user's implementation of a service trait into a [`Service`] (a set of
//! typed handlers keyed by procedure path); a [`Server`] routes requests to them. Everything
//! protocol-specific (validation of content type, version and timeout headers, error bodies,
//! envelopes) happens here and in [`crate::protocol`], so handlers only see typed messages.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use http::header::{ALLOW, CONTENT_TYPE, HeaderName, HeaderValue};
use http::{HeaderMap, Method, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::body::{self, Body};
use crate::method::{MethodDescriptor, StreamKind};
use crate::protocol::codec::Message;
use crate::protocol::envelope::{EnvelopeReader, FLAG_COMPRESSED};
use crate::protocol::headers::{
    self, APPLICATION_JSON, CONNECT_PROTOCOL_VERSION, CONNECT_TIMEOUT_MS, TRAILER_PREFIX,
};
use crate::protocol::{Codec, error_json, timeout};
use crate::stream::{self, ResponseStreamBody, ServerStream};
use crate::{Code, Error, Request, Response};

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Default limit on one message, after decompression: 4 MiB.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 4 * 1024 * 1024;

/// What a handler needs from the request, once the router has validated the protocol headers.
pub(crate) struct Call {
    pub(crate) headers: HeaderMap,
    pub(crate) body: Incoming,
    pub(crate) codec: Codec,
    /// When the client's `Connect-Timeout-Ms` runs out; bounds reading the request too.
    pub(crate) deadline: Option<Instant>,
    pub(crate) max_message_size: usize,
}

/// One procedure's type-erased handler. Called through an `Arc` so the returned future can own
/// the handler without cloning the user's closure.
pub(crate) trait Handler: Send + Sync + 'static {
    fn call(self: Arc<Self>, call: Call) -> BoxFuture<http::Response<Body>>;
}

/// A set of procedures of one protobuf service, ready to be served. Built by generated code
/// (`KvServicePlugin::server(impl)` or `KvServiceServer::new(impl).into_service()`); users
/// rarely build one by hand.
pub struct Service {
    name: &'static str,
    routes: Vec<(&'static MethodDescriptor, Arc<dyn Handler>)>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("name", &self.name)
            .field(
                "procedures",
                &self.routes.iter().map(|(m, _)| m.path).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Service {
    /// An empty service named `name` (fully qualified, e.g. `kv.v1.KVService`).
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            routes: Vec::new(),
        }
    }

    /// The fully qualified service name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The procedures of the service.
    pub fn methods(&self) -> impl Iterator<Item = &'static MethodDescriptor> + '_ {
        self.routes.iter().map(|(m, _)| *m)
    }

    /// Adds a unary procedure.
    #[must_use]
    pub fn unary<Req, Res, F, Fut>(mut self, method: &'static MethodDescriptor, handler: F) -> Self
    where
        Req: Message,
        Res: Message,
        F: Fn(Request<Req>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Response<Res>, Error>> + Send + 'static,
    {
        let handler = UnaryHandler {
            f: handler,
            _types: std::marker::PhantomData,
        };
        self.routes.push((method, Arc::new(handler)));
        self
    }

    /// Adds a server-streaming procedure.
    #[must_use]
    pub fn server_streaming<Req, Res, F, Fut>(
        mut self,
        method: &'static MethodDescriptor,
        handler: F,
    ) -> Self
    where
        Req: Message,
        Res: Message,
        F: Fn(Request<Req>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Response<ServerStream<Res>>, Error>> + Send + 'static,
    {
        let handler = ServerStreamHandler {
            f: handler,
            _types: std::marker::PhantomData,
        };
        self.routes.push((method, Arc::new(handler)));
        self
    }
}

struct UnaryHandler<F, Req, Res> {
    f: F,
    _types: std::marker::PhantomData<fn(Req) -> Res>,
}

impl<Req, Res, F, Fut> Handler for UnaryHandler<F, Req, Res>
where
    Req: Message,
    Res: Message,
    F: Fn(Request<Req>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<Res>, Error>> + Send + 'static,
{
    fn call(self: Arc<Self>, call: Call) -> BoxFuture<http::Response<Body>> {
        Box::pin(async move {
            let codec = call.codec;
            let deadline = call.deadline;
            let result = with_deadline(deadline, async {
                let bytes = body::read_to_bytes(call.body, call.max_message_size).await?;
                let message = codec.decode::<Req>(bytes)?;
                let timeout = deadline.map(|d| d.saturating_duration_since(Instant::now()));
                let request = Request::from_parts(message, call.headers, timeout);
                (self.f)(request).await
            })
            .await;
            match result {
                Ok(response) => unary_response(codec, response),
                Err(error) => error_response(&error),
            }
        })
    }
}

struct ServerStreamHandler<F, Req, Res> {
    f: F,
    _types: std::marker::PhantomData<fn(Req) -> Res>,
}

impl<Req, Res, F, Fut> Handler for ServerStreamHandler<F, Req, Res>
where
    Req: Message,
    Res: Message,
    F: Fn(Request<Req>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<ServerStream<Res>>, Error>> + Send + 'static,
{
    fn call(self: Arc<Self>, call: Call) -> BoxFuture<http::Response<Body>> {
        Box::pin(async move {
            let codec = call.codec;
            let deadline = call.deadline;
            let result = with_deadline(deadline, async {
                let message =
                    read_single_request::<Req>(call.body, codec, call.max_message_size).await?;
                let timeout = deadline.map(|d| d.saturating_duration_since(Instant::now()));
                let request = Request::from_parts(message, call.headers, timeout);
                (self.f)(request).await
            })
            .await;
            let mut response = http::Response::builder()
                .status(StatusCode::OK)
                .header(CONTENT_TYPE, codec.stream_content_type());
            // S6: streaming responses are always 200; errors travel in the end-stream message.
            let body = match result {
                Ok(response_stream) => {
                    let (stream, headers, trailers) = response_stream.into_parts();
                    if let Some(h) = response.headers_mut() {
                        copy_user_headers(&headers, h);
                    }
                    Body::Stream(Box::pin(ResponseStreamBody::new(
                        stream, codec, trailers, deadline,
                    )))
                }
                // The error's metadata travels in the end-stream message only.
                Err(error) => Body::full(stream::end_stream_error(&error)),
            };
            response
                .body(body)
                .unwrap_or_else(|_| error_response(&Error::internal("invalid response headers")))
        })
    }
}

/// Reads the one request message of a server-streaming call (rule S9: exactly one).
async fn read_single_request<Req: Message>(
    body: Incoming,
    codec: Codec,
    max_message_size: usize,
) -> Result<Req, Error> {
    let mut reader = EnvelopeReader::new(body, max_message_size);
    let Some(frame) = reader.next_frame().await? else {
        return Err(Error::unimplemented(
            "protocol error: a server-streaming call needs exactly one request message, got none",
        ));
    };
    if frame.flags & FLAG_COMPRESSED != 0 {
        // S4: compressed flag without a negotiated encoding.
        return Err(Error::internal(
            "protocol error: the request message is flagged compressed but no Connect-Content-Encoding was sent",
        ));
    }
    if frame.is_end_stream() {
        return Err(Error::invalid_argument(
            "protocol error: clients must not send an end-stream message (flag 0x02)",
        ));
    }
    let message = codec.decode(frame.payload)?;
    if reader.next_frame().await?.is_some() {
        return Err(Error::unimplemented(
            "protocol error: a server-streaming call needs exactly one request message, got several",
        ));
    }
    Ok(message)
}

async fn with_deadline<T>(
    deadline: Option<Instant>,
    fut: impl Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    match deadline {
        None => fut.await,
        Some(d) => tokio::time::timeout_at(d, fut).await.unwrap_or_else(|_| {
            Err(Error::new(
                Code::DeadlineExceeded,
                "the call's timeout (Connect-Timeout-Ms) expired",
            ))
        }),
    }
}

fn unary_response<Res: Message>(codec: Codec, response: Response<Res>) -> http::Response<Body> {
    let (message, headers, trailers) = response.into_parts();
    let mut buf = BytesMut::new();
    if let Err(error) = codec.encode(&message, &mut buf) {
        return error_response(&error);
    }
    let mut out = http::Response::new(Body::full(buf.freeze()));
    out.headers_mut()
        .insert(CONTENT_TYPE, codec.unary_content_type());
    copy_user_headers(&headers, out.headers_mut());
    copy_trailers_as_headers(&trailers, out.headers_mut());
    out
}

/// A unary error response: the code's HTTP status and the JSON error body (rule U6).
pub(crate) fn error_response(error: &Error) -> http::Response<Body> {
    let mut out = http::Response::new(Body::full(error_json::encode_error(error)));
    *out.status_mut() = StatusCode::from_u16(error.code().http_status())
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    out.headers_mut()
        .insert(CONTENT_TYPE, APPLICATION_JSON.clone());
    copy_user_headers(error.metadata(), out.headers_mut());
    out
}

fn copy_user_headers(from: &HeaderMap, to: &mut HeaderMap) {
    for (name, value) in from {
        if !headers::is_protocol_header(name) {
            to.append(name.clone(), value.clone());
        }
    }
}

fn copy_trailers_as_headers(trailers: &HeaderMap, to: &mut HeaderMap) {
    for (name, value) in trailers {
        if headers::is_protocol_header(name) {
            continue;
        }
        let prefixed = format!("{TRAILER_PREFIX}{}", name.as_str());
        if let Ok(name) = HeaderName::from_bytes(prefixed.as_bytes()) {
            to.append(name, value.clone());
        }
    }
}

struct Route {
    kind: StreamKind,
    handler: Arc<dyn Handler>,
}

/// Routes requests by procedure path and enforces the protocol rules every call shares.
pub(crate) struct Router {
    routes: HashMap<&'static str, Route>,
    max_message_size: usize,
}

impl Router {
    pub(crate) async fn handle(&self, request: http::Request<Incoming>) -> http::Response<Body> {
        let (parts, body) = request.into_parts();
        let path = parts.uri.path();
        let Some(route) = self.routes.get(path) else {
            // P1: an unknown procedure is a 404, which clients read as `unimplemented`.
            let mut response = error_response(&Error::unimplemented(format!(
                "no procedure at {path}: check the service and method names (paths are /<package>.<Service>/<Method>, case-sensitive)"
            )));
            *response.status_mut() = StatusCode::NOT_FOUND;
            return response;
        };
        if parts.method != Method::POST {
            // P2: only POST (and GET for side-effect-free unary methods, not yet served).
            let mut response = error_response(&Error::unimplemented(format!(
                "HTTP method {} is not allowed for {path}: Connect procedures are called with POST",
                parts.method
            )));
            *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
            response
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static("POST"));
            return response;
        }
        let streaming = route.kind.is_streaming();
        let content_type = parts
            .headers
            .get(CONTENT_TYPE)
            .map(HeaderValue::as_bytes)
            .unwrap_or_default();
        let codec = if streaming {
            Codec::from_stream_content_type(content_type)
        } else {
            Codec::from_unary_content_type(content_type)
        };
        let Some(codec) = codec else {
            // U2, S1: unsupported content type is 415 with the types we accept.
            let accept = if streaming {
                "application/connect+proto, application/connect+json"
            } else {
                "application/proto, application/json"
            };
            let mut response = http::Response::new(Body::empty());
            *response.status_mut() = StatusCode::UNSUPPORTED_MEDIA_TYPE;
            response
                .headers_mut()
                .insert("accept-post", HeaderValue::from_static(accept));
            return response;
        };
        let reject = |error: Error| {
            if streaming {
                let mut response =
                    http::Response::new(Body::full(stream::end_stream_error(&error)));
                response
                    .headers_mut()
                    .insert(CONTENT_TYPE, codec.stream_content_type());
                response
            } else {
                error_response(&error)
            }
        };
        // U8: a present but wrong protocol version is rejected.
        if let Some(version) = parts.headers.get(&CONNECT_PROTOCOL_VERSION)
            && version != "1"
        {
            return reject(Error::invalid_argument(format!(
                "unsupported Connect-Protocol-Version {version:?}: this server speaks version 1"
            )));
        }
        let deadline = match parts.headers.get(&CONNECT_TIMEOUT_MS).map(timeout::parse) {
            None => None,
            Some(Ok(t)) => Instant::now().checked_add(t),
            Some(Err(e)) => return reject(e),
        };
        // Compression arrives with the next protocol milestone; until then only identity.
        let encoding_header = if streaming {
            headers::CONNECT_CONTENT_ENCODING.clone()
        } else {
            http::header::CONTENT_ENCODING
        };
        if let Some(encoding) = parts.headers.get(&encoding_header)
            && encoding != "identity"
        {
            return reject(Error::unimplemented(format!(
                "unsupported compression {encoding:?}: this server supports identity"
            )));
        }
        let call = Call {
            headers: parts.headers,
            body,
            codec,
            deadline,
            max_message_size: self.max_message_size,
        };
        Arc::clone(&route.handler).call(call).await
    }
}

/// A Connect server: add [`Service`]s, then serve them on a TCP listener. HTTP/1.1 and h2c
/// (HTTP/2 with prior knowledge) are served on the same port.
///
/// ```no_run
/// # async fn demo(service: connect_plugin::Service) -> std::io::Result<()> {
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// connect_plugin::Server::new()
///     .add_service(service)
///     .serve(listener)
///     .await
/// # }
/// ```
pub struct Server {
    routes: HashMap<&'static str, Route>,
    max_message_size: usize,
    shutdown_timeout: Duration,
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
            .field("max_message_size", &self.max_message_size)
            .finish()
    }
}

impl Server {
    /// A server with no services, a 4 MiB message limit and a 30 s graceful-shutdown timeout.
    pub fn new() -> Self {
        Self {
            routes: HashMap::new(),
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            shutdown_timeout: Duration::from_secs(30),
        }
    }

    /// Adds every procedure of `service`. A procedure path added twice keeps the last handler.
    #[must_use]
    pub fn add_service(mut self, service: Service) -> Self {
        for (method, handler) in service.routes {
            if self
                .routes
                .insert(
                    method.path,
                    Route {
                        kind: method.kind,
                        handler,
                    },
                )
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
        self.max_message_size = bytes;
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
        let router = Arc::new(Router {
            routes: self.routes,
            max_message_size: self.max_message_size,
        });
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        // Without a timer hyper silently drops its header-read timeout and HTTP/2 keep-alive,
        // so idle or slow-loris connections would hold descriptors forever.
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_secs(30));
        builder
            .http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(20));
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        let mut connections = JoinSet::new();
        let mut signal = std::pin::pin!(signal);
        loop {
            tokio::select! {
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                accepted = listener.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(accepted) => accepted,
                        Err(e) => {
                            // Per-connection failures (EMFILE, ECONNABORTED) must not stop the
                            // server; back off briefly so a full fd table does not spin.
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    };
                    serve_connection(&builder, &graceful, &router, &mut connections, stream, peer);
                }
                () = &mut signal => break,
            }
        }
        drop(listener);
        tokio::select! {
            () = graceful.shutdown() => {}
            () = tokio::time::sleep(self.shutdown_timeout) => {
                tracing::warn!("graceful shutdown timed out; closing remaining connections");
            }
        }
        connections.abort_all();
        while connections.join_next().await.is_some() {}
        Ok(())
    }
}

fn serve_connection(
    builder: &hyper_util::server::conn::auto::Builder<TokioExecutor>,
    graceful: &hyper_util::server::graceful::GracefulShutdown,
    router: &Arc<Router>,
    connections: &mut JoinSet<()>,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
) {
    // Without TCP_NODELAY small HTTP/1.1 responses can wait on Nagle's algorithm.
    let _ = stream.set_nodelay(true);
    let router = Arc::clone(router);
    let service = hyper::service::service_fn(move |request| {
        let router = Arc::clone(&router);
        async move { Ok::<_, Infallible>(router.handle(request).await) }
    });
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    let connection = graceful.watch(connection.into_owned());
    connections.spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(%peer, error = %e, "connection closed with an error");
        }
    });
}

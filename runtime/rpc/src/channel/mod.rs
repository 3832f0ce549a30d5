//! The Connect client transport: [`Channel`], one multiplexed HTTP/2 connection (or a pool of
//! HTTP/1.1 connections) to one base URL.
//!
//! Generated clients wrap a `Channel` and call [`Channel::unary`] or
//! [`Channel::server_streaming`] with the method's descriptor. The client is strict about
//! what servers send (spec §2.7): wrong content types, mismatched codecs and truncated streams
//! are errors with the codes the spec assigns.
//!
//! This module drives a call (headers, timeouts, interceptors, reading the response) but does not
//! encode or parse the wire format itself: codecs, compression, envelopes, error bodies and GET
//! queries are `crate::protocol`'s, and the HTTP/2 connection is `channel::h2`'s. It knows no
//! plugin concept; handshakes and runtime identities belong to `connect-plugin`'s `client`.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use http::header::{ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_TYPE, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, Method, StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::body::{self, Body, RecvBody};

pub(crate) mod h2;
use self::h2::{BoxError, H2Connection, KeepAlive, error_chain};
use crate::interceptor::Interceptor;
use crate::interceptor::{
    Next, SharedRequest, StreamCall, StreamFuture, StreamNext, StreamReply, StreamRequest,
    UnaryCall, UnaryReply, Wrap, WrapFuture,
};
use crate::method::{Idempotency, MethodDescriptor};
use crate::protocol::codec::Message;
use crate::protocol::compression::{self, Compression};
use crate::protocol::envelope::MessageFormat;
use crate::protocol::headers::{
    self, CONNECT_ACCEPT_ENCODING, CONNECT_CONTENT_ENCODING, CONNECT_PROTOCOL_VERSION,
    CONNECT_TIMEOUT_MS, PROTOCOL_VERSION_1, TRAILER_PREFIX,
};
use crate::protocol::{Codec, error_json, get, timeout};
use crate::protocol::{DEFAULT_COMPRESS_MIN_BYTES, DEFAULT_MAX_MESSAGE_SIZE};
use crate::stream::{Direction, MessageStream, RequestStreamBody, Streaming};
use crate::tls::ClientTls;
use crate::{Code, Error, Request, Response};

type TlsConnector = hyper_rustls::HttpsConnector<HttpConnector>;

/// The longest query string a GET call carries (rule G6; connect-go's default URL limit is
/// 8 KiB); a longer message goes as POST.
const MAX_GET_QUERY_BYTES: usize = 8 * 1024;

/// A streaming call's request body as the typed call methods build it.
enum OutgoingStream {
    /// A server-streaming call's one message, enveloped.
    Ready(bytes::Bytes),
    /// Client or bidi streaming: the messages as the caller produces them.
    Body(std::pin::Pin<Box<dyn http_body::Body<Data = bytes::Bytes, Error = Error> + Send>>),
}

/// The HTTP client: one HTTP/2 connection, or a pool of HTTP/1.1 connections; cleartext, TLS
/// or in memory.
enum Transport {
    H2Plain(H2Connection<HttpConnector>),
    H2Memory(H2Connection<crate::memory::MemoryConnector>),
    H2Tls(H2Connection<TlsConnector>),
    Plain(hyper_util::client::legacy::Client<HttpConnector, Body>),
    Memory(hyper_util::client::legacy::Client<crate::memory::MemoryConnector, Body>),
    Tls(hyper_util::client::legacy::Client<TlsConnector, Body>),
}

/// Which HTTP version a [`Channel`] speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum HttpVersion {
    /// HTTP/2: with prior knowledge (h2c) on `http://`, by ALPN on `https://`. One multiplexed
    /// connection; the default.
    #[default]
    Http2,
    /// HTTP/1.1: one request per connection at a time, pooled.
    Http1,
}

/// A client connection to one Connect server (any Connect server), cheap to clone and share.
///
/// ```no_run
/// # async fn demo() -> Result<(), connect_plugin_rpc::Error> {
/// use connect_plugin_rpc::{Channel, Codec};
///
/// let channel = Channel::builder("http://127.0.0.1:8080")
///     .codec(Codec::Json)
///     .timeout(std::time::Duration::from_secs(5))
///     .build()?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Channel {
    inner: Arc<ChannelInner>,
}

struct ChannelInner {
    /// Shared with the channels [derived](Channel::derive) from this one.
    http: Arc<Transport>,
    scheme: Scheme,
    authority: Authority,
    /// A routing prefix before `/<service>/<method>`, without a trailing slash ("" if none).
    prefix: String,
    base_url: String,
    codec: Codec,
    timeout: Option<Duration>,
    max_message_size: usize,
    metadata: HeaderMap,
    send_compression: Option<Compression>,
    compress_min_bytes: usize,
    use_get: bool,
    accept_compression: bool,
    interceptors: Vec<Arc<dyn Interceptor>>,
    wrappers: Vec<Arc<dyn Wrap>>,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("base_url", &self.inner.base_url)
            .field("codec", &self.inner.codec)
            .finish()
    }
}

/// Builds a [`Channel`].
pub struct ChannelBuilder {
    base_url: String,
    codec: Codec,
    http_version: HttpVersion,
    timeout: Option<Duration>,
    connect_timeout: Duration,
    keep_alive: KeepAlive,
    max_message_size: usize,
    metadata: HeaderMap,
    send_compression: Option<Compression>,
    compress_min_bytes: usize,
    use_get: bool,
    accept_compression: Option<bool>,
    tls: Option<ClientTls>,
    memory: Option<crate::memory::MemoryConnector>,
    interceptors: Vec<Arc<dyn Interceptor>>,
    wrappers: Vec<Arc<dyn Wrap>>,
}

impl std::fmt::Debug for ChannelBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelBuilder")
            .field("base_url", &self.base_url)
            .field("codec", &self.codec)
            .field("http_version", &self.http_version)
            .field("interceptors", &self.interceptors.len())
            .finish_non_exhaustive()
    }
}

impl ChannelBuilder {
    /// Adds an interceptor; they run in the order added.
    #[must_use]
    pub fn interceptor(mut self, interceptor: impl Interceptor) -> Self {
        self.interceptors.push(Arc::new(interceptor));
        self
    }

    /// Adds a wrapper of unary calls (retry, circuit breaking, auth); they run in the order
    /// added, the first outermost. See [`crate::interceptor`].
    #[must_use]
    pub fn wrap(mut self, wrapper: impl Wrap) -> Self {
        self.wrappers.push(Arc::new(wrapper));
        self
    }

    /// Connects through an in-memory server instead of the network.
    pub(crate) fn memory(mut self, connector: crate::memory::MemoryConnector) -> Self {
        self.memory = Some(connector);
        self
    }

    /// TLS settings for `https://` endpoints.
    #[must_use]
    pub fn tls(mut self, tls: ClientTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Compresses requests (at least `compress_min_bytes` long) with `compression`, and asks
    /// for compressed responses (see [`ChannelBuilder::accept_compression`]).
    #[must_use]
    pub fn send_compression(mut self, compression: Compression) -> Self {
        self.send_compression = Some(compression);
        self
    }

    /// Whether to ask servers for gzip-compressed responses. Off by default unless
    /// [`ChannelBuilder::send_compression`] is set: on loopback and fast networks, the usual
    /// place of plugins, compressing costs more time than it saves (measured in
    /// `bench/RESULTS.md`: 16 KiB responses took twice as long gzipped). Compressed responses
    /// are decoded either way.
    #[must_use]
    pub fn accept_compression(mut self, accept: bool) -> Self {
        self.accept_compression = Some(accept);
        self
    }

    /// Requests smaller than this are sent uncompressed (default 1 KiB).
    #[must_use]
    pub fn compress_min_bytes(mut self, bytes: usize) -> Self {
        self.compress_min_bytes = bytes;
        self
    }

    /// Calls unary methods marked `idempotency_level = NO_SIDE_EFFECTS` with HTTP GET, so
    /// that HTTP caches can serve them.
    #[must_use]
    pub fn use_get(mut self, enabled: bool) -> Self {
        self.use_get = enabled;
        self
    }

    /// The codec for requests: binary protobuf (default) or JSON.
    #[must_use]
    pub fn codec(mut self, codec: Codec) -> Self {
        self.codec = codec;
        self
    }

    /// The HTTP version (default: h2c).
    #[must_use]
    pub fn http_version(mut self, version: HttpVersion) -> Self {
        self.http_version = version;
        self
    }

    /// A default timeout for every call; a [`Request`]'s own timeout takes precedence.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// How long to wait for a TCP connection (default 5 s).
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How the HTTP/2 connection notices a server that vanished without closing it (a
    /// network partition, a frozen machine): a PING every `interval`, and the connection is
    /// given up when no answer comes within `timeout` (default: every 30 s, 20 s to answer).
    /// Its calls then fail with `unavailable` instead of waiting forever, and the next call
    /// connects again. Both must be above zero.
    #[must_use]
    pub fn keep_alive(mut self, interval: Duration, timeout: Duration) -> Self {
        self.keep_alive = KeepAlive { interval, timeout };
        self
    }

    /// The largest response message accepted (default 4 MiB).
    #[must_use]
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// Metadata sent with every call (a request's own metadata is added after it).
    #[must_use]
    pub fn metadata(mut self, metadata: HeaderMap) -> Self {
        self.metadata = metadata;
        self
    }

    /// Adds one header sent with every call (after those set with
    /// [`ChannelBuilder::metadata`], replacing any of the same name).
    #[must_use]
    pub fn header(mut self, name: http::HeaderName, value: http::HeaderValue) -> Self {
        self.metadata.insert(name, value);
        self
    }

    /// Builds the channel. No connection is made until the first call.
    ///
    /// # Errors
    /// `invalid_argument` if the base URL is not an absolute `http://` URL.
    pub fn build(self) -> Result<Channel, Error> {
        let bad = |why: &str| {
            Error::invalid_argument(format!(
                "invalid endpoint {:?}: {why} (expected something like http://127.0.0.1:8080)",
                self.base_url
            ))
        };
        let uri: Uri = self.base_url.parse().map_err(|_| bad("not a URL"))?;
        if self.keep_alive.interval.is_zero() || self.keep_alive.timeout.is_zero() {
            return Err(Error::invalid_argument(format!(
                "keep_alive needs an interval and a timeout above zero, got {:?} and {:?}",
                self.keep_alive.interval, self.keep_alive.timeout
            )));
        }
        let scheme = uri.scheme().cloned().ok_or_else(|| bad("no scheme"))?;
        if scheme == Scheme::HTTPS && self.tls.is_none() {
            return Err(bad(
                "https:// needs TLS settings: add ChannelBuilder::tls(ClientTls::with_root_certificates_pem(..))",
            ));
        }
        if scheme != Scheme::HTTP && scheme != Scheme::HTTPS {
            return Err(bad("the scheme must be http:// or https://"));
        }
        let authority = uri.authority().cloned().ok_or_else(|| bad("no host"))?;
        if uri.query().is_some() {
            return Err(bad("a query string is not allowed"));
        }
        let prefix = uri.path().trim_end_matches('/').to_owned();

        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(self.connect_timeout));
        let mut http = hyper_util::client::legacy::Client::builder(TokioExecutor::new());
        http.pool_idle_timeout(Duration::from_secs(90))
            .pool_timer(TokioTimer::new());
        let h2 = self.http_version == HttpVersion::Http2;
        let target = Uri::from_parts({
            let mut parts = http::uri::Parts::default();
            parts.scheme = Some(scheme.clone());
            parts.authority = Some(authority.clone());
            parts.path_and_query = Some(PathAndQuery::from_static("/"));
            parts
        })
        .map_err(|e| bad(&format!("{e}")))?;
        let http = match (&self.tls, scheme == Scheme::HTTPS) {
            _ if self.memory.is_some() => {
                let connector = self
                    .memory
                    .clone()
                    .ok_or_else(|| Error::internal("memory connector vanished"))?;
                if h2 {
                    Transport::H2Memory(
                        H2Connection::new(connector, target, self.connect_timeout)
                            .with_keep_alive(self.keep_alive),
                    )
                } else {
                    Transport::Memory(http.build(connector))
                }
            }
            (Some(tls), true) => {
                connector.enforce_http(false);
                // Over TLS, ALPN picks the HTTP version; offer only the one asked for.
                let tls = hyper_rustls::HttpsConnectorBuilder::new()
                    .with_tls_config(tls.config.clone())
                    .https_only();
                if h2 {
                    let tls = tls.enable_http2().wrap_connector(connector);
                    Transport::H2Tls(
                        H2Connection::new(tls, target, self.connect_timeout)
                            .with_keep_alive(self.keep_alive),
                    )
                } else {
                    Transport::Tls(http.build(tls.enable_http1().wrap_connector(connector)))
                }
            }
            _ => {
                connector.enforce_http(true);
                if h2 {
                    Transport::H2Plain(
                        H2Connection::new(connector, target, self.connect_timeout)
                            .with_keep_alive(self.keep_alive),
                    )
                } else {
                    Transport::Plain(http.build(connector))
                }
            }
        };
        Ok(Channel {
            inner: Arc::new(ChannelInner {
                http: Arc::new(http),
                scheme,
                authority,
                prefix,
                base_url: self.base_url,
                codec: self.codec,
                timeout: self.timeout,
                max_message_size: self.max_message_size,
                metadata: self.metadata,
                send_compression: self.send_compression,
                compress_min_bytes: self.compress_min_bytes,
                use_get: self.use_get,
                accept_compression: self
                    .accept_compression
                    .unwrap_or(self.send_compression.is_some()),
                interceptors: self.interceptors,
                wrappers: self.wrappers,
            }),
        })
    }
}

impl Channel {
    /// A channel to `base_url` with the defaults (h2c, binary protobuf, no timeout).
    ///
    /// # Errors
    /// `invalid_argument` if the URL is not an absolute `http://` URL.
    pub fn new(base_url: impl Into<String>) -> Result<Self, Error> {
        Self::builder(base_url).build()
    }

    /// A builder for a channel to `base_url`.
    pub fn builder(base_url: impl Into<String>) -> ChannelBuilder {
        ChannelBuilder {
            base_url: base_url.into(),
            codec: Codec::Proto,
            http_version: HttpVersion::Http2,
            timeout: None,
            connect_timeout: Duration::from_secs(5),
            keep_alive: KeepAlive::default(),
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            metadata: HeaderMap::new(),
            send_compression: None,
            compress_min_bytes: DEFAULT_COMPRESS_MIN_BYTES,
            use_get: false,
            accept_compression: None,
            tls: None,
            memory: None,
            interceptors: Vec::new(),
            wrappers: Vec::new(),
        }
    }

    /// A channel to `path` under this channel's base URL that shares its connection and
    /// settings (TLS, codec, timeouts, compression, interceptors), sending `metadata` on
    /// every call on top of this channel's own. How a plugin calls other plugins and host
    /// capabilities through its one connection to the host.
    ///
    /// # Errors
    /// `invalid_argument` if `path` does not start with `/` or carries a query string.
    pub fn derive(&self, path: &str, metadata: HeaderMap) -> Result<Channel, Error> {
        if !path.starts_with('/') || path.contains(['?', '#']) {
            return Err(Error::invalid_argument(format!(
                "cannot derive a channel for {path:?}: expected an absolute path such as /services/logger/logger-1a2b3c4d"
            )));
        }
        let inner = &*self.inner;
        let path = path.trim_end_matches('/');
        // A name in `metadata` replaces this channel's values of that name.
        let mut merged = inner.metadata.clone();
        merged.extend(metadata);
        Ok(Channel {
            inner: Arc::new(ChannelInner {
                http: Arc::clone(&inner.http),
                scheme: inner.scheme.clone(),
                authority: inner.authority.clone(),
                prefix: format!("{}{path}", inner.prefix),
                base_url: format!("{}{path}", inner.base_url.trim_end_matches('/')),
                codec: inner.codec,
                timeout: inner.timeout,
                max_message_size: inner.max_message_size,
                metadata: merged,
                send_compression: inner.send_compression,
                compress_min_bytes: inner.compress_min_bytes,
                use_get: inner.use_get,
                accept_compression: inner.accept_compression,
                interceptors: inner.interceptors.clone(),
                wrappers: inner.wrappers.clone(),
            }),
        })
    }

    /// [`Channel::derive`], with `wrappers` added after this channel's own (innermost): for
    /// policies that belong to the derived target alone, such as a circuit breaker per
    /// provider routed through a host.
    ///
    /// # Errors
    /// As for [`Channel::derive`].
    pub fn derive_wrapped(
        &self,
        path: &str,
        metadata: HeaderMap,
        wrappers: impl IntoIterator<Item = Arc<dyn Wrap>>,
    ) -> Result<Channel, Error> {
        let mut derived = self.derive(path, metadata)?;
        let extra: Vec<Arc<dyn Wrap>> = wrappers.into_iter().collect();
        if !extra.is_empty()
            && let Some(inner) = Arc::get_mut(&mut derived.inner)
        {
            inner.wrappers.extend(extra);
        }
        Ok(derived)
    }

    /// This channel with `timeout` as its default call timeout if it has none.
    pub(crate) fn or_timeout(mut self, timeout: Duration) -> Channel {
        if self.inner.timeout.is_none()
            && let Some(inner) = Arc::get_mut(&mut self.inner)
        {
            inner.timeout = Some(timeout);
        }
        self
    }

    /// The metadata sent with every call (set with [`ChannelBuilder::metadata`]).
    pub fn metadata(&self) -> &HeaderMap {
        &self.inner.metadata
    }

    /// The base URL calls go to.
    pub fn base_url(&self) -> &str {
        &self.inner.base_url
    }

    /// The timeout of a call: its own, else the channel's default, and never past the
    /// deadline of the call the current task is serving (deadline propagation).
    fn effective_timeout(&self, own: Option<Duration>) -> Option<Duration> {
        let timeout = own.or(self.inner.timeout);
        let inherited = crate::deadline::current()
            .map(|d| d.saturating_duration_since(tokio::time::Instant::now()));
        match (timeout, inherited) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn format(&self, compression: Option<Compression>) -> MessageFormat {
        MessageFormat {
            codec: self.inner.codec,
            compression,
            compress_min_bytes: self.inner.compress_min_bytes,
            max_message_size: self.inner.max_message_size,
        }
    }

    /// Calls a unary procedure. With [`ChannelBuilder::use_get`], methods marked
    /// `NO_SIDE_EFFECTS` are called with HTTP GET.
    ///
    /// # Errors
    /// The server's error, or a client-side one: `unavailable` if the server cannot be
    /// reached, `deadline_exceeded` on timeout, `resource_exhausted` past the size limits,
    /// `internal`/`unknown` for protocol violations.
    pub async fn unary<Req: Message, Res: Message>(
        &self,
        method: &'static MethodDescriptor,
        request: Request<Req>,
    ) -> Result<Response<Res>, Error> {
        let inner = &*self.inner;
        let (message, metadata, timeout) = request.into_parts();
        let timeout = self.effective_timeout(timeout);
        let mut buf = BytesMut::new();
        inner.codec.encode(&message, &mut buf)?;
        // Only wrappers need the deadline (a channel without them reads no clock for it).
        let deadline = timeout
            .filter(|_| !inner.wrappers.is_empty())
            .map(|t| tokio::time::Instant::now() + t);
        let call = UnaryCall {
            method,
            headers: metadata,
            message: buf.freeze(),
            deadline,
        };
        let call = async {
            let reply = self.chain(call, timeout).await?;
            let message = inner.codec.decode::<Res>(reply.message).map_err(|e| {
                Error::internal(format!("cannot decode the response: {}", e.message()))
            })?;
            Ok(Response::from_parts(message, reply.headers, reply.trailers))
        };
        let outcome = with_timeout(timeout, call).await;
        self.after(method, outcome.as_ref().map(Response::headers));
        outcome
    }

    /// Runs `call` through this channel's wrappers (if any) and transport.
    async fn chain(&self, call: UnaryCall, timeout: Option<Duration>) -> Result<UnaryReply, Error> {
        let inner = &*self.inner;
        if inner.wrappers.is_empty() {
            return self.attempt(call, timeout).await;
        }
        // The channel's timeout bounds the whole chain; each attempt carries what is left of
        // the deadline as the wrappers left it.
        let send = move |call: UnaryCall| -> WrapFuture<'_> {
            let left = call
                .deadline
                .map(|d| d.saturating_duration_since(tokio::time::Instant::now()));
            // Each attempt ends by the deadline itself, so wrappers see its outcome
            // (`deadline_exceeded`) rather than being dropped by the outer timeout.
            Box::pin(with_timeout(left, self.attempt(call, left)))
        };
        Next::new(&inner.wrappers, &send).run(call).await
    }

    /// Sends an already encoded unary call through this channel's wrappers and transport, by
    /// `call.deadline` (else the channel's timeout): how a wrapper that picks among several
    /// endpoints ([`crate::policy::Failover`]) sends a call to one. The message must be
    /// encoded with this channel's codec.
    ///
    /// # Errors
    /// As for [`Channel::unary`].
    pub async fn call_unary(&self, mut call: UnaryCall) -> Result<UnaryReply, Error> {
        let now = tokio::time::Instant::now();
        let timeout = match call.deadline {
            Some(deadline) => Some(deadline.saturating_duration_since(now)),
            None => self.inner.timeout,
        };
        if call.deadline.is_none() {
            call.deadline = timeout.map(|t| now + t);
        }
        with_timeout(timeout, self.chain(call, timeout)).await
    }

    /// Sends one attempt of a unary call and reads its answer (not yet decoded).
    async fn attempt(
        &self,
        call: UnaryCall,
        timeout: Option<Duration>,
    ) -> Result<UnaryReply, Error> {
        let inner = &*self.inner;
        let UnaryCall {
            method,
            headers: metadata,
            message,
            ..
        } = call;
        let compression = inner
            .send_compression
            .filter(|_| message.len() >= inner.compress_min_bytes);
        let body = match compression {
            Some(c) => {
                let mut compressed = BytesMut::new();
                c.compress(&message, &mut compressed)?;
                compressed.freeze()
            }
            None => message,
        };
        let use_get = inner.use_get && method.idempotency == Idempotency::NoSideEffects;
        // G6: a message too long for a URL goes as POST.
        let query = use_get
            .then(|| get::build_query(inner.codec, compression, &body))
            .filter(|query| query.len() <= MAX_GET_QUERY_BYTES);
        let mut http_request = if let Some(query) = query {
            let mut request =
                self.http_request(method, Some(&query), None, metadata, timeout, Body::empty())?;
            *request.method_mut() = Method::GET;
            request
        } else {
            let mut request = self.http_request(
                method,
                None,
                Some(inner.codec.unary_content_type()),
                metadata,
                timeout,
                Body::full(body),
            )?;
            if let Some(c) = compression {
                request
                    .headers_mut()
                    .insert(CONTENT_ENCODING, c.header_value());
            }
            request
        };
        if inner.accept_compression {
            http_request
                .headers_mut()
                .insert(ACCEPT_ENCODING, compression::ACCEPT_ENCODING.clone());
        }
        let response = self.send(http_request).await?;
        let (parts, body) = response.into_parts();
        let (headers, trailers) = split_trailers(parts.headers);
        if parts.status != StatusCode::OK {
            return Err(error_from_response(parts.status, headers, trailers, body, inner).await);
        }
        // C3, C4: a success must carry our codec's unary content type.
        check_content_type(&headers, inner.codec, false)?;
        let response_compression = response_encoding(&headers, &CONTENT_ENCODING)?;
        let bytes = body::read_to_bytes(body, inner.max_message_size)
            .await
            .map_err(client_side)?;
        let message = match response_compression {
            Some(c) => c
                .decompress(&bytes, inner.max_message_size)
                .map_err(client_side)?,
            None => bytes,
        };
        Ok(UnaryReply {
            headers,
            message,
            trailers,
        })
    }

    fn after(&self, method: &MethodDescriptor, outcome: Result<&HeaderMap, &Error>) {
        for interceptor in &self.inner.interceptors {
            interceptor.after(method, outcome);
        }
    }

    /// Calls a server-streaming procedure; returns once the server has sent its response
    /// headers, with a [`Streaming`] to read the messages from.
    ///
    /// # Errors
    /// As for [`Channel::unary`]; errors the server sends after the headers arrive through the
    /// stream.
    pub async fn server_streaming<Req: Message, Res: Message>(
        &self,
        method: &'static MethodDescriptor,
        request: Request<Req>,
    ) -> Result<Response<Streaming<Res>>, Error> {
        let (message, metadata, timeout) = request.into_parts();
        let mut buf = BytesMut::new();
        self.format(self.inner.send_compression)
            .encode(&message, &mut buf)?;
        self.open_stream(
            method,
            metadata,
            timeout,
            OutgoingStream::Ready(buf.freeze()),
        )
        .await
    }

    /// Calls a client-streaming procedure: sends every message of the request stream, then
    /// returns the server's one response.
    ///
    /// # Errors
    /// As for [`Channel::unary`]; an `Err` in the request stream aborts the call with it. As
    /// for a unary call, the error's metadata holds the response headers and trailers.
    pub async fn client_streaming<Req: Message, Res: Message>(
        &self,
        method: &'static MethodDescriptor,
        request: Request<MessageStream<Req>>,
    ) -> Result<Response<Res>, Error> {
        let (requests, metadata, timeout) = request.into_parts();
        let body = RequestStreamBody::new(requests, self.format(self.inner.send_compression));
        let failure = body.failure();
        let response = self
            .open_stream::<Res>(
                method,
                metadata,
                timeout,
                OutgoingStream::Body(Box::pin(body)),
            )
            .await
            .map_err(|e| failure.or(e))?;
        let (stream, headers, _) = response.into_parts();
        let mut stream = stream.with_request_failure(failure);
        let read = async {
            // S9: exactly one response message.
            let Some(message) = stream.message().await? else {
                return Err(Error::unimplemented(
                    "protocol error: the server answered a client-streaming call with no message",
                ));
            };
            if stream.message().await?.is_some() {
                return Err(Error::unimplemented(
                    "protocol error: the server answered a client-streaming call with several messages",
                ));
            }
            Ok(message)
        };
        // As for a unary call, an error carries the response headers as well as the trailers
        // (the caller gets no `Response` to read them from).
        let message = read.await.map_err(|mut error| {
            let trailers = std::mem::take(error.metadata_mut());
            let metadata = error.metadata_mut();
            metadata.extend(headers.clone());
            metadata.extend(trailers);
            error
        })?;
        let trailers = stream.trailers().cloned().unwrap_or_default();
        Ok(Response::from_parts(message, headers, trailers))
    }

    /// Calls a bidirectional-streaming procedure: the request stream is sent while the
    /// responses are read (full duplex over HTTP/2; over HTTP/1.1 the server sees the requests
    /// as they come but most servers answer after the last one).
    ///
    /// # Errors
    /// As for [`Channel::server_streaming`].
    pub async fn bidi_streaming<Req: Message, Res: Message>(
        &self,
        method: &'static MethodDescriptor,
        request: Request<MessageStream<Req>>,
    ) -> Result<Response<Streaming<Res>>, Error> {
        let (requests, metadata, timeout) = request.into_parts();
        let body = RequestStreamBody::new(requests, self.format(self.inner.send_compression));
        let failure = body.failure();
        let response = self
            .open_stream(
                method,
                metadata,
                timeout,
                OutgoingStream::Body(Box::pin(body)),
            )
            .await
            .map_err(|e| failure.or(e))?;
        let (stream, headers, trailers) = response.into_parts();
        Ok(Response::from_parts(
            stream.with_request_failure(failure),
            headers,
            trailers,
        ))
    }

    /// Opens a stream (through the wrappers, if any) and hands its body to a [`Streaming`]
    /// bounded by the call's deadline.
    async fn open_stream<Res: Message>(
        &self,
        method: &'static MethodDescriptor,
        metadata: HeaderMap,
        timeout: Option<Duration>,
        request: OutgoingStream,
    ) -> Result<Response<Streaming<Res>>, Error> {
        let inner = &*self.inner;
        let timeout = self.effective_timeout(timeout);
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let compression = inner.send_compression;
        let call = async {
            let reply = if inner.wrappers.is_empty() {
                let body = match request {
                    OutgoingStream::Ready(bytes) => Body::full(bytes),
                    OutgoingStream::Body(body) => Body::Stream(body),
                };
                self.stream_attempt(method, metadata, timeout, compression, body)
                    .await?
            } else {
                let call = StreamCall {
                    method,
                    headers: metadata,
                    deadline,
                    request: match request {
                        OutgoingStream::Ready(bytes) => StreamRequest::Ready(bytes),
                        OutgoingStream::Body(body) => {
                            StreamRequest::Shared(SharedRequest::new(body))
                        }
                    },
                    compression,
                };
                self.chain_stream(call).await?
            };
            let mut reply = reply;
            let headers = std::mem::take(&mut reply.headers);
            let body = reply
                .body
                .take()
                .ok_or_else(|| Error::internal("a stream reply without its body"))?;
            let watchers = std::mem::take(&mut reply.watchers);
            let stream = Streaming::new(
                body,
                self.format(reply.compression),
                Direction::FromServer,
                deadline,
            )
            .with_watchers(watchers);
            Ok(Response::from_parts(stream, headers, HeaderMap::new()))
        };
        let outcome = with_timeout(timeout, call).await;
        self.after(method, outcome.as_ref().map(Response::headers));
        outcome
    }

    /// Runs a streaming call's opening through this channel's wrappers and transport.
    async fn chain_stream(&self, call: StreamCall) -> Result<StreamReply, Error> {
        let send = move |call: StreamCall| -> StreamFuture<'_> {
            // The deadline as the wrappers left it.
            let left = call
                .deadline
                .map(|d| d.saturating_duration_since(tokio::time::Instant::now()));
            let body = call.body();
            Box::pin(async move {
                let StreamCall {
                    method,
                    headers,
                    compression,
                    ..
                } = call.clone();
                let opened = with_timeout(
                    left,
                    self.stream_attempt(method, headers, left, compression, body),
                )
                .await;
                if opened.is_err() {
                    // A failed attempt reads no more of the request: whether it may be sent
                    // again is settled now.
                    call.fence();
                }
                opened
            })
        };
        StreamNext::new(&self.inner.wrappers, &send).run(call).await
    }

    /// Opens an already encoded streaming call through this channel's wrappers and transport,
    /// by `call.deadline` (else the channel's timeout): how a wrapper that picks among several
    /// endpoints ([`crate::policy::Failover`]) opens a stream on one. The messages must be
    /// encoded with this channel's codec.
    ///
    /// # Errors
    /// As for [`Channel::server_streaming`].
    pub async fn call_stream(&self, mut call: StreamCall) -> Result<StreamReply, Error> {
        let now = tokio::time::Instant::now();
        let timeout = match call.deadline {
            Some(deadline) => Some(deadline.saturating_duration_since(now)),
            None => self.inner.timeout,
        };
        if call.deadline.is_none() {
            call.deadline = timeout.map(|t| now + t);
        }
        with_timeout(timeout, self.chain_stream(call)).await
    }

    /// Sends one attempt of a streaming request and checks the response headers (C3-C5).
    async fn stream_attempt(
        &self,
        method: &'static MethodDescriptor,
        metadata: HeaderMap,
        timeout: Option<Duration>,
        compression: Option<Compression>,
        body: Body,
    ) -> Result<StreamReply, Error> {
        let inner = &*self.inner;
        let mut http_request = self.http_request(
            method,
            None,
            Some(inner.codec.stream_content_type()),
            metadata,
            timeout,
            body,
        )?;
        let h = http_request.headers_mut();
        if inner.accept_compression {
            h.insert(
                CONNECT_ACCEPT_ENCODING.clone(),
                compression::ACCEPT_ENCODING.clone(),
            );
        }
        if let Some(c) = compression {
            h.insert(CONNECT_CONTENT_ENCODING.clone(), c.header_value());
        }
        let response = self.send(http_request).await?;
        let (parts, body) = response.into_parts();
        if parts.status != StatusCode::OK {
            let (headers, trailers) = split_trailers(parts.headers);
            return Err(error_from_response(parts.status, headers, trailers, body, inner).await);
        }
        check_content_type(&parts.headers, inner.codec, true)?;
        let compression = response_encoding(&parts.headers, &CONNECT_CONTENT_ENCODING)?;
        Ok(StreamReply {
            headers: parts.headers,
            body: Some(body),
            compression,
            watchers: Vec::new(),
        })
    }

    fn http_request(
        &self,
        method: &'static MethodDescriptor,
        query: Option<&str>,
        content_type: Option<HeaderValue>,
        metadata: HeaderMap,
        timeout: Option<Duration>,
        body: Body,
    ) -> Result<http::Request<Body>, Error> {
        let inner = &*self.inner;
        let path = match (inner.prefix.is_empty(), query) {
            (true, None) => PathAndQuery::from_static(method.path),
            (_, query) => {
                let mut path = format!("{}{}", inner.prefix, method.path);
                if let Some(query) = query {
                    path.push('?');
                    path.push_str(query);
                }
                PathAndQuery::try_from(path)
                    .map_err(|e| Error::internal(format!("building the request path: {e}")))?
            }
        };
        let uri = Uri::builder()
            .scheme(inner.scheme.clone())
            .authority(inner.authority.clone())
            .path_and_query(path)
            .build()
            .map_err(|e| Error::internal(format!("building the request URI: {e}")))?;
        let mut request = http::Request::new(body);
        *request.method_mut() = Method::POST;
        *request.uri_mut() = uri;
        let headers = request.headers_mut();
        headers.reserve(5 + inner.metadata.len() + metadata.len());
        for (name, value) in inner.metadata.iter().chain(metadata.iter()) {
            if !headers::is_protocol_header(name) {
                headers.append(name.clone(), value.clone());
            }
        }
        if let Some(content_type) = content_type {
            headers.insert(CONTENT_TYPE, content_type);
            headers.insert(CONNECT_PROTOCOL_VERSION.clone(), PROTOCOL_VERSION_1.clone());
        }
        // The timeout travels in a header even on GET (P5).
        if let Some(timeout) = timeout {
            headers.insert(CONNECT_TIMEOUT_MS.clone(), timeout::format(timeout));
        }
        for interceptor in &inner.interceptors {
            interceptor.before(method, headers)?;
        }
        Ok(request)
    }

    pub(crate) async fn send(
        &self,
        request: http::Request<Body>,
    ) -> Result<http::Response<RecvBody>, Error> {
        // Connection failures and resets alike mean the peer is not there (now): unavailable.
        let response = match &*self.inner.http {
            Transport::H2Plain(connection) => connection.send(request).await,
            Transport::H2Memory(connection) => connection.send(request).await,
            Transport::H2Tls(connection) => connection.send(request).await,
            Transport::Plain(client) => hyper_response(client.request(request).await),
            Transport::Memory(client) => hyper_response(client.request(request).await),
            Transport::Tls(client) => hyper_response(client.request(request).await),
        };
        response.map_err(|e| {
            Error::unavailable(format!(
                "calling {}: {}",
                self.inner.base_url,
                error_chain(&*e)
            ))
        })
    }
}

fn hyper_response(
    response: Result<http::Response<hyper::body::Incoming>, hyper_util::client::legacy::Error>,
) -> Result<http::Response<RecvBody>, BoxError> {
    Ok(response?.map(RecvBody::from))
}

async fn with_timeout<T>(
    timeout: Option<Duration>,
    call: impl Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    match timeout {
        None => call.await,
        Some(t) => tokio::time::timeout(t, call).await.unwrap_or_else(|_| {
            Err(Error::new(
                Code::DeadlineExceeded,
                format!(
                    "no response within the call's timeout of {} ms",
                    t.as_millis()
                ),
            ))
        }),
    }
}

/// Errors the client detects itself while reading a response are reported as the spec's
/// client-side codes rather than the server-side `invalid_argument`.
fn client_side(error: Error) -> Error {
    match error.code() {
        Code::ResourceExhausted | Code::Unavailable => error,
        // The body broke off mid-way (reset, disconnect).
        Code::Canceled => Error::unavailable(error.message().to_owned()),
        _ => Error::internal(error.message().to_owned()),
    }
}

/// C5: the response's encoding; one we do not support is a protocol error (`internal`).
fn response_encoding(
    headers: &HeaderMap,
    name: &http::header::HeaderName,
) -> Result<Option<Compression>, Error> {
    match headers.get(name) {
        None => Ok(None),
        Some(value) => Compression::parse(value.as_bytes()).map_err(|_| {
            Error::internal(format!(
                "protocol error: the server compressed the response with {value:?}, which this client does not support"
            ))
        }),
    }
}

/// C7: `trailer-` headers are split off into trailers before anything else looks at them.
fn split_trailers(headers: HeaderMap) -> (HeaderMap, HeaderMap) {
    if !headers
        .keys()
        .any(|k| k.as_str().starts_with(TRAILER_PREFIX))
    {
        return (headers, HeaderMap::new());
    }
    let mut plain = HeaderMap::with_capacity(headers.len());
    let mut trailers = HeaderMap::new();
    let mut current = None;
    for (name, value) in headers {
        if let Some(name) = name {
            current = Some(name);
        }
        let Some(name) = current.as_ref() else {
            continue;
        };
        match name.as_str().strip_prefix(TRAILER_PREFIX) {
            Some(stripped) => {
                if let Ok(stripped) = http::header::HeaderName::from_bytes(stripped.as_bytes()) {
                    trailers.append(stripped, value);
                }
            }
            None => {
                plain.append(name.clone(), value);
            }
        }
    }
    (plain, trailers)
}

fn check_content_type(headers: &HeaderMap, codec: Codec, streaming: bool) -> Result<(), Error> {
    let content_type = headers
        .get(CONTENT_TYPE)
        .map(HeaderValue::as_bytes)
        .unwrap_or_default();
    let (prefix, parsed) = if streaming {
        (
            &b"application/connect+"[..],
            Codec::from_stream_content_type(content_type),
        )
    } else {
        (
            &b"application/"[..],
            Codec::from_unary_content_type(content_type),
        )
    };
    match parsed {
        Some(got) if got == codec => Ok(()),
        // C4: a Connect content type with another codec is `internal`.
        _ if content_type.starts_with(prefix) => Err(Error::internal(format!(
            "protocol error: asked for {} but the server answered with content type {:?}",
            codec.name(),
            String::from_utf8_lossy(content_type)
        ))),
        // C3: not a Connect response at all is `unknown`.
        _ => Err(Error::new(
            Code::Unknown,
            format!(
                "the server answered with content type {:?}, which is not a Connect response",
                String::from_utf8_lossy(content_type)
            ),
        )),
    }
}

/// Builds the error for a non-200 response: the JSON error body if there is a valid one
/// (C2), otherwise the code mapped from the HTTP status (C1).
async fn error_from_response(
    status: StatusCode,
    headers: HeaderMap,
    trailers: HeaderMap,
    body: RecvBody,
    inner: &ChannelInner,
) -> Error {
    let is_json = headers
        .get(CONTENT_TYPE)
        .is_some_and(|ct| Codec::from_unary_content_type(ct.as_bytes()) == Some(Codec::Json));
    // U6: the error body may be compressed. One larger than the message limit, or in an
    // encoding we do not know, is not worth reading: the status still tells the code.
    let compression = response_encoding(&headers, &CONTENT_ENCODING);
    let status_code = Code::from_http_status(status.as_u16());
    let parsed = match (is_json, compression) {
        (true, Ok(compression)) => match body::read_to_bytes(body, inner.max_message_size).await {
            Ok(bytes) => match compression {
                Some(c) => c
                    .decompress(&bytes, inner.max_message_size)
                    .ok()
                    .and_then(|b| error_json::decode_error(&b, status_code)),
                None => error_json::decode_error(&bytes, status_code),
            },
            Err(_) => None,
        },
        _ => None,
    };
    // C6: a GET's 304 is "not modified", with the headers (an ETag) it came with.
    if status == StatusCode::NOT_MODIFIED {
        let mut error = Error::new(
            Code::Unknown,
            format!("not modified: HTTP 304 from {}", inner.base_url),
        );
        error.metadata_mut().extend(headers);
        return error;
    }
    let mut error = parsed.unwrap_or_else(|| {
        Error::new(
            status_code,
            format!(
                "HTTP status {status} from {} with no Connect error body",
                inner.base_url
            ),
        )
    });
    let metadata = error.metadata_mut();
    metadata.extend(headers);
    metadata.extend(trailers);
    error
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn u7_trailer_headers_are_split_and_unprefixed() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "content-type",
            HeaderValue::from_static("application/proto"),
        );
        headers.append("trailer-x-count", HeaderValue::from_static("1"));
        headers.append("trailer-x-count", HeaderValue::from_static("2"));
        let (plain, trailers) = split_trailers(headers);
        assert_eq!(plain.len(), 1);
        assert_eq!(trailers.get_all("x-count").iter().count(), 2);
    }

    #[test]
    fn c3_c4_response_content_type_checks() {
        let mut h = HeaderMap::new();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        assert_eq!(
            check_content_type(&h, Codec::Proto, false)
                .unwrap_err()
                .code(),
            Code::Internal
        );
        assert!(check_content_type(&h, Codec::Json, false).is_ok());
        h.insert(CONTENT_TYPE, HeaderValue::from_static("image/jpeg"));
        assert_eq!(
            check_content_type(&h, Codec::Json, false)
                .unwrap_err()
                .code(),
            Code::Unknown
        );
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/connect+json"),
        );
        assert_eq!(
            check_content_type(&h, Codec::Proto, true)
                .unwrap_err()
                .code(),
            Code::Internal
        );
    }

    #[test]
    fn endpoint_validation_names_the_problem() {
        let err = Channel::new("127.0.0.1:8080").unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains("127.0.0.1:8080"), "{err}");
        let err = Channel::new("https://example.com").unwrap_err();
        assert!(err.message().contains("ChannelBuilder::tls"), "{err}");
        assert!(Channel::new("ftp://example.com").is_err());
        assert!(Channel::new("http://127.0.0.1:1/prefix/").is_ok());
    }

    #[test]
    fn a_derived_channel_adds_its_path_and_metadata() {
        let mut base_metadata = HeaderMap::new();
        base_metadata.insert("x-a", HeaderValue::from_static("base"));
        base_metadata.insert("x-b", HeaderValue::from_static("base"));
        let base = Channel::builder("http://127.0.0.1:1/host/")
            .metadata(base_metadata)
            .timeout(Duration::from_secs(3))
            .build()
            .unwrap();
        let mut extra = HeaderMap::new();
        extra.insert("x-b", HeaderValue::from_static("derived"));
        let derived = base.derive("/services/logger/l-1/", extra).unwrap();
        assert_eq!(
            derived.base_url(),
            "http://127.0.0.1:1/host/services/logger/l-1"
        );
        assert_eq!(derived.inner.prefix, "/host/services/logger/l-1");
        assert_eq!(derived.metadata()["x-a"], "base");
        assert_eq!(
            derived.metadata()["x-b"],
            "derived",
            "the derived value wins"
        );
        assert_eq!(derived.inner.timeout, Some(Duration::from_secs(3)));
        assert!(
            Arc::ptr_eq(&base.inner.http, &derived.inner.http),
            "one connection"
        );

        for bad in ["services/x", "/x?y=1", "/x#f"] {
            let err = base.derive(bad, HeaderMap::new()).unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument);
            assert!(err.message().contains(bad), "{err}");
        }
    }
}

//! Typed handlers behind type erasure: a [`Service`] holds one [`Handler`] per procedure, each
//! of which decodes the request, runs the user's function under the call's deadline and
//! encodes the response in the right shape for its stream kind.
//!
//! A handler receives a [`Call`] the router has already validated and does not check the verb,
//! content type or protocol headers again ([`super::router`] does); the byte formats it reads and
//! writes are [`crate::protocol`]'s.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_ENCODING, CONTENT_TYPE};
use http::{HeaderMap, StatusCode};
use tokio::time::Instant;

use super::response::{copy_trailers_as_headers, copy_user_headers, error_response};
use crate::body::{self, Body, RecvBody};
use crate::deadline;
use crate::method::MethodDescriptor;
use crate::protocol::Codec;
use crate::protocol::codec::Message;
use crate::protocol::compression::Compression;
use crate::protocol::envelope::MessageFormat;
use crate::protocol::headers::CONNECT_CONTENT_ENCODING;
use crate::stream::{self, Direction, MessageStream, ResponseStreamBody, Streaming};
use crate::{Code, Error, Request, Response};

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The request body: from the connection, or already in hand (a GET's query string).
pub(crate) enum CallBody {
    Http(RecvBody),
    Ready(Bytes),
}

/// What a handler needs, once the router has validated the protocol headers.
pub(crate) struct Call {
    pub(crate) headers: HeaderMap,
    pub(crate) body: CallBody,
    pub(crate) codec: Codec,
    /// How the request's messages are compressed (`Content-Encoding` or
    /// `Connect-Content-Encoding`).
    pub(crate) request_compression: Option<Compression>,
    /// How to compress the response, as negotiated from the client's accept list.
    pub(crate) response_compression: Option<Compression>,
    /// When the client's `Connect-Timeout-Ms` runs out; bounds reading the request too.
    pub(crate) deadline: Option<Instant>,
    pub(crate) max_message_size: usize,
    pub(crate) compress_min_bytes: usize,
    pub(crate) body_timeout: std::time::Duration,
    /// The connection's peer, if the call came over a socket.
    pub(crate) peer: crate::request::Peer,
    /// Tells the server's interceptors the outcome (only when there are some).
    pub(crate) observer: Option<super::intercept::Observer>,
}

impl Call {
    /// Tells the interceptors, if any, how the call ended.
    fn finish(&mut self, outcome: Result<(), &Error>) {
        if let Some(observer) = self.observer.take() {
            observer.finish(outcome);
        }
    }

    fn request_format(&self) -> MessageFormat {
        MessageFormat {
            codec: self.codec,
            compression: self.request_compression,
            compress_min_bytes: self.compress_min_bytes,
            max_message_size: self.max_message_size,
        }
    }

    fn response_format(&self) -> MessageFormat {
        MessageFormat {
            compression: self.response_compression,
            ..self.request_format()
        }
    }

    fn timeout(&self) -> Option<std::time::Duration> {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// The whole unary request message, decompressed and decoded.
    async fn read_unary<Req: Message>(&mut self) -> Result<Req, Error> {
        let body = std::mem::replace(&mut self.body, CallBody::Ready(Bytes::new()));
        let bytes = match body {
            CallBody::Ready(bytes) => bytes,
            CallBody::Http(incoming) => {
                let read = body::read_to_bytes(incoming, self.max_message_size);
                tokio::time::timeout(self.body_timeout, read)
                    .await
                    .map_err(|_| {
                        Error::new(
                            Code::DeadlineExceeded,
                            format!(
                                "the request body did not arrive within {} ms",
                                self.body_timeout.as_millis()
                            ),
                        )
                    })??
            }
        };
        let bytes = match self.request_compression {
            Some(c) => c.decompress(&bytes, self.max_message_size)?,
            None => bytes,
        };
        self.codec.decode(bytes)
    }

    /// The request messages as a stream (client and bidi streaming).
    fn request_stream<Req: Message>(&mut self) -> Result<Streaming<Req>, Error> {
        let body = std::mem::replace(&mut self.body, CallBody::Ready(Bytes::new()));
        match body {
            CallBody::Http(incoming) => Ok(Streaming::new(
                incoming,
                self.request_format(),
                Direction::FromClient,
                self.deadline,
            )),
            // The router only builds `Ready` bodies for unary GET calls.
            CallBody::Ready(_) => Err(Error::internal("a streaming call arrived without a body")),
        }
    }
}

/// One procedure's type-erased handler. Called through an `Arc` so the returned future can own
/// the handler without cloning the user's closure.
pub(crate) trait Handler: Send + Sync + 'static {
    fn call(self: Arc<Self>, call: Call) -> BoxFuture<http::Response<Body>>;
}

/// Runs `fut` within the call's deadline: past it, `deadline_exceeded`; inside it, client
/// calls made by the handler inherit the deadline.
async fn with_deadline<T>(
    deadline: Option<Instant>,
    fut: impl Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    match deadline {
        None => fut.await,
        Some(d) => tokio::time::timeout_at(d, deadline::scope(Some(d), fut))
            .await
            .unwrap_or_else(|_| {
                Err(Error::new(
                    Code::DeadlineExceeded,
                    "the call's timeout (Connect-Timeout-Ms) expired",
                ))
            }),
    }
}

/// A set of procedures of one protobuf service, ready to be served. Built by generated code
/// (`KvServiceServer::new(impl).into_service()`); users
/// rarely build one by hand.
pub struct Service {
    name: &'static str,
    pub(crate) routes: Vec<(&'static MethodDescriptor, Arc<dyn Handler>)>,
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

macro_rules! handler_kind {
    ($(#[$doc:meta])* $method:ident, $handler:ident, $input:ty, $output:ty) => {
        $(#[$doc])*
        #[must_use]
        pub fn $method<Req, Res, F, Fut>(mut self, method: &'static MethodDescriptor, handler: F) -> Self
        where
            Req: Message,
            Res: Message,
            F: Fn(Request<$input>) -> Fut + Send + Sync + 'static,
            Fut: Future<Output = Result<Response<$output>, Error>> + Send + 'static,
        {
            let handler = $handler { f: handler, _types: std::marker::PhantomData };
            self.routes.push((method, Arc::new(handler)));
            self
        }
    };
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

    handler_kind!(
        /// Adds a unary procedure.
        unary, UnaryHandler, Req, Res
    );
    handler_kind!(
        /// Adds a server-streaming procedure.
        server_streaming, ServerStreamHandler, Req, MessageStream<Res>
    );
    handler_kind!(
        /// Adds a client-streaming procedure.
        client_streaming, ClientStreamHandler, Streaming<Req>, Res
    );
    handler_kind!(
        /// Adds a bidirectional-streaming procedure (full duplex over HTTP/2, half duplex
        /// over HTTP/1.1).
        bidi_streaming, BidiStreamHandler, Streaming<Req>, MessageStream<Res>
    );
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
    fn call(self: Arc<Self>, mut call: Call) -> BoxFuture<http::Response<Body>> {
        Box::pin(async move {
            let result = with_deadline(call.deadline, async {
                let message = call.read_unary::<Req>().await?;
                let headers = std::mem::take(&mut call.headers);
                let request =
                    Request::from_parts(message, headers, call.timeout(), call.peer.clone());
                (self.f)(request).await
            })
            .await;
            let answer = result.and_then(|response| unary_response(&call, response));
            call.finish(answer.as_ref().map(drop));
            answer.unwrap_or_else(|error| error_response(&error))
        })
    }
}

fn unary_response<Res: Message>(
    call: &Call,
    response: Response<Res>,
) -> Result<http::Response<Body>, Error> {
    let (message, headers, trailers) = response.into_parts();
    let mut buf = BytesMut::new();
    call.codec.encode(&message, &mut buf)?;
    let mut out_compression = None;
    let body = match call.response_compression {
        Some(c) if buf.len() >= call.compress_min_bytes => {
            let mut compressed = BytesMut::new();
            c.compress(&buf, &mut compressed)?;
            out_compression = Some(c);
            compressed.freeze()
        }
        _ => buf.freeze(),
    };
    let mut out = http::Response::new(Body::full(body));
    let h = out.headers_mut();
    h.insert(CONTENT_TYPE, call.codec.unary_content_type());
    if let Some(c) = out_compression {
        h.insert(CONTENT_ENCODING, c.header_value());
    }
    copy_user_headers(&headers, h);
    copy_trailers_as_headers(&trailers, h);
    Ok(out)
}

/// The start of a streaming response: 200, the stream content type and, if negotiated, the
/// response compression (S2, S6).
fn stream_response(call: &Call, headers: &HeaderMap, body: Body) -> http::Response<Body> {
    let mut out = http::Response::new(body);
    *out.status_mut() = StatusCode::OK;
    let h = out.headers_mut();
    h.insert(CONTENT_TYPE, call.codec.stream_content_type());
    if let Some(c) = call.response_compression {
        h.insert(CONNECT_CONTENT_ENCODING.clone(), c.header_value());
    }
    copy_user_headers(headers, h);
    out
}

/// A refusal of a streaming call before its handler runs (an interceptor's): the error, with
/// all its metadata (a retry hint, say), in the end-stream message, where stream clients read
/// an error's metadata.
pub(crate) fn stream_refusal(call: &Call, error: &Error) -> http::Response<Body> {
    let mut out = http::Response::new(Body::full(stream::end_stream_error(error)));
    out.headers_mut()
        .insert(CONTENT_TYPE, call.codec.stream_content_type());
    out
}

/// A handler's error that ends a streaming call before any message. The error's
/// metadata is split as for a unary error: names with the `trailer-` prefix go (without it)
/// in the end-stream message's metadata, the others in the response headers.
pub(crate) fn stream_error(call: &Call, error: &Error) -> http::Response<Body> {
    let body = if error.metadata().is_empty() {
        stream::end_stream_error(error)
    } else {
        let mut headers = HeaderMap::new();
        let mut trailers = HeaderMap::new();
        let mut name = None;
        for (key, value) in error.metadata().clone() {
            if let Some(key) = key {
                name = Some(key);
            }
            let Some(key) = &name else { continue };
            match key.as_str().strip_prefix("trailer-") {
                Some(stripped) => {
                    if let Ok(stripped) = http::HeaderName::from_bytes(stripped.as_bytes()) {
                        trailers.append(stripped, value);
                    }
                }
                None => {
                    headers.append(key.clone(), value);
                }
            }
        }
        let mut bare = error.clone();
        *bare.metadata_mut() = HeaderMap::new();
        let mut buf = BytesMut::new();
        stream::end_stream(Some(&bare), &trailers, &mut buf);
        let mut out = http::Response::new(Body::full(buf.freeze()));
        copy_user_headers(&headers, out.headers_mut());
        out.headers_mut()
            .insert(CONTENT_TYPE, call.codec.stream_content_type());
        return out;
    };
    let mut out = http::Response::new(Body::full(body));
    out.headers_mut()
        .insert(CONTENT_TYPE, call.codec.stream_content_type());
    out
}

fn stream_body<Res: Message>(
    call: &mut Call,
    response: Response<MessageStream<Res>>,
) -> http::Response<Body> {
    let (stream, headers, trailers) = response.into_parts();
    let mut body = ResponseStreamBody::new(stream, call.response_format(), trailers, call.deadline);
    if let Some(observer) = call.observer.take() {
        body = body.on_end(Box::new(move |outcome| observer.finish(outcome)));
    }
    stream_response(call, &headers, Body::Stream(Box::pin(body)))
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
    Fut: Future<Output = Result<Response<MessageStream<Res>>, Error>> + Send + 'static,
{
    fn call(self: Arc<Self>, mut call: Call) -> BoxFuture<http::Response<Body>> {
        Box::pin(async move {
            let result = with_deadline(call.deadline, async {
                let mut requests = call.request_stream::<Req>()?;
                let message = exactly_one(&mut requests, "server-streaming", "request").await?;
                let headers = std::mem::take(&mut call.headers);
                let request =
                    Request::from_parts(message, headers, call.timeout(), call.peer.clone());
                (self.f)(request).await
            })
            .await;
            match result {
                Ok(response) => stream_body(&mut call, response),
                Err(error) => {
                    call.finish(Err(&error));
                    stream_error(&call, &error)
                }
            }
        })
    }
}

/// S9: reads exactly one message, or fails with `unimplemented` naming the violation.
async fn exactly_one<T: Message>(
    stream: &mut Streaming<T>,
    kind: &str,
    what: &str,
) -> Result<T, Error> {
    let Some(message) = stream.message().await? else {
        return Err(Error::unimplemented(format!(
            "protocol error: a {kind} call needs exactly one {what} message, got none"
        )));
    };
    if stream.message().await?.is_some() {
        return Err(Error::unimplemented(format!(
            "protocol error: a {kind} call needs exactly one {what} message, got several"
        )));
    }
    Ok(message)
}

struct ClientStreamHandler<F, Req, Res> {
    f: F,
    _types: std::marker::PhantomData<fn(Req) -> Res>,
}

impl<Req, Res, F, Fut> Handler for ClientStreamHandler<F, Req, Res>
where
    Req: Message,
    Res: Message,
    F: Fn(Request<Streaming<Req>>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<Res>, Error>> + Send + 'static,
{
    fn call(self: Arc<Self>, mut call: Call) -> BoxFuture<http::Response<Body>> {
        Box::pin(async move {
            let result = with_deadline(call.deadline, async {
                let requests = call.request_stream::<Req>()?;
                let headers = std::mem::take(&mut call.headers);
                (self.f)(Request::from_parts(
                    requests,
                    headers,
                    call.timeout(),
                    call.peer.clone(),
                ))
                .await
            })
            .await;
            match result {
                // The one response message, then the end-stream message with the trailers.
                Ok(response) => {
                    let (message, headers, trailers) = response.into_parts();
                    let mut buf = BytesMut::new();
                    if let Err(error) = call.response_format().encode(&message, &mut buf) {
                        call.finish(Err(&error));
                        return stream_error(&call, &error);
                    }
                    call.finish(Ok(()));
                    stream::end_stream(None, &trailers, &mut buf);
                    stream_response(&call, &headers, Body::full(buf.freeze()))
                }
                Err(error) => {
                    call.finish(Err(&error));
                    stream_error(&call, &error)
                }
            }
        })
    }
}

struct BidiStreamHandler<F, Req, Res> {
    f: F,
    _types: std::marker::PhantomData<fn(Req) -> Res>,
}

impl<Req, Res, F, Fut> Handler for BidiStreamHandler<F, Req, Res>
where
    Req: Message,
    Res: Message,
    F: Fn(Request<Streaming<Req>>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<MessageStream<Res>>, Error>> + Send + 'static,
{
    fn call(self: Arc<Self>, mut call: Call) -> BoxFuture<http::Response<Body>> {
        Box::pin(async move {
            let result = with_deadline(call.deadline, async {
                let requests = call.request_stream::<Req>()?;
                let headers = std::mem::take(&mut call.headers);
                (self.f)(Request::from_parts(
                    requests,
                    headers,
                    call.timeout(),
                    call.peer.clone(),
                ))
                .await
            })
            .await;
            match result {
                Ok(response) => stream_body(&mut call, response),
                Err(error) => {
                    call.finish(Err(&error));
                    stream_error(&call, &error)
                }
            }
        })
    }
}

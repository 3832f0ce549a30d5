//! Routing by procedure path, and the protocol checks every call shares: verb, content type,
//! protocol version, timeout and compression negotiation (spec §"Requests"; rules P1-P5,
//! U1-U3, U8, G1-G5, S1, S2).
//!
//! The router only accepts or rejects a call and picks its handler: decoding messages and running
//! user code are [`super::handler`]'s, and the header values and query strings it checks are parsed
//! by [`crate::protocol`]. Raw routes are passed the request as it came; what they serve is their
//! owner's.

use std::collections::HashMap;
use std::sync::Arc;

use http::header::{ACCEPT_ENCODING, ALLOW, CONTENT_ENCODING, CONTENT_TYPE, HeaderValue};
use http::{Method, StatusCode};
use tokio::time::Instant;

use super::handler::{Call, CallBody, Handler};
use super::intercept::{CallContext, ObservedBody, Observer, ServerInterceptor};
use super::response::{error_response, error_response_with_status};
use crate::body::{Body, RecvBody};
use crate::method::{Idempotency, MethodDescriptor, StreamKind};
use crate::protocol::compression::Compression;
use crate::protocol::headers::{
    CONNECT_ACCEPT_ENCODING, CONNECT_CONTENT_ENCODING, CONNECT_PROTOCOL_VERSION, CONNECT_TIMEOUT_MS,
};
use crate::protocol::{Codec, get, timeout};
use crate::{Error, stream};

pub(crate) struct Route {
    pub(crate) method: &'static MethodDescriptor,
    pub(crate) handler: Arc<dyn Handler>,
}

/// Limits and tuning shared by every call of a server.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CallLimits {
    pub(crate) max_message_size: usize,
    pub(crate) compress_min_bytes: usize,
    /// How long a unary request's body may take to arrive (a trickling body must not hold a
    /// handler forever when the client set no timeout).
    pub(crate) body_timeout: std::time::Duration,
}

/// A handler of plain HTTP requests (probes, proxies), outside the Connect procedures.
pub type RawHandler = Arc<
    dyn Fn(http::Request<RecvBody>) -> super::handler::BoxFuture<http::Response<Body>>
        + Send
        + Sync,
>;

pub(crate) struct Router {
    pub(crate) routes: HashMap<&'static str, Route>,
    /// Plain HTTP handlers by exact path.
    pub(crate) raw: HashMap<&'static str, RawHandler>,
    /// Plain HTTP handlers by path prefix, longest first.
    pub(crate) prefixes: Vec<PrefixRoute>,
    pub(crate) limits: CallLimits,
    /// Checked before anything else, on every request.
    pub(crate) guard: Option<Guard>,
    /// Run before each call's handler, and told its outcome.
    pub(crate) interceptors: Arc<[Arc<dyn ServerInterceptor>]>,
}

/// Plain HTTP requests under a path prefix.
pub(crate) struct PrefixRoute {
    pub(crate) prefix: String,
    pub(crate) handler: RawHandler,
    /// Forwards Connect calls (whose paths end with the procedure): the server's
    /// interceptors see them.
    pub(crate) proxy: bool,
}

/// A check every request must pass before it is routed (who may call this server at all);
/// its error is the response.
pub type Guard = Arc<dyn Fn(&http::Request<RecvBody>) -> Result<(), Error> + Send + Sync>;

impl Router {
    /// Routes `request`, which came from `peer`.
    pub(crate) async fn handle(
        &self,
        request: http::Request<RecvBody>,
        peer: &crate::request::Peer,
    ) -> http::Response<Body> {
        // One hash lookup on the hot path; plain HTTP routes only when it misses.
        let route = self.routes.get(request.uri().path());
        if let Some(guard) = &self.guard
            && let Err(refused) = guard(&request)
        {
            // Unknown here (a forwarded call): a stream by its content type.
            let streaming = route.map_or_else(
                || {
                    request
                        .headers()
                        .get(CONTENT_TYPE)
                        .is_some_and(|v| v.as_bytes().starts_with(b"application/connect+"))
                },
                |r| r.method.kind.is_streaming(),
            );
            return refusal_response(&request, streaming, &refused);
        }
        let Some(route) = route else {
            return self.handle_other(request, peer).await;
        };
        let (parts, body) = request.into_parts();
        let kind = route.method.kind;
        let get_allowed =
            kind == StreamKind::Unary && route.method.idempotency == Idempotency::NoSideEffects;
        // An HTTP/1.1 body worth reading on after a refusal: not one the client waits to be
        // asked for (`Expect: 100-continue`), nor one larger than the bound.
        let http1 = parts.version < http::Version::HTTP_2
            && !parts.headers.contains_key(http::header::EXPECT)
            && http_body::Body::size_hint(&body)
                .exact()
                .is_none_or(|n| n <= DRAIN_REFUSED as u64);
        let mut body = Some(body);
        let call = match parts.method {
            Method::POST => self.post(parts, &mut body, kind, peer),
            Method::GET if get_allowed => self.get(parts, peer),
            ref other => {
                // P2, G5: only POST, and GET for side-effect-free unary methods.
                // No Connect error body (connect-go sends none): a client reads the bare 405
                // as `unknown`, as the conformance suite expects.
                let allow = if get_allowed { "GET, POST" } else { "POST" };
                tracing::debug!(method = %other, procedure = route.method.path, "refused: HTTP method not allowed");
                let mut response = http::Response::new(Body::empty());
                *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
                response
                    .headers_mut()
                    .insert(ALLOW, HeaderValue::from_static(allow));
                return response;
            }
        };
        let mut call = match call {
            Ok(call) => call,
            Err(rejection) => {
                // An HTTP/1.1 client still writing its body would get a broken pipe if the
                // answer closed the connection first: read a little of it.
                if let (true, Some(body)) = (http1, body) {
                    drain(body, DRAIN_REFUSED, std::time::Duration::from_secs(1)).await;
                }
                return rejection;
            }
        };
        if !self.interceptors.is_empty() {
            let context = CallContext {
                method: Some(route.method),
                procedure: route.method.path,
                headers: &call.headers,
                peer: &mut call.peer,
                deadline: call.deadline,
            };
            let (observer, refusal) = Observer::before(&self.interceptors, context);
            if let Some(refused) = refusal {
                // The refusing interceptor sees it too (its `before` ran).
                observer.finish(Err(&refused));
                // As the handler would have answered: a stream's error in its end-stream
                // message (metadata such as a retry hint included), a unary one with its
                // code's status.
                if kind.is_streaming() {
                    return super::handler::stream_refusal(&call, &refused);
                }
                return error_response_with_status(
                    &refused,
                    StatusCode::from_u16(refused.code().http_status())
                        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                );
            }
            call.observer = Some(observer);
        }
        Arc::clone(&route.handler).call(call).await
    }

    /// Plain HTTP routes (exact, then by prefix), else the 404 of an unknown procedure.
    async fn handle_other(
        &self,
        request: http::Request<RecvBody>,
        peer: &crate::request::Peer,
    ) -> http::Response<Body> {
        let path = request.uri().path();
        if let Some(handler) = self.raw.get(path) {
            return handler(request).await;
        }
        let prefixed = self
            .prefixes
            .iter()
            .find(|route| path.starts_with(route.prefix.as_str()));
        if let Some(route) = prefixed {
            if route.proxy && !self.interceptors.is_empty() {
                return self.proxy(&route.handler, request, peer).await;
            }
            return (route.handler)(request).await;
        }
        // P1: an unknown procedure is a 404, which clients read as `unimplemented`.
        error_response_with_status(
            &Error::unimplemented(format!(
                "no procedure at {path}: check the service and method names (paths are /<package>.<Service>/<Method>, case-sensitive)"
            )),
            StatusCode::NOT_FOUND,
        )
    }

    /// A call a proxy route forwards, through the interceptors: its procedure is the end of
    /// its path, and its outcome the status of the answer (a stream's, when it opens).
    async fn proxy(
        &self,
        handler: &RawHandler,
        request: http::Request<RecvBody>,
        peer: &crate::request::Peer,
    ) -> http::Response<Body> {
        let path = request.uri().path();
        let procedure = connect_procedure(path);
        let deadline = request
            .headers()
            .get(&CONNECT_TIMEOUT_MS)
            .and_then(|v| timeout::parse(v).ok())
            .and_then(|t| Instant::now().checked_add(t));
        let mut peer = peer.clone();
        let context = CallContext {
            method: None,
            procedure,
            headers: request.headers(),
            peer: &mut peer,
            deadline,
        };
        let (observer, refusal) = Observer::before(&self.interceptors, context);
        if let Some(refused) = refusal {
            observer.finish(Err(&refused));
            return refusal_response(&request, true, &refused);
        }
        let response = handler(request).await;
        if response.status() != StatusCode::OK {
            let code = crate::Code::from_http_status(response.status().as_u16());
            observer.finish(Err(&Error::new(
                code,
                format!(
                    "the forwarded call was answered with HTTP {}",
                    response.status()
                ),
            )));
            return response;
        }
        // The outcome comes when the answer has been passed on (or given up).
        let length = response
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        response.map(|body| Body::Stream(Box::pin(ObservedBody::new(body, observer, length))))
    }

    // The rejection is a cold path and `Call` is no smaller: boxing buys nothing here.
    #[allow(clippy::result_large_err)]
    fn post(
        &self,
        parts: http::request::Parts,
        body: &mut Option<RecvBody>,
        kind: StreamKind,
        peer: &crate::request::Peer,
    ) -> Result<Call, http::Response<Body>> {
        let streaming = kind.is_streaming();
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
            // U2, S1: an unsupported content type is a 415 listing the ones we accept.
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
            return Err(response);
        };
        // Protocol errors of a stream travel in an end-stream message with a 200 (S6).
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
            return Err(reject(Error::invalid_argument(format!(
                "unsupported Connect-Protocol-Version {version:?}: this server speaks version 1"
            ))));
        }
        let deadline = deadline(&parts).map_err(reject)?;
        let (encoding, accept) = if streaming {
            (&CONNECT_CONTENT_ENCODING, &CONNECT_ACCEPT_ENCODING)
        } else {
            (&CONTENT_ENCODING, &ACCEPT_ENCODING)
        };
        let request_compression = match parts.headers.get(encoding) {
            Some(name) => Compression::parse(name.as_bytes()).map_err(reject)?,
            None => None,
        };
        // U3, S2: without an accept list, the client accepts what it sent.
        let response_compression = match parts.headers.get(accept) {
            Some(list) => Compression::negotiate(list.as_bytes()),
            None => request_compression,
        };
        Ok(Call {
            headers: parts.headers,
            body: CallBody::Http({
                let body = body
                    .take()
                    .ok_or_else(|| error_response(&Error::internal("the request body is gone")))?;
                // Over HTTP/1.1 a stream the handler stops reading early (a message over the
                // limit, an error) is read on, so the client finishing its upload reads the
                // answer instead of a broken pipe.
                if streaming && parts.version < http::Version::HTTP_2 {
                    RecvBody::Boxed(Box::pin(DrainOnDrop(Some(body))))
                } else {
                    body
                }
            }),
            codec,
            request_compression,
            response_compression,
            deadline,
            max_message_size: self.limits.max_message_size,
            compress_min_bytes: self.limits.compress_min_bytes,
            body_timeout: self.limits.body_timeout,
            peer: peer.clone(),
            observer: None,
        })
    }

    #[allow(clippy::result_large_err)]
    fn get(
        &self,
        parts: http::request::Parts,
        peer: &crate::request::Peer,
    ) -> Result<Call, http::Response<Body>> {
        let query = parts.uri.query().unwrap_or_default();
        let request = get::parse_query(query).map_err(|error| {
            if get::is_unsupported_encoding(&error) {
                // G3: an unsupported encoding is a 415, like an unsupported content type.
                let mut response = http::Response::new(Body::empty());
                *response.status_mut() = StatusCode::UNSUPPORTED_MEDIA_TYPE;
                response
            } else {
                error_response(&error)
            }
        })?;
        let deadline = deadline(&parts).map_err(|e| error_response(&e))?;
        let response_compression = parts
            .headers
            .get(ACCEPT_ENCODING)
            .and_then(|list| Compression::negotiate(list.as_bytes()));
        Ok(Call {
            headers: parts.headers,
            body: CallBody::Ready(request.message),
            codec: request.codec,
            request_compression: request.compression,
            response_compression,
            deadline,
            max_message_size: self.limits.max_message_size,
            compress_min_bytes: self.limits.compress_min_bytes,
            body_timeout: self.limits.body_timeout,
            peer: peer.clone(),
            observer: None,
        })
    }
}

/// A guard's refusal, answered as the procedure would answer an error: a streaming call's in
/// its end-stream message (HTTP 200, so that stream clients read it), anything else with the
/// code's HTTP status.
fn refusal_response(
    request: &http::Request<RecvBody>,
    streaming: bool,
    refused: &Error,
) -> http::Response<Body> {
    let stream_codec = request
        .headers()
        .get(CONTENT_TYPE)
        .filter(|_| streaming)
        .and_then(|v| Codec::from_stream_content_type(v.as_bytes()));
    if let Some(codec) = stream_codec {
        let mut response = http::Response::new(Body::full(stream::end_stream_error(refused)));
        response
            .headers_mut()
            .insert(CONTENT_TYPE, codec.stream_content_type());
        return response;
    }
    error_response_with_status(
        refused,
        StatusCode::from_u16(refused.code().http_status()).unwrap_or(StatusCode::UNAUTHORIZED),
    )
}

/// The Connect procedure at the end of a forwarded call's path: its last two segments
/// (`/pkg.Service/Method`), or the whole path if it has fewer.
fn connect_procedure(path: &str) -> &str {
    let mut slashes = path.rmatch_indices('/').map(|(i, _)| i);
    match (slashes.next(), slashes.next()) {
        (Some(_), Some(start)) => &path[start..],
        _ => path,
    }
}

/// A request body that, dropped before its end, is read on in the background (at most
/// [`DRAIN_DROPPED`], for at most 5 s) and thrown away.
struct DrainOnDrop(Option<RecvBody>);

impl http_body::Body for DrainOnDrop {
    type Data = bytes::Bytes;
    type Error = crate::body::RecvError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        match self.0.as_mut() {
            Some(body) => std::pin::Pin::new(body).poll_frame(cx),
            None => std::task::Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0.as_ref().is_none_or(http_body::Body::is_end_stream)
    }
}

impl Drop for DrainOnDrop {
    fn drop(&mut self) {
        let Some(body) = self.0.take() else { return };
        let too_much = http_body::Body::size_hint(&body)
            .exact()
            .is_some_and(|n| n > DRAIN_DROPPED as u64);
        if http_body::Body::is_end_stream(&body) || too_much {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(drain(
                body,
                DRAIN_DROPPED,
                std::time::Duration::from_secs(5),
            ));
        }
    }
}

/// How much of a refused HTTP/1.1 request's body is read on.
const DRAIN_REFUSED: usize = 64 * 1024;

/// How much of a streaming HTTP/1.1 request's body is read on once its handler stopped.
const DRAIN_DROPPED: usize = 16 * 1024 * 1024;

/// Reads and drops up to `budget` bytes of a request's body, for at most `time`.
async fn drain(body: RecvBody, budget: usize, time: std::time::Duration) {
    use http_body_util::BodyExt as _;
    let mut body = body;
    let mut left = budget;
    let _ = tokio::time::timeout(time, async {
        while left > 0 {
            match body.frame().await {
                Some(Ok(frame)) => {
                    left = left.saturating_sub(frame.data_ref().map_or(0, |d| d.len()));
                }
                _ => return,
            }
        }
    })
    .await;
}

/// P5: the deadline from `Connect-Timeout-Ms`, if any.
fn deadline(parts: &http::request::Parts) -> Result<Option<Instant>, Error> {
    match parts.headers.get(&CONNECT_TIMEOUT_MS) {
        None => Ok(None),
        Some(value) => Ok(Instant::now().checked_add(timeout::parse(value)?)),
    }
}

//! Client interceptors: code that sees every call a [`crate::Channel`] makes.
//!
//! - An [`Interceptor`] sees each attempt's headers before it is sent (to add metadata such as
//!   credentials or trace ids, or to refuse it) and its outcome (to log or count).
//! - A [`Wrap`] wraps a whole call: it gets the request (procedure, headers, encoded message)
//!   and the rest of the chain ([`Next`]), and may short-circuit, call the rest once or several
//!   times (retry), or look at the outcome (a circuit breaker). Streaming calls go through
//!   [`Wrap::stream`] with a [`StreamCall`]: the chain ends when the stream opens (its response
//!   headers arrive), so a stream can be sent again only while no message of it has gone out
//!   ([`StreamCall::replayable`]), and its later outcome is watched with
//!   [`StreamReply::on_first_outcome`]. Wrappers run in the order added, the first outermost;
//!   the channel's timeout bounds the whole chain, retries included. A channel without wrappers
//!   pays nothing for them.
//!
//! [`crate::Channel`] runs them. Servers have interceptors of their own
//! ([`crate::server::intercept`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;

use crate::body::{Body, RecvBody};
use crate::protocol::compression::Compression;
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

    /// Handles the opening of a streaming call (server, client or bidi streaming), usually by
    /// passing it to `next`; by default it does just that. Send it again only while
    /// [`StreamCall::replayable`] holds; watch what follows the opening with
    /// [`StreamReply::on_first_outcome`].
    fn stream<'a>(&'a self, call: StreamCall, next: StreamNext<'a>) -> StreamFuture<'a> {
        next.run(call)
    }
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

/// A boxed future of a wrapped stream's opening.
pub type StreamFuture<'a> = Pin<Box<dyn Future<Output = Result<StreamReply, Error>> + Send + 'a>>;

/// A streaming call on its way out, as [`Wrap::stream`] sees it. Clones share the request, so
/// a wrapper can send it again while it is [replayable](StreamCall::replayable).
#[derive(Clone)]
pub struct StreamCall {
    /// The procedure called.
    pub method: &'static MethodDescriptor,
    /// The request's metadata (the channel's own headers and the protocol's are added to each
    /// attempt).
    pub headers: HeaderMap,
    /// When the call's timeout runs out, if it has one: no attempt or wait may go past it.
    pub deadline: Option<tokio::time::Instant>,
    pub(crate) request: StreamRequest,
    /// How the request's messages are compressed (as the calling channel encoded them).
    pub(crate) compression: Option<Compression>,
}

impl std::fmt::Debug for StreamCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamCall")
            .field("procedure", &self.method.path)
            .field("replayable", &self.replayable())
            .finish_non_exhaustive()
    }
}

impl StreamCall {
    /// Whether the call may still be sent (again): always for a server-streaming call (its one
    /// request message is kept); for client and bidi streaming, until the first request
    /// message (or the request stream's failure or end) has been handed to a connection.
    pub fn replayable(&self) -> bool {
        match &self.request {
            StreamRequest::Ready(_) => true,
            StreamRequest::Shared(shared) => !shared.lock().started,
        }
    }

    /// The HTTP body of one attempt (which takes the request stream over from any earlier
    /// attempt).
    pub(crate) fn body(&self) -> Body {
        match &self.request {
            StreamRequest::Ready(bytes) => Body::full(bytes.clone()),
            StreamRequest::Shared(shared) => Body::Stream(Box::pin(shared.attempt())),
        }
    }

    /// Cuts the current attempt off the request stream (it failed): nothing more of the stream
    /// goes to it, so what [`StreamCall::replayable`] says stays true until another attempt.
    pub(crate) fn fence(&self) {
        if let StreamRequest::Shared(shared) = &self.request {
            shared.lock().epoch += 1;
        }
    }
}

/// The request body of a streaming call: enveloped messages ready to send again, or a
/// stream of them that each attempt takes over.
#[derive(Clone)]
pub(crate) enum StreamRequest {
    Ready(Bytes),
    Shared(Arc<SharedRequest>),
}

type BoxedBody = Pin<Box<dyn http_body::Body<Data = Bytes, Error = Error> + Send>>;

/// A request stream several attempts may use in turn: only the newest attempt reads it (the
/// epoch says which, checked under the same lock as every read); once anything of it has gone
/// out it is no longer replayable.
pub(crate) struct SharedRequest(Mutex<SharedState>);

struct SharedState {
    body: BoxedBody,
    /// Whether a frame (a message, the stream's failure or its end) was handed out.
    started: bool,
    /// The attempt that may read the stream.
    epoch: u64,
}

impl SharedRequest {
    pub(crate) fn new(body: BoxedBody) -> Arc<Self> {
        Arc::new(Self(Mutex::new(SharedState {
            body,
            started: false,
            epoch: 0,
        })))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SharedState> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn attempt(self: &Arc<Self>) -> AttemptBody {
        let mut state = self.lock();
        state.epoch += 1;
        AttemptBody {
            shared: Arc::clone(self),
            epoch: state.epoch,
        }
    }
}

/// One attempt's view of a [`SharedRequest`].
struct AttemptBody {
    shared: Arc<SharedRequest>,
    epoch: u64,
}

impl http_body::Body for AttemptBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Error>>> {
        let this = self.get_mut();
        let mut state = this.shared.lock();
        // Another attempt owns the stream: this one (failed or abandoned) sends nothing more,
        // and never touches the stream (nor its waker).
        if state.epoch != this.epoch {
            return Poll::Ready(Some(Err(Error::new(
                crate::Code::Canceled,
                "the stream was taken over by another attempt",
            ))));
        }
        let frame = state.body.as_mut().poll_frame(cx);
        if matches!(frame, Poll::Ready(Some(_))) {
            state.started = true;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        let state = self.shared.lock();
        state.epoch != self.epoch || state.body.is_end_stream()
    }
}

/// A stream opened: its response headers, and its body still to read.
pub struct StreamReply {
    /// The response headers.
    pub headers: HeaderMap,
    /// (Taken when the reply becomes a stream.)
    pub(crate) body: Option<RecvBody>,
    pub(crate) compression: Option<Compression>,
    pub(crate) watchers: Vec<FirstOutcome>,
}

/// A callback for the first outcome of a stream.
pub(crate) type FirstOutcome = Box<dyn FnOnce(Result<(), &Error>) + Send>;

impl std::fmt::Debug for StreamReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamReply")
            .field("headers", &self.headers)
            .finish_non_exhaustive()
    }
}

impl Drop for StreamReply {
    fn drop(&mut self) {
        // Dropped before it became a stream (a wrapper gave up on it): no verdict.
        tell_canceled(
            &mut self.watchers,
            "the opened stream was dropped before it was read",
        );
    }
}

/// Tells `watchers` (if any are left) that the stream was given up: `canceled`, no verdict.
pub(crate) fn tell_canceled(watchers: &mut Vec<FirstOutcome>, why: &str) {
    if watchers.is_empty() {
        return;
    }
    let gone = Error::new(crate::Code::Canceled, why);
    for watch in std::mem::take(watchers) {
        watch(Err(&gone));
    }
}

impl StreamReply {
    /// Calls `watch` once, with what the opened stream does first: `Ok` when its first
    /// message arrives or it ends cleanly, its error if it fails first, and `canceled` if the
    /// caller drops it before either. (A circuit breaker judges a stream by it.)
    pub fn on_first_outcome(&mut self, watch: impl FnOnce(Result<(), &Error>) + Send + 'static) {
        self.watchers.push(Box::new(watch));
    }
}

/// The rest of a wrapper chain for a streaming call: see [`Next`].
#[derive(Clone, Copy)]
pub struct StreamNext<'a> {
    rest: &'a [Arc<dyn Wrap>],
    send: &'a (dyn Fn(StreamCall) -> StreamFuture<'a> + Send + Sync),
}

impl std::fmt::Debug for StreamNext<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamNext")
            .field("wrappers_left", &self.rest.len())
            .finish()
    }
}

impl<'a> StreamNext<'a> {
    pub(crate) fn new(
        rest: &'a [Arc<dyn Wrap>],
        send: &'a (dyn Fn(StreamCall) -> StreamFuture<'a> + Send + Sync),
    ) -> Self {
        Self { rest, send }
    }

    /// Runs the rest of the chain with `call`; may be called again while the call is
    /// [replayable](StreamCall::replayable).
    pub fn run(self, call: StreamCall) -> StreamFuture<'a> {
        match self.rest.split_first() {
            Some((first, rest)) => first.stream(
                call,
                StreamNext {
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

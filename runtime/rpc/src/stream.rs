//! Streams of messages in both directions.
//!
//! Outgoing: a [`MessageStream`] (any `Stream` of `Result<T, Error>`) is what a handler returns
//! for a server or bidi stream ([`ServerStream`] is its name there) and what a client sends for
//! a client or bidi stream. Incoming: a [`Streaming`] reads the messages of the other side.
//! Both are encoded with the 5-byte envelope of the Connect streaming protocol (spec
//! "Streaming-Request", "Streaming-Response"; rules S3-S8).
//!
//! The envelope format and the end-stream JSON themselves are `crate::protocol`'s, and opening the
//! HTTP call or response that carries a stream is [`crate::channel`]'s and [`crate::server`]'s.

use std::future::Future as _;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use futures_core::Stream;
use http::HeaderMap;
use tokio::sync::mpsc;
use tokio::time::{Instant, Sleep};

use crate::body::RecvBody;
use crate::protocol::codec::Message;
use crate::protocol::envelope::{self, EnvelopeReader, FLAG_END_STREAM, MessageFormat};
use crate::protocol::error_json;
use crate::{Code, Error};

/// A stream of messages to send: any `Stream` of `Result<T, Error>`, boxed. An `Err` item ends
/// the stream: a server sends it as the call's error; a client aborts the call with it.
///
/// ```
/// use connect_plugin_rpc::MessageStream;
///
/// # async fn demo() {
/// // From values you already have:
/// let fixed: MessageStream<u32> = [1, 2, 3].into_iter().collect();
/// // Or fed as you go, with backpressure:
/// let (tx, stream) = MessageStream::<u32>::channel(16);
/// tokio::spawn(async move {
///     for i in 0..3 {
///         if tx.send(i).await.is_err() {
///             break; // the other side went away
///         }
///     }
/// });
/// # drop((fixed, stream));
/// # }
/// ```
pub struct MessageStream<T> {
    inner: Pin<Box<dyn Stream<Item = Result<T, Error>> + Send>>,
}

/// The stream a server-streaming or bidi handler returns.
pub type ServerStream<T> = MessageStream<T>;

impl<T: Send + 'static> MessageStream<T> {
    /// Wraps any stream of results.
    pub fn new<S>(stream: S) -> Self
    where
        S: Stream<Item = Result<T, Error>> + Send + 'static,
    {
        Self {
            inner: Box::pin(stream),
        }
    }

    /// A stream fed by a channel with room for `buffer` messages; the sender's `send` waits
    /// when the receiver reads slower than the producer writes (backpressure, nothing dropped).
    pub fn channel(buffer: usize) -> (StreamSender<T>, Self) {
        let (tx, rx) = mpsc::channel(buffer.max(1));
        (StreamSender { tx }, Self::new(ReceiverStream(rx)))
    }

    /// A stream with no messages.
    pub fn empty() -> Self {
        Self::new(IterStream(std::iter::empty()))
    }
}

/// A stream of the collected messages: `messages.into_iter().collect::<MessageStream<_>>()`.
impl<T: Send + 'static> FromIterator<T> for MessageStream<T> {
    fn from_iter<I: IntoIterator<Item = T>>(messages: I) -> Self {
        let messages: Vec<T> = messages.into_iter().collect();
        Self::new(IterStream(messages.into_iter()))
    }
}

impl<T> Stream for MessageStream<T> {
    type Item = Result<T, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

impl<T> std::fmt::Debug for MessageStream<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MessageStream")
    }
}

/// The sending half of [`MessageStream::channel`].
#[derive(Debug)]
pub struct StreamSender<T> {
    tx: mpsc::Sender<Result<T, Error>>,
}

impl<T> Clone for StreamSender<T> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
        }
    }
}

impl<T> StreamSender<T> {
    /// Sends a message, waiting for room. Fails with `canceled` once the receiving side has
    /// gone.
    pub async fn send(&self, message: T) -> Result<(), Error> {
        self.tx
            .send(Ok(message))
            .await
            .map_err(|_| Error::new(Code::Canceled, "the other side closed the stream"))
    }

    /// Ends the stream with `error`.
    pub async fn fail(self, error: Error) {
        let _ = self.tx.send(Err(error)).await;
    }

    /// Completes when the receiving side has gone (the stream was dropped), so a producer
    /// waiting on something else can stop early.
    pub async fn closed(&self) {
        self.tx.closed().await;
    }

    /// Whether the receiving side has gone.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

struct ReceiverStream<T>(mpsc::Receiver<T>);

impl<T> Stream for ReceiverStream<T> {
    type Item = T;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        self.0.poll_recv(cx)
    }
}

struct IterStream<I>(I);

// The iterator is never pinned in place: it is only ever moved and called through `&mut`.
impl<I> Unpin for IterStream<I> {}

impl<I, T> Stream for IterStream<I>
where
    I: Iterator<Item = T>,
{
    type Item = Result<T, Error>;
    fn poll_next(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Poll::Ready(self.0.next().map(Ok))
    }
}

/// The end-stream envelope carrying `error` (if any) and `trailers`.
pub(crate) fn end_stream(error: Option<&Error>, trailers: &HeaderMap, buf: &mut BytesMut) {
    let payload = error_json::encode_end_stream(error, trailers);
    // Copying a small JSON payload into a buffer cannot fail.
    let _ = envelope::encode_with(buf, FLAG_END_STREAM, |b| {
        b.extend_from_slice(&payload);
        Ok(())
    });
}

/// A streaming response body that is only the end-stream message carrying `error`.
pub(crate) fn end_stream_error(error: &Error) -> Bytes {
    let mut buf = BytesMut::new();
    end_stream(Some(error), &HeaderMap::new(), &mut buf);
    buf.freeze()
}

/// The HTTP body of a streaming response: one envelope per message, then the end-stream
/// message with the error (if any) and the trailers (rules S5, S6, S7). Messages that are
/// ready together go out in one chunk.
pub(crate) struct ResponseStreamBody<T> {
    stream: Option<MessageStream<T>>,
    format: MessageFormat,
    trailers: HeaderMap,
    deadline: Option<Pin<Box<Sleep>>>,
    buf: BytesMut,
    /// Told how the stream ended (the server's interceptors), once.
    on_end: Option<OnEnd>,
}

/// A callback told how a response stream ended.
pub(crate) type OnEnd = Box<dyn FnOnce(Result<(), &Error>) + Send>;

/// Messages that are ready at once are batched into one body chunk up to this size.
const BATCH_BYTES: usize = 16 * 1024;

impl<T: Message> ResponseStreamBody<T> {
    pub(crate) fn new(
        stream: MessageStream<T>,
        format: MessageFormat,
        trailers: HeaderMap,
        deadline: Option<Instant>,
    ) -> Self {
        Self {
            stream: Some(stream),
            format,
            trailers,
            deadline: deadline.map(|d| Box::pin(tokio::time::sleep_until(d))),
            buf: BytesMut::new(),
            on_end: None,
        }
    }

    /// Tells `on_end` how the stream ends (if it is dropped first, the callback is dropped
    /// unrun: whatever it owns reports that).
    pub(crate) fn on_end(mut self, on_end: OnEnd) -> Self {
        self.on_end = Some(on_end);
        self
    }

    fn end(&mut self, error: Option<&Error>) {
        self.stream = None;
        self.deadline = None;
        end_stream(error, &self.trailers, &mut self.buf);
        if let Some(on_end) = self.on_end.take() {
            on_end(error.map_or(Ok(()), Err));
        }
    }
}

impl<T: Message> http_body::Body for ResponseStreamBody<T> {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Error>>> {
        let this = self.get_mut();
        while let Some(stream) = this.stream.as_mut() {
            if let Some(deadline) = this.deadline.as_mut()
                && deadline.as_mut().poll(cx).is_ready()
            {
                this.end(Some(&Error::new(
                    Code::DeadlineExceeded,
                    "the call's timeout expired",
                )));
                break;
            }
            match Pin::new(stream).poll_next(cx) {
                Poll::Ready(Some(Ok(message))) => {
                    if let Err(err) = this.format.encode(&message, &mut this.buf) {
                        this.end(Some(&err));
                        break;
                    }
                    if this.buf.len() >= BATCH_BYTES {
                        break;
                    }
                }
                Poll::Ready(Some(Err(err))) => {
                    this.end(Some(&err));
                    break;
                }
                Poll::Ready(None) => {
                    this.end(None);
                    break;
                }
                Poll::Pending if this.buf.is_empty() => return Poll::Pending,
                Poll::Pending => break,
            }
        }
        if this.buf.is_empty() {
            return Poll::Ready(None);
        }
        Poll::Ready(Some(Ok(http_body::Frame::data(this.buf.split().freeze()))))
    }

    fn is_end_stream(&self) -> bool {
        self.stream.is_none() && self.buf.is_empty()
    }
}

/// Where a request stream's own error is kept, so that the call it aborts fails with that
/// error rather than with whatever the transport made of the abort (a reset stream).
#[derive(Clone, Default)]
pub(crate) struct RequestFailure(Arc<Mutex<Option<Error>>>);

impl RequestFailure {
    fn set(&self, error: &Error) {
        let mut slot = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        slot.get_or_insert_with(|| error.clone());
    }

    /// The request stream's error, if it failed: the one to report instead of `error`.
    pub(crate) fn or(&self, error: Error) -> Error {
        let slot = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        slot.clone().unwrap_or(error)
    }
}

/// The HTTP body of a streaming request: one envelope per message and no end-stream message
/// (S5: requests never set 0x02); the body simply ends. An `Err` item aborts the request.
pub(crate) struct RequestStreamBody<T> {
    stream: Option<MessageStream<T>>,
    format: MessageFormat,
    buf: BytesMut,
    failure: RequestFailure,
}

impl<T: Message> RequestStreamBody<T> {
    pub(crate) fn new(stream: MessageStream<T>, format: MessageFormat) -> Self {
        Self {
            stream: Some(stream),
            format,
            buf: BytesMut::new(),
            failure: RequestFailure::default(),
        }
    }

    /// Where this body's own error will be, once it fails.
    pub(crate) fn failure(&self) -> RequestFailure {
        self.failure.clone()
    }
}

impl<T: Message> http_body::Body for RequestStreamBody<T> {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Error>>> {
        let this = self.get_mut();
        while let Some(stream) = this.stream.as_mut() {
            match Pin::new(stream).poll_next(cx) {
                Poll::Ready(Some(Ok(message))) => {
                    if let Err(err) = this.format.encode(&message, &mut this.buf) {
                        this.stream = None;
                        this.failure.set(&err);
                        return Poll::Ready(Some(Err(err)));
                    }
                    if this.buf.len() >= BATCH_BYTES {
                        break;
                    }
                }
                Poll::Ready(Some(Err(err))) => {
                    this.stream = None;
                    this.failure.set(&err);
                    return Poll::Ready(Some(Err(err)));
                }
                Poll::Ready(None) => this.stream = None,
                Poll::Pending if this.buf.is_empty() => return Poll::Pending,
                Poll::Pending => break,
            }
        }
        if this.buf.is_empty() {
            return Poll::Ready(None);
        }
        Poll::Ready(Some(Ok(http_body::Frame::data(this.buf.split().freeze()))))
    }

    fn is_end_stream(&self) -> bool {
        self.stream.is_none() && self.buf.is_empty()
    }
}

/// Which side's messages a [`Streaming`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    /// A client reading a server's response: must end with an end-stream message.
    FromServer,
    /// A server reading a client's request: ends with the body, never with end-stream.
    FromClient,
}

/// A stream of messages from the other side: a client reads a server's responses with it, a
/// client-streaming or bidi handler reads the client's requests. Yields each message, then
/// ends cleanly or with an error; on a client the trailers are available once it has ended.
pub struct Streaming<T> {
    reader: EnvelopeReader<RecvBody>,
    format: MessageFormat,
    direction: Direction,
    trailers: Option<HeaderMap>,
    deadline: Option<Pin<Box<Sleep>>>,
    done: bool,
    /// On a client: the request stream's own error, which wins over what it caused here.
    request_failure: Option<RequestFailure>,
    /// On a client: told the stream's first outcome (call wrappers watching it).
    watchers: Vec<crate::interceptor::FirstOutcome>,
    _message: std::marker::PhantomData<fn() -> T>,
}

impl<T: Message> Streaming<T> {
    pub(crate) fn new(
        body: impl Into<RecvBody>,
        format: MessageFormat,
        direction: Direction,
        deadline: Option<Instant>,
    ) -> Self {
        Self {
            reader: EnvelopeReader::new(body.into(), format.max_message_size),
            format,
            direction,
            trailers: None,
            deadline: deadline.map(|d| Box::pin(tokio::time::sleep_until(d))),
            done: false,
            request_failure: None,
            watchers: Vec::new(),
            _message: std::marker::PhantomData,
        }
    }

    /// Tells `watchers` the stream's first outcome (a message or the end, or an error).
    pub(crate) fn with_watchers(mut self, watchers: Vec<crate::interceptor::FirstOutcome>) -> Self {
        self.watchers = watchers;
        self
    }

    fn tell_watchers(&mut self, outcome: Result<(), &Error>) {
        for watch in std::mem::take(&mut self.watchers) {
            watch(outcome);
        }
    }

    /// Reports `failure`, once the request stream has failed, instead of the error it causes.
    pub(crate) fn with_request_failure(mut self, failure: RequestFailure) -> Self {
        self.request_failure = Some(failure);
        self
    }

    /// The next message; `Ok(None)` once the stream ended successfully.
    pub async fn message(&mut self) -> Result<Option<T>, Error> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx))
            .await
            .transpose()
    }

    /// The trailers the server sent in its end-stream message, once the stream has ended
    /// (`None` before, and always on a server).
    pub fn trailers(&self) -> Option<&HeaderMap> {
        self.trailers.as_ref()
    }

    fn fail(&mut self, error: Error) -> Poll<Option<Result<T, Error>>> {
        self.done = true;
        let error = match &self.request_failure {
            Some(failure) => failure.or(error),
            None => error,
        };
        Poll::Ready(Some(Err(error)))
    }

    /// Re-codes errors for the side that reads: what a client finds wrong with a server is a
    /// protocol error (`internal`); what a server finds wrong with a request is the client's
    /// (`invalid_argument`). Size limits and broken connections keep their codes.
    fn reading_error(&self, error: Error) -> Error {
        match (error.code(), self.direction) {
            (Code::ResourceExhausted | Code::Unavailable | Code::Unimplemented, _) => error,
            (Code::Internal, _) => error,
            (_, Direction::FromServer) => Error::internal(error.message().to_owned()),
            (Code::Canceled, Direction::FromClient) => error,
            (_, Direction::FromClient) => Error::invalid_argument(error.message().to_owned()),
        }
    }
}

impl<T> Drop for Streaming<T> {
    fn drop(&mut self) {
        crate::interceptor::tell_canceled(
            &mut self.watchers,
            "the caller dropped the stream before its first message",
        );
    }
}

impl<T: Message> Stream for Streaming<T> {
    type Item = Result<T, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.watchers.is_empty() {
            return this.poll_message(cx);
        }
        let item = ready!(this.poll_message(cx));
        match &item {
            Some(Err(error)) => this.tell_watchers(Err(error)),
            _ => this.tell_watchers(Ok(())),
        }
        Poll::Ready(item)
    }
}

impl<T: Message> Streaming<T> {
    fn poll_message(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<T, Error>>> {
        let this = self;
        if this.done {
            return Poll::Ready(None);
        }
        if let Some(deadline) = this.deadline.as_mut()
            && deadline.as_mut().poll(cx).is_ready()
        {
            return this.fail(Error::new(
                Code::DeadlineExceeded,
                "the call's timeout expired while reading the stream",
            ));
        }
        let frame = match ready!(this.reader.poll_frame(cx)) {
            Ok(Some(frame)) => frame,
            Ok(None) if this.direction == Direction::FromClient => {
                this.done = true;
                return Poll::Ready(None);
            }
            // S8: a response stream without an end-stream message was truncated.
            Ok(None) => {
                return this.fail(Error::internal(
                    "protocol error: the server ended the stream without an end-stream message",
                ));
            }
            Err(err) => {
                let err = this.reading_error(err);
                return this.fail(err);
            }
        };
        if frame.is_end_stream() {
            if this.direction == Direction::FromClient {
                return this.fail(Error::invalid_argument(
                    "protocol error: clients must not send an end-stream message (flag 0x02)",
                ));
            }
            this.done = true;
            // S5: the end-stream message must be the last envelope.
            if this.reader.has_buffered_data() {
                return Poll::Ready(Some(Err(Error::internal(
                    "protocol error: the server sent data after the end-stream message",
                ))));
            }
            let payload = match this.format.payload(frame) {
                Ok(payload) => payload,
                Err(err) => {
                    return Poll::Ready(Some(Err(Error::internal(err.message().to_owned()))));
                }
            };
            return match error_json::decode_end_stream(&payload) {
                Ok((trailers, error)) => {
                    this.trailers = Some(trailers);
                    Poll::Ready(error.map(Err))
                }
                Err(err) => Poll::Ready(Some(Err(err))),
            };
        }
        let decoded = this
            .format
            .payload(frame)
            .and_then(|payload| this.format.codec.decode(payload));
        match decoded {
            Ok(message) => Poll::Ready(Some(Ok(message))),
            Err(err) => {
                let err = this.reading_error(err);
                this.fail(err)
            }
        }
    }
}

impl<T> std::fmt::Debug for Streaming<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Streaming")
            .field("direction", &self.direction)
            .field("done", &self.done)
            .finish()
    }
}

//! Streams of messages: [`ServerStream`], what a server-streaming handler returns, and
//! [`Streaming`], what a client reads.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::BytesMut;
use futures_core::Stream;
use http::HeaderMap;
use tokio::sync::mpsc;
use tokio::time::Sleep;

use crate::protocol::Codec;
use crate::protocol::codec::Message;
use crate::protocol::envelope::{self, EnvelopeReader, FLAG_COMPRESSED, FLAG_END_STREAM};
use crate::protocol::error_json;
use crate::{Code, Error};

/// The messages a server-streaming handler sends: any `Stream` of `Result<T, Error>`. An `Err`
/// item ends the stream with that error.
///
/// ```
/// use connect_plugin::ServerStream;
///
/// # async fn demo() {
/// let (tx, stream) = ServerStream::<u32>::channel(16);
/// tokio::spawn(async move {
///     for i in 0..3 {
///         if tx.send(i).await.is_err() {
///             break; // the client went away
///         }
///     }
/// });
/// # drop(stream);
/// # }
/// ```
pub struct ServerStream<T> {
    inner: Pin<Box<dyn Stream<Item = Result<T, Error>> + Send>>,
}

impl<T: Send + 'static> ServerStream<T> {
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
    /// when the client reads slower than the handler writes (backpressure, nothing dropped).
    pub fn channel(buffer: usize) -> (StreamSender<T>, Self) {
        let (tx, rx) = mpsc::channel(buffer.max(1));
        (StreamSender { tx }, Self::new(ReceiverStream(rx)))
    }
}

/// A stream of the collected messages: `messages.into_iter().collect::<ServerStream<_>>()`.
impl<T: Send + 'static> FromIterator<T> for ServerStream<T> {
    fn from_iter<I: IntoIterator<Item = T>>(messages: I) -> Self {
        let messages: Vec<T> = messages.into_iter().collect();
        Self::new(IterStream(messages.into_iter()))
    }
}

impl<T> Stream for ServerStream<T> {
    type Item = Result<T, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

impl<T> std::fmt::Debug for ServerStream<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerStream")
    }
}

/// The sending half of [`ServerStream::channel`].
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
    /// Sends a message, waiting for room. Fails with `canceled` once the client has gone.
    pub async fn send(&self, message: T) -> Result<(), Error> {
        self.tx
            .send(Ok(message))
            .await
            .map_err(|_| Error::new(Code::Canceled, "the client closed the stream"))
    }

    /// Ends the stream with `error`.
    pub async fn fail(self, error: Error) {
        let _ = self.tx.send(Err(error)).await;
    }

    /// Completes when the client has gone (the stream was dropped), so a producer waiting on
    /// something else can stop early.
    pub async fn closed(&self) {
        self.tx.closed().await;
    }

    /// Whether the client has gone (the stream was dropped).
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

/// A streaming response body that is only the end-stream message carrying `error`.
pub(crate) fn end_stream_error(error: &Error) -> bytes::Bytes {
    let mut buf = BytesMut::new();
    let payload = error_json::encode_end_stream(Some(error), &HeaderMap::new());
    // Copying a small JSON payload into a fresh buffer cannot fail.
    let _ = envelope::encode_with(&mut buf, FLAG_END_STREAM, |b| {
        b.extend_from_slice(&payload);
        Ok(())
    });
    buf.freeze()
}

/// The HTTP body of a streaming response: one envelope per message, then the end-stream
/// message with the error (if any) and the trailers (rules S5, S6, S7).
pub(crate) struct ResponseStreamBody<T> {
    stream: Option<ServerStream<T>>,
    codec: Codec,
    trailers: HeaderMap,
    deadline: Option<Pin<Box<Sleep>>>,
    buf: BytesMut,
}

impl<T: Message> ResponseStreamBody<T> {
    pub(crate) fn new(
        stream: ServerStream<T>,
        codec: Codec,
        trailers: HeaderMap,
        deadline: Option<tokio::time::Instant>,
    ) -> Self {
        Self {
            stream: Some(stream),
            codec,
            trailers,
            deadline: deadline.map(|d| Box::pin(tokio::time::sleep_until(d))),
            buf: BytesMut::new(),
        }
    }

    fn end(&mut self, error: Option<&Error>) -> bytes::Bytes {
        self.stream = None;
        self.deadline = None;
        let payload = error_json::encode_end_stream(error, &self.trailers);
        let _ = envelope::encode_with(&mut self.buf, FLAG_END_STREAM, |b| {
            b.extend_from_slice(&payload);
            Ok(())
        });
        self.buf.split().freeze()
    }
}

impl<T: Message> http_body::Body for ResponseStreamBody<T> {
    type Data = bytes::Bytes;
    type Error = Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, Error>>> {
        let this = self.get_mut();
        let Some(stream) = this.stream.as_mut() else {
            return Poll::Ready(None);
        };
        if let Some(deadline) = this.deadline.as_mut()
            && deadline.as_mut().poll(cx).is_ready()
        {
            let err = Error::new(Code::DeadlineExceeded, "the call's timeout expired");
            return Poll::Ready(Some(Ok(http_body::Frame::data(this.end(Some(&err))))));
        }
        let data = match ready!(Pin::new(stream).poll_next(cx)) {
            Some(Ok(message)) => {
                let codec = this.codec;
                match envelope::encode_with(&mut this.buf, 0, |b| codec.encode(&message, b)) {
                    Ok(()) => this.buf.split().freeze(),
                    Err(err) => this.end(Some(&err)),
                }
            }
            Some(Err(err)) => this.end(Some(&err)),
            None => this.end(None),
        };
        Poll::Ready(Some(Ok(http_body::Frame::data(data))))
    }

    fn is_end_stream(&self) -> bool {
        self.stream.is_none()
    }
}

use std::future::Future as _;

/// A stream of response messages read by a client. Yields each message, then ends cleanly or
/// with the error the server put in its end-stream message. The trailers are available once
/// the stream has ended.
pub struct Streaming<T> {
    reader: EnvelopeReader<hyper::body::Incoming>,
    codec: Codec,
    trailers: Option<HeaderMap>,
    deadline: Option<Pin<Box<Sleep>>>,
    done: bool,
    _message: std::marker::PhantomData<fn() -> T>,
}

impl<T: Message> Streaming<T> {
    pub(crate) fn new(
        body: hyper::body::Incoming,
        codec: Codec,
        max_message_size: usize,
        deadline: Option<tokio::time::Instant>,
    ) -> Self {
        Self {
            reader: EnvelopeReader::new(body, max_message_size),
            codec,
            trailers: None,
            deadline: deadline.map(|d| Box::pin(tokio::time::sleep_until(d))),
            done: false,
            _message: std::marker::PhantomData,
        }
    }

    /// The next message; `Ok(None)` once the server ended the stream successfully.
    pub async fn message(&mut self) -> Result<Option<T>, Error> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx))
            .await
            .transpose()
    }

    /// The trailers, once the stream has ended (`None` before).
    pub fn trailers(&self) -> Option<&HeaderMap> {
        self.trailers.as_ref()
    }

    fn fail(&mut self, error: Error) -> Poll<Option<Result<T, Error>>> {
        self.done = true;
        Poll::Ready(Some(Err(error)))
    }
}

impl<T: Message> Stream for Streaming<T> {
    type Item = Result<T, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
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
            // S8: a stream without an end-stream message was truncated.
            Ok(None) => {
                return this.fail(Error::new(
                    Code::Internal,
                    "protocol error: the server ended the stream without an end-stream message",
                ));
            }
            Err(err) => {
                let code = match err.code() {
                    Code::ResourceExhausted | Code::Unavailable => err.code(),
                    _ => Code::Internal,
                };
                return this.fail(Error::new(code, err.message().to_owned()));
            }
        };
        // S4: no compression is negotiated yet, so a compressed flag is a protocol error.
        if frame.flags & FLAG_COMPRESSED != 0 {
            return this.fail(Error::new(
                Code::Internal,
                "protocol error: received a compressed message but no compression was negotiated",
            ));
        }
        if frame.is_end_stream() {
            this.done = true;
            // S5: the end-stream message must be the last envelope.
            if this.reader.has_buffered_data() {
                return Poll::Ready(Some(Err(Error::internal(
                    "protocol error: the server sent data after the end-stream message",
                ))));
            }
            return match error_json::decode_end_stream(&frame.payload) {
                Ok((trailers, error)) => {
                    this.trailers = Some(trailers);
                    Poll::Ready(error.map(Err))
                }
                Err(err) => Poll::Ready(Some(Err(err))),
            };
        }
        match this.codec.decode(frame.payload) {
            Ok(message) => Poll::Ready(Some(Ok(message))),
            Err(err) => this.fail(Error::new(
                Code::Internal,
                format!(
                    "cannot decode a streamed response message: {}",
                    err.message()
                ),
            )),
        }
    }
}

impl<T> std::fmt::Debug for Streaming<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Streaming")
            .field("done", &self.done)
            .finish()
    }
}

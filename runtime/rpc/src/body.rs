//! The HTTP body type the runtime sends, on servers (responses) and clients (requests).
//!
//! An enum rather than a boxed trait object so that the common case, a unary message already
//! in memory, costs no allocation beyond its bytes.
//!
//! Bodies carry opaque bytes: what the bytes are (messages, envelopes, compression) is
//! [`crate::protocol`]'s and [`crate::stream`]'s, and the HTTP/2 stream under an [`H2Body`] is
//! driven by [`crate::channel::h2`].

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};

use crate::Error;

/// The largest HTTP/2 frame our side accepts (servers and clients alike): 1 MiB instead of the
/// protocol's default 16 KiB, so that a message up to 1 MiB arrives as one frame and is decoded
/// without first being copied together from pieces.
pub(crate) const H2_MAX_FRAME_SIZE: u32 = 1 << 20;

/// A body of bytes: complete, or produced by a stream.
pub enum Body {
    /// All bytes at once (unary messages, error bodies, a single streaming request).
    Full(Option<Bytes>),
    /// Produced over time (streaming responses).
    Stream(Pin<Box<dyn http_body::Body<Data = Bytes, Error = Error> + Send>>),
}

impl Body {
    /// A complete body of `bytes` (none if empty).
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        Body::Full((!bytes.is_empty()).then_some(bytes))
    }

    /// A body with no bytes.
    pub fn empty() -> Self {
        Body::Full(None)
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        match self.get_mut() {
            Body::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Body::Stream(body) => body.as_mut().poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Full(bytes) => bytes.is_none(),
            Body::Stream(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Body::Stream(body) => body.size_hint(),
        }
    }
}

/// A body received from the other side: a request body on a server (hyper's), a response body
/// on a client (hyper's over HTTP/1.1, an h2 stream over HTTP/2).
pub enum RecvBody {
    /// Received by hyper: a server's request body, or a response over HTTP/1.1.
    Hyper(hyper::body::Incoming),
    /// A response stream of the `h2` client.
    H2(H2Body),
    /// Any other body: a request handed over by another server (axum, hyper) through
    /// [`crate::server::HttpService`].
    Boxed(Pin<Box<dyn http_body::Body<Data = Bytes, Error = RecvError> + Send>>),
}

/// A boxed error of a received body (a reset, a broken connection).
pub type RecvError = Box<dyn std::error::Error + Send + Sync>;

impl From<hyper::body::Incoming> for RecvBody {
    fn from(body: hyper::body::Incoming) -> Self {
        RecvBody::Hyper(body)
    }
}

impl http_body::Body for RecvBody {
    type Data = Bytes;
    type Error = RecvError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, RecvError>>> {
        match self.get_mut() {
            RecvBody::Hyper(body) => Pin::new(body)
                .poll_frame(cx)
                .map_err(|e| Box::new(e) as RecvError),
            RecvBody::H2(body) => body.poll_frame(cx),
            RecvBody::Boxed(body) => body.as_mut().poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RecvBody::Hyper(body) => body.is_end_stream(),
            RecvBody::H2(body) => body.done || body.recv.is_end_stream(),
            RecvBody::Boxed(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RecvBody::Hyper(body) => body.size_hint(),
            RecvBody::H2(body) => body.size_hint,
            RecvBody::Boxed(body) => body.size_hint(),
        }
    }
}

/// Held by a call whose request body is fed by a task: dropping it (the call was abandoned:
/// a timeout, or its response dropped) stops the task and resets the stream, so the server
/// learns of it and the stream's slot is freed.
pub(crate) struct FeedGuard {
    _cancel: tokio::sync::oneshot::Sender<()>,
}

impl FeedGuard {
    pub(crate) fn new(cancel: tokio::sync::oneshot::Sender<()>) -> Self {
        Self { _cancel: cancel }
    }
}

/// The data and trailers of an h2 stream, giving the flow-control window back as data is
/// taken (without that the peer stops sending once the window is used up). Dropping it
/// before the end resets the stream (h2 does, once every handle is gone).
pub struct H2Body {
    recv: h2::RecvStream,
    size_hint: SizeHint,
    data_done: bool,
    done: bool,
    /// Keeps the task feeding the request going while the response is read.
    _feed: Option<FeedGuard>,
}

impl H2Body {
    pub(crate) fn new(
        recv: h2::RecvStream,
        content_length: Option<u64>,
        feed: Option<FeedGuard>,
    ) -> Self {
        Self {
            recv,
            size_hint: content_length.map_or_else(SizeHint::default, SizeHint::with_exact),
            data_done: false,
            done: false,
            _feed: feed,
        }
    }

    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, RecvError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        if !self.data_done {
            match std::task::ready!(self.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(error)) => return Poll::Ready(self.fail(error)),
                None => self.data_done = true,
            }
        }
        let trailers = std::task::ready!(self.recv.poll_trailers(cx));
        self.done = true;
        match trailers {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(error) => Poll::Ready(self.fail(error)),
        }
    }

    /// Any reset reaching here cut the body short (h2 does not report a reset that follows
    /// the end of the stream), so it fails the body: a truncated message must not pass for a
    /// complete one.
    fn fail(&mut self, error: h2::Error) -> Option<Result<Frame<Bytes>, RecvError>> {
        self.done = true;
        Some(Err(Box::new(error)))
    }
}

/// Reads a whole body, failing with `resource_exhausted` past `limit` bytes.
pub(crate) async fn read_to_bytes<B>(mut body: B, limit: usize) -> Result<Bytes, Error>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    use http_body_util::BodyExt;

    // The declared length (content-length), so that a body arriving in pieces is joined into
    // one buffer allocated once: growing the buffer would copy every byte again.
    let declared = usize::try_from(http_body::Body::size_hint(&body).lower())
        .unwrap_or(usize::MAX)
        .min(limit);
    let mut first: Option<Bytes> = None;
    let mut rest = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| Error::new(crate::Code::Canceled, format!("reading body: {e}")))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let so_far = first.as_ref().map_or(0, Bytes::len) + rest.len() + data.len();
        if so_far > limit {
            return Err(Error::new(
                crate::Code::ResourceExhausted,
                format!("message of at least {so_far} bytes exceeds the limit of {limit} bytes"),
            ));
        }
        // Keep a single chunk as is (no copy); only join when the body came in pieces.
        match first.take() {
            None if rest.is_empty() => first = Some(data),
            None => rest.extend_from_slice(&data),
            Some(prev) => {
                // At most twice what arrived: a declared length is not trusted with memory.
                rest.reserve(declared.min(so_far.saturating_mul(2)).max(so_far));
                rest.extend_from_slice(&prev);
                rest.extend_from_slice(&data);
            }
        }
    }
    Ok(first.unwrap_or_else(|| rest.freeze()))
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;

    /// A body of the given chunks that declares `declared` bytes up front.
    struct Chunks {
        chunks: VecDeque<Bytes>,
        declared: u64,
    }

    impl http_body::Body for Chunks {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready(self.chunks.pop_front().map(|c| Ok(Frame::data(c))))
        }

        fn size_hint(&self) -> SizeHint {
            SizeHint::with_exact(self.declared)
        }
    }

    fn chunks(parts: &[&'static [u8]], declared: u64) -> Chunks {
        Chunks {
            chunks: parts.iter().map(|p| Bytes::from_static(p)).collect(),
            declared,
        }
    }

    #[tokio::test]
    async fn a_body_in_pieces_is_joined_in_order() {
        let joined = read_to_bytes(chunks(&[b"ab", b"c", b"def"], 6), 100)
            .await
            .unwrap();
        assert_eq!(&joined[..], b"abcdef");
        // One chunk is passed through as it is.
        let single = read_to_bytes(chunks(&[b"whole"], 5), 100).await.unwrap();
        assert_eq!(&single[..], b"whole");
    }

    #[tokio::test]
    async fn a_lying_length_neither_breaks_the_join_nor_the_limit() {
        // Declares far more than it sends: joined correctly all the same.
        let joined = read_to_bytes(chunks(&[b"ab", b"cd"], 1 << 40), 1 << 20)
            .await
            .unwrap();
        assert_eq!(&joined[..], b"abcd");
        // Declares less than it sends: the limit still holds on what arrives.
        let error = read_to_bytes(chunks(&[b"abc", b"def"], 2), 5)
            .await
            .unwrap_err();
        assert_eq!(error.code(), crate::Code::ResourceExhausted, "{error}");
    }
}

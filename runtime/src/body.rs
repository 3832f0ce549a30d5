//! The HTTP body type the runtime sends, on servers (responses) and clients (requests).
//!
//! An enum rather than a boxed trait object so that the common case, a unary message already
//! in memory, costs no allocation beyond its bytes.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};

use crate::Error;

/// A body of bytes: complete, or produced by a stream.
pub(crate) enum Body {
    /// All bytes at once (unary messages, error bodies, a single streaming request).
    Full(Option<Bytes>),
    /// Produced over time (streaming responses).
    Stream(Pin<Box<dyn http_body::Body<Data = Bytes, Error = Error> + Send>>),
}

impl Body {
    pub(crate) fn full(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        Body::Full((!bytes.is_empty()).then_some(bytes))
    }

    pub(crate) fn empty() -> Self {
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

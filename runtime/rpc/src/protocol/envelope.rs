//! The 5-byte envelope of streaming RPCs (rule S3): `flags:u8 | length:u32 BE | payload`.
//!
//! Flag `0x01` marks a compressed payload, `0x02` the end-stream message; the other six bits
//! are reserved and rejected. The reader is incremental and bounded: it never buffers more than
//! one frame's header plus the configured maximum payload, so a peer announcing a 4 GiB frame
//! gets `resource_exhausted` instead of an allocation.
//!
//! It frames bytes and applies the codec and compression chosen for it; the typed message streams
//! built on it are [`crate::stream`]'s, and what an end-stream message says is
//! [`super::error_json`]'s.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http_body::Body;

use crate::protocol::codec::{Codec, Message};
use crate::protocol::compression::Compression;
use crate::{Code, Error};

pub(crate) const FLAG_COMPRESSED: u8 = 0b01;
pub(crate) const FLAG_END_STREAM: u8 = 0b10;
pub(crate) const HEADER_LEN: usize = 5;

/// One decoded envelope.
#[derive(Debug)]
pub(crate) struct Frame {
    pub(crate) flags: u8,
    pub(crate) payload: Bytes,
}

impl Frame {
    pub(crate) fn is_end_stream(&self) -> bool {
        self.flags & FLAG_END_STREAM != 0
    }
}

/// Reserves a header in `buf`, lets `write` append the payload, then patches the length in.
/// Encoding in place saves the copy of building the payload first.
pub(crate) fn encode_with(
    buf: &mut BytesMut,
    flags: u8,
    write: impl FnOnce(&mut BytesMut) -> Result<(), Error>,
) -> Result<(), Error> {
    let start = buf.len();
    buf.put_bytes(0, HEADER_LEN);
    if let Err(error) = write(buf) {
        // Leave no half-written envelope behind for the next frame to follow.
        buf.truncate(start);
        return Err(error);
    }
    let len = buf.len() - start - HEADER_LEN;
    let Ok(len) = u32::try_from(len) else {
        buf.truncate(start);
        return Err(Error::new(
            Code::ResourceExhausted,
            format!("message of {len} bytes does not fit a Connect envelope (max 4 GiB)"),
        ));
    };
    buf[start] = flags;
    buf[start + 1..start + HEADER_LEN].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

/// How the messages of one stream direction are encoded: codec, per-message compression and
/// the size limit. Each message is compressed on its own (S3), and only when at least
/// `compress_min_bytes` long, since compressing tiny messages costs more than it saves.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MessageFormat {
    pub(crate) codec: Codec,
    pub(crate) compression: Option<Compression>,
    pub(crate) compress_min_bytes: usize,
    pub(crate) max_message_size: usize,
}

impl MessageFormat {
    /// Appends `message` as one envelope (compressed when worthwhile).
    pub(crate) fn encode<M: Message>(&self, message: &M, buf: &mut BytesMut) -> Result<(), Error> {
        let plain = |b: &mut BytesMut| self.codec.encode(message, b);
        let Some(compression) = self.compression else {
            return encode_with(buf, 0, plain);
        };
        // For protobuf the size is known without encoding: skip the scratch buffer.
        if self.codec == Codec::Proto && message.encoded_len() < self.compress_min_bytes {
            return encode_with(buf, 0, plain);
        }
        let mut scratch = BytesMut::new();
        plain(&mut scratch)?;
        if scratch.len() < self.compress_min_bytes {
            return encode_with(buf, 0, |b| {
                b.extend_from_slice(&scratch);
                Ok(())
            });
        }
        encode_with(buf, FLAG_COMPRESSED, |b| compression.compress(&scratch, b))
    }

    /// The payload of a frame, decompressed if flagged (S4: the flag without a negotiated
    /// encoding is a protocol error, `internal`).
    pub(crate) fn payload(&self, frame: Frame) -> Result<Bytes, Error> {
        if frame.flags & FLAG_COMPRESSED == 0 {
            return Ok(frame.payload);
        }
        match self.compression {
            Some(compression) => compression.decompress(&frame.payload, self.max_message_size),
            None => Err(Error::internal(
                "protocol error: a message is flagged compressed (0x01) but no compression was negotiated",
            )),
        }
    }
}

/// Reads envelopes from an HTTP body, incrementally.
///
/// Frames are sliced out of the body's chunks without copying; only a frame that spans
/// chunks is reassembled (copied) in `partial`. Invariant: at most one of `chunk` and
/// `partial` holds bytes.
pub(crate) struct EnvelopeReader<B> {
    body: B,
    chunk: Bytes,
    partial: BytesMut,
    max_message_size: usize,
    body_done: bool,
}

/// Reassembly grows with the data rather than trusting a peer's announced length.
const MAX_RESERVE: usize = 64 * 1024;

impl<B> EnvelopeReader<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    pub(crate) fn new(body: B, max_message_size: usize) -> Self {
        Self {
            body,
            chunk: Bytes::new(),
            partial: BytesMut::new(),
            max_message_size,
            body_done: false,
        }
    }

    /// The next frame, `Ok(None)` at a clean end of body. A body that ends inside a frame is
    /// an error (`invalid_argument`; clients re-map it as the spec requires). A failure of
    /// the body itself (reset, disconnect) is `unavailable`.
    pub(crate) fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Frame>, Error>> {
        loop {
            if let Some(frame) = self.try_decode()? {
                return Poll::Ready(Ok(Some(frame)));
            }
            if self.body_done {
                let pending = self.chunk.len() + self.partial.len();
                return Poll::Ready(if pending == 0 {
                    Ok(None)
                } else {
                    Err(Error::new(
                        Code::InvalidArgument,
                        format!("stream ended inside an envelope ({pending} trailing bytes)"),
                    ))
                });
            }
            match ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        if self.chunk.is_empty() && self.partial.is_empty() {
                            self.chunk = data;
                        } else {
                            let chunk = std::mem::take(&mut self.chunk);
                            self.partial.extend_from_slice(&chunk);
                            self.partial.extend_from_slice(&data);
                        }
                    }
                }
                Some(Err(e)) => {
                    return Poll::Ready(Err(Error::new(
                        Code::Unavailable,
                        format!("reading stream body: {e}"),
                    )));
                }
                None => self.body_done = true,
            }
        }
    }

    #[cfg(test)]
    pub(crate) async fn next_frame(&mut self) -> Result<Option<Frame>, Error> {
        std::future::poll_fn(|cx| self.poll_frame(cx)).await
    }

    /// Whether bytes past the last decoded frame have arrived (data after end-stream).
    pub(crate) fn has_buffered_data(&self) -> bool {
        !self.chunk.is_empty() || !self.partial.is_empty()
    }

    fn header(&self, bytes: &[u8]) -> Result<Option<(u8, usize)>, Error> {
        let Some(header) = bytes.get(..HEADER_LEN) else {
            return Ok(None);
        };
        let flags = header[0];
        if flags & !(FLAG_COMPRESSED | FLAG_END_STREAM) != 0 {
            return Err(Error::new(
                Code::InvalidArgument,
                format!("invalid envelope flags 0x{flags:02x}: only 0x01 and 0x02 are defined"),
            ));
        }
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        // U9, and for every frame: an end-stream message is bounded like any other.
        if len > self.max_message_size {
            return Err(Error::new(
                Code::ResourceExhausted,
                format!(
                    "message of {len} bytes exceeds the limit of {} bytes",
                    self.max_message_size
                ),
            ));
        }
        Ok(Some((flags, len)))
    }

    fn try_decode(&mut self) -> Result<Option<Frame>, Error> {
        if !self.chunk.is_empty() {
            let Some((flags, len)) = self.header(&self.chunk)? else {
                return Ok(None);
            };
            if self.chunk.len() >= HEADER_LEN + len {
                self.chunk.advance(HEADER_LEN);
                let payload = self.chunk.split_to(len);
                return Ok(Some(Frame { flags, payload }));
            }
            return Ok(None);
        }
        let Some((flags, len)) = self.header(&self.partial)? else {
            return Ok(None);
        };
        if self.partial.len() < HEADER_LEN + len {
            let missing = HEADER_LEN + len - self.partial.len();
            self.partial.reserve(missing.min(MAX_RESERVE));
            return Ok(None);
        }
        self.partial.advance(HEADER_LEN);
        let payload = self.partial.split_to(len).freeze();
        Ok(Some(Frame { flags, payload }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::StreamBody;

    fn body_of(
        chunks: Vec<Vec<u8>>,
    ) -> impl Body<Data = Bytes, Error = std::convert::Infallible> + Unpin {
        let frames = chunks
            .into_iter()
            .map(|c| Ok(http_body::Frame::data(Bytes::from(c))));
        StreamBody::new(futures_util_iter(frames))
    }

    // A tiny iterator-backed stream so the tests need no extra crate.
    fn futures_util_iter<I: Iterator + Unpin>(iter: I) -> IterStream<I> {
        IterStream(iter)
    }
    struct IterStream<I>(I);
    impl<I: Iterator + Unpin> futures_core::Stream for IterStream<I> {
        type Item = I::Item;
        fn poll_next(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<I::Item>> {
            Poll::Ready(self.0.next())
        }
    }

    fn envelope(flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut buf = BytesMut::new();
        encode_with(&mut buf, flags, |b| {
            b.extend_from_slice(payload);
            Ok(())
        })
        .unwrap();
        buf.to_vec()
    }

    #[tokio::test]
    async fn s3_frames_split_across_chunks_are_reassembled() {
        let mut wire = envelope(0, b"hello");
        wire.extend(envelope(FLAG_END_STREAM, b"{}"));
        // Split at every possible point.
        for cut in 0..wire.len() {
            let body = body_of(vec![wire[..cut].to_vec(), wire[cut..].to_vec()]);
            let mut reader = EnvelopeReader::new(body, 1024);
            let first = reader.next_frame().await.unwrap().unwrap();
            assert_eq!((first.flags, &first.payload[..]), (0, &b"hello"[..]));
            let end = reader.next_frame().await.unwrap().unwrap();
            assert!(end.is_end_stream());
            assert_eq!(&end.payload[..], b"{}");
            assert!(reader.next_frame().await.unwrap().is_none());
        }
    }

    #[tokio::test]
    async fn s3_reserved_flags_are_rejected() {
        let mut reader = EnvelopeReader::new(body_of(vec![envelope(0x80, b"x")]), 1024);
        let err = reader.next_frame().await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains("0x80"), "{err}");
    }

    #[tokio::test]
    async fn u9_oversized_frame_is_resource_exhausted_before_buffering() {
        // Announce 1 GiB but send only the header.
        let wire = vec![0, 0x40, 0, 0, 0];
        let mut reader = EnvelopeReader::new(body_of(vec![wire]), 1024);
        let err = reader.next_frame().await.unwrap_err();
        assert_eq!(err.code(), Code::ResourceExhausted);
    }

    #[tokio::test]
    async fn u9_end_stream_frames_are_bounded_too() {
        let wire = vec![FLAG_END_STREAM, 0xff, 0xff, 0xff, 0xff];
        let mut reader = EnvelopeReader::new(body_of(vec![wire]), 1024);
        let err = reader.next_frame().await.unwrap_err();
        assert_eq!(err.code(), Code::ResourceExhausted);
    }

    #[test]
    fn failed_encoding_leaves_no_partial_envelope() {
        let mut buf = BytesMut::from(&b"ok"[..]);
        let err = encode_with(&mut buf, 0, |b| {
            b.extend_from_slice(b"half");
            Err(Error::internal("boom"))
        });
        assert!(err.is_err());
        assert_eq!(&buf[..], b"ok");
    }

    #[tokio::test]
    async fn many_frames_in_one_chunk_and_one_frame_in_many_chunks() {
        let mut wire = Vec::new();
        for i in 0..50u8 {
            wire.extend(envelope(0, &[i; 3]));
        }
        let mut reader = EnvelopeReader::new(body_of(vec![wire.clone()]), 1024);
        for i in 0..50u8 {
            assert_eq!(
                &reader.next_frame().await.unwrap().unwrap().payload[..],
                &[i; 3]
            );
        }
        assert!(reader.next_frame().await.unwrap().is_none());
        let one = envelope(0, &[7; 100]);
        let bytes: Vec<Vec<u8>> = one.iter().map(|b| vec![*b]).collect();
        let mut reader = EnvelopeReader::new(body_of(bytes), 1024);
        assert_eq!(
            reader.next_frame().await.unwrap().unwrap().payload.len(),
            100
        );
    }

    #[tokio::test]
    async fn truncated_frame_is_an_error_not_a_hang() {
        let wire = envelope(0, b"hello");
        let mut reader = EnvelopeReader::new(body_of(vec![wire[..7].to_vec()]), 1024);
        assert!(reader.next_frame().await.is_err());
    }
}

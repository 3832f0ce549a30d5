//! Message compression (spec "Compression"; rules U3, U4, S2, S4): gzip, with identity always
//! accepted. Unary calls negotiate with `Content-Encoding`/`Accept-Encoding`, streams with
//! `Connect-Content-Encoding`/`Connect-Accept-Encoding` and compress each message on its own.
//!
//! Decompression is bounded: a small compressed message that inflates past the message size
//! limit is `resource_exhausted`, checked on the decompressed size (U9), so a zip bomb costs
//! at most the limit.
//!
//! It compresses, decompresses and names encodings; it does not read a call's headers or decide
//! whether a message is worth compressing: [`crate::server`] and [`crate::channel`] read the
//! headers, and the minimum size is applied by them and by [`super::envelope`].

use std::io::{Read, Write};

use bytes::{BufMut, Bytes, BytesMut};
use http::HeaderValue;

use crate::{Code, Error};

/// A compression algorithm for messages. Identity (no compression) is `None` wherever an
/// `Option<Compression>` is taken, and is always accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Compression {
    /// gzip (RFC 1952).
    Gzip,
}

/// The encodings this implementation accepts, for error messages and `Accept-Encoding`.
pub(crate) const SUPPORTED: &str = "gzip, identity";
pub(crate) static ACCEPT_ENCODING: HeaderValue = HeaderValue::from_static("gzip");

impl Compression {
    /// The name used in headers and GET's `compression=` parameter.
    pub const fn name(self) -> &'static str {
        match self {
            Compression::Gzip => "gzip",
        }
    }

    pub(crate) fn header_value(self) -> HeaderValue {
        HeaderValue::from_static(self.name())
    }

    /// Parses an encoding named by the peer: `Ok(None)` for identity, an `unimplemented` error
    /// naming the supported ones for anything else (U3, S2).
    pub(crate) fn parse(name: &[u8]) -> Result<Option<Compression>, Error> {
        match name.trim_ascii() {
            b"" | b"identity" => Ok(None),
            b"gzip" => Ok(Some(Compression::Gzip)),
            other => Err(Error::new(
                Code::Unimplemented,
                format!(
                    "unsupported compression {:?}: supported are {SUPPORTED}",
                    String::from_utf8_lossy(other)
                ),
            )),
        }
    }

    /// The first encoding of an `Accept-Encoding` list that we support (q-values are not
    /// part of the protocol and are ignored). `None` means identity.
    pub(crate) fn negotiate(accept: &[u8]) -> Option<Compression> {
        accept
            .split(|&b| b == b',')
            .map(|item| item.split(|&b| b == b';').next().unwrap_or_default())
            .find_map(|name| Compression::parse(name).ok().flatten())
    }

    /// Appends the compressed form of `data` to `buf`.
    pub(crate) fn compress(self, data: &[u8], buf: &mut BytesMut) -> Result<(), Error> {
        match self {
            Compression::Gzip => {
                let mut encoder =
                    flate2::write::GzEncoder::new(buf.writer(), flate2::Compression::fast());
                encoder
                    .write_all(data)
                    .and_then(|()| encoder.finish().map(drop))
                    .map_err(|e| Error::internal(format!("gzip compression failed: {e}")))
            }
        }
    }

    /// Decompresses `data`, failing with `resource_exhausted` past `limit` bytes and
    /// `invalid_argument` for corrupt input. Empty input stays empty and is never
    /// decompressed (U4).
    pub(crate) fn decompress(self, data: &[u8], limit: usize) -> Result<Bytes, Error> {
        if data.is_empty() {
            return Ok(Bytes::new());
        }
        let mut out = Vec::with_capacity(data.len().saturating_mul(4).min(limit));
        let read = match self {
            Compression::Gzip => flate2::read::GzDecoder::new(data)
                .take(limit as u64 + 1)
                .read_to_end(&mut out),
        };
        read.map_err(|e| {
            Error::new(
                Code::InvalidArgument,
                format!("cannot decompress a {} message: {e}", self.name()),
            )
        })?;
        if out.len() > limit {
            return Err(Error::new(
                Code::ResourceExhausted,
                format!("decompressed message exceeds the limit of {limit} bytes"),
            ));
        }
        Ok(out.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn u3_identity_and_gzip_parse_others_are_unimplemented() {
        assert_eq!(Compression::parse(b"identity").unwrap(), None);
        assert_eq!(
            Compression::parse(b"gzip").unwrap(),
            Some(Compression::Gzip)
        );
        let err = Compression::parse(b"br").unwrap_err();
        assert_eq!(err.code(), Code::Unimplemented);
        assert!(err.message().contains("gzip, identity"), "{err}");
    }

    #[test]
    fn u3_accept_encoding_takes_the_first_supported() {
        assert_eq!(Compression::negotiate(b"br, gzip"), Some(Compression::Gzip));
        assert_eq!(
            Compression::negotiate(b"gzip;q=0.5"),
            Some(Compression::Gzip)
        );
        assert_eq!(Compression::negotiate(b"br, zstd"), None);
        assert_eq!(Compression::negotiate(b"identity"), None);
    }

    #[test]
    fn gzip_round_trip_and_limits() {
        let data = vec![b'a'; 10_000];
        let mut buf = BytesMut::new();
        Compression::Gzip.compress(&data, &mut buf).unwrap();
        assert!(buf.len() < 200);
        assert_eq!(Compression::Gzip.decompress(&buf, 10_000).unwrap(), data);
        let err = Compression::Gzip.decompress(&buf, 9_999).unwrap_err();
        assert_eq!(err.code(), Code::ResourceExhausted);
        let err = Compression::Gzip.decompress(b"not gzip", 100).unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
    }

    #[test]
    fn u4_empty_input_is_never_decompressed() {
        assert!(Compression::Gzip.decompress(b"", 0).unwrap().is_empty());
    }
}

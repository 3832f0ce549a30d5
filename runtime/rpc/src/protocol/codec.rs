//! Codecs: the binary protobuf encoding and the canonical proto3 JSON mapping (rules U1, S1).
//!
//! One message to bytes and back, nothing more: framing is [`super::envelope`]'s, compression
//! [`super::compression`]'s, and which codec a call uses is decided by [`crate::server`] and
//! [`crate::channel`].

use bytes::{BufMut, Bytes, BytesMut};
use http::HeaderValue;

use crate::{Code, Error};

/// What every request and response type must be: a prost message with the proto3 JSON mapping
/// (the generator emits both). Implemented automatically; users never implement it by hand.
pub trait Message:
    prost::Message + Default + serde::Serialize + serde::de::DeserializeOwned + Send + Sync + 'static
{
}

impl<T> Message for T where
    T: prost::Message
        + Default
        + serde::Serialize
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static
{
}

/// How messages are encoded on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Codec {
    /// Binary protobuf: `application/proto`, `application/connect+proto`. The default.
    #[default]
    Proto,
    /// Canonical proto3 JSON: `application/json`, `application/connect+json`.
    Json,
}

impl Codec {
    /// The codec's name as used in content types and GET `encoding=` (`"proto"`, `"json"`).
    pub const fn name(self) -> &'static str {
        match self {
            Codec::Proto => "proto",
            Codec::Json => "json",
        }
    }

    pub(crate) fn unary_content_type(self) -> HeaderValue {
        match self {
            Codec::Proto => HeaderValue::from_static("application/proto"),
            Codec::Json => HeaderValue::from_static("application/json"),
        }
    }

    pub(crate) fn stream_content_type(self) -> HeaderValue {
        match self {
            Codec::Proto => HeaderValue::from_static("application/connect+proto"),
            Codec::Json => HeaderValue::from_static("application/connect+json"),
        }
    }

    /// The codec of a unary content type, `None` if unsupported. Parameters such as
    /// `charset=utf-8` are accepted for JSON only.
    pub(crate) fn from_unary_content_type(value: &[u8]) -> Option<Codec> {
        Self::from_subtype(value.strip_prefix(b"application/")?)
    }

    /// The codec of a streaming content type (`application/connect+<codec>`).
    pub(crate) fn from_stream_content_type(value: &[u8]) -> Option<Codec> {
        Self::from_subtype(value.strip_prefix(b"application/connect+")?)
    }

    fn from_subtype(subtype: &[u8]) -> Option<Codec> {
        let (name, params) = match subtype.iter().position(|&b| b == b';') {
            Some(i) => (&subtype[..i], Some(&subtype[i + 1..])),
            None => (subtype, None),
        };
        match (name.trim_ascii(), params) {
            (b"proto", None) => Some(Codec::Proto),
            (b"json", None) => Some(Codec::Json),
            (b"json", Some(params))
                if params.trim_ascii().eq_ignore_ascii_case(b"charset=utf-8") =>
            {
                Some(Codec::Json)
            }
            _ => None,
        }
    }

    /// Appends the encoding of `message` to `buf`.
    pub(crate) fn encode<M: Message>(self, message: &M, buf: &mut BytesMut) -> Result<(), Error> {
        match self {
            Codec::Proto => {
                // `encode` would compute the length a second time to check capacity; a
                // BytesMut grown to fit needs no check.
                buf.reserve(message.encoded_len());
                message.encode_raw(buf);
                Ok(())
            }
            Codec::Json => serde_json::to_writer(buf.writer(), message)
                .map_err(|e| Error::internal(format!("encoding JSON message: {e}"))),
        }
    }

    /// Decodes one message. Bad input is `invalid_argument` on a server; clients re-map it.
    pub(crate) fn decode<M: Message>(self, bytes: Bytes) -> Result<M, Error> {
        match self {
            Codec::Proto => M::decode(bytes).map_err(|e| {
                Error::new(
                    Code::InvalidArgument,
                    format!("cannot decode binary protobuf message: {e}"),
                )
            }),
            // An empty body is the empty message, as it is for binary protobuf.
            Codec::Json if bytes.iter().all(u8::is_ascii_whitespace) => Ok(M::default()),
            Codec::Json => serde_json::from_slice(&bytes).map_err(|e| {
                Error::new(
                    Code::InvalidArgument,
                    format!("cannot decode JSON message: {e}"),
                )
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn u1_unary_content_types() {
        assert_eq!(
            Codec::from_unary_content_type(b"application/proto"),
            Some(Codec::Proto)
        );
        assert_eq!(
            Codec::from_unary_content_type(b"application/json"),
            Some(Codec::Json)
        );
        assert_eq!(
            Codec::from_unary_content_type(b"application/json; charset=utf-8"),
            Some(Codec::Json)
        );
        for bad in [
            &b"application/xml"[..],
            b"text/json",
            b"application/connect+proto",
            b"application/proto; charset=utf-8",
            b"application/",
        ] {
            assert_eq!(Codec::from_unary_content_type(bad), None);
        }
    }

    #[test]
    fn s1_stream_content_types() {
        assert_eq!(
            Codec::from_stream_content_type(b"application/connect+proto"),
            Some(Codec::Proto)
        );
        assert_eq!(
            Codec::from_stream_content_type(b"application/connect+json"),
            Some(Codec::Json)
        );
        assert_eq!(Codec::from_stream_content_type(b"application/proto"), None);
        assert_eq!(
            Codec::from_stream_content_type(b"application/connect+thrift"),
            None
        );
    }
}

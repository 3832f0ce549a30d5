//! Unary GET (spec "Unary-Get-Request"; rules G1-G4): the request travels in the query string
//! as `connect=v1&base64=1&compression=gzip&encoding=proto&message=...`, for methods marked
//! `idempotency_level = NO_SIDE_EFFECTS` only.
//!
//! It parses and builds the query string only: whether a method may be called with GET, and the 405
//! and 415 answers, are the router's ([`crate::server`]); whether a client uses GET is
//! [`crate::channel`]'s (`ChannelBuilder::use_get`).

use base64::Engine as _;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use bytes::Bytes;

use crate::protocol::Codec;
use crate::protocol::compression::Compression;
use crate::{Code, Error};

/// URL-safe alphabet, padding optional on input, none on output (G2).
const BASE64_URL: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A GET request decoded from its query string.
#[derive(Debug)]
pub(crate) struct GetRequest {
    pub(crate) codec: Codec,
    pub(crate) compression: Option<Compression>,
    pub(crate) message: Bytes,
}

/// Parses a query string. Parameters may come in any order; unknown ones are ignored (G1).
pub(crate) fn parse_query(query: &str) -> Result<GetRequest, Error> {
    let mut encoding = None;
    let mut message = None;
    let mut base64 = false;
    let mut compression = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "encoding" => encoding = Some(value),
            "message" => message = Some(value),
            "base64" => base64 = value == "1",
            "compression" => compression = Some(percent_decode(value)?),
            "connect" if value != "v1" => {
                return Err(Error::invalid_argument(format!(
                    "unsupported connect={value:?} in the query: this server speaks v1"
                )));
            }
            _ => {}
        }
    }
    let encoding = encoding.ok_or_else(|| {
        Error::invalid_argument("GET request is missing the `encoding` query parameter")
    })?;
    let codec = match encoding {
        "proto" => Codec::Proto,
        "json" => Codec::Json,
        // G3: an unsupported encoding is a 415, like an unsupported content type.
        other => {
            return Err(Error::new(
                Code::Unknown,
                format!("unsupported encoding={other:?}: use proto or json"),
            ));
        }
    };
    // G3: an unsupported compression is `unimplemented`, whatever the message holds.
    let compression = match compression {
        Some(name) => Compression::parse(&name)?,
        None => None,
    };
    let message = message.ok_or_else(|| {
        Error::invalid_argument("GET request is missing the `message` query parameter")
    })?;
    let raw = percent_decode(message)?;
    let message = if base64 {
        BASE64_URL.decode(&raw).map_err(|e| {
            Error::invalid_argument(format!(
                "the `message` parameter is not URL-safe base64: {e}"
            ))
        })?
    } else {
        raw
    };
    Ok(GetRequest {
        codec,
        compression,
        message: message.into(),
    })
}

/// Whether a GET's encoding parameter names an unsupported codec (a 415, not a 400).
pub(crate) fn is_unsupported_encoding(error: &Error) -> bool {
    error.code() == Code::Unknown && error.message().starts_with("unsupported encoding=")
}

/// Builds the query string for a GET, parameters in the order the spec recommends for
/// cache hits (G1): binary payloads are base64, JSON stays readable text.
pub(crate) fn build_query(
    codec: Codec,
    compression: Option<Compression>,
    message: &[u8],
) -> String {
    let binary = codec == Codec::Proto || compression.is_some();
    let mut query = String::with_capacity(message.len() * 4 / 3 + 48);
    query.push_str("connect=v1");
    if binary {
        query.push_str("&base64=1");
    }
    if let Some(c) = compression {
        query.push_str("&compression=");
        query.push_str(c.name());
    }
    query.push_str("&encoding=");
    query.push_str(codec.name());
    query.push_str("&message=");
    if binary {
        BASE64_URL.encode_string(message, &mut query);
    } else {
        percent_encode(message, &mut query);
    }
    query
}

fn percent_encode(bytes: &[u8], out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in bytes {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 15)] as char);
        }
    }
}

fn percent_decode(text: &str) -> Result<Vec<u8>, Error> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| {
                        Error::invalid_argument("malformed percent-encoding in the query string")
                    })?;
                out.push(hex);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn g1_parameters_in_any_order_unknown_ignored() {
        let r = parse_query("message=%7B%22k%22%3A1%7D&x=y&encoding=json&connect=v1").unwrap();
        assert_eq!(r.codec, Codec::Json);
        assert_eq!(&r.message[..], br#"{"k":1}"#);
        assert_eq!(r.compression, None);
    }

    #[test]
    fn g1_missing_encoding_or_message_is_invalid_argument() {
        assert_eq!(
            parse_query("message=x").unwrap_err().code(),
            Code::InvalidArgument
        );
        assert_eq!(
            parse_query("encoding=json").unwrap_err().code(),
            Code::InvalidArgument
        );
    }

    #[test]
    fn g2_base64_padded_and_unpadded() {
        let padded = parse_query("encoding=proto&base64=1&message=AQI%3D").unwrap();
        let unpadded = parse_query("encoding=proto&base64=1&message=AQI").unwrap();
        assert_eq!(&padded.message[..], &[1, 2]);
        assert_eq!(padded.message, unpadded.message);
        // URL-safe alphabet: '-' and '_'
        let r = parse_query("encoding=proto&base64=1&message=-_8").unwrap();
        assert_eq!(&r.message[..], &[0xfb, 0xff]);
    }

    #[test]
    fn g3_unknown_encoding_and_compression() {
        assert!(is_unsupported_encoding(
            &parse_query("encoding=xml&message=").unwrap_err()
        ));
        assert_eq!(
            parse_query("encoding=json&message=&compression=br")
                .unwrap_err()
                .code(),
            Code::Unimplemented
        );
    }

    #[test]
    fn g1_build_query_round_trips() {
        let q = build_query(Codec::Proto, Some(Compression::Gzip), &[0xfb, 0xff, 0]);
        assert_eq!(
            q,
            "connect=v1&base64=1&compression=gzip&encoding=proto&message=-_8A"
        );
        let back = parse_query(&q).unwrap();
        assert_eq!(&back.message[..], &[0xfb, 0xff, 0]);
        let q = build_query(Codec::Json, None, br#"{"a b":"&"}"#);
        assert_eq!(
            q,
            "connect=v1&encoding=json&message=%7B%22a%20b%22%3A%22%26%22%7D"
        );
        assert_eq!(&parse_query(&q).unwrap().message[..], br#"{"a b":"&"}"#);
    }
}

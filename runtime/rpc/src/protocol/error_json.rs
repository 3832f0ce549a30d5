//! The JSON error body (rules E1, E2) and the streaming end-stream message (rule S7).
//!
//! It maps between [`crate::Error`] values and JSON bytes: the error type itself is
//! [`crate::error`]'s, and the HTTP status of an error response is set by [`crate::server`] and
//! read by [`crate::channel`].

use base64::Engine as _;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD_NO_PAD};
use bytes::Bytes;
use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};

use crate::error::ErrorDetail;
use crate::protocol::headers;
use crate::{Code, Error};

/// Standard alphabet, padding optional: details are sent unpadded and accepted either way (E2).
pub(crate) const BASE64_ANY_PAD: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

#[derive(Serialize)]
struct WireErrorOut<'a> {
    code: &'static str,
    #[serde(skip_serializing_if = "str::is_empty")]
    message: &'a str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    details: Vec<WireDetailOut<'a>>,
}

#[derive(Serialize)]
struct WireDetailOut<'a> {
    #[serde(rename = "type")]
    type_name: &'a str,
    value: String,
}

#[derive(Deserialize)]
struct WireErrorIn {
    code: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    details: Vec<WireDetailIn>,
}

#[derive(Deserialize)]
struct WireDetailIn {
    #[serde(rename = "type")]
    type_name: String,
    #[serde(default)]
    value: String,
}

fn to_wire(error: &Error) -> WireErrorOut<'_> {
    WireErrorOut {
        code: error.code().as_str(),
        message: error.message(),
        details: error
            .details()
            .iter()
            .map(|d| WireDetailOut {
                type_name: d.type_name(),
                value: STANDARD_NO_PAD.encode(d.value()),
            })
            .collect(),
    }
}

/// The JSON body of a unary error response.
pub(crate) fn encode_error(error: &Error) -> Bytes {
    // Serialising plain strings into a Vec cannot fail.
    serde_json::to_vec(&to_wire(error))
        .unwrap_or_else(|_| br#"{"code":"internal"}"#.to_vec())
        .into()
}

/// Parses a JSON error body: `None` when it is not a JSON object, so the caller falls back to
/// the HTTP status (rule C2). An object without a code, or with a code this side does not know,
/// takes `fallback` (the code the HTTP status maps to) and keeps its message, as the
/// conformance suite expects (`error/missing-code`, `error/unrecognized-code`).
pub(crate) fn decode_error(body: &[u8], fallback: Code) -> Option<Error> {
    if body.trim_ascii_start().first() != Some(&b'{') {
        return None;
    }
    let wire: WireErrorIn = serde_json::from_slice(body).ok()?;
    Some(from_wire(wire, fallback))
}

fn from_wire(wire: WireErrorIn, fallback: Code) -> Error {
    let code = wire
        .code
        .as_deref()
        .and_then(Code::from_wire)
        .unwrap_or(fallback);
    let mut error = Error::new(code, wire.message.unwrap_or_default());
    for detail in wire.details {
        // A detail with undecodable bytes is dropped rather than failing the whole error.
        if let Ok(value) = BASE64_ANY_PAD.decode(detail.value.as_bytes()) {
            error.push_detail(ErrorDetail::new(detail.type_name, value));
        }
    }
    error
}

#[derive(Serialize)]
struct EndStreamOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<WireErrorOut<'a>>,
    #[serde(skip_serializing_if = "serde_json::Map::is_empty")]
    metadata: serde_json::Map<String, serde_json::Value>,
}

#[derive(Deserialize)]
struct EndStreamIn {
    /// `Some(Value::Null)` for an explicit `"error": null`, which is invalid (S7).
    #[serde(default, deserialize_with = "present")]
    error: Option<serde_json::Value>,
    #[serde(default)]
    metadata: Option<std::collections::BTreeMap<String, Vec<String>>>,
}

/// The most metadata keys read from an end-stream message.
const MAX_METADATA_KEYS: usize = 1024;

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<serde_json::Value>, D::Error> {
    serde_json::Value::deserialize(d).map(Some)
}

/// The JSON payload of the end-stream envelope: the error if any, and the trailers.
pub(crate) fn encode_end_stream(error: Option<&Error>, trailers: &HeaderMap) -> Bytes {
    let mut metadata = serde_json::Map::new();
    let mut add = |map: &HeaderMap| {
        for key in map.keys() {
            if headers::is_protocol_header(key) {
                continue;
            }
            let entry = metadata
                .entry(key.as_str().to_owned())
                .or_insert_with(|| serde_json::Value::Array(Vec::new()));
            if let serde_json::Value::Array(values) = entry {
                values.extend(map.get_all(key).iter().map(|v| {
                    serde_json::Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned())
                }));
            }
        }
    };
    add(trailers);
    if let Some(error) = error {
        add(error.metadata());
    }
    let out = EndStreamOut {
        error: error.map(to_wire),
        metadata,
    };
    serde_json::to_vec(&out)
        .unwrap_or_else(|_| br#"{"error":{"code":"internal"}}"#.to_vec())
        .into()
}

/// Parses an end-stream payload into the trailers and the error it carries, if any. As the
/// conformance suite expects, `{"error":null}` is a success, and an error without a code (or
/// with one this side does not know) is `unknown` with its message; an error that is not an
/// object, or a payload that is not one, is invalid (S7).
pub(crate) fn decode_end_stream(payload: &[u8]) -> Result<(HeaderMap, Option<Error>), Error> {
    let invalid = |why: &str| {
        Error::new(
            Code::Internal,
            format!("protocol error: invalid end-stream message: {why}"),
        )
    };
    // Serde would also accept a JSON array for a struct; the spec wants an object.
    if payload.trim_ascii_start().first() != Some(&b'{') {
        return Err(invalid("not a JSON object"));
    }
    let end: EndStreamIn = serde_json::from_slice(payload).map_err(|e| invalid(&e.to_string()))?;
    let mut trailers = HeaderMap::new();
    // Entries that are not valid metadata are skipped, so the status they came with is not
    // lost; the count is capped because a HeaderMap panics past ~24k names.
    for (key, values) in end
        .metadata
        .unwrap_or_default()
        .into_iter()
        .take(MAX_METADATA_KEYS)
    {
        let Ok(name) = HeaderName::from_bytes(key.as_bytes()) else {
            continue;
        };
        for value in values {
            if let Ok(value) = HeaderValue::from_str(&value)
                && trailers.try_append(name.clone(), value).is_err()
            {
                break;
            }
        }
    }
    let error = match end.error {
        None | Some(serde_json::Value::Null) => None,
        Some(value) => {
            let wire: WireErrorIn =
                serde_json::from_value(value).map_err(|_| invalid("error is not an object"))?;
            let mut error = from_wire(wire, Code::Unknown);
            *error.metadata_mut() = trailers.clone();
            Some(error)
        }
    };
    Ok((trailers, error))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e1_error_json_shape() {
        let err = Error::new(Code::NotFound, "no such key");
        let body = encode_error(&err);
        assert_eq!(
            &body[..],
            br#"{"code":"not_found","message":"no such key"}"#
        );
        let back = decode_error(&body, Code::Unknown).unwrap();
        assert_eq!(
            (back.code(), back.message()),
            (Code::NotFound, "no such key")
        );
    }

    #[test]
    fn e1_an_error_without_a_known_code_takes_the_status_code_and_keeps_its_message() {
        let fallback = Code::Unavailable;
        for body in [
            &br#"{"message":"oops"}"#[..],
            br#"{"code":null,"message":"oops"}"#,
            br#"{"code":"teapot","message":"oops"}"#,
        ] {
            let error = decode_error(body, fallback).unwrap();
            assert_eq!((error.code(), error.message()), (fallback, "oops"));
        }
        assert!(decode_error(b"not json", fallback).is_none());
        assert!(decode_error(br#"["internal"]"#, fallback).is_none());
    }

    #[test]
    fn e2_details_are_unpadded_base64_and_padded_is_accepted() {
        let err =
            Error::new(Code::Internal, "x").with_detail(ErrorDetail::new("a.B", &b"\x01"[..]));
        let body = encode_error(&err);
        assert!(
            std::str::from_utf8(&body)
                .unwrap()
                .contains(r#""value":"AQ""#)
        );
        let padded = decode_error(
            br#"{"code":"internal","details":[{"type":"a.B","value":"AQ=="}]}"#,
            Code::Unknown,
        )
        .unwrap();
        assert_eq!(padded.details()[0].value().as_ref(), b"\x01");
        assert_eq!(padded.details()[0].type_name(), "a.B");
    }

    #[test]
    fn s7_end_stream_success_and_error() {
        let mut trailers = HeaderMap::new();
        trailers.append("x-count", HeaderValue::from_static("1"));
        trailers.append("x-count", HeaderValue::from_static("2"));
        let ok = encode_end_stream(None, &trailers);
        assert_eq!(&ok[..], br#"{"metadata":{"x-count":["1","2"]}}"#);
        let (t, e) = decode_end_stream(&ok).unwrap();
        assert!(e.is_none());
        assert_eq!(t.get_all("x-count").iter().count(), 2);

        let err = Error::new(Code::Aborted, "stop");
        let (_, e) = decode_end_stream(&encode_end_stream(Some(&err), &HeaderMap::new())).unwrap();
        assert_eq!(e.unwrap().code(), Code::Aborted);
        assert_eq!(decode_end_stream(b"{}").unwrap().1.map(|e| e.code()), None);
    }

    #[test]
    fn s7_lenient_end_stream_errors_and_invalid_messages() {
        assert!(decode_end_stream(br#"{"error":null}"#).unwrap().1.is_none());
        for codeless in [
            &br#"{"error":{"message":"oops"}}"#[..],
            br#"{"error":{"code":null,"message":"oops"}}"#,
        ] {
            let error = decode_end_stream(codeless).unwrap().1.unwrap();
            assert_eq!((error.code(), error.message()), (Code::Unknown, "oops"));
        }
        for bad in [&br#"{"error":5}"#[..], b"[]", b""] {
            let err = decode_end_stream(bad).unwrap_err();
            assert_eq!(
                err.code(),
                Code::Internal,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}

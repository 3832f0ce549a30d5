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

/// Parses a JSON error body. `None` when it is not a valid Connect error (no code, not JSON),
/// so the caller falls back to the HTTP status (rules C2, E1). An unknown code string maps to
/// `unknown`.
pub(crate) fn decode_error(body: &[u8]) -> Option<Error> {
    if body.trim_ascii_start().first() != Some(&b'{') {
        return None;
    }
    let wire: WireErrorIn = serde_json::from_slice(body).ok()?;
    from_wire(wire)
}

fn from_wire(wire: WireErrorIn) -> Option<Error> {
    let code = Code::from_wire(&wire.code?).unwrap_or(Code::Unknown);
    let mut error = Error::new(code, wire.message.unwrap_or_default());
    for detail in wire.details {
        // A detail with undecodable bytes is dropped rather than failing the whole error.
        if let Ok(value) = BASE64_ANY_PAD.decode(detail.value.as_bytes()) {
            error.push_detail(ErrorDetail::new(detail.type_name, value));
        }
    }
    Some(error)
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

/// Parses an end-stream payload into the trailers and the error it carries, if any.
/// `{"error":null}`, `{"error":{}}` and a code that is not a string are invalid (S7).
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
        None => None,
        Some(value) => {
            let wire: WireErrorIn =
                serde_json::from_value(value).map_err(|_| invalid("error is not an object"))?;
            let mut error = from_wire(wire).ok_or_else(|| invalid("error has no code"))?;
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
        let back = decode_error(&body).unwrap();
        assert_eq!(
            (back.code(), back.message()),
            (Code::NotFound, "no such key")
        );
    }

    #[test]
    fn e1_error_without_code_is_not_an_error_body() {
        assert!(decode_error(br#"{}"#).is_none());
        assert!(decode_error(br#"{"code":null}"#).is_none());
        assert!(decode_error(b"not json").is_none());
        assert!(decode_error(br#"["internal"]"#).is_none());
        let unknown = decode_error(br#"{"code":"teapot"}"#).unwrap();
        assert_eq!(unknown.code(), Code::Unknown);
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
        let padded =
            decode_error(br#"{"code":"internal","details":[{"type":"a.B","value":"AQ=="}]}"#)
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
    fn s7_invalid_end_stream_messages_are_internal_errors() {
        for bad in [
            &br#"{"error":null}"#[..],
            br#"{"error":{}}"#,
            br#"{"error":{"code":null}}"#,
            br#"{"error":5}"#,
            b"[]",
            b"",
        ] {
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

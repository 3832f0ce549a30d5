//! A server and a client under test for the connectrpc conformance suite
//! (github.com/connectrpc/conformance), built on connect-plugin.
//!
//! Both binaries speak the runner's stdin/stdout protocol: size-delimited protobuf messages,
//! a 4-byte big-endian length then the bytes. `conformance-server` reads one
//! `ServerCompatRequest`, listens on 127.0.0.1 and answers with a `ServerCompatResponse`;
//! `conformance-client` reads `ClientCompatRequest`s until end of input and answers each with a
//! `ClientCompatResponse`. Only the Connect protocol is implemented; gRPC and gRPC-Web cases
//! are answered with an error result. See `conformance/README.md` for running the official
//! runner against them.

pub mod any;
#[path = "gen/mod.rs"]
#[allow(missing_docs)]
pub mod generated;

pub mod service;

use std::io::{Read, Write};

use connect_plugin_rpc::{Code, Error, ErrorDetail};
use http::{HeaderMap, HeaderName, HeaderValue};
use prost::Message;

pub use generated::connectrpc::conformance::v1 as proto;

/// The largest delimited message accepted on stdin (the runner's own limit is far smaller).
const MAX_DELIMITED: usize = 64 * 1024 * 1024;

/// Reads one size-delimited message; `Ok(None)` at a clean end of input.
///
/// # Errors
/// An I/O error, a message over 64 MiB, or bytes that do not decode as `M`.
pub fn read_delimited<M: Message + Default>(input: &mut impl Read) -> std::io::Result<Option<M>> {
    let mut len = [0u8; 4];
    match input.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_DELIMITED {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("delimited message of {len} bytes is over the {MAX_DELIMITED}-byte limit"),
        ));
    }
    let mut buf = vec![0; len];
    input.read_exact(&mut buf)?;
    M::decode(buf.as_slice())
        .map(Some)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Writes one size-delimited message and flushes.
///
/// # Errors
/// An I/O error.
pub fn write_delimited(output: &mut impl Write, message: &impl Message) -> std::io::Result<()> {
    let bytes = message.encode_to_vec();
    output.write_all(&(bytes.len() as u32).to_be_bytes())?;
    output.write_all(&bytes)?;
    output.flush()
}

/// The type URL prefix of packed messages.
pub const TYPE_URL_PREFIX: &str = "type.googleapis.com/";

/// Packs a message into an `Any`.
pub fn to_any<M: Message + prost::Name>(message: &M) -> crate::any::Any {
    crate::any::Any {
        type_url: format!("{TYPE_URL_PREFIX}{}", M::full_name()),
        value: message.encode_to_vec().into(),
    }
}

/// Unpacks an `Any` holding an `M`.
///
/// # Errors
/// `invalid_argument` if it holds another type or bad bytes.
pub fn from_any<M: Message + prost::Name + Default>(any: &crate::any::Any) -> Result<M, Error> {
    let name = any.type_url.rsplit('/').next().unwrap_or_default();
    if name != M::full_name() {
        return Err(Error::invalid_argument(format!(
            "expected a {} message, got {}",
            M::full_name(),
            any.type_url
        )));
    }
    M::decode(any.value.clone())
        .map_err(|e| Error::invalid_argument(format!("decoding {name}: {e}")))
}

/// The conformance `Code` (1 = canceled ... 16 = unauthenticated) as a Connect code.
pub fn code_from_proto(code: i32) -> Code {
    usize::try_from(code)
        .ok()
        .and_then(|c| c.checked_sub(1))
        .and_then(|i| Code::ALL.get(i).copied())
        .unwrap_or(Code::Unknown)
}

/// A Connect code as the conformance `Code`.
pub fn code_to_proto(code: Code) -> i32 {
    Code::ALL
        .iter()
        .position(|c| *c == code)
        .map_or(2, |i| i as i32 + 1)
}

/// Conformance headers as an HTTP header map (invalid names or values are skipped).
pub fn headers_from_proto(headers: &[proto::Header]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for header in headers {
        let Ok(name) = HeaderName::from_bytes(header.name.as_bytes()) else {
            continue;
        };
        for value in &header.value {
            if let Ok(value) = HeaderValue::from_str(value) {
                map.append(name.clone(), value);
            }
        }
    }
    map
}

/// An HTTP header map as conformance headers.
pub fn headers_to_proto(map: &HeaderMap) -> Vec<proto::Header> {
    map.keys()
        .map(|name| proto::Header {
            name: name.as_str().to_owned(),
            value: map
                .get_all(name)
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .collect(),
        })
        .collect()
}

/// A conformance error description as a Connect error, with its details.
pub fn error_from_proto(error: &proto::Error) -> Error {
    let mut out = Error::new(
        code_from_proto(error.code),
        error.message.clone().unwrap_or_default(),
    );
    for detail in &error.details {
        out = out.with_detail(ErrorDetail::new(
            detail.type_url.clone(),
            detail.value.clone(),
        ));
    }
    out
}

/// A Connect error as a conformance error description.
pub fn error_to_proto(error: &Error) -> proto::Error {
    proto::Error {
        code: code_to_proto(error.code()),
        message: Some(error.message().to_owned()),
        details: error
            .details()
            .iter()
            .map(|d| crate::any::Any {
                type_url: format!("{TYPE_URL_PREFIX}{}", d.type_name()),
                value: d.value().clone(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_both_ways() {
        for code in Code::ALL {
            assert_eq!(code_from_proto(code_to_proto(code)), code);
        }
        assert_eq!(code_to_proto(Code::Canceled), 1);
        assert_eq!(code_to_proto(Code::Unauthenticated), 16);
        assert_eq!(code_from_proto(0), Code::Unknown);
    }

    #[test]
    fn delimited_round_trip_and_clean_eof() {
        let mut buf = Vec::new();
        let message = proto::ServerCompatResponse {
            host: "127.0.0.1".into(),
            port: 8080,
            pem_cert: Default::default(),
        };
        write_delimited(&mut buf, &message).unwrap();
        let mut input = buf.as_slice();
        assert_eq!(
            read_delimited::<proto::ServerCompatResponse>(&mut input).unwrap(),
            Some(message)
        );
        assert_eq!(
            read_delimited::<proto::ServerCompatResponse>(&mut input).unwrap(),
            None
        );
    }
}

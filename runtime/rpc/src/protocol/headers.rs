//! Protocol header names and content types (spec "Unary-Request", "Streaming-Request").
//!
//! Header names are pre-parsed statics: building a `HeaderName` from a string on every call
//! costs a parse and an allocation check per header, which shows on the unary hot path.
//!
//! Names and values only: which headers a call sends and checks is decided by [`crate::server`] and
//! [`crate::channel`], which drive this module.

use http::HeaderValue;
use http::header::HeaderName;

pub(crate) static CONNECT_PROTOCOL_VERSION: HeaderName =
    HeaderName::from_static("connect-protocol-version");
pub(crate) static CONNECT_TIMEOUT_MS: HeaderName = HeaderName::from_static("connect-timeout-ms");
pub(crate) static CONNECT_CONTENT_ENCODING: HeaderName =
    HeaderName::from_static("connect-content-encoding");
pub(crate) static CONNECT_ACCEPT_ENCODING: HeaderName =
    HeaderName::from_static("connect-accept-encoding");

pub(crate) static PROTOCOL_VERSION_1: HeaderValue = HeaderValue::from_static("1");
pub(crate) static APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");

/// Prefix that carries unary trailers as response headers (rule U7).
pub(crate) const TRAILER_PREFIX: &str = "trailer-";

/// Protocol headers that are not user metadata: they are neither copied from a user's
/// metadata onto the wire nor surfaced to users as metadata where the runtime sets them.
pub(crate) fn is_protocol_header(name: &HeaderName) -> bool {
    let name = name.as_str();
    name.starts_with("connect-")
        || matches!(
            name,
            "content-type"
                | "content-length"
                | "content-encoding"
                | "accept-encoding"
                | "te"
                | "transfer-encoding"
                | "host"
                | "connection"
        )
}

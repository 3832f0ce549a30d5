//! Building HTTP responses shared by the router and the handlers.
//!
//! It only assembles status, headers and body: the JSON error body and the header names come from
//! [`crate::protocol`], and which response a call gets is decided by [`super::router`] and
//! [`super::handler`].

use http::header::{CONTENT_TYPE, HeaderName};
use http::{HeaderMap, StatusCode};

use crate::Error;
use crate::body::Body;
use crate::protocol::error_json;
use crate::protocol::headers::{self, APPLICATION_JSON, TRAILER_PREFIX};

/// A unary error response: the code's HTTP status and the JSON error body (rule U6).
pub(crate) fn error_response(error: &Error) -> http::Response<Body> {
    let mut out = http::Response::new(Body::full(error_json::encode_error(error)));
    *out.status_mut() = StatusCode::from_u16(error.code().http_status())
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    out.headers_mut()
        .insert(CONTENT_TYPE, APPLICATION_JSON.clone());
    copy_user_headers(error.metadata(), out.headers_mut());
    out
}

/// An error response with a status other than the code's own (404 for unknown procedures,
/// 405 for wrong verbs: rules P1, P2).
pub(crate) fn error_response_with_status(
    error: &Error,
    status: StatusCode,
) -> http::Response<Body> {
    let mut out = error_response(error);
    *out.status_mut() = status;
    out
}

/// Copies user metadata, leaving out the headers the protocol owns (P3: `connect-` is
/// reserved).
pub(crate) fn copy_user_headers(from: &HeaderMap, to: &mut HeaderMap) {
    for (name, value) in from {
        if !headers::is_protocol_header(name) {
            to.append(name.clone(), value.clone());
        }
    }
}

/// Unary trailers travel as `trailer-` prefixed headers (U7).
pub(crate) fn copy_trailers_as_headers(trailers: &HeaderMap, to: &mut HeaderMap) {
    for (name, value) in trailers {
        if headers::is_protocol_header(name) {
            continue;
        }
        let mut prefixed = String::with_capacity(TRAILER_PREFIX.len() + name.as_str().len());
        prefixed.push_str(TRAILER_PREFIX);
        prefixed.push_str(name.as_str());
        if let Ok(name) = HeaderName::from_bytes(prefixed.as_bytes()) {
            to.append(name, value.clone());
        }
    }
}

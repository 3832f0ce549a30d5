//! The one public error type, [`Error`], and the sixteen Connect status [`Code`]s.
//!
//! Implements the error model of the Connect protocol (connectrpc.com/docs/protocol, "Error
//! Codes" and "Error End-Stream"): a code, a human-readable message, and optional typed
//! details, and each code's HTTP status mapping. The wire encoding (the JSON error body and
//! end-stream error) lives in `protocol::error_json`; this module owns only the values users
//! see and never reads or writes bytes.

use std::fmt;

use bytes::Bytes;
use http::HeaderMap;

/// A Connect status code. Only these sixteen exist; there are no user-defined codes (rule E3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Code {
    /// The operation was canceled, typically by the caller.
    Canceled,
    /// An unknown error, for example an error from another address space.
    Unknown,
    /// The client sent an invalid argument, regardless of the system state.
    InvalidArgument,
    /// The deadline expired before the operation could complete.
    DeadlineExceeded,
    /// Some requested entity was not found.
    NotFound,
    /// The entity the client tried to create already exists.
    AlreadyExists,
    /// The caller may not execute the operation.
    PermissionDenied,
    /// A resource (quota, message size, ...) has been exhausted.
    ResourceExhausted,
    /// The system is not in a state required for the operation.
    FailedPrecondition,
    /// The operation was aborted, typically because of a concurrency conflict.
    Aborted,
    /// The operation was attempted past the valid range.
    OutOfRange,
    /// The operation is not implemented, supported or enabled.
    Unimplemented,
    /// An invariant expected by the system was broken.
    Internal,
    /// The service is currently unavailable; retrying may help.
    Unavailable,
    /// Unrecoverable data loss or corruption.
    DataLoss,
    /// The request has no valid authentication credentials.
    Unauthenticated,
}

impl Code {
    /// Every code, in the order of the Connect specification.
    pub const ALL: [Code; 16] = [
        Code::Canceled,
        Code::Unknown,
        Code::InvalidArgument,
        Code::DeadlineExceeded,
        Code::NotFound,
        Code::AlreadyExists,
        Code::PermissionDenied,
        Code::ResourceExhausted,
        Code::FailedPrecondition,
        Code::Aborted,
        Code::OutOfRange,
        Code::Unimplemented,
        Code::Internal,
        Code::Unavailable,
        Code::DataLoss,
        Code::Unauthenticated,
    ];

    /// The code's name on the wire, e.g. `"invalid_argument"` (note the spelling `"canceled"`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Code::Canceled => "canceled",
            Code::Unknown => "unknown",
            Code::InvalidArgument => "invalid_argument",
            Code::DeadlineExceeded => "deadline_exceeded",
            Code::NotFound => "not_found",
            Code::AlreadyExists => "already_exists",
            Code::PermissionDenied => "permission_denied",
            Code::ResourceExhausted => "resource_exhausted",
            Code::FailedPrecondition => "failed_precondition",
            Code::Aborted => "aborted",
            Code::OutOfRange => "out_of_range",
            Code::Unimplemented => "unimplemented",
            Code::Internal => "internal",
            Code::Unavailable => "unavailable",
            Code::DataLoss => "data_loss",
            Code::Unauthenticated => "unauthenticated",
        }
    }

    /// Parses a wire name such as `"not_found"`; `None` for anything that is not one of the 16.
    pub fn from_wire(name: &str) -> Option<Code> {
        Code::ALL.into_iter().find(|code| code.as_str() == name)
    }

    /// The HTTP status a server sends for this code on a unary error (spec table, §2.6).
    pub const fn http_status(self) -> u16 {
        match self {
            Code::Canceled => 499,
            Code::Unknown | Code::Internal | Code::DataLoss => 500,
            Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition => 400,
            Code::DeadlineExceeded => 504,
            Code::NotFound => 404,
            Code::AlreadyExists | Code::Aborted => 409,
            Code::PermissionDenied => 403,
            Code::ResourceExhausted => 429,
            Code::Unimplemented => 501,
            Code::Unavailable => 503,
            Code::Unauthenticated => 401,
        }
    }

    /// The code a client infers from an HTTP status when the response carries no usable error
    /// body. Deliberately not the inverse of [`Code::http_status`] (Connect RFC 003).
    pub const fn from_http_status(status: u16) -> Code {
        match status {
            400 => Code::Internal,
            401 => Code::Unauthenticated,
            403 => Code::PermissionDenied,
            404 => Code::Unimplemented,
            429 | 502 | 503 | 504 => Code::Unavailable,
            _ => Code::Unknown,
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A typed error detail: a protobuf message carried with an error (rule E2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorDetail {
    type_name: String,
    value: Bytes,
}

impl ErrorDetail {
    /// A detail from a fully qualified message name (`"google.rpc.RetryInfo"`; a
    /// `type.googleapis.com/` prefix is accepted and removed) and the message's protobuf bytes.
    pub fn new(type_name: impl Into<String>, value: impl Into<Bytes>) -> Self {
        let mut type_name = type_name.into();
        if let Some(pos) = type_name.rfind('/') {
            type_name.drain(..=pos);
        }
        Self {
            type_name,
            value: value.into(),
        }
    }

    /// A detail holding `message`, named by its [`prost::Name`].
    pub fn from_message<M: prost::Message + prost::Name>(message: &M) -> Self {
        Self::new(M::full_name(), message.encode_to_vec())
    }

    /// The fully qualified protobuf message name, without any `type.googleapis.com/` prefix.
    pub fn type_name(&self) -> &str {
        &self.type_name
    }

    /// The protobuf-encoded message.
    pub fn value(&self) -> &Bytes {
        &self.value
    }

    /// Decodes the detail as `M`, or `None` if it holds another message type or bad bytes.
    pub fn to_message<M: prost::Message + prost::Name + Default>(&self) -> Option<M> {
        if self.type_name != M::full_name() {
            return None;
        }
        M::decode(self.value.clone()).ok()
    }
}

/// The error of every fallible operation in this crate: a Connect [`Code`], a message, optional
/// [`ErrorDetail`]s and optional metadata (response headers and trailers that came with it).
///
/// Handlers return it to fail a call; clients receive it exactly as the server sent it.
///
/// ```
/// use connect_plugin_rpc::{Code, Error};
///
/// let err = Error::new(Code::InvalidArgument, "key must not be empty");
/// assert_eq!(err.code(), Code::InvalidArgument);
/// assert_eq!(err.to_string(), "invalid_argument: key must not be empty");
/// ```
#[derive(Clone)]
pub struct Error {
    inner: Box<ErrorInner>,
}

#[derive(Clone)]
struct ErrorInner {
    code: Code,
    message: String,
    details: Vec<ErrorDetail>,
    metadata: HeaderMap,
}

impl Error {
    /// An error with `code` and `message`.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            inner: Box::new(ErrorInner {
                code,
                message: message.into(),
                details: Vec::new(),
                metadata: HeaderMap::new(),
            }),
        }
    }

    /// Shorthand for [`Code::InvalidArgument`].
    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Self::new(Code::InvalidArgument, message)
    }

    /// Shorthand for [`Code::NotFound`].
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(Code::NotFound, message)
    }

    /// Shorthand for [`Code::Internal`].
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(Code::Internal, message)
    }

    /// Shorthand for [`Code::Unavailable`].
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(Code::Unavailable, message)
    }

    /// Shorthand for [`Code::Unimplemented`].
    pub fn unimplemented(message: impl Into<String>) -> Self {
        Self::new(Code::Unimplemented, message)
    }

    /// Adds a detail; builder style.
    #[must_use]
    pub fn with_detail(mut self, detail: ErrorDetail) -> Self {
        self.inner.details.push(detail);
        self
    }

    /// The status code.
    pub fn code(&self) -> Code {
        self.inner.code
    }

    /// The message (may be empty).
    pub fn message(&self) -> &str {
        &self.inner.message
    }

    /// The typed details.
    pub fn details(&self) -> &[ErrorDetail] {
        &self.inner.details
    }

    /// Metadata sent with the error: on a client, the response headers and trailers; on a
    /// server, headers to send along with the error.
    pub fn metadata(&self) -> &HeaderMap {
        &self.inner.metadata
    }

    /// Mutable access to the metadata.
    pub fn metadata_mut(&mut self) -> &mut HeaderMap {
        &mut self.inner.metadata
    }

    pub(crate) fn push_detail(&mut self, detail: ErrorDetail) {
        self.inner.details.push(detail);
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("Error");
        s.field("code", &self.inner.code)
            .field("message", &self.inner.message);
        if !self.inner.details.is_empty() {
            s.field("details", &self.inner.details);
        }
        s.finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.inner.message.is_empty() {
            write!(f, "{}", self.inner.code)
        } else {
            write!(f, "{}: {}", self.inner.code, self.inner.message)
        }
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e3_every_code_round_trips_through_its_wire_name() {
        for code in Code::ALL {
            assert_eq!(Code::from_wire(code.as_str()), Some(code));
        }
        assert_eq!(Code::from_wire("cancelled"), None);
        assert_eq!(Code::from_wire("ok"), None);
    }

    #[test]
    fn code_to_http_status_matches_the_spec_table() {
        let table = [
            (Code::Canceled, 499),
            (Code::Unknown, 500),
            (Code::InvalidArgument, 400),
            (Code::DeadlineExceeded, 504),
            (Code::NotFound, 404),
            (Code::AlreadyExists, 409),
            (Code::PermissionDenied, 403),
            (Code::ResourceExhausted, 429),
            (Code::FailedPrecondition, 400),
            (Code::Aborted, 409),
            (Code::OutOfRange, 400),
            (Code::Unimplemented, 501),
            (Code::Internal, 500),
            (Code::Unavailable, 503),
            (Code::DataLoss, 500),
            (Code::Unauthenticated, 401),
        ];
        for (code, status) in table {
            assert_eq!(code.http_status(), status, "{code}");
        }
    }

    #[test]
    fn http_status_to_code_is_the_asymmetric_client_table() {
        let table = [
            (400, Code::Internal),
            (401, Code::Unauthenticated),
            (403, Code::PermissionDenied),
            (404, Code::Unimplemented),
            (429, Code::Unavailable),
            (502, Code::Unavailable),
            (503, Code::Unavailable),
            (504, Code::Unavailable),
            (500, Code::Unknown),
            (415, Code::Unknown),
            (405, Code::Unknown),
        ];
        for (status, code) in table {
            assert_eq!(Code::from_http_status(status), code, "{status}");
        }
    }

    #[test]
    fn detail_type_prefix_is_stripped() {
        let d = ErrorDetail::new("type.googleapis.com/google.rpc.RetryInfo", Bytes::new());
        assert_eq!(d.type_name(), "google.rpc.RetryInfo");
    }
}

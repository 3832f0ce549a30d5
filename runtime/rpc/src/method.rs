//! Static descriptions of RPC methods, emitted by the generator for every method.
//!
//! They are plain data: routing by path is [`crate::server`]'s, and calling a method (with GET for
//! `NoSideEffects` ones, when enabled) is [`crate::channel`]'s.

/// The four RPC shapes (stream kinds) of the Connect protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StreamKind {
    /// One request, one response.
    Unary,
    /// Many requests, one response.
    ClientStreaming,
    /// One request, many responses.
    ServerStreaming,
    /// Many requests, many responses.
    BidiStreaming,
}

impl StreamKind {
    /// Whether the method uses the streaming wire format (envelopes, `application/connect+*`).
    pub const fn is_streaming(self) -> bool {
        !matches!(self, StreamKind::Unary)
    }
}

/// A method's `idempotency_level` option.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Idempotency {
    /// No option set.
    #[default]
    Unknown,
    /// `NO_SIDE_EFFECTS`: may be called with HTTP GET.
    NoSideEffects,
    /// `IDEMPOTENT`: safe to retry.
    Idempotent,
}

/// Everything the runtime needs to know about one RPC method. Generated code declares one
/// `const` per method; users pass them around by reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MethodDescriptor {
    /// Fully qualified service name, e.g. `kv.v1.KVService`.
    pub service: &'static str,
    /// Method name as written in the proto, e.g. `Get`.
    pub method: &'static str,
    /// HTTP path, `/<service>/<method>` (rule P1).
    pub path: &'static str,
    /// The RPC shape.
    pub kind: StreamKind,
    /// The method's idempotency level.
    pub idempotency: Idempotency,
}

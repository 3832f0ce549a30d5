//! The Connect protocol v1 wire format (connectrpc.com/docs/protocol) and nothing else.
//!
//! This module owns bytes on the wire: content types and codecs, compression, the 5-byte
//! envelope of streaming RPCs, the JSON error body and end-stream message, unary GET query
//! strings, timeouts and protocol headers. It knows nothing of plugins, handshakes or
//! registries; the server and client modules drive it, and the plugin system sits above them.

pub(crate) mod codec;
pub(crate) mod compression;
pub(crate) mod envelope;
pub(crate) mod error_json;
pub(crate) mod get;
pub(crate) mod headers;
pub(crate) mod timeout;

pub use codec::Codec;
pub use compression::Compression;

/// Default limit (servers and clients) on one message, after decompression: 4 MiB.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 4 * 1024 * 1024;

/// Default size below which messages are not compressed: 1 KiB.
pub const DEFAULT_COMPRESS_MIN_BYTES: usize = 1024;

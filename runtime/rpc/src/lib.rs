//! # connect-plugin-rpc
//!
//! The [Connect RPC protocol](https://connectrpc.com/docs/protocol) on hyper 1: a server, a
//! client [`Channel`], streams, errors, TLS and an in-memory transport. It is the transport
//! under [`connect-plugin`](https://docs.rs/connect-plugin) and knows no plugin concept: no
//! handshake, registry or host lives here (the crate boundary enforces it). Use it on its own
//! to serve or call Connect services; use `connect-plugin` for plugins.
//!
//! ```no_run
//! # async fn demo(service: connect_plugin_rpc::Service) -> Result<(), Box<dyn std::error::Error>> {
//! use connect_plugin_rpc::{Channel, Server};
//!
//! // Serve generated services (`MyServiceServer::new(my_impl).into_service()`)...
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! tokio::spawn(Server::new().add_service(service).serve(listener));
//!
//! // ...and call them through a generated client wrapping a channel.
//! let channel = Channel::new("http://127.0.0.1:8080")?;
//! # let _ = channel; Ok(()) }
//! ```
//!
//! ## Modules
//! | module | what it owns |
//! |---|---|
//! | [`server`] | [`Server`]: routes procedures to [`Service`]s on hyper 1, HTTP/1.1 and h2c on one port, TLS; also a `tower::Service` for mounting in axum or hyper |
//! | [`channel`] | [`Channel`]: the client transport, one multiplexed HTTP/2 connection (or HTTP/1.1) per base URL |
//! | [`request`] | [`Request`] and [`Response`]: a message with its metadata |
//! | [`stream`] | [`MessageStream`], [`ServerStream`], [`Streaming`]: messages in both directions |
//! | [`error`] | [`Error`] and the sixteen [`Code`]s |
//! | [`method`] | [`MethodDescriptor`]s, as the generator emits them |
//! | [`interceptor`] | [`Interceptor`]: client hooks around every call |
//! | [`deadline`] | the deadline of the call a handler serves, inherited by its own calls |
//! | [`metadata`] | binary (`-bin`) metadata |
//! | [`tls`] | rustls configuration for servers and clients |
//! | [`wkt`] | well-known types with the runtime's own JSON mapping |
//!
//! The wire format itself (envelopes, error JSON, GET queries, timeouts, compression) is
//! private: handlers and clients only see typed messages.
//!
//! ## Protocol support
//! Connect protocol v1, server and client, checked rule by rule (tests named after the rule
//! IDs) and against connect-node and `buf curl`:
//!
//! - unary POST with `application/proto` and `application/json` (canonical proto3 JSON);
//! - unary GET for methods marked `idempotency_level = NO_SIDE_EFFECTS`
//!   ([`ChannelBuilder::use_get`] on clients; servers accept it automatically);
//! - server, client and bidirectional streaming with 5-byte envelopes and the JSON end-stream
//!   message; bidi is full duplex over HTTP/2 and half duplex over HTTP/1.1;
//! - gzip compression (identity always accepted) negotiated with `Content-Encoding` /
//!   `Accept-Encoding` for unary and `Connect-Content-Encoding` / `Connect-Accept-Encoding` per
//!   message for streams, with a minimum size below which nothing is compressed;
//! - the 16 error codes with their HTTP mapping, error details, metadata, `trailer-` headers
//!   hidden from users, end-stream metadata and `-bin` keys ([`metadata`]);
//! - `Connect-Timeout-Ms`: set from a per-call or per-channel timeout, enforced by servers, and
//!   inherited by the calls a handler makes ([`current_deadline`]);
//! - message size limits on both sides, checked after decompression;
//! - HTTP/1.1 and h2c on one port, and TLS (rustls) with HTTP/2 or HTTP/1.1 chosen by ALPN
//!   ([`tls`]).
//!
//! Not supported: gRPC and gRPC-Web (the protocol enum stays open for them), compression other
//! than gzip (brotli and zstd need C libraries; a request using them gets `unimplemented`), and
//! HTTP/3.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod body;
pub mod channel;
pub mod deadline;
pub mod error;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
pub mod interceptor;
mod memory;
pub mod metadata;
pub mod method;
pub mod policy;
mod protocol;
pub mod request;
pub mod server;
pub mod stream;
pub mod tls;
pub mod wkt;

pub use channel::{Channel, ChannelBuilder, HttpVersion};
pub use deadline::current as current_deadline;
pub use error::{Code, Error, ErrorDetail};
pub use interceptor::Interceptor;
pub use method::{Idempotency, MethodDescriptor, StreamKind};
pub use protocol::codec::Message;
pub use protocol::{Codec, Compression};
pub use request::{IntoRequest, Request, Response};
pub use server::{Server, Service};
pub use stream::{MessageStream, ServerStream, StreamSender, Streaming};

/// What generated code names, in one place, so that a generated file depends on this path
/// only (`runtime_crate=::connect_plugin_rpc` makes the generator use it). Not an API: it
/// changes with the generator.
#[doc(hidden)]
pub mod __codegen {
    pub use crate::{
        Channel, Error, Idempotency, IntoRequest, MessageStream, MethodDescriptor, Request,
        Response, ServerStream, Service, StreamKind, Streaming, wkt,
    };
}

/// The hooks `connect-plugin` builds on: raw routes beside the Connect ones, in-process
/// dispatch through a server's router, the HTTP/2 client connection for its routing proxy and
/// the in-memory transport. Everything the plugin crate needs from this crate's internals goes
/// through here and nowhere else, so the boundary stays visible. Not an API for users: it
/// changes with `connect-plugin`.
#[doc(hidden)]
pub mod __private;

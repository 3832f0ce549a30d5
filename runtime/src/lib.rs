//! # connect-plugin
//!
//! A remote-first plugin system for Rust on the [Connect RPC protocol](https://connectrpc.com/docs/protocol).
//! Plugins are separate processes (local or remote) that a host talks to over HTTP/1.1 or h2c,
//! with typed servers, clients and plugin bindings generated from Protocol Buffers by
//! `protoc-gen-connect-plugin`.
//!
//! ```no_run
//! # use connect_plugin::{Client, ClientConfig, ServeConfig, Plugin};
//! # struct KvServicePlugin;
//! # impl Plugin for KvServicePlugin { const NAME: &'static str = "kv"; const VERSION: &'static str = "1.0.0";
//! #   const SERVICE_NAME: &'static str = "kv.v1.KVService"; type Client = connect_plugin::Channel;
//! #   fn client(c: connect_plugin::Channel) -> connect_plugin::Channel { c } }
//! # async fn demo() -> Result<(), connect_plugin::Error> {
//! // plugin process: serve an implementation of the generated trait
//! // connect_plugin::serve(ServeConfig::new().plugin(KvServicePlugin::server(MyStore::default()))).await?;
//!
//! // host: handshake, then a typed client from the plugin binding
//! let client = Client::new(ClientConfig::new("http://127.0.0.1:8080").plugin::<KvServicePlugin>())?;
//! let kv = client.dispense::<KvServicePlugin>().await?;
//! // let got = kv.get(GetRequest { key: "k".into() }).await?;
//! # Ok(()) }
//! ```
//!
//! ## The pieces
//! - The Connect layer: [`Server`], [`Channel`], [`Request`], [`Response`], [`Error`] and
//!   [`Code`], streams ([`MessageStream`], [`Streaming`]), [`tls`], [`metadata`],
//!   [`Interceptor`].
//! - Plugins: bindings ([`Plugin`], [`PluginServer`], [`PluginSet`]), [`serve`] and
//!   [`ServeConfig`], [`Client`] and [`ClientConfig`] (handshake, dispense, identity),
//!   [`health`], the capability [`broker`], [`launch`] (processes, supervision, in-memory),
//!   [`discovery`].
//! - Hosts: the service [`registry`], plugin-to-plugin [`routing`], [`depgraph`], the
//!   [`platform`] (add, remove, replace at runtime), [`managed`] plugins (deployment model A),
//!   [`registration`] (model B, across host restarts) and the packaged [`host`].
//!
//! The guide (`docs/guide.md` in the repository) walks through all of them.
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

// Generated code names this crate `::connect_plugin`, also inside the crate itself.
extern crate self as connect_plugin;

/// Generated code for connect-plugin's own protocol (`proto/connectplugin/**`): handshake,
/// health, capability broker, lifecycle, plugin identity and service registry messages,
/// servers and clients. Wire-compatible with connect-plugin-go.
#[path = "gen/mod.rs"]
pub mod proto;

mod body;
pub mod broker;
mod client;
mod connection;
mod deadline;
pub mod depgraph;
pub mod discovery;
mod error;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
pub mod handshake;
pub mod health;
pub mod host;
mod identity;
mod interceptor;
pub mod launch;
pub mod managed;
mod memory;
pub mod metadata;
mod method;
pub mod platform;
mod plugin;
mod plugin_client;
mod protocol;
pub mod registration;
pub mod registry;
mod request;
pub mod routing;
mod serve;
mod server;
mod stream;
pub mod tls;
pub mod wkt;

pub use broker::{CapabilityBroker, CapabilityDefinition, TracingLogger};
pub use client::{Channel, ChannelBuilder, HttpVersion};
pub use deadline::current as current_deadline;
pub use error::{Code, Error, ErrorDetail};
pub use health::{HealthMonitor, HealthServer, HealthStatus};
pub use identity::RuntimeIdentity;
pub use interceptor::Interceptor;
pub use launch::{
    CrashEvent, InMemoryPlugin, LaunchConfig, ManagedPlugin, PluginProcess, PluginState,
    RestartPolicy,
};
pub use method::{Idempotency, MethodDescriptor, StreamKind};
pub use plugin::{
    MAGIC_COOKIE_KEY, MAGIC_COOKIE_VALUE, Plugin, PluginMetadata, PluginServer, PluginSet,
    ServiceDependency, dispense,
};
pub use plugin_client::{CapabilityGrant, Client, ClientConfig, Handshake, KeepAlive};
pub use protocol::codec::Message;
pub use protocol::{Codec, Compression};
pub use registry::{Registration, SelectionStrategy, ServiceRegistry};
pub use request::{IntoRequest, Request, Response};
pub use serve::{ServeConfig, addr_from_env, serve};
pub use server::{DEFAULT_COMPRESS_MIN_BYTES, DEFAULT_MAX_MESSAGE_SIZE, Server, Service};
pub use stream::{MessageStream, ServerStream, StreamSender, Streaming};

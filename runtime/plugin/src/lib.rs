//! # connect-plugin
//!
//! A remote-first plugin system for Rust on the [Connect RPC protocol](https://connectrpc.com/docs/protocol).
//! Plugins are separate processes (local or remote) that a host talks to over HTTP/1.1 or h2c,
//! with typed servers, clients and plugin bindings generated from Protocol Buffers by
//! `protoc-gen-connect-plugin`. The Connect transport underneath is the
//! [`connect-plugin-rpc`](rpc) crate, re-exported as [`rpc`].
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
//! ## Modules
//! | module | what it owns |
//! |---|---|
//! | [`plugin`] | plugin bindings ([`Plugin`], [`PluginServer`]), the validated [`PluginSet`], [`dispense`], the magic cookie |
//! | [`serve`](mod@serve) | [`serve()`] and [`ServeConfig`]: what a plugin process runs; the readiness line |
//! | [`client`] | [`Client`]: handshake, dispense, capabilities, providers through the host, heartbeats; static discovery |
//! | [`handshake`] | the server half of the handshake and version negotiation |
//! | [`health`] | [`HealthServer`] (`Check`, `Watch`, `/healthz`, `/readyz`) and the client-side [`health::HealthMonitor`] |
//! | [`identity`] | runtime identities a host issues and checks |
//! | [`process`] | plugin processes: [`PluginProcess`] (launch), [`SupervisedPlugin`] (restart on crash), [`InMemoryPlugin`] |
//! | [`deploy`] | deployment models: A, identity assigned by the host; B, self-registration across host restarts |
//! | [`host`] | the host: [`Host`], the [`ServiceRegistry`], the routing gateway, the [`CapabilityBroker`], the platform and its dependency graph |
//! | [`proto`] | generated code of the system's own protos, wire-compatible with connect-plugin-go |
//! | [`rpc`] | the Connect transport ([`Channel`], [`rpc::Server`], errors, streams, TLS) |
//!
//! Layers only point down: `host` and `deploy` build on `process`, `client` and `serve`, which
//! build on `handshake`, `health`, `identity` and `plugin`; all of them on [`rpc`], which knows
//! no plugin concept. The guide (`docs/guide.md` in the repository) walks through all of them.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

// Generated code names this crate `::connect_plugin`, also inside the crate itself.
extern crate self as connect_plugin;

/// Generated code for connect-plugin's own protocol (`proto/connectplugin/**`): handshake,
/// health, capability broker, lifecycle, plugin identity and service registry messages,
/// servers and clients. Wire-compatible with connect-plugin-go.
#[path = "gen/mod.rs"]
pub mod proto;

mod address;
pub mod client;
pub mod deploy;
pub mod handshake;
pub mod health;
pub mod host;
pub mod identity;
mod log;
pub mod plugin;
pub mod process;
pub mod serve;

/// The Connect transport this crate builds on (the `connect-plugin-rpc` crate).
pub use connect_plugin_rpc as rpc;
pub use connect_plugin_rpc::{
    Channel, Code, Error, MessageStream, Request, Response, ServerStream, Streaming,
};

pub use client::{Client, ClientConfig};
pub use health::HealthServer;
pub use host::{CapabilityBroker, Host, ServiceRegistry};
pub use plugin::{Plugin, PluginServer, PluginSet, dispense};
pub use process::{InMemoryPlugin, LaunchConfig, PluginProcess, SupervisedPlugin};
pub use serve::{ServeConfig, serve};

/// What generated code names, in one place (the Connect crate's, plus the plugin bindings).
/// Not an API: it changes with the generator.
#[doc(hidden)]
pub mod __codegen {
    pub use crate::plugin::{Plugin, PluginServer};
    pub use connect_plugin_rpc::__codegen::*;
}

//! Plugin bindings: what the generator emits for each service so the runtime can serve an
//! implementation and hand out typed clients without any casts at the call site.

use crate::{Channel, Service};

/// The default magic cookie key, shared with connect-plugin-go.
pub const MAGIC_COOKIE_KEY: &str = "CONNECT_PLUGIN";
/// The default magic cookie value, shared with connect-plugin-go.
pub const MAGIC_COOKIE_VALUE: &str = "d3f40b3c2e1a5f8b9c4d7e6a1b2c3d4e";

/// The binding of one plugin service, emitted by the generator as `<Service>Plugin`
/// (for `kv.v1.KVService`: `KvServicePlugin`).
///
/// The metadata mirrors connect-plugin-go's `PluginMetadata`, so a Go host and a Rust plugin
/// agree on names: `NAME` is the service name lower-cased without a trailing `Service`
/// (`kv`), `SERVICE_NAME` the fully qualified protobuf name (`kv.v1.KVService`).
pub trait Plugin: Send + Sync + 'static {
    /// The plugin's name, e.g. `kv`.
    const NAME: &'static str;
    /// The plugin's version (semver), e.g. `1.0.0`.
    const VERSION: &'static str;
    /// The fully qualified protobuf service, e.g. `kv.v1.KVService`.
    const SERVICE_NAME: &'static str;
    /// The typed client this plugin dispenses.
    type Client: Clone + Send + Sync + 'static;

    /// A typed client that calls the plugin over `channel`.
    fn client(channel: Channel) -> Self::Client;
}

/// A typed client for plugin `P` over `channel`: `dispense::<KvServicePlugin>(&channel)`.
pub fn dispense<P: Plugin>(channel: &Channel) -> P::Client {
    P::client(channel.clone())
}

/// A served plugin implementation, as built by a generated `<Service>Plugin::server(impl)`.
#[derive(Debug)]
pub struct PluginServer {
    name: &'static str,
    version: &'static str,
    service: Service,
}

impl PluginServer {
    /// Wraps a service with its plugin name and version.
    pub fn new(name: &'static str, version: &'static str, service: Service) -> Self {
        Self {
            name,
            version,
            service,
        }
    }

    /// The plugin's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The plugin's version.
    pub fn version(&self) -> &'static str {
        self.version
    }

    /// The Connect service that serves the plugin.
    pub fn into_service(self) -> Service {
        self.service
    }
}

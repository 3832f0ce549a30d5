//! Plugin bindings: what the generator emits for each service so the runtime can serve an
//! implementation and hand out typed clients without any casts at the call site, and
//! [`PluginSet`], the validated set of plugins a process serves.
//!
//! It declares and validates, and does no I/O: serving a [`PluginSet`] is [`crate::serve()`]'s,
//! confirming a plugin in the handshake is [`crate::handshake`]'s and [`crate::Client`]'s, and
//! ordering plugins by their [`ServiceDependency`]s is [`crate::host::depgraph`]'s.

use std::collections::BTreeMap;

use crate::proto::connectplugin::v1 as wire;
use crate::rpc::Service;
use crate::{Channel, Error};

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
/// [`crate::Client::dispense`] does the same after a handshake has confirmed the plugin.
pub fn dispense<P: Plugin>(channel: &Channel) -> P::Client {
    P::client(channel.clone())
}

/// A service a plugin depends on (connect-plugin-go's `ServiceDependency`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceDependency {
    /// The service type, e.g. `logger`.
    pub service_type: String,
    /// The lowest acceptable version (semver), empty for any.
    pub min_version: String,
    /// Whether the plugin cannot start without it.
    pub required_for_startup: bool,
    /// Whether the plugin wants to hear when providers come and go.
    pub watch_for_changes: bool,
}

/// What a plugin is and what it offers: connect-plugin-go's `PluginMetadata`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginMetadata {
    /// The plugin's name, e.g. `kv`.
    pub name: String,
    /// The plugin's version (semver).
    pub version: String,
    /// The fully qualified service it serves, e.g. `kv.v1.KVService`.
    pub service_path: String,
    /// The services it provides (by default, its own under its name).
    pub provides: Vec<wire::ServiceDeclaration>,
    /// The services it needs from other plugins.
    pub requires: Vec<ServiceDependency>,
}

impl PluginMetadata {
    pub(crate) fn info(&self) -> wire::PluginInfo {
        wire::PluginInfo {
            name: self.name.clone(),
            version: self.version.clone(),
            service_path: self.service_path.clone(),
            provides: self.provides.clone(),
            requires: self
                .requires
                .iter()
                .map(|d| wire::ServiceDependency {
                    r#type: d.service_type.clone(),
                    min_version: d.min_version.clone(),
                    required_for_startup: d.required_for_startup,
                    watch_for_changes: d.watch_for_changes,
                })
                .collect(),
        }
    }
}

/// A served plugin implementation, as built by a generated `<Service>Plugin::server(impl)`.
#[derive(Debug)]
pub struct PluginServer {
    metadata: PluginMetadata,
    service: Service,
}

impl PluginServer {
    /// Wraps a service with its plugin name and version; it provides itself under its name.
    pub fn new(name: &'static str, version: &'static str, service: Service) -> Self {
        let service_path = service.name().to_owned();
        Self {
            metadata: PluginMetadata {
                name: name.to_owned(),
                version: version.to_owned(),
                provides: vec![wire::ServiceDeclaration {
                    r#type: name.to_owned(),
                    version: version.to_owned(),
                    path: service_path.clone(),
                }],
                service_path,
                requires: Vec::new(),
            },
            service,
        }
    }

    /// Declares a dependency on another plugin's service; builder style.
    #[must_use]
    pub fn requires(mut self, dependency: ServiceDependency) -> Self {
        self.metadata.requires.push(dependency);
        self
    }

    /// Overrides the version the plugin announces (the generated one is `1.0.0` unless the
    /// generator was given `plugin_version=`).
    #[must_use]
    pub fn version(mut self, version: impl Into<String>) -> Self {
        let version = version.into();
        for provided in &mut self.metadata.provides {
            provided.version.clone_from(&version);
        }
        self.metadata.version = version;
        self
    }

    /// The plugin's name.
    pub fn name(&self) -> &str {
        &self.metadata.name
    }

    /// The plugin's metadata.
    pub fn metadata(&self) -> &PluginMetadata {
        &self.metadata
    }

    /// The Connect service that serves the plugin.
    pub fn into_service(self) -> Service {
        self.service
    }

    pub(crate) fn into_parts(self) -> (PluginMetadata, Service) {
        (self.metadata, self.service)
    }
}

/// The plugins a process serves, by name, validated: not empty, every name unique, no two
/// plugins on the same service path (connect-plugin-go's `PluginSet.Validate`).
#[derive(Debug, Default)]
pub struct PluginSet {
    plugins: BTreeMap<String, PluginServer>,
}

impl PluginSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a plugin.
    ///
    /// # Errors
    /// `already_exists` if a plugin of the same name or on the same service path is there.
    pub fn add(&mut self, plugin: PluginServer) -> Result<(), Error> {
        if self.plugins.contains_key(plugin.name()) {
            return Err(Error::new(
                crate::Code::AlreadyExists,
                format!("plugin set already has a plugin named {:?}", plugin.name()),
            ));
        }
        if let Some(other) = self
            .plugins
            .values()
            .find(|p| p.metadata.service_path == plugin.metadata.service_path)
        {
            return Err(Error::new(
                crate::Code::AlreadyExists,
                format!(
                    "path conflict: plugins {:?} and {:?} both use path {:?}",
                    other.name(),
                    plugin.name(),
                    plugin.metadata.service_path
                ),
            ));
        }
        self.plugins.insert(plugin.name().to_owned(), plugin);
        Ok(())
    }

    /// Checks the set can be served.
    ///
    /// # Errors
    /// `invalid_argument` for an empty set.
    pub fn validate(&self) -> Result<(), Error> {
        if self.plugins.is_empty() {
            return Err(Error::invalid_argument(
                "empty plugin set: add at least one plugin, e.g. ServeConfig::plugin(KvServicePlugin::server(impl))",
            ));
        }
        Ok(())
    }

    /// The plugin names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.plugins.keys().map(String::as_str)
    }

    /// The metadata of plugin `name`.
    pub fn get(&self, name: &str) -> Option<&PluginMetadata> {
        self.plugins.get(name).map(PluginServer::metadata)
    }

    /// How many plugins the set holds.
    pub fn len(&self) -> usize {
        self.plugins.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.plugins.is_empty()
    }

    pub(crate) fn into_parts(self) -> Vec<(PluginMetadata, Service)> {
        self.plugins
            .into_values()
            .map(PluginServer::into_parts)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plugin(name: &'static str, service: &'static str) -> PluginServer {
        PluginServer::new(name, "1.0.0", Service::new(service))
    }

    #[test]
    fn empty_set_is_invalid_with_a_hint() {
        let err = PluginSet::new().validate().unwrap_err();
        assert_eq!(err.code(), crate::Code::InvalidArgument);
        assert!(err.message().contains("empty plugin set"), "{err}");
    }

    #[test]
    fn duplicate_names_and_path_conflicts_are_refused() {
        let mut set = PluginSet::new();
        set.add(plugin("kv", "kv.v1.KVService")).unwrap();
        let err = set.add(plugin("kv", "other.v1.Other")).unwrap_err();
        assert!(
            err.message().contains("already has a plugin named \"kv\""),
            "{err}"
        );
        let err = set.add(plugin("kv2", "kv.v1.KVService")).unwrap_err();
        assert_eq!(
            err.message(),
            "path conflict: plugins \"kv\" and \"kv2\" both use path \"kv.v1.KVService\""
        );
        set.add(plugin("logger", "logger.v1.Logger")).unwrap();
        assert_eq!(set.names().collect::<Vec<_>>(), ["kv", "logger"]);
        assert!(set.validate().is_ok());
    }

    #[test]
    fn metadata_follows_upstream_and_version_override_updates_provides() {
        let p = plugin("kv", "kv.v1.KVService").version("2.1.0");
        let info = p.metadata().info();
        assert_eq!(
            (
                info.name.as_str(),
                info.version.as_str(),
                info.service_path.as_str()
            ),
            ("kv", "2.1.0", "kv.v1.KVService")
        );
        assert_eq!(info.provides[0].r#type, "kv");
        assert_eq!(info.provides[0].version, "2.1.0");
    }
}

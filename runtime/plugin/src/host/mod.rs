//! The host side of the plugin system: the service [`registry`], the routing [`gateway`]
//! for plugin-to-plugin calls, the capability [`broker`], the [`platform`] that adds, removes
//! and replaces plugin processes, their dependency graph ([`depgraph`]), and [`Host`], the
//! composition root that serves them all on one server.
//!
//! A [`Host`] needs nothing wired by hand. To add host parts to a server of your own, use
//! [`ServeConfig::registry`] and [`ServeConfig::broker`] (a plugin process that also offers
//! capabilities, or a host that also serves plugins).
//!
//! The registry never imports the gateway or the broker; the gateway and the platform build on
//! the registry; this module only assembles.
//!
//! ```no_run
//! # async fn demo() -> Result<(), connect_plugin::Error> {
//! use connect_plugin::host::Host;
//!
//! let host = Host::builder().lease(std::time::Duration::from_secs(30)).start().await?;
//! println!("plugins join at {}", host.url());
//! // host.platform().add_plugin(spec).await?;
//! host.shutdown().await;
//! # Ok(()) }
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use crate::proto::connectplugin::v1::{
    CapabilityBrokerServer, PluginLifecycleServer, ServiceRegistryServer,
};
use crate::rpc::__private as rpc_private;
use crate::rpc::server::ServerInterceptor;
use crate::rpc::tls::ServerTls;
use crate::{Error, ServeConfig};

pub mod broker;
pub mod depgraph;
pub mod gateway;
pub mod platform;
pub mod registry;

pub use broker::CapabilityBroker;
pub use platform::Platform;
pub use registry::ServiceRegistry;

impl ServeConfig {
    /// Offers host capabilities through a broker: they are listed in every handshake, granted
    /// through `CapabilityBroker.RequestCapability` and called under `/capabilities/`.
    #[must_use]
    pub fn broker(mut self, broker: CapabilityBroker) -> Self {
        let parts = self.host_parts();
        let listed = broker.clone();
        parts.capabilities = Some(Arc::new(move || listed.list()));
        parts.mounts.push(Box::new(move |server, identities, _| {
            broker.attach(Arc::clone(identities));
            let server =
                rpc_private::route_proxy(server, broker::CAPABILITY_PREFIX, broker.proxy());
            server.add_service(CapabilityBrokerServer::new(broker).into_service())
        }));
        self
    }

    /// Serves a service registry (and `PluginLifecycle.ReportHealth`): plugins register what
    /// they provide and discover providers, and calls between them are routed under
    /// `/services/`. The handshake admits plugins by the registry's
    /// [`ServiceRegistry::join_policy`], and a plugin may register the types its join token
    /// admits (in open mode, the types it declared).
    #[must_use]
    pub fn registry(mut self, registry: ServiceRegistry) -> Self {
        self = self.join_policy(registry.join_policy().clone());
        let parts = self.host_parts();
        let allowed = registry.clone();
        parts.on_join = Some(Arc::new(move |runtime_id, admission| {
            allowed.admit(runtime_id, admission);
        }));
        parts
            .mounts
            .push(Box::new(move |server, identities, tasks| {
                if let Some(lease) = registry.lease() {
                    let registry = registry.clone();
                    tasks.push(tokio::spawn(async move {
                        let mut ticks =
                            tokio::time::interval((lease / 4).max(Duration::from_millis(10)));
                        loop {
                            ticks.tick().await;
                            registry.expire();
                        }
                    }));
                }
                registry.attach(Arc::clone(identities));
                let server = server
                    .add_service(ServiceRegistryServer::new(registry.clone()).into_service())
                    .add_service(PluginLifecycleServer::new(registry.clone()).into_service());
                rpc_private::route_proxy(server, gateway::SERVICES_PREFIX, gateway::proxy(registry))
            }));
        self
    }
}

/// Builds a [`Host`].
#[derive(Debug, Default)]
pub struct HostBuilder {
    addr: Option<SocketAddr>,
    lease: Option<Duration>,
    broker: Option<CapabilityBroker>,
    timeout: Option<Duration>,
    tls: Option<ServerTls>,
    plugin_trust: Option<String>,
    advertise: Option<String>,
    provider_tls: Option<crate::rpc::tls::ClientTls>,
    interceptors: Interceptors,
}

/// Server interceptors a [`HostBuilder`] adds.
#[derive(Default, Clone)]
struct Interceptors(Vec<Arc<dyn ServerInterceptor>>);

impl std::fmt::Debug for Interceptors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} interceptors", self.0.len())
    }
}

impl HostBuilder {
    /// Listens on `addr` (default `127.0.0.1:0`, any free port).
    #[must_use]
    pub fn addr(mut self, addr: SocketAddr) -> Self {
        self.addr = Some(addr);
        self
    }

    /// Registrations expire after `lease` without a call or heartbeat from their plugin.
    #[must_use]
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = Some(lease);
        self
    }

    /// Offers host capabilities.
    #[must_use]
    pub fn broker(mut self, broker: CapabilityBroker) -> Self {
        self.broker = Some(broker);
        self
    }

    /// Serves over TLS (or mutual TLS, [`ServerTls::mutual_from_pem`]): the host's URL is then
    /// `https://`. Plugins it launches verify it with the CA certificates given to
    /// [`HostBuilder::plugin_trust_pem`].
    #[must_use]
    pub fn tls(mut self, tls: ServerTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// The CA certificates (PEM) that plugins launched by this host trust when they call it
    /// over TLS; handed to each in [`HOST_CA_ENV`](crate::client::HOST_CA_ENV).
    #[must_use]
    pub fn plugin_trust_pem(mut self, ca_pem: impl Into<String>) -> Self {
        self.plugin_trust = Some(ca_pem.into());
        self
    }

    /// How the routing gateway reaches providers registered at `https://` base URLs (their
    /// CA, a client certificate); see [`ServiceRegistry::set_provider_tls`].
    #[must_use]
    pub fn provider_tls(mut self, tls: crate::rpc::tls::ClientTls) -> Self {
        self.provider_tls = Some(tls);
        self
    }

    /// The URL plugins reach the host at (their `HOST_URL`), when it is not the bound address
    /// (a name in the host's certificate, a proxy, a Kubernetes Service).
    #[must_use]
    pub fn advertise_url(mut self, url: impl Into<String>) -> Self {
        self.advertise = Some(url.into());
        self
    }

    /// Adds a server interceptor (authentication, rate limiting, logging, metrics): it sees
    /// the host's own procedures and every call the host forwards (plugin-to-plugin calls
    /// under `/services/`, capabilities under `/capabilities/`), with the procedure at the end
    /// of the forwarded path. They run in the order added, before the host's own checks
    /// (a forwarded call's runtime token is checked as it is forwarded), and they see the
    /// plugins' own calls too (handshake, registration, heartbeats): an `Auth` here must let
    /// those through. See [`crate::rpc::server::intercept`].
    #[must_use]
    pub fn intercept(mut self, interceptor: impl ServerInterceptor) -> Self {
        self.interceptors.0.push(Arc::new(interceptor));
        self
    }

    /// How long plugin starts, drains and stops may take (default 30 s).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Binds and starts serving.
    ///
    /// # Errors
    /// `unavailable` if the address cannot be bound.
    pub async fn start(self) -> Result<Host, Error> {
        let addr = self
            .addr
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
        let listener = crate::rpc::server::listen(addr)
            .await
            .map_err(|e| Error::unavailable(format!("the host cannot listen on {addr}: {e}")))?;
        let local = listener
            .local_addr()
            .map_err(|e| Error::internal(format!("reading the host's address: {e}")))?;
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let url = self
            .advertise
            .unwrap_or_else(|| format!("{scheme}://{local}"));
        let registry = match self.lease {
            Some(lease) => ServiceRegistry::with_lease(lease),
            None => ServiceRegistry::new(),
        };
        if let Some(tls) = self.provider_tls {
            registry.set_provider_tls(tls);
        }
        let (stop, stopped) = oneshot::channel::<()>();
        let mut config = ServeConfig::new()
            .registry(registry.clone())
            .listener(listener)
            .stop_signal(async {
                let _ = stopped.await;
            });
        if let Some(broker) = self.broker {
            config = config.broker(broker);
        }
        if let Some(tls) = self.tls {
            config = config.tls(tls);
        }
        for interceptor in self.interceptors.0 {
            config = config.intercept(interceptor);
        }
        let task = tokio::spawn(crate::serve(config));
        let mut platform = Platform::new(registry.clone(), &url);
        if let Some(pem) = self.plugin_trust {
            platform = platform.host_trust(pem);
        }
        if let Some(timeout) = self.timeout {
            platform = platform.timeout(timeout);
        }
        Ok(Host {
            url,
            addr: local,
            registry,
            platform,
            stop: Some(stop),
            task,
        })
    }
}

/// A running plugin host.
#[derive(Debug)]
pub struct Host {
    url: String,
    addr: SocketAddr,
    registry: ServiceRegistry,
    platform: Platform,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), Error>>,
}

impl Host {
    /// A builder with the defaults.
    pub fn builder() -> HostBuilder {
        HostBuilder::default()
    }

    /// The URL plugins join at (their `HOST_URL`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The address the host listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The host's service registry.
    pub fn registry(&self) -> &ServiceRegistry {
        &self.registry
    }

    /// The plugins running on this host.
    pub fn platform(&self) -> &Platform {
        &self.platform
    }

    /// Stops the plugins (dependents first), then the server.
    pub async fn shutdown(mut self) {
        self.platform.shutdown().await;
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

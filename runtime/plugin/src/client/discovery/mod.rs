//! Finding plugin servers by service name instead of a fixed endpoint (connect-plugin-go's
//! `DiscoveryService`), with [`StaticDiscovery`], a configured list. Where upstream always
//! takes the first endpoint and ignores weights, [`Client::discover`] picks the endpoint with
//! the highest weight.
//!
//! [`failover_channel`] uses them all: one channel that fails over between the endpoints.
//!
//! [`DnsDiscovery`] reads endpoints from DNS (SRV, A/AAAA), as a headless Kubernetes Service
//! publishes them.
//!
//! It only picks base URLs from lists it is given or looks up; finding a provider at runtime through a
//! host's registry is [`crate::Client::provider`], answered by [`crate::host::registry`].

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::RwLock;

use crate::{Client, ClientConfig, Error};

mod dns;

pub use dns::DnsDiscovery;

/// A server offering a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Its base URL, e.g. `http://10.0.0.5:8080`.
    pub url: String,
    /// Free-form metadata.
    pub metadata: HashMap<String, String>,
    /// Preference among endpoints of one service: higher wins.
    pub weight: u32,
}

impl Endpoint {
    /// An endpoint at `url` with weight 1 and no metadata.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            metadata: HashMap::new(),
            weight: 1,
        }
    }
}

/// A source of endpoints by service name.
pub trait Discovery: Send + Sync {
    /// The endpoints of `service`.
    ///
    /// # Errors
    /// `not_found` for an unknown service or one without endpoints.
    fn discover<'a>(
        &'a self,
        service: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<Endpoint>, Error>> + Send + 'a>>;
}

/// Endpoints configured up front.
#[derive(Debug, Default)]
pub struct StaticDiscovery {
    services: RwLock<HashMap<String, Vec<Endpoint>>>,
}

impl StaticDiscovery {
    /// An empty discovery.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an endpoint of `service`.
    pub fn add_endpoint(&self, service: impl Into<String>, endpoint: Endpoint) {
        self.services
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(service.into())
            .or_default()
            .push(endpoint);
    }

    /// Forgets `service`.
    pub fn remove_service(&self, service: &str) {
        self.services
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(service);
    }
}

impl Discovery for StaticDiscovery {
    fn discover<'a>(
        &'a self,
        service: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<Endpoint>, Error>> + Send + 'a>> {
        let found = match self
            .services
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(service)
        {
            None => Err(Error::not_found(format!(
                "service {service:?} not found in static discovery"
            ))),
            Some(list) if list.is_empty() => Err(Error::not_found(format!(
                "no endpoints configured for service {service:?}"
            ))),
            Some(list) => Ok(list.clone()),
        };
        Box::pin(std::future::ready(found))
    }
}

/// The default service name a client discovers, as upstream.
pub const DEFAULT_SERVICE_NAME: &str = "plugin-host";

impl Client {
    /// A client for the best endpoint `discovery` knows for `service` (the highest weight;
    /// the first among equals). `config`'s endpoint is replaced.
    ///
    /// # Errors
    /// The discovery's error, or [`Client::new`]'s.
    pub async fn discover(
        config: ClientConfig,
        discovery: &dyn Discovery,
        service: &str,
    ) -> Result<Client, Error> {
        let endpoints = discovery.discover(service).await?;
        let best = endpoints
            .iter()
            .enumerate()
            .max_by_key(|(i, e)| (e.weight, std::cmp::Reverse(*i)))
            .map(|(_, e)| e.url.clone())
            .ok_or_else(|| Error::not_found(format!("no endpoints for service {service:?}")))?;
        Client::new(config.endpoint(best))
    }
}

/// A channel over every endpoint `discovery` knows for `service`, failing over between them
/// by weight ([`Failover`](crate::rpc::policy::Failover)); `endpoint` configures each
/// endpoint's channel (give each a circuit breaker there), `logical` the channel as a whole
/// (a retry, outermost).
///
/// # Errors
/// The discovery's error; a bad endpoint URL.
pub async fn failover_channel(
    discovery: &dyn Discovery,
    service: &str,
    endpoint: impl Fn(crate::rpc::ChannelBuilder) -> crate::rpc::ChannelBuilder + Send + Sync + 'static,
    logical: impl FnOnce(crate::rpc::ChannelBuilder) -> crate::rpc::ChannelBuilder,
) -> Result<crate::Channel, Error> {
    let endpoints = discovery.discover(service).await?;
    crate::rpc::policy::Failover::new(endpoints.into_iter().map(|e| (e.url, e.weight)), endpoint)?
        .channel(logical)
}

/// [`failover_channel`] whose endpoints are discovered again every `every` (at least 10 ms)
/// while the channel is in use (endpoints kept keep their connection and breaker); a failed
/// refresh keeps the endpoints known. The refresh ends when the channel (and every clone of
/// it) is dropped. Unary calls follow the endpoints; streams go to the endpoint that was
/// first when the channel was made.
///
/// # Errors
/// As for [`failover_channel`] (the first discovery must succeed).
pub async fn refreshing_failover_channel(
    discovery: std::sync::Arc<dyn Discovery>,
    service: impl Into<String>,
    every: std::time::Duration,
    endpoint: impl Fn(crate::rpc::ChannelBuilder) -> crate::rpc::ChannelBuilder + Send + Sync + 'static,
    logical: impl FnOnce(crate::rpc::ChannelBuilder) -> crate::rpc::ChannelBuilder,
) -> Result<crate::Channel, Error> {
    let service = service.into();
    let endpoints = discovery.discover(&service).await?;
    let failover = crate::rpc::policy::Failover::new(
        endpoints.into_iter().map(|e| (e.url, e.weight)),
        endpoint,
    )?;
    let weak = failover.downgrade();
    let channel = failover.channel(logical)?;
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every.max(std::time::Duration::from_millis(10)));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            ticks.tick().await;
            if weak.upgrade().is_none() {
                return;
            }
            match discovery.discover(&service).await {
                Ok(endpoints) => {
                    let Some(failover) = weak.upgrade() else {
                        return;
                    };
                    if let Err(error) =
                        failover.set_endpoints(endpoints.into_iter().map(|e| (e.url, e.weight)))
                    {
                        tracing::warn!(%service, "refreshed endpoints refused: {error}");
                    }
                }
                Err(error) => {
                    tracing::warn!(%service, "refreshing endpoints failed (keeping the known ones): {error}");
                }
            }
        }
    });
    Ok(channel)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Code;

    #[tokio::test]
    async fn static_discovery_errors_follow_upstream() {
        let d = StaticDiscovery::new();
        let err = d.discover("x").await.unwrap_err();
        assert_eq!(
            (err.code(), err.message()),
            (
                Code::NotFound,
                "service \"x\" not found in static discovery"
            )
        );
        d.add_endpoint("x", Endpoint::new("http://a"));
        assert_eq!(d.discover("x").await.unwrap().len(), 1);
        d.remove_service("x");
        assert!(d.discover("x").await.is_err());
    }

    #[tokio::test]
    async fn the_heaviest_endpoint_wins() {
        let d = StaticDiscovery::new();
        d.add_endpoint(DEFAULT_SERVICE_NAME, Endpoint::new("http://127.0.0.1:1"));
        d.add_endpoint(
            DEFAULT_SERVICE_NAME,
            Endpoint {
                weight: 5,
                ..Endpoint::new("http://127.0.0.1:2")
            },
        );
        let client = Client::discover(ClientConfig::new(""), &d, DEFAULT_SERVICE_NAME)
            .await
            .unwrap();
        assert_eq!(client.channel().base_url(), "http://127.0.0.1:2");
    }
}

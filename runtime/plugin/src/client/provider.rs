//! A plugin among other plugins, through its host: typed clients of other plugins' services
//! found in the host's registry and routed through the host ([`Client::provider`]), health
//! reports ([`Client::report_health`]) and the [`Heartbeat`]s that keep registrations leased.
//!
//! The registry and the routing gateway are the host's ([`crate::host`]); this module only
//! calls them.

use std::time::Duration;

use super::Client;
use crate::proto::connectplugin::v1 as wire;
use crate::{Error, Plugin};

/// The most registrations a client remembers to make again (a host takes 32 per plugin).
const MAX_REMEMBERED: usize = 32;

/// Heartbeats started by [`Client::heartbeat`]; dropping it stops them.
#[derive(Debug)]
pub struct Heartbeat(tokio::task::JoinHandle<()>);

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Client {
    /// A client of the host's service registry whose calls carry this client's identity
    /// (use with [`Client::authenticated`]).
    pub fn registry(&self) -> wire::ServiceRegistryClient {
        wire::ServiceRegistryClient::new(self.channel.clone())
    }

    /// A typed client of a healthy provider of plugin `P`'s service type (`P::NAME`) at
    /// `min_version` or newer, found through the host's registry and called through the host
    /// (`/services/{type}/{provider}/...`), with this client's identity on every call. If
    /// that provider goes away or turns unhealthy, the host routes its calls to another
    /// provider of the type at `min_version` or newer (a restarted or newly registered one),
    /// so the client needs no renewing.
    ///
    /// # Errors
    /// `not_found` when no provider fits; as for [`Client::authenticated`].
    pub async fn provider<P: Plugin>(&self, min_version: &str) -> Result<P::Client, Error> {
        let request = self
            .authenticated(wire::DiscoverServiceRequest {
                service_type: P::NAME.to_owned(),
                min_version: min_version.to_owned(),
            })
            .await?;
        let endpoint = self
            .registry()
            .discover_service(request)
            .await?
            .into_message()
            .endpoint
            .ok_or_else(|| Error::internal("the registry answered without an endpoint"))?;
        // Over this client's connection to the host, with its settings (TLS included); the
        // channel's interceptor puts the identity held at each call (renewed ones too). Should
        // this provider go, the host routes to another of the type at `min_version` or newer.
        let mut headers = http::HeaderMap::new();
        let accepted = http::HeaderValue::from_str(min_version).map_err(|_| {
            Error::invalid_argument(format!("min_version {min_version:?} is not a version"))
        })?;
        headers.insert(super::REROUTE_HEADER, accepted);
        let own = self.provider_wrapper.as_ref().map(|make| make());
        Ok(P::client(self.channel.derive_wrapped(
            &endpoint.endpoint_url,
            headers,
            own,
        )?))
    }

    /// Registers a service this plugin provides with the host's registry, with this client's
    /// identity, and remembers it: after a [`Client::rejoin`] (a host that restarted and
    /// forgot this plugin; heartbeats rejoin by themselves) it is registered again. Returns
    /// the registration id.
    ///
    /// # Errors
    /// As for [`Client::authenticated`], and the host's refusal.
    pub async fn register(
        &self,
        registration: wire::RegisterServiceRequest,
    ) -> Result<String, Error> {
        let request = self.authenticated(registration.clone()).await?;
        let id = self
            .registry()
            .register_service(request)
            .await?
            .into_message()
            .registration_id;
        let mut registered = self
            .registered
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !registered.contains(&registration) && registered.len() < MAX_REMEMBERED {
            registered.push(registration);
        }
        Ok(id)
    }

    /// Registers again what [`Client::register`] registered (after a rejoin); what fails is
    /// tried again at the next heartbeat.
    pub(super) async fn register_again(&self) {
        let registrations = self
            .registered
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        // With the identity just issued (no renewal check: this runs inside one).
        let Some(identity) = self.runtime_identity() else {
            self.pending
                .store(true, std::sync::atomic::Ordering::Release);
            return;
        };
        let mut failed = false;
        for registration in registrations {
            let mut request = crate::Request::new(registration.clone());
            identity.apply(request.metadata_mut());
            match self.registry().register_service(request).await {
                Ok(_) => {
                    tracing::info!(host = %self.endpoint, service_type = %registration.service_type, "registered again");
                }
                Err(error) => {
                    failed = true;
                    tracing::warn!(host = %self.endpoint, service_type = %registration.service_type, "registering again failed (tried again at the next heartbeat): {error}");
                }
            }
        }
        self.pending
            .store(failed, std::sync::atomic::Ordering::Release);
    }

    /// Whether registrations wait to be made again.
    fn registrations_pending(&self) -> bool {
        self.pending.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Reports this plugin's health to the host (`PluginLifecycle.ReportHealth`).
    ///
    /// # Errors
    /// As for [`Client::authenticated`], and the host's refusal.
    pub async fn report_health(&self, state: wire::HealthState, reason: &str) -> Result<(), Error> {
        *self.last_health.lock().unwrap_or_else(|e| e.into_inner()) = (state, reason.to_owned());
        let request = self
            .authenticated(wire::ReportHealthRequest {
                state: state as i32,
                reason: reason.to_owned(),
                unavailable_dependencies: Vec::new(),
            })
            .await?;
        wire::PluginLifecycleClient::new(self.channel.clone())
            .report_health(request)
            .await
            .map(drop)
    }

    /// Keeps this plugin's registrations alive on a host whose registry has a lease: re-sends
    /// the health last reported (healthy if none) every `interval` until the returned handle
    /// is dropped.
    pub fn heartbeat(self: &std::sync::Arc<Self>, interval: Duration) -> Heartbeat {
        let client = std::sync::Arc::clone(self);
        Heartbeat(tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            // A beat that could not run in time is not made up for with a burst.
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let (state, reason) = client
                    .last_health
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                match client.report_health(state, &reason).await {
                    Ok(()) => {
                        // Registrations a rejoin could not make yet are tried again.
                        if client.registrations_pending() {
                            client.register_again().await;
                        }
                    }
                    // The host no longer knows this identity (it restarted, or the identity
                    // ended), or gave none at the last rejoin: join again, so the next beat
                    // goes through (at most once a beat).
                    Err(error)
                        if error.code() == crate::Code::Unauthenticated
                            || client.runtime_identity().is_none() =>
                    {
                        tracing::warn!(
                            "heartbeat to {} refused ({error}); joining again",
                            client.endpoint
                        );
                        match client.rejoin().await {
                            // Registered again by the rejoin; the health goes with it now.
                            Ok(_) => {
                                let _ = client.report_health(state, &reason).await;
                            }
                            Err(error) => {
                                tracing::warn!("joining {} again failed: {error}", client.endpoint);
                            }
                        }
                    }
                    Err(error) => {
                        tracing::warn!("heartbeat to {} failed: {error}", client.endpoint)
                    }
                }
            }
        }))
    }
}

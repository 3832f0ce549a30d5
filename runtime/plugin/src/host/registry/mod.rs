//! The service registry (`connectplugin.v1.ServiceRegistry`) and the health reports that feed
//! it (`connectplugin.v1.PluginLifecycle.ReportHealth`), served by a host, wire-compatible with
//! connect-plugin-go.
//!
//! Plugins with a runtime identity register the service types they provide; any plugin
//! discovers a provider of a type and gets an endpoint routed through the host
//! (`/services/{type}/{provider-id}`). Where upstream is wrong this does better (DESIGN §4):
//! every call is checked against the caller's runtime token, not just the
//! `X-Plugin-Runtime-ID` header; a plugin may register only the types it declared (in the
//! handshake's `provides` client metadata, or through [`ServiceRegistry::allow`]); only the
//! owner may unregister; versions compare as semver; the weighted strategy really weighs; and
//! watchers hear about registrations, removals and health changes.
//!
//! Watch streams have a bounded buffer of [`WATCH_BUFFER`] events. A watcher that falls
//! further behind is told so: its stream ends with `resource_exhausted` and it should watch
//! again (which starts with the current state), so no change is ever dropped silently.
//!
//! The registry records and selects; it forwards no calls and starts no processes: routed calls are
//! [`crate::host::gateway`]'s and plugin processes [`crate::host::platform`]'s, both built on it,
//! and it never imports the gateway or the broker.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};

use ring::rand::SystemRandom;
use tokio::sync::broadcast;

use crate::address::Origin;
use crate::handshake::{Admission, PROVIDES_KEY, Reach};
use crate::identity::{self, IdentityStore, RuntimeIdentity};
use crate::proto::connectplugin::v1 as wire;
use crate::proto::connectplugin::v1::{HealthState, ServiceState};
use crate::{Code, Error};

mod service;

/// How many events a watch stream may fall behind before it is ended.
pub const WATCH_BUFFER: usize = 256;

/// The registration metadata key holding a provider's base URL (as upstream's examples): where
/// the gateway forwards calls routed to it.
pub const BASE_URL_KEY: &str = "base_url";

/// The registration metadata key naming the HTTP version the provider serves: `"2"` (the
/// default: HTTP/2, h2c on `http://`) or `"1.1"` (an HTTP/1.1-only server, such as a Go
/// `net/http` server without h2c).
pub const HTTP_VERSION_KEY: &str = "http_version";

/// Where a routed call goes.
#[derive(Debug)]
pub(crate) struct RouteTarget {
    /// The provider serving it (a replacement, if the one addressed was replaced).
    pub(crate) provider_id: String,
    pub(crate) base_url: String,
    /// The launch secret the provider answers to, if this host launched it.
    pub(crate) secret: Option<http::HeaderValue>,
    /// Whether the provider speaks HTTP/1.1 only.
    pub(crate) http1: bool,
}

/// How [`ServiceRegistry`] picks among the healthy providers of a type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SelectionStrategy {
    /// Always the first registered (the default, as upstream).
    #[default]
    First,
    /// Each in turn.
    RoundRobin,
    /// Uniformly at random.
    Random,
    /// At random, in proportion to the `weight` metadata of each registration (default 1).
    Weighted,
}

/// A provided version, compared as semver (`10.0.0` is newer than `9.0.0`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version(semver::Version);

impl Version {
    /// Parses a semantic version such as `1.2.3`.
    ///
    /// # Errors
    /// `invalid_argument` naming the text when it is not a semantic version.
    pub fn parse(text: &str) -> Result<Self, Error> {
        semver::Version::parse(text).map(Self).map_err(|e| {
            Error::invalid_argument(format!(
                "version {text:?} is not a semantic version such as 1.2.3: {e}"
            ))
        })
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// One registration: a provider of a service type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// Its id (`reg-` and 16 hex digits).
    pub registration_id: String,
    /// The provider's runtime id.
    pub runtime_id: String,
    /// The service type, e.g. `logger`.
    pub service_type: String,
    /// The provided version.
    pub version: Version,
    /// The path prefix of the service on the provider, e.g. `/logger.v1.Logger/`.
    pub endpoint_path: String,
    /// Free-form metadata (`weight` is read by the weighted strategy).
    pub metadata: HashMap<String, String>,
}

type Provider = Registration;

#[derive(Default)]
struct State {
    /// Registrations in order, by service type.
    providers: HashMap<String, Vec<Provider>>,
    /// Service types each runtime id may register.
    allowed: HashMap<String, HashSet<String>>,
    /// Runtime ids that may register any type (open mode, no types declared).
    any_type: HashSet<String>,
    /// Where the host may reach each runtime id, when not simply at its own address.
    reach: HashMap<String, Reach>,
    /// The control token each runtime id gave the host in its handshake.
    control: HashMap<String, http::HeaderValue>,
    /// The last health each runtime id reported.
    health: HashMap<String, HealthState>,
    strategies: HashMap<String, SelectionStrategy>,
    round_robin: HashMap<String, usize>,
    /// When each runtime id last called the registry or reported health (its lease).
    last_seen: HashMap<String, tokio::time::Instant>,
    /// Providers replaced by another: calls routed to the old id go to the new one.
    aliases: HashMap<String, String>,
    /// Calls in flight through the host, per provider.
    inflight: HashMap<String, Arc<Inflight>>,
}

/// Calls in flight to one provider, and a way to wait for them to finish.
#[derive(Default)]
pub(crate) struct Inflight {
    count: std::sync::atomic::AtomicUsize,
    idle: tokio::sync::Notify,
}

/// Held while a routed call is in flight; dropping it ends the call's count.
pub(crate) struct InflightGuard(Arc<Inflight>);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        if self
            .0
            .count
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel)
            == 1
        {
            self.0.idle.notify_waiters();
        }
    }
}

struct Inner {
    lease: Option<std::time::Duration>,
    join: crate::handshake::JoinPolicy,
    state: Mutex<State>,
    events: broadcast::Sender<wire::WatchServiceEvent>,
    identities: OnceLock<Arc<IdentityStore>>,
    rng: SystemRandom,
    provider_tls: std::sync::RwLock<Option<crate::rpc::tls::ClientTls>>,
    routed_limit: OnceLock<crate::rpc::policy::RateLimit>,
}

/// The host's registry of provided services; give it to [`crate::ServeConfig::registry`].
#[derive(Clone)]
pub struct ServiceRegistry {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ServiceRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.state();
        f.debug_struct("ServiceRegistry")
            .field("service_types", &state.providers.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Default for ServiceRegistry {
    fn default() -> Self {
        Self::new()
    }
}

/// `true` for the states traffic may be routed to: unhealthy providers are not used.
fn routable(state: HealthState) -> bool {
    !matches!(state, HealthState::Unhealthy)
}

impl ServiceRegistry {
    /// An empty registry whose registrations never expire.
    pub fn new() -> Self {
        Self::build(None)
    }

    /// A registry whose registrations expire when their plugin has not called the registry or
    /// reported health for `lease` (a plugin that died stops being discovered and routed to).
    /// Plugins keep their lease with [`crate::Client::heartbeat`].
    pub fn with_lease(lease: std::time::Duration) -> Self {
        Self::build(Some(lease))
    }

    fn build(lease: Option<std::time::Duration>) -> Self {
        Self {
            inner: Arc::new(Inner {
                lease,
                join: crate::handshake::JoinPolicy::new(),
                state: Mutex::new(State::default()),
                events: broadcast::channel(WATCH_BUFFER).0,
                identities: OnceLock::new(),
                rng: SystemRandom::new(),
                provider_tls: std::sync::RwLock::new(None),
                routed_limit: OnceLock::new(),
            }),
        }
    }

    /// Who may join this registry's host and what each may provide (closed by default: only
    /// holders of a join token). Shared: tokens added here admit plugins at once.
    pub fn join_policy(&self) -> &crate::handshake::JoinPolicy {
        &self.inner.join
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn attach(&self, identities: Arc<IdentityStore>) {
        let _ = self.inner.identities.set(identities);
    }

    pub(crate) fn authenticate_caller(&self, headers: &http::HeaderMap) -> Result<String, Error> {
        self.authenticate(headers)
    }

    /// The health `runtime_id` last reported (healthy until it reports otherwise).
    pub fn health(&self, runtime_id: &str) -> HealthState {
        self.state()
            .health
            .get(runtime_id)
            .copied()
            .unwrap_or(HealthState::Healthy)
    }

    fn authenticate(&self, headers: &http::HeaderMap) -> Result<String, Error> {
        let runtime_id = self
            .inner
            .identities
            .get()
            .ok_or_else(|| Error::unavailable("the service registry is not attached to a server"))?
            .authenticate(headers)?;
        // Every authenticated call renews the caller's lease.
        self.state()
            .last_seen
            .insert(runtime_id.clone(), tokio::time::Instant::now());
        Ok(runtime_id)
    }

    /// The provider that serves calls addressed to `provider_id` now (itself, or the one that
    /// replaced it).
    pub fn resolve(&self, provider_id: &str) -> String {
        resolve_in(&self.state(), provider_id).to_owned()
    }

    /// Switches routing from `old` to `new` in one step: calls addressed to `old` go to
    /// `new` from now on, and `old`'s registrations are withdrawn. Calls already in flight to
    /// `old` finish there ([`ServiceRegistry::drained`]).
    pub fn replace_runtime(&self, old: &str, new: &str) {
        let types: Vec<String> = {
            let mut state = self.state();
            // Chains stay one step long: what pointed at `old` points at `new` now.
            for target in state.aliases.values_mut() {
                if target == old {
                    new.clone_into(target);
                }
            }
            state.aliases.insert(old.to_owned(), new.to_owned());
            let mut types = Vec::new();
            for (service_type, providers) in &mut state.providers {
                let before = providers.len();
                providers.retain(|p| p.runtime_id != old);
                if providers.len() != before {
                    types.push(service_type.clone());
                }
            }
            types
        };
        for service_type in types {
            self.notify(&service_type);
        }
    }

    pub(crate) fn track(&self, provider_id: &str) -> InflightGuard {
        let inflight = Arc::clone(
            self.state()
                .inflight
                .entry(provider_id.to_owned())
                .or_default(),
        );
        inflight
            .count
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        InflightGuard(inflight)
    }

    /// How many routed calls to `provider_id` are in flight.
    pub fn inflight(&self, provider_id: &str) -> usize {
        self.state()
            .inflight
            .get(provider_id)
            .map_or(0, |i| i.count.load(std::sync::atomic::Ordering::Acquire))
    }

    /// Waits until no routed call to `provider_id` is in flight.
    ///
    /// # Errors
    /// `deadline_exceeded` if calls are still running after `timeout`.
    pub async fn drained(
        &self,
        provider_id: &str,
        timeout: std::time::Duration,
    ) -> Result<(), Error> {
        // No entry: nothing in flight (and none is made here, so the map does not grow).
        let Some(inflight) = self.state().inflight.get(provider_id).cloned() else {
            return Ok(());
        };
        let wait = async {
            loop {
                let idle = inflight.idle.notified();
                if inflight.count.load(std::sync::atomic::Ordering::Acquire) == 0 {
                    return;
                }
                idle.await;
            }
        };
        let drained = tokio::time::timeout(timeout, wait).await.map_err(|_| {
            Error::new(
                Code::DeadlineExceeded,
                format!(
                    "{} calls to {provider_id} still in flight after {} ms",
                    self.inflight(provider_id),
                    timeout.as_millis()
                ),
            )
        });
        // Drained: the entry goes, unless the provider is still registered and called.
        let mut state = self.state();
        let registered = state
            .providers
            .values()
            .flatten()
            .any(|p| p.runtime_id == provider_id);
        if !registered
            && state
                .inflight
                .get(provider_id)
                .is_some_and(|i| i.count.load(std::sync::atomic::Ordering::Acquire) == 0)
        {
            state.inflight.remove(provider_id);
        }
        drained
    }

    /// The lease, if registrations expire.
    pub fn lease(&self) -> Option<std::time::Duration> {
        self.inner.lease
    }

    /// Removes the registrations of plugins whose lease ran out and tells the watchers;
    /// returns the runtime ids removed. [`crate::serve()`] calls it periodically.
    pub fn expire(&self) -> Vec<String> {
        let Some(lease) = self.inner.lease else {
            return Vec::new();
        };
        let now = tokio::time::Instant::now();
        let expired: Vec<String> = {
            let state = self.state();
            let mut ids: Vec<String> = state
                .providers
                .values()
                .flatten()
                .map(|p| p.runtime_id.clone())
                .filter(|id| {
                    state
                        .last_seen
                        .get(id)
                        .is_none_or(|seen| now.duration_since(*seen) > lease)
                })
                .collect();
            ids.sort();
            ids.dedup();
            ids
        };
        for id in &expired {
            tracing::warn!(runtime_id = %id, "lease expired; removing its registrations");
            self.remove_runtime(id);
            self.state().last_seen.remove(id);
        }
        expired
    }

    /// Issues a runtime identity for a plugin the host manages (deployment model A), allowed
    /// to register `service_types`.
    ///
    /// # Errors
    /// `unavailable` before the registry is served; `internal` if the random generator fails.
    pub fn issue_identity<I, S>(
        &self,
        self_id: &str,
        service_types: I,
    ) -> Result<RuntimeIdentity, Error>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let identity = self
            .inner
            .identities
            .get()
            .ok_or_else(|| Error::unavailable("the service registry is not attached to a server"))?
            .issue(self_id)?;
        self.allow(&identity.runtime_id, service_types);
        Ok(identity)
    }

    /// Lets `runtime_id` register the given service types (host side; model A hosts call
    /// this with what `GetPluginInfo` declared). Adds to what was allowed before.
    pub fn allow<I, S>(&self, runtime_id: &str, service_types: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.state()
            .allowed
            .entry(runtime_id.to_owned())
            .or_default()
            .extend(service_types.into_iter().map(Into::into));
    }

    /// Records what the handshake admitted `runtime_id` with: the types it may register and
    /// where it may be reached.
    pub(crate) fn admit(&self, runtime_id: &str, admission: &Admission) {
        // The identity this one supersedes (its credential's oldest) ends with its registrations.
        if let Some(old) = &admission.superseded {
            self.remove_runtime(old);
        }
        let mut state = self.state();
        state
            .allowed
            .entry(runtime_id.to_owned())
            .or_default()
            .extend(admission.provides.iter().cloned());
        if admission.any_type {
            state.any_type.insert(runtime_id.to_owned());
        }
        if let Some(token) = &admission.control_token {
            state.control.insert(runtime_id.to_owned(), token.clone());
        }
        // Never undo a binding made meanwhile (the launcher may have bound this id already).
        if !matches!(admission.reach, Reach::Own)
            && !matches!(state.reach.get(runtime_id), Some(Reach::Launched { .. }))
        {
            state
                .reach
                .insert(runtime_id.to_owned(), admission.reach.clone());
        }
    }

    /// Tells the registry that `process` is the plugin this host launched with `join_token`
    /// (from [`JoinPolicy::issue`](crate::handshake::JoinPolicy::issue)): its registrations
    /// must point at the process's address, and calls routed to it carry its launch secret
    /// (without which it refuses them, see [`crate::serve::host_only`]). Registrations it made
    /// before this call that point elsewhere are dropped. [`crate::host::Platform`] does this
    /// for the plugins it starts.
    ///
    /// # Errors
    /// `not_found` for a join token this registry's policy does not know (revoked, or never
    /// issued).
    pub fn launched(&self, join_token: &str, process: &crate::PluginProcess) -> Result<(), Error> {
        let endpoint = process.endpoint();
        let secret = process.launch_secret().cloned();
        let http1 = process.http1_only();
        let ids = self
            .inner
            .join
            .launched(join_token, &endpoint, secret.clone(), http1)
            .ok_or_else(|| {
                Error::not_found(
                    "no such join token: issue it with JoinPolicy::issue before launching the plugin",
                )
            })?;
        for id in ids {
            self.bind(&id, &endpoint, secret.clone(), http1)?;
        }
        Ok(())
    }

    /// `runtime_id` is a process this host launched, listening at `endpoint` and answering
    /// calls that carry `secret`, over HTTP/1.1 only if `http1` (deployment model A, or see
    /// [`ServiceRegistry::launched`]).
    pub(crate) fn bind(
        &self,
        runtime_id: &str,
        endpoint: &str,
        secret: Option<http::HeaderValue>,
        http1: bool,
    ) -> Result<(), Error> {
        let origin = Origin::parse(endpoint)?;
        let mut types = Vec::new();
        {
            let mut state = self.state();
            state.reach.insert(
                runtime_id.to_owned(),
                Reach::Launched {
                    endpoint: endpoint.to_owned(),
                    secret,
                    http1,
                },
            );
            for (service_type, providers) in &mut state.providers {
                let before = providers.len();
                providers.retain(|p| {
                    p.runtime_id != runtime_id
                        || p.metadata
                            .get(BASE_URL_KEY)
                            .is_none_or(|url| Origin::parse(url).is_ok_and(|o| o == origin))
                });
                if providers.len() != before {
                    tracing::warn!(%runtime_id, %endpoint, %service_type, "dropped a registration that did not point at the launched process");
                    types.push(service_type.clone());
                }
            }
        }
        for service_type in types {
            self.notify(&service_type);
        }
        Ok(())
    }

    /// Waits, on registry events, until `check` finds what it looks for.
    pub(crate) async fn wait_for<T>(
        &self,
        timeout: std::time::Duration,
        check: impl Fn() -> Option<T>,
    ) -> Result<T, ()> {
        let mut events = self.inner.events.subscribe();
        let wait = async {
            loop {
                if let Some(found) = check() {
                    return Some(found);
                }
                // Any event (or a lag) means something changed: look again.
                if let Err(broadcast::error::RecvError::Closed) = events.recv().await {
                    return check();
                }
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .ok()
            .flatten()
            .ok_or(())
    }

    /// Waits until `service_type` has a routable provider (host side: start dependents after
    /// their dependencies registered).
    ///
    /// # Errors
    /// `deadline_exceeded` after `timeout`.
    pub async fn wait_for_provider(
        &self,
        service_type: &str,
        timeout: std::time::Duration,
    ) -> Result<(), Error> {
        let mut events = self.inner.events.subscribe();
        let wait = async {
            loop {
                if self.event(service_type).state != ServiceState::Unavailable as i32 {
                    return;
                }
                // Any event (or a lag) means the state may have changed: look again.
                if let Err(broadcast::error::RecvError::Closed) = events.recv().await {
                    return;
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.map_err(|_| {
            Error::new(
                Code::DeadlineExceeded,
                format!(
                    "no provider of {service_type:?} registered within {} ms",
                    timeout.as_millis()
                ),
            )
        })
    }

    /// Where a call routed to `provider_id` (or its replacement) for `service_type` goes: the
    /// provider's runtime id and `base_url`, checked under one lock and without copying the
    /// registrations (this is on every routed call).
    pub(crate) fn route_target(
        &self,
        service_type: &str,
        provider_id: &str,
        procedure: &str,
    ) -> Result<RouteTarget, Error> {
        let state = self.state();
        let id = resolve_in(&state, provider_id);
        let mut registrations = state
            .providers
            .get(service_type)
            .into_iter()
            .flatten()
            .filter(|p| p.runtime_id == id)
            .peekable();
        if registrations.peek().is_none() {
            return Err(Error::unavailable(format!(
                "no provider {id:?} of service {service_type:?} is registered"
            )));
        }
        // Only what the provider registered is reachable through the host: not its control
        // RPCs, nor any other service it serves.
        let provider = registrations
            .find(|p| {
                procedure
                    .strip_prefix(p.endpoint_path.trim_start_matches('/'))
                    .is_some_and(|method| !method.is_empty() && !method.contains('/'))
            })
            .ok_or_else(|| {
                Error::new(Code::PermissionDenied, format!(
                    "provider {id:?} of {service_type:?} does not expose {procedure:?} through the host: only procedures under its registered endpoint_path are routed"
                ))
            })?;
        if state.health.get(id) == Some(&HealthState::Unhealthy) {
            return Err(Error::unavailable(format!(
                "provider {id:?} of service {service_type:?} is unhealthy"
            )));
        }
        let base = provider.metadata.get(BASE_URL_KEY).ok_or_else(|| {
            Error::unavailable(format!(
                "provider {id:?} registered without a \"{}\" metadata entry, so the host cannot reach it",
                BASE_URL_KEY
            ))
        })?;
        let (secret, launched_http1) = match state.reach.get(id) {
            Some(Reach::Launching) => {
                return Err(Error::unavailable(format!(
                    "provider {id:?} of service {service_type:?} is still starting"
                )));
            }
            Some(Reach::Launched { secret, http1, .. }) => (secret.clone(), *http1),
            _ => (None, false),
        };
        Ok(RouteTarget {
            provider_id: id.to_owned(),
            base_url: base.clone(),
            secret,
            // What a launched process announced, or what the registration says.
            http1: launched_http1
                || provider.metadata.get(HTTP_VERSION_KEY).map(String::as_str) == Some("1.1"),
        })
    }

    /// The TLS settings the host's routing gateway uses to reach providers registered at
    /// `https://` base URLs (for example their CA); without them such providers cannot be
    /// routed to. Applies to connections opened afterwards.
    pub fn set_provider_tls(&self, tls: crate::rpc::tls::ClientTls) {
        *self
            .inner
            .provider_tls
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(tls);
    }

    /// Asks the plugin `runtime_id` to stop (`PluginControl.Shutdown`, with the control token
    /// it gave this host when it joined, and its launch secret if this host launched it),
    /// then withdraws its registrations and ends its identity. For plugins the host did not
    /// launch (deployment model B); a [`Platform`](crate::host::Platform) stops its own.
    ///
    /// # Errors
    /// `not_found` if it has no registration with a `base_url`; `failed_precondition` if it
    /// gave no control token (a client of another implementation); the plugin's refusal or
    /// `unavailable` if it cannot be reached.
    pub async fn stop_plugin(
        &self,
        runtime_id: &str,
        grace: std::time::Duration,
        reason: &str,
    ) -> Result<(), Error> {
        let (base_url, token, secret, http1) = {
            let state = self.state();
            let base_url = state
                .providers
                .values()
                .flatten()
                .find(|p| p.runtime_id == runtime_id)
                .and_then(|p| p.metadata.get(BASE_URL_KEY).cloned())
                .ok_or_else(|| {
                    Error::not_found(format!(
                        "plugin {runtime_id:?} has no registration with a base_url to reach it at"
                    ))
                })?;
            let token = state.control.get(runtime_id).cloned().ok_or_else(|| {
                Error::new(
                    Code::FailedPrecondition,
                    format!(
                        "plugin {runtime_id:?} gave this host no control token when it joined, so it cannot be stopped from here"
                    ),
                )
            })?;
            let (secret, http1) = match state.reach.get(runtime_id) {
                Some(Reach::Launched { secret, http1, .. }) => (secret.clone(), *http1),
                _ => (None, false),
            };
            (base_url, token, secret, http1)
        };
        if base_url.starts_with("http://")
            && Origin::parse(&base_url)
                .is_ok_and(|o| !o.is_at(std::net::SocketAddr::from(([127, 0, 0, 1], 0))))
        {
            tracing::warn!(%runtime_id, %base_url, "sending a plugin's control token in cleartext over the network: serve plugins over TLS");
        }
        let mut builder = crate::Channel::builder(base_url.as_str())
            .timeout(std::time::Duration::from_secs(10))
            .header(
                http::HeaderName::from_static(crate::handshake::CONTROL_TOKEN_HEADER),
                token,
            );
        if let Some(secret) = secret {
            builder = builder.header(
                http::HeaderName::from_static(crate::serve::host_only::LAUNCH_SECRET_HEADER),
                secret,
            );
        }
        if base_url.starts_with("https://")
            && let Some(tls) = self.provider_tls()
        {
            builder = builder.tls(tls);
        }
        if http1 {
            builder = builder.http_version(crate::rpc::HttpVersion::Http1);
        }
        let control = wire::PluginControlClient::new(builder.build()?);
        control
            .shutdown(wire::ShutdownRequest {
                grace_period_seconds: i32::try_from(grace.as_secs()).unwrap_or(i32::MAX),
                reason: reason.to_owned(),
            })
            .await?;
        self.remove_runtime(runtime_id);
        Ok(())
    }

    /// Limits the calls each plugin routes through the host (keyed by its verified runtime
    /// id): past it, `resource_exhausted` with a retry hint. Set once; later calls are
    /// ignored (returns whether this one took effect).
    pub fn set_routed_rate_limit(&self, limit: crate::rpc::policy::RateLimit) -> bool {
        self.inner.routed_limit.set(limit).is_ok()
    }

    /// Takes one routed call of `caller` from its rate, if one is set.
    pub(crate) fn take_routed(&self, caller: &str) -> Result<(), Error> {
        match self.inner.routed_limit.get() {
            Some(limit) => limit.check(caller),
            None => Ok(()),
        }
    }

    pub(crate) fn provider_tls(&self) -> Option<crate::rpc::tls::ClientTls> {
        self.inner
            .provider_tls
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Every registration of `service_type`, healthy or not, in registration order
    /// (host side: routing and impact analysis use it).
    pub fn providers(&self, service_type: &str) -> Vec<Registration> {
        self.state()
            .providers
            .get(service_type)
            .cloned()
            .unwrap_or_default()
    }

    /// Sets how providers of `service_type` are picked.
    pub fn set_strategy(&self, service_type: &str, strategy: SelectionStrategy) {
        self.state()
            .strategies
            .insert(service_type.to_owned(), strategy);
    }

    /// Records the health a plugin reported and tells the watchers of its services.
    pub fn set_health(&self, runtime_id: &str, health: HealthState) {
        let types: Vec<String> = {
            let mut state = self.state();
            if state.health.insert(runtime_id.to_owned(), health) == Some(health) {
                return;
            }
            let mut types: Vec<String> = state
                .providers
                .values()
                .flatten()
                .filter(|p| p.runtime_id == runtime_id)
                .map(|p| p.service_type.clone())
                .collect();
            types.dedup();
            types
        };
        for service_type in types {
            self.notify(&service_type);
        }
    }

    /// Removes every registration of `runtime_id` (it went away, or its lease ran out) and
    /// tells the watchers; returns how many were removed.
    pub fn remove_runtime(&self, runtime_id: &str) -> usize {
        self.withdraw(runtime_id, false)
    }

    /// Removes every registration of `runtime_id`, whose process has exited and is being
    /// started again: calls addressed to it (or to the providers it replaced) keep their
    /// way to it until [`ServiceRegistry::replace_runtime`] points them at its successor
    /// (or [`ServiceRegistry::remove_runtime`] ends them, if it stays down).
    pub(crate) fn withdraw_restarting(&self, runtime_id: &str) -> usize {
        self.withdraw(runtime_id, true)
    }

    fn withdraw(&self, runtime_id: &str, keep_aliases: bool) -> usize {
        let mut removed = 0;
        let mut types = Vec::new();
        {
            let mut state = self.state();
            for (service_type, providers) in &mut state.providers {
                let before = providers.len();
                providers.retain(|p| p.runtime_id != runtime_id);
                if providers.len() != before {
                    removed += before - providers.len();
                    types.push(service_type.clone());
                }
            }
            state.health.remove(runtime_id);
            state.allowed.remove(runtime_id);
            state.any_type.remove(runtime_id);
            state.reach.remove(runtime_id);
            state.control.remove(runtime_id);
            state.last_seen.remove(runtime_id);
            // Maps shrink with their plugins: calls addressed to a replaced provider keep
            // going to its replacement only while the replacement lives.
            if !keep_aliases {
                state.aliases.retain(|_, target| target != runtime_id);
            }
            if state
                .inflight
                .get(runtime_id)
                .is_some_and(|i| i.count.load(std::sync::atomic::Ordering::Acquire) == 0)
            {
                state.inflight.remove(runtime_id);
            }
        }
        // Its identity ends with it: a removed plugin cannot call the host any more.
        if let Some(identities) = self.inner.identities.get() {
            identities.revoke(runtime_id);
        }
        for service_type in types {
            self.notify(&service_type);
        }
        removed
    }

    /// Registers a provider on behalf of `runtime_id` (host side; a plugin's own
    /// `RegisterService` call is checked further: its `base_url` must be its own address).
    ///
    /// # Errors
    /// `permission_denied` for a type the caller did not declare, or a `base_url` where the
    /// host may not reach it; `invalid_argument` for a bad type, version, path or URL.
    pub fn register(
        &self,
        runtime_id: &str,
        request: &wire::RegisterServiceRequest,
    ) -> Result<String, Error> {
        self.register_checked(runtime_id, request, None)
    }

    /// [`ServiceRegistry::register`] for the plugin's own call from `peer`: its `base_url`
    /// must be where the host may reach it ([`check_reach`]).
    pub(crate) fn register_from(
        &self,
        runtime_id: &str,
        request: &wire::RegisterServiceRequest,
        peer: Option<std::net::SocketAddr>,
    ) -> Result<String, Error> {
        self.register_checked(runtime_id, request, Some(peer))
    }

    /// Registers; `caller` is the peer of a plugin's own call (`None` inside: host side).
    fn register_checked(
        &self,
        runtime_id: &str,
        request: &wire::RegisterServiceRequest,
        caller: Option<Option<std::net::SocketAddr>>,
    ) -> Result<String, Error> {
        let origin = request
            .metadata
            .get(BASE_URL_KEY)
            .map(|url| Origin::parse(url))
            .transpose()?;
        validate_service_type(&request.service_type)?;
        let version = Version::parse(&request.version)?;
        validate_endpoint_path(&request.endpoint_path)?;
        validate_metadata(&request.metadata)?;
        let registration_id = format!(
            "reg-{}",
            identity::hex(&identity::random_bytes::<8>(&self.inner.rng)?)
        );
        {
            let mut state = self.state();
            let allowed = state
                .allowed
                .get(runtime_id)
                .is_some_and(|types| types.contains(&request.service_type))
                || state.any_type.contains(runtime_id);
            if !allowed {
                return Err(Error::new(
                    Code::PermissionDenied,
                    format!(
                        "plugin {runtime_id} not authorized to register service type {}: its join token does not admit it (in open mode: declare it in the handshake's client metadata \"{PROVIDES_KEY}\", or declare nothing)",
                        request.service_type
                    ),
                ));
            }
            if let (Some((url, origin)), Some(peer)) = (
                request.metadata.get(BASE_URL_KEY).zip(origin.as_ref()),
                caller,
            ) {
                check_reach(state.reach.get(runtime_id), url, origin, peer, runtime_id)?;
            }
            let (mine, all) = state
                .providers
                .values()
                .flatten()
                .fold((0, 0), |(m, a), p| {
                    (m + usize::from(p.runtime_id == runtime_id), a + 1)
                });
            if mine >= MAX_REGISTRATIONS_PER_PLUGIN || all >= MAX_REGISTRATIONS {
                return Err(Error::new(
                    Code::ResourceExhausted,
                    format!(
                        "too many registrations: at most {MAX_REGISTRATIONS_PER_PLUGIN} per plugin and {MAX_REGISTRATIONS} in all (plugin {runtime_id} has {mine}); unregister some first"
                    ),
                ));
            }
            state
                .providers
                .entry(request.service_type.clone())
                .or_default()
                .push(Provider {
                    registration_id: registration_id.clone(),
                    runtime_id: runtime_id.to_owned(),
                    service_type: request.service_type.clone(),
                    version,
                    endpoint_path: request.endpoint_path.clone(),
                    metadata: request.metadata.clone(),
                });
        }
        self.notify(&request.service_type);
        Ok(registration_id)
    }

    /// Withdraws a registration; only its owner may.
    ///
    /// # Errors
    /// `not_found` for an unknown id, `permission_denied` for someone else's.
    pub fn unregister(&self, runtime_id: &str, registration_id: &str) -> Result<(), Error> {
        let service_type = {
            let mut state = self.state();
            let found = state
                .providers
                .iter_mut()
                .find_map(|(service_type, providers)| {
                    providers
                        .iter()
                        .position(|p| p.registration_id == registration_id)
                        .map(|i| (service_type.clone(), providers, i))
                });
            let Some((service_type, providers, index)) = found else {
                return Err(Error::not_found(format!(
                    "no registration {registration_id:?}"
                )));
            };
            if providers[index].runtime_id != runtime_id {
                return Err(Error::new(
                    Code::PermissionDenied,
                    format!("registration {registration_id:?} belongs to another plugin"),
                ));
            }
            providers.remove(index);
            service_type
        };
        self.notify(&service_type);
        Ok(())
    }

    /// Picks a healthy provider of `service_type` at `min_version` or newer.
    ///
    /// # Errors
    /// `not_found` when there is none, saying why (no providers, none new enough, none
    /// healthy); `invalid_argument` for a `min_version` that is not semver.
    pub fn discover(
        &self,
        service_type: &str,
        min_version: &str,
    ) -> Result<wire::DiscoverServiceResponse, Error> {
        let min =
            if min_version.is_empty() {
                None
            } else {
                Some(Version::parse(min_version).map_err(|e| {
                    Error::invalid_argument(format!("min_version: {}", e.message()))
                })?)
            };
        let mut state = self.state();
        let all = state
            .providers
            .get(service_type)
            .map(Vec::as_slice)
            .unwrap_or_default();
        if all.is_empty() {
            return Err(Error::not_found(format!(
                "no providers for service {service_type:?}"
            )));
        }
        let single_provider = all.len() == 1;
        let compatible: Vec<&Provider> = all
            .iter()
            .filter(|p| min.as_ref().is_none_or(|min| p.version >= *min))
            .collect();
        if compatible.is_empty() {
            return Err(Error::not_found(format!(
                "no compatible providers for service {service_type:?} at version {min_version} or newer"
            )));
        }
        let healthy: Vec<Provider> = compatible
            .into_iter()
            .filter(|p| {
                routable(
                    state
                        .health
                        .get(&p.runtime_id)
                        .copied()
                        .unwrap_or(HealthState::Healthy),
                )
            })
            .cloned()
            .collect();
        if healthy.is_empty() {
            return Err(Error::not_found(format!(
                "no available providers for service {service_type:?} (all unhealthy)"
            )));
        }
        let strategy = state
            .strategies
            .get(service_type)
            .copied()
            .unwrap_or_default();
        let index = match strategy {
            SelectionStrategy::First => 0,
            SelectionStrategy::RoundRobin => {
                let next = state
                    .round_robin
                    .entry(service_type.to_owned())
                    .or_default();
                let index = *next % healthy.len();
                *next = next.wrapping_add(1);
                index
            }
            SelectionStrategy::Random => self.random_below(healthy.len() as u64)? as usize,
            SelectionStrategy::Weighted => {
                let weights: Vec<u64> = healthy
                    .iter()
                    .map(|p| {
                        p.metadata
                            .get("weight")
                            .and_then(|w| w.parse::<u64>().ok())
                            .unwrap_or(1)
                            .min(MAX_WEIGHT)
                    })
                    .collect();
                // Bounded weights: the sum of up to MAX_REGISTRATIONS cannot overflow.
                let total: u64 = weights.iter().fold(0, |sum, w| sum.saturating_add(*w));
                if total == 0 {
                    0
                } else {
                    let mut pick = self.random_below(total)?;
                    weights
                        .iter()
                        .position(|w| {
                            if pick < *w {
                                true
                            } else {
                                pick -= w;
                                false
                            }
                        })
                        .unwrap_or(0)
                }
            }
        };
        Ok(wire::DiscoverServiceResponse {
            endpoint: Some(endpoint(&healthy[index])),
            single_provider,
        })
    }

    fn random_below(&self, bound: u64) -> Result<u64, Error> {
        let bytes = identity::random_bytes::<8>(&self.inner.rng)?;
        Ok(u64::from_le_bytes(bytes) % bound.max(1))
    }

    /// The current state of a service type, as a watch event: the first routable provider,
    /// `DEGRADED` if it reported so, `UNAVAILABLE` when there is none.
    fn event(&self, service_type: &str) -> wire::WatchServiceEvent {
        let state = self.state();
        let first = state.providers.get(service_type).and_then(|providers| {
            providers.iter().find_map(|p| {
                let health = state
                    .health
                    .get(&p.runtime_id)
                    .copied()
                    .unwrap_or(HealthState::Healthy);
                routable(health).then_some((p, health))
            })
        });
        match first {
            Some((provider, health)) => wire::WatchServiceEvent {
                service_type: service_type.to_owned(),
                state: if health == HealthState::Degraded {
                    ServiceState::Degraded
                } else {
                    ServiceState::Available
                } as i32,
                endpoint: Some(endpoint(provider)),
            },
            None => wire::WatchServiceEvent {
                service_type: service_type.to_owned(),
                state: ServiceState::Unavailable as i32,
                endpoint: None,
            },
        }
    }

    fn notify(&self, service_type: &str) {
        let _ = self.inner.events.send(self.event(service_type));
    }
}

/// Whether a registration by `runtime_id`, called from `peer`, may point the host at
/// `origin`: a launched process only at its own endpoint, any other at the address it calls
/// from or at one its join token lists (so the host reaches nothing
/// for a plugin that the plugin could not reach from where it is). A call whose peer is
/// unknown (a host mounted in another server) needs a launch binding or a list.
fn check_reach(
    reach: Option<&Reach>,
    url: &str,
    origin: &Origin,
    peer: Option<std::net::SocketAddr>,
    runtime_id: &str,
) -> Result<(), Error> {
    let refuse = |why: String| {
        Err(Error::new(
            Code::PermissionDenied,
            format!("plugin {runtime_id} may not register base_url {url:?}: {why}"),
        ))
    };
    match reach {
        // Checked when the launched process announces its address.
        Some(Reach::Launching) => Ok(()),
        Some(Reach::Launched { endpoint, .. }) => {
            if Origin::parse(endpoint).is_ok_and(|o| o == *origin) {
                Ok(())
            } else {
                refuse(format!("the host launched it at {endpoint}"))
            }
        }
        // The operator's list adds to the plugin's own address.
        Some(Reach::Listed(list))
            if list
                .iter()
                .any(|url| Origin::parse(url).is_ok_and(|o| o == *origin)) =>
        {
            Ok(())
        }
        Some(Reach::Listed(list)) => match peer {
            Some(peer) if origin.is_at(peer) => Ok(()),
            _ => refuse(format!(
                "it is neither its own address nor one its join token allows ({list:?}, \
                 JoinPolicy::allow_addresses)"
            )),
        },
        Some(Reach::Own) | None => match peer {
            Some(peer) if origin.is_at(peer) => Ok(()),
            Some(peer) => refuse(format!(
                "it calls from {}, and a plugin registers its own address; an operator can \
                 allow other addresses for its join token (JoinPolicy::allow_addresses, or \
                 \"addresses\" in the host's join_tokens)",
                peer.ip()
            )),
            None => refuse(
                "the host cannot tell where it calls from (the host is served behind another \
                 server); an operator can allow its addresses (JoinPolicy::allow_addresses)"
                    .to_owned(),
            ),
        },
    }
}

/// Follows replacements from `provider_id` to the provider that serves it now. Bounded: a
/// replacement chain is never longer than the number of aliases.
fn resolve_in<'s>(state: &'s State, provider_id: &'s str) -> &'s str {
    let mut id = provider_id;
    for _ in 0..=state.aliases.len() {
        match state.aliases.get(id) {
            Some(next) => id = next,
            None => break,
        }
    }
    id
}

fn endpoint(provider: &Provider) -> wire::ServiceEndpoint {
    wire::ServiceEndpoint {
        provider_id: provider.runtime_id.clone(),
        version: provider.version.to_string(),
        endpoint_url: format!(
            "/services/{}/{}",
            provider.service_type, provider.runtime_id
        ),
        metadata: provider.metadata.clone(),
    }
}

/// The largest `weight` the weighted strategy counts; larger ones count as this.
const MAX_WEIGHT: u64 = 1_000_000;

/// The most registrations one plugin may hold.
pub const MAX_REGISTRATIONS_PER_PLUGIN: usize = 32;
/// The most registrations a registry holds in all.
pub const MAX_REGISTRATIONS: usize = 10_000;
/// Limits on a registration's metadata: entries, and bytes of a key and of a value.
pub const MAX_METADATA_ENTRIES: usize = 32;
const MAX_METADATA_KEY: usize = 128;
const MAX_METADATA_VALUE: usize = 1024;

fn validate_metadata(metadata: &HashMap<String, String>) -> Result<(), Error> {
    if let Some(version) = metadata.get(HTTP_VERSION_KEY)
        && version != "2"
        && version != "1.1"
    {
        return Err(Error::invalid_argument(format!(
            "metadata {HTTP_VERSION_KEY:?} is {version:?}: use \"2\" (the default) or \"1.1\""
        )));
    }
    if metadata.len() > MAX_METADATA_ENTRIES {
        return Err(Error::invalid_argument(format!(
            "registration metadata has {} entries; at most {MAX_METADATA_ENTRIES} are kept",
            metadata.len()
        )));
    }
    if let Some((key, value)) = metadata
        .iter()
        .find(|(k, v)| k.len() > MAX_METADATA_KEY || v.len() > MAX_METADATA_VALUE)
    {
        return Err(Error::invalid_argument(format!(
            "registration metadata entry {:?} is too long: keys may have {MAX_METADATA_KEY} bytes, values {MAX_METADATA_VALUE} (this one {} and {})",
            key.chars().take(40).collect::<String>(),
            key.len(),
            value.len()
        )));
    }
    Ok(())
}

/// The services a registration exposes through the host: `/<package>.<Service>/`. Only
/// procedures under it are routed, so it must name a service, not the whole provider.
fn validate_endpoint_path(path: &str) -> Result<(), Error> {
    let service = path
        .strip_prefix('/')
        .and_then(|rest| rest.strip_suffix('/'))
        .unwrap_or_default();
    // The system's own services are never exposed through the host.
    let reserved = ["connectplugin.", "grpc."]
        .iter()
        .any(|prefix| service.starts_with(prefix));
    let valid = !reserved
        && service.contains('.')
        && service
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_')
        && !service.starts_with('.')
        && !service.ends_with('.')
        && !service.contains("..");
    if !valid {
        return Err(Error::invalid_argument(format!(
            "endpoint_path {path:?} must name one service as /<package>.<Service>/, e.g. \
             \"/kv.v1.KVService/\", and not one of the system's own (connectplugin.*, grpc.*): \
             the host routes only procedures under it"
        )));
    }
    Ok(())
}

fn validate_service_type(service_type: &str) -> Result<(), Error> {
    let valid = !service_type.is_empty()
        && service_type.len() <= 128
        && service_type
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if valid {
        Ok(())
    } else {
        Err(Error::invalid_argument(format!(
            "invalid service type {service_type:?}: use 1-128 letters, digits, '-', '_' or '.'"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(service_type: &str, version: &str) -> wire::RegisterServiceRequest {
        wire::RegisterServiceRequest {
            service_type: service_type.into(),
            version: version.into(),
            endpoint_path: "/logger.v1.Logger/".into(),
            metadata: HashMap::new(),
        }
    }

    #[test]
    fn a_launched_provider_is_reached_only_at_its_address_and_with_its_secret() {
        let registry = ServiceRegistry::new();
        let policy = registry.join_policy();
        let token = policy
            .issue_launch("cache-plugin", &["cache".to_owned()])
            .unwrap();
        let handshake = wire::HandshakeRequest {
            self_id: "cache-plugin".into(),
            client_metadata: [(crate::handshake::JOIN_TOKEN_KEY.to_owned(), token.clone())].into(),
            ..Default::default()
        };
        let admission = policy.admit(&handshake, None).expect("admitted");
        policy.record(&admission, "cache-1");
        registry.admit("cache-1", &admission);
        let at = |port: u16| {
            let mut request = request("cache", "1.0.0");
            request.endpoint_path = "/cache.v1.Cache/".into();
            request
                .metadata
                .insert(BASE_URL_KEY.into(), format!("http://127.0.0.1:{port}"));
            request
        };
        let loopback = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 5000)));

        // Before the launcher knows where it listens: registered, but not routed to.
        registry
            .register_from("cache-1", &at(7000), loopback)
            .unwrap();
        let err = registry
            .route_target("cache", "cache-1", "cache.v1.Cache/Get")
            .unwrap_err();
        assert_eq!(err.code(), Code::Unavailable, "{err}");
        assert!(err.message().contains("still starting"), "{err}");

        // It listens at 7001: the registration pointing elsewhere goes, only 7001 is taken.
        let secret = http::HeaderValue::from_static("s3cret");
        let ids = policy
            .launched(&token, "http://127.0.0.1:7001", Some(secret.clone()), false)
            .unwrap();
        for id in ids {
            registry
                .bind(&id, "http://127.0.0.1:7001", Some(secret.clone()), false)
                .unwrap();
        }
        assert!(registry.providers("cache").is_empty());
        let err = registry
            .register_from("cache-1", &at(7000), loopback)
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{err}");
        registry
            .register_from("cache-1", &at(7001), loopback)
            .unwrap();
        let target = registry
            .route_target("cache", "cache-1", "cache.v1.Cache/Get")
            .unwrap();
        assert_eq!(
            (
                target.provider_id.as_str(),
                target.base_url.as_str(),
                target.secret
            ),
            ("cache-1", "http://127.0.0.1:7001", Some(secret))
        );
        // Ends with its plugin.
        registry.remove_runtime("cache-1");
        assert!(registry.state().reach.is_empty());
    }

    #[test]
    fn only_declared_types_and_only_owners() {
        let registry = ServiceRegistry::new();
        let err = registry
            .register("a-1", &request("logger", "1.0.0"))
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied);
        registry.allow("a-1", ["logger"]);
        let id = registry
            .register("a-1", &request("logger", "1.0.0"))
            .unwrap();
        assert!(id.starts_with("reg-"));
        assert_eq!(
            registry.unregister("b-2", &id).unwrap_err().code(),
            Code::PermissionDenied
        );
        assert_eq!(
            registry.unregister("a-1", "reg-nope").unwrap_err().code(),
            Code::NotFound
        );
        registry.unregister("a-1", &id).unwrap();
        assert_eq!(
            registry
                .register("a-1", &request("logger", "1.0"))
                .unwrap_err()
                .code(),
            Code::InvalidArgument
        );
        assert_eq!(
            registry
                .register("a-1", &request("bad/type", "1.0.0"))
                .unwrap_err()
                .code(),
            Code::InvalidArgument
        );
    }

    #[test]
    fn versions_compare_as_semver_and_health_filters() {
        let registry = ServiceRegistry::new();
        registry.allow("old", ["logger"]);
        registry.allow("new", ["logger"]);
        registry
            .register("old", &request("logger", "9.0.0"))
            .unwrap();
        registry
            .register("new", &request("logger", "10.0.0"))
            .unwrap();
        let found = registry.discover("logger", "10.0.0").unwrap();
        assert_eq!(
            found.endpoint.unwrap().provider_id,
            "new",
            "10.0.0 >= 10.0.0 > 9.0.0 as semver"
        );
        assert!(!found.single_provider);
        registry.set_health("new", HealthState::Unhealthy);
        let err = registry.discover("logger", "10.0.0").unwrap_err();
        assert!(err.message().contains("all unhealthy"), "{err}");
        assert_eq!(
            registry
                .discover("logger", "")
                .unwrap()
                .endpoint
                .unwrap()
                .provider_id,
            "old"
        );
        assert!(
            registry
                .discover("logger", "11.0.0")
                .unwrap_err()
                .message()
                .contains("no compatible")
        );
        assert!(
            registry
                .discover("metrics", "")
                .unwrap_err()
                .message()
                .contains("no providers")
        );
    }

    #[test]
    fn round_robin_alternates_and_weighted_weighs() {
        let registry = ServiceRegistry::new();
        for (id, weight) in [("a", "1"), ("b", "9")] {
            registry.allow(id, ["cache"]);
            let mut r = request("cache", "1.0.0");
            r.metadata.insert("weight".into(), weight.into());
            registry.register(id, &r).unwrap();
        }
        registry.set_strategy("cache", SelectionStrategy::RoundRobin);
        let picks: Vec<String> = (0..4)
            .map(|_| {
                registry
                    .discover("cache", "")
                    .unwrap()
                    .endpoint
                    .unwrap()
                    .provider_id
            })
            .collect();
        assert_eq!(picks, ["a", "b", "a", "b"]);
        registry.set_strategy("cache", SelectionStrategy::Weighted);
        let b = (0..1000)
            .filter(|_| {
                registry
                    .discover("cache", "")
                    .unwrap()
                    .endpoint
                    .unwrap()
                    .provider_id
                    == "b"
            })
            .count();
        assert!(
            (800..=980).contains(&b),
            "b has weight 9 of 10, picked {b} of 1000"
        );
    }
}

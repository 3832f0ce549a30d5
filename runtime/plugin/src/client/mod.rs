//! [`Client`]: the host's (or a plugin's) side of a plugin connection. It connects lazily,
//! performs the handshake once, dispenses typed clients of the plugins the server confirmed,
//! and, for a client that introduced itself with a `self_id`, holds the runtime identity it
//! was issued and requests host capabilities with it.
//!
//! ```no_run
//! # mod kv { pub struct KvServicePlugin; }
//! # async fn demo() -> Result<(), connect_plugin::Error> {
//! use connect_plugin::{Client, ClientConfig};
//! # use connect_plugin::Plugin;
//! # struct KvServicePlugin;
//! # impl Plugin for KvServicePlugin { const NAME: &'static str = "kv"; const VERSION: &'static str = "1.0.0";
//! #   const SERVICE_NAME: &'static str = "kv.v1.KVService"; type Client = connect_plugin::Channel;
//! #   fn client(c: connect_plugin::Channel) -> connect_plugin::Channel { c } }
//! let client = Client::new(ClientConfig::new("http://127.0.0.1:8080").plugin::<KvServicePlugin>())?;
//! let kv = client.dispense::<KvServicePlugin>().await?; // handshakes on first use
//! # Ok(()) }
//! ```
//!
//! This is the calling side only: the server half of the handshake is [`crate::handshake`], the
//! registry, gateway and broker it calls are the host's ([`crate::host`]), and it starts no plugin
//! process ([`crate::process`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::time::Instant;

mod capability;
pub mod discovery;
mod provider;

pub use capability::CapabilityGrant;
pub use provider::Heartbeat;

use crate::handshake::{APP_VERSIONS_KEY, CORE_PROTOCOL_VERSION};
use crate::identity::{RUNTIME_ID_HEADER, RuntimeIdentity};
use crate::plugin::{MAGIC_COOKIE_KEY, MAGIC_COOKIE_VALUE};
use crate::proto::connectplugin::v1 as wire;
use crate::rpc::ChannelBuilder;
use crate::rpc::tls::ClientTls;
use crate::rpc::{Interceptor, MethodDescriptor};
use crate::{Channel, Code, Error, Plugin, Request};

/// The environment variable in which a host serving TLS hands the plugins it launches the CA
/// certificates (PEM) to verify it with; [`ClientConfig::new`] trusts them for `https://`
/// endpoints.
pub const HOST_CA_ENV: &str = "CONNECT_PLUGIN_HOST_CA";

/// The request header with which a caller accepts any healthy provider of the type, at this
/// version or newer (empty: any), when the provider it addresses is gone or unhealthy: the
/// host then routes the call to the provider discovery would pick now. Typed clients from
/// [`Client::provider`] send it, so they never stay pinned to a
/// provider that went away.
pub const REROUTE_HEADER: &str = "x-plugin-reroute-min-version";

/// How to reach and greet a plugin server.
pub struct ClientConfig {
    endpoint: String,
    plugins: Vec<&'static str>,
    app_protocol_versions: Vec<i32>,
    cookie: (String, String),
    self_id: Option<(String, String)>,
    metadata: HashMap<String, String>,
    channel: Box<dyn FnOnce(ChannelBuilder) -> ChannelBuilder + Send>,
    launch_secret: Option<http::HeaderValue>,
    /// Whether the endpoint is this plugin's own host (`HOST_URL`).
    own_host: bool,
    provider_wrapper: Option<ProviderWrapper>,
}

/// Makes the wrapper each provider client gets for itself.
type ProviderWrapper = Arc<dyn Fn() -> Arc<dyn crate::rpc::interceptor::Wrap> + Send + Sync>;

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("endpoint", &self.endpoint)
            .field("plugins", &self.plugins)
            .field("app_protocol_versions", &self.app_protocol_versions)
            .finish_non_exhaustive()
    }
}

impl ClientConfig {
    /// A configuration for the server at `endpoint` (e.g. `http://127.0.0.1:8080`).
    ///
    /// For the `https://` endpoint of this plugin's host (`HOST_URL`), the CA certificates in
    /// [`HOST_CA_ENV`] (set by a host serving TLS for the plugins it launches) are trusted,
    /// unless [`ClientConfig::channel`] sets other TLS settings.
    ///
    /// A plugin launched by a host finds its per-launch join token in the environment
    /// ([`JOIN_TOKEN_ENV`](crate::handshake::JOIN_TOKEN_ENV)); it is sent with the handshake
    /// only to that host (`endpoint` equal to `HOST_URL`) and only with a `self_id`.
    pub fn new(endpoint: impl Into<String>) -> Self {
        let endpoint = endpoint.into();
        let mut metadata = HashMap::new();
        let own_host = std::env::var("HOST_URL")
            .is_ok_and(|host| host.trim_end_matches('/') == endpoint.trim_end_matches('/'));
        if let (true, Ok(token)) = (own_host, std::env::var(crate::handshake::JOIN_TOKEN_ENV)) {
            metadata.insert(crate::handshake::JOIN_TOKEN_KEY.to_owned(), token);
        }
        Self {
            endpoint,
            plugins: Vec::new(),
            app_protocol_versions: vec![1],
            cookie: (MAGIC_COOKIE_KEY.to_owned(), MAGIC_COOKIE_VALUE.to_owned()),
            self_id: None,
            metadata,
            channel: Box::new(|b| b),
            launch_secret: None,
            own_host,
            provider_wrapper: None,
        }
    }

    /// Gives each typed provider client ([`Client::provider`]) a wrapper of its own, made by
    /// `make` (for example a [`CircuitBreaker`](crate::rpc::policy::CircuitBreaker) per
    /// provider), inside the channel's own wrappers: a provider that keeps failing opens its
    /// breaker alone, not the host's or other providers'.
    #[must_use]
    pub fn provider_wrapper<W: crate::rpc::interceptor::Wrap>(
        mut self,
        make: impl Fn() -> W + Send + Sync + 'static,
    ) -> Self {
        self.provider_wrapper = Some(Arc::new(move || {
            Arc::new(make()) as Arc<dyn crate::rpc::interceptor::Wrap>
        }));
        self
    }

    /// Sends the launch secret of a plugin this host launched on every call (what
    /// [`PluginProcess::client_config`](crate::process::PluginProcess::client_config) sets;
    /// see [`crate::serve::host_only`]).
    #[must_use]
    pub fn launch_secret(mut self, secret: http::HeaderValue) -> Self {
        self.launch_secret = Some(secret);
        self
    }

    /// Joins the host with `token` (an operator's join token for this plugin; see
    /// [`JoinPolicy`](crate::handshake::JoinPolicy)), instead of one from the environment.
    #[must_use]
    pub fn join_token(mut self, token: impl Into<String>) -> Self {
        self.metadata
            .insert(crate::handshake::JOIN_TOKEN_KEY.to_owned(), token.into());
        self
    }

    /// Replaces the endpoint.
    #[must_use]
    pub fn endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoint = endpoint.into();
        self.own_host = std::env::var("HOST_URL")
            .is_ok_and(|host| host.trim_end_matches('/') == self.endpoint.trim_end_matches('/'));
        self
    }

    /// Requests plugin `P`; the handshake fails if the server does not serve it.
    #[must_use]
    pub fn plugin<P: Plugin>(mut self) -> Self {
        if !self.plugins.contains(&P::NAME) {
            self.plugins.push(P::NAME);
        }
        self
    }

    /// The application protocol version (default 1).
    #[must_use]
    pub fn app_protocol_version(self, version: i32) -> Self {
        self.app_protocol_versions(vec![version])
    }

    /// Every application protocol version this client speaks; the highest one the server
    /// speaks too is used ([`Client::app_protocol_version`] tells which).
    #[must_use]
    pub fn app_protocol_versions(mut self, versions: Vec<i32>) -> Self {
        self.app_protocol_versions = versions;
        self
    }

    /// The magic cookie to present (default: connect-plugin-go's).
    #[must_use]
    pub fn magic_cookie(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.cookie = (key.into(), value.into());
        self
    }

    /// Introduces this client as a plugin called `self_id`, so the server issues it a runtime
    /// identity (deployment model B, capability requests).
    #[must_use]
    pub fn self_id(mut self, self_id: impl Into<String>, self_version: impl Into<String>) -> Self {
        self.self_id = Some((self_id.into(), self_version.into()));
        self
    }

    /// Declares the service types this plugin provides, so a host with a registry lets it
    /// register them (sent as the `provides` client metadata).
    #[must_use]
    pub fn provides<I, S>(mut self, service_types: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let list: Vec<String> = service_types
            .into_iter()
            .map(|s| s.as_ref().to_owned())
            .collect();
        self.metadata
            .insert(crate::handshake::PROVIDES_KEY.to_owned(), list.join(","));
        self
    }

    /// Client metadata sent in the handshake.
    #[must_use]
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// Adjusts the channel: timeouts, codec, compression, TLS and the like. Adjustments add
    /// up, in the order given (a config from [`crate::PluginProcess::client_config`] keeps
    /// what the process needs, such as HTTP/1.1).
    #[must_use]
    pub fn channel(
        mut self,
        configure: impl FnOnce(ChannelBuilder) -> ChannelBuilder + Send + 'static,
    ) -> Self {
        let earlier = std::mem::replace(&mut self.channel, Box::new(|b| b));
        self.channel = Box::new(move |b| configure(earlier(b)));
        self
    }
}

/// What the handshake established.
#[derive(Debug, Clone)]
pub struct HandshakeInfo {
    /// The negotiated application protocol version.
    pub app_protocol_version: i32,
    /// The requested plugins the server serves.
    pub plugins: Vec<wire::PluginInfo>,
    /// The server's metadata.
    pub server_metadata: HashMap<String, String>,
    /// The capabilities the host offers.
    pub host_capabilities: Vec<wire::Capability>,
    /// The runtime identity issued to this client, if it gave a `self_id`.
    pub identity: Option<RuntimeIdentity>,
}

/// The runtime identity a client holds now, shared with the interceptor that puts it on every
/// call, so a renewed token reaches channels derived earlier ([`Client::provider`]).
#[derive(Default)]
struct Held {
    identity: RwLock<Option<Carried>>,
}

/// An identity with its headers made once, and when to renew it.
struct Carried {
    identity: RuntimeIdentity,
    renew_at: Option<Instant>,
    runtime_id: http::HeaderValue,
    authorization: http::HeaderValue,
}

impl Held {
    fn get(&self) -> Option<(RuntimeIdentity, Option<Instant>)> {
        self.identity
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .map(|c| (c.identity.clone(), c.renew_at))
    }

    fn set(&self, identity: Option<(RuntimeIdentity, Option<Instant>)>) {
        let carried = identity.and_then(|(identity, renew_at)| {
            let runtime_id = http::HeaderValue::from_str(&identity.runtime_id).ok()?;
            let mut authorization =
                http::HeaderValue::from_str(&format!("Bearer {}", identity.token)).ok()?;
            authorization.set_sensitive(true);
            Some(Carried {
                identity,
                renew_at,
                runtime_id,
                authorization,
            })
        });
        *self
            .identity
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = carried;
    }
}

/// Puts the held identity on every call that carries none of its own.
struct CarryIdentity(Arc<Held>);

impl Interceptor for CarryIdentity {
    fn before(&self, _: &MethodDescriptor, headers: &mut http::HeaderMap) -> Result<(), Error> {
        if !headers.contains_key(RUNTIME_ID_HEADER)
            && let Some(carried) = &*self
                .0
                .identity
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        {
            headers.insert(RUNTIME_ID_HEADER, carried.runtime_id.clone());
            headers.insert(http::header::AUTHORIZATION, carried.authorization.clone());
        }
        Ok(())
    }
}

/// When to renew a token living `ttl`, issued now: at two thirds of its life.
fn renew_at(ttl: Duration) -> Instant {
    Instant::now() + ttl.mul_f64(2.0 / 3.0)
}

/// A connection to a plugin server: lazy, handshakes once, dispenses typed clients.
///
/// A client that joined a host with a `self_id` keeps its runtime identity alive: once two
/// thirds of the token's lifetime have passed, its next own call to the host
/// ([`Client::authenticated`], a health report or heartbeat, a capability request) first
/// renews it (a handshake presenting the identity; the runtime id stays the same). Routed
/// calls through [`Client::provider`] carry the token but do not renew it: a plugin that
/// makes only those runs a [`Client::heartbeat`]. When the host no longer knows the identity
/// (it restarted), [`Client::rejoin`] joins again with a new one (heartbeats do this by
/// themselves) and registers again what it registered with [`Client::register`].
pub struct Client {
    channel: Channel,
    endpoint: String,
    plugins: Vec<&'static str>,
    app_protocol_versions: Vec<i32>,
    cookie: (String, String),
    self_id: Option<(String, String)>,
    metadata: HashMap<String, String>,
    handshake: RwLock<Option<Arc<HandshakeInfo>>>,
    /// Held while handshaking, so concurrent first uses or renewals make one handshake.
    handshaking: tokio::sync::Mutex<()>,
    held: Arc<Held>,
    closed: AtomicBool,
    /// The health last reported, re-sent by heartbeats.
    last_health: std::sync::Mutex<(wire::HealthState, String)>,
    /// What [`Client::register`] registered, registered again after a rejoin.
    registered: std::sync::Mutex<Vec<wire::RegisterServiceRequest>>,
    /// Whether some of them still have to be registered again.
    pending: AtomicBool,
    /// Whether the endpoint is this plugin's own host (`HOST_URL`): only it gets the
    /// control token.
    joins_own_host: bool,
    provider_wrapper: Option<ProviderWrapper>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("endpoint", &self.endpoint)
            .field("connected", &self.handshake_info().is_some())
            .finish()
    }
}

impl Client {
    /// A client for the configured server; nothing is sent until the first use.
    ///
    /// # Errors
    /// `invalid_argument` for a bad endpoint or an empty version list.
    pub fn new(config: ClientConfig) -> Result<Self, Error> {
        let joins = config.self_id.is_some();
        Self::build(config, joins)
    }

    /// Builds the client; `carries_identity` for one that will hold a runtime identity (only
    /// those pay for putting it on calls).
    fn build(config: ClientConfig, carries_identity: bool) -> Result<Self, Error> {
        if config.app_protocol_versions.is_empty() {
            return Err(Error::invalid_argument(
                "app_protocol_versions must not be empty",
            ));
        }
        let held = Arc::new(Held::default());
        let mut builder = Channel::builder(config.endpoint.clone());
        // The host's CA is trusted for the host alone (`HOST_URL`; any endpoint of a managed
        // plugin, which learns its host's URL from the host itself).
        let for_host = std::env::var("HOST_URL").map_or(true, |host| {
            host.trim_end_matches('/') == config.endpoint.trim_end_matches('/')
        });
        if config.endpoint.starts_with("https://")
            && for_host
            && let Ok(pem) = std::env::var(HOST_CA_ENV)
        {
            let tls = ClientTls::with_root_certificates_pem(pem.as_bytes())
                .map_err(|e| Error::invalid_argument(format!("{HOST_CA_ENV}: {}", e.message())))?;
            builder = builder.tls(tls);
        }
        let mut builder = (config.channel)(builder);
        if carries_identity {
            builder = builder.interceptor(CarryIdentity(Arc::clone(&held)));
        }
        if let Some(secret) = config.launch_secret {
            builder = builder.header(
                http::HeaderName::from_static(crate::serve::host_only::LAUNCH_SECRET_HEADER),
                secret,
            );
        }
        let channel = builder.build()?;
        Ok(Self {
            channel,
            endpoint: config.endpoint,
            plugins: config.plugins,
            app_protocol_versions: config.app_protocol_versions,
            cookie: config.cookie,
            self_id: config.self_id,
            metadata: config.metadata,
            handshake: RwLock::new(None),
            handshaking: tokio::sync::Mutex::new(()),
            held,
            closed: AtomicBool::new(false),
            last_health: std::sync::Mutex::new((wire::HealthState::Healthy, String::new())),
            registered: std::sync::Mutex::new(Vec::new()),
            pending: AtomicBool::new(false),
            joins_own_host: config.own_host,
            provider_wrapper: config.provider_wrapper,
        })
    }

    /// A client that already holds the identity a host assigned (deployment model A): it
    /// sends no handshake, and calls the host's registry and lifecycle with that identity.
    ///
    /// # Errors
    /// As for [`Client::new`].
    pub fn with_identity(config: ClientConfig, identity: RuntimeIdentity) -> Result<Self, Error> {
        let client = Self::build(config, true)?;
        client.held.set(Some((identity.clone(), None)));
        client.store(HandshakeInfo {
            app_protocol_version: client
                .app_protocol_versions
                .iter()
                .max()
                .copied()
                .unwrap_or(1),
            plugins: Vec::new(),
            server_metadata: HashMap::new(),
            host_capabilities: Vec::new(),
            identity: Some(identity),
        });
        Ok(client)
    }

    /// Connects (handshakes) if not done yet; safe to call any number of times.
    ///
    /// # Errors
    /// `failed_precondition` after [`Client::close`] or when versions or plugins do not
    /// match; the server's handshake error otherwise, prefixed with `handshake failed`.
    pub async fn connect(&self) -> Result<Arc<HandshakeInfo>, Error> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::new(Code::FailedPrecondition, "the client is closed"));
        }
        if let Some(done) = self.handshake_info() {
            return Ok(done);
        }
        let _one = self.handshaking.lock().await;
        if let Some(done) = self.handshake_info() {
            return Ok(done);
        }
        let info = self.handshake().await?;
        Ok(self.store(info))
    }

    /// Joins the host again: a fresh handshake, presenting the identity held (which renews it
    /// if the host still knows it) and the join token (which admits a new identity if it does
    /// not). For a plugin whose calls come back `unauthenticated` because the host restarted
    /// or its identity ended; registrations made under an identity the host forgot must be
    /// made again.
    ///
    /// # Errors
    /// As for [`Client::connect`].
    pub async fn rejoin(&self) -> Result<Arc<HandshakeInfo>, Error> {
        let stale = self.handshake_info();
        let _one = self.handshaking.lock().await;
        let now = self.handshake_info();
        // Someone else rejoined while this call waited: that handshake will do.
        if let Some(now) = now
            && stale.as_ref().is_none_or(|stale| !Arc::ptr_eq(stale, &now))
        {
            return Ok(now);
        }
        let before = self.runtime_identity().map(|i| i.runtime_id);
        let info = self.handshake().await?;
        let info = self.store(info);
        // A new identity (the host forgot the old one): what this client registered under
        // the old one is registered again.
        let after = info.identity.as_ref().map(|i| i.runtime_id.clone());
        if after.is_some() && after != before {
            self.register_again().await;
        }
        Ok(info)
    }

    /// Keeps `info` as the handshake's outcome and holds its identity.
    fn store(&self, info: HandshakeInfo) -> Arc<HandshakeInfo> {
        let ttl = info
            .server_metadata
            .get(crate::handshake::TOKEN_TTL_KEY)
            .and_then(|ms| ms.parse::<u64>().ok())
            .map(Duration::from_millis);
        // No identity in the answer (the host would not renew or admit it): hold none, rather
        // than a stale one every call would then try to renew.
        self.held.set(
            info.identity
                .as_ref()
                .map(|identity| (identity.clone(), ttl.map(renew_at))),
        );
        let info = Arc::new(info);
        *self
            .handshake
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Arc::clone(&info));
        info
    }

    async fn handshake(&self) -> Result<HandshakeInfo, Error> {
        let mut client_metadata = self.metadata.clone();
        if self.self_id.is_none() {
            // A token only serves to join: it is not shown to servers this client merely calls.
            client_metadata.remove(crate::handshake::JOIN_TOKEN_KEY);
        }
        client_metadata.insert("client_version".into(), env!("CARGO_PKG_VERSION").into());
        if self.self_id.is_some() && self.joins_own_host {
            // The host this plugin joins (its HOST_URL, and only it) may stop it:
            // PluginControl.Shutdown.
            client_metadata.insert(
                crate::serve::control::CONTROL_TOKEN_KEY.into(),
                crate::serve::control::token().to_owned(),
            );
        }
        let versions: Vec<String> = self
            .app_protocol_versions
            .iter()
            .map(i32::to_string)
            .collect();
        client_metadata.insert(APP_VERSIONS_KEY.into(), versions.join(","));
        let (self_id, self_version) = self.self_id.clone().unwrap_or_default();
        let request = wire::HandshakeRequest {
            core_protocol_version: CORE_PROTOCOL_VERSION,
            app_protocol_version: self
                .app_protocol_versions
                .iter()
                .max()
                .copied()
                .unwrap_or(1),
            magic_cookie_key: self.cookie.0.clone(),
            magic_cookie_value: self.cookie.1.clone(),
            requested_plugins: self.plugins.iter().map(|p| (*p).to_owned()).collect(),
            client_metadata,
            self_id,
            self_version,
        };
        let response = wire::HandshakeServiceClient::new(self.channel.clone())
            .handshake(request)
            .await
            .map_err(|e| {
                let mut out = Error::new(
                    e.code(),
                    format!("handshake failed with {}: {}", self.endpoint, e.message()),
                );
                *out.metadata_mut() = e.metadata().clone();
                out
            })?
            .into_message();
        if response.core_protocol_version != CORE_PROTOCOL_VERSION {
            return Err(Error::new(
                Code::FailedPrecondition,
                format!(
                    "the server speaks core protocol version {}, not {CORE_PROTOCOL_VERSION}",
                    response.core_protocol_version
                ),
            ));
        }
        if !self
            .app_protocol_versions
            .contains(&response.app_protocol_version)
        {
            return Err(Error::new(
                Code::FailedPrecondition,
                format!(
                    "version mismatch: the server chose app protocol version {}, this client speaks {:?}",
                    response.app_protocol_version, self.app_protocol_versions
                ),
            ));
        }
        for wanted in &self.plugins {
            if !response.plugins.iter().any(|p| p.name == *wanted) {
                return Err(Error::new(
                    Code::FailedPrecondition,
                    format!(
                        "requested plugin {wanted:?} not available on server {}",
                        self.endpoint
                    ),
                ));
            }
        }
        let identity = (!response.runtime_id.is_empty()).then_some(RuntimeIdentity {
            runtime_id: response.runtime_id,
            token: response.runtime_token,
        });
        Ok(HandshakeInfo {
            app_protocol_version: response.app_protocol_version,
            plugins: response.plugins,
            server_metadata: response.server_metadata,
            host_capabilities: response.host_capabilities,
            identity,
        })
    }

    /// A typed client of plugin `P`, after making sure the server serves it.
    ///
    /// # Errors
    /// `not_found` if `P` was not requested in the [`ClientConfig`] or the server does not
    /// serve it; connection and handshake errors.
    pub async fn dispense<P: Plugin>(&self) -> Result<P::Client, Error> {
        let handshake = self.connect().await?;
        if !handshake.plugins.iter().any(|p| p.name == P::NAME) {
            return Err(Error::not_found(format!(
                "plugin {:?} is not available: request it with ClientConfig::plugin::<{}>() (the server confirmed {:?})",
                P::NAME,
                std::any::type_name::<P>()
                    .rsplit("::")
                    .next()
                    .unwrap_or_default(),
                handshake
                    .plugins
                    .iter()
                    .map(|p| p.name.as_str())
                    .collect::<Vec<_>>()
            )));
        }
        Ok(P::client(self.channel.clone()))
    }

    /// The channel to the server.
    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// The handshake's outcome, once connected (the latest, after a renewal or a rejoin).
    pub fn handshake_info(&self) -> Option<Arc<HandshakeInfo>> {
        self.handshake
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The runtime identity this client holds now, once connected with a `self_id`.
    pub fn runtime_identity(&self) -> Option<RuntimeIdentity> {
        self.held.get().map(|(identity, _)| identity)
    }

    /// A request carrying this client's runtime identity, for calls to the host's registry
    /// and lifecycle services.
    ///
    /// # Errors
    /// `failed_precondition` without a runtime identity (set [`ClientConfig::self_id`]).
    pub async fn authenticated<T>(&self, message: T) -> Result<Request<T>, Error> {
        let identity = self.identity("this call").await?;
        let mut request = Request::new(message);
        identity.apply(request.metadata_mut());
        Ok(request)
    }

    /// The runtime identity the handshake issued, or an error that says why there is none.
    pub(crate) async fn identity(&self, what: &str) -> Result<RuntimeIdentity, Error> {
        self.connect().await?;
        if let Some((identity, renew_at)) = self.held.get() {
            if renew_at.is_none_or(|at| Instant::now() < at) || self.self_id.is_none() {
                return Ok(identity);
            }
            // Due for renewal; if it fails the token still works until it expires.
            match self.rejoin().await {
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(host = %self.endpoint, "renewing the runtime token failed: {error}")
                }
            }
            if let Some((identity, _)) = self.held.get() {
                return Ok(identity);
            }
        }
        let why = if self.self_id.is_none() {
            "set ClientConfig::self_id".to_owned()
        } else {
            format!(
                "the host at {} issued none: it admits plugins that present a join token \
                 (ClientConfig::join_token, or {} set by the host that launched this plugin)",
                self.endpoint,
                crate::handshake::JOIN_TOKEN_ENV
            )
        };
        Err(Error::new(
            Code::FailedPrecondition,
            format!("{what} needs a runtime identity: {why}"),
        ))
    }

    /// Closes the client: later calls to [`Client::connect`] and [`Client::dispense`] fail.
    /// Typed clients already dispensed keep their channel until dropped.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }

    /// The negotiated app protocol version, once connected.
    pub fn app_protocol_version(&self) -> Option<i32> {
        self.handshake_info().map(|h| h.app_protocol_version)
    }
}

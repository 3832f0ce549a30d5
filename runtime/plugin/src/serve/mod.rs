//! [`serve()`]: the one call a plugin process makes to serve.
//!
//! Besides the configured plugins it serves the handshake and health checking
//! (`HealthService`, `/healthz`, `/readyz`). It binds `ServeConfig::addr`, else
//! `127.0.0.1:$PORT` (`PORT` defaulting to 8080 like connect-plugin-go's examples; `PORT=0`
//! picks a free port), announces readiness on stdout with the [`readiness`] line, and serves
//! until the stop signal: the one configured, else SIGINT/SIGTERM, or, when a host launched
//! the process, the host closing its stdin (which also happens when the host dies, so plugins
//! never outlive their host).
//!
//! Shutdown is graceful: readiness flips to `NOT_SERVING` first, in-flight calls drain within
//! the shutdown timeout, then the cleanup hook runs.
//!
//! This module knows no host part: a process that is also a host (a service registry, a
//! capability broker) gets them from [`crate::host`], which adds them to a [`ServeConfig`]
//! through `HostParts` (`ServeConfig::registry`, `ServeConfig::broker`).

use std::collections::HashMap;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::handshake::{HandshakeServer, JoinHook, JoinPolicy};
use crate::health::HealthServer;
use crate::identity::{DEFAULT_TOKEN_TTL, IdentityStore};
use crate::plugin::{MAGIC_COOKIE_KEY, MAGIC_COOKIE_VALUE, PluginServer, PluginSet};
use crate::proto::connectplugin::health::v1::{HealthServiceServer, ServingStatus};
use crate::proto::connectplugin::v1::{self as wire, HandshakeServiceServer};
use crate::rpc::__private::{self as rpc_private, RawHandler};
use crate::rpc::tls::ServerTls;
use crate::rpc::{Server, Service};
use crate::{Code, Error};

pub mod control;
pub mod host_only;
pub mod readiness;

type Hook = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// Adds a host part's services and routes to the server, given the server's identity store;
/// may start background tasks, which are stopped when serving ends.
pub(crate) type Mount = Box<
    dyn FnOnce(Server, &Arc<IdentityStore>, &mut Vec<tokio::task::JoinHandle<()>>) -> Server + Send,
>;

/// What a host adds to [`serve()`]; [`crate::host`] fills it, a plugin process leaves it empty.
#[derive(Default)]
pub(crate) struct HostParts {
    /// Lists the capabilities offered in every handshake.
    pub(crate) capabilities: Option<Arc<dyn Fn() -> Vec<wire::Capability> + Send + Sync>>,
    /// Told of every runtime identity the handshake issues.
    pub(crate) on_join: Option<JoinHook>,
    /// Services, routes and tasks to add.
    pub(crate) mounts: Vec<Mount>,
}

/// What [`serve`] serves, and how. Every setting has connect-plugin-go's default.
pub struct ServeConfig {
    plugins: Vec<PluginServer>,
    services: Vec<Service>,
    addr: Option<SocketAddr>,
    listener: Option<TcpListener>,
    app_protocol_versions: Vec<i32>,
    cookie: (String, String),
    server_metadata: HashMap<String, String>,
    health: HealthServer,
    join: JoinPolicy,
    host: HostParts,
    token_ttl: Duration,
    max_message_size: Option<usize>,
    shutdown_timeout: Duration,
    tls: Option<ServerTls>,
    cleanup: Option<Hook>,
    stop: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    announce: bool,
    memory: Option<tokio::sync::mpsc::Receiver<tokio::io::DuplexStream>>,
    interceptors: Vec<Box<dyn FnOnce(Server) -> Server + Send>>,
}

impl std::fmt::Debug for ServeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeConfig")
            .field(
                "plugins",
                &self
                    .plugins
                    .iter()
                    .map(PluginServer::name)
                    .collect::<Vec<_>>(),
            )
            .field("addr", &self.addr)
            .field("app_protocol_versions", &self.app_protocol_versions)
            .finish_non_exhaustive()
    }
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl ServeConfig {
    /// An empty configuration: app protocol version 1, the default magic cookie, 24 h runtime
    /// tokens, a 30 s shutdown timeout.
    pub fn new() -> Self {
        Self {
            plugins: Vec::new(),
            services: Vec::new(),
            addr: None,
            listener: None,
            app_protocol_versions: vec![1],
            cookie: (MAGIC_COOKIE_KEY.to_owned(), MAGIC_COOKIE_VALUE.to_owned()),
            server_metadata: HashMap::new(),
            health: HealthServer::new(),
            join: JoinPolicy::new(),
            host: HostParts::default(),
            token_ttl: DEFAULT_TOKEN_TTL,
            max_message_size: None,
            shutdown_timeout: Duration::from_secs(30),
            tls: None,
            cleanup: None,
            stop: None,
            announce: true,
            memory: None,
            interceptors: Vec::new(),
        }
    }

    /// Adds a plugin, as built by a generated `<Service>Plugin::server(impl)`.
    #[must_use]
    pub fn plugin(mut self, plugin: PluginServer) -> Self {
        self.plugins.push(plugin);
        self
    }

    /// Adds a plain Connect service that is not a plugin.
    #[must_use]
    pub fn service(mut self, service: Service) -> Self {
        self.services.push(service);
        self
    }

    /// Listens on `addr` instead of `127.0.0.1:$PORT`.
    #[must_use]
    pub fn addr(mut self, addr: SocketAddr) -> Self {
        self.addr = Some(addr);
        self
    }

    /// Serves in-memory connections instead of a socket (the in-memory launch strategy).
    pub(crate) fn in_memory(
        mut self,
        incoming: tokio::sync::mpsc::Receiver<tokio::io::DuplexStream>,
    ) -> Self {
        self.memory = Some(incoming);
        self.announce = false;
        self
    }

    /// Whether to print the readiness line on stdout (default: yes, except with
    /// [`ServeConfig::listener`]; a plugin that binds its own listener to learn its URL
    /// before serving turns it back on so its host still sees it ready).
    #[must_use]
    pub fn announce_readiness(mut self, announce: bool) -> Self {
        self.announce = announce;
        self
    }

    /// Serves on an already bound listener (and does not print the readiness line).
    #[must_use]
    pub fn listener(mut self, listener: TcpListener) -> Self {
        self.listener = Some(listener);
        self.announce = false;
        self
    }

    /// The application protocol version (default 1).
    #[must_use]
    pub fn app_protocol_version(self, version: i32) -> Self {
        self.app_protocol_versions(vec![version])
    }

    /// Every application protocol version this process speaks; the handshake picks the
    /// highest one the client speaks too.
    #[must_use]
    pub fn app_protocol_versions(mut self, versions: Vec<i32>) -> Self {
        self.app_protocol_versions = versions;
        self
    }

    /// The magic cookie clients must present (default: connect-plugin-go's).
    #[must_use]
    pub fn magic_cookie(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.cookie = (key.into(), value.into());
        self
    }

    /// Metadata returned in every handshake.
    #[must_use]
    pub fn server_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.server_metadata.insert(key.into(), value.into());
        self
    }

    /// The health server to report through (one is created by default; pass a clone of yours
    /// to change statuses while serving).
    #[must_use]
    pub fn health(mut self, health: HealthServer) -> Self {
        self.health = health;
        self
    }

    /// Who gets a runtime identity in the handshake (default: only holders of a join token;
    /// see [`JoinPolicy`]). [`ServeConfig::registry`] sets the registry's policy.
    #[must_use]
    pub fn join_policy(mut self, policy: JoinPolicy) -> Self {
        self.join = policy;
        self
    }

    /// The host parts to serve (set by [`crate::host`]).
    pub(crate) fn host_parts(&mut self) -> &mut HostParts {
        &mut self.host
    }

    /// How long runtime tokens issued in handshakes live (default 24 h).
    #[must_use]
    pub fn runtime_token_ttl(mut self, ttl: Duration) -> Self {
        self.token_ttl = ttl;
        self
    }

    /// The largest request message accepted (default 4 MiB).
    #[must_use]
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = Some(bytes);
        self
    }

    /// How long shutdown waits for in-flight calls (default 30 s).
    #[must_use]
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// Adds a server interceptor run before every call's handler (authentication, rate
    /// limiting: [`crate::rpc::policy`]); they run in the order added. They see every
    /// Connect procedure this process serves, the handshake and health included (open those a
    /// caller without credentials must reach with `Auth::open`), but not the plain HTTP
    /// routes: `/healthz`, `/readyz` and a host's `/services/` and `/capabilities/` proxies.
    #[must_use]
    pub fn intercept(mut self, interceptor: impl crate::rpc::server::ServerInterceptor) -> Self {
        self.interceptors.push(Box::new(move |server: Server| {
            server.intercept(interceptor)
        }));
        self
    }

    /// Serves over TLS.
    #[must_use]
    pub fn tls(mut self, tls: ServerTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Runs after the server has drained, before [`serve`] returns.
    #[must_use]
    pub fn cleanup<F, Fut>(mut self, hook: F) -> Self
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.cleanup = Some(Box::new(move || Box::pin(hook())));
        self
    }

    /// Stops when `signal` completes, instead of on SIGINT/SIGTERM/stdin closing.
    #[must_use]
    pub fn stop_signal(mut self, signal: impl Future<Output = ()> + Send + 'static) -> Self {
        self.stop = Some(Box::pin(signal));
        self
    }
}

/// The address from the environment: `$LISTEN_HOST:$PORT`, with `LISTEN_HOST` defaulting to
/// `127.0.0.1` (set `0.0.0.0` in containers) and `PORT` to 8080.
///
/// # Errors
/// `invalid_argument` if `PORT` or `LISTEN_HOST` is set but invalid.
pub fn addr_from_env() -> Result<SocketAddr, Error> {
    let ip = match std::env::var("LISTEN_HOST") {
        Err(_) => std::net::IpAddr::from(Ipv4Addr::LOCALHOST),
        Ok(text) => text.trim().parse().map_err(|_| {
            Error::invalid_argument(format!(
                "LISTEN_HOST={text:?} is not an IP address (e.g. 127.0.0.1, or 0.0.0.0 for every interface)"
            ))
        })?,
    };
    let port = match std::env::var("PORT") {
        Err(_) => 8080,
        Ok(text) => text.trim().parse::<u16>().map_err(|_| {
            Error::invalid_argument(format!(
                "PORT={text:?} is not a port number (0-65535; 0 picks a free port)"
            ))
        })?,
    };
    Ok(SocketAddr::from((ip, port)))
}

/// TLS settings from the environment: the PEM certificate chain in the file `TLS_CERT_FILE`
/// and its key in `TLS_KEY_FILE`; `None` when neither is set (serve cleartext). For plugins
/// that serve beyond loopback (containers, other machines).
///
/// # Errors
/// `invalid_argument` when only one is set, a file cannot be read, or the PEM is unusable.
pub fn tls_from_env() -> Result<Option<ServerTls>, Error> {
    let (cert, key) = match (
        std::env::var_os("TLS_CERT_FILE"),
        std::env::var_os("TLS_KEY_FILE"),
    ) {
        (None, None) => return Ok(None),
        (Some(cert), Some(key)) => (cert, key),
        _ => {
            return Err(Error::invalid_argument(
                "set both TLS_CERT_FILE and TLS_KEY_FILE (PEM files) to serve TLS, or neither",
            ));
        }
    };
    let read = |path: &std::ffi::OsStr, what: &str| {
        std::fs::read(path).map_err(|e| {
            Error::invalid_argument(format!(
                "{what}: cannot read {}: {e}",
                std::path::Path::new(path).display()
            ))
        })
    };
    ServerTls::from_pem(&read(&cert, "TLS_CERT_FILE")?, &read(&key, "TLS_KEY_FILE")?).map(Some)
}

fn probe(health: &HealthServer) -> RawHandler {
    let health = health.clone();
    Arc::new(move |request: http::Request<rpc_private::RecvBody>| {
        let answer = health
            .probe(request.uri().path())
            .unwrap_or((404, "not found"));
        Box::pin(async move {
            let mut response = http::Response::new(rpc_private::Body::full(answer.1));
            *response.status_mut() =
                http::StatusCode::from_u16(answer.0).unwrap_or(http::StatusCode::OK);
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain"),
            );
            response
        })
    })
}

/// Serves the configured plugins until the process is told to stop (see the module docs).
///
/// # Errors
/// `invalid_argument` for a bad plugin set or `PORT`; `unavailable` if the address cannot be
/// bound.
pub async fn serve(config: ServeConfig) -> Result<(), Error> {
    let ServeConfig {
        plugins,
        services,
        addr,
        listener,
        app_protocol_versions,
        cookie,
        mut server_metadata,
        health,
        join,
        host,
        token_ttl,
        max_message_size,
        shutdown_timeout,
        tls,
        cleanup,
        stop,
        announce,
        memory,
        interceptors,
    } = config;
    let mut set = PluginSet::new();
    for plugin in plugins {
        set.add(plugin)?;
    }
    if set.is_empty() && services.is_empty() && host.mounts.is_empty() {
        return Err(Error::invalid_argument(
            "nothing to serve: add a plugin with ServeConfig::plugin(MyPlugin::server(my_impl))",
        ));
    }
    if app_protocol_versions.is_empty() {
        return Err(Error::invalid_argument(
            "app_protocol_versions must not be empty",
        ));
    }
    let (incoming, local) = bind(memory, listener, addr).await?;
    let where_ = local.map_or_else(|| "memory".to_owned(), |a| a.to_string());

    let identities = Arc::new(IdentityStore::new(token_ttl));
    server_metadata
        .entry("server_version".to_owned())
        .or_insert_with(|| env!("CARGO_PKG_VERSION").to_owned());
    let names: Vec<String> = set.names().map(str::to_owned).collect();
    let mut server = Server::new().shutdown_timeout(shutdown_timeout);
    if let Some(max) = max_message_size {
        server = server.max_message_size(max);
    }
    if let Some(tls) = tls {
        server = server.tls(tls);
    }
    for intercept in interceptors {
        server = intercept(server);
    }
    let mut infos = Vec::new();
    for (metadata, service) in set.into_parts() {
        health.set_status(&metadata.service_path, ServingStatus::Serving);
        // connect-plugin-go's clients check a plugin's health by its name.
        health.alias(&metadata.name, &metadata.service_path);
        infos.push(metadata.info());
        server = server.add_service(service);
    }
    for service in services {
        server = server.add_service(service);
    }
    let mut tasks = Vec::new();
    for mount in host.mounts {
        server = mount(server, &identities, &mut tasks);
    }
    let handshake = HandshakeServer {
        app_versions: app_protocol_versions,
        cookie_key: cookie.0,
        cookie_value: cookie.1,
        server_metadata,
        plugins: infos,
        capabilities: host.capabilities.unwrap_or_else(|| Arc::new(Vec::new)),
        identities: Arc::clone(&identities),
        join: join.clone(),
        on_join: host.on_join,
    };
    let control_stop = Arc::new(tokio::sync::Notify::new());
    let (grace, grace_given) = tokio::sync::watch::channel(None);
    server = server
        .add_service(HandshakeServiceServer::new(handshake).into_service())
        .add_service(HealthServiceServer::new(health.clone()).into_service())
        .add_service(
            wire::PluginControlServer::new(control::Control::new(
                health.clone(),
                Arc::clone(&control_stop),
                grace,
            ))
            .into_service(),
        );
    server = rpc_private::route_raw(server, "/healthz", probe(&health));
    server = rpc_private::route_raw(server, "/readyz", probe(&health));

    tasks.push(sweep(Arc::clone(&identities), token_ttl));

    let launched = std::env::var(readiness::LAUNCHED_ENV).is_ok_and(|v| v == MAGIC_COOKIE_VALUE);
    // Launched with a launch secret: the server the launcher is told about (the one that
    // announces readiness) answers only the host that launched us. Other servers of this
    // process (in-memory plugins, a host of its own) are not the launcher's to guard.
    if let (true, true, Some(_), Some(secret)) = (launched, announce, local, host_only::from_env())
    {
        server = rpc_private::guard(server, host_only::guard(secret));
    }
    if let (true, Some(local)) = (announce, local) {
        readiness::announce_ready(local)
            .map_err(|e| Error::internal(format!("writing the readiness line to stdout: {e}")))?;
    }
    tracing::info!(address = %where_, plugins = ?names, "listening");
    if let Some(local) = local
        && !local.ip().is_loopback()
        && !server.has_tls()
    {
        tracing::warn!(
            address = %local,
            "serving cleartext on a non-loopback address: calls, runtime tokens and join tokens cross the network unencrypted; configure TLS (ServeConfig::tls)"
        );
    }
    if join.is_open() {
        tracing::warn!(address = %where_, "serving with open joining");
    }
    let stop = async {
        let asked = async {
            match stop {
                Some(stop) => stop.await,
                None => stop_signal(launched).await,
            }
        };
        tokio::select! {
            () = asked => {}
            () = control_stop.notified() => {}
        }
        // Readiness flips first, so load balancers and hosts stop sending new calls.
        health.shutdown();
    };
    let serving = async {
        match incoming {
            Incoming::Tcp(listener) => server.serve_with_shutdown(listener, stop).await,
            Incoming::Memory(pipes) => rpc_private::serve_memory(server, pipes, stop).await,
        }
    };
    // A host that stops the plugin with a grace period shorter than the drain gets it kept.
    let served = tokio::select! {
        served = serving => served,
        () = control::grace_over(grace_given) => Ok(()),
    };
    for task in tasks {
        task.abort();
    }
    if let Some(cleanup) = cleanup {
        cleanup().await;
    }
    served.map_err(|e| Error::new(Code::Internal, format!("serving on {where_}: {e}")))?;
    tracing::info!(address = %where_, "stopped");
    Ok(())
}

/// Binds where [`serve()`] accepts connections: in-memory pipes, the given listener, the
/// configured address or `$LISTEN_HOST:$PORT`; with the bound address, if any.
async fn bind(
    memory: Option<tokio::sync::mpsc::Receiver<tokio::io::DuplexStream>>,
    listener: Option<TcpListener>,
    addr: Option<SocketAddr>,
) -> Result<(Incoming, Option<SocketAddr>), Error> {
    let listener = match (memory, listener) {
        (Some(memory), _) => return Ok((Incoming::Memory(memory), None)),
        (None, Some(listener)) => listener,
        (None, None) => {
            let addr = match addr {
                Some(addr) => addr,
                None => addr_from_env()?,
            };
            crate::rpc::server::listen(addr).await.map_err(|e| {
                Error::unavailable(format!(
                    "cannot listen on {addr}: {e} (set PORT to a free port, or PORT=0 for any)"
                ))
            })?
        }
    };
    let local = listener
        .local_addr()
        .map_err(|e| Error::internal(format!("reading the bound address: {e}")))?;
    Ok((Incoming::Tcp(listener), Some(local)))
}

/// Sweeps expired runtime identities (not only dropped when next used) until aborted.
fn sweep(identities: Arc<IdentityStore>, ttl: Duration) -> tokio::task::JoinHandle<()> {
    let every = ttl.clamp(Duration::from_secs(1), Duration::from_secs(60));
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        loop {
            ticks.tick().await;
            identities.sweep();
        }
    })
}

/// Where [`serve()`] accepts connections.
enum Incoming {
    Tcp(TcpListener),
    Memory(tokio::sync::mpsc::Receiver<tokio::io::DuplexStream>),
}

/// Completes on SIGINT or SIGTERM, or when stdin closes if a host launched us.
async fn stop_signal(launched: bool) {
    let stdin_closed = async {
        if !launched {
            return std::future::pending().await;
        }
        // A thread of its own, not the runtime's blocking pool: a read blocked on stdin must
        // not keep the process alive once serving ended for another reason (a SIGTERM, the
        // host's PluginControl.Shutdown), as a runtime waits for its blocking tasks.
        let (closed, on_close) = tokio::sync::oneshot::channel::<()>();
        let watcher = std::thread::Builder::new()
            .name("stdin-watch".into())
            .spawn(move || {
                use std::io::Read as _;
                let mut stdin = std::io::stdin();
                let mut buf = [0u8; 64];
                // Anything the host writes is ignored; end of file (or an error) means "stop".
                loop {
                    match stdin.read(&mut buf) {
                        Ok(n) if n > 0 => {}
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        _ => break,
                    }
                }
                let _ = closed.send(());
            });
        if watcher.is_err() || on_close.await.is_err() {
            return std::future::pending().await;
        }
        tracing::info!("host closed stdin; shutting down");
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sig) => {
                sig.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        () = stdin_closed => {}
        () = terminate => tracing::info!("SIGTERM; shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT; shutting down"),
    }
}

//! The platform example (deployment model B, self-registering plugins): a host with a service
//! registry and three plugins, each its own process:
//!
//! - `logger-plugin` provides `logger` (`capability.logger.v1.Logger`);
//! - `cache-plugin` provides `cache` (`cache.v1.CacheService`) and logs every change through a
//!   logger it finds with the registry, called through the host;
//! - `app-plugin` requires `cache`, which it calls through the host.
//!
//! `platform-host` computes the startup order from the dependency graph, launches the plugins
//! in it (with `HOST_URL` set), waits for each to register, and shows what the app did.

#[path = "gen/mod.rs"]
mod generated;

use std::collections::HashMap;

use connect_plugin::deploy::assigned::AssignedIdentity;
use connect_plugin::proto::connectplugin::v1::RegisterServiceRequest;
use connect_plugin::{Client, ClientConfig, Error, ServeConfig};

pub use generated::cache::v1 as cache;

/// Logs to stderr (the host forwards plugins' stderr into its log).
pub fn init_tracing() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false)
        .without_time()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
}

/// The host's URL, from `HOST_URL`.
///
/// # Errors
/// `failed_precondition` when it is not set.
pub fn host_url() -> Result<String, Error> {
    std::env::var("HOST_URL").map_err(|_| {
        Error::new(
            connect_plugin::Code::FailedPrecondition,
            "HOST_URL is not set: this plugin registers with a host (run platform-host)",
        )
    })
}

/// Serves `config` on `$LISTEN_HOST:$PORT`, announcing readiness; returns the URL the host
/// should call this plugin at (`ADVERTISE_URL`, else the bound address) and the serving task.
///
/// # Errors
/// When the address cannot be bound.
pub async fn serve_plugin(
    config: ServeConfig,
) -> Result<(String, tokio::task::JoinHandle<Result<(), Error>>), Error> {
    let addr = connect_plugin::serve::addr_from_env()?;
    let listener = connect_plugin::rpc::server::listen(addr)
        .await
        .map_err(|e| Error::unavailable(format!("cannot listen on {addr}: {e}")))?;
    let local = listener
        .local_addr()
        .map_err(|e| Error::internal(format!("reading the bound address: {e}")))?;
    // TLS_CERT_FILE and TLS_KEY_FILE serve TLS (beyond loopback, plugins should).
    let (config, scheme) = match connect_plugin::serve::tls_from_env()? {
        Some(tls) => (config.tls(tls), "https"),
        None => (config, "http"),
    };
    let server = tokio::spawn(connect_plugin::serve(
        config.listener(listener).announce_readiness(true),
    ));
    // In containers the bound address is not what the host can reach: ADVERTISE_URL says.
    let url = std::env::var("ADVERTISE_URL").unwrap_or_else(|_| format!("{scheme}://{local}"));
    Ok((url, server))
}

/// Introduces this plugin to the host as `name`, declaring the service types it provides.
///
/// # Errors
/// When `HOST_URL` is missing or invalid.
pub fn join_host(name: &str, provides: &[(&str, &str)]) -> Result<Client, Error> {
    Client::new(
        ClientConfig::new(host_url()?)
            .self_id(name, env!("CARGO_PKG_VERSION"))
            .provides(provides.iter().map(|(t, _)| *t)),
    )
}

/// The client to this plugin's host: with `HOST_URL`, joins that host as `name` (deployment
/// model B, [`join_host`]); without, waits until a host manages this plugin through `managed`
/// (model A) and uses the URL and identity it assigned.
///
/// # Errors
/// When the host URL is invalid.
pub async fn connect_host(
    name: &str,
    provides: &[(&str, &str)],
    managed: &AssignedIdentity,
) -> Result<Client, Error> {
    if std::env::var_os("HOST_URL").is_some() {
        return join_host(name, provides);
    }
    tracing::info!("no HOST_URL: waiting for a host to manage {name}");
    let assignment = managed.assigned().await;
    Client::with_identity(ClientConfig::new(&assignment.host_url), assignment.identity)
}

/// Registers each `(service type, endpoint path)` as served at `url`.
///
/// # Errors
/// Handshake or registration failures.
pub async fn register(host: &Client, provides: &[(&str, &str)], url: &str) -> Result<(), Error> {
    for (service_type, endpoint_path) in provides {
        let registration = RegisterServiceRequest {
            service_type: (*service_type).to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            endpoint_path: (*endpoint_path).to_owned(),
            metadata: HashMap::from([("base_url".to_owned(), url.to_owned())]),
        };
        // Remembered by the client: registered again if the host restarts.
        host.register(registration).await?;
    }
    tracing::info!(%url, "registered with the host");
    Ok(())
}

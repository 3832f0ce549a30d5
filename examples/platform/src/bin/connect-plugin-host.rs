//! `connect-plugin-host`: a packaged plugin host configured from a JSON file.
//!
//! ```text
//! connect-plugin-host examples/platform/host.json
//! ```
//!
//! It serves the registry, routing, lifecycle and (optionally) the logger capability, starts
//! the configured plugins in dependency order (self-registering, or platform-managed with
//! `"managed": true`), prints `ready <url>`, and runs until SIGINT or SIGTERM, then stops the
//! plugins, dependents first. Relative plugin paths are resolved against the config file.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use connect_plugin::host::Host;
use connect_plugin::host::depgraph::{DependencyGraph, PluginNode};
use connect_plugin::host::platform::PluginSpec;
use connect_plugin::rpc::policy::RateLimit;
use connect_plugin::rpc::tls::{ClientAuth, ClientTls, ServerTls};
use connect_plugin::{
    CapabilityBroker, LaunchConfig, host::broker::TracingLogger, plugin::ServiceDependency,
    process::RestartPolicy,
};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    addr: Option<std::net::SocketAddr>,
    #[serde(default)]
    lease_seconds: Option<u64>,
    #[serde(default)]
    logger_capability: bool,
    /// Upstream-compatible joining: any local process with the magic cookie may join and
    /// declare what it provides. Off by default; logs a warning when on.
    #[serde(default)]
    open_registration: bool,
    /// Join tokens for plugins that start on their own (deployment model B). Plugins this
    /// host launches get a token of their own automatically.
    #[serde(default)]
    join_tokens: Vec<JoinToken>,
    /// Plugins admitted by a client certificate naming them (needs `tls.client_ca`).
    #[serde(default)]
    join_certificates: Vec<JoinCertificate>,
    /// Serve over TLS, or mutual TLS with `client_ca`.
    #[serde(default)]
    tls: Option<TlsConfig>,
    /// Limit the calls each plugin routes through the host.
    #[serde(default)]
    routed_rate_limit: Option<RateLimitConfig>,
    plugins: Vec<PluginConfig>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsConfig {
    /// PEM certificate chain file (leaf first), relative to the config file.
    cert: PathBuf,
    /// PEM private key file.
    key: PathBuf,
    /// PEM CA certificates client certificates must be signed by (mutual TLS).
    #[serde(default)]
    client_ca: Option<PathBuf>,
    /// With `client_ca`: `"required"` (every client presents a certificate) or `"optional"`
    /// (the default: plugins this host launches join with their tokens instead).
    #[serde(default)]
    client_auth: Option<String>,
    /// The URL plugins reach the host at, when it is not `https://<addr>` (a name in the
    /// certificate).
    #[serde(default)]
    advertise_url: Option<String>,
    /// PEM CA certificates of providers registered at `https://` base URLs.
    #[serde(default)]
    provider_ca: Option<PathBuf>,
    /// PEM CA certificates the plugins this host launches verify it with (default: the
    /// certificates in `cert`, which must then include the root).
    #[serde(default)]
    plugin_ca: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RateLimitConfig {
    per_second: f64,
    burst: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JoinCertificate {
    /// The plugin's `self_id`, which its certificate must name (DNS subject alt name).
    plugin: String,
    /// The service types it may provide.
    #[serde(default)]
    provides: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JoinToken {
    /// The plugin's `self_id`; absent for a token shared by several plugins.
    #[serde(default)]
    plugin: Option<String>,
    /// The token itself, or
    #[serde(default)]
    token: Option<String>,
    /// the environment variable of this host holding it (keeps secrets out of the file).
    #[serde(default)]
    token_env: Option<String>,
    /// The service types it may provide.
    #[serde(default)]
    provides: Vec<String>,
    /// The base URLs it may register (when it does not serve at the address it calls the
    /// host from: a container name, a Service). Default: its own address.
    #[serde(default)]
    addresses: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PluginConfig {
    name: String,
    path: PathBuf,
    #[serde(default)]
    provides: Vec<Provided>,
    #[serde(default)]
    requires: Vec<String>,
    #[serde(default)]
    managed: bool,
    #[serde(default)]
    checksum: Option<String>,
    /// How a crashed plugin is started again (default: up to 5 times, 100 ms backoff doubling
    /// to 10 s; `"max_restarts": 0` never).
    #[serde(default)]
    restart: Option<RestartConfig>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RestartConfig {
    max_restarts: u32,
    #[serde(default = "default_initial_backoff_ms")]
    initial_backoff_ms: u64,
    #[serde(default = "default_max_backoff_ms")]
    max_backoff_ms: u64,
}

fn default_initial_backoff_ms() -> u64 {
    100
}

fn default_max_backoff_ms() -> u64 {
    10_000
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Provided {
    r#type: String,
    version: String,
}

#[tokio::main]
async fn main() -> ExitCode {
    platform::init_tracing();
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("connect-plugin-host: {error}");
            ExitCode::FAILURE
        }
    }
}

fn load(path: &Path) -> Result<Config, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .ok_or("usage: connect-plugin-host <config.json>")?;
    let config = load(&path)?;
    let base = path.parent().unwrap_or(Path::new("."));

    let mut builder = Host::builder();
    if let Some(addr) = config.addr {
        builder = builder.addr(addr);
    }
    if let Some(seconds) = config.lease_seconds {
        builder = builder.lease(Duration::from_secs(seconds));
    }
    if config.logger_capability {
        builder = builder.broker(CapabilityBroker::new().capability(TracingLogger::definition())?);
    }
    if let Some(tls) = &config.tls {
        let read = |file: &PathBuf, what: &str| {
            let path = if file.is_absolute() {
                file.clone()
            } else {
                base.join(file)
            };
            std::fs::read(&path)
                .map_err(|e| format!("tls.{what}: cannot read {}: {e}", path.display()))
        };
        let (cert, key) = (read(&tls.cert, "cert")?, read(&tls.key, "key")?);
        let server_tls = match &tls.client_ca {
            None => ServerTls::from_pem(&cert, &key),
            Some(ca) => {
                let auth = match tls.client_auth.as_deref() {
                    None | Some("optional") => ClientAuth::Optional,
                    Some("required") => ClientAuth::Required,
                    Some(other) => {
                        return Err(format!(
                            "tls.client_auth: {other:?} is neither \"required\" nor \"optional\""
                        )
                        .into());
                    }
                };
                ServerTls::mutual_from_pem(&cert, &key, &read(ca, "client_ca")?, auth)
            }
        }
        .map_err(|e| format!("tls: {}", e.message()))?;
        // Launched plugins verify the host with `plugin_ca`, else with the chain's certificates.
        let plugin_ca = match &tls.plugin_ca {
            Some(file) => read(file, "plugin_ca")?,
            None => cert.clone(),
        };
        builder = builder
            .tls(server_tls)
            .plugin_trust_pem(String::from_utf8_lossy(&plugin_ca).into_owned());
        if let Some(url) = &tls.advertise_url {
            builder = builder.advertise_url(url);
        }
        if let Some(ca) = &tls.provider_ca {
            let trust = ClientTls::with_root_certificates_pem(&read(ca, "provider_ca")?)
                .map_err(|e| format!("tls.provider_ca: {}", e.message()))?;
            builder = builder.provider_tls(trust);
        }
    }
    if !config.join_certificates.is_empty()
        && config.tls.as_ref().is_none_or(|t| t.client_ca.is_none())
    {
        return Err("join_certificates need mutual TLS: set tls.client_ca".into());
    }
    let host = builder.start().await?;
    if let Some(limit) = &config.routed_rate_limit {
        host.registry()
            .set_routed_rate_limit(RateLimit::per_second(limit.per_second, limit.burst));
    }
    let joining = host.registry().join_policy();
    joining.set_open(config.open_registration);
    for (i, join) in config.join_tokens.iter().enumerate() {
        let token = match (&join.token, &join.token_env) {
            (Some(token), None) => token.clone(),
            (None, Some(var)) => std::env::var(var)
                .map_err(|_| format!("join_tokens[{i}]: environment variable {var} is not set"))?,
            _ => {
                return Err(format!(
                    "join_tokens[{i}]: give exactly one of \"token\" and \"token_env\""
                )
                .into());
            }
        };
        joining
            .allow(
                join.plugin.as_deref(),
                &token,
                join.provides.iter().cloned(),
            )
            .map_err(|e| format!("join_tokens[{i}]: {}", e.message()))?;
        if !join.addresses.is_empty() {
            joining
                .allow_addresses(&token, join.addresses.iter().cloned())
                .map_err(|e| format!("join_tokens[{i}].addresses: {}", e.message()))?;
        }
    }
    for (i, join) in config.join_certificates.iter().enumerate() {
        joining
            .allow_certificate(&join.plugin, join.provides.iter().cloned())
            .map_err(|e| format!("join_certificates[{i}]: {}", e.message()))?;
    }

    let dependency = |service_type: &String| ServiceDependency {
        service_type: service_type.clone(),
        min_version: String::new(),
        required_for_startup: true,
        watch_for_changes: true,
    };
    let mut graph = DependencyGraph::new();
    for plugin in &config.plugins {
        graph.add(PluginNode {
            id: plugin.name.clone(),
            provides: plugin
                .provides
                .iter()
                .map(|p| (p.r#type.clone(), p.version.clone()))
                .collect(),
            requires: plugin.requires.iter().map(dependency).collect(),
        });
    }
    let order = graph.startup_order()?;
    for name in &order {
        let Some(plugin) = config.plugins.iter().find(|p| &p.name == name) else {
            continue;
        };
        let program = if plugin.path.is_absolute() {
            plugin.path.clone()
        } else {
            base.join(&plugin.path)
        };
        let mut launch = LaunchConfig::new(name.clone(), program);
        // Operators' tokens stay with the host: no plugin sees another's.
        for var in config
            .join_tokens
            .iter()
            .filter_map(|j| j.token_env.as_ref())
        {
            launch = launch.env_remove(var);
        }
        if let Some(sum) = &plugin.checksum {
            launch = launch.checksum(sum);
        }
        // The host heals: a crashed plugin is withdrawn at once and started again.
        let restart = plugin.restart.as_ref().map_or(
            RestartPolicy::with_backoff(5, Duration::from_millis(100), Duration::from_secs(10)),
            |r| {
                RestartPolicy::with_backoff(
                    r.max_restarts,
                    Duration::from_millis(r.initial_backoff_ms),
                    Duration::from_millis(r.max_backoff_ms),
                )
            },
        );
        launch = launch.restart(restart);
        let spec = PluginSpec {
            name: name.clone(),
            launch,
            provides: plugin
                .provides
                .iter()
                .map(|p| (p.r#type.clone(), p.version.clone()))
                .collect(),
            requires: plugin.requires.iter().map(dependency).collect(),
            managed: plugin.managed,
        };
        let runtime_id = host.platform().add_plugin(spec).await?;
        println!("started {name} as {runtime_id}");
    }
    println!("ready {}", host.url());

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    println!("stopping");
    host.shutdown().await;
    Ok(())
}

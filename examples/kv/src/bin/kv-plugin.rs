//! `kv-plugin`: serves the in-memory KV store as the `kv` plugin.
//!
//! Listens on `127.0.0.1:$PORT` (8080 if unset, `PORT=0` for any free port), prints the
//! readiness line on stdout and logs to stderr (`RUST_LOG` sets the level). With `HOST_URL`
//! set, it introduces itself to that host and, if the host offers a `logger` capability, logs
//! every change through it. With `TLS_CERT_FILE` and `TLS_KEY_FILE` (PEM), it serves TLS.

use std::process::ExitCode;

use connect_plugin::proto::capability::logger::v1::{LoggerClient, LoggerPlugin};
use connect_plugin::{Client, ClientConfig, Error, ServeConfig};
use kv::MemoryStore;
use kv::v1::KvServicePlugin;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let mut store = MemoryStore::default();
    if let Ok(host_url) = std::env::var("HOST_URL") {
        match host_logger(&host_url).await {
            Ok(logger) => store = store.with_logger(logger),
            Err(error) => tracing::warn!("no logger capability from {host_url}: {error}"),
        }
    }
    let mut config = ServeConfig::new().plugin(KvServicePlugin::server(store));
    // TLS_CERT_FILE and TLS_KEY_FILE serve TLS (for a plugin called beyond loopback).
    match connect_plugin::serve::tls_from_env() {
        Ok(Some(tls)) => config = config.tls(tls),
        Ok(None) => {}
        Err(error) => {
            tracing::error!("kv-plugin: {error}");
            return ExitCode::FAILURE;
        }
    }
    match connect_plugin::serve(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("kv-plugin: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Handshakes with the host as `kv-plugin` and asks for its logger capability.
async fn host_logger(host_url: &str) -> Result<LoggerClient, Error> {
    let host =
        Client::new(ClientConfig::new(host_url).self_id("kv-plugin", env!("CARGO_PKG_VERSION")))?;
    let grant = host.request_capability("logger", "1.0.0").await?;
    Ok(connect_plugin::dispense::<LoggerPlugin>(grant.channel()))
}

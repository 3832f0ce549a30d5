//! `kv-plugin`: serves the in-memory KV store as the `kv` plugin.
//!
//! Listens on `127.0.0.1:$PORT` (8080 if unset, `PORT=0` for any free port), prints the
//! readiness line on stdout and logs to stderr (`RUST_LOG` sets the level).

use std::process::ExitCode;

use connect_plugin::ServeConfig;
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
    let config = ServeConfig::new().plugin(KvServicePlugin::server(MemoryStore::default()));
    match connect_plugin::serve(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("kv-plugin: {error}");
            ExitCode::FAILURE
        }
    }
}

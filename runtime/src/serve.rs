//! [`serve`]: the one call a plugin binary makes to serve its plugins.
//!
//! It binds the listener (from `ServeConfig::addr`, else `127.0.0.1:$PORT`, `PORT` defaulting
//! to 8080 like connect-plugin-go's examples; `PORT=0` picks a free port), announces readiness
//! on stdout with the [`crate::launch`] readiness line, logs the address, and serves until
//! SIGINT/SIGTERM, or, when a host launched the process, until the host closes its stdin
//! (which also happens when the host dies, so plugins never outlive their host).

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

use crate::launch::{self, LAUNCHED_ENV};
use crate::plugin::{MAGIC_COOKIE_KEY, MAGIC_COOKIE_VALUE};
use crate::{Code, Error, PluginServer, Server, Service};

/// What [`serve`] serves, and how.
#[derive(Debug, Default)]
pub struct ServeConfig {
    plugins: Vec<PluginServer>,
    services: Vec<Service>,
    addr: Option<SocketAddr>,
    max_message_size: Option<usize>,
    shutdown_timeout: Option<Duration>,
}

impl ServeConfig {
    /// An empty configuration.
    pub fn new() -> Self {
        Self::default()
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

    /// The largest request message accepted (default 4 MiB).
    #[must_use]
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = Some(bytes);
        self
    }

    /// How long shutdown waits for in-flight calls (default 30 s).
    #[must_use]
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = Some(timeout);
        self
    }
}

/// The address from the `PORT` environment variable: `127.0.0.1:$PORT`, 8080 if unset.
///
/// # Errors
/// `invalid_argument` if `PORT` is set but is not a port number.
pub fn addr_from_env() -> Result<SocketAddr, Error> {
    let port = match std::env::var("PORT") {
        Err(_) => 8080,
        Ok(text) => text.trim().parse::<u16>().map_err(|_| {
            Error::invalid_argument(format!(
                "PORT={text:?} is not a port number (0-65535; 0 picks a free port)"
            ))
        })?,
    };
    Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
}

/// Serves the configured plugins until the process is told to stop (see the module docs).
///
/// # Errors
/// `unavailable` if the address cannot be bound; `invalid_argument` for a bad `PORT`, or
/// if nothing was configured to serve.
pub async fn serve(config: ServeConfig) -> Result<(), Error> {
    if config.plugins.is_empty() && config.services.is_empty() {
        return Err(Error::invalid_argument(
            "nothing to serve: add a plugin with ServeConfig::plugin(MyPlugin::server(my_impl))",
        ));
    }
    let addr = match config.addr {
        Some(addr) => addr,
        None => addr_from_env()?,
    };
    let listener = TcpListener::bind(addr).await.map_err(|e| {
        Error::unavailable(format!(
            "cannot listen on {addr}: {e} (set PORT to a free port, or PORT=0 for any)"
        ))
    })?;
    let local = listener
        .local_addr()
        .map_err(|e| Error::internal(format!("reading the bound address: {e}")))?;
    let names: Vec<&str> = config.plugins.iter().map(PluginServer::name).collect();
    let mut server = Server::new();
    if let Some(max) = config.max_message_size {
        server = server.max_message_size(max);
    }
    if let Some(timeout) = config.shutdown_timeout {
        server = server.shutdown_timeout(timeout);
    }
    for plugin in config.plugins {
        server = server.add_service(plugin.into_service());
    }
    for service in config.services {
        server = server.add_service(service);
    }
    let launched = std::env::var(LAUNCHED_ENV).is_ok_and(|v| v == MAGIC_COOKIE_VALUE)
        || std::env::var(MAGIC_COOKIE_KEY).is_ok_and(|v| v == MAGIC_COOKIE_VALUE);
    launch::announce_ready(local)
        .map_err(|e| Error::internal(format!("writing the readiness line to stdout: {e}")))?;
    tracing::info!(address = %local, plugins = ?names, "listening");
    server
        .serve_with_shutdown(listener, stop_signal(launched))
        .await
        .map_err(|e| Error::new(Code::Internal, format!("serving on {local}: {e}")))?;
    tracing::info!(address = %local, "stopped");
    Ok(())
}

/// Completes on SIGINT or SIGTERM, or when stdin closes if a host launched us.
async fn stop_signal(launched: bool) {
    let stdin_closed = async {
        if !launched {
            return std::future::pending().await;
        }
        let mut stdin = tokio::io::stdin();
        let mut buf = [0u8; 64];
        // Anything the host writes is ignored; end of file (or an error) means "stop".
        while matches!(stdin.read(&mut buf).await, Ok(n) if n > 0) {}
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

//! Health checking (`connectplugin.health.v1.HealthService`, wire-compatible with
//! connect-plugin-go): per-service serving status with `Check` and `Watch`, the plain HTTP
//! probes `/healthz` (alive) and `/readyz` (serving), and [`HealthMonitor`], a client-side
//! poller that reports changes.
//!
//! The empty service name `""` is the whole server. On shutdown every status becomes
//! `NOT_SERVING` and later updates are ignored, so readiness flips before connections drain.
//!
//! Health names, in one place: [`ServingStatus`] is what a server says of a service;
//! [`HealthStatus`] is what a [`HealthMonitor`] saw (serving, not serving, unreachable);
//! [`HealthState`] is what a plugin says of itself to its host. This module serves and polls
//! health; it does not decide what the host does with it (see [`crate::host::registry`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::proto::connectplugin::health::v1 as wire;
use crate::proto::connectplugin::health::v1::HealthService;

mod monitor;

/// The serving status of a service, as `HealthService.Check` answers it (the wire enum).
pub use crate::proto::connectplugin::health::v1::ServingStatus;
/// A plugin's own health, as it reports it to its host (`PluginLifecycle.ReportHealth`) and as
/// the host's registry records it (the wire enum).
pub use crate::proto::connectplugin::v1::HealthState;
use crate::{Error, MessageStream, Request, Response, ServerStream};
pub use monitor::{HealthMonitor, HealthStatus};

struct State {
    statuses: HashMap<String, ServingStatus>,
    /// Other names of a service (a plugin's name for its service path).
    aliases: HashMap<String, String>,
    shut_down: bool,
}

/// The server side of health checking; cheap to clone and share with the code that knows
/// whether things are healthy.
#[derive(Clone)]
pub struct HealthServer {
    state: Arc<Mutex<State>>,
    changed: Arc<tokio::sync::watch::Sender<u64>>,
}

impl std::fmt::Debug for HealthServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthServer")
            .field("ready", &self.is_ready())
            .finish()
    }
}

impl Default for HealthServer {
    fn default() -> Self {
        Self::new()
    }
}

impl HealthServer {
    /// A health server whose overall status (`""`) is `SERVING`.
    pub fn new() -> Self {
        let statuses = [(String::new(), ServingStatus::Serving)].into();
        Self {
            state: Arc::new(Mutex::new(State {
                statuses,
                aliases: HashMap::new(),
                shut_down: false,
            })),
            changed: Arc::new(tokio::sync::watch::channel(0).0),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets the status of `service` (`""` for the whole server). Ignored after shutdown.
    pub fn set_status(&self, service: &str, status: ServingStatus) {
        let mut state = self.state();
        if state.shut_down {
            return;
        }
        if state.statuses.insert(service.to_owned(), status) != Some(status) {
            self.changed.send_modify(|v| *v += 1);
        }
    }

    /// The status of `service` (or of the service it is another name for), `None` if it was
    /// never set.
    pub fn status(&self, service: &str) -> Option<ServingStatus> {
        let state = self.state();
        state.statuses.get(service).copied().or_else(|| {
            let target = state.aliases.get(service)?;
            state.statuses.get(target).copied()
        })
    }

    /// Answers for `service` under `alias` too: a plugin's name (connect-plugin-go checks
    /// `Check("kv")`) for its service path. A status set under the alias itself wins.
    pub fn alias(&self, alias: &str, service: &str) {
        self.state()
            .aliases
            .insert(alias.to_owned(), service.to_owned());
        // Watchers of the alias see its status from now on.
        self.changed.send_modify(|v| *v += 1);
    }

    /// Whether the whole server is `SERVING` (what `/readyz` reports).
    pub fn is_ready(&self) -> bool {
        self.status("") == Some(ServingStatus::Serving)
    }

    /// Marks everything `NOT_SERVING` for good (graceful shutdown's first step).
    pub fn shutdown(&self) {
        let mut state = self.state();
        state.shut_down = true;
        for status in state.statuses.values_mut() {
            *status = ServingStatus::NotServing;
        }
        self.changed.send_modify(|v| *v += 1);
    }

    /// The answer to a `/healthz` or `/readyz` probe, if `path` is one.
    pub(crate) fn probe(&self, path: &str) -> Option<(u16, &'static str)> {
        match path {
            "/healthz" => Some((200, "ok")),
            "/readyz" if self.is_ready() => Some((200, "ready")),
            "/readyz" => Some((503, "not ready")),
            _ => None,
        }
    }
}

impl HealthService for HealthServer {
    async fn check(
        &self,
        request: Request<wire::HealthCheckRequest>,
    ) -> Result<Response<wire::HealthCheckResponse>, Error> {
        let service = &request.message().service;
        match self.status(service) {
            Some(status) => Ok(Response::new(wire::HealthCheckResponse {
                status: status as i32,
            })),
            None => Err(Error::not_found(format!(
                "no health status for service {service:?}"
            ))),
        }
    }

    async fn watch(
        &self,
        request: Request<wire::HealthCheckRequest>,
    ) -> Result<Response<ServerStream<wire::HealthCheckResponse>>, Error> {
        let service = request.into_message().service;
        let health = self.clone();
        let mut changes = self.changed.subscribe();
        let (tx, stream) = MessageStream::channel(4);
        tokio::spawn(async move {
            let mut last = None;
            loop {
                // The current status first, then every change (unknown: SERVICE_UNKNOWN).
                let status = health
                    .status(&service)
                    .unwrap_or(ServingStatus::ServiceUnknown);
                if last != Some(status) {
                    last = Some(status);
                    let message = wire::HealthCheckResponse {
                        status: status as i32,
                    };
                    if tx.send(message).await.is_err() {
                        return;
                    }
                }
                // After shutdown nothing changes any more: end the stream so the server can
                // drain instead of waiting on open watches.
                if health.state().shut_down {
                    return;
                }
                tokio::select! {
                    changed = changes.changed() => if changed.is_err() { return },
                    () = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(stream))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_probes_and_shutdown() {
        let health = HealthServer::new();
        assert_eq!(health.probe("/readyz"), Some((200, "ready")));
        health.set_status("kv", ServingStatus::Serving);
        health.shutdown();
        assert_eq!(health.status("kv"), Some(ServingStatus::NotServing));
        assert_eq!(health.probe("/readyz"), Some((503, "not ready")));
        assert_eq!(health.probe("/healthz"), Some((200, "ok")));
        health.set_status("", ServingStatus::Serving);
        assert!(!health.is_ready(), "updates after shutdown are ignored");
    }
}

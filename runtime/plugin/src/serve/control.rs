//! `connectplugin.v1.PluginControl`, served by every plugin ([`crate::serve()`]): the host
//! asks how the plugin is (`GetHealth`) and tells it to stop (`Shutdown`), also for plugins it
//! did not launch (deployment model B).
//!
//! Who may stop a plugin: its host. A plugin process has one random control token
//! (random, made on first use); a client that joins its own host (`HOST_URL`) with a `self_id`
//! hands it to that host, and no other server, in the
//! handshake (client metadata [`CONTROL_TOKEN_KEY`]), and only a call carrying it in
//! [`CONTROL_TOKEN_HEADER`] is obeyed. `GetHealth` answers anyone the server answers.
//!
//! This module serves the plugin side; the host side is
//! [`ServiceRegistry::stop_plugin`](crate::host::ServiceRegistry::stop_plugin).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::Notify;

use crate::health::HealthServer;
use crate::identity::constant_time_eq;
use crate::proto::connectplugin::health::v1::ServingStatus;
use crate::proto::connectplugin::v1 as wire;
use crate::{Code, Error, Request, Response};

pub use crate::handshake::{CONTROL_TOKEN_HEADER, CONTROL_TOKEN_KEY};

/// This process's control token: random, made on first use, the same for every server and
/// client of the process.
pub(crate) fn token() -> &'static str {
    static TOKEN: OnceLock<String> = OnceLock::new();
    TOKEN.get_or_init(|| {
        let rng = ring::rand::SystemRandom::new();
        // Without randomness no token can be guessed-proof: an empty one matches nothing.
        crate::identity::random_bytes::<32>(&rng)
            .map(|bytes| crate::identity::hex(&bytes))
            .unwrap_or_default()
    })
}

/// The plugin's `PluginControl` service.
#[derive(Clone)]
pub(crate) struct Control {
    health: HealthServer,
    /// Notified when the host asks the plugin to stop.
    stop: Arc<Notify>,
    /// The grace period the host gave, once it has asked.
    grace: tokio::sync::watch::Sender<Option<Duration>>,
}

impl Control {
    pub(crate) fn new(
        health: HealthServer,
        stop: Arc<Notify>,
        grace: tokio::sync::watch::Sender<Option<Duration>>,
    ) -> Self {
        Self {
            health,
            stop,
            grace,
        }
    }
}

/// Resolves once the host has asked the plugin to stop with a grace period and that period
/// has passed: serving ends then, calls still in flight or not. Never resolves otherwise.
pub(crate) async fn grace_over(mut grace: tokio::sync::watch::Receiver<Option<Duration>>) {
    let period = loop {
        if let Some(period) = *grace.borrow_and_update() {
            break period;
        }
        if grace.changed().await.is_err() {
            return std::future::pending().await;
        }
    };
    tokio::time::sleep(period).await;
    tracing::warn!(
        grace_ms = period.as_millis() as u64,
        "the host's grace period is over: stopping with calls still in flight"
    );
}

impl wire::PluginControl for Control {
    async fn get_health(
        &self,
        _: Request<wire::GetHealthRequest>,
    ) -> Result<Response<wire::GetHealthResponse>, Error> {
        let (state, reason) = match self.health.status("") {
            Some(ServingStatus::Serving) => (wire::HealthState::Healthy, ""),
            Some(ServingStatus::NotServing) => (wire::HealthState::Unhealthy, "not serving"),
            _ => (wire::HealthState::Unspecified, "status unknown"),
        };
        Ok(Response::new(wire::GetHealthResponse {
            state: state as i32,
            reason: reason.to_owned(),
            unavailable_dependencies: Vec::new(),
        }))
    }

    async fn shutdown(
        &self,
        request: Request<wire::ShutdownRequest>,
    ) -> Result<Response<wire::ShutdownResponse>, Error> {
        let presented = request
            .metadata()
            .get(CONTROL_TOKEN_HEADER)
            .map(http::HeaderValue::as_bytes)
            .unwrap_or_default();
        let token = token();
        if token.is_empty() || !constant_time_eq(presented, token.as_bytes()) {
            return Err(Error::new(
                Code::Unauthenticated,
                format!(
                    "only this plugin's host may stop it: the call lacks its control token ({CONTROL_TOKEN_HEADER})"
                ),
            ));
        }
        let message = request.into_message();
        // A grace period of 0 (or less) leaves the plugin's own shutdown timeout.
        if let Ok(seconds @ 1..) = u64::try_from(message.grace_period_seconds) {
            self.grace.send_replace(Some(Duration::from_secs(seconds)));
        }
        tracing::info!(reason = %message.reason, grace_period_seconds = message.grace_period_seconds, "the host asked this plugin to stop");
        self.stop.notify_one();
        Ok(Response::new(wire::ShutdownResponse { acknowledged: true }))
    }
}

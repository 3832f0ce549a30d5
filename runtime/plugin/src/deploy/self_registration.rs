//! [`SelfRegistration`]: a self-registering plugin's side of deployment model B, kept alive
//! across host restarts. It handshakes with the host, registers the plugin's services, reports
//! its health and heartbeats; when the host stops knowing the plugin (it restarted: calls come
//! back `unauthenticated`) or cannot be reached, it starts over with backoff until the host is
//! back, then registers again.
//!
//! It runs no server and starts no process: the plugin's own services are served with
//! [`crate::serve()`], the calls it makes go through [`crate::Client`], and leases, health and what
//! becomes of a registration on the host are [`crate::host::registry`]'s.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::proto::connectplugin::v1::{HealthState, RegisterServiceRequest};
use crate::{Client, ClientConfig, Code, Error};

/// What to register, where, and how often to heartbeat.
#[derive(Debug, Clone)]
pub struct RegistrationConfig {
    /// The host's URL.
    pub host_url: String,
    /// The plugin's id and version.
    pub self_id: (String, String),
    /// The registrations to make (their types are declared in the handshake).
    pub registrations: Vec<RegisterServiceRequest>,
    /// How often to heartbeat (default 5 s).
    pub heartbeat: Duration,
}

impl RegistrationConfig {
    /// Registers `registrations` with the host at `host_url` as `self_id` at `self_version`.
    pub fn new(
        host_url: impl Into<String>,
        self_id: impl Into<String>,
        self_version: impl Into<String>,
        registrations: Vec<RegisterServiceRequest>,
    ) -> Self {
        Self {
            host_url: host_url.into(),
            self_id: (self_id.into(), self_version.into()),
            registrations,
            heartbeat: Duration::from_secs(5),
        }
    }
}

/// Where a [`SelfRegistration`] stands.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RegistrationState {
    /// Not (or no longer) registered; trying.
    Connecting,
    /// Registered as this runtime id.
    Registered {
        /// The runtime id the host issued.
        runtime_id: String,
        /// How many times it had to register again after losing the host.
        reconnects: u32,
    },
}

/// A running self-registration; dropping it stops the heartbeats.
#[derive(Debug)]
pub struct SelfRegistration {
    state: watch::Receiver<RegistrationState>,
    health: Arc<Mutex<(HealthState, String)>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SelfRegistration {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SelfRegistration {
    /// Starts registering (in the background).
    pub fn start(config: RegistrationConfig) -> Self {
        let (tx, state) = watch::channel(RegistrationState::Connecting);
        let health = Arc::new(Mutex::new((HealthState::Healthy, String::new())));
        let task = tokio::spawn(run(config, tx, Arc::clone(&health)));
        Self {
            state,
            health,
            task,
        }
    }

    /// The current state.
    pub fn state(&self) -> RegistrationState {
        self.state.borrow().clone()
    }

    /// Waits until registered and returns the runtime id.
    pub async fn registered(&self) -> String {
        let mut state = self.state.clone();
        loop {
            if let RegistrationState::Registered { runtime_id, .. } = &*state.borrow_and_update() {
                return runtime_id.clone();
            }
            if state.changed().await.is_err() {
                return String::new();
            }
        }
    }

    /// Changes the health reported with the next heartbeat (and at once if registered).
    pub fn set_health(&self, state: HealthState, reason: impl Into<String>) {
        *self.health.lock().unwrap_or_else(|e| e.into_inner()) = (state, reason.into());
    }
}

async fn run(
    config: RegistrationConfig,
    state: watch::Sender<RegistrationState>,
    health: Arc<Mutex<(HealthState, String)>>,
) {
    let mut reconnects = 0u32;
    let mut backoff = Duration::from_millis(50);
    loop {
        match session(&config, &state, &health, reconnects).await {
            // A session only ends when the host lost us or went away: start over.
            Err(error) => {
                let _ = state.send(RegistrationState::Connecting);
                tracing::warn!(host = %config.host_url, "registration lost ({error}); retrying in {} ms", backoff.as_millis());
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                reconnects += 1;
            }
            Ok(never) => match never {},
        }
    }
}

/// Handshakes, registers, reports health, then heartbeats until something fails.
async fn session(
    config: &RegistrationConfig,
    state: &watch::Sender<RegistrationState>,
    health: &Arc<Mutex<(HealthState, String)>>,
    reconnects: u32,
) -> Result<std::convert::Infallible, Error> {
    let types: Vec<&str> = config
        .registrations
        .iter()
        .map(|r| r.service_type.as_str())
        .collect();
    let client = Client::new(
        ClientConfig::new(&config.host_url)
            .self_id(&config.self_id.0, &config.self_id.1)
            .provides(types),
    )?;
    for registration in &config.registrations {
        client
            .registry()
            .register_service(client.authenticated(registration.clone()).await?)
            .await?;
    }
    let runtime_id = client
        .runtime_identity()
        .map(|i| i.runtime_id.clone())
        .ok_or_else(|| {
            Error::new(
                Code::FailedPrecondition,
                "the host issued no runtime identity",
            )
        })?;
    let _ = state.send(RegistrationState::Registered {
        runtime_id,
        reconnects,
    });
    let mut ticks = tokio::time::interval(config.heartbeat);
    loop {
        ticks.tick().await;
        let (health_state, reason) = health.lock().unwrap_or_else(|e| e.into_inner()).clone();
        client.report_health(health_state, &reason).await?;
    }
}

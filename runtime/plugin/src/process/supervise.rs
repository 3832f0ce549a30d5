//! [`SupervisedPlugin`]: a plugin process under supervision. Crashes are noticed at once (the
//! host waits on the child), reported to the launch config's crash callback, and handled by
//! its [`RestartPolicy`]; [`PluginState`] tells where the plugin is in that life.
//!
//! Starting one process is [`super::launch`]'s job; this module decides when to start it again.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{oneshot, watch};

use super::launch::{CrashEvent, LaunchConfig, PluginProcess, verify_checksum, with_secret};
use crate::Error;

/// The life of a [`SupervisedPlugin`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PluginState {
    /// Running at `endpoint`.
    Running {
        /// Where it listens.
        endpoint: String,
        /// Its process id.
        pid: u32,
        /// How many times it was restarted.
        restarts: u32,
    },
    /// Crashed; waiting to be started again.
    Restarting {
        /// Restarts so far.
        restarts: u32,
    },
    /// Crashed and not restarted (policy exhausted, or it could not start again).
    Failed {
        /// Why.
        reason: String,
    },
    /// Stopped by [`SupervisedPlugin::shutdown`].
    Stopped,
}

/// A plugin process under supervision: crashes are noticed at once (the host waits on the
/// child), reported to [`LaunchConfig::on_crash`](super::LaunchConfig::on_crash), and handled by the [`RestartPolicy`](super::RestartPolicy).
/// A restarted plugin gets the same port back when it is free, and its launch secret, so
/// channels and typed clients made before the crash keep working; on another port it gets a
/// new secret ([`SupervisedPlugin::channel`] has it).
#[derive(Debug)]
pub struct SupervisedPlugin {
    name: String,
    state: watch::Receiver<PluginState>,
    stop: Option<oneshot::Sender<Duration>>,
    task: tokio::task::JoinHandle<()>,
    /// The running process's launch secret (a new one if a restart had to change port).
    secret: Arc<Mutex<Option<http::HeaderValue>>>,
}

impl SupervisedPlugin {
    /// Starts the plugin (checksum first, if configured) and supervises it.
    ///
    /// # Errors
    /// As for [`PluginProcess::launch`]: the first start must succeed.
    pub async fn launch(config: LaunchConfig) -> Result<Self, Error> {
        // Restarts run the same checked copy, kept for as long as the supervisor runs.
        // ... and one launch secret, so channels made before a crash keep working.
        let config = with_secret(verify_checksum(config)?)?;
        let process = PluginProcess::spawn(&config, 0).await?;
        let secret = Arc::new(Mutex::new(config.secret.clone()));
        let (state_tx, state) = watch::channel(PluginState::Running {
            endpoint: process.endpoint(),
            pid: process.id().unwrap_or_default(),
            restarts: 0,
        });
        let (stop_tx, stop_rx) = oneshot::channel();
        let name = config.name.clone();
        let task = tokio::spawn(supervise(
            config,
            process,
            state_tx,
            stop_rx,
            Arc::clone(&secret),
        ));
        Ok(Self {
            name,
            state,
            stop: Some(stop_tx),
            task,
            secret,
        })
    }

    /// The plugin's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The current state.
    pub fn state(&self) -> PluginState {
        self.state.borrow().clone()
    }

    /// The endpoint of the running process (the last one, if it is not running).
    pub fn endpoint(&self) -> Option<String> {
        match &*self.state.borrow() {
            PluginState::Running { endpoint, .. } => Some(endpoint.clone()),
            _ => None,
        }
    }

    /// A channel to the plugin, carrying its launch secret (the same across restarts), while
    /// it runs.
    ///
    /// # Errors
    /// `unavailable` when it is not running.
    pub fn channel(&self) -> Result<crate::Channel, Error> {
        let endpoint = self
            .endpoint()
            .ok_or_else(|| Error::unavailable(format!("plugin {} is not running", self.name)))?;
        let builder = crate::Channel::builder(endpoint);
        let secret = self
            .secret
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        match secret {
            Some(secret) => builder.header(
                http::HeaderName::from_static(crate::serve::host_only::LAUNCH_SECRET_HEADER),
                secret,
            ),
            None => builder,
        }
        .build()
    }

    /// A receiver of every state change.
    pub fn watch(&self) -> watch::Receiver<PluginState> {
        self.state.clone()
    }

    /// Waits until the state satisfies `f` and returns it.
    pub async fn wait_for(&self, f: impl FnMut(&PluginState) -> bool) -> PluginState {
        let mut state = self.state.clone();
        let result = state.wait_for(f).await.map(|s| s.clone());
        result.unwrap_or(PluginState::Stopped)
    }

    /// Stops the plugin gracefully (closing its stdin, killing it after `grace`).
    pub async fn shutdown(mut self, grace: Duration) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(grace);
        }
        let _ = (&mut self.task).await;
    }
}

impl Drop for SupervisedPlugin {
    fn drop(&mut self) {
        // Dropping the supervisor drops (and so kills) the child.
        self.task.abort();
    }
}

async fn supervise(
    mut config: LaunchConfig,
    mut process: PluginProcess,
    state: watch::Sender<PluginState>,
    mut stop: oneshot::Receiver<Duration>,
    secret: Arc<Mutex<Option<http::HeaderValue>>>,
) {
    let mut restarts = 0u32;
    loop {
        let port = process.addr().port();
        let status = tokio::select! {
            status = process.wait() => status,
            grace = &mut stop => {
                let grace = grace.unwrap_or(Duration::from_secs(5));
                let _ = process.shutdown(grace).await;
                let _ = state.send(PluginState::Stopped);
                return;
            }
        };
        let will_restart = restarts < config.restart.max_restarts;
        tracing::warn!(plugin = %config.name, ?status, will_restart, "plugin process exited");
        if let Some(on_crash) = &config.on_crash {
            on_crash(&CrashEvent {
                plugin: config.name.clone(),
                status,
                restarts,
                will_restart,
            });
        }
        if !will_restart {
            let _ = state.send(PluginState::Failed {
                reason: format!(
                    "exited ({status:?}) and the restart policy allows no more restarts"
                ),
            });
            return;
        }
        restarts += 1;
        let _ = state.send(PluginState::Restarting { restarts });
        tokio::select! {
            () = tokio::time::sleep(config.restart.backoff(restarts)) => {}
            _ = &mut stop => {
                let _ = state.send(PluginState::Stopped);
                return;
            }
        }
        // Same port first, so existing channels (and their launch secret) reconnect; any
        // port if it is taken, with a new secret: whoever took the old port must not learn
        // one that works on the new process from channels still calling there.
        let restarted = match PluginProcess::spawn(&config, port).await {
            Ok(p) => Ok(p),
            Err(_) => {
                config.secret = None;
                match with_secret(config.clone()) {
                    Ok(fresh) => {
                        config = fresh;
                        *secret
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner) =
                            config.secret.clone();
                        PluginProcess::spawn(&config, 0).await
                    }
                    Err(e) => Err(e),
                }
            }
        };
        match restarted {
            Ok(p) => {
                process = p;
                let _ = state.send(PluginState::Running {
                    endpoint: process.endpoint(),
                    pid: process.id().unwrap_or_default(),
                    restarts,
                });
            }
            Err(e) => {
                let _ = state.send(PluginState::Failed {
                    reason: format!("restart failed: {e}"),
                });
                return;
            }
        }
    }
}

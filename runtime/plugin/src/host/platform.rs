//! [`Platform`]: plugins added, removed and replaced at runtime on a host (connect-plugin-go's
//! `Platform`), for self-registering plugin processes (deployment model B) and, with
//! `add_managed`, plugins whose identity the host assigns (model A).
//!
//! - `add_plugin` checks that what the plugin needs to start is provided, launches it with
//!   `HOST_URL`, and waits until it has registered what it declared.
//! - `remove_plugin` reports the impact first, withdraws its registrations (so nothing new is
//!   routed to it), waits for the calls in flight to finish, then stops it.
//! - `replace_plugin` starts the new version, waits until it has registered and is healthy,
//!   switches routing to it in one step (calls addressed to the old provider go to the new
//!   one), waits for the old one's calls in flight, then stops it. No fixed sleeps: every wait
//!   is on an event, bounded by a timeout.
//!
//! The platform decides when plugins start and stop, not how: launching and stopping one process is
//! [`crate::process`]'s, the registrations, health and routing switch it waits on are
//! [`crate::host::registry`]'s, and the startup order and impact come from
//! [`crate::host::depgraph`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, oneshot, watch};

use super::depgraph::{DependencyGraph, Impact, PluginNode};
use super::registry::ServiceRegistry;
use crate::handshake::JoinTicket;
use crate::plugin::ServiceDependency;
use crate::process::{CrashEvent, LaunchConfig, PluginProcess};
use crate::proto::connectplugin::v1::{self as wire, HealthState};
use crate::{Code, Error};

/// A plugin to run on a [`Platform`].
#[derive(Debug, Clone)]
pub struct PluginSpec {
    /// A unique name on the platform, e.g. `cache-plugin`.
    pub name: String,
    /// How to start it (`HOST_URL` is added).
    pub launch: LaunchConfig,
    /// The service types it registers, with their versions.
    pub provides: Vec<(String, String)>,
    /// What it needs.
    pub requires: Vec<ServiceDependency>,
    /// Platform-managed (deployment model A): the host asks the plugin what it provides and
    /// assigns its identity, instead of the plugin joining through `HOST_URL`. `provides`
    /// and `requires` are then taken from the plugin.
    pub managed: bool,
}

/// A plugin on the platform: its spec and the task that supervises its process.
struct Running {
    spec: PluginSpec,
    /// Shared with its supervisor.
    control: Arc<Control>,
    /// The runtime id and process id of its current process (a restart gives new ones).
    current: watch::Receiver<(String, Option<u32>)>,
    /// Asks the supervisor to stop the process gracefully, within the given time.
    stop: Option<oneshot::Sender<Duration>>,
    task: tokio::task::JoinHandle<()>,
}

/// What a plugin's supervisor and the platform share.
#[derive(Default)]
struct Control {
    /// Set when the platform takes the plugin away: no more restarts.
    stopping: std::sync::atomic::AtomicBool,
    /// The join token of the current process, revoked (dropped) when it goes.
    ticket: std::sync::Mutex<Option<JoinTicket>>,
}

impl Control {
    fn stopping(&self) -> bool {
        self.stopping.load(std::sync::atomic::Ordering::Acquire)
    }

    fn set_ticket(&self, ticket: Option<JoinTicket>) {
        *self
            .ticket
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = ticket;
    }
}

impl Running {
    fn runtime_id(&self) -> String {
        self.current.borrow().0.clone()
    }

    /// The first step of taking the plugin away, before its registrations are withdrawn:
    /// no restart from now on, and its join token no longer admits anyone (so the process,
    /// still running while it drains, cannot join again and register anew).
    fn begin_stop(&self) {
        self.control
            .stopping
            .store(true, std::sync::atomic::Ordering::Release);
        self.control.set_ticket(None);
    }

    /// Stops the process (closing its stdin, killing it after `grace`) and its supervisor.
    async fn shutdown(mut self, grace: Duration) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(grace);
        }
        // The supervisor kills the process after `grace`; a little more for it to return.
        if tokio::time::timeout(grace + Duration::from_secs(1), &mut self.task)
            .await
            .is_err()
        {
            self.task.abort();
        }
    }
}

/// What a platform's supervisors share with it: where the plugins join and how long waits
/// may take.
#[derive(Clone)]
struct Shared {
    registry: ServiceRegistry,
    host_url: String,
    /// CA certificates (PEM) launched plugins verify the host with.
    host_trust: Option<String>,
    timeout: Duration,
}

/// Plugin processes managed by a host at runtime.
///
/// Each process is supervised: when it exits unasked, its registrations are withdrawn at once
/// (watchers see it), its join token is revoked, the spec's crash callback is told, and it is
/// started again as its [`RestartPolicy`](crate::process::RestartPolicy) says
/// ([`LaunchConfig::restart`]), with a new runtime id, registering anew. A process that ran
/// a minute without crashing starts its restart count afresh, so the policy limits crash
/// loops rather than crashes over a plugin's life.
pub struct Platform {
    shared: Shared,
    plugins: Mutex<HashMap<String, Running>>,
}

impl std::fmt::Debug for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Platform")
            .field("host_url", &self.shared.host_url)
            .finish_non_exhaustive()
    }
}

impl Platform {
    /// A platform on the host at `host_url` whose registry is `registry`. Starts, drains and
    /// stops each get `timeout` (default 30 s, [`Platform::timeout`]).
    pub fn new(registry: ServiceRegistry, host_url: impl Into<String>) -> Self {
        Self {
            shared: Shared {
                registry,
                host_url: host_url.into(),
                host_trust: None,
                timeout: Duration::from_secs(30),
            },
            plugins: Mutex::new(HashMap::new()),
        }
    }

    /// Hands launched plugins these CA certificates (PEM) to verify the host over TLS with
    /// (in [`HOST_CA_ENV`](crate::client::HOST_CA_ENV)).
    #[must_use]
    pub fn host_trust(mut self, ca_pem: impl Into<String>) -> Self {
        self.shared.host_trust = Some(ca_pem.into());
        self
    }

    /// Sets how long a start, drain or stop may take.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.shared.timeout = timeout;
        self
    }

    fn graph(plugins: &HashMap<String, Running>) -> DependencyGraph {
        let mut graph = DependencyGraph::new();
        for (name, running) in plugins {
            graph.add(PluginNode {
                id: name.clone(),
                provides: running.spec.provides.clone(),
                requires: running.spec.requires.clone(),
            });
        }
        graph
    }

    /// The runtime id of plugin `name`, if it runs (its current process's, after restarts).
    pub async fn runtime_id(&self, name: &str) -> Option<String> {
        self.plugins.lock().await.get(name).map(Running::runtime_id)
    }

    /// The process id of plugin `name`'s current process, while it runs.
    pub async fn pid(&self, name: &str) -> Option<u32> {
        self.plugins
            .lock()
            .await
            .get(name)
            .and_then(|running| running.current.borrow().1)
    }

    /// Adds a plugin: checks its startup dependencies are provided, starts it and waits until
    /// it has registered what it provides and is healthy. Returns its runtime id. From then on
    /// its process is supervised (see [`Platform`]).
    ///
    /// # Errors
    /// `already_exists` for a name in use; `failed_precondition` for a dependency nobody
    /// provides; start and registration failures.
    pub async fn add_plugin(&self, spec: PluginSpec) -> Result<String, Error> {
        let mut plugins = self.plugins.lock().await;
        if plugins.contains_key(&spec.name) {
            return Err(Error::new(
                Code::AlreadyExists,
                format!("a plugin named {:?} is already on the platform", spec.name),
            ));
        }
        let mut spec = spec;
        let started = self.shared.launch(&mut spec, Some(&plugins)).await?;
        let runtime_id = started.runtime_id.clone();
        tracing::info!(plugin = %spec.name, %runtime_id, "added");
        plugins.insert(spec.name.clone(), self.supervise(spec, started));
        Ok(runtime_id)
    }

    /// Adds a platform-managed plugin (deployment model A): [`Platform::add_plugin`] with
    /// `spec.managed` set.
    ///
    /// # Errors
    /// As for [`Platform::add_plugin`].
    pub async fn add_managed(&self, mut spec: PluginSpec) -> Result<String, Error> {
        spec.managed = true;
        self.add_plugin(spec).await
    }

    /// Starts supervising the process `started` of `spec`.
    fn supervise(&self, spec: PluginSpec, started: Started) -> Running {
        let (current, watch) = watch::channel((started.runtime_id.clone(), started.process.id()));
        let (stop, stopped) = oneshot::channel();
        let control = Arc::new(Control::default());
        let task = tokio::spawn(supervise(
            self.shared.clone(),
            spec.clone(),
            started,
            Supervision {
                control: Arc::clone(&control),
                current,
                stop: stopped,
            },
        ));
        Running {
            spec,
            control,
            current: watch,
            stop: Some(stop),
            task,
        }
    }

    /// Checks that `spec` can start beside `others`: what it needs is provided.
    fn check(others: &HashMap<String, Running>, spec: &PluginSpec) -> Result<(), Error> {
        let mut graph = Self::graph(others);
        graph.add(PluginNode {
            id: spec.name.clone(),
            provides: spec.provides.clone(),
            requires: spec.requires.clone(),
        });
        graph.startup_order().map(drop)
    }

    /// What removing plugin `name` would affect.
    pub async fn impact(&self, name: &str) -> Impact {
        Self::graph(&*self.plugins.lock().await).impact(name)
    }

    /// Removes a plugin: withdraws its registrations, waits for its calls in flight, stops
    /// it. Returns the impact (computed before removing).
    ///
    /// # Errors
    /// `not_found` for an unknown name; a drain that does not finish in time.
    pub async fn remove_plugin(&self, name: &str) -> Result<Impact, Error> {
        let mut plugins = self.plugins.lock().await;
        let impact = Self::graph(&plugins).impact(name);
        let running = plugins
            .remove(name)
            .ok_or_else(|| Error::not_found(format!("no plugin {name:?} on the platform")))?;
        running.begin_stop();
        let runtime_id = running.runtime_id();
        let registry = &self.shared.registry;
        registry.remove_runtime(&runtime_id);
        let drained = registry.drained(&runtime_id, self.shared.timeout).await;
        running.shutdown(self.shared.timeout).await;
        drained?;
        tracing::info!(plugin = %name, affected = ?impact.affected_plugins, "removed");
        Ok(impact)
    }

    /// Replaces a plugin by a new version without failing a call: start the new one, wait
    /// until it is registered and healthy, switch routing to it, drain the old one, stop it.
    ///
    /// # Errors
    /// `not_found` for an unknown name; start, registration and drain failures (the old
    /// version keeps serving if the new one does not start).
    pub async fn replace_plugin(&self, name: &str, spec: PluginSpec) -> Result<String, Error> {
        let mut plugins = self.plugins.lock().await;
        let old = plugins
            .remove(name)
            .ok_or_else(|| Error::not_found(format!("no plugin {name:?} on the platform")))?;
        let mut spec = spec;
        let started = match self.shared.launch(&mut spec, Some(&plugins)).await {
            Ok(started) => started,
            Err(error) => {
                plugins.insert(name.to_owned(), old);
                return Err(error);
            }
        };
        let runtime_id = started.runtime_id.clone();
        old.begin_stop();
        let old_id = old.runtime_id();
        let registry = &self.shared.registry;
        registry.replace_runtime(&old_id, &runtime_id);
        let drained = registry.drained(&old_id, self.shared.timeout).await;
        old.shutdown(self.shared.timeout).await;
        tracing::info!(plugin = %name, old = %old_id, new = %runtime_id, "replaced");
        plugins.insert(name.to_owned(), self.supervise(spec, started));
        drained?;
        Ok(runtime_id)
    }

    /// Stops every plugin, dependents first.
    pub async fn shutdown(&self) {
        let mut plugins = self.plugins.lock().await;
        let order = Self::graph(&plugins).startup_order().unwrap_or_default();
        let registry = &self.shared.registry;
        for name in order.iter().rev() {
            if let Some(running) = plugins.remove(name) {
                running.begin_stop();
                registry.remove_runtime(&running.runtime_id());
                running.shutdown(self.shared.timeout).await;
            }
        }
        for (_, running) in plugins.drain() {
            running.begin_stop();
            registry.remove_runtime(&running.runtime_id());
            running.shutdown(self.shared.timeout).await;
        }
    }
}

/// Whose registrations a start leaves behind if it fails or is abandoned.
enum Launch {
    /// Every runtime id the launch token admitted.
    Token(String),
    /// The identity issued to a managed plugin.
    Runtime(String),
}

/// Removes what a start registered unless it succeeds ([`Abandoned::disarm`]).
struct Abandoned<'a> {
    registry: &'a ServiceRegistry,
    of: Launch,
    armed: bool,
}

impl Abandoned<'_> {
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for Abandoned<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let ids = match &self.of {
            Launch::Token(token) => self.registry.join_policy().admitted(token),
            Launch::Runtime(id) => vec![id.clone()],
        };
        for id in ids {
            self.registry.remove_runtime(&id);
        }
    }
}

/// A started plugin process, registered and healthy.
struct Started {
    process: PluginProcess,
    runtime_id: String,
    /// The join token it was launched with, revoked when it goes.
    ticket: Option<JoinTicket>,
}

impl Shared {
    /// The launch configuration of `spec`, with what every plugin of this host gets.
    fn launch_config(&self, spec: &PluginSpec) -> LaunchConfig {
        match &self.host_trust {
            Some(pem) => spec.launch.clone().env(crate::client::HOST_CA_ENV, pem),
            None => spec.launch.clone(),
        }
    }

    /// Starts `spec` either way (self-registering or managed) and waits until it has
    /// registered and is healthy; checks its dependencies against `others` when given (not on
    /// a restart: they were checked when it was added).
    async fn launch(
        &self,
        spec: &mut PluginSpec,
        others: Option<&HashMap<String, Running>>,
    ) -> Result<Started, Error> {
        if !spec.managed {
            if let Some(others) = others {
                Platform::check(others, spec)?;
            }
            return self.start(spec).await;
        }
        self.start_managed(spec, others).await
    }

    /// Launches `spec` and waits until it has registered what it provides.
    async fn start(&self, spec: &PluginSpec) -> Result<Started, Error> {
        // The child alone learns its join token, which admits it as `spec.name` providing
        // what the spec says, whatever it declares about itself.
        let policy = self.registry.join_policy();
        let provides: Vec<String> = spec.provides.iter().map(|(t, _)| t.clone()).collect();
        let ticket = JoinTicket::new(policy, policy.issue_launch(&spec.name, &provides)?);
        let token = ticket.token();
        // A start that fails or is abandoned takes what its process registered with it
        // (dropped before the ticket, while the token still knows whom it admitted).
        let abandoned = Abandoned {
            registry: &self.registry,
            of: Launch::Token(token.to_owned()),
            armed: true,
        };
        let launch = self
            .launch_config(spec)
            .env("HOST_URL", &self.host_url)
            .env(crate::handshake::JOIN_TOKEN_ENV, token);
        // A failed start drops the ticket, which revokes the token.
        let process = PluginProcess::launch(launch).await?;
        // Now its address is known: its registrations must point there, and routed calls
        // carry its launch secret.
        self.registry.launched(token, &process)?;
        let mut runtime_id = None;
        for (service_type, _) in &spec.provides {
            let found = self
                .registry
                .wait_for(self.timeout, || {
                    // Only a registration by the process launched here, known by its token:
                    // not whoever else registers the type meanwhile.
                    let ours = self.registry.join_policy().admitted(token);
                    self.registry
                        .providers(service_type)
                        .into_iter()
                        .map(|p| p.runtime_id)
                        .find(|id| ours.contains(id))
                })
                .await
                .map_err(|_| {
                    Error::new(
                        Code::DeadlineExceeded,
                        format!(
                            "plugin {} did not register {service_type:?} within {} ms",
                            spec.name,
                            self.timeout.as_millis()
                        ),
                    )
                })?;
            runtime_id = Some(found);
        }
        let runtime_id = runtime_id.unwrap_or_default();
        if !runtime_id.is_empty() {
            self.registry
                .wait_for(self.timeout, || {
                    (self.registry.health(&runtime_id) == HealthState::Healthy).then_some(())
                })
                .await
                .map_err(|_| {
                    Error::new(
                        Code::DeadlineExceeded,
                        format!("plugin {} did not become healthy", spec.name),
                    )
                })?;
        }
        abandoned.disarm();
        Ok(Started {
            process,
            runtime_id,
            ticket: Some(ticket),
        })
    }

    /// Model A: starts `spec` without `HOST_URL`, asks what it provides, assigns its
    /// identity, and waits until it has registered.
    async fn start_managed(
        &self,
        spec: &mut PluginSpec,
        others: Option<&HashMap<String, Running>>,
    ) -> Result<Started, Error> {
        let process = PluginProcess::launch(self.launch_config(spec)).await?;
        let identity_client = wire::PluginIdentityClient::new(process.channel()?);
        let info = identity_client
            .get_plugin_info(wire::GetPluginInfoRequest {})
            .await?
            .into_message();
        let declared = info
            .provides
            .iter()
            .map(|d| (d.r#type.clone(), d.version.clone()));
        // What the spec says it may provide bounds what the plugin declares about itself.
        spec.provides = if spec.provides.is_empty() {
            tracing::warn!(
                plugin = %spec.name,
                "no provides in the spec of a managed plugin: trusting what it declares"
            );
            declared.collect()
        } else {
            declared
                .filter(|(t, _)| spec.provides.iter().any(|(allowed, _)| allowed == t))
                .collect()
        };
        spec.requires = info
            .requires
            .iter()
            .map(|d| ServiceDependency {
                service_type: d.r#type.clone(),
                min_version: d.min_version.clone(),
                required_for_startup: d.required_for_startup,
                watch_for_changes: d.watch_for_changes,
            })
            .collect();
        if let Some(others) = others {
            Platform::check(others, spec)?;
        }
        let identity = self
            .registry
            .issue_identity(&info.self_id, spec.provides.iter().map(|(t, _)| t.clone()))?;
        let abandoned = Abandoned {
            registry: &self.registry,
            of: Launch::Runtime(identity.runtime_id.clone()),
            armed: true,
        };
        self.registry.bind(
            &identity.runtime_id,
            &process.endpoint(),
            process.launch_secret().cloned(),
            process.http1_only(),
        )?;
        identity_client
            .set_runtime_identity(wire::SetRuntimeIdentityRequest {
                runtime_id: identity.runtime_id.clone(),
                runtime_token: identity.token.clone(),
                host_url: self.host_url.clone(),
            })
            .await?;
        let runtime_id = identity.runtime_id;
        for (service_type, _) in &spec.provides {
            self.registry
                .wait_for(self.timeout, || {
                    self.registry
                        .providers(service_type)
                        .iter()
                        .any(|p| p.runtime_id == runtime_id)
                        .then_some(())
                })
                .await
                .map_err(|_| {
                    Error::new(
                        Code::DeadlineExceeded,
                        format!(
                            "plugin {} did not register {service_type:?} within {} ms",
                            spec.name,
                            self.timeout.as_millis()
                        ),
                    )
                })?;
        }
        abandoned.disarm();
        Ok(Started {
            process,
            runtime_id,
            ticket: None,
        })
    }
}

/// A supervisor's side of [`Control`], its state watch and its stop signal.
struct Supervision {
    control: Arc<Control>,
    current: watch::Sender<(String, Option<u32>)>,
    stop: oneshot::Receiver<Duration>,
}

/// Supervises a plugin's process until told to stop: when it exits unasked, its
/// registrations are withdrawn and its token revoked at once, and it is started again as its
/// restart policy says (unless the platform is taking it away).
async fn supervise(
    shared: Shared,
    mut spec: PluginSpec,
    started: Started,
    supervision: Supervision,
) {
    let Supervision {
        control,
        current,
        mut stop,
    } = supervision;
    let Started {
        mut process,
        ticket,
        ..
    } = started;
    control.set_ticket(ticket);
    let policy = spec.launch.restart_policy();
    let mut restarts = 0u32;
    let mut running_since = tokio::time::Instant::now();
    loop {
        let status = tokio::select! {
            biased;
            grace = &mut stop => {
                let _ = process.shutdown(grace.unwrap_or(shared.timeout)).await;
                return;
            }
            status = process.wait() => status,
        };
        // Withdrawn at once: nothing more is routed to a process that is gone, and watchers
        // of its services hear of it now, not when a lease runs out.
        let gone = current.borrow().0.clone();
        current.send_modify(|(_, pid)| *pid = None);
        shared.registry.withdraw_restarting(&gone);
        control.set_ticket(None);
        // A process that ran well for a while starts the count afresh: the policy limits
        // crash loops, not crashes over a plugin's whole life.
        if running_since.elapsed() >= STABLE_RUN {
            restarts = 0;
        }
        let will_restart = restarts < policy.max_restarts && !control.stopping();
        tracing::warn!(plugin = %spec.name, runtime_id = %gone, ?status, will_restart, "plugin process exited; its registrations are withdrawn");
        spec.launch.report_crash(&CrashEvent {
            plugin: spec.name.clone(),
            status,
            restarts,
            will_restart,
        });
        // Started again, with backoff, until it runs or the policy gives up.
        let restarted = loop {
            if restarts >= policy.max_restarts || control.stopping() {
                break None;
            }
            restarts += 1;
            tokio::select! {
                biased;
                _ = &mut stop => return,
                () = tokio::time::sleep(policy.backoff(restarts)) => {}
            }
            let launched = tokio::select! {
                biased;
                _ = &mut stop => return,
                launched = shared.launch(&mut spec, None) => launched,
            };
            match launched {
                Ok(started) => break Some(started),
                Err(error) => {
                    tracing::warn!(plugin = %spec.name, restarts, "restarting the plugin failed: {error}");
                }
            }
        };
        let Some(started) = restarted else {
            if !control.stopping() {
                tracing::error!(plugin = %spec.name, restarts, "plugin stays down: its restart policy allows no more restarts");
            }
            shared.registry.remove_runtime(&gone);
            let _ = stop.await;
            return;
        };
        if control.stopping() {
            // Taken away while it restarted: the new process goes too.
            shared.registry.remove_runtime(&started.runtime_id);
            let _ = started.process.shutdown(shared.timeout).await;
            let _ = stop.await;
            return;
        }
        tracing::info!(plugin = %spec.name, runtime_id = %started.runtime_id, restarts, "plugin restarted");
        // Callers still addressing the gone process (typed clients made before the crash)
        // reach its successor.
        shared.registry.replace_runtime(&gone, &started.runtime_id);
        current.send_replace((started.runtime_id, started.process.id()));
        control.set_ticket(started.ticket);
        process = started.process;
        running_since = tokio::time::Instant::now();
    }
}

/// How long a restarted plugin must run for its restart count to start again from zero.
const STABLE_RUN: Duration = Duration::from_secs(60);

//! Plugin processes, seen from the host that runs them: [`PluginProcess`] launches one and
//! reads its readiness line, [`SupervisedPlugin`] restarts it when it crashes, and
//! [`InMemoryPlugin`] serves one inside this process with no socket at all.
//!
//! This module starts, watches and stops processes; what a host does with them (registry,
//! routing, dependency order) is [`crate::host`]'s.

mod in_memory;
mod launch;
mod supervise;

pub use in_memory::{IN_MEMORY_URL, InMemoryPlugin};
pub use launch::{CrashEvent, LaunchConfig, PluginProcess, RestartPolicy};
pub use supervise::{PluginState, SupervisedPlugin};

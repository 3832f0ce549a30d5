//! The two ways a plugin joins a host, as in connect-plugin-go:
//!
//! - model A, [`assigned`]: the host launches the plugin, asks what it provides and assigns it
//!   a runtime identity (`PluginIdentity`); the plugin then registers like any other;
//! - model B, [`self_registration`]: the plugin starts on its own (`HOST_URL` set), handshakes
//!   with the host, registers and heartbeats, and does it all again after a host restart.
//!
//! This module is the plugin's side of both; the host's side is [`crate::host::platform`].

pub mod assigned;
pub mod self_registration;

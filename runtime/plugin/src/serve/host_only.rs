//! A launched plugin answers only its host: the launch secret.
//!
//! A host that launches a plugin process ([`crate::process`]) makes a fresh random secret for
//! that launch and hands it to the child alone, in [`LAUNCH_SECRET_ENV`]. A plugin served with
//! [`crate::serve()`] that finds it there refuses, with `unauthenticated`, every call that does
//! not carry it in the [`LAUNCH_SECRET_HEADER`] header: the handshake, health, the identity
//! control RPCs and every plugin service. Only `/healthz` and `/readyz` stay open (they tell
//! nothing but serving status). The host sends the secret on its own calls
//! ([`PluginProcess::channel`](crate::process::PluginProcess::channel)) and on the calls its
//! routing gateway forwards, so a local process that finds the plugin's port can neither call
//! it nor forge the caller id the host sets.
//!
//! This module owns the secret's names and the check; making the secret and handing it over
//! is the launcher's.

use std::sync::Arc;

use crate::identity::constant_time_eq;
use crate::rpc::__private::{Guard, RecvBody};
use crate::{Code, Error};

/// The environment variable carrying a launched plugin's launch secret.
pub const LAUNCH_SECRET_ENV: &str = "CONNECT_PLUGIN_LAUNCH_SECRET";

/// The request header carrying the launch secret on calls to a launched plugin.
pub const LAUNCH_SECRET_HEADER: &str = "x-plugin-launch-secret";

/// The launch secret this process was started with, if a host launched it with one.
pub(crate) fn from_env() -> Option<String> {
    std::env::var(LAUNCH_SECRET_ENV)
        .ok()
        .filter(|secret| !secret.is_empty())
}

/// The check that lets through only calls carrying `secret` (and the plain probes).
pub(crate) fn guard(secret: String) -> Guard {
    Arc::new(move |request: &http::Request<RecvBody>| {
        let path = request.uri().path();
        if path == "/healthz" || path == "/readyz" {
            return Ok(());
        }
        let presented = request
            .headers()
            .get(LAUNCH_SECRET_HEADER)
            .map(http::HeaderValue::as_bytes);
        match presented {
            Some(presented) if constant_time_eq(presented, secret.as_bytes()) => Ok(()),
            _ => Err(Error::new(
                Code::Unauthenticated,
                format!(
                    "this plugin answers only the host that launched it: the call to {path} \
                     lacks its launch secret (header {LAUNCH_SECRET_HEADER}). Call it through \
                     the host; a host that launches plugins itself calls them with \
                     PluginProcess::channel() and routes to them once told \
                     ServiceRegistry::launched; LaunchConfig::answer_anyone turns this off"
                ),
            )),
        }
    })
}

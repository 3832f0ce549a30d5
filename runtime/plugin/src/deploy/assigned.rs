//! Deployment model A, platform-managed plugins (connect-plugin-go's `PluginIdentity`): the
//! host starts the plugin, asks it what it provides (`GetPluginInfo`), issues it a runtime
//! identity and tells it where the host is (`SetRuntimeIdentity`); the plugin then registers
//! and reports its health like a self-registering one.
//!
//! Plugin side: serve a [`AssignedIdentity`] (through [`AssignedIdentity::service`]) and wait
//! for [`AssignedIdentity::assigned`]. Host side: [`crate::host::Platform::add_managed`].
//!
//! The identity is taken once: a second `SetRuntimeIdentity` is refused with
//! `failed_precondition`. A plugin launched by a host answers only that host (its launch
//! secret, [`crate::serve::host_only`]), so nobody else can assign it first.
//!
//! It only answers the host and hands over the assignment: registering and reporting health with it
//! go through [`crate::Client::with_identity`], and starting the process and issuing the identity
//! are the host's ([`crate::host::platform`], [`crate::host::registry`]).

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::watch;

use crate::identity::RuntimeIdentity;
use crate::proto::connectplugin::v1 as wire;
use crate::rpc::Service;
use crate::{Code, Error, Request, Response};

/// What the host assigned to this plugin.
#[derive(Debug, Clone)]
pub struct Assignment {
    /// The plugin's runtime identity.
    pub identity: RuntimeIdentity,
    /// The host's URL.
    pub host_url: String,
}

/// The plugin side of model A: answers `GetPluginInfo` and receives `SetRuntimeIdentity`.
#[derive(Clone)]
pub struct AssignedIdentity {
    info: Arc<wire::GetPluginInfoResponse>,
    assignment: Arc<watch::Sender<Option<Assignment>>>,
    /// Accept an assignment though no launch secret guards this plugin.
    from_anyone: bool,
    /// The host's URL when an assignment names none (connect-plugin-go's platform sends an
    /// empty `host_url`): `HOST_URL`, read when this was made.
    default_host: Option<Arc<str>>,
}

impl std::fmt::Debug for AssignedIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AssignedIdentity")
            .field("self_id", &self.info.self_id)
            .finish()
    }
}

impl AssignedIdentity {
    /// A plugin called `self_id` at `self_version`, providing `(service type, version,
    /// path)` declarations and requiring `requires`.
    pub fn new(
        self_id: impl Into<String>,
        self_version: impl Into<String>,
        provides: &[(&str, &str, &str)],
        requires: Vec<crate::plugin::ServiceDependency>,
    ) -> Self {
        let info = wire::GetPluginInfoResponse {
            self_id: self_id.into(),
            self_version: self_version.into(),
            provides: provides
                .iter()
                .map(|(t, v, p)| wire::ServiceDeclaration {
                    r#type: (*t).to_owned(),
                    version: (*v).to_owned(),
                    path: (*p).to_owned(),
                })
                .collect(),
            requires: requires
                .into_iter()
                .map(|d| wire::ServiceDependency {
                    r#type: d.service_type,
                    min_version: d.min_version,
                    required_for_startup: d.required_for_startup,
                    watch_for_changes: d.watch_for_changes,
                })
                .collect(),
            metadata: HashMap::new(),
        };
        Self {
            info: Arc::new(info),
            assignment: Arc::new(watch::channel(None).0),
            from_anyone: false,
            default_host: std::env::var("HOST_URL").ok().map(Arc::from),
        }
    }

    /// The host's URL to use when an assignment names none (default: `HOST_URL`, which
    /// launching hosts set; connect-plugin-go's platform assigns identities with an empty
    /// `host_url`).
    #[must_use]
    pub fn default_host_url(mut self, url: impl Into<String>) -> Self {
        self.default_host = Some(Arc::from(url.into()));
        self
    }

    /// Accepts `SetRuntimeIdentity` even when no host launched this plugin with a launch
    /// secret (so whoever calls first assigns its identity and host). Only where every
    /// process that can reach the plugin is trusted.
    #[must_use]
    pub fn accept_from_anyone(mut self) -> Self {
        self.from_anyone = true;
        self
    }

    /// The `PluginIdentity` service to serve alongside the plugin's own.
    pub fn service(&self) -> Service {
        wire::PluginIdentityServer::new(self.clone()).into_service()
    }

    /// Waits until the host has assigned an identity.
    pub async fn assigned(&self) -> Assignment {
        let mut rx = self.assignment.subscribe();
        loop {
            if let Some(assignment) = rx.borrow_and_update().clone() {
                return assignment;
            }
            if rx.changed().await.is_err() {
                // Unreachable while `self` holds the sender; wait forever rather than panic.
                std::future::pending::<()>().await;
            }
        }
    }
}

impl wire::PluginIdentity for AssignedIdentity {
    async fn get_plugin_info(
        &self,
        _: Request<wire::GetPluginInfoRequest>,
    ) -> Result<Response<wire::GetPluginInfoResponse>, Error> {
        Ok(Response::new((*self.info).clone()))
    }

    async fn set_runtime_identity(
        &self,
        request: Request<wire::SetRuntimeIdentityRequest>,
    ) -> Result<Response<wire::SetRuntimeIdentityResponse>, Error> {
        if !self.from_anyone {
            // Checked here too, whatever guards the server: only the launching host assigns.
            let Some(secret) = crate::serve::host_only::from_env() else {
                return Err(Error::new(
                    Code::FailedPrecondition,
                    "no host launched this plugin with a launch secret, so anyone could assign its identity: launch it from a host (Platform::add_managed), or opt in with AssignedIdentity::accept_from_anyone",
                ));
            };
            let presented = request
                .metadata()
                .get(crate::serve::host_only::LAUNCH_SECRET_HEADER)
                .map(http::HeaderValue::as_bytes);
            if !presented.is_some_and(|p| crate::identity::constant_time_eq(p, secret.as_bytes())) {
                return Err(Error::new(
                    Code::Unauthenticated,
                    "only the host that launched this plugin assigns its identity (the call lacks its launch secret)",
                ));
            }
        }
        let request = request.into_message();
        if request.runtime_id.is_empty() || request.runtime_token.is_empty() {
            return Err(Error::new(
                Code::InvalidArgument,
                "runtime_id and runtime_token are both required",
            ));
        }
        // connect-plugin-go's platform sends no host_url: the plugin's host is then the one
        // in HOST_URL, which every launching host sets.
        let host_url = match request.host_url {
            url if url.is_empty() => self.default_host.as_deref().map(str::to_owned).ok_or_else(|| {
                Error::new(
                    Code::InvalidArgument,
                    "host_url is empty and HOST_URL is not set: the plugin cannot tell where its host is",
                )
            })?,
            url => url,
        };
        let assignment = Assignment {
            identity: RuntimeIdentity {
                runtime_id: request.runtime_id,
                token: request.runtime_token,
            },
            host_url,
        };
        // Taken once: nobody can re-point a plugin at another host or identity later.
        let mut assignment = Some(assignment);
        let first = self.assignment.send_if_modified(|current| {
            if current.is_some() {
                return false;
            }
            *current = assignment.take();
            true
        });
        if !first {
            return Err(Error::new(
                Code::FailedPrecondition,
                "this plugin already has its runtime identity: it takes one, once, from the host that launched it (restart the plugin to assign another)",
            ));
        }
        Ok(Response::new(wire::SetRuntimeIdentityResponse {
            acknowledged: true,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::connectplugin::v1::PluginIdentity as _;

    #[tokio::test]
    async fn the_identity_is_taken_once() {
        let plugin =
            AssignedIdentity::new("logger-plugin", "1.0.0", &[], Vec::new()).accept_from_anyone();
        let assign = |id: &str| {
            Request::new(wire::SetRuntimeIdentityRequest {
                runtime_id: id.into(),
                runtime_token: "t".repeat(32),
                host_url: "http://127.0.0.1:1".into(),
            })
        };
        let first = plugin.set_runtime_identity(assign("first")).await.unwrap();
        assert!(first.message().acknowledged);
        let err = plugin
            .set_runtime_identity(assign("second"))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
        assert!(err.message().contains("already has its runtime identity"));
        assert_eq!(plugin.assigned().await.identity.runtime_id, "first");

        // connect-plugin-go's platform names no host: the plugin's own HOST_URL is its host.
        let upstream = AssignedIdentity::new("logger-plugin", "1.0.0", &[], Vec::new())
            .accept_from_anyone()
            .default_host_url("http://127.0.0.1:7");
        let mut empty = assign("go-assigned");
        empty.message_mut().host_url.clear();
        upstream.set_runtime_identity(empty).await.unwrap();
        assert_eq!(upstream.assigned().await.host_url, "http://127.0.0.1:7");
        let nowhere =
            AssignedIdentity::new("logger-plugin", "1.0.0", &[], Vec::new()).accept_from_anyone();
        let mut nowhere = nowhere;
        nowhere.default_host = None;
        let mut empty = assign("go-assigned");
        empty.message_mut().host_url.clear();
        let err = nowhere.set_runtime_identity(empty).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err}");

        // Without a launch secret guarding it, and without the opt-in: refused.
        let unguarded = AssignedIdentity::new("logger-plugin", "1.0.0", &[], Vec::new());
        let err = unguarded
            .set_runtime_identity(assign("first"))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    }
}

//! Deployment model A, platform-managed plugins (connect-plugin-go's `PluginIdentity`): the
//! host starts the plugin, asks it what it provides (`GetPluginInfo`), issues it a runtime
//! identity and tells it where the host is (`SetRuntimeIdentity`); the plugin then registers
//! and reports its health like a self-registering one.
//!
//! Plugin side: serve a [`AssignedIdentity`] (through [`AssignedIdentity::service`]) and wait
//! for [`AssignedIdentity::assigned`]. Host side: [`crate::host::Platform::add_managed`].
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
        }
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
        let request = request.into_message();
        if request.runtime_id.is_empty()
            || request.runtime_token.is_empty()
            || request.host_url.is_empty()
        {
            return Err(Error::new(
                Code::InvalidArgument,
                "runtime_id, runtime_token and host_url are all required",
            ));
        }
        self.assignment.send_replace(Some(Assignment {
            identity: RuntimeIdentity {
                runtime_id: request.runtime_id,
                token: request.runtime_token,
            },
            host_url: request.host_url,
        }));
        Ok(Response::new(wire::SetRuntimeIdentityResponse {
            acknowledged: true,
        }))
    }
}

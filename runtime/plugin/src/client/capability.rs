//! Host capabilities seen from a plugin: [`Client::request_capability`] asks the host's broker
//! for a grant, and the [`CapabilityGrant`] it returns carries a channel that calls the
//! capability through the host (`/capabilities/{type}/{grant}/...`) with the grant's token.
//!
//! The broker itself, which decides and checks grants, is the host's
//! ([`crate::host::broker`]).

use std::time::Duration;

use super::Client;
use crate::identity::RuntimeIdentity;
use crate::proto::connectplugin::v1 as wire;
use crate::{Channel, Error, Request};

/// A capability grant with a channel that calls the capability.
#[derive(Debug, Clone)]
pub struct CapabilityGrant {
    /// The grant's id.
    pub grant_id: String,
    /// The capability type, e.g. `logger`.
    pub capability_type: String,
    /// The capability's version.
    pub version: String,
    channel: Channel,
}

impl CapabilityGrant {
    /// The channel to the capability (its path prefix and bearer token included); dispense a
    /// typed client on it: `connect_plugin::dispense::<LoggerPlugin>(grant.channel())`.
    pub fn channel(&self) -> &Channel {
        &self.channel
    }
}

impl Client {
    /// Requests a host capability (e.g. `logger`) at `min_version` or newer (`""` for any).
    ///
    /// # Errors
    /// `failed_precondition` without a runtime identity (set [`ClientConfig::self_id`](crate::ClientConfig::self_id)); the
    /// broker's refusal otherwise (`not_found`, `failed_precondition`, `unauthenticated`).
    pub async fn request_capability(
        &self,
        capability_type: &str,
        min_version: &str,
    ) -> Result<CapabilityGrant, Error> {
        let identity = self.identity("requesting a capability").await?;
        let mut request = Request::new(wire::RequestCapabilityRequest {
            capability_type: capability_type.to_owned(),
            min_version: min_version.to_owned(),
            reason: String::new(),
        });
        identity.apply(request.metadata_mut());
        let grant = wire::CapabilityBrokerClient::new(self.channel.clone())
            .request_capability(request)
            .await?
            .into_message()
            .grant
            .ok_or_else(|| Error::internal("the broker answered without a grant"))?;
        let mut headers = http::HeaderMap::new();
        RuntimeIdentity {
            runtime_id: identity.runtime_id.clone(),
            token: grant.bearer_token.clone(),
        }
        .apply(&mut headers);
        let channel = self.channel.derive(&grant.endpoint_url, headers)?;
        let channel = crate::rpc::__private::or_timeout(channel, Duration::from_secs(30));
        Ok(CapabilityGrant {
            grant_id: grant.grant_id,
            capability_type: grant.capability_type,
            version: grant.version,
            channel,
        })
    }
}

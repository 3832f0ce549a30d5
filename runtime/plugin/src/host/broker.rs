//! The capability broker (`connectplugin.v1.CapabilityBroker`, wire-compatible with
//! connect-plugin-go): a host offers capabilities (Connect services such as a logger), lists
//! them in the handshake, and grants a plugin with a runtime identity access to one. The plugin
//! then calls the capability at `/capabilities/{type}/{grant_id}/{pkg.Service}/{Method}` with
//! the grant's bearer token.
//!
//! Beyond upstream: the broker is served by [`crate::serve()`] (added with
//! [`crate::ServeConfig::broker`]) (upstream mounts it where no
//! client reaches it), grants honour their TTL and can be revoked, a grant is bound to the
//! runtime identity that asked for it, and `min_version` is compared as semver.
//!
//! The broker never imports the registry or the gateway. It checks runtime identities but does not
//! issue them ([`crate::identity`], through the handshake), and the plugin's side of a grant is
//! [`crate::client::CapabilityGrant`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use tokio::time::Instant;

use crate::identity::{self, IdentityStore, RUNTIME_ID_HEADER};
use crate::proto::connectplugin::v1 as wire;
use crate::rpc::__private::{self as rpc_private, Dispatcher, RawHandler};
use crate::rpc::{Server, Service};
use crate::{Code, Error, Request, Response};

/// Where capabilities are called.
pub const CAPABILITY_PREFIX: &str = "/capabilities/";

/// Default lifetime of a grant: one hour, as upstream documents.
pub const DEFAULT_GRANT_TTL: Duration = Duration::from_secs(60 * 60);

/// The most live grants one plugin holds; a new one replaces its oldest.
pub const MAX_GRANTS_PER_PLUGIN: usize = 16;

/// The most live grants a broker holds in all; past it, `resource_exhausted`.
pub const MAX_GRANTS: usize = 10_000;

struct Capability {
    version: semver::Version,
    router: Dispatcher,
}

struct Grant {
    capability_type: String,
    token: String,
    runtime_id: String,
    expires: Instant,
}

struct Inner {
    capabilities: HashMap<String, Capability>,
    grants: Mutex<HashMap<String, Grant>>,
    grant_ttl: Duration,
    rng: SystemRandom,
    identities: OnceLock<Arc<IdentityStore>>,
}

/// Host capabilities and the grants to use them; give it to [`crate::ServeConfig::broker`].
#[derive(Clone)]
pub struct CapabilityBroker {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for CapabilityBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CapabilityBroker")
            .field(
                "capabilities",
                &self.inner.capabilities.keys().collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Default for CapabilityBroker {
    fn default() -> Self {
        Self::new()
    }
}

/// A capability the broker offers, before it is added.
#[derive(Debug)]
pub struct CapabilityDefinition {
    capability_type: String,
    version: String,
    services: Vec<Service>,
}

impl CapabilityDefinition {
    /// A capability of `capability_type` (e.g. `logger`) at `version` (semver), served by
    /// `service` (e.g. `LoggerServer::new(impl).into_service()`).
    pub fn new(
        capability_type: impl Into<String>,
        version: impl Into<String>,
        service: Service,
    ) -> Self {
        Self {
            capability_type: capability_type.into(),
            version: version.into(),
            services: vec![service],
        }
    }
}

impl CapabilityBroker {
    /// A broker with no capabilities and the default grant TTL.
    pub fn new() -> Self {
        Self::with_grant_ttl(DEFAULT_GRANT_TTL)
    }

    /// A broker whose grants live `ttl`.
    pub fn with_grant_ttl(ttl: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                capabilities: HashMap::new(),
                grants: Mutex::new(HashMap::new()),
                grant_ttl: ttl,
                rng: SystemRandom::new(),
                identities: OnceLock::new(),
            }),
        }
    }

    /// Adds a capability; builder style.
    ///
    /// # Errors
    /// `invalid_argument` for a version that is not semver, or an empty type; `already_exists`
    /// for a type offered twice.
    pub fn capability(mut self, definition: CapabilityDefinition) -> Result<Self, Error> {
        let CapabilityDefinition {
            capability_type,
            version,
            services,
        } = definition;
        if capability_type.is_empty() || capability_type.contains('/') {
            return Err(Error::invalid_argument(format!(
                "capability type {capability_type:?} must be non-empty and contain no '/'"
            )));
        }
        let version = semver::Version::parse(&version).map_err(|e| {
            Error::invalid_argument(format!(
                "capability {capability_type:?}: version {version:?} is not semver: {e}"
            ))
        })?;
        let inner = Arc::get_mut(&mut self.inner).ok_or_else(|| {
            Error::internal("capabilities must be added before the broker is shared")
        })?;
        if inner.capabilities.contains_key(&capability_type) {
            return Err(Error::new(
                Code::AlreadyExists,
                format!("capability {capability_type:?} is offered twice"),
            ));
        }
        let mut server = Server::new();
        for service in services {
            server = server.add_service(service);
        }
        inner.capabilities.insert(
            capability_type,
            Capability {
                version,
                router: Dispatcher::new(server),
            },
        );
        Ok(self)
    }

    /// The capabilities, as the handshake lists them.
    pub fn list(&self) -> Vec<wire::Capability> {
        let mut list: Vec<_> = self
            .inner
            .capabilities
            .iter()
            .map(|(kind, c)| wire::Capability {
                r#type: kind.clone(),
                version: c.version.to_string(),
                endpoint: format!("{CAPABILITY_PREFIX}{kind}"),
            })
            .collect();
        list.sort_by(|a, b| a.r#type.cmp(&b.r#type));
        list
    }

    /// Revokes a grant; returns whether it existed.
    pub fn revoke(&self, grant_id: &str) -> bool {
        self.grants().remove(grant_id).is_some()
    }

    /// Revokes every grant held by `runtime_id` (when a plugin goes away); returns how many.
    pub fn revoke_runtime(&self, runtime_id: &str) -> usize {
        let mut grants = self.grants();
        let before = grants.len();
        grants.retain(|_, g| g.runtime_id != runtime_id);
        before - grants.len()
    }

    fn grants(&self) -> std::sync::MutexGuard<'_, HashMap<String, Grant>> {
        self.inner.grants.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn attach(&self, identities: Arc<IdentityStore>) {
        let _ = self.inner.identities.set(identities);
    }

    fn grant(
        &self,
        runtime_id: String,
        request: &wire::RequestCapabilityRequest,
    ) -> Result<wire::CapabilityGrant, Error> {
        let kind = &request.capability_type;
        let capability = self.inner.capabilities.get(kind).ok_or_else(|| {
            let offered: Vec<_> = self.inner.capabilities.keys().collect();
            Error::not_found(format!(
                "no capability {kind:?} on this host (offered: {offered:?})"
            ))
        })?;
        if !request.min_version.is_empty() {
            let wanted = semver::Version::parse(&request.min_version).map_err(|e| {
                Error::invalid_argument(format!(
                    "min_version {:?} is not semver: {e}",
                    request.min_version
                ))
            })?;
            if capability.version < wanted {
                return Err(Error::new(
                    Code::FailedPrecondition,
                    format!(
                        "capability {kind:?} is version {}, older than the requested {wanted}",
                        capability.version
                    ),
                ));
            }
        }
        let grant_id = identity::hex(&identity::random_bytes::<16>(&self.inner.rng)?);
        let token = URL_SAFE_NO_PAD.encode(identity::random_bytes::<32>(&self.inner.rng)?);
        let now = Instant::now();
        let mut grants = self.grants();
        // Bounded: expired grants go when the broker is full (so granting stays cheap), and a
        // plugin holding its share gives up its oldest grant for the new one.
        if grants.len() >= MAX_GRANTS {
            grants.retain(|_, g| g.expires > now);
            if grants.len() >= MAX_GRANTS {
                return Err(Error::new(
                    Code::ResourceExhausted,
                    format!(
                        "this host holds {MAX_GRANTS} live capability grants, its limit; try again later"
                    ),
                ));
            }
        }
        let mine: Vec<(&String, Instant)> = grants
            .iter()
            .filter(|(_, g)| g.runtime_id == runtime_id)
            .map(|(id, g)| (id, g.expires))
            .collect();
        if mine.len() >= MAX_GRANTS_PER_PLUGIN
            && let Some(oldest) = mine
                .iter()
                .min_by_key(|(_, expires)| *expires)
                .map(|(id, _)| (*id).clone())
        {
            grants.remove(&oldest);
        }
        grants.insert(
            grant_id.clone(),
            Grant {
                capability_type: kind.clone(),
                token: token.clone(),
                runtime_id,
                expires: now + self.inner.grant_ttl,
            },
        );
        Ok(wire::CapabilityGrant {
            endpoint_url: format!("{CAPABILITY_PREFIX}{kind}/{grant_id}"),
            grant_id,
            bearer_token: token,
            capability_type: kind.clone(),
            version: capability.version.to_string(),
        })
    }

    /// Checks a call to `/capabilities/{type}/{grant}/...` and returns the capability's router
    /// and the path to dispatch.
    fn authorize<'a>(
        &self,
        headers: &http::HeaderMap,
        path: &'a str,
    ) -> Result<(Dispatcher, &'a str), Error> {
        let rest = path.strip_prefix(CAPABILITY_PREFIX).unwrap_or_default();
        let mut parts = rest.splitn(3, '/');
        let (Some(kind), Some(grant_id), Some(procedure)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(Error::not_found(format!(
                "{path} is not a capability call: expected /capabilities/<type>/<grant id>/<package.Service>/<Method>"
            )));
        };
        let token = identity::bearer_token(headers, "grant token")?;
        let caller = headers.get(RUNTIME_ID_HEADER).and_then(|v| v.to_str().ok());
        let denied = || {
            Error::new(
                Code::PermissionDenied,
                format!("grant {grant_id:?} does not allow this call"),
            )
        };
        {
            let mut grants = self.grants();
            let grant = grants.get(grant_id).ok_or_else(|| {
                Error::new(
                    Code::Unauthenticated,
                    format!("unknown or revoked grant {grant_id:?}"),
                )
            })?;
            if grant.expires <= Instant::now() {
                grants.remove(grant_id);
                return Err(Error::new(
                    Code::Unauthenticated,
                    format!("grant {grant_id:?} has expired; request the capability again"),
                ));
            }
            if !identity::constant_time_eq(grant.token.as_bytes(), token.as_bytes()) {
                return Err(Error::new(
                    Code::Unauthenticated,
                    format!("wrong bearer token for grant {grant_id:?}"),
                ));
            }
            if grant.capability_type != kind || caller != Some(grant.runtime_id.as_str()) {
                return Err(denied());
            }
        }
        let capability = self.inner.capabilities.get(kind).ok_or_else(denied)?;
        Ok((
            capability.router.clone(),
            &path[path.len() - procedure.len() - 1..],
        ))
    }

    /// The `/capabilities/` proxy.
    pub(crate) fn proxy(&self) -> RawHandler {
        let broker = self.clone();
        Arc::new(move |request: http::Request<rpc_private::RecvBody>| {
            let broker = broker.clone();
            Box::pin(async move {
                let path = request.uri().path().to_owned();
                match broker.authorize(request.headers(), &path) {
                    Ok((router, procedure)) => {
                        let (mut parts, body) = request.into_parts();
                        match procedure.parse() {
                            Ok(uri) => parts.uri = uri,
                            Err(_) => {
                                return rpc_private::error_response(&Error::not_found(
                                    "bad capability path",
                                ));
                            }
                        }
                        router.handle(http::Request::from_parts(parts, body)).await
                    }
                    Err(error) => rpc_private::error_response(&error),
                }
            })
        })
    }
}

impl wire::CapabilityBroker for CapabilityBroker {
    async fn request_capability(
        &self,
        request: Request<wire::RequestCapabilityRequest>,
    ) -> Result<Response<wire::RequestCapabilityResponse>, Error> {
        let identities = self.inner.identities.get().ok_or_else(|| {
            Error::unavailable("the capability broker is not attached to a server")
        })?;
        let runtime_id = identities.authenticate(request.metadata())?;
        let grant = self.grant(runtime_id, request.message())?;
        Ok(Response::new(wire::RequestCapabilityResponse {
            grant: Some(grant),
        }))
    }
}

/// The `logger` capability (`capability.logger.v1.Logger`, as in connect-plugin-go): writes the
/// lines plugins send into the host's `tracing` log, tagged with the caller's runtime id.
#[derive(Debug, Default, Clone, Copy)]
pub struct TracingLogger;

impl TracingLogger {
    /// The capability definition to add to a broker: type `logger`, version `1.0.0`.
    pub fn definition() -> CapabilityDefinition {
        use crate::proto::capability::logger::v1::LoggerServer;
        CapabilityDefinition::new(
            "logger",
            "1.0.0",
            LoggerServer::new(TracingLogger).into_service(),
        )
    }
}

impl crate::proto::capability::logger::v1::Logger for TracingLogger {
    async fn log(
        &self,
        request: Request<crate::proto::capability::logger::v1::LogRequest>,
    ) -> Result<Response<crate::proto::capability::logger::v1::LogResponse>, Error> {
        let caller = request
            .metadata()
            .get(RUNTIME_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("unknown")
            .to_owned();
        let line = request.into_message();
        let mut fields: Vec<_> = line.fields.iter().collect();
        fields.sort();
        // A plugin's text must not forge or rewrite the host's log lines.
        let message = crate::log::escape_control(&line.message);
        match line.level.as_str() {
            "error" => tracing::error!(plugin = %caller, ?fields, "{message}"),
            "warn" => tracing::warn!(plugin = %caller, ?fields, "{message}"),
            "debug" => tracing::debug!(plugin = %caller, ?fields, "{message}"),
            _ => tracing::info!(plugin = %caller, ?fields, "{message}"),
        }
        Ok(Response::new(Default::default()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plugin_holds_a_bounded_number_of_grants_newest_kept() {
        let broker = CapabilityBroker::new()
            .capability(TracingLogger::definition())
            .unwrap();
        let request = wire::RequestCapabilityRequest {
            capability_type: "logger".into(),
            ..Default::default()
        };
        let first = broker.grant("a".into(), &request).unwrap();
        let mut last = None;
        for _ in 0..MAX_GRANTS_PER_PLUGIN + 4 {
            last = Some(broker.grant("a".into(), &request).unwrap());
        }
        broker.grant("b".into(), &request).unwrap();
        let grants = broker.grants();
        let held = grants.values().filter(|g| g.runtime_id == "a").count();
        assert_eq!(held, MAX_GRANTS_PER_PLUGIN);
        assert!(!grants.contains_key(&first.grant_id), "the oldest went");
        assert!(
            grants.contains_key(&last.unwrap().grant_id),
            "the newest stays"
        );
        assert_eq!(grants.len(), MAX_GRANTS_PER_PLUGIN + 1, "b keeps its own");
    }
}

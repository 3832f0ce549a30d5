//! The handshake (`connectplugin.v1.HandshakeService`), wire-compatible with connect-plugin-go:
//! the first call a client makes. The server checks the magic cookie and the protocol
//! versions, tells which requested plugins it serves, shares its metadata and the host
//! capabilities, and issues a runtime identity to a client that introduces itself.
//!
//! Beyond upstream: app protocol versions are negotiated. A client may list the versions it
//! speaks in the `app_protocol_versions` client metadata entry (`"1,2,3"`); the highest version
//! both sides speak wins, like go-plugin's versioned plugin sets. Without the list, the
//! client's `app_protocol_version` must be one the server speaks.
//!
//! This is the server half only; the client half is [`crate::Client::connect`]. It stores no
//! identities and imports no host part: tokens come from [`crate::identity`], and the host's
//! capability list and join hook are handed in through [`crate::serve()`] when a host adds its
//! parts ([`crate::host`]).

use std::collections::HashMap;
use std::sync::Arc;

use crate::identity::IdentityStore;
use crate::proto::connectplugin::v1 as wire;
use crate::proto::connectplugin::v1::HandshakeService;
use crate::{Code, Error, Request, Response};

/// The only core protocol version.
pub const CORE_PROTOCOL_VERSION: i32 = 1;

/// The client metadata key that lists every app protocol version a client speaks.
pub const APP_VERSIONS_KEY: &str = "app_protocol_versions";

/// The longest `self_id` accepted.
const MAX_SELF_ID: usize = 128;

pub(crate) struct HandshakeServer {
    pub(crate) app_versions: Vec<i32>,
    pub(crate) cookie_key: String,
    pub(crate) cookie_value: String,
    pub(crate) server_metadata: HashMap<String, String>,
    pub(crate) plugins: Vec<wire::PluginInfo>,
    pub(crate) capabilities: Arc<dyn Fn() -> Vec<wire::Capability> + Send + Sync>,
    pub(crate) identities: Arc<IdentityStore>,
    /// Who gets a runtime identity.
    pub(crate) join: JoinPolicy,
    /// Told of every identity issued (a host's registry records what the plugin provides).
    pub(crate) on_join: Option<JoinHook>,
}

/// Called with each runtime id the handshake issues and what it was admitted with.
pub(crate) type JoinHook = Arc<dyn Fn(&str, &Admission) + Send + Sync>;

/// Where a host may reach a plugin admitted by a join token: what a registration's
/// `base_url` may be, and the launch secret the host's calls carry.
#[derive(Clone, Debug, Default)]
pub(crate) enum Reach {
    /// At the address it registers from (its peer address; `localhost` from loopback).
    #[default]
    Own,
    /// A process this host is launching, whose address is not known yet: not routed to.
    Launching,
    /// A process this host launched: only at `endpoint`, with its launch secret, over
    /// HTTP/1.1 if it announced it answers nothing else.
    Launched {
        endpoint: String,
        secret: Option<http::HeaderValue>,
        http1: bool,
    },
    /// At its own address or at these base URLs (the operator's list).
    Listed(Arc<[String]>),
}

/// The handshake client metadata key carrying a plugin's control token to its host (see
/// [`crate::serve::control`]).
pub const CONTROL_TOKEN_KEY: &str = "control_token";

/// The request header carrying the control token on `PluginControl.Shutdown`.
pub const CONTROL_TOKEN_HEADER: &str = "x-plugin-control-token";

/// The client metadata key carrying a join token in the handshake.
pub const JOIN_TOKEN_KEY: &str = "join_token";

/// The environment variable a host sets for a plugin it launches, holding the plugin's
/// per-launch join token; [`crate::ClientConfig::new`] reads it.
pub const JOIN_TOKEN_ENV: &str = "CONNECT_PLUGIN_JOIN_TOKEN";

/// Who may join: which handshakes get a runtime identity (the credential for calling a host's
/// registry, lifecycle, routing and capabilities), and which service types each may provide.
///
/// The magic cookie proves nothing (it is public), so by default a handshake gets an identity
/// only with a join token ([`JOIN_TOKEN_KEY`] in its client metadata) that the host knows:
/// - a per-launch token, made by [`JoinPolicy::issue`] when the host starts the plugin and
///   handed to that child alone (environment variable [`JOIN_TOKEN_ENV`]);
/// - an operator's token for a self-registering plugin, set with [`JoinPolicy::allow`].
///
/// A token names the plugin (its `self_id`) and what it may provide; what a plugin declares
/// about itself is ignored. Without a token a handshake still learns versions and plugins, but
/// gets no identity. [`JoinPolicy::open`] restores connect-plugin-go's behaviour (anyone with
/// the cookie joins and declares what it provides) for peers that cannot present a token;
/// serving with it logs a warning. Cheap to clone: clones share one policy.
#[derive(Clone, Default)]
pub struct JoinPolicy {
    inner: Arc<std::sync::Mutex<Tokens>>,
}

#[derive(Default)]
struct Tokens {
    open: bool,
    /// SHA-256 of a token (hex) -> what it admits.
    grants: HashMap<String, Grant>,
    /// Plugin id -> what a client certificate naming it admits (mutual TLS).
    certificates: HashMap<String, Vec<String>>,
}

#[derive(Clone)]
struct Grant {
    /// The `self_id` the token belongs to; `None` for a token shared by several plugins.
    plugin_id: Option<String>,
    provides: Vec<String>,
    /// Where its plugin may be reached.
    reach: Reach,
    /// The runtime ids this token was admitted with, newest last (the last few).
    admitted: Vec<String>,
}

/// How many runtime ids a token remembers having admitted.
const ADMITTED_KEPT: usize = 8;

/// What a handshake was admitted with.
pub(crate) struct Admission {
    /// The service types its identity may provide.
    pub(crate) provides: Vec<String>,
    /// Whether it may provide any type (open mode, and it declared none, as
    /// connect-plugin-go's plugins do not).
    pub(crate) any_type: bool,
    /// Where its plugin may be reached.
    pub(crate) reach: Reach,
    /// The digest of the join token that admitted it (none in open mode without a token).
    token: Option<String>,
    /// Whether a client certificate admitted it.
    certificate: bool,
    /// The identity this admission ended (its credential's oldest, past the per-credential
    /// cap), whose registrations go too.
    pub(crate) superseded: Option<String>,
    /// The token with which the host may stop the plugin (`PluginControl.Shutdown`).
    pub(crate) control_token: Option<http::HeaderValue>,
}

impl Admission {
    /// What admitted it, as the tag its identity keeps and renewals check
    /// ([`JoinPolicy::still_admits`]).
    fn tag(&self, self_id: &str) -> String {
        match (&self.token, self.certificate) {
            (Some(digest), _) => format!("t:{digest}"),
            (None, true) => format!("c:{self_id}"),
            (None, false) => "open".to_owned(),
        }
    }
}

impl std::fmt::Debug for JoinPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tokens = self.tokens();
        f.debug_struct("JoinPolicy")
            .field("open", &tokens.open)
            .field("tokens", &tokens.grants.len())
            .finish()
    }
}

/// The longest join token accepted.
const MAX_JOIN_TOKEN: usize = 256;

impl JoinPolicy {
    /// A closed policy: only holders of a join token get an identity.
    pub fn new() -> Self {
        Self::default()
    }

    /// An open policy, as connect-plugin-go: any client that presents the magic cookie and a
    /// `self_id` gets an identity and may provide the service types it declares. Tokens still
    /// work, and then bind the plugin to what they admit. Only for peers that cannot present a
    /// join token, on a network where every local process is trusted.
    pub fn open() -> Self {
        let policy = Self::default();
        policy.set_open(true);
        policy
    }

    /// Whether anyone with the cookie may join.
    pub fn is_open(&self) -> bool {
        self.tokens().open
    }

    /// Opens or closes this (shared) policy; see [`JoinPolicy::open`].
    pub fn set_open(&self, open: bool) {
        if open {
            tracing::warn!(
                "open joining: any local process with the public magic cookie can get a runtime identity and provide services; use join tokens where peers can present them"
            );
        }
        self.tokens().open = open;
    }

    fn tokens(&self) -> std::sync::MutexGuard<'_, Tokens> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Admits the plugin `plugin_id` (its `self_id`) with `token`, allowed to provide
    /// `provides` (an operator's join token for a self-registering plugin). `plugin_id` `None`
    /// makes a token shared by several plugins, each joining under its own `self_id`.
    ///
    /// # Errors
    /// `invalid_argument` for a token shorter than 16 or longer than 256 characters.
    pub fn allow<I, S>(
        &self,
        plugin_id: Option<&str>,
        token: &str,
        provides: I,
    ) -> Result<(), Error>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        if token.len() < 16 || token.len() > MAX_JOIN_TOKEN {
            return Err(Error::invalid_argument(
                "a join token must have 16 to 256 characters (use a random one, e.g. 32 hex digits)",
            ));
        }
        if let Some(id) = plugin_id {
            validate_self_id(id)?;
        }
        let grant = Grant {
            plugin_id: plugin_id.map(str::to_owned),
            provides: provides.into_iter().map(Into::into).collect(),
            reach: Reach::Own,
            admitted: Vec::new(),
        };
        self.tokens().grants.insert(digest(token), grant);
        Ok(())
    }

    /// A fresh random token admitting `plugin_id` with `provides`, for a plugin the host is
    /// about to launch: hand it to that child alone (environment variable [`JOIN_TOKEN_ENV`]).
    ///
    /// # Errors
    /// `internal` if the random generator fails.
    pub fn issue<I, S>(&self, plugin_id: &str, provides: I) -> Result<String, Error>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let rng = ring::rand::SystemRandom::new();
        let token = crate::identity::hex(&crate::identity::random_bytes::<32>(&rng)?);
        self.allow(Some(plugin_id), &token, provides)?;
        Ok(token)
    }

    /// Admits the plugin `plugin_id` without a token when it connects over mutual TLS with a
    /// client certificate, verified against the server's client CA, that names `plugin_id`
    /// (a DNS subject alternative name equal to it; see
    /// [`ServerTls::mutual_from_pem`](crate::rpc::tls::ServerTls::mutual_from_pem)). It may
    /// provide `provides`.
    ///
    /// # Errors
    /// `invalid_argument` for a plugin id that is not a valid certificate name (letters,
    /// digits, `-` and `.`).
    pub fn allow_certificate<I, S>(&self, plugin_id: &str, provides: I) -> Result<(), Error>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        validate_self_id(plugin_id)?;
        if !crate::rpc::tls::PeerCertificate::is_valid_name(plugin_id) {
            return Err(Error::invalid_argument(format!(
                "plugin id {plugin_id:?} cannot be named by a certificate: use letters, digits, '-' and '.'"
            )));
        }
        self.tokens().certificates.insert(
            plugin_id.to_owned(),
            provides.into_iter().map(Into::into).collect(),
        );
        Ok(())
    }

    /// Stops admitting `plugin_id` by its certificate; identities it holds cannot renew (and
    /// end with their token's lifetime).
    pub fn disallow_certificate(&self, plugin_id: &str) {
        self.tokens().certificates.remove(plugin_id);
    }

    /// Lets the plugins admitted by `token` register these base URLs too (scheme, host and
    /// port must match one of them), for plugins that do not serve at the address they call
    /// the host from (a container name, a Kubernetes Service, a proxy). Otherwise a
    /// registration's `base_url` must name the address the plugin calls from (`localhost` or
    /// any loopback address when it calls from loopback). Applies to plugins that join after
    /// the call.
    ///
    /// # Errors
    /// `not_found` for a token not allowed; `invalid_argument` for a base URL that is not an
    /// absolute `http://` or `https://` URL.
    pub fn allow_addresses<I, S>(&self, token: &str, base_urls: I) -> Result<(), Error>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let list: Vec<String> = base_urls.into_iter().map(Into::into).collect();
        for url in &list {
            crate::address::Origin::parse(url)?;
        }
        let mut tokens = self.tokens();
        let grant = tokens.grants.get_mut(&digest(token)).ok_or_else(|| {
            Error::not_found("no such join token: allow it first (JoinPolicy::allow)")
        })?;
        grant.reach = Reach::Listed(list.into());
        Ok(())
    }

    /// A token for a process about to be launched: its plugin is not routed to until
    /// [`JoinPolicy::launched`] says where it listens.
    pub(crate) fn issue_launch(
        &self,
        plugin_id: &str,
        provides: &[String],
    ) -> Result<String, Error> {
        let token = self.issue(plugin_id, provides.iter().cloned())?;
        if let Some(grant) = self.tokens().grants.get_mut(&digest(&token)) {
            grant.reach = Reach::Launching;
        }
        Ok(token)
    }

    /// The process launched with `token` listens at `endpoint` and takes `secret`; returns
    /// the runtime ids already admitted with the token (`None` for an unknown token).
    pub(crate) fn launched(
        &self,
        token: &str,
        endpoint: &str,
        secret: Option<http::HeaderValue>,
        http1: bool,
    ) -> Option<Vec<String>> {
        let mut tokens = self.tokens();
        let grant = tokens.grants.get_mut(&digest(token))?;
        grant.reach = Reach::Launched {
            endpoint: endpoint.to_owned(),
            secret,
            http1,
        };
        Some(grant.admitted.clone())
    }

    /// Forgets `token`: it admits no one any more.
    pub fn revoke(&self, token: &str) {
        self.tokens().grants.remove(&digest(token));
    }

    /// The runtime ids the handshakes presenting `token` were given, newest last: how a host
    /// that launched a plugin knows which registrations are that process's.
    pub fn admitted(&self, token: &str) -> Vec<String> {
        self.tokens()
            .grants
            .get(&digest(token))
            .map(|grant| grant.admitted.clone())
            .unwrap_or_default()
    }

    /// Remembers that the handshake admitted by `admission` was given `runtime_id`.
    #[cfg(test)]
    pub(crate) fn record(&self, admission: &Admission, runtime_id: &str) {
        let _ = Self::record_in(&mut self.tokens(), admission, runtime_id);
    }

    /// Records the admission; returns the identity it supersedes: a token holds at most
    /// [`ADMITTED_KEPT`] live identities, so one credential cannot fill the host's caps.
    fn record_in(tokens: &mut Tokens, admission: &Admission, runtime_id: &str) -> Option<String> {
        let token = admission.token.as_ref()?;
        let grant = tokens.grants.get_mut(token)?;
        let superseded = (grant.admitted.len() == ADMITTED_KEPT).then(|| grant.admitted.remove(0));
        grant.admitted.push(runtime_id.to_owned());
        superseded
    }

    /// What the handshake `request`, made over a connection that presented `certificate`, is
    /// admitted with, or `None` when it gets no identity.
    #[cfg(test)]
    pub(crate) fn admit(
        &self,
        request: &wire::HandshakeRequest,
        certificate: Option<&crate::rpc::tls::PeerCertificate>,
    ) -> Option<Admission> {
        Self::admission(&self.tokens(), request, certificate)
    }

    fn admission(
        tokens: &Tokens,
        request: &wire::HandshakeRequest,
        certificate: Option<&crate::rpc::tls::PeerCertificate>,
    ) -> Option<Admission> {
        let presented = request
            .client_metadata
            .get(JOIN_TOKEN_KEY)
            .filter(|t| !t.is_empty() && t.len() <= MAX_JOIN_TOKEN);
        if let Some(token) = presented {
            // Looked up by digest: no comparison of secrets that could leak through timing.
            let token = digest(token);
            if let Some(grant) = tokens.grants.get(&token)
                && grant
                    .plugin_id
                    .as_deref()
                    .is_none_or(|id| id == request.self_id)
            {
                return Some(Admission {
                    any_type: false,
                    provides: grant.provides.clone(),
                    reach: grant.reach.clone(),
                    token: Some(token),
                    certificate: false,
                    superseded: None,
                    control_token: None,
                });
            }
            if log_allowed() {
                tracing::warn!(self_id = %request.self_id, "handshake with an unknown join token");
            }
            return None;
        }
        if let (Some(provides), Some(certificate)) =
            (tokens.certificates.get(&request.self_id), certificate)
        {
            if certificate.is_valid_for_name(&request.self_id) {
                return Some(Admission {
                    any_type: false,
                    provides: provides.clone(),
                    reach: Reach::Own,
                    token: None,
                    certificate: true,
                    superseded: None,
                    control_token: None,
                });
            }
            if log_allowed() {
                tracing::warn!(self_id = %request.self_id, "handshake with a client certificate that does not name the plugin");
            }
        }
        let declared = request.client_metadata.get(PROVIDES_KEY);
        tokens.open.then(|| Admission {
            provides: declared
                .map(|list| {
                    list.split(',')
                        .map(str::trim)
                        .filter(|t| !t.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
            // A plugin that declares nothing (connect-plugin-go's plugins do not) may register
            // any type, as upstream allows; one that declares is held to its list.
            any_type: declared.is_none(),
            reach: Reach::Own,
            token: None,
            certificate: false,
            superseded: None,
            control_token: None,
        })
    }

    /// Admits the handshake `request` (made over a connection that presented
    /// `certificate`) and issues its identity from `identities`, in one step: a launcher
    /// binding the token meanwhile sees either the admission or the identity, never half.
    pub(crate) fn join(
        &self,
        request: &wire::HandshakeRequest,
        certificate: Option<&crate::rpc::tls::PeerCertificate>,
        identities: &IdentityStore,
    ) -> Result<Option<(Admission, crate::identity::RuntimeIdentity)>, Error> {
        let mut tokens = self.tokens();
        let Some(admission) = Self::admission(&tokens, request, certificate) else {
            return Ok(None);
        };
        let mut admission = admission;
        admission.control_token = request
            .client_metadata
            .get(CONTROL_TOKEN_KEY)
            .filter(|t| !t.is_empty() && t.len() <= MAX_JOIN_TOKEN)
            .and_then(|t| http::HeaderValue::from_str(t).ok())
            .map(|mut t| {
                t.set_sensitive(true);
                t
            });
        let identity =
            identities.issue_admitted(&request.self_id, Some(admission.tag(&request.self_id)))?;
        admission.superseded = Self::record_in(&mut tokens, &admission, &identity.runtime_id);
        if let Some(old) = &admission.superseded {
            identities.revoke(old);
        }
        Ok(Some((admission, identity)))
    }

    /// Whether what a tag ([`Admission::tag`]) names still admits: the token is not revoked,
    /// the certificate still allowed, joining still open. Host-issued identities (no tag)
    /// always renew.
    /// A certificate's admission renews only over a connection presenting a certificate
    /// that still names the plugin (so an expired or replaced certificate ends it).
    pub(crate) fn still_admits(
        &self,
        tag: Option<&str>,
        certificate: Option<&crate::rpc::tls::PeerCertificate>,
    ) -> bool {
        let tokens = self.tokens();
        match tag {
            None => true,
            Some("open") => tokens.open,
            Some(tag) => match (tag.strip_prefix("t:"), tag.strip_prefix("c:")) {
                (Some(digest), _) => tokens.grants.contains_key(digest),
                (_, Some(plugin_id)) => {
                    tokens.certificates.contains_key(plugin_id)
                        && certificate.is_some_and(|c| c.is_valid_for_name(plugin_id))
                }
                _ => false,
            },
        }
    }
}

/// Whether a refused handshake may be logged now: at most one line a second, so strangers
/// cannot flood the host's log by handshaking in a loop.
fn log_allowed() -> bool {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    LAST.swap(now, Ordering::Relaxed) != now
}

/// A token issued for a process this host launched, revoked when the ticket is dropped (the
/// process was removed, replaced or stopped), so it cannot be used again.
pub(crate) struct JoinTicket {
    policy: JoinPolicy,
    token: String,
}

impl JoinTicket {
    pub(crate) fn new(policy: &JoinPolicy, token: String) -> Self {
        Self {
            policy: policy.clone(),
            token,
        }
    }

    pub(crate) fn token(&self) -> &str {
        &self.token
    }
}

impl Drop for JoinTicket {
    fn drop(&mut self) {
        self.policy.revoke(&self.token);
    }
}

fn digest(token: &str) -> String {
    crate::identity::hex(ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref())
}

/// The client metadata key listing the service types a plugin provides, comma-separated
/// (`"logger,cache"`); a host with a registry lets it register those.
pub const PROVIDES_KEY: &str = "provides";

/// The highest version both sides speak.
pub(crate) fn negotiate(server: &[i32], request: &wire::HandshakeRequest) -> Result<i32, Error> {
    let client: Vec<i32> = match request.client_metadata.get(APP_VERSIONS_KEY) {
        Some(list) => list
            .split(',')
            .filter_map(|v| v.trim().parse().ok())
            .collect(),
        None => vec![request.app_protocol_version],
    };
    client
        .iter()
        .filter(|v| server.contains(v))
        .max()
        .copied()
        .ok_or_else(|| {
            Error::new(
                Code::FailedPrecondition,
                format!(
                    "version mismatch: client={}, server={} (client speaks {client:?}, server speaks {server:?})",
                    request.app_protocol_version,
                    server.iter().max().copied().unwrap_or_default(),
                ),
            )
        })
}

fn validate_self_id(self_id: &str) -> Result<(), Error> {
    if self_id.len() > MAX_SELF_ID
        || !self_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ' '))
    {
        return Err(Error::invalid_argument(format!(
            "invalid self_id {self_id:?}: use at most {MAX_SELF_ID} letters, digits, '-', '_', '.' or spaces"
        )));
    }
    Ok(())
}

/// The server metadata entry telling clients how long runtime tokens live (milliseconds), so
/// they renew in time.
pub const TOKEN_TTL_KEY: &str = "runtime_token_ttl_ms";

impl HandshakeServer {
    /// Handshakes `request`, whose call carried `headers`: a client that presents a live
    /// identity of its own `self_id` there renews it (same runtime id, fresh token) instead of
    /// joining again.
    pub(crate) fn handshake(
        &self,
        request: &wire::HandshakeRequest,
        headers: &http::HeaderMap,
        certificate: Option<&crate::rpc::tls::PeerCertificate>,
    ) -> Result<wire::HandshakeResponse, Error> {
        if request.magic_cookie_key != self.cookie_key
            || request.magic_cookie_value != self.cookie_value
        {
            return Err(Error::invalid_argument(
                "invalid magic cookie - this may not be a connect-plugin server",
            ));
        }
        if request.core_protocol_version != CORE_PROTOCOL_VERSION {
            return Err(Error::invalid_argument(format!(
                "unsupported core protocol version: {} (server supports: {CORE_PROTOCOL_VERSION})",
                request.core_protocol_version
            )));
        }
        let app_protocol_version = negotiate(&self.app_versions, request)?;
        let mut response = wire::HandshakeResponse {
            core_protocol_version: CORE_PROTOCOL_VERSION,
            app_protocol_version,
            plugins: self
                .plugins
                .iter()
                .filter(|p| request.requested_plugins.contains(&p.name))
                .cloned()
                .collect(),
            server_metadata: self.server_metadata.clone(),
            host_capabilities: (self.capabilities)(),
            ..Default::default()
        };
        if !request.self_id.is_empty() {
            validate_self_id(&request.self_id)?;
            response.server_metadata.insert(
                TOKEN_TTL_KEY.to_owned(),
                self.identities.ttl().as_millis().to_string(),
            );
            let renewed = headers
                .contains_key(crate::identity::RUNTIME_ID_HEADER)
                .then(|| {
                    self.identities.renew(headers, &request.self_id, |tag| {
                        self.join.still_admits(tag, certificate)
                    })
                });
            // Without an admitting credential the handshake succeeds but issues no identity.
            if let Some(Ok(identity)) = renewed {
                response.runtime_id = identity.runtime_id;
                response.runtime_token = identity.token;
            } else if let Some((admission, identity)) =
                self.join.join(request, certificate, &self.identities)?
            {
                if let Some(on_join) = &self.on_join {
                    on_join(&identity.runtime_id, &admission);
                }
                response.runtime_id = identity.runtime_id;
                response.runtime_token = identity.token;
            } else if log_allowed() {
                tracing::info!(
                    self_id = %request.self_id,
                    "handshake without a join credential: no runtime identity issued"
                );
            }
        }
        Ok(response)
    }
}

impl HandshakeService for HandshakeServer {
    async fn handshake(
        &self,
        request: Request<wire::HandshakeRequest>,
    ) -> Result<Response<wire::HandshakeResponse>, Error> {
        HandshakeServer::handshake(
            self,
            request.message(),
            request.metadata(),
            request.peer_certificate(),
        )
        .map(Response::new)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::plugin::{MAGIC_COOKIE_KEY, MAGIC_COOKIE_VALUE};

    fn server() -> HandshakeServer {
        HandshakeServer {
            app_versions: vec![1, 2],
            cookie_key: MAGIC_COOKIE_KEY.into(),
            cookie_value: MAGIC_COOKIE_VALUE.into(),
            server_metadata: [("server_version".to_owned(), "x".to_owned())].into(),
            plugins: vec![wire::PluginInfo {
                name: "kv".into(),
                ..Default::default()
            }],
            capabilities: Arc::new(Vec::new),
            identities: Arc::new(IdentityStore::new(Duration::from_secs(60))),
            join: JoinPolicy::open(),
            on_join: None,
        }
    }

    fn request() -> wire::HandshakeRequest {
        wire::HandshakeRequest {
            core_protocol_version: 1,
            app_protocol_version: 1,
            magic_cookie_key: MAGIC_COOKIE_KEY.into(),
            magic_cookie_value: MAGIC_COOKIE_VALUE.into(),
            requested_plugins: vec!["kv".into(), "missing".into()],
            ..Default::default()
        }
    }

    #[test]
    fn a_launch_ticket_admits_its_plugin_until_dropped() {
        let policy = JoinPolicy::new();
        let ticket = JoinTicket::new(&policy, policy.issue("cache-plugin", ["cache"]).unwrap());
        let mut joining = request();
        joining.self_id = "cache-plugin".into();
        joining
            .client_metadata
            .insert(JOIN_TOKEN_KEY.into(), ticket.token().to_owned());
        let admitted = policy
            .admit(&joining, None)
            .expect("admitted with its token");
        assert_eq!(admitted.provides, ["cache"]);
        joining.self_id = "other".into();
        assert!(
            policy.admit(&joining, None).is_none(),
            "bound to its plugin id"
        );
        joining.self_id = "cache-plugin".into();
        drop(ticket);
        assert!(
            policy.admit(&joining, None).is_none(),
            "revoked once the launched process is gone"
        );
    }

    #[test]
    fn a_good_handshake_lists_only_served_plugins() {
        let r = server()
            .handshake(&request(), &http::HeaderMap::new(), None)
            .unwrap();
        assert_eq!((r.core_protocol_version, r.app_protocol_version), (1, 1));
        assert_eq!(r.plugins.len(), 1);
        assert_eq!(r.server_metadata["server_version"], "x");
        assert!(r.runtime_id.is_empty(), "no self_id, no identity");
    }

    #[test]
    fn wrong_cookie_is_invalid_argument() {
        let mut req = request();
        req.magic_cookie_value = "nope".into();
        let err = server()
            .handshake(&req, &http::HeaderMap::new(), None)
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert_eq!(
            err.message(),
            "invalid magic cookie - this may not be a connect-plugin server"
        );
        req.magic_cookie_key = String::new();
        assert_eq!(
            server()
                .handshake(&req, &http::HeaderMap::new(), None)
                .unwrap_err()
                .code(),
            Code::InvalidArgument
        );
    }

    #[test]
    fn wrong_core_version_is_invalid_argument() {
        let mut req = request();
        req.core_protocol_version = 2;
        let err = server()
            .handshake(&req, &http::HeaderMap::new(), None)
            .unwrap_err();
        assert_eq!(
            err.message(),
            "unsupported core protocol version: 2 (server supports: 1)"
        );
    }

    #[test]
    fn app_version_mismatch_is_failed_precondition() {
        let mut req = request();
        req.app_protocol_version = 3;
        let err = server()
            .handshake(&req, &http::HeaderMap::new(), None)
            .unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition);
        assert!(
            err.message()
                .starts_with("version mismatch: client=3, server=2"),
            "{err}"
        );
    }

    #[test]
    fn the_highest_common_app_version_wins() {
        let mut req = request();
        req.app_protocol_version = 3;
        req.client_metadata
            .insert(APP_VERSIONS_KEY.into(), "1,2,3".into());
        assert_eq!(
            server()
                .handshake(&req, &http::HeaderMap::new(), None)
                .unwrap()
                .app_protocol_version,
            2
        );
        req.client_metadata
            .insert(APP_VERSIONS_KEY.into(), "3,4".into());
        assert_eq!(
            server()
                .handshake(&req, &http::HeaderMap::new(), None)
                .unwrap_err()
                .code(),
            Code::FailedPrecondition
        );
    }

    #[test]
    fn self_id_gets_an_identity_and_bad_ones_are_refused() {
        let mut req = request();
        req.self_id = "cache-plugin".into();
        let r = server()
            .handshake(&req, &http::HeaderMap::new(), None)
            .unwrap();
        assert!(r.runtime_id.starts_with("cache-plugin-"));
        assert!(!r.runtime_token.is_empty());
        req.self_id = "evil/../id".into();
        assert_eq!(
            server()
                .handshake(&req, &http::HeaderMap::new(), None)
                .unwrap_err()
                .code(),
            Code::InvalidArgument
        );
        req.self_id = "x".repeat(200);
        assert_eq!(
            server()
                .handshake(&req, &http::HeaderMap::new(), None)
                .unwrap_err()
                .code(),
            Code::InvalidArgument
        );
    }
}

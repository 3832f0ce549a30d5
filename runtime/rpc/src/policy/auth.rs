//! Authentication for users' own services: [`Auth`] on the server (bearer tokens, API keys,
//! client certificates, composed), [`BearerToken`] and [`ApiKey`] on the client.

use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::interceptor::Interceptor;
use crate::server::intercept::{CallContext, ServerInterceptor};
use crate::tls::PeerCertificate;
use crate::{Code, Error, MethodDescriptor};

type Check<T> = Arc<dyn Fn(&T) -> Option<String> + Send + Sync>;

enum Credential {
    Bearer(Check<str>),
    ApiKey(HeaderName, Check<str>),
    Certificate(Check<PeerCertificate>),
    /// A credential kind configured wrongly: every checked call is refused, naming it.
    Misconfigured(String),
}

/// Authenticates calls before their handler runs, with each credential kind added, in order:
/// the first that names a principal wins, and handlers see it
/// ([`Request::principal`](crate::Request::principal)). A call presenting a credential that
/// does not check out, or none at all, is refused with `unauthenticated` (unless
/// [`Auth::optional`]); procedures listed with [`Auth::open`] are not checked. Validators
/// receive the presented value and return the principal, or `None` to refuse; compare secrets
/// in constant time.
///
/// ```
/// use connect_plugin_rpc::Server;
/// use connect_plugin_rpc::policy::Auth;
///
/// let server = Server::new().intercept(
///     Auth::new()
///         .bearer(|token| (token == "s3cret-token").then(|| "alice".to_owned()))
///         .api_key("x-api-key", |key| (key == "k-123").then(|| "batch-job".to_owned())),
/// );
/// ```
#[derive(Default)]
pub struct Auth {
    credentials: Vec<Credential>,
    optional: bool,
    open: Vec<&'static str>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("credentials", &self.credentials.len())
            .field("optional", &self.optional)
            .field("open", &self.open)
            .finish()
    }
}

impl Auth {
    /// No credential kind yet: add some.
    pub fn new() -> Self {
        Self::default()
    }

    /// Accepts `Authorization: Bearer <token>` when `check(token)` names a principal.
    #[must_use]
    pub fn bearer(
        mut self,
        check: impl Fn(&str) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.credentials.push(Credential::Bearer(Arc::new(check)));
        self
    }

    /// Accepts an API key in `header` (any case) when `check(key)` names a principal. A
    /// `header` that is not a header name makes every checked call fail with `internal`,
    /// naming it.
    #[must_use]
    pub fn api_key(
        mut self,
        header: &str,
        check: impl Fn(&str) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.credentials
            .push(match HeaderName::from_bytes(header.as_bytes()) {
                Ok(name) => Credential::ApiKey(name, Arc::new(check)),
                Err(_) => Credential::Misconfigured(format!(
                    "Auth::api_key: {header:?} is not a header name (letters, digits and '-')"
                )),
            });
        self
    }

    /// Accepts the client certificate a mutual-TLS handshake verified when `check(cert)`
    /// names a principal (see [`PeerCertificate::is_valid_for_name`]).
    #[must_use]
    pub fn certificate(
        mut self,
        check: impl Fn(&PeerCertificate) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.credentials
            .push(Credential::Certificate(Arc::new(check)));
        self
    }

    /// Lets calls without any credential through (with no principal); a credential that is
    /// presented must still check out.
    #[must_use]
    pub fn optional(mut self) -> Self {
        self.optional = true;
        self
    }

    /// Does not check calls to `procedure` (e.g. `/grpc.health.v1.Health/Check`), one this
    /// server serves itself (calls a proxy route forwards are always checked).
    #[must_use]
    pub fn open(mut self, procedure: &'static str) -> Self {
        self.open.push(procedure);
        self
    }

    /// The principal the call's credentials name: `Ok(None)` when it presents none. A
    /// credential header that is present counts as presented, even when it cannot be read or
    /// appears more than once (it is then invalid, not absent).
    fn authenticate(&self, call: &CallContext<'_>) -> Result<Option<String>, Error> {
        let mut presented = false;
        for credential in &self.credentials {
            let found = match credential {
                Credential::Bearer(check) => {
                    one_value(call.headers(), &http::header::AUTHORIZATION)
                        .map(|value| value.and_then(bearer_token).and_then(|token| check(token)))
                }
                Credential::ApiKey(name, check) => {
                    one_value(call.headers(), name).map(|value| value.and_then(|key| check(key)))
                }
                Credential::Certificate(check) => call.peer_certificate().map(|c| check(c)),
                Credential::Misconfigured(why) => return Err(Error::internal(why.clone())),
            };
            match found {
                Some(Some(principal)) => return Ok(Some(principal)),
                Some(None) => presented = true,
                None => {}
            }
        }
        if presented {
            return Err(Error::new(
                Code::Unauthenticated,
                format!(
                    "the credentials presented for {} are not valid",
                    call.procedure()
                ),
            ));
        }
        Ok(None)
    }

    fn missing(&self, procedure: &str) -> Error {
        let accepted: Vec<String> = self
            .credentials
            .iter()
            .map(|c| match c {
                Credential::Bearer(_) => "Authorization: Bearer <token>".to_owned(),
                Credential::ApiKey(name, _) => format!("{name}: <key>"),
                Credential::Certificate(_) => "a client certificate (mutual TLS)".to_owned(),
                Credential::Misconfigured(why) => why.clone(),
            })
            .collect();
        Error::new(
            Code::Unauthenticated,
            format!(
                "{} needs credentials: {}",
                procedure,
                if accepted.is_empty() {
                    "none are accepted (Auth has no credential kind)".to_owned()
                } else {
                    accepted.join(", or ")
                }
            ),
        )
    }
}

/// `None` when `name` is absent; `Some(None)` when present but unusable (not text, or more
/// than one value); `Some(Some(value))` otherwise.
fn one_value<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Option<Option<&'h str>> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    if values.next().is_some() {
        return Some(None);
    }
    Some(first.to_str().ok())
}

/// The token of a `Bearer` authorization value (the scheme matched case-insensitively).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|token| !token.is_empty())
}

impl ServerInterceptor for Auth {
    fn before(&self, call: &mut CallContext<'_>) -> Result<(), Error> {
        // Open procedures are this server's own: a forwarded call whose path merely ends
        // the same way is checked.
        if call.method().is_some() && self.open.contains(&call.procedure()) {
            return Ok(());
        }
        match self.authenticate(call)? {
            Some(principal) => {
                call.set_principal(principal);
                Ok(())
            }
            None if self.optional => Ok(()),
            None => Err(self.missing(call.procedure())),
        }
    }
}

/// Sends `Authorization: Bearer <token>` with every call of a channel.
#[derive(Clone)]
pub struct BearerToken(HeaderValue);

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerToken(..)")
    }
}

impl BearerToken {
    /// # Errors
    /// `invalid_argument` if the token cannot be a header value.
    pub fn new(token: &str) -> Result<Self, Error> {
        let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| Error::invalid_argument("the bearer token is not a valid header value"))?;
        value.set_sensitive(true);
        Ok(Self(value))
    }
}

impl Interceptor for BearerToken {
    fn before(&self, _: &MethodDescriptor, headers: &mut HeaderMap) -> Result<(), Error> {
        headers.insert(http::header::AUTHORIZATION, self.0.clone());
        Ok(())
    }
}

/// Sends an API key in a header with every call of a channel.
#[derive(Clone)]
pub struct ApiKey(HeaderName, HeaderValue);

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ApiKey")
            .field(&self.0)
            .finish_non_exhaustive()
    }
}

impl ApiKey {
    /// # Errors
    /// `invalid_argument` for a header name or key that cannot be sent.
    pub fn new(header: &str, key: &str) -> Result<Self, Error> {
        let name = HeaderName::from_bytes(header.as_bytes())
            .map_err(|_| Error::invalid_argument(format!("{header:?} is not a header name")))?;
        let mut value = HeaderValue::from_str(key)
            .map_err(|_| Error::invalid_argument("the API key is not a valid header value"))?;
        value.set_sensitive(true);
        Ok(Self(name, value))
    }
}

impl Interceptor for ApiKey {
    fn before(&self, _: &MethodDescriptor, headers: &mut HeaderMap) -> Result<(), Error> {
        headers.insert(self.0.clone(), self.1.clone());
        Ok(())
    }
}

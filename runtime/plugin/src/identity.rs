//! Runtime identities: the id and bearer token a host issues to a plugin that introduces itself
//! with a `self_id` in the handshake, and checks on every call the plugin makes back.
//!
//! Better than connect-plugin-go on three counts (see DESIGN "Where upstream is wrong"): ids
//! are unique (upstream's 4-hex suffix could collide and overwrite a token), tokens are
//! compared in constant time and also checked on every host call (not just the header), and
//! expired entries are swept, not only removed lazily.
//!
//! It issues and checks ids and tokens and nothing else: when an identity is issued is decided by
//! [`crate::handshake`] (and by the registry for plugins the host launches), and what an identity
//! may do (register service types, use capabilities) is [`crate::host::registry`]'s and
//! [`crate::host::broker`]'s.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::HeaderMap;
use ring::rand::{SecureRandom, SystemRandom};
use tokio::time::Instant;

use crate::{Code, Error};

/// The header naming the caller's runtime id (as in connect-plugin-go).
pub const RUNTIME_ID_HEADER: &str = "x-plugin-runtime-id";

/// Default lifetime of a runtime token: 24 hours, as upstream.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// An identity issued by a host: send both on every call to it.
#[derive(Clone, PartialEq, Eq)]
pub struct RuntimeIdentity {
    /// The runtime id, e.g. `cache-plugin-3f9a1c2e`.
    pub runtime_id: String,
    /// The bearer token.
    pub token: String,
}

impl std::fmt::Debug for RuntimeIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never log the token.
        f.debug_struct("RuntimeIdentity")
            .field("runtime_id", &self.runtime_id)
            .finish_non_exhaustive()
    }
}

impl RuntimeIdentity {
    /// Adds `X-Plugin-Runtime-ID` and `Authorization: Bearer` to `headers`.
    pub fn apply(&self, headers: &mut HeaderMap) {
        if let Ok(id) = self.runtime_id.parse() {
            headers.insert(RUNTIME_ID_HEADER, id);
        }
        if let Ok(auth) = format!("Bearer {}", self.token).parse() {
            headers.insert(http::header::AUTHORIZATION, auth);
        }
    }
}

struct Entry {
    token: String,
    expires: Instant,
    /// The token this one replaced at a renewal, still good until its own expiry (calls
    /// already on their way with it must not fail).
    previous: Option<(String, Instant)>,
    /// What admitted it (the join policy's tag), checked again at each renewal; `None` for
    /// identities the host issued itself.
    admitted_by: Option<String>,
    /// When it was last renewed.
    renewed_at: Option<Instant>,
}

/// How long after a renewal the replaced token may ask again and get the same answer (its
/// holder never saw the reply), rather than being taken for a second holder.
const RENEWAL_REPLAY: Duration = Duration::from_secs(30);

/// The most runtime identities alive at once in one host; a handshake flood past it gets
/// `resource_exhausted` instead of growing the store.
pub(crate) const MAX_LIVE_IDENTITIES: usize = 10_000;

/// Issues and checks runtime identities.
pub(crate) struct IdentityStore {
    ttl: Duration,
    rng: SystemRandom,
    entries: Mutex<HashMap<String, Entry>>,
}

pub(crate) fn random_bytes<const N: usize>(rng: &SystemRandom) -> Result<[u8; N], Error> {
    let mut bytes = [0u8; N];
    rng.fill(&mut bytes)
        .map_err(|_| Error::internal("the system random number generator failed"))?;
    Ok(bytes)
}

/// The runtime id prefix made from a `self_id`.
fn sanitize(self_id: &str) -> String {
    self_id
        .trim()
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// Compares without an early exit, so timing does not reveal how much of a token matched.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl IdentityStore {
    pub(crate) fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            rng: SystemRandom::new(),
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Issues a new identity for a plugin calling itself `self_id`, on the host's own
    /// authority (deployment model A).
    pub(crate) fn issue(&self, self_id: &str) -> Result<RuntimeIdentity, Error> {
        self.issue_admitted(self_id, None)
    }

    /// Issues a new identity for a plugin calling itself `self_id`, admitted by what
    /// `admitted_by` names (checked again when it renews).
    pub(crate) fn issue_admitted(
        &self,
        self_id: &str,
        admitted_by: Option<String>,
    ) -> Result<RuntimeIdentity, Error> {
        let base = sanitize(self_id);
        let token = URL_SAFE_NO_PAD.encode(random_bytes::<32>(&self.rng)?);
        let mut entries = self.entries();
        let now = Instant::now();
        // Expired entries go with the periodic sweep; here only when the store is full, so
        // issuing stays O(1) however many identities live.
        if entries.len() >= MAX_LIVE_IDENTITIES {
            entries.retain(|_, e| e.expires > now);
            if entries.len() >= MAX_LIVE_IDENTITIES {
                return Err(Error::new(
                    Code::ResourceExhausted,
                    format!(
                        "this host has {MAX_LIVE_IDENTITIES} live runtime identities, its limit; try again later"
                    ),
                ));
            }
        }
        let runtime_id = loop {
            let suffix = random_bytes::<4>(&self.rng)?;
            let id = format!("{base}-{}", hex(&suffix));
            if !entries.contains_key(&id) {
                break id;
            }
        };
        entries.insert(
            runtime_id.clone(),
            Entry {
                token: token.clone(),
                expires: now + self.ttl,
                previous: None,
                admitted_by,
                renewed_at: None,
            },
        );
        Ok(RuntimeIdentity { runtime_id, token })
    }

    /// How long tokens live.
    pub(crate) fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Renews the identity the `headers` authenticate, if it belongs to `self_id` and what
    /// admitted it still does (`still_admitted`, given its tag): the same runtime id with a
    /// fresh token living a full lifetime; the old token stays good for calls until it would
    /// have expired, but cannot renew again. Renewing with a replaced token means two holders
    /// share the identity (one stole it): the identity ends.
    ///
    /// # Errors
    /// As for [`IdentityStore::authenticate`]; `permission_denied` for another plugin's
    /// identity, or one whose join credential was revoked.
    pub(crate) fn renew(
        &self,
        headers: &HeaderMap,
        self_id: &str,
        still_admitted: impl FnOnce(Option<&str>) -> bool,
    ) -> Result<RuntimeIdentity, Error> {
        let runtime_id = self.authenticate(headers)?;
        let presented = bearer_token(headers, "runtime token")?;
        if !runtime_id.starts_with(&format!("{}-", sanitize(self_id))) {
            return Err(Error::new(
                Code::PermissionDenied,
                format!("runtime identity {runtime_id:?} is not {self_id:?}'s"),
            ));
        }
        let ended = || {
            Error::new(
                Code::Unauthenticated,
                format!("runtime identity {runtime_id:?} ended while it was renewed"),
            )
        };
        // The join policy is asked without this store's lock held: its lock is always taken
        // first (joining holds it while issuing), never after.
        let admitted_by = self
            .entries()
            .get(&runtime_id)
            .map(|entry| entry.admitted_by.clone())
            .ok_or_else(ended)?;
        if !still_admitted(admitted_by.as_deref()) {
            return Err(Error::new(
                Code::PermissionDenied,
                format!(
                    "runtime identity {runtime_id:?} cannot be renewed: the credential that admitted it was revoked (or, for a certificate, is not presented)"
                ),
            ));
        }
        let token = URL_SAFE_NO_PAD.encode(random_bytes::<32>(&self.rng)?);
        let now = Instant::now();
        let mut entries = self.entries();
        let entry = entries.get_mut(&runtime_id).ok_or_else(ended)?;
        if constant_time_eq(entry.token.as_bytes(), presented.as_bytes()) {
            let old = std::mem::replace(&mut entry.token, token.clone());
            entry.previous = Some((old, entry.expires));
            entry.expires = now + self.ttl;
            entry.renewed_at = Some(now);
            return Ok(RuntimeIdentity { runtime_id, token });
        }
        // The token just replaced, asking again soon after: its holder lost the reply.
        let replay = entry.renewed_at.is_some_and(|at| now < at + RENEWAL_REPLAY)
            && entry.previous.as_ref().is_some_and(|(previous, _)| {
                constant_time_eq(previous.as_bytes(), presented.as_bytes())
            });
        if replay {
            return Ok(RuntimeIdentity {
                runtime_id,
                token: entry.token.clone(),
            });
        }
        entries.remove(&runtime_id);
        tracing::warn!(%runtime_id, "a replaced runtime token was presented for renewal; ending the identity");
        Err(Error::new(
            Code::Unauthenticated,
            format!(
                "runtime identity {runtime_id:?} was renewed with a token it had already replaced, so someone else holds it too; it has ended: join again"
            ),
        ))
    }

    /// Whether `token` is the live token of `runtime_id`.
    pub(crate) fn validate(&self, runtime_id: &str, token: &str) -> bool {
        let mut entries = self.entries();
        match entries.get(runtime_id) {
            None => false,
            Some(entry) if entry.expires <= Instant::now() => {
                entries.remove(runtime_id);
                false
            }
            Some(entry) => {
                constant_time_eq(entry.token.as_bytes(), token.as_bytes())
                    || entry.previous.as_ref().is_some_and(|(previous, expires)| {
                        *expires > Instant::now()
                            && constant_time_eq(previous.as_bytes(), token.as_bytes())
                    })
            }
        }
    }

    /// Ends `runtime_id`'s identity at once (its plugin has gone); whether it was live.
    pub(crate) fn revoke(&self, runtime_id: &str) -> bool {
        self.entries().remove(runtime_id).is_some()
    }

    /// Removes expired identities; returns how many.
    pub(crate) fn sweep(&self) -> usize {
        let mut entries = self.entries();
        let before = entries.len();
        let now = Instant::now();
        entries.retain(|_, e| e.expires > now);
        before - entries.len()
    }

    /// The caller's runtime id, checked against its bearer token.
    ///
    /// # Errors
    /// `unauthenticated` when the headers are missing, malformed, or do not match a live
    /// identity; the message says which, never what the token should have been.
    pub(crate) fn authenticate(&self, headers: &HeaderMap) -> Result<String, Error> {
        let runtime_id = headers
            .get(RUNTIME_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .ok_or_else(|| {
                Error::new(
                    Code::Unauthenticated,
                    "missing X-Plugin-Runtime-ID header: handshake with a self_id first",
                )
            })?;
        let token = bearer_token(headers, "runtime token")?;
        if !self.validate(runtime_id, token) {
            return Err(Error::new(
                Code::Unauthenticated,
                format!(
                    "runtime identity {runtime_id:?} is unknown, expired, or its token does not match"
                ),
            ));
        }
        Ok(runtime_id.to_owned())
    }
}

/// The bearer token of the `Authorization` header; `unauthenticated` naming what was expected
/// (`what`, e.g. "runtime token") when it is missing.
pub(crate) fn bearer_token<'h>(headers: &'h HeaderMap, what: &str) -> Result<&'h str, Error> {
    headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            Error::new(
                Code::Unauthenticated,
                format!("missing `Authorization: Bearer <{what}>` header"),
            )
        })
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {

    #[test]
    fn the_store_is_bounded_and_identities_can_be_revoked() {
        let store = IdentityStore::new(Duration::from_secs(60));
        let mut last = None;
        for _ in 0..MAX_LIVE_IDENTITIES {
            last = Some(store.issue("flood").unwrap());
        }
        let refused = store.issue("one-more").unwrap_err();
        assert_eq!(refused.code(), Code::ResourceExhausted);
        let last = last.unwrap();
        assert!(store.validate(&last.runtime_id, &last.token));
        assert!(store.revoke(&last.runtime_id));
        assert!(!store.validate(&last.runtime_id, &last.token), "revoked");
        store.issue("one-more").expect("room again after a revoke");
    }

    use super::*;

    fn headers(identity: &RuntimeIdentity) -> HeaderMap {
        let mut headers = HeaderMap::new();
        identity.apply(&mut headers);
        headers
    }

    #[tokio::test(start_paused = true)]
    async fn renewal_keeps_the_id_and_a_replaced_token_cannot_renew() {
        let store = IdentityStore::new(Duration::from_secs(60));
        let first = store.issue_admitted("cache", Some("t:x".into())).unwrap();
        let admitted = |tag: Option<&str>| tag == Some("t:x");
        let renewed = store.renew(&headers(&first), "cache", admitted).unwrap();
        assert_eq!(renewed.runtime_id, first.runtime_id);
        assert_ne!(renewed.token, first.token);
        // Calls on their way with the old token still pass...
        assert!(store.validate(&first.runtime_id, &first.token));
        // ...and asking again at once (a lost reply) gets the same answer, not a third token.
        let again = store.renew(&headers(&first), "cache", admitted).unwrap();
        assert_eq!(again.token, renewed.token);
        // Later, the replaced token renewing means a second holder: the identity ends.
        tokio::time::advance(RENEWAL_REPLAY + Duration::from_secs(1)).await;
        let err = store
            .renew(&headers(&first), "cache", admitted)
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{err}");
        assert!(err.message().contains("someone else holds it"), "{err}");
        assert!(
            !store.validate(&renewed.runtime_id, &renewed.token),
            "ended"
        );
    }

    #[tokio::test]
    async fn renewal_needs_the_credential_that_admitted_it_and_its_own_self_id() {
        let store = IdentityStore::new(Duration::from_secs(60));
        let identity = store.issue_admitted("cache", Some("t:x".into())).unwrap();
        let err = store
            .renew(&headers(&identity), "logger", |_| true)
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{err}");
        let err = store
            .renew(&headers(&identity), "cache", |_| false)
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{err}");
        assert!(err.message().contains("revoked"), "{err}");
    }

    #[tokio::test]
    async fn ids_are_unique_and_tokens_validate() {
        let store = IdentityStore::new(Duration::from_secs(60));
        let a = store.issue("Cache Plugin").unwrap();
        let b = store.issue("Cache Plugin").unwrap();
        assert_ne!(a.runtime_id, b.runtime_id);
        assert!(
            a.runtime_id.starts_with("cache-plugin-"),
            "{}",
            a.runtime_id
        );
        assert_eq!(a.token.len(), 43, "32 random bytes, base64url");
        assert!(store.validate(&a.runtime_id, &a.token));
        assert!(
            !store.validate(&a.runtime_id, &b.token),
            "another plugin's token"
        );
        assert!(
            !store.validate(&a.runtime_id, &a.token[..42]),
            "a near match"
        );
        assert!(!store.validate("nobody-00000000", &a.token));
        assert!(!store.validate(&a.runtime_id, ""));
    }

    #[tokio::test(start_paused = true)]
    async fn tokens_expire_and_are_swept() {
        let store = IdentityStore::new(Duration::from_secs(10));
        let a = store.issue("a").unwrap();
        let _b = store.issue("b").unwrap();
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(!store.validate(&a.runtime_id, &a.token));
        assert_eq!(store.sweep(), 1, "b was still there until the sweep");
    }

    #[tokio::test]
    async fn authenticate_checks_the_token_not_just_the_header() {
        let store = IdentityStore::new(Duration::from_secs(60));
        let id = store.issue("p").unwrap();
        let mut headers = HeaderMap::new();
        id.apply(&mut headers);
        assert_eq!(store.authenticate(&headers).unwrap(), id.runtime_id);
        // A forged header with a made-up token.
        headers.insert(
            http::header::AUTHORIZATION,
            "Bearer forged".parse().unwrap(),
        );
        assert_eq!(
            store.authenticate(&headers).unwrap_err().code(),
            Code::Unauthenticated
        );
        headers.remove(http::header::AUTHORIZATION);
        assert!(
            store
                .authenticate(&headers)
                .unwrap_err()
                .message()
                .contains("Authorization")
        );
        assert!(
            store
                .authenticate(&HeaderMap::new())
                .unwrap_err()
                .message()
                .contains("X-Plugin-Runtime-ID")
        );
    }

    #[test]
    fn constant_time_eq_compares_fully() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}

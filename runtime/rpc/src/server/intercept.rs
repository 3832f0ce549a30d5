//! Server interceptors: checks that run before a call's handler, with the call's context
//! (procedure, headers, peer address, verified client certificate, deadline), and may refuse
//! the call or name who makes it (the principal handlers see through
//! [`Request::principal`](crate::Request::principal)). Authentication and rate limiting are
//! built on them ([`crate::policy`]). They run in the order added; a server without them
//! pays nothing.

use std::net::SocketAddr;
use std::sync::Arc;

use http::HeaderMap;
use tokio::time::Instant;

use crate::request::Peer;
use crate::tls::PeerCertificate;
use crate::{Error, MethodDescriptor};

/// What a [`ServerInterceptor`] knows of a call before its handler runs.
pub struct CallContext<'a> {
    pub(crate) method: &'static MethodDescriptor,
    pub(crate) headers: &'a HeaderMap,
    pub(crate) peer: &'a mut Peer,
    pub(crate) deadline: Option<Instant>,
}

impl std::fmt::Debug for CallContext<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallContext")
            .field("procedure", &self.method.path)
            .field("peer", &self.peer.addr)
            .field("principal", &self.peer.principal)
            .finish_non_exhaustive()
    }
}

impl CallContext<'_> {
    /// The procedure called.
    pub fn method(&self) -> &'static MethodDescriptor {
        self.method
    }

    /// The request headers (a client chooses them all: never trust one as an identity).
    pub fn headers(&self) -> &HeaderMap {
        self.headers
    }

    /// The address of the connection's peer, if the call came over a socket.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer.addr
    }

    /// The client certificate the TLS handshake verified, over mutual TLS.
    pub fn peer_certificate(&self) -> Option<&PeerCertificate> {
        self.peer.certificate.as_deref()
    }

    /// When the client's deadline runs out, if it sent one.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Who makes the call, as an earlier interceptor established it.
    pub fn principal(&self) -> Option<&str> {
        self.peer.principal.as_deref()
    }

    /// Names who makes the call (an authenticated principal): later interceptors and the
    /// handler see it.
    pub fn set_principal(&mut self, principal: impl Into<Arc<str>>) {
        self.peer.principal = Some(principal.into());
    }
}

/// A check before every call's handler: see the [module docs](self).
pub trait ServerInterceptor: Send + Sync + 'static {
    /// Runs before the handler; an error refuses the call with it (its code's HTTP status).
    ///
    /// # Errors
    /// Whatever error should answer the call instead of the handler.
    fn before(&self, call: &mut CallContext<'_>) -> Result<(), Error>;
}

//! [`Request`] and [`Response`]: a message together with its metadata.
//!
//! Plain values: how metadata, trailers and the timeout travel on the wire (`trailer-` headers,
//! end-stream metadata, `Connect-Timeout-Ms`) is handled by [`crate::server`] and
//! [`crate::channel`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;

use crate::tls::PeerCertificate;

/// Who a call came from, on a server: the connection's address and, over mutual TLS, the
/// client certificate it presented (verified against the server's client CA).
#[derive(Debug, Clone, Default)]
pub(crate) struct Peer {
    pub(crate) addr: Option<SocketAddr>,
    pub(crate) certificate: Option<Arc<PeerCertificate>>,
    /// Who makes the call, as a server interceptor established it.
    pub(crate) principal: Option<Arc<str>>,
}

/// A request message with its metadata (HTTP headers) and, on a client, an optional per-call
/// timeout; on a server, the timeout the client asked for.
#[derive(Debug, Clone, Default)]
pub struct Request<T> {
    message: T,
    metadata: HeaderMap,
    timeout: Option<Duration>,
    peer: Peer,
}

impl<T> Request<T> {
    /// A request carrying `message` and no metadata.
    pub fn new(message: T) -> Self {
        Self {
            message,
            metadata: HeaderMap::new(),
            timeout: None,
            peer: Peer::default(),
        }
    }

    pub(crate) fn from_parts(
        message: T,
        metadata: HeaderMap,
        timeout: Option<Duration>,
        peer: Peer,
    ) -> Self {
        Self {
            message,
            metadata,
            timeout,
            peer,
        }
    }

    /// The message.
    pub fn message(&self) -> &T {
        &self.message
    }

    /// Mutable access to the message.
    pub fn message_mut(&mut self) -> &mut T {
        &mut self.message
    }

    /// Takes the message out.
    pub fn into_message(self) -> T {
        self.message
    }

    /// Request headers. On a server this holds every header the client sent.
    pub fn metadata(&self) -> &HeaderMap {
        &self.metadata
    }

    /// Mutable request headers, to add metadata on a client.
    pub fn metadata_mut(&mut self) -> &mut HeaderMap {
        &mut self.metadata
    }

    /// The call's timeout: set by a client, or the client's `Connect-Timeout-Ms` on a server.
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// On a server, the address of the peer the call came from: the TCP peer of the
    /// connection (a proxy in front of the server, if any). `None` on a client, and for calls
    /// that did not arrive over a socket of this server (in-memory, or mounted in another
    /// server with [`crate::Server::into_http_service`]).
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer.addr
    }

    /// On a server over mutual TLS, the certificate the client presented, already verified
    /// against the server's client CA ([`crate::tls::ServerTls::mutual_from_pem`]); `None`
    /// otherwise.
    pub fn peer_certificate(&self) -> Option<&PeerCertificate> {
        self.peer.certificate.as_deref()
    }

    /// On a server, who makes the call, as an authenticating
    /// [`ServerInterceptor`](crate::server::ServerInterceptor) established it (for example
    /// [`crate::policy::Auth`]); `None` without one.
    pub fn principal(&self) -> Option<&str> {
        self.peer.principal.as_deref()
    }

    /// Sets the timeout for this call (client side); it is sent as `Connect-Timeout-Ms` and
    /// also bounds the wait locally.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = Some(timeout);
    }

    /// Builder-style [`Request::set_timeout`].
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    pub(crate) fn into_parts(self) -> (T, HeaderMap, Option<Duration>) {
        (self.message, self.metadata, self.timeout)
    }
}

/// Converts a bare message or a [`Request`] into a request, so generated clients accept both.
pub trait IntoRequest<T> {
    /// Performs the conversion.
    fn into_request(self) -> Request<T>;
}

impl<T> IntoRequest<T> for T {
    fn into_request(self) -> Request<T> {
        Request::new(self)
    }
}

impl<T> IntoRequest<T> for Request<T> {
    fn into_request(self) -> Request<T> {
        self
    }
}

/// A response message (or stream) with its headers and trailers.
#[derive(Debug, Clone, Default)]
pub struct Response<T> {
    message: T,
    headers: HeaderMap,
    trailers: HeaderMap,
}

impl<T> Response<T> {
    /// A response carrying `message`.
    pub fn new(message: T) -> Self {
        Self {
            message,
            headers: HeaderMap::new(),
            trailers: HeaderMap::new(),
        }
    }

    pub(crate) fn from_parts(message: T, headers: HeaderMap, trailers: HeaderMap) -> Self {
        Self {
            message,
            headers,
            trailers,
        }
    }

    /// The message (or, for server streaming, the stream).
    pub fn message(&self) -> &T {
        &self.message
    }

    /// Mutable access to the message or stream.
    pub fn message_mut(&mut self) -> &mut T {
        &mut self.message
    }

    /// Takes the message out.
    pub fn into_message(self) -> T {
        self.message
    }

    /// Response headers (leading metadata).
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// Mutable response headers, to send metadata from a handler.
    pub fn headers_mut(&mut self) -> &mut HeaderMap {
        &mut self.headers
    }

    /// Trailers (trailing metadata). For a unary call they travel as `trailer-` headers, for a
    /// stream in its end-stream message; users never see the prefix.
    pub fn trailers(&self) -> &HeaderMap {
        &self.trailers
    }

    /// Mutable trailers, to send trailing metadata from a handler.
    pub fn trailers_mut(&mut self) -> &mut HeaderMap {
        &mut self.trailers
    }

    pub(crate) fn into_parts(self) -> (T, HeaderMap, HeaderMap) {
        (self.message, self.headers, self.trailers)
    }
}

/// A response reads as its message: `client.get(req).await?.found`.
impl<T> std::ops::Deref for Response<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.message
    }
}

impl<T> From<T> for Response<T> {
    fn from(message: T) -> Self {
        Response::new(message)
    }
}

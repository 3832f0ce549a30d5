//! Server interceptors: checks that run before a call's handler, with the call's context
//! (procedure, headers, peer address, verified client certificate, deadline), and may refuse
//! the call or name who makes it (the principal handlers see through
//! [`Request::principal`](crate::Request::principal)), and that see each call's outcome once
//! it has ended ([`ServerInterceptor::after`]: to log, count or time calls). Authentication
//! and rate limiting are built on them ([`crate::policy`]).
//!
//! Order: `before` runs in the order the interceptors were added, `after` in the reverse
//! order, each interceptor's `after` only if its `before` ran (so the first added wraps all
//! the others, as in connect-go). A server without interceptors pays nothing for them.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;

use http::HeaderMap;
use tokio::time::Instant;

use crate::request::Peer;
use crate::tls::PeerCertificate;
use crate::{Error, MethodDescriptor};

/// What a [`ServerInterceptor`] knows of a call before its handler runs.
pub struct CallContext<'a> {
    pub(crate) method: Option<&'static MethodDescriptor>,
    pub(crate) procedure: &'a str,
    pub(crate) headers: &'a HeaderMap,
    pub(crate) peer: &'a mut Peer,
    pub(crate) deadline: Option<Instant>,
}

impl std::fmt::Debug for CallContext<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallContext")
            .field("procedure", &self.procedure)
            .field("peer", &self.peer.addr)
            .field("principal", &self.peer.principal)
            .finish_non_exhaustive()
    }
}

impl CallContext<'_> {
    /// The procedure called (`/pkg.Service/Method`): for a call a proxy route forwards (the
    /// plugin host's routing gateway), the end of its path.
    pub fn procedure(&self) -> &str {
        self.procedure
    }

    /// The procedure's descriptor, for a procedure this server serves itself (`None` for a
    /// call a proxy route forwards).
    pub fn method(&self) -> Option<&'static MethodDescriptor> {
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

/// A check before every call's handler, and a look at its outcome: see the
/// [module docs](self).
pub trait ServerInterceptor: Send + Sync + 'static {
    /// Runs before the handler; an error refuses the call with it (a unary call with its
    /// code's HTTP status, a stream in its end-stream message).
    ///
    /// # Errors
    /// Whatever error should answer the call instead of the handler.
    fn before(&self, call: &mut CallContext<'_>) -> Result<(), Error>;

    /// Runs once the call has ended, with its outcome: `Ok`, or the error the client was
    /// sent (a later interceptor's refusal included). A unary call ends with its response; a
    /// streaming one when its end-stream message is written; a call whose client went away
    /// first ends `canceled`. By default it does nothing.
    fn after(&self, call: &CallSummary, outcome: Result<(), &Error>) {
        let _ = (call, outcome);
    }
}

impl<T: ServerInterceptor + ?Sized> ServerInterceptor for Arc<T> {
    fn before(&self, call: &mut CallContext<'_>) -> Result<(), Error> {
        (**self).before(call)
    }

    fn after(&self, call: &CallSummary, outcome: Result<(), &Error>) {
        (**self).after(call, outcome);
    }
}

/// What a [`ServerInterceptor::after`] knows of a call that has ended.
#[derive(Debug)]
pub struct CallSummary {
    method: Option<&'static MethodDescriptor>,
    procedure: Cow<'static, str>,
    peer: Peer,
    started: Instant,
}

impl CallSummary {
    /// The procedure called (as [`CallContext::procedure`]).
    pub fn procedure(&self) -> &str {
        &self.procedure
    }

    /// The procedure's descriptor, for a procedure this server serves itself.
    pub fn method(&self) -> Option<&'static MethodDescriptor> {
        self.method
    }

    /// The address of the connection's peer, if the call came over a socket.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer.addr
    }

    /// Who made the call, as an interceptor established it.
    pub fn principal(&self) -> Option<&str> {
        self.peer.principal.as_deref()
    }

    /// How long the call took, from its interceptors' start to its end.
    pub fn elapsed(&self) -> std::time::Duration {
        self.started.elapsed()
    }
}

/// Tells the interceptors that ran a call's `before` its outcome, once: when the call ends,
/// or `canceled` when it is dropped first.
pub(crate) struct Observer {
    interceptors: Arc<[Arc<dyn ServerInterceptor>]>,
    ran: usize,
    summary: CallSummary,
    told: bool,
}

impl Observer {
    /// Runs every interceptor's `before` on a call (until one refuses it): the observer of
    /// those that ran, and the refusal if any.
    pub(crate) fn before(
        interceptors: &Arc<[Arc<dyn ServerInterceptor>]>,
        mut context: CallContext<'_>,
    ) -> (Self, Option<Error>) {
        let started = Instant::now();
        let mut ran = 0;
        let mut refusal = None;
        for interceptor in interceptors.iter() {
            ran += 1;
            if let Err(refused) = interceptor.before(&mut context) {
                refusal = Some(refused);
                break;
            }
        }
        let procedure = match context.method {
            Some(method) => Cow::Borrowed(method.path),
            None => Cow::Owned(context.procedure.to_owned()),
        };
        let observer = Self {
            interceptors: Arc::clone(interceptors),
            ran,
            summary: CallSummary {
                method: context.method,
                procedure,
                peer: context.peer.clone(),
                started,
            },
            told: false,
        };
        (observer, refusal)
    }

    /// Tells the outcome (innermost interceptor first).
    pub(crate) fn finish(mut self, outcome: Result<(), &Error>) {
        self.tell(outcome);
    }

    fn tell(&mut self, outcome: Result<(), &Error>) {
        self.told = true;
        for interceptor in self.interceptors[..self.ran].iter().rev() {
            interceptor.after(&self.summary, outcome);
        }
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        if self.told {
            return;
        }
        if std::thread::panicking() {
            // The handler panicked: say so, and let no interceptor's own panic abort the
            // process while this one unwinds.
            let panicked = Error::internal("the handler panicked");
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.tell(Err(&panicked));
            }));
            return;
        }
        let gone = Error::new(
            crate::Code::Canceled,
            "the client went away before the call ended",
        );
        self.tell(Err(&gone));
    }
}

/// A forwarded call's response body that tells the interceptors the outcome when it ends:
/// `Ok` at its end, its error if it breaks, `canceled` if it is dropped first.
pub(crate) struct ObservedBody {
    inner: crate::body::Body,
    observer: Option<Observer>,
    /// Bytes still to pass on, when the answer said how many (`content-length`): a client
    /// that has them all may go before the body's end is seen.
    left: Option<u64>,
}

impl ObservedBody {
    pub(crate) fn new(inner: crate::body::Body, observer: Observer, length: Option<u64>) -> Self {
        Self {
            inner,
            observer: Some(observer),
            left: length,
        }
    }
}

impl Drop for ObservedBody {
    fn drop(&mut self) {
        // A body that was complete when dropped (an empty one is never polled) ended well;
        // otherwise the observer reports `canceled`.
        if http_body::Body::is_end_stream(&self.inner)
            && let Some(observer) = self.observer.take()
        {
            observer.finish(Ok(()));
        }
    }
}

impl http_body::Body for ObservedBody {
    type Data = bytes::Bytes;
    type Error = Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Error>>> {
        let this = self.get_mut();
        let frame = std::pin::Pin::new(&mut this.inner).poll_frame(cx);
        match &frame {
            std::task::Poll::Ready(None) => {
                if let Some(observer) = this.observer.take() {
                    observer.finish(Ok(()));
                }
            }
            std::task::Poll::Ready(Some(Err(error))) => {
                if let Some(observer) = this.observer.take() {
                    observer.finish(Err(error));
                }
            }
            std::task::Poll::Ready(Some(Ok(frame))) => {
                if let (Some(left), Some(data)) = (this.left.as_mut(), frame.data_ref()) {
                    *left = left.saturating_sub(data.len() as u64);
                }
                // The last frame: the connection may not ask again once the body says it
                // ended, nor the client wait for the end once it has every byte.
                if (this.inner.is_end_stream() || this.left == Some(0))
                    && let Some(observer) = this.observer.take()
                {
                    observer.finish(Ok(()));
                }
            }
            _ => {}
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

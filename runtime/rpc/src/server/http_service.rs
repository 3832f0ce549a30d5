//! [`HttpService`]: a [`Server`](super::Server)'s router as a `tower::Service` over any HTTP
//! body, so Connect services (and everything mounted beside them) can live inside another
//! server: an axum `Router`, a hyper connection, a tower stack.
//!
//! It routes and answers exactly as the server would over its own listener; it does not
//! accept connections, negotiate TLS or shut down gracefully, which are the outer server's.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;

use super::Router;
use crate::Error;
use crate::body::{Body, RecvBody, RecvError};

/// A server's services and routes as a `tower::Service<http::Request<B>>` for any body `B`
/// with `Bytes` data (axum's and hyper's included). Cheap to clone: clones share one router.
/// Made by [`Server::into_http_service`](super::Server::into_http_service).
///
/// With hyper directly, wrap it in `hyper_util::service::TowerToHyperService`.
#[derive(Clone)]
pub struct HttpService {
    router: Arc<Router>,
}

impl HttpService {
    pub(super) fn new(router: Arc<Router>) -> Self {
        Self { router }
    }
}

impl std::fmt::Debug for HttpService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpService").finish_non_exhaustive()
    }
}

impl<B> tower_service::Service<http::Request<B>> for HttpService
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<RecvError>,
{
    type Response = http::Response<ResponseBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let router = Arc::clone(&self.router);
        let request = request.map(|body| RecvBody::Boxed(Box::pin(body.map_err(Into::into))));
        Box::pin(async move {
            Ok(router
                .handle(request, &crate::request::Peer::default())
                .await
                .map(ResponseBody))
        })
    }
}

/// The body of an [`HttpService`] response: complete bytes or a stream of envelopes.
pub struct ResponseBody(Body);

impl std::fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseBody").finish_non_exhaustive()
    }
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        Pin::new(&mut self.0).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.0.size_hint()
    }
}

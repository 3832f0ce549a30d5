//! The Rust side of the interop service (tests/proto/interop/v1/interop.proto), with the same
//! behaviour as the connect-node server in tests/interop/server.mjs.

use std::time::Duration;

use connect_plugin::{
    Code, Error, MessageStream, Request, Response, ServerStream, Streaming, rpc::ErrorDetail,
};
use http::HeaderValue;

pub use crate::interop_proto::interop::v1::*;

/// Our implementation of `interop.v1.InteropService`.
#[derive(Debug, Default, Clone, Copy)]
pub struct InteropServer;

/// Applies the behaviours a payload asks for: sleep, fail, echo the `x-echo` header.
async fn respond(
    headers: &http::HeaderMap,
    mut payload: Payload,
) -> Result<Response<Payload>, Error> {
    if payload.sleep_ms > 0 {
        tokio::time::sleep(Duration::from_millis(payload.sleep_ms as u64)).await;
    }
    if !payload.fail_code.is_empty() {
        let code = Code::ALL
            .into_iter()
            .find(|c| c.as_str() == payload.fail_code)
            .unwrap_or(Code::Unknown);
        return Err(
            Error::new(code, format!("failing as asked: {}", payload.fail_code))
                .with_detail(ErrorDetail::from_message(&payload)),
        );
    }
    payload.echoed_header = headers
        .get("x-echo")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let mut response = Response::new(payload);
    response
        .headers_mut()
        .insert("x-echo-response", HeaderValue::from_static("yes"));
    // How the request's messages came compressed, as seen on the wire.
    let encoding = headers
        .get("content-encoding")
        .or_else(|| headers.get("connect-content-encoding"))
        .cloned()
        .unwrap_or(HeaderValue::from_static("identity"));
    response
        .headers_mut()
        .insert("x-request-encoding", encoding);
    response
        .trailers_mut()
        .insert("x-trailer", HeaderValue::from_static("done"));
    Ok(response)
}

impl InteropService for InteropServer {
    async fn unary(&self, request: Request<Payload>) -> Result<Response<Payload>, Error> {
        let headers = request.metadata().clone();
        respond(&headers, request.into_message()).await
    }

    async fn lookup(&self, request: Request<Payload>) -> Result<Response<Payload>, Error> {
        let headers = request.metadata().clone();
        respond(&headers, request.into_message()).await
    }

    async fn server_stream(
        &self,
        request: Request<Payload>,
    ) -> Result<Response<ServerStream<Payload>>, Error> {
        let headers = request.metadata().clone();
        let payload = request.into_message();
        let count = payload.count.max(0) as usize;
        let one = respond(&headers, payload).await?;
        let (message, response_headers, trailers) = (
            one.message().clone(),
            one.headers().clone(),
            one.trailers().clone(),
        );
        let mut response =
            Response::new(std::iter::repeat_n(message, count).collect::<MessageStream<_>>());
        *response.headers_mut() = response_headers;
        *response.trailers_mut() = trailers;
        Ok(response)
    }

    async fn client_stream(
        &self,
        request: Request<Streaming<Payload>>,
    ) -> Result<Response<Payload>, Error> {
        let headers = request.metadata().clone();
        let mut payloads = request.into_message();
        let mut texts = Vec::new();
        while let Some(payload) = payloads.message().await? {
            texts.push(payload.text);
        }
        let joined = Payload {
            count: texts.len() as i32,
            text: texts.join(","),
            ..Default::default()
        };
        respond(&headers, joined).await
    }

    async fn bidi(
        &self,
        request: Request<Streaming<Payload>>,
    ) -> Result<Response<ServerStream<Payload>>, Error> {
        let mut payloads = request.into_message();
        let (tx, stream) = MessageStream::channel(8);
        tokio::spawn(async move {
            loop {
                match payloads.message().await {
                    Ok(Some(payload)) => {
                        if tx.send(payload).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => return,
                    Err(error) => return tx.fail(error).await,
                }
            }
        });
        Ok(Response::new(stream))
    }
}

/// Serves the interop service on an ephemeral port; returns the base URL.
pub async fn serve_interop() -> String {
    serve_interop_with(connect_plugin::rpc::Server::new()).await
}

/// Serves the interop service with `server`'s settings; returns the base URL (`https://` when
/// the server has TLS).
pub async fn serve_interop_with(server: connect_plugin::rpc::Server) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let scheme = if server.has_tls() { "https" } else { "http" };
    let server = server
        .compress_min_bytes(0)
        .add_service(InteropServiceServer::new(InteropServer).into_service());
    tokio::spawn(server.serve(listener));
    format!("{scheme}://{addr}")
}

/// Answers every unary call, and every server-streaming call with one message, with its own
/// name (other methods: `unimplemented`).
#[derive(Debug, Clone, Copy)]
pub struct Named(pub &'static str);

impl Named {
    fn payload(&self) -> Payload {
        Payload {
            text: self.0.into(),
            ..Default::default()
        }
    }
}

impl InteropService for Named {
    async fn unary(&self, _: Request<Payload>) -> Result<Response<Payload>, Error> {
        Ok(Response::new(self.payload()))
    }

    async fn server_stream(
        &self,
        _: Request<Payload>,
    ) -> Result<Response<ServerStream<Payload>>, Error> {
        Ok(Response::new(MessageStream::from_iter([self.payload()])))
    }
}

/// Serves [`Named`]`(name)` on `addr` (port 0: any free one) until the returned sender fires
/// (or is dropped); the task ends once the server has drained.
pub async fn serve_named(
    name: &'static str,
    addr: std::net::SocketAddr,
) -> (
    tokio::sync::oneshot::Sender<()>,
    std::net::SocketAddr,
    tokio::task::JoinHandle<()>,
) {
    let listener = connect_plugin::rpc::server::listen(addr)
        .await
        .expect("listen");
    let addr = listener.local_addr().expect("local addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = connect_plugin::rpc::Server::new()
        .shutdown_timeout(Duration::from_millis(100))
        .add_service(InteropServiceServer::new(Named(name)).into_service());
    let task = tokio::spawn(async move {
        let _ = server
            .serve_with_shutdown(listener, async {
                let _ = stopped.await;
            })
            .await;
    });
    (stop, addr, task)
}

/// The name of the [`Named`] server a server-streaming call through `client` reached.
pub async fn streamed_by(client: &InteropServiceClient) -> Result<String, Error> {
    let mut stream = client
        .server_stream(Payload::default())
        .await?
        .into_message();
    let first = stream.message().await?;
    Ok(first.map(|p| p.text).unwrap_or_default())
}

/// The name of the [`Named`] server a unary call through `client` reached.
pub async fn answered_by(client: &InteropServiceClient) -> Result<String, Error> {
    client
        .unary(Payload::default())
        .await
        .map(|r| r.into_message().text)
}

/// Answers `unary` with its request after the payload's `sleep_ms`, telling `arrived` as each
/// call comes in: for tests that must act while a call is in flight, without guessing with a
/// sleep.
#[derive(Debug, Clone, Default)]
pub struct SlowAnswer {
    /// Notified as each call arrives.
    pub arrived: std::sync::Arc<tokio::sync::Notify>,
}

impl InteropService for SlowAnswer {
    async fn unary(&self, request: Request<Payload>) -> Result<Response<Payload>, Error> {
        self.arrived.notify_one();
        let payload = request.into_message();
        tokio::time::sleep(Duration::from_millis(payload.sleep_ms.max(0) as u64)).await;
        Ok(Response::new(payload))
    }
}

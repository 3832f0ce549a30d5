//! Connect services and plugins mounted inside an existing axum router through
//! `Server::into_http_service`: unary, server streaming and a routed error answer as they do
//! on the runtime's own listener, and the router's own routes keep working beside them.

use std::time::Duration;

use connect_plugin::rpc::{HttpVersion, Server};
use connect_plugin::{Channel, Code, Plugin};
use connect_plugin_tests::interop::{
    InteropServer, InteropServiceClient, InteropServicePlugin, Payload,
};

/// An axum app with one route of its own and the Connect services as its fallback, served on
/// a free loopback port; returns its base URL.
async fn serve_axum() -> String {
    let connect = Server::new()
        .add_service(InteropServicePlugin::server(InteropServer).into_service())
        .into_http_service();
    let app = axum::Router::new()
        .route("/hello", axum::routing::get(|| async { "hello from axum" }))
        .fallback_service(connect);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

fn client(url: &str, version: HttpVersion) -> InteropServiceClient {
    let channel = Channel::builder(url)
        .http_version(version)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    InteropServicePlugin::client(channel)
}

#[tokio::test]
async fn connect_calls_reach_services_mounted_in_axum_over_h1_and_h2c() {
    let url = serve_axum().await;
    for version in [HttpVersion::Http1, HttpVersion::Http2] {
        let interop = client(&url, version);
        let reply = interop
            .unary(Payload {
                text: "through axum".into(),
                ..Payload::default()
            })
            .await
            .unwrap_or_else(|e| panic!("unary over {version:?}: {e}"));
        assert_eq!(reply.message().text, "through axum", "{version:?}");
        assert_eq!(reply.headers()["x-echo-response"], "yes", "{version:?}");

        let mut stream = interop
            .server_stream(Payload {
                text: "s".into(),
                count: 3,
                ..Payload::default()
            })
            .await
            .unwrap_or_else(|e| panic!("server stream over {version:?}: {e}"))
            .into_message();
        let mut seen = 0;
        while let Some(message) = stream.message().await.unwrap() {
            assert_eq!(message.text, "s");
            seen += 1;
        }
        assert_eq!(seen, 3, "three streamed messages over {version:?}");

        let error = interop
            .unary(Payload {
                fail_code: "not_found".into(),
                ..Payload::default()
            })
            .await
            .expect_err("the handler fails as asked");
        assert_eq!(error.code(), Code::NotFound, "{version:?}");
        assert_eq!(error.details().len(), 1, "the error detail survives axum");
    }
}

#[tokio::test]
async fn the_axum_routes_and_unknown_procedures_answer_beside_the_connect_services() {
    let url = serve_axum().await;
    let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let response = http
        .get(format!("{url}/hello").parse().unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(&body[..], b"hello from axum");

    // A procedure no service serves falls through to the Connect router's own 404.
    let error = Channel::new(&url)
        .unwrap()
        .unary::<Payload, Payload>(
            &connect_plugin::rpc::MethodDescriptor {
                service: "interop.v1.InteropService",
                method: "Missing",
                path: "/interop.v1.InteropService/Missing",
                kind: connect_plugin::rpc::StreamKind::Unary,
                idempotency: connect_plugin::rpc::Idempotency::Unknown,
            },
            connect_plugin::Request::new(Payload::default()),
        )
        .await
        .expect_err("no such procedure");
    assert_eq!(error.code(), Code::Unimplemented);
}

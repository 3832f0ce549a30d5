//! The interop matrix with connect-node, in both directions: {HTTP/1.1, h2c} x {proto, json} x
//! {identity, gzip} x {unary, server, client, bidi streaming}, plus GET, timeouts, metadata
//! and errors with details. The same matrix also runs our client against our server.

use std::time::Duration;

use connect_plugin::{
    Channel, Code, MessageStream, Request, rpc::Codec, rpc::Compression, rpc::HttpVersion,
};
use connect_plugin_tests::interop::{InteropServicePlugin, Payload, serve_interop};
use connect_plugin_tests::{node, repo_root, start_node_server};
use http::HeaderValue;

fn data(n: usize) -> prost::bytes::Bytes {
    (0..n).map(|i| (i % 251) as u8).collect::<Vec<_>>().into()
}

/// Our client through the whole matrix against the server at `url`.
async fn client_matrix(url: &str, versions: &[HttpVersion]) -> usize {
    let mut checks = 0;
    for &version in versions {
        for codec in [Codec::Proto, Codec::Json] {
            for gzip in [false, true] {
                let ctx = format!("{url} {version:?} {codec:?} gzip={gzip}");
                let mut builder = Channel::builder(url)
                    .http_version(version)
                    .codec(codec)
                    .timeout(Duration::from_secs(10));
                if gzip {
                    builder = builder
                        .send_compression(Compression::Gzip)
                        .compress_min_bytes(0);
                }
                let channel = builder.build().unwrap();
                let client = connect_plugin::dispense::<InteropServicePlugin>(&channel);

                // Unary with metadata both ways.
                let mut request = Request::new(Payload {
                    text: "hi".into(),
                    data: data(2048),
                    ..Default::default()
                });
                request
                    .metadata_mut()
                    .insert("x-echo", HeaderValue::from_static("ping"));
                let echoed = client
                    .unary(request)
                    .await
                    .unwrap_or_else(|e| panic!("{ctx}: unary: {e}"));
                assert_eq!(echoed.text, "hi", "{ctx}");
                assert_eq!(echoed.data, data(2048), "{ctx}");
                assert_eq!(
                    echoed.echoed_header, "ping",
                    "{ctx}: request header seen by the server"
                );
                assert_eq!(
                    echoed.headers().get("x-echo-response").unwrap(),
                    "yes",
                    "{ctx}"
                );
                assert_eq!(
                    echoed.headers().get("x-request-encoding").unwrap(),
                    if gzip { "gzip" } else { "identity" },
                    "{ctx}: how the request went out, as the server saw it"
                );
                assert_eq!(echoed.trailers().get("x-trailer").unwrap(), "done", "{ctx}");
                assert!(
                    echoed
                        .headers()
                        .keys()
                        .all(|k| !k.as_str().starts_with("trailer-")),
                    "{ctx}: trailer- prefix hidden"
                );
                checks += 6;

                // GET for NO_SIDE_EFFECTS.
                let get_channel = Channel::builder(url)
                    .http_version(version)
                    .codec(codec)
                    .use_get(true)
                    .build()
                    .unwrap();
                let looked = connect_plugin::dispense::<InteropServicePlugin>(&get_channel)
                    .lookup(Payload {
                        text: "get me".into(),
                        ..Default::default()
                    })
                    .await
                    .unwrap_or_else(|e| panic!("{ctx}: lookup: {e}"));
                assert_eq!(looked.text, "get me", "{ctx}");
                checks += 1;

                // Server streaming, with trailers from the end-stream message.
                let mut stream = client
                    .server_stream(Payload {
                        text: "s".into(),
                        count: 3,
                        data: data(1500),
                        ..Default::default()
                    })
                    .await
                    .unwrap()
                    .into_message();
                let mut n = 0;
                while let Some(p) = stream
                    .message()
                    .await
                    .unwrap_or_else(|e| panic!("{ctx}: stream: {e}"))
                {
                    assert_eq!((p.text.as_str(), p.data.len()), ("s", 1500), "{ctx}");
                    n += 1;
                }
                assert_eq!(n, 3, "{ctx}");
                assert_eq!(
                    stream.trailers().unwrap().get("x-trailer").unwrap(),
                    "done",
                    "{ctx}"
                );
                checks += 2;

                // Client streaming.
                let sent: MessageStream<Payload> = ["a", "b", "c"]
                    .into_iter()
                    .map(|t| Payload {
                        text: t.into(),
                        data: data(1200),
                        ..Default::default()
                    })
                    .collect();
                let joined = client
                    .client_stream(sent)
                    .await
                    .unwrap_or_else(|e| panic!("{ctx}: client stream: {e}"));
                assert_eq!((joined.text.as_str(), joined.count), ("a,b,c", 3), "{ctx}");
                checks += 1;

                // Bidi, full duplex over HTTP/2.
                if version == HttpVersion::Http2 {
                    let (tx, requests) = MessageStream::channel(1);
                    let send_first = tx.send(Payload {
                        text: "x".into(),
                        ..Default::default()
                    });
                    let (opened, sent) = tokio::join!(client.bidi(requests), send_first);
                    sent.unwrap();
                    let mut replies = opened
                        .unwrap_or_else(|e| panic!("{ctx}: bidi: {e}"))
                        .into_message();
                    for text in ["x", "yy", "zzz"] {
                        if text != "x" {
                            tx.send(Payload {
                                text: text.into(),
                                data: data(1100),
                                ..Default::default()
                            })
                            .await
                            .unwrap();
                        }
                        let reply = replies.message().await.unwrap().expect("a reply");
                        assert_eq!(
                            reply.text, text,
                            "{ctx}: bidi reply before the next request"
                        );
                    }
                    drop(tx);
                    assert!(replies.message().await.unwrap().is_none(), "{ctx}");
                    checks += 4;
                }

                // Timeouts travel as Connect-Timeout-Ms and come back as deadline_exceeded.
                let slow = Request::new(Payload {
                    sleep_ms: 2000,
                    ..Default::default()
                })
                .with_timeout(Duration::from_millis(100));
                let err = client.unary(slow).await.unwrap_err();
                assert_eq!(err.code(), Code::DeadlineExceeded, "{ctx}: {err}");
                checks += 1;

                // Errors with details, unary and streaming.
                let boom = Payload {
                    text: "boom".into(),
                    fail_code: "not_found".into(),
                    count: 1,
                    ..Default::default()
                };
                let err = client.unary(boom.clone()).await.unwrap_err();
                let stream_err = match client.server_stream(boom.clone()).await {
                    Err(e) => e,
                    Ok(r) => r.into_message().message().await.unwrap_err(),
                };
                for err in [err, stream_err] {
                    assert_eq!(err.code(), Code::NotFound, "{ctx}: {err}");
                    let detail: Payload = err.details()[0].to_message().expect("a Payload detail");
                    assert_eq!(detail.text, "boom", "{ctx}");
                    checks += 2;
                }
            }
        }
    }
    checks
}

#[tokio::test]
async fn our_client_matrix_against_our_server() {
    let url = serve_interop().await;
    let checks = client_matrix(&url, &[HttpVersion::Http1, HttpVersion::Http2]).await;
    assert!(checks > 100, "{checks}");
}

#[tokio::test]
async fn connect_node_client_matrix_against_our_server() {
    let url = serve_interop().await;
    let output = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(node())
            .arg(repo_root().join("tests/interop/matrix.mjs"))
            .arg(&url)
            .output(),
    )
    .await
    .expect("the connect-node matrix finishes within 120 s")
    .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.starts_with("OK "),
        "connect-node matrix failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
async fn our_client_matrix_against_connect_node() {
    let h1 = start_node_server("1.1").await;
    let h2 = start_node_server("2").await;
    let checks = client_matrix(&h1.url, &[HttpVersion::Http1]).await
        + client_matrix(&h2.url, &[HttpVersion::Http2]).await;
    assert!(checks > 100, "{checks}");
}

/// connect-go (`connectrpc.com/connect`, pinned by tests/go/go.sum) calling our server: the
/// same matrix as connect-node's, written with connect-go's client.
#[tokio::test]
async fn connect_go_client_matrix_against_our_server() {
    let url = serve_interop().await;
    let checks = connect_plugin_tests::run_go_client(&["interop-client", &url]).await;
    assert!(checks > 100, "{checks}");
}

/// Our client against a connect-go server (HTTP/1.1 and h2c on one port).
#[tokio::test]
async fn our_client_matrix_against_connect_go() {
    let mut server = connect_plugin_tests::GoPeer::start(&["interop-server"], &[]);
    let url = server.line("LISTENING ").await;
    let checks = client_matrix(&url, &[HttpVersion::Http1, HttpVersion::Http2]).await;
    assert!(checks > 100, "{checks}");
    server.stop().await;
}

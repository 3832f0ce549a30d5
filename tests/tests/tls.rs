//! TLS end to end: our server and client over real TLS with a certificate made for the test,
//! HTTP/2 and HTTP/1.1 negotiated by ALPN, every stream kind; and a client that does not trust
//! the server's certificate is refused with a message that says so.

use std::time::Duration;

use connect_plugin::rpc::tls::{ClientTls, ServerTls};
use connect_plugin::{Channel, Code, MessageStream, rpc::HttpVersion, rpc::Server};
use connect_plugin_tests::interop::{InteropServicePlugin, Payload, serve_interop_with};

fn certificate() -> (String, String) {
    let key = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("a self-signed certificate");
    (key.cert.pem(), key.signing_key.serialize_pem())
}

#[tokio::test]
async fn https_with_alpn_for_both_http_versions_and_every_stream_kind() {
    let (cert, key) = certificate();
    let url = serve_interop_with(
        Server::new().tls(ServerTls::from_pem(cert.as_bytes(), key.as_bytes()).unwrap()),
    )
    .await;
    assert!(url.starts_with("https://"));
    for version in [HttpVersion::Http2, HttpVersion::Http1] {
        let channel = Channel::builder(&url)
            .http_version(version)
            .tls(ClientTls::with_root_certificates_pem(cert.as_bytes()).unwrap())
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let client = connect_plugin::dispense::<InteropServicePlugin>(&channel);
        let echoed = client
            .unary(Payload {
                text: "secure".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(echoed.text, "secure", "{version:?}");
        let mut stream = client
            .server_stream(Payload {
                text: "s".into(),
                count: 2,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_message();
        let mut n = 0;
        while stream.message().await.unwrap().is_some() {
            n += 1;
        }
        assert_eq!(n, 2, "{version:?}");
        let joined = client
            .client_stream(
                ["a", "b"]
                    .into_iter()
                    .map(|t| Payload {
                        text: t.into(),
                        ..Default::default()
                    })
                    .collect::<MessageStream<_>>(),
            )
            .await
            .unwrap();
        assert_eq!(joined.text, "a,b", "{version:?}");
        if version == HttpVersion::Http2 {
            let (tx, requests) = MessageStream::channel(1);
            let (opened, sent) = tokio::join!(
                client.bidi(requests),
                tx.send(Payload {
                    text: "duplex".into(),
                    ..Default::default()
                })
            );
            sent.unwrap();
            let mut replies = opened.unwrap().into_message();
            assert_eq!(replies.message().await.unwrap().unwrap().text, "duplex");
        }
    }
}

#[tokio::test]
async fn an_untrusted_certificate_is_refused_with_a_clear_error() {
    let (cert, key) = certificate();
    let url = serve_interop_with(
        Server::new().tls(ServerTls::from_pem(cert.as_bytes(), key.as_bytes()).unwrap()),
    )
    .await;
    let (other_cert, _) = certificate();
    let channel = Channel::builder(&url)
        .tls(ClientTls::with_root_certificates_pem(other_cert.as_bytes()).unwrap())
        .build()
        .unwrap();
    let err = connect_plugin::dispense::<InteropServicePlugin>(&channel)
        .unary(Payload::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    assert!(
        err.message().to_lowercase().contains("certificate"),
        "{err}"
    );
}

#[test]
fn bad_pem_is_invalid_argument_naming_the_part() {
    let err = ServerTls::from_pem(b"not pem", b"not pem").unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("server certificate"), "{err}");
    let err = ClientTls::with_root_certificates_pem(b"").unwrap_err();
    assert!(err.message().contains("BEGIN CERTIFICATE"), "{err}");
}

#[tokio::test]
async fn connect_node_client_over_tls_with_both_http_versions() {
    let (cert, key) = certificate();
    let url = serve_interop_with(
        Server::new().tls(ServerTls::from_pem(cert.as_bytes(), key.as_bytes()).unwrap()),
    )
    .await;
    let ca = std::env::temp_dir().join(format!("connect-plugin-ca-{}.pem", std::process::id()));
    std::fs::write(&ca, &cert).unwrap();
    for http in ["2", "1.1"] {
        let output = tokio::time::timeout(
            Duration::from_secs(60),
            tokio::process::Command::new(connect_plugin_tests::node())
                .arg(connect_plugin_tests::repo_root().join("tests/interop/tls_client.mjs"))
                .args([url.as_str(), ca.to_str().unwrap(), http])
                .output(),
        )
        .await
        .expect("node finishes within 60 s")
        .expect("node runs");
        assert!(
            output.status.success() && String::from_utf8_lossy(&output.stdout).trim() == "OK",
            "connect-node over TLS (HTTP/{http}) failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let _ = std::fs::remove_file(ca);
}

#[tokio::test]
async fn plugins_call_each_other_through_a_tls_host() {
    use connect_plugin::{Client, ClientConfig, ServeConfig};

    let (cert, key) = certificate();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let host_url = format!("https://{}", listener.local_addr().unwrap());
    tokio::spawn(connect_plugin::serve(
        ServeConfig::new()
            .registry(connect_plugin_tests::open_registry())
            .tls(ServerTls::from_pem(cert.as_bytes(), key.as_bytes()).unwrap())
            .listener(listener),
    ));
    let trusting = |config: ClientConfig| {
        let tls = ClientTls::with_root_certificates_pem(cert.as_bytes()).unwrap();
        config.channel(move |c| c.tls(tls))
    };

    // The provider serves in the clear on loopback and registers with the host over TLS.
    let provider_url = connect_plugin_tests::interop::serve_interop().await;
    let provider = Client::new(trusting(
        ClientConfig::new(&host_url)
            .self_id("echo", "1.0.0")
            .provides(["interop"]),
    ))
    .unwrap();
    connect_plugin_tests::register_interop(&provider, provider_url).await;

    // The app finds it and calls it through the host, over its TLS connection to the host.
    let app = Client::new(trusting(
        ClientConfig::new(&host_url).self_id("app", "1.0.0"),
    ))
    .unwrap();
    let interop = app.provider::<InteropServicePlugin>("").await.unwrap();
    let echoed = interop
        .unary(Payload {
            text: "through TLS".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(echoed.text, "through TLS");
}

//! Interop with connect-node (`@connectrpc/connect-node`, pinned in package-lock.json): its
//! client calls our kv-plugin, and our client calls its KV server, for both codecs and both
//! HTTP versions, unary and server streaming, with errors and error details.

use std::time::Duration;

use connect_plugin::{Channel, Code, rpc::Codec, rpc::HttpVersion};
use connect_plugin_tests::{launch_kv_plugin_for_anyone, node, repo_root, start_node_server};
use kv::v1::{DeleteRequest, EventType, GetRequest, KvServicePlugin, PutRequest, WatchRequest};

const KV_PLUGIN: &str = env!("CARGO_BIN_EXE_e2e-kv-plugin");

#[tokio::test]
async fn connect_node_client_calls_our_plugin() {
    let plugin = launch_kv_plugin_for_anyone(KV_PLUGIN).await;
    for http in ["1.1", "2"] {
        for codec in ["proto", "json"] {
            let output = tokio::time::timeout(
                Duration::from_secs(60),
                tokio::process::Command::new(node())
                    .arg(repo_root().join("tests/interop/client.mjs"))
                    .args([&plugin.endpoint(), http, codec])
                    .output(),
            )
            .await
            .expect("the connect-node client finishes within 60 s")
            .expect("node runs");
            let stdout = String::from_utf8_lossy(&output.stdout);
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(
                output.status.success() && stdout.trim_end().ends_with("OK"),
                "connect-node client over HTTP/{http} with {codec} failed:\n{stdout}\n{stderr}"
            );
            assert!(
                stdout.contains(r#""step":"empty-key","code":"InvalidArgument","message":"key must not be empty""#),
                "{stdout}"
            );
        }
    }
}

#[tokio::test]
async fn our_client_calls_a_connect_node_server() {
    for (http, version) in [("1.1", HttpVersion::Http1), ("2", HttpVersion::Http2)] {
        let server = start_node_server(http).await;
        for codec in [Codec::Proto, Codec::Json] {
            let context = format!("HTTP/{http} {codec:?}");
            let channel = Channel::builder(&server.url)
                .http_version(version)
                .codec(codec)
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap();
            let kv = connect_plugin::dispense::<KvServicePlugin>(&channel);
            let prefix = format!("{http}-{}/", codec.name());

            // Server streaming. connect-node sends the response headers with the first
            // message, so the watch is started in a task and "ping" puts are repeated until
            // it reports being live; only then do the changes under test happen.
            let (live_tx, mut live_rx) = tokio::sync::mpsc::channel::<()>(1);
            let watcher = {
                let kv = kv.clone();
                let prefix = prefix.clone();
                tokio::spawn(async move {
                    let mut stream = kv
                        .watch(WatchRequest {
                            prefix: prefix.clone(),
                        })
                        .await
                        .unwrap()
                        .into_message();
                    let mut seen = Vec::new();
                    while let Some(event) = stream.message().await.unwrap() {
                        if event.key.ends_with("/ping") {
                            let _ = live_tx.try_send(());
                            continue;
                        }
                        seen.push((
                            EventType::try_from(event.r#type).unwrap(),
                            event.key,
                            event.value,
                        ));
                        if seen.len() == 2 {
                            return seen;
                        }
                    }
                    panic!("the watch ended before two events");
                })
            };
            let live = async {
                loop {
                    kv.put(PutRequest {
                        key: format!("{prefix}ping"),
                        value: "p".into(),
                    })
                    .await
                    .unwrap();
                    if let Ok(Some(())) =
                        tokio::time::timeout(Duration::from_millis(50), live_rx.recv()).await
                    {
                        return;
                    }
                }
            };
            tokio::time::timeout(Duration::from_secs(10), live)
                .await
                .expect("the watch goes live");

            kv.put(PutRequest {
                key: format!("{prefix}a"),
                value: "alpha".into(),
            })
            .await
            .unwrap();
            let got = kv
                .get(GetRequest {
                    key: format!("{prefix}a"),
                })
                .await
                .unwrap();
            assert!(got.message().found, "{context}");
            assert_eq!(got.message().value.as_ref(), b"alpha", "{context}");
            let deleted = kv
                .delete(DeleteRequest {
                    key: format!("{prefix}a"),
                })
                .await
                .unwrap();
            assert!(deleted.message().found, "{context}");
            let missing = kv
                .get(GetRequest {
                    key: format!("{prefix}a"),
                })
                .await
                .unwrap();
            assert!(!missing.message().found, "{context}");

            let events = tokio::time::timeout(Duration::from_secs(10), watcher)
                .await
                .expect("watch events arrive")
                .unwrap();
            assert_eq!(events[0].0, EventType::Put, "{context}");
            assert_eq!(events[0].1, format!("{prefix}a"), "{context}");
            assert_eq!(events[0].2.as_ref(), b"alpha", "{context}");
            assert_eq!(events[1].0, EventType::Delete, "{context}");

            // An error with a typed detail, decoded from connect-node's error JSON.
            let err = kv.get(GetRequest { key: String::new() }).await.unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument, "{context}: {err}");
            assert_eq!(err.message(), "key must not be empty", "{context}");
            let detail = err.details().first().expect("connect-node sent a detail");
            assert_eq!(detail.type_name(), "kv.v1.GetRequest", "{context}");
            let decoded: GetRequest = detail.to_message().expect("the detail decodes");
            assert_eq!(decoded.key, "", "{context}");

            // An unknown procedure: connect-node answers 404, which is `unimplemented`.
            static NOPE: connect_plugin::rpc::MethodDescriptor =
                connect_plugin::rpc::MethodDescriptor {
                    service: "kv.v1.KVService",
                    method: "Nope",
                    path: "/kv.v1.KVService/Nope",
                    kind: connect_plugin::rpc::StreamKind::Unary,
                    idempotency: connect_plugin::rpc::Idempotency::Unknown,
                };
            let err = channel
                .unary::<GetRequest, kv::v1::GetResponse>(
                    &NOPE,
                    connect_plugin::Request::new(GetRequest::default()),
                )
                .await
                .unwrap_err();
            assert_eq!(err.code(), Code::Unimplemented, "{context}: {err}");
        }
    }
}

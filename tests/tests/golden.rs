//! The golden fixture's generated code, served and called for real: keyword-named methods,
//! well-known types and their JSON mapping, oneofs, maps, optional fields, imports across
//! packages, several services in one file, and default `unimplemented` methods.

use std::time::Duration;

use connect_plugin::rpc::wkt::Timestamp;
use connect_plugin::{
    Channel, Code, Error, MessageStream, Request, Response, ServerStream, Streaming, rpc::Codec,
    rpc::Compression, rpc::HttpVersion, rpc::Server,
};
use connect_plugin_tests::fixtures::golden::common::v1::Page;
use connect_plugin_tests::fixtures::golden::v1::{
    AdminPlugin, AdminServer, EverythingService, EverythingServicePlugin, EverythingServiceServer,
    LookupRequest, LookupResponse, Tock, TypeRequest, TypeResponse, type_request,
};
use connect_plugin_tests::raw_http1;
use pbjson_types::Empty;

struct Everything;

impl EverythingService for Everything {
    async fn r#type(&self, request: Request<TypeRequest>) -> Result<Response<TypeResponse>, Error> {
        let m = request.into_message();
        let size = m.counts.values().sum::<i64>() as i32 + m.self_.unwrap_or(0) as i32;
        let token = match m.choice {
            Some(type_request::Choice::Name(name)) => name,
            Some(type_request::Choice::Number(n)) => n.to_string(),
            None => String::new(),
        };
        Ok(Response::new(TypeResponse {
            at: Some(Timestamp {
                seconds: 1,
                nanos: 500_000_000,
            }),
            page: Some(Page {
                size,
                token: format!("{}:{token}", m.r#type),
            }),
        }))
    }

    async fn lookup(
        &self,
        request: Request<LookupRequest>,
    ) -> Result<Response<LookupResponse>, Error> {
        Ok(Response::new(LookupResponse {
            id: request.into_message().id,
            score: 0.5,
        }))
    }

    async fn tick(&self, _: Request<Empty>) -> Result<Response<ServerStream<Tock>>, Error> {
        let tocks = (0..3).map(|s| Tock {
            at: Some(Timestamp {
                seconds: s,
                nanos: 0,
            }),
        });
        Ok(Response::new(tocks.collect::<ServerStream<_>>()))
    }
    // `paged` is left to its default: unimplemented.

    async fn upload(
        &self,
        request: Request<Streaming<type_request::Nested>>,
    ) -> Result<Response<LookupResponse>, Error> {
        let mut chunks = request.into_message();
        let mut total = 0usize;
        while let Some(chunk) = chunks.message().await? {
            total += chunk.blob.len();
        }
        Ok(Response::new(LookupResponse {
            id: "upload".into(),
            score: total as f64,
        }))
    }

    async fn chat(
        &self,
        request: Request<Streaming<LookupRequest>>,
    ) -> Result<Response<ServerStream<LookupResponse>>, Error> {
        let mut requests = request.into_message();
        let (tx, stream) = ServerStream::channel(4);
        tokio::spawn(async move {
            while let Ok(Some(request)) = requests.message().await {
                let reply = LookupResponse {
                    score: request.id.len() as f64,
                    id: request.id,
                };
                if tx.send(reply).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(stream))
    }
}

struct NoAdmin;
impl connect_plugin_tests::fixtures::golden::v1::Admin for NoAdmin {}

async fn serve() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Server::new()
        .add_service(EverythingServiceServer::new(Everything).into_service())
        .add_service(AdminServer::new(NoAdmin).into_service());
    tokio::spawn(server.serve(listener));
    addr
}

#[tokio::test]
async fn golden_services_serve_and_call_with_both_codecs() {
    let addr = serve().await;
    for codec in [Codec::Proto, Codec::Json] {
        let channel = Channel::builder(format!("http://{addr}"))
            .codec(codec)
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let client = connect_plugin::dispense::<EverythingServicePlugin>(&channel);
        let response = client
            .r#type(TypeRequest {
                r#type: "t".into(),
                self_: Some(2),
                counts: [("a".to_owned(), 3)].into(),
                choice: Some(type_request::Choice::Number(7)),
                ..Default::default()
            })
            .await
            .unwrap();
        let page = response.message().page.clone().unwrap();
        assert_eq!((page.size, page.token.as_str()), (5, "t:7"), "{codec:?}");
        assert_eq!(
            response.message().at,
            Some(Timestamp {
                seconds: 1,
                nanos: 500_000_000
            })
        );

        let mut tick = client.tick(Empty {}).await.unwrap().into_message();
        let mut seconds = Vec::new();
        while let Some(tock) = tick.message().await.unwrap() {
            seconds.push(tock.at.unwrap().seconds);
        }
        assert_eq!(seconds, [0, 1, 2]);

        let err = client.paged(Page::default()).await.unwrap_err();
        assert_eq!(err.code(), Code::Unimplemented);
        assert_eq!(
            err.message(),
            "golden.v1.EverythingService.Paged is not implemented by this server"
        );

        let admin = connect_plugin::dispense::<AdminPlugin>(&channel);
        assert_eq!(
            admin.reset(Empty {}).await.unwrap_err().code(),
            Code::Unimplemented
        );
    }
}

#[tokio::test]
async fn golden_client_and_bidi_streaming_with_compression_over_both_http_versions() {
    let addr = serve().await;
    for version in [HttpVersion::Http1, HttpVersion::Http2] {
        for compress in [false, true] {
            let mut builder = Channel::builder(format!("http://{addr}"))
                .http_version(version)
                .timeout(Duration::from_secs(5));
            if compress {
                builder = builder
                    .send_compression(Compression::Gzip)
                    .compress_min_bytes(0);
            }
            let client =
                connect_plugin::dispense::<EverythingServicePlugin>(&builder.build().unwrap());
            let context = format!("{version:?} compress={compress}");

            let chunks: MessageStream<type_request::Nested> = (0..10)
                .map(|i| type_request::Nested {
                    blob: vec![i; 1000].into(),
                })
                .collect();
            let uploaded = client.upload(chunks).await.unwrap();
            assert_eq!(uploaded.score, 10_000.0, "{context}");

            // Full duplex over HTTP/2: each reply arrives before the next request is sent.
            if version == HttpVersion::Http2 {
                let (tx, requests) = MessageStream::channel(1);
                let mut replies = client.chat(requests).await.unwrap().into_message();
                for id in ["a", "bb", "ccc"] {
                    tx.send(LookupRequest { id: id.into() }).await.unwrap();
                    let reply = replies.message().await.unwrap().unwrap();
                    assert_eq!(
                        (reply.id.as_str(), reply.score),
                        (id, id.len() as f64),
                        "{context}"
                    );
                }
                drop(tx);
                assert!(replies.message().await.unwrap().is_none(), "{context}");
            } else {
                // Half duplex over HTTP/1.1: send everything, then read.
                let requests: MessageStream<LookupRequest> = ["a", "bb"]
                    .into_iter()
                    .map(|id| LookupRequest { id: id.into() })
                    .collect();
                let mut replies = client.chat(requests).await.unwrap().into_message();
                let mut ids = Vec::new();
                while let Some(reply) = replies.message().await.unwrap() {
                    ids.push(reply.id);
                }
                assert_eq!(ids, ["a", "bb"], "{context}");
            }
        }
    }
}

#[tokio::test]
async fn golden_no_side_effects_method_is_callable_with_get() {
    let addr = serve().await;
    for codec in [Codec::Proto, Codec::Json] {
        let channel = Channel::builder(format!("http://{addr}"))
            .codec(codec)
            .use_get(true)
            .build()
            .unwrap();
        let client = connect_plugin::dispense::<EverythingServicePlugin>(&channel);
        let got = client
            .lookup(LookupRequest { id: "g".into() })
            .await
            .unwrap();
        assert_eq!(got.id, "g");
    }
    // The same call on the wire: a GET with the message in the query.
    let r = raw_http1(
        addr,
        "GET",
        "/golden.v1.EverythingService/Lookup?connect=v1&encoding=json&message=%7B%22id%22%3A%22q%22%7D",
        &[],
        b"",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), r#"{"id":"q","score":0.5}"#);
    // G5: GET on a method with side effects is a 405.
    let r = raw_http1(
        addr,
        "GET",
        "/golden.v1.EverythingService/Type?encoding=json&message=%7B%7D",
        &[],
        b"",
    )
    .await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("POST"));
}

#[tokio::test]
async fn golden_json_mapping_is_canonical_proto3_json() {
    let addr = serve().await;
    // lowerCamel or original names accepted, int64 as strings, enum names, bytes as base64.
    let request = br#"{"type":"t","self":"4","counts":{"a":"1","b":"2"},"name":"n","kind":"KIND_FAST","nested":[{"blob":"AQI="}]}"#;
    let r = raw_http1(
        addr,
        "POST",
        "/golden.v1.EverythingService/Type",
        &[("content-type", "application/json")],
        request,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.text(),
        r#"{"at":"1970-01-01T00:00:01.500Z","page":{"size":7,"token":"t:n"}}"#
    );
}

#[tokio::test]
async fn golden_delegate_flattens_simple_requests_and_takes_the_message_otherwise() {
    use connect_plugin_tests::fixtures::golden::v1::EverythingDelegate;
    let addr = serve().await;
    let delegate =
        EverythingDelegate::from_channel(Channel::new(format!("http://{addr}")).unwrap());
    // LookupRequest { id } flattens into one parameter.
    let looked = delegate.lookup("flat").await.unwrap();
    assert_eq!((looked.id.as_str(), looked.score), ("flat", 0.5));
    // TypeRequest has a map and a oneof: the method takes the message.
    let typed = delegate
        .r#type(TypeRequest {
            r#type: "t".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(typed.page.unwrap().token, "t:");
}

#[test]
fn golden_descriptors_and_bindings() {
    use connect_plugin::{Plugin, rpc::Idempotency, rpc::StreamKind};
    use connect_plugin_tests::fixtures::golden::v1 as g;
    assert_eq!(
        g::EVERYTHING_SERVICE_TYPE.path,
        "/golden.v1.EverythingService/Type"
    );
    assert_eq!(
        g::EVERYTHING_SERVICE_LOOKUP.idempotency,
        Idempotency::NoSideEffects
    );
    assert_eq!(
        g::EVERYTHING_SERVICE_PAGED.idempotency,
        Idempotency::Idempotent
    );
    assert_eq!(g::EVERYTHING_SERVICE_TICK.kind, StreamKind::ServerStreaming);
    assert_eq!(EverythingServicePlugin::NAME, "everything");
    assert_eq!(AdminPlugin::NAME, "admin");
    assert_eq!(AdminPlugin::SERVICE_NAME, "golden.v1.Admin");
    assert_eq!(EverythingServicePlugin::VERSION, "1.0.0");
}

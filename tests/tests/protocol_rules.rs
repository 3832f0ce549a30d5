//! One test per Connect protocol rule (IDs from shared/CONNECT_PROTOCOL.md), on raw bytes
//! where that is the only way to send or receive the bad input: our server is checked with
//! hand-written HTTP/1.1 requests, our client against a hand-written misbehaving server.

use std::io::Write as _;
use std::time::Duration;

use bytes::Bytes;
use connect_plugin::{Channel, Code, MessageStream, rpc::HttpVersion};
use connect_plugin_tests::interop::{InteropServicePlugin, Payload, serve_interop};
use connect_plugin_tests::{RawResponse, raw_http1};
use http_body_util::Full;
use prost::Message as _;

fn envelope(flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![flags];
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

fn payload(text: &str) -> Vec<u8> {
    Payload {
        text: text.into(),
        ..Default::default()
    }
    .encode_to_vec()
}

const UNARY: &str = "/interop.v1.InteropService/Unary";
const LOOKUP: &str = "/interop.v1.InteropService/Lookup";
const SERVER_STREAM: &str = "/interop.v1.InteropService/ServerStream";
const CLIENT_STREAM: &str = "/interop.v1.InteropService/ClientStream";

async fn server() -> std::net::SocketAddr {
    serve_interop()
        .await
        .trim_start_matches("http://")
        .parse()
        .unwrap()
}

async fn post(path: &str, headers: &[(&str, &str)], body: &[u8]) -> RawResponse {
    raw_http1(server().await, "POST", path, headers, body).await
}

/// The end-stream JSON of a raw streaming response (its last envelope).
fn end_stream(r: &RawResponse) -> String {
    let mut rest = &r.body[..];
    let mut last = String::new();
    while rest.len() >= 5 {
        let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        if rest[0] & 2 != 0 {
            last = String::from_utf8_lossy(&rest[5..5 + len]).into_owned();
        }
        rest = &rest[5 + len..];
    }
    last
}

const PROTO: (&str, &str) = ("content-type", "application/proto");
const STREAM_PROTO: (&str, &str) = ("content-type", "application/connect+proto");

#[tokio::test]
async fn p2_wrong_verb_is_405_with_allow() {
    let r = raw_http1(server().await, "DELETE", UNARY, &[PROTO], b"").await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("POST"));
    let r = raw_http1(server().await, "PUT", LOOKUP, &[PROTO], b"").await;
    assert_eq!(r.header("allow"), Some("GET, POST"));
}

#[tokio::test]
async fn u5_success_echoes_the_content_type_and_u7_trailers_are_prefixed() {
    let r = post(
        UNARY,
        &[("content-type", "application/json; charset=utf-8")],
        br#"{"text":"x"}"#,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("trailer-x-trailer"), Some("done"));
}

#[tokio::test]
async fn u3_unsupported_request_compression_is_unimplemented_listing_the_supported() {
    let r = post(UNARY, &[PROTO, ("content-encoding", "br")], &payload("x")).await;
    assert_eq!(r.status, 501);
    assert!(
        r.text().contains("unimplemented") && r.text().contains("gzip, identity"),
        "{}",
        r.text()
    );
}

#[tokio::test]
async fn u3_response_compression_follows_accept_encoding_or_the_request() {
    let big = Payload {
        data: vec![7; 4096].into(),
        ..Default::default()
    }
    .encode_to_vec();
    let r = post(UNARY, &[PROTO, ("accept-encoding", "br, gzip")], &big).await;
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert!(r.body.len() < 1000, "compressed");
    // No Accept-Encoding: the client accepts what it sent.
    let r = post(UNARY, &[PROTO, ("content-encoding", "gzip")], &gzip(&big)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    // Identity only: no compression.
    let r = post(UNARY, &[PROTO, ("accept-encoding", "identity")], &big).await;
    assert_eq!(r.header("content-encoding"), None);
}

#[tokio::test]
async fn u4_empty_body_is_never_decompressed() {
    let r = post(UNARY, &[PROTO, ("content-encoding", "gzip")], b"").await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test]
async fn u9_limit_is_checked_after_decompression() {
    // 8 MiB of zeros compress to a few KiB, past the 4 MiB limit once inflated.
    let bomb = gzip(
        &Payload {
            data: vec![0; 8 << 20].into(),
            ..Default::default()
        }
        .encode_to_vec(),
    );
    assert!(bomb.len() < 64 * 1024);
    let r = post(UNARY, &[PROTO, ("content-encoding", "gzip")], &bomb).await;
    assert_eq!(r.status, 429);
    assert!(r.text().contains("resource_exhausted"), "{}", r.text());
}

#[tokio::test]
async fn u8_wrong_protocol_version_is_invalid_argument() {
    let r = post(
        UNARY,
        &[PROTO, ("connect-protocol-version", "2")],
        &payload("x"),
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(r.text().contains("invalid_argument"), "{}", r.text());
}

#[tokio::test]
async fn p5_timeout_expiry_is_deadline_exceeded_504() {
    let slow = Payload {
        sleep_ms: 1000,
        ..Default::default()
    }
    .encode_to_vec();
    let r = post(UNARY, &[PROTO, ("connect-timeout-ms", "50")], &slow).await;
    assert_eq!(r.status, 504);
    assert!(r.text().contains("deadline_exceeded"), "{}", r.text());
}

#[tokio::test]
async fn g1_g2_get_with_base64_proto_in_any_order() {
    let message = payload("via get");
    let b64: String = base64_url(&message);
    let path = format!("{LOOKUP}?message={b64}&encoding=proto&base64=1&connect=v1&unknown=1");
    let r = raw_http1(server().await, "GET", &path, &[], b"").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/proto"));
    assert_eq!(Payload::decode(&r.body[..]).unwrap().text, "via get");
}

#[tokio::test]
async fn g3_get_errors_missing_message_unknown_encoding_unknown_compression() {
    let addr = server().await;
    let r = raw_http1(addr, "GET", &format!("{LOOKUP}?encoding=json"), &[], b"").await;
    assert_eq!(r.status, 400);
    let r = raw_http1(
        addr,
        "GET",
        &format!("{LOOKUP}?encoding=xml&message=x"),
        &[],
        b"",
    )
    .await;
    assert_eq!(r.status, 415);
    let r = raw_http1(
        addr,
        "GET",
        &format!("{LOOKUP}?encoding=json&message=x&compression=br&base64=1"),
        &[],
        b"",
    )
    .await;
    assert_eq!(r.status, 501);
}

#[tokio::test]
async fn g5_get_on_a_method_with_side_effects_is_405() {
    let r = raw_http1(
        server().await,
        "GET",
        &format!("{UNARY}?encoding=json&message=%7B%7D"),
        &[],
        b"",
    )
    .await;
    assert_eq!(r.status, 405);
}

#[tokio::test]
async fn s2_unsupported_stream_compression_is_unimplemented_in_the_end_stream() {
    let r = post(
        SERVER_STREAM,
        &[STREAM_PROTO, ("connect-content-encoding", "br")],
        &envelope(0, &payload("x")),
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(
        end_stream(&r).contains("unimplemented"),
        "{}",
        end_stream(&r)
    );
}

#[tokio::test]
async fn s4_compressed_flag_without_encoding_is_internal() {
    let r = post(SERVER_STREAM, &[STREAM_PROTO], &envelope(1, &payload("x"))).await;
    assert_eq!(r.status, 200);
    assert!(
        end_stream(&r).contains(r#""code":"internal""#),
        "{}",
        end_stream(&r)
    );
}

#[tokio::test]
async fn s3_compressed_messages_each_carry_the_flag() {
    let body = envelope(
        1,
        &gzip(
            &Payload {
                text: "z".into(),
                count: 2,
                ..Default::default()
            }
            .encode_to_vec(),
        ),
    );
    let r = post(
        SERVER_STREAM,
        &[
            STREAM_PROTO,
            ("connect-content-encoding", "gzip"),
            ("connect-accept-encoding", "gzip"),
        ],
        &body,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("connect-content-encoding"), Some("gzip"));
    // Two data messages (compressed: flag 0x01 since the server compresses from 0 bytes),
    // then the end-stream message.
    assert_eq!(r.body[0], 1);
}

#[tokio::test]
async fn s5_clients_must_not_send_end_stream() {
    let r = post(CLIENT_STREAM, &[STREAM_PROTO], &envelope(2, b"{}")).await;
    assert!(
        end_stream(&r).contains("invalid_argument"),
        "{}",
        end_stream(&r)
    );
}

#[tokio::test]
async fn s6_stream_errors_are_200_with_the_error_in_the_end_stream() {
    let fail = Payload {
        fail_code: "aborted".into(),
        count: 1,
        ..Default::default()
    }
    .encode_to_vec();
    let r = post(SERVER_STREAM, &[STREAM_PROTO], &envelope(0, &fail)).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/connect+proto"));
    assert!(
        end_stream(&r).contains(r#""code":"aborted""#),
        "{}",
        end_stream(&r)
    );
}

#[tokio::test]
async fn s9_server_stream_needs_exactly_one_request() {
    let r = post(SERVER_STREAM, &[STREAM_PROTO], b"").await;
    assert!(
        end_stream(&r).contains("unimplemented"),
        "{}",
        end_stream(&r)
    );
    let mut two = envelope(0, &payload("a"));
    two.extend(envelope(0, &payload("b")));
    let r = post(SERVER_STREAM, &[STREAM_PROTO], &two).await;
    assert!(
        end_stream(&r).contains("unimplemented"),
        "{}",
        end_stream(&r)
    );
}

fn base64_url(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

// ---- The client against a misbehaving server ----

/// An HTTP/1.1 server answering every request with `respond()`; returns its base URL.
async fn fake_server(respond: fn() -> http::Response<Full<Bytes>>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(respond())
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    format!("http://{addr}")
}

fn reply(status: u16, content_type: &str, body: Vec<u8>) -> http::Response<Full<Bytes>> {
    http::Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

async fn client_for(url: String) -> connect_plugin_tests::interop::InteropServiceClient {
    let channel = Channel::builder(url)
        .http_version(HttpVersion::Http1)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    connect_plugin::dispense::<InteropServicePlugin>(&channel)
}

async fn unary_error(respond: fn() -> http::Response<Full<Bytes>>) -> connect_plugin::Error {
    client_for(fake_server(respond).await)
        .await
        .unary(Payload::default())
        .await
        .unwrap_err()
}

async fn stream_outcome(
    respond: fn() -> http::Response<Full<Bytes>>,
) -> (usize, connect_plugin::Error) {
    let client = client_for(fake_server(respond).await).await;
    let mut stream = match client.server_stream(Payload::default()).await {
        Ok(response) => response.into_message(),
        Err(e) => return (0, e),
    };
    let mut received = 0;
    loop {
        match stream.message().await {
            Ok(Some(_)) => received += 1,
            Ok(None) => panic!("the stream should have failed"),
            Err(e) => return (received, e),
        }
    }
}

#[tokio::test]
async fn c1_non_json_error_body_maps_the_http_status() {
    let err = unary_error(|| reply(403, "application/proto", vec![1, 2, 3])).await;
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
}

#[tokio::test]
async fn c2_unparsable_or_codeless_json_maps_the_http_status() {
    let err = unary_error(|| reply(500, "application/json", b"{not json".to_vec())).await;
    assert_eq!(err.code(), Code::Unknown, "{err}");
    let err = unary_error(|| reply(400, "application/json", b"{}".to_vec())).await;
    assert_eq!(err.code(), Code::Internal, "{err}");
    let err = unary_error(|| {
        reply(
            429,
            "application/json",
            br#"{"code":"resource_exhausted","message":"slow down"}"#.to_vec(),
        )
    })
    .await;
    assert_eq!(
        (err.code(), err.message()),
        (Code::ResourceExhausted, "slow down")
    );
}

#[tokio::test]
async fn c3_non_connect_content_type_is_unknown() {
    let err = unary_error(|| reply(200, "image/jpeg", vec![0xff, 0xd8])).await;
    assert_eq!(err.code(), Code::Unknown, "{err}");
    let (_, err) = stream_outcome(|| reply(200, "text/plain", b"hello".to_vec())).await;
    assert_eq!(err.code(), Code::Unknown, "{err}");
}

#[tokio::test]
async fn c4_another_codec_than_requested_is_internal() {
    let err = unary_error(|| reply(200, "application/json", b"{}".to_vec())).await;
    assert_eq!(err.code(), Code::Internal, "{err}");
    let (_, err) = stream_outcome(|| reply(200, "application/connect+json", vec![])).await;
    assert_eq!(err.code(), Code::Internal, "{err}");
}

#[tokio::test]
async fn c5_unknown_response_encoding_is_internal() {
    let err = unary_error(|| {
        let mut r = reply(200, "application/proto", vec![]);
        r.headers_mut()
            .insert("content-encoding", http::HeaderValue::from_static("br"));
        r
    })
    .await;
    assert_eq!(err.code(), Code::Internal, "{err}");
}

#[tokio::test]
async fn s8_a_stream_without_end_stream_is_truncated_internal_after_the_data() {
    let (received, err) = stream_outcome(|| {
        let mut body = envelope(0, &payload("a"));
        body.extend(envelope(0, &payload("b")));
        reply(200, "application/connect+proto", body)
    })
    .await;
    assert_eq!(received, 2, "data before the truncation is delivered");
    assert_eq!(err.code(), Code::Internal, "{err}");
}

#[tokio::test]
async fn s5_data_after_end_stream_is_internal() {
    let (_, err) = stream_outcome(|| {
        let mut body = envelope(2, b"{}");
        body.extend(envelope(0, &payload("late")));
        reply(200, "application/connect+proto", body)
    })
    .await;
    assert_eq!(err.code(), Code::Internal, "{err}");
}

#[tokio::test]
async fn s4_client_rejects_a_compressed_flag_without_encoding() {
    let (_, err) =
        stream_outcome(|| reply(200, "application/connect+proto", envelope(1, &payload("a"))))
            .await;
    assert_eq!(err.code(), Code::Internal, "{err}");
}

#[tokio::test]
async fn s7_invalid_end_stream_is_internal_and_a_compressed_one_is_read() {
    let (_, err) = stream_outcome(|| {
        reply(
            200,
            "application/connect+proto",
            envelope(2, br#"{"error":5}"#),
        )
    })
    .await;
    assert_eq!(err.code(), Code::Internal, "{err}");
    // An error without a code is `unknown` with its message (conformance `end-stream/missing-code`).
    let (_, err) = stream_outcome(|| {
        reply(
            200,
            "application/connect+proto",
            envelope(2, br#"{"error":{"message":"oops"}}"#),
        )
    })
    .await;
    assert_eq!((err.code(), err.message()), (Code::Unknown, "oops"));
    let (_, err) = stream_outcome(|| {
        let mut r = reply(
            200,
            "application/connect+proto",
            envelope(
                3,
                &gzip(br#"{"error":{"code":"data_loss","message":"gone"}}"#),
            ),
        );
        r.headers_mut().insert(
            "connect-content-encoding",
            http::HeaderValue::from_static("gzip"),
        );
        r
    })
    .await;
    assert_eq!((err.code(), err.message()), (Code::DataLoss, "gone"));
}

#[tokio::test]
async fn s9_client_stream_with_zero_or_several_responses_is_unimplemented() {
    for respond in [
        (|| reply(200, "application/connect+proto", envelope(2, b"{}"))) as fn() -> _,
        || {
            let mut body = envelope(0, &payload("a"));
            body.extend(envelope(0, &payload("b")));
            body.extend(envelope(2, b"{}"));
            reply(200, "application/connect+proto", body)
        },
    ] {
        let client = client_for(fake_server(respond).await).await;
        let err = client
            .client_stream(MessageStream::<Payload>::empty())
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unimplemented, "{err}");
    }
}

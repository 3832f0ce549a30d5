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
    // Two data messages, each compressed (flag 0x01: the server compresses from 0 bytes),
    // then the end-stream message (0x02, compressed too: 0x03).
    let mut flags = Vec::new();
    let mut rest = &r.body[..];
    while rest.len() >= 5 {
        let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        flags.push(rest[0]);
        rest = &rest[5 + len..];
    }
    assert!(rest.is_empty(), "whole envelopes only");
    assert_eq!(flags.len(), 3, "{flags:?}");
    assert_eq!(&flags[..2], [1, 1], "every data message carries the flag");
    assert_eq!(flags[2] & 2, 2, "then the end-stream message");
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

#[tokio::test]
async fn p1_an_unknown_or_miscased_path_is_404_and_clients_read_unimplemented() {
    let r = post("/interop.v1.InteropService/unary", &[PROTO], &payload("x")).await;
    assert_eq!(r.status, 404, "paths are case-sensitive");
    let r = post("/interop.v1.Nope/Unary", &[PROTO], &payload("x")).await;
    assert_eq!(r.status, 404);
    // Our client behind a routing prefix the server does not serve: unimplemented.
    let url = format!("{}/some/prefix", serve_interop().await);
    let err = client_for(url)
        .await
        .unary(Payload::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented, "{err}");
}

#[tokio::test]
async fn p3_binary_metadata_is_base64_padded_or_not_and_connect_names_are_reserved() {
    use connect_plugin::rpc::metadata::{get_binary, insert_binary};
    let mut headers = http::HeaderMap::new();
    insert_binary(&mut headers, "x-data-bin", b"\x00\xffab").unwrap();
    // Sent unpadded; read padded or not.
    assert_eq!(headers.get("x-data-bin").unwrap(), "AP9hYg");
    headers.insert("x-padded-bin", http::HeaderValue::from_static("AP9hYg=="));
    for key in ["x-data-bin", "x-padded-bin"] {
        assert_eq!(get_binary(&headers, key).unwrap().unwrap(), b"\x00\xffab");
    }
    assert!(insert_binary(&mut headers, "x-not-binary", b"a").is_err());
    // A caller's connect-* metadata never reaches the wire as such: the server sees only its own.
    let url = serve_interop().await;
    let client = client_for(url).await;
    let mut request = connect_plugin::Request::new(Payload::default());
    request.metadata_mut().insert(
        "connect-protocol-version",
        http::HeaderValue::from_static("7"),
    );
    request
        .metadata_mut()
        .insert("x-echo", http::HeaderValue::from_static("kept"));
    let echoed = client
        .unary(request)
        .await
        .expect("not a version-7 request");
    assert_eq!(echoed.echoed_header, "kept");
}

#[tokio::test]
async fn p4_the_protocol_version_may_be_absent_and_clients_send_it() {
    // Absent: accepted (a server may reject it; ours does not).
    let r = post(UNARY, &[PROTO], &payload("v")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // Our client sends it on POST.
    let seen = header_seen_by_a_fake_server("connect-protocol-version").await;
    assert_eq!(seen.as_deref(), Some("1"));
}

#[tokio::test]
async fn u1_a_unary_body_is_the_bare_message() {
    let r = post(UNARY, &[PROTO], &payload("bare")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/proto"));
    let answer = Payload::decode(&r.body[..]).expect("no envelope around the message");
    assert_eq!(answer.text, "bare");
}

#[tokio::test]
async fn u2_s1_an_unsupported_content_type_is_415_listing_the_supported() {
    let r = post(UNARY, &[("content-type", "application/xml")], b"<x/>").await;
    assert_eq!(r.status, 415);
    assert_eq!(
        r.header("accept-post"),
        Some("application/proto, application/json")
    );
    let r = post(SERVER_STREAM, &[("content-type", "application/proto")], b"").await;
    assert_eq!(r.status, 415, "a stream needs application/connect+...");
    assert_eq!(
        r.header("accept-post"),
        Some("application/connect+proto, application/connect+json")
    );
}

#[tokio::test]
async fn u6_errors_are_json_with_the_codes_status() {
    let failing = Payload {
        fail_code: "not_found".into(),
        ..Default::default()
    }
    .encode_to_vec();
    let r = post(UNARY, &[PROTO], &failing).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(body["code"], "not_found");
    // A compressed error body is read by our client (U6: it may be compressed).
    let err = unary_error(|| {
        let mut r = reply(
            404,
            "application/json",
            gzip(br#"{"code":"not_found","message":"zipped"}"#),
        );
        r.headers_mut()
            .insert("content-encoding", http::HeaderValue::from_static("gzip"));
        r
    })
    .await;
    assert_eq!((err.code(), err.message()), (Code::NotFound, "zipped"));
}

#[tokio::test]
async fn u7_unary_trailers_are_trailer_prefixed_headers_on_errors_too() {
    // The interop server sets `x-trailer: done` on success; the trailer- prefix is on the wire.
    let r = post(UNARY, &[PROTO], &payload("t")).await;
    assert_eq!(r.header("trailer-x-trailer"), Some("done"));
    // Our client strips it: users see a trailer named x-trailer.
    let response = client_for(serve_interop().await)
        .await
        .unary(Payload::default())
        .await
        .unwrap();
    assert_eq!(response.trailers().get("x-trailer").unwrap(), "done");
    assert!(response.headers().get("trailer-x-trailer").is_none());
}

#[tokio::test]
async fn g2_get_accepts_percent_encoded_json_without_base64() {
    let addr = server().await;
    let query =
        "/interop.v1.InteropService/Lookup?encoding=json&message=%7B%22text%22%3A%22plain%22%7D";
    let r = raw_http1(addr, "GET", query, &[], b"").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("plain"), "{}", r.text());
}

#[tokio::test]
async fn g4_get_without_compression_is_identity_and_the_response_follows_accept_encoding() {
    let addr = server().await;
    let message = base64_url(&payload("g4"));
    let path = format!("{LOOKUP}?encoding=proto&base64=1&message={message}");
    let r = raw_http1(addr, "GET", &path, &[("accept-encoding", "gzip")], b"").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let body = if r.header("content-encoding") == Some("gzip") {
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&r.body[..]), &mut out)
            .unwrap();
        out
    } else {
        r.body.clone()
    };
    assert_eq!(Payload::decode(&body[..]).unwrap().text, "g4");
}

#[tokio::test]
async fn g6_a_get_too_long_for_a_url_goes_as_post() {
    // 20 KiB of message: past what a GET URL should carry.
    let big = Payload {
        text: "long".into(),
        data: vec![7u8; 20 * 1024].into(),
        ..Default::default()
    };
    let seen = method_seen_by_a_fake_server(big).await;
    assert_eq!(seen, "POST");
    let seen = method_seen_by_a_fake_server(Payload::default()).await;
    assert_eq!(seen, "GET", "a small side-effect-free call still uses GET");
}

#[tokio::test]
async fn s10_bidi_is_half_duplex_over_http1() {
    let channel = Channel::builder(serve_interop().await)
        .http_version(HttpVersion::Http1)
        .build()
        .unwrap();
    let client = connect_plugin::dispense::<InteropServicePlugin>(&channel);
    let requests = MessageStream::from_iter(["a", "b"].map(|t| Payload {
        text: t.into(),
        ..Default::default()
    }));
    let mut replies = client.bidi(requests).await.unwrap().into_message();
    let mut texts = Vec::new();
    while let Some(reply) = replies.message().await.unwrap() {
        texts.push(reply.text);
    }
    assert_eq!(texts, ["a", "b"]);
}

#[tokio::test]
async fn e1_e2_e3_error_json_codes_and_details_on_the_wire() {
    let failing = Payload {
        text: "detail".into(),
        fail_code: "failed_precondition".into(),
        ..Default::default()
    };
    let r = post(UNARY, &[PROTO], &failing.encode_to_vec()).await;
    let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    // E1: code and message; E3: the snake_case name.
    assert_eq!(body["code"], "failed_precondition");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("failed_precondition")
    );
    // E2: the detail's type without a type URL prefix, its value unpadded standard base64.
    let detail = &body["details"][0];
    assert_eq!(detail["type"], "interop.v1.Payload");
    let value = detail["value"].as_str().unwrap();
    assert!(!value.ends_with('='), "unpadded: {value}");
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(value)
        .unwrap();
    assert_eq!(Payload::decode(&bytes[..]).unwrap().text, "detail");
    // E3: every code's wire name, both ways.
    for code in Code::ALL {
        let name = code.as_str();
        assert!(
            name.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
            "{name}"
        );
    }
    assert_eq!(Code::Canceled.as_str(), "canceled");
    assert_eq!(Code::ALL.len(), 16);
}

/// The value of `name` in the request our client sends (to a server that records it).
async fn header_seen_by_a_fake_server(name: &'static str) -> Option<String> {
    let (url, seen) = recording_server().await;
    let _ = client_for(url).await.unary(Payload::default()).await;
    let seen = seen.lock().unwrap().clone();
    seen.and_then(|(_, headers)| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    })
}

/// The HTTP method our client uses for `lookup` (side-effect free) with GET enabled.
async fn method_seen_by_a_fake_server(payload: Payload) -> String {
    let (url, seen) = recording_server().await;
    let channel = Channel::builder(url)
        .http_version(HttpVersion::Http1)
        .use_get(true)
        .build()
        .unwrap();
    let client = connect_plugin::dispense::<InteropServicePlugin>(&channel);
    let _ = client.lookup(payload).await;
    let seen = seen.lock().unwrap().clone();
    seen.map(|(method, _)| method).unwrap_or_default()
}

type Recorded = std::sync::Arc<std::sync::Mutex<Option<(String, http::HeaderMap)>>>;

/// An HTTP/1.1 server recording the first request's method and headers (and answering 404).
async fn recording_server() -> (String, Recorded) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Recorded::default();
    let record = std::sync::Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let record = std::sync::Arc::clone(&record);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: http::Request<_>| {
                    record
                        .lock()
                        .unwrap()
                        .get_or_insert_with(|| (req.method().to_string(), req.headers().clone()));
                    async {
                        Ok::<_, std::convert::Infallible>(reply(404, "text/plain", Vec::new()))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (format!("http://{addr}"), seen)
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

#[tokio::test]
async fn c6_a_304_is_a_not_modified_error_with_the_headers() {
    let err = unary_error(|| {
        http::Response::builder()
            .status(304)
            .header("etag", "\"v1\"")
            .body(Full::new(Bytes::new()))
            .unwrap()
    })
    .await;
    assert_eq!(err.code(), Code::Unknown, "{err}");
    assert!(err.message().contains("not modified"), "{err}");
    assert_eq!(err.metadata().get("etag").unwrap(), "\"v1\"");
}

#[tokio::test]
async fn c7_an_empty_body_is_not_decompressed_and_trailers_are_split_first() {
    let client = client_for(
        fake_server(|| {
            let mut r = reply(200, "application/proto", Vec::new());
            r.headers_mut()
                .insert("content-encoding", http::HeaderValue::from_static("gzip"));
            r.headers_mut()
                .insert("trailer-x-done", http::HeaderValue::from_static("yes"));
            r
        })
        .await,
    )
    .await;
    let response = client
        .unary(Payload::default())
        .await
        .expect("an empty gzip body is the empty message, not a decompression error");
    assert_eq!(response.message().text, "");
    assert_eq!(response.trailers().get("x-done").unwrap(), "yes");
}

/// The rule IDs of the Connect protocol summary this project follows (P1-P5, U1-U9, G1-G6,
/// S1-S10, E1-E3, C1-C7): each has a test in this file (or the golden tests) named after it.
#[test]
fn every_rule_has_a_test_named_after_it() {
    let sources = [include_str!("protocol_rules.rs"), include_str!("golden.rs")].concat();
    let ids = (1..=5)
        .map(|n| format!("p{n}"))
        .chain((1..=9).map(|n| format!("u{n}")))
        .chain((1..=6).map(|n| format!("g{n}")))
        .chain((1..=10).map(|n| format!("s{n}")))
        .chain((1..=3).map(|n| format!("e{n}")))
        .chain((1..=7).map(|n| format!("c{n}")));
    let named = |id: &str| {
        sources.lines().any(|line| {
            line.trim_start()
                .strip_prefix("async fn ")
                .or_else(|| line.trim_start().strip_prefix("fn "))
                .is_some_and(|name| {
                    name.split('(')
                        .next()
                        .unwrap_or("")
                        .split('_')
                        .any(|w| w == id)
                })
        })
    };
    let missing: Vec<String> = ids.filter(|id| !named(id)).collect();
    assert!(
        missing.is_empty(),
        "rules without a test named after them: {missing:?}"
    );
}

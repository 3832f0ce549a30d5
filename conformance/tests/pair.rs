//! The conformance server and client driven exactly as the official runner drives them
//! (size-delimited messages on stdin/stdout), against each other: every RPC shape, headers,
//! trailers, errors with details, GET, unimplemented, and refusal of unsupported protocols.

use std::collections::HashMap;
use std::io::Write as _;
use std::process::{Command, Stdio};

use connect_plugin_conformance::proto::client_compat_response::Result as Outcome;
use connect_plugin_conformance::proto::unary_response_definition::Response as UnaryOutcome;
use connect_plugin_conformance::proto::*;
use connect_plugin_conformance::{read_delimited, to_any, write_delimited};

fn header(name: &str, value: &str) -> Header {
    Header {
        name: name.into(),
        value: vec![value.into()],
    }
}

fn case(
    name: &str,
    method: &str,
    version: HttpVersion,
    messages: Vec<connect_plugin_conformance::any::Any>,
) -> ClientCompatRequest {
    ClientCompatRequest {
        test_name: name.into(),
        http_version: version as i32,
        protocol: Protocol::Connect as i32,
        codec: Codec::Proto as i32,
        service: Some("connectrpc.conformance.v1.ConformanceService".into()),
        method: Some(method.into()),
        request_headers: vec![header("x-conformance", "yes")],
        request_messages: messages,
        ..Default::default()
    }
}

#[test]
fn server_and_client_under_test_run_the_suite_protocol() {
    let mut server = Command::new(env!("CARGO_BIN_EXE_conformance-server"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let request = ServerCompatRequest {
        protocol: Protocol::Connect as i32,
        http_version: HttpVersion::HttpVersion2 as i32,
        message_receive_limit: 1024 * 1024,
        ..Default::default()
    };
    write_delimited(server.stdin.as_mut().unwrap(), &request).unwrap();
    drop(server.stdin.take());
    let listening: ServerCompatResponse = read_delimited(server.stdout.as_mut().unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(listening.host, "127.0.0.1");

    let unary_ok = UnaryRequest {
        response_definition: Some(UnaryResponseDefinition {
            response_headers: vec![header("x-h", "1")],
            response_trailers: vec![header("x-t", "2")],
            response: Some(UnaryOutcome::ResponseData(b"data".to_vec().into())),
            ..Default::default()
        }),
        request_data: b"in".to_vec().into(),
    };
    let unary_err = UnaryRequest {
        response_definition: Some(UnaryResponseDefinition {
            response: Some(UnaryOutcome::Error(Error {
                code: Code::ResourceExhausted as i32,
                message: Some("too much".into()),
                details: vec![],
            })),
            ..Default::default()
        }),
        request_data: Default::default(),
    };
    let stream_def = StreamResponseDefinition {
        response_headers: vec![header("x-h", "s")],
        response_data: vec![b"one".to_vec().into(), b"two".to_vec().into()],
        response_trailers: vec![header("x-t", "s")],
        ..Default::default()
    };
    let mut cases = vec![
        case(
            "unary",
            "Unary",
            HttpVersion::HttpVersion2,
            vec![to_any(&unary_ok)],
        ),
        case(
            "unary-h1",
            "Unary",
            HttpVersion::HttpVersion1,
            vec![to_any(&unary_ok)],
        ),
        case(
            "unary-error",
            "Unary",
            HttpVersion::HttpVersion2,
            vec![to_any(&unary_err)],
        ),
        case(
            "server-stream",
            "ServerStream",
            HttpVersion::HttpVersion2,
            vec![to_any(&ServerStreamRequest {
                response_definition: Some(stream_def.clone()),
                request_data: Default::default(),
            })],
        ),
        case(
            "client-stream",
            "ClientStream",
            HttpVersion::HttpVersion2,
            vec![
                to_any(&ClientStreamRequest {
                    response_definition: unary_ok.response_definition.clone(),
                    request_data: b"a".to_vec().into(),
                }),
                to_any(&ClientStreamRequest {
                    response_definition: None,
                    request_data: b"b".to_vec().into(),
                }),
            ],
        ),
        case(
            "bidi-full-duplex",
            "BidiStream",
            HttpVersion::HttpVersion2,
            vec![
                to_any(&BidiStreamRequest {
                    response_definition: Some(stream_def.clone()),
                    full_duplex: true,
                    request_data: b"x".to_vec().into(),
                }),
                to_any(&BidiStreamRequest {
                    response_definition: None,
                    full_duplex: true,
                    request_data: b"y".to_vec().into(),
                }),
            ],
        ),
        case(
            "idempotent-get",
            "IdempotentUnary",
            HttpVersion::HttpVersion1,
            vec![to_any(&IdempotentUnaryRequest {
                response_definition: unary_ok.response_definition.clone(),
                request_data: Default::default(),
            })],
        ),
        case(
            "unimplemented",
            "Unimplemented",
            HttpVersion::HttpVersion2,
            vec![to_any(&UnimplementedRequest {})],
        ),
    ];
    cases[6].use_get_http_method = true;
    let mut grpc = case(
        "grpc",
        "Unary",
        HttpVersion::HttpVersion2,
        vec![to_any(&unary_ok)],
    );
    grpc.protocol = Protocol::Grpc as i32;
    cases.push(grpc);
    for c in &mut cases {
        c.host = listening.host.clone();
        c.port = listening.port;
    }

    let mut client = Command::new(env!("CARGO_BIN_EXE_conformance-client"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    {
        let mut stdin = client.stdin.take().unwrap();
        for c in &cases {
            write_delimited(&mut stdin, c).unwrap();
        }
        stdin.flush().unwrap();
    }
    let mut stdout = client.stdout.take().unwrap();
    let mut results = HashMap::new();
    while let Some(response) = read_delimited::<ClientCompatResponse>(&mut stdout).unwrap() {
        results.insert(response.test_name.clone(), response.result.unwrap());
    }
    assert!(client.wait().unwrap().success());
    server.kill().unwrap();
    let _ = server.wait();
    assert_eq!(results.len(), cases.len(), "one response per case");

    let ok = |name: &str| match &results[name] {
        Outcome::Response(r) => r.clone(),
        Outcome::Error(e) => panic!("{name}: {}", e.message),
    };
    for name in ["unary", "unary-h1", "idempotent-get"] {
        let r = ok(name);
        assert!(r.error.is_none(), "{name}: {:?}", r.error);
        assert_eq!(r.payloads.len(), 1, "{name}");
        assert_eq!(r.payloads[0].data.as_ref(), b"data", "{name}");
        let info = r.payloads[0].request_info.as_ref().unwrap();
        assert!(
            info.request_headers
                .iter()
                .any(|h| h.name == "x-conformance"),
            "{name}: request headers echoed"
        );
        assert!(r.response_headers.iter().any(|h| h.name == "x-h"), "{name}");
        assert!(
            r.response_trailers.iter().any(|h| h.name == "x-t"),
            "{name}"
        );
    }
    let r = ok("unary-error");
    let error = r.error.unwrap();
    assert_eq!(error.code, Code::ResourceExhausted as i32);
    assert_eq!(error.message.as_deref(), Some("too much"));
    assert!(
        error
            .details
            .iter()
            .any(|d| d.type_url.ends_with("ConformancePayload.RequestInfo"))
    );

    let r = ok("server-stream");
    assert_eq!(
        r.payloads
            .iter()
            .map(|p| p.data.to_vec())
            .collect::<Vec<_>>(),
        [b"one".to_vec(), b"two".to_vec()]
    );
    assert!(r.payloads[0].request_info.is_some() && r.payloads[1].request_info.is_none());
    assert!(r.response_trailers.iter().any(|h| h.name == "x-t"));

    let r = ok("client-stream");
    assert_eq!(
        r.payloads[0].request_info.as_ref().unwrap().requests.len(),
        2
    );

    let r = ok("bidi-full-duplex");
    assert_eq!(r.payloads.len(), 2);
    assert!(r.error.is_none(), "{:?}", r.error);

    let r = ok("unimplemented");
    assert_eq!(r.error.unwrap().code, Code::Unimplemented as i32);

    match &results["grpc"] {
        Outcome::Error(e) => assert!(
            e.message.contains("only the Connect protocol"),
            "{}",
            e.message
        ),
        other => panic!("gRPC must be refused: {other:?}"),
    }
}

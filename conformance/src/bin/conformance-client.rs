//! Conformance client under test: reads `ClientCompatRequest`s from stdin until end of input,
//! runs each call with connect-plugin's client, and writes a `ClientCompatResponse` for each to
//! stdout (in completion order, never interleaved). Logs go to stderr.

use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use connect_plugin_conformance::proto::client_compat_request::cancel::CancelTiming;
use connect_plugin_conformance::proto::client_compat_response::Result as Outcome;
use connect_plugin_conformance::proto::{self as p, ConformanceServiceClient};
use connect_plugin_conformance::{
    error_to_proto, from_any, headers_from_proto, headers_to_proto, read_delimited, write_delimited,
};
use connect_plugin_rpc::tls::ClientTls;
use connect_plugin_rpc::{
    Channel, Codec, Compression, Error, HttpVersion, MessageStream, Request, Streaming,
};

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("conformance-client: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let stdout = Arc::new(Mutex::new(std::io::stdout()));
    let mut tasks = Vec::new();
    let mut stdin = std::io::stdin().lock();
    loop {
        let request: p::ClientCompatRequest = match read_delimited(&mut stdin) {
            Ok(Some(request)) => request,
            Ok(None) => break,
            Err(e) => {
                eprintln!("conformance-client: reading stdin: {e}");
                return ExitCode::FAILURE;
            }
        };
        let stdout = Arc::clone(&stdout);
        tasks.push(runtime.spawn(async move {
            let test_name = request.test_name.clone();
            let result = match run(request).await {
                Ok(result) => Outcome::Response(result),
                Err(message) => Outcome::Error(p::ClientErrorResult { message }),
            };
            let response = p::ClientCompatResponse {
                test_name,
                result: Some(result),
            };
            let mut out = stdout.lock().unwrap_or_else(|e| e.into_inner());
            if let Err(e) = write_delimited(&mut *out, &response) {
                eprintln!("conformance-client: writing stdout: {e}");
            }
        }));
    }
    // End of input: let the calls in flight finish.
    runtime.block_on(async {
        for task in tasks {
            let _ = task.await;
        }
    });
    ExitCode::SUCCESS
}

/// What a call produced, in the shape the runner compares.
#[derive(Default)]
struct Observed {
    headers: http::HeaderMap,
    trailers: http::HeaderMap,
    payloads: Vec<p::ConformancePayload>,
    error: Option<Error>,
    unsent: i32,
}

impl Observed {
    fn fail(&mut self, error: Error) {
        self.headers.extend(error.metadata().clone());
        self.error = Some(error);
    }

    fn into_result(self) -> p::ClientResponseResult {
        p::ClientResponseResult {
            response_headers: headers_to_proto(&self.headers),
            payloads: self.payloads,
            error: self.error.as_ref().map(error_to_proto),
            response_trailers: headers_to_proto(&self.trailers),
            num_unsent_requests: self.unsent,
            http_status_code: None,
            feedback: Vec::new(),
        }
    }
}

async fn run(request: p::ClientCompatRequest) -> Result<p::ClientResponseResult, String> {
    if !matches!(
        p::Protocol::try_from(request.protocol),
        Ok(p::Protocol::Connect | p::Protocol::Unspecified)
    ) {
        return Err("only the Connect protocol is supported".into());
    }
    if request.raw_request.is_some() {
        return Err("raw requests are not supported".into());
    }
    let version = match p::HttpVersion::try_from(request.http_version) {
        Ok(p::HttpVersion::HttpVersion1) => HttpVersion::Http1,
        Ok(p::HttpVersion::HttpVersion2 | p::HttpVersion::Unspecified) => HttpVersion::Http2,
        _ => return Err("HTTP/3 is not supported".into()),
    };
    let codec = match p::Codec::try_from(request.codec) {
        Ok(p::Codec::Json) => Codec::Json,
        _ => Codec::Proto,
    };
    let tls = !request.server_tls_cert.is_empty();
    let url = format!(
        "{}://{}:{}",
        if tls { "https" } else { "http" },
        request.host,
        request.port
    );
    let mut builder = Channel::builder(url)
        .http_version(version)
        .codec(codec)
        .use_get(request.use_get_http_method);
    match p::Compression::try_from(request.compression) {
        Ok(p::Compression::Gzip) => builder = builder.send_compression(Compression::Gzip),
        Ok(p::Compression::Identity | p::Compression::Unspecified) => {}
        _ => {
            return Err(format!(
                "compression {} is not supported",
                request.compression
            ));
        }
    }
    if request.message_receive_limit > 0 {
        builder = builder.max_message_size(request.message_receive_limit as usize);
    }
    if tls {
        builder = builder.tls(
            ClientTls::with_root_certificates_pem(&request.server_tls_cert)
                .map_err(|e| e.to_string())?,
        );
    }
    let client = ConformanceServiceClient::new(builder.build().map_err(|e| e.to_string())?);
    let headers = headers_from_proto(&request.request_headers);
    let timeout = request
        .timeout_ms
        .map(|ms| Duration::from_millis(u64::from(ms)));
    let delay = Duration::from_millis(u64::from(request.request_delay_ms));
    let cancel = request.cancel.and_then(|c| c.cancel_timing);
    let messages = request.request_messages;
    let mut observed = Observed::default();
    let method = request.method.as_deref().unwrap_or_default();
    match method {
        "Unary" | "IdempotentUnary" | "Unimplemented" => {
            let any = messages.first().ok_or("no request message")?;
            let outcome = match method {
                "Unary" => client
                    .unary(prepare_stream(
                        &headers,
                        timeout,
                        from_any::<p::UnaryRequest>(any).map_err(|e| e.to_string())?,
                    ))
                    .await
                    .map(|r| split(r, |m| m.payload)),
                "IdempotentUnary" => client
                    .idempotent_unary(prepare_stream(
                        &headers,
                        timeout,
                        from_any::<p::IdempotentUnaryRequest>(any).map_err(|e| e.to_string())?,
                    ))
                    .await
                    .map(|r| split(r, |m| m.payload)),
                _ => client
                    .unimplemented(prepare_stream(
                        &headers,
                        timeout,
                        from_any::<p::UnimplementedRequest>(any).map_err(|e| e.to_string())?,
                    ))
                    .await
                    .map(|r| split(r, |_| None)),
            };
            match outcome {
                Ok((headers, payload, trailers)) => {
                    observed.headers = headers;
                    observed.trailers = trailers;
                    observed.payloads.extend(payload);
                }
                Err(e) => observed.fail(e),
            }
        }
        "ServerStream" => {
            let any = messages.first().ok_or("no request message")?;
            let message = from_any::<p::ServerStreamRequest>(any).map_err(|e| e.to_string())?;
            match client
                .server_stream(prepare_stream(&headers, timeout, message))
                .await
            {
                Ok(response) => {
                    observed.headers = response.headers().clone();
                    read_stream(
                        response.into_message(),
                        &mut observed,
                        cancel_after(&cancel),
                        |m: p::ServerStreamResponse| m.payload,
                    )
                    .await;
                }
                Err(e) => observed.fail(e),
            }
        }
        "ClientStream" => {
            let decoded = messages
                .iter()
                .map(from_any::<p::ClientStreamRequest>)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())?;
            let (stream, unsent) = sender(
                decoded,
                delay,
                matches!(cancel, Some(CancelTiming::BeforeCloseSend(_))),
            );
            let outcome = client
                .client_stream(prepare_stream(&headers, timeout, stream))
                .await;
            observed.unsent = unsent.load(std::sync::atomic::Ordering::SeqCst) as i32;
            match outcome {
                Ok(response) => {
                    let (headers, payload, trailers) = split(response, |m| m.payload);
                    observed.headers = headers;
                    observed.trailers = trailers;
                    observed.payloads.extend(payload);
                }
                Err(e) => observed.fail(e),
            }
        }
        "BidiStream" => {
            let decoded = messages
                .iter()
                .map(from_any::<p::BidiStreamRequest>)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())?;
            let (stream, unsent) = sender(
                decoded,
                delay,
                matches!(cancel, Some(CancelTiming::BeforeCloseSend(_))),
            );
            match client
                .bidi_stream(prepare_stream(&headers, timeout, stream))
                .await
            {
                Ok(response) => {
                    observed.headers = response.headers().clone();
                    read_stream(
                        response.into_message(),
                        &mut observed,
                        cancel_after(&cancel),
                        |m: p::BidiStreamResponse| m.payload,
                    )
                    .await;
                }
                Err(e) => observed.fail(e),
            }
            observed.unsent = unsent.load(std::sync::atomic::Ordering::SeqCst) as i32;
        }
        other => return Err(format!("unknown method {other:?}")),
    }
    Ok(observed.into_result())
}

fn cancel_after(cancel: &Option<CancelTiming>) -> Option<usize> {
    match cancel {
        Some(CancelTiming::AfterNumResponses(n)) => Some(*n as usize),
        _ => None,
    }
}

fn split<T>(
    response: connect_plugin_rpc::Response<T>,
    payload: impl FnOnce(T) -> Option<p::ConformancePayload>,
) -> (
    http::HeaderMap,
    Option<p::ConformancePayload>,
    http::HeaderMap,
) {
    let headers = response.headers().clone();
    let trailers = response.trailers().clone();
    (headers, payload(response.into_message()), trailers)
}

/// A request carrying the test's headers and timeout.
fn prepare_stream<T>(
    headers: &http::HeaderMap,
    timeout: Option<Duration>,
    stream: T,
) -> Request<T> {
    let mut call = Request::new(stream);
    *call.metadata_mut() = headers.clone();
    if let Some(t) = timeout {
        call.set_timeout(t);
    }
    call
}

/// A request stream sending `messages` with `delay` before each; `cancel` aborts it before
/// anything is sent. Counts what was never sent.
fn sender<T: Send + 'static>(
    messages: Vec<T>,
    delay: Duration,
    cancel: bool,
) -> (MessageStream<T>, Arc<std::sync::atomic::AtomicUsize>) {
    let unsent = Arc::new(std::sync::atomic::AtomicUsize::new(messages.len()));
    let (tx, stream) = MessageStream::channel(1);
    let counter = Arc::clone(&unsent);
    tokio::spawn(async move {
        if cancel {
            return tx
                .fail(Error::new(
                    connect_plugin_rpc::Code::Canceled,
                    "canceled before close-send",
                ))
                .await;
        }
        for message in messages {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if tx.send(message).await.is_err() {
                return;
            }
            counter.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    (stream, unsent)
}

async fn read_stream<T: connect_plugin_rpc::Message>(
    mut stream: Streaming<T>,
    observed: &mut Observed,
    cancel_after: Option<usize>,
    payload: fn(T) -> Option<p::ConformancePayload>,
) {
    loop {
        if cancel_after == Some(observed.payloads.len()) {
            observed.error = Some(Error::new(
                connect_plugin_rpc::Code::Canceled,
                "canceled by the client",
            ));
            return;
        }
        match stream.message().await {
            Ok(Some(message)) => observed.payloads.extend(payload(message)),
            Ok(None) => break,
            Err(e) => {
                observed.trailers = e.metadata().clone();
                observed.error = Some(e);
                return;
            }
        }
    }
    observed.trailers = stream.trailers().cloned().unwrap_or_default();
}

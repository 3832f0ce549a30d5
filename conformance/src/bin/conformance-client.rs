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
    // The runner sends every case at once; running them all at once on a small machine makes
    // the timing cases (deadlines of a second or two) fail for want of CPU, not of correctness.
    let in_flight = Arc::new(tokio::sync::Semaphore::new(16));
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
        let in_flight = Arc::clone(&in_flight);
        tasks.push(runtime.spawn(async move {
            let _turn = in_flight.acquire_owned().await;
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
        // Every message compressed, however small (the suite checks what was sent).
        Ok(p::Compression::Gzip) => {
            builder = builder
                .send_compression(Compression::Gzip)
                .compress_min_bytes(0);
        }
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
        let tls = match &request.client_tls_creds {
            // Mutual TLS: present the runner's client certificate.
            Some(creds) => {
                ClientTls::mutual_from_pem(&request.server_tls_cert, &creds.cert, &creds.key)
            }
            None => ClientTls::with_root_certificates_pem(&request.server_tls_cert),
        };
        builder = builder.tls(tls.map_err(|e| e.to_string())?);
    }
    let client = ConformanceServiceClient::new(builder.build().map_err(|e| e.to_string())?);
    let headers = headers_from_proto(&request.request_headers);
    let timeout = request
        .timeout_ms
        .map(|ms| Duration::from_millis(u64::from(ms)));
    let delay = Duration::from_millis(u64::from(request.request_delay_ms));
    // A cancel without a timing cancels right after close-send.
    let cancel = request
        .cancel
        .map(|c| c.cancel_timing.unwrap_or(CancelTiming::AfterCloseSendMs(0)));
    let full_duplex = request.stream_type == p::StreamType::FullDuplexBidiStream as i32;
    let messages = request.request_messages;
    let mut observed = Observed::default();
    let method = request.method.as_deref().unwrap_or_default();
    // For unary and server-streaming calls, close-send is the call itself.
    let after_invoke = || async {
        match cancel {
            Some(CancelTiming::AfterCloseSendMs(ms)) => {
                tokio::time::sleep(Duration::from_millis(u64::from(ms))).await;
            }
            _ => std::future::pending().await,
        }
    };
    match method {
        "Unary" | "IdempotentUnary" | "Unimplemented" => {
            let any = messages.first().ok_or("no request message")?;
            let call = async {
                match method {
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
                            from_any::<p::IdempotentUnaryRequest>(any)
                                .map_err(|e| e.to_string())?,
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
                }
                .map_or_else(|e| Ok(Err(e)), |ok| Ok::<_, String>(Ok(ok)))
            };
            let outcome = tokio::select! {
                outcome = call => outcome?,
                () = after_invoke() => Err(canceled()),
            };
            match outcome {
                Ok((headers, payload, trailers)) => {
                    observed.headers = headers;
                    observed.trailers = trailers;
                    observed.payloads.push(payload.unwrap_or_default());
                }
                Err(e) => observed.fail(e),
            }
        }
        "ServerStream" => {
            let any = messages.first().ok_or("no request message")?;
            let message = from_any::<p::ServerStreamRequest>(any).map_err(|e| e.to_string())?;
            let call = async {
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
            };
            let canceled_first = tokio::select! {
                () = call => false,
                () = after_invoke() => true,
            };
            if canceled_first {
                observed.error = Some(canceled());
            }
        }
        "ClientStream" => {
            let decoded = messages
                .iter()
                .map(from_any::<p::ClientStreamRequest>)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())?;
            let (stream, unsent, closed) = sender(
                decoded,
                delay,
                matches!(cancel, Some(CancelTiming::BeforeCloseSend(_))),
            );
            let call = client.client_stream(prepare_stream(&headers, timeout, stream));
            let outcome = tokio::select! {
                outcome = call => outcome,
                () = after_close_send(&cancel, closed) => Err(canceled()),
            };
            observed.unsent = unsent.load(std::sync::atomic::Ordering::SeqCst) as i32;
            match outcome {
                Ok(response) => {
                    let (headers, payload, trailers) = split(response, |m| m.payload);
                    observed.headers = headers;
                    observed.trailers = trailers;
                    observed.payloads.push(payload.unwrap_or_default());
                }
                Err(e) => {
                    // The error's metadata is the headers and trailers together.
                    observed.trailers = e.metadata().clone();
                    observed.fail(e);
                }
            }
        }
        "BidiStream" => {
            let decoded = messages
                .iter()
                .map(from_any::<p::BidiStreamRequest>)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())?;
            if full_duplex {
                full_duplex_bidi(
                    &client,
                    &headers,
                    timeout,
                    delay,
                    decoded,
                    cancel,
                    &mut observed,
                )
                .await;
            } else {
                let (stream, unsent, closed) = sender(
                    decoded,
                    delay,
                    matches!(cancel, Some(CancelTiming::BeforeCloseSend(_))),
                );
                let call = async {
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
                };
                let canceled_first = tokio::select! {
                    () = call => false,
                    () = after_close_send(&cancel, closed) => true,
                };
                if canceled_first {
                    observed.error = Some(canceled());
                }
                observed.unsent = unsent.load(std::sync::atomic::Ordering::SeqCst) as i32;
            }
        }
        other => return Err(format!("unknown method {other:?}")),
    }
    Ok(observed.into_result())
}

/// The error a call the client canceled ends with.
fn canceled() -> Error {
    Error::new(connect_plugin_rpc::Code::Canceled, "canceled by the client")
}

/// Resolves when a stream's cancel time has come: `ms` after its request stream closed.
async fn after_close_send(
    cancel: &Option<CancelTiming>,
    closed: tokio::sync::oneshot::Receiver<()>,
) {
    match cancel {
        Some(CancelTiming::AfterCloseSendMs(ms)) => {
            if closed.await.is_err() {
                return std::future::pending().await;
            }
            tokio::time::sleep(Duration::from_millis(u64::from(*ms))).await;
        }
        _ => std::future::pending().await,
    }
}

/// A full-duplex bidi call: each request, then one response, in turn; then close-send (or
/// cancel instead), and the remaining responses.
async fn full_duplex_bidi(
    client: &ConformanceServiceClient,
    headers: &http::HeaderMap,
    timeout: Option<Duration>,
    delay: Duration,
    messages: Vec<p::BidiStreamRequest>,
    cancel: Option<CancelTiming>,
    observed: &mut Observed,
) {
    let total = messages.len();
    let (tx, stream) = MessageStream::channel(1);
    let payload = |m: p::BidiStreamResponse| m.payload.unwrap_or_default();
    let mut messages = messages.into_iter();
    // The first request goes out before the call opens (the server answers headers after it).
    let mut sent = 0;
    if let Some(first) = messages.next() {
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if tx.send(first).await.is_ok() {
            sent += 1;
        }
    }
    let response = match client
        .bidi_stream(prepare_stream(headers, timeout, stream))
        .await
    {
        Ok(response) => response,
        Err(e) => {
            observed.unsent = (total - sent) as i32;
            return observed.fail(e);
        }
    };
    observed.headers = response.headers().clone();
    let mut responses = response.into_message();
    let limit = cancel_after(&cancel);
    let mut read_one = async |observed: &mut Observed| -> bool {
        if limit == Some(observed.payloads.len()) {
            observed.error = Some(canceled());
            return false;
        }
        match responses.message().await {
            Ok(Some(m)) => {
                observed.payloads.push(payload(m));
                true
            }
            Ok(None) => false,
            Err(e) => {
                observed.trailers = e.metadata().clone();
                observed.error = Some(e);
                false
            }
        }
    };
    if sent == 1 && !read_one(observed).await {
        observed.unsent = (total - sent) as i32;
        return;
    }
    for message in messages.by_ref() {
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if tx.send(message).await.is_err() {
            break;
        }
        sent += 1;
        if !read_one(observed).await {
            observed.unsent = (total - sent) as i32;
            return;
        }
    }
    observed.unsent = (total - sent) as i32;
    match cancel {
        Some(CancelTiming::BeforeCloseSend(_)) => {
            observed.error = Some(canceled());
            return;
        }
        Some(CancelTiming::AfterCloseSendMs(ms)) => {
            drop(tx);
            let rest = async { while read_one(observed).await {} };
            let canceled_first = tokio::select! {
                () = rest => false,
                () = tokio::time::sleep(Duration::from_millis(u64::from(ms))) => true,
            };
            if canceled_first {
                observed.error = Some(canceled());
            }
            return;
        }
        _ => drop(tx),
    }
    while read_one(observed).await {}
    if observed.error.is_none() {
        observed.trailers = responses.trailers().cloned().unwrap_or_default();
    }
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

/// A request stream sending `messages` with `delay` before each, then closing (its receiver
/// told), or, with `cancel_instead`, failing with `canceled` instead of closing. Counts what
/// was never sent.
fn sender<T: Send + 'static>(
    messages: Vec<T>,
    delay: Duration,
    cancel_instead: bool,
) -> (
    MessageStream<T>,
    Arc<std::sync::atomic::AtomicUsize>,
    tokio::sync::oneshot::Receiver<()>,
) {
    let unsent = Arc::new(std::sync::atomic::AtomicUsize::new(messages.len()));
    let (tx, stream) = MessageStream::channel(1);
    let (closed_tx, closed) = tokio::sync::oneshot::channel();
    let counter = Arc::clone(&unsent);
    tokio::spawn(async move {
        for message in messages {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if tx.send(message).await.is_err() {
                return;
            }
            counter.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        }
        if cancel_instead {
            return tx.fail(canceled()).await;
        }
        drop(tx);
        let _ = closed_tx.send(());
    });
    (stream, unsent, closed)
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
            Ok(Some(message)) => observed.payloads.push(payload(message).unwrap_or_default()),
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

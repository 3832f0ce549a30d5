//! `connectrpc.conformance.v1.ConformanceService`, as the suite's `service.proto` describes it:
//! every call echoes what the server saw (headers, timeout, request messages) and answers as
//! the request's response definition says (headers, trailers, data, delays, errors).

use std::time::Duration;

use bytes::Bytes;
use connect_plugin_rpc::{
    Error, ErrorDetail, MessageStream, Request, Response, ServerStream, Streaming,
};
use http::HeaderMap;
use prost::Message as _;

use crate::proto::conformance_payload::RequestInfo;
use crate::proto::unary_response_definition::Response as UnaryOutcome;
use crate::proto::*;
use crate::{error_from_proto, headers_from_proto, headers_to_proto, to_any};

/// The conformance service implementation.
#[derive(Debug, Default, Clone, Copy)]
pub struct Conformance;

fn request_info(
    headers: &HeaderMap,
    timeout: Option<Duration>,
    requests: Vec<crate::any::Any>,
) -> RequestInfo {
    RequestInfo {
        request_headers: headers_to_proto(headers),
        timeout_ms: timeout.map(|t| t.as_millis() as i64),
        requests,
        connect_get_info: None,
    }
}

/// The call's error, carrying the request info as an extra detail, and the definition's
/// headers and trailers.
fn definition_error(error: &crate::proto::Error, info: &RequestInfo) -> Error {
    error_from_proto(error).with_detail(ErrorDetail::new(
        "connectrpc.conformance.v1.ConformancePayload.RequestInfo",
        Bytes::from(info.encode_to_vec()),
    ))
}

fn with_metadata<T>(
    mut response: Response<T>,
    headers: &[Header],
    trailers: &[Header],
) -> Response<T> {
    response.headers_mut().extend(headers_from_proto(headers));
    response.trailers_mut().extend(headers_from_proto(trailers));
    response
}

/// For unary errors the trailers travel as `trailer-` headers, so both go in the metadata.
fn error_with_metadata(mut error: Error, headers: &[Header], trailers: &[Header]) -> Error {
    error.metadata_mut().extend(headers_from_proto(headers));
    for (name, value) in headers_from_proto(trailers).iter() {
        if let Ok(name) = http::HeaderName::from_bytes(format!("trailer-{name}").as_bytes()) {
            error.metadata_mut().append(name, value.clone());
        }
    }
    error
}

async fn unary_outcome(
    definition: Option<UnaryResponseDefinition>,
    info: RequestInfo,
) -> Result<Response<ConformancePayload>, Error> {
    let Some(definition) = definition else {
        return Ok(Response::new(ConformancePayload {
            data: Bytes::new(),
            request_info: Some(info),
        }));
    };
    if definition.response_delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(u64::from(
            definition.response_delay_ms,
        )))
        .await;
    }
    match &definition.response {
        Some(UnaryOutcome::Error(error)) => Err(error_with_metadata(
            definition_error(error, &info),
            &definition.response_headers,
            &definition.response_trailers,
        )),
        outcome => {
            let data = match outcome {
                Some(UnaryOutcome::ResponseData(data)) => data.clone(),
                _ => Bytes::new(),
            };
            let payload = ConformancePayload {
                data,
                request_info: Some(info),
            };
            Ok(with_metadata(
                Response::new(payload),
                &definition.response_headers,
                &definition.response_trailers,
            ))
        }
    }
}

fn map<T, U>(response: Response<T>, f: impl FnOnce(T) -> U) -> Response<U> {
    let headers = response.headers().clone();
    let trailers = response.trailers().clone();
    let mut out = Response::new(f(response.into_message()));
    *out.headers_mut() = headers;
    *out.trailers_mut() = trailers;
    out
}

/// A stream that sends `data` (each after `delay`), the first with the request info, then
/// ends with `error` if there is one.
fn response_stream<T: Send + 'static>(
    definition: &StreamResponseDefinition,
    info: RequestInfo,
    wrap: fn(ConformancePayload) -> T,
) -> MessageStream<T> {
    let (tx, stream) = MessageStream::channel(1);
    let data = definition.response_data.clone();
    let delay = Duration::from_millis(u64::from(definition.response_delay_ms));
    // The request info rides in the error only when no message carried it.
    let error = definition.error.as_ref().map(|e| {
        if data.is_empty() {
            definition_error(e, &info)
        } else {
            error_from_proto(e)
        }
    });
    tokio::spawn(async move {
        let mut info = Some(info);
        for data in data {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let payload = ConformancePayload {
                data,
                request_info: info.take(),
            };
            if tx.send(wrap(payload)).await.is_err() {
                return;
            }
        }
        if let Some(error) = error {
            tx.fail(error).await;
        }
    });
    stream
}

impl ConformanceService for Conformance {
    async fn unary(
        &self,
        request: Request<UnaryRequest>,
    ) -> Result<Response<UnaryResponse>, Error> {
        let info = request_info(
            request.metadata(),
            request.timeout(),
            vec![to_any(request.message())],
        );
        let definition = request.into_message().response_definition;
        let response = unary_outcome(definition, info).await?;
        Ok(map(response, |payload| UnaryResponse {
            payload: Some(payload),
        }))
    }

    async fn idempotent_unary(
        &self,
        request: Request<IdempotentUnaryRequest>,
    ) -> Result<Response<IdempotentUnaryResponse>, Error> {
        let info = request_info(
            request.metadata(),
            request.timeout(),
            vec![to_any(request.message())],
        );
        let definition = request.into_message().response_definition;
        let response = unary_outcome(definition, info).await?;
        Ok(map(response, |payload| IdempotentUnaryResponse {
            payload: Some(payload),
        }))
    }

    async fn server_stream(
        &self,
        request: Request<ServerStreamRequest>,
    ) -> Result<Response<ServerStream<ServerStreamResponse>>, Error> {
        let info = request_info(
            request.metadata(),
            request.timeout(),
            vec![to_any(request.message())],
        );
        let definition = request
            .into_message()
            .response_definition
            .unwrap_or_default();
        let stream = response_stream(&definition, info, |payload| ServerStreamResponse {
            payload: Some(payload),
        });
        Ok(with_metadata(
            Response::new(stream),
            &definition.response_headers,
            &definition.response_trailers,
        ))
    }

    async fn client_stream(
        &self,
        request: Request<Streaming<ClientStreamRequest>>,
    ) -> Result<Response<ClientStreamResponse>, Error> {
        let headers = request.metadata().clone();
        let timeout = request.timeout();
        let mut requests = request.into_message();
        let mut received = Vec::new();
        let mut definition = None;
        while let Some(message) = requests.message().await? {
            if received.is_empty() {
                definition = message.response_definition.clone();
            }
            received.push(to_any(&message));
        }
        let info = request_info(&headers, timeout, received);
        let response = unary_outcome(definition, info).await?;
        Ok(map(response, |payload| ClientStreamResponse {
            payload: Some(payload),
        }))
    }

    async fn bidi_stream(
        &self,
        request: Request<Streaming<BidiStreamRequest>>,
    ) -> Result<Response<ServerStream<BidiStreamResponse>>, Error> {
        let headers = request.metadata().clone();
        let timeout = request.timeout();
        let mut requests = request.into_message();
        // The first request says what to answer; headers go out before any response.
        let Some(first) = requests.message().await? else {
            return Ok(Response::new(MessageStream::empty()));
        };
        let definition = first.response_definition.clone().unwrap_or_default();
        let full_duplex = first.full_duplex;
        let wrap = |payload| BidiStreamResponse {
            payload: Some(payload),
        };
        let stream = if full_duplex {
            // Read one, answer one, alternating.
            let (tx, stream) = MessageStream::channel(1);
            let data = definition.response_data.clone();
            let delay = Duration::from_millis(u64::from(definition.response_delay_ms));
            let error = definition.error.clone();
            tokio::spawn(async move {
                let mut next = Some(first);
                let mut sent_any = false;
                let mut data = data.into_iter();
                while let Some(request) = next.take() {
                    let info = request_info(&headers, timeout, vec![to_any(&request)]);
                    match data.next() {
                        Some(bytes) => {
                            if !delay.is_zero() {
                                tokio::time::sleep(delay).await;
                            }
                            let payload = ConformancePayload {
                                data: bytes,
                                request_info: Some(info),
                            };
                            if tx.send(wrap(payload)).await.is_err() {
                                return;
                            }
                            sent_any = true;
                        }
                        None => {
                            if let Some(error) = &error {
                                // The request info rides in the error only when no message
                                // carried it.
                                let error = if sent_any {
                                    error_from_proto(error)
                                } else {
                                    definition_error(error, &info)
                                };
                                return tx.fail(error).await;
                            }
                        }
                    }
                    match requests.message().await {
                        Ok(Some(request)) => next = Some(request),
                        Ok(None) => break,
                        Err(e) => return tx.fail(e).await,
                    }
                }
                for bytes in data {
                    let payload = ConformancePayload {
                        data: bytes,
                        request_info: None,
                    };
                    if tx.send(wrap(payload)).await.is_err() {
                        return;
                    }
                    sent_any = true;
                }
                if let Some(error) = error {
                    let error = if sent_any {
                        error_from_proto(&error)
                    } else {
                        definition_error(&error, &request_info(&headers, timeout, Vec::new()))
                    };
                    tx.fail(error).await;
                }
            });
            stream
        } else {
            // Half duplex: read every request, then answer.
            let mut received = vec![to_any(&first)];
            while let Some(request) = requests.message().await? {
                received.push(to_any(&request));
            }
            let info = request_info(&headers, timeout, received);
            response_stream(&definition, info, wrap)
        };
        Ok(with_metadata(
            Response::new(stream),
            &definition.response_headers,
            &definition.response_trailers,
        ))
    }
    // `unimplemented` keeps the generated default: it answers `unimplemented`.
}

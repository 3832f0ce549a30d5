//! Plugin-to-plugin calls through the host (connect-plugin-go's `ServiceRouter`): a call to
//! `/services/{type}/{provider-id}/{pkg.Service}/{Method}` on the host is checked (the caller's
//! runtime token, the provider's registration and health) and proxied to the provider at the
//! `base_url` it registered with. The proxy streams both ways, so unary and every streaming
//! kind pass through (bidi full duplex over HTTP/2).
//!
//! The caller's `Authorization` and `X-Plugin-Runtime-ID` are not forwarded; the provider
//! receives the checked caller id in `X-Plugin-Caller-ID` instead (any such header the caller
//! sent is dropped first, so it cannot be forged).
//!
//! The gateway keeps no record of providers and decodes no messages: the caller's token, the
//! provider's registration and health, the alias after a replacement and the count of calls in
//! flight are all [`crate::host::registry`]'s; this module only forwards the bytes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http::HeaderValue;
use http_body_util::BodyExt;

use hyper_util::client::legacy::connect::HttpConnector;

use super::registry::{InflightGuard, RouteTarget, ServiceRegistry};
use crate::identity::RUNTIME_ID_HEADER;
use crate::rpc::__private::{Body, H2Connection, RawHandler, RecvBody, error_response};
use crate::serve::host_only::LAUNCH_SECRET_HEADER;
use crate::{Code, Error};

/// Where routed calls are served.
pub const SERVICES_PREFIX: &str = "/services/";

/// The header that tells a provider which plugin called it through the host.
pub const CALLER_ID_HEADER: &str = "x-plugin-caller-id";

pub use crate::client::REROUTE_HEADER;

/// How many provider upstreams of one HTTP version are kept before channels are forgotten.
const MAX_UPSTREAMS: usize = 1024;

/// How long the host waits to connect to a provider.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How the host reaches one provider: its own HTTP/2 connection for h2c providers (the
/// common case, and the fastest), or a channel's transport for providers over TLS or
/// HTTP/1.1.
#[derive(Clone)]
enum Upstream {
    H2c(Arc<H2Connection<HttpConnector>>),
    Channel(crate::Channel),
}

impl Upstream {
    fn is_open(&self) -> bool {
        match self {
            Upstream::H2c(connection) => connection.is_open(),
            // A channel reconnects by itself.
            Upstream::Channel(_) => true,
        }
    }

    async fn send(&self, request: http::Request<Body>) -> Result<http::Response<RecvBody>, String> {
        match self {
            Upstream::H2c(connection) => connection.send(request).await.map_err(|e| e.to_string()),
            Upstream::Channel(channel) => crate::rpc::__private::send_raw(channel, request)
                .await
                .map_err(|e| e.message().to_owned()),
        }
    }
}

/// One upstream per provider base URL, shared by every call routed to it: HTTP/2 ones in the
/// first map, HTTP/1.1 ones in the second (looked up by `&str`, no key to build per call).
#[derive(Default)]
struct Upstreams {
    connections: Mutex<[HashMap<String, Upstream>; 2]>,
}

impl Upstreams {
    fn get(&self, registry: &ServiceRegistry, target: &RouteTarget) -> Result<Upstream, Error> {
        let mut maps = self
            .connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let connections = &mut maps[usize::from(target.http1)];
        if let Some(upstream) = connections.get(target.base_url.as_str()) {
            return Ok(upstream.clone());
        }
        let (base, provider_id) = (&target.base_url, &target.provider_id);
        let bad = |e: &dyn std::fmt::Display| {
            Error::internal(format!(
                "provider {provider_id:?} has a bad base_url {base:?}: {e}"
            ))
        };
        let uri: http::Uri = base.parse().map_err(|e| bad(&e))?;
        let upstream = if uri.scheme_str() == Some("http") && !target.http1 {
            let mut connector = HttpConnector::new();
            connector.set_nodelay(true);
            Upstream::H2c(Arc::new(H2Connection::new(connector, uri, CONNECT_TIMEOUT)))
        } else {
            let mut builder = crate::Channel::builder(base.as_str())
                .connect_timeout(CONNECT_TIMEOUT)
                .http_version(if target.http1 {
                    crate::rpc::HttpVersion::Http1
                } else {
                    crate::rpc::HttpVersion::Http2
                });
            if uri.scheme_str() == Some("https") {
                let tls = registry.provider_tls().ok_or_else(|| {
                    Error::unavailable(format!(
                        "provider {provider_id:?} is at {base}, and the host has no TLS settings for providers: set them with ServiceRegistry::set_provider_tls (HostBuilder::provider_tls)"
                    ))
                })?;
                builder = builder.tls(tls);
            }
            Upstream::Channel(builder.build().map_err(|e| bad(&e.message()))?)
        };
        // Providers come and go (restarts, replacements on new ports): forget the ones whose
        // connection has closed, so the map does not grow with every provider ever seen, and
        // past a bound the channels too (they are made again on their next call).
        connections.retain(|_, c| c.is_open());
        if connections.len() >= MAX_UPSTREAMS {
            connections.retain(|_, c| matches!(c, Upstream::H2c(_)));
        }
        connections.insert(target.base_url.clone(), upstream.clone());
        Ok(upstream)
    }
}

/// The `/services/` proxy of a host.
pub(crate) fn proxy(registry: ServiceRegistry) -> RawHandler {
    let upstreams = Arc::new(Upstreams::default());
    Arc::new(move |request: http::Request<RecvBody>| {
        let registry = registry.clone();
        let upstreams = Arc::clone(&upstreams);
        Box::pin(async move {
            match route(&registry, &upstreams, request).await {
                Ok(response) => response,
                Err(error) => error_response(&error),
            }
        })
    })
}

async fn route(
    registry: &ServiceRegistry,
    upstreams: &Upstreams,
    request: http::Request<RecvBody>,
) -> Result<http::Response<Body>, Error> {
    let caller = registry.authenticate_caller(request.headers())?;
    registry.take_routed(&caller)?;
    let path = request.uri().path().to_owned();
    let rest = path.strip_prefix(SERVICES_PREFIX).unwrap_or_default();
    let mut parts = rest.splitn(3, '/');
    let (Some(service_type), Some(provider_id), Some(procedure)) =
        (parts.next(), parts.next(), parts.next())
    else {
        let path = &path;
        return Err(Error::not_found(format!(
            "{path} is not a routed call: expected /services/<type>/<provider id>/<package.Service>/<Method>"
        )));
    };
    // Interceptors and the provider must read the same procedure: no percent-encoding (a
    // provider may decode it, an interceptor's rule would not).
    if procedure.contains('%') {
        return Err(Error::invalid_argument(format!(
            "{path} is not a routed call: procedure names are not percent-encoded"
        )));
    }
    // A replaced provider's calls go to its replacement; only registered procedures route.
    let target = match registry.route_target(service_type, provider_id, procedure) {
        Ok(target) => target,
        Err(gone) if gone.code() == Code::Unavailable => {
            // The provider addressed is gone or unhealthy; a caller that accepts another of the
            // type gets the one discovery would pick now.
            let Some(min_version) = request
                .headers()
                .get(REROUTE_HEADER)
                .and_then(|v| v.to_str().ok())
            else {
                return Err(gone);
            };
            let other = registry
                .discover(service_type, min_version)
                .ok()
                .and_then(|found| found.endpoint)
                .map(|endpoint| endpoint.provider_id)
                .filter(|other| other != provider_id)
                .ok_or(gone)?;
            registry.route_target(service_type, &other, procedure)?
        }
        Err(error) => return Err(error),
    };
    let (provider_id, base) = (target.provider_id.as_str(), target.base_url.as_str());
    let deadline = call_deadline(request.headers())?;
    let query = request
        .uri()
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    let uri: http::Uri = format!("{}/{procedure}{query}", base.trim_end_matches('/'))
        .parse()
        .map_err(|e| {
            Error::internal(format!(
                "provider {provider_id:?} has a bad base_url {base:?}: {e}"
            ))
        })?;

    let (mut parts, body) = request.into_parts();
    parts.uri = uri;
    // The provider's HTTP version, whatever the caller spoke.
    parts.version = if target.http1 {
        http::Version::HTTP_11
    } else {
        http::Version::HTTP_2
    };
    parts.headers.remove(http::header::AUTHORIZATION);
    parts.headers.remove(RUNTIME_ID_HEADER);
    parts.headers.remove(CALLER_ID_HEADER);
    parts.headers.remove(LAUNCH_SECRET_HEADER);
    parts.headers.remove(REROUTE_HEADER);
    parts.headers.remove(http::header::HOST);
    strip_hop_by_hop(&mut parts.headers);
    if let Ok(caller) = HeaderValue::from_str(&caller) {
        parts.headers.insert(CALLER_ID_HEADER, caller);
    }
    // A provider this host launched answers only calls that carry its launch secret.
    if let Some(secret) = &target.secret {
        parts.headers.insert(LAUNCH_SECRET_HEADER, secret.clone());
    }
    let body = Body::Stream(Box::pin(body.map_err(|e| {
        Error::new(
            Code::Canceled,
            format!("the caller's request body broke off: {e}"),
        )
    })));
    // Counted until the response body is done, so a drain waits for streams too.
    let guard = registry.track(provider_id);
    let upstream = upstreams.get(registry, &target)?;
    let send = upstream.send(http::Request::from_parts(parts, body));
    let sent = match deadline {
        Some(deadline) => tokio::time::timeout_at(deadline, send)
            .await
            .map_err(|_| past_deadline(provider_id, service_type))?,
        None => send.await,
    };
    let response = sent.map_err(|e| {
        Error::unavailable(format!(
            "provider {provider_id:?} of {service_type:?} is unreachable: {e}"
        ))
    })?;
    let (parts, body) = response.into_parts();
    let body = Tracked {
        body: body.map_err(|e| {
            Error::new(
                Code::Unavailable,
                format!("the provider's response broke off: {e}"),
            )
        }),
        deadline: deadline.map(|d| Box::pin(tokio::time::sleep_until(d))),
        _guard: guard,
    };
    Ok(http::Response::from_parts(
        parts,
        Body::Stream(Box::pin(body)),
    ))
}

/// Removes what concerns only the caller's hop: `Connection` and the headers it names,
/// `Keep-Alive`, `Proxy-Connection`, `Transfer-Encoding`, `Upgrade`, a `TE` other than
/// `trailers`, and client-certificate forwarding headers (a caller must not be able to make a
/// proxy before the provider drop the caller id, nor claim a certificate).
fn strip_hop_by_hop(headers: &mut http::HeaderMap) {
    let named: Vec<http::HeaderName> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| http::HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
        "x-forwarded-client-cert",
    ] {
        headers.remove(name);
    }
    if headers
        .get(http::header::TE)
        .is_some_and(|te| te.as_bytes() != b"trailers")
    {
        headers.remove(http::header::TE);
    }
}

/// The caller's deadline, from its `Connect-Timeout-Ms`: the provider gets the same header,
/// and the host itself stops waiting for the provider once it has passed.
fn call_deadline(headers: &http::HeaderMap) -> Result<Option<tokio::time::Instant>, Error> {
    let Some(value) = headers.get("connect-timeout-ms") else {
        return Ok(None);
    };
    let millis = value
        .to_str()
        .ok()
        .filter(|v| !v.is_empty() && v.len() <= 10 && v.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(|| {
            Error::invalid_argument(
                "Connect-Timeout-Ms must be a positive integer of at most 10 digits",
            )
        })?;
    Ok(Some(
        tokio::time::Instant::now() + Duration::from_millis(millis),
    ))
}

fn past_deadline(provider_id: &str, service_type: &str) -> Error {
    Error::new(
        Code::DeadlineExceeded,
        format!(
            "provider {provider_id:?} of {service_type:?} did not answer before the caller's deadline"
        ),
    )
}

/// A response body that keeps its call counted in flight until it is done or dropped, and
/// fails once the caller's deadline has passed (a provider that stalls mid-stream).
struct Tracked<B> {
    body: B,
    deadline: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    _guard: InflightGuard,
}

impl<B> http_body::Body for Tracked<B>
where
    B: http_body::Body<Data = bytes::Bytes, Error = Error> + Unpin,
{
    type Data = bytes::Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Error>>> {
        if let std::task::Poll::Ready(frame) = std::pin::Pin::new(&mut self.body).poll_frame(cx) {
            return std::task::Poll::Ready(frame);
        }
        let passed = self
            .deadline
            .as_mut()
            .is_some_and(|deadline| deadline.as_mut().poll(cx).is_ready());
        if passed {
            self.deadline = None;
            return std::task::Poll::Ready(Some(Err(Error::new(
                Code::DeadlineExceeded,
                "the provider did not finish the response before the caller's deadline",
            ))));
        }
        std::task::Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

//! One multiplexed HTTP/2 connection per channel, opened on first use and opened again when
//! it closes (the server restarted or went away, a GOAWAY).
//!
//! HTTP/2 needs no pool: every call of a channel is a stream on one connection. Calls drive
//! their stream themselves through the `h2` crate (hyper's own HTTP/2 implementation), so a
//! call costs no hand-off to a connection task and no extra spawned task: measured against
//! a raw hyper h2c echo, hyper's client takes about 1.3 x the latency and 0.6 x the
//! throughput of `h2` used directly. Only a request body that streams (client and bidi
//! streaming) gets a task of its own, to feed the stream while the call reads the response.
//!
//! It moves plain HTTP requests and responses and knows nothing of Connect: content types,
//! envelopes, call timeouts and error codes are [`crate::channel`]'s and [`crate::protocol`]'s.
//! `connect-plugin`'s routing proxy uses this connection type too, through
//! `connect_plugin_rpc::__private`, so nothing Connect-specific belongs here.

use std::error::Error as StdError;
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::CONTENT_LENGTH;
use http::{HeaderMap, Uri};
use http_body::Body as _;
use hyper_util::rt::TokioIo;

use crate::body::{Body, FeedGuard, H2_MAX_FRAME_SIZE, H2Body, RecvBody};

/// Flow-control windows of a client (as hyper's client): 2 MiB per stream, 5 MiB in all.
const STREAM_WINDOW: u32 = 2 << 20;
const CONNECTION_WINDOW: u32 = 5 << 20;

/// The largest response head accepted (as hyper's default): 16 KiB.
const MAX_HEADER_LIST_SIZE: u32 = 16 << 10;

/// The error of a connection attempt or a stream: any error, boxed.
pub type BoxError = Box<dyn StdError + Send + Sync>;

/// How a connection finds out that its server vanished without closing it (a network
/// partition, a frozen host): a PING every `interval`, and the connection is given up when
/// no answer comes within `timeout`. Its calls then fail with `unavailable`, and the next
/// call connects again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct KeepAlive {
    pub(crate) interval: Duration,
    pub(crate) timeout: Duration,
}

impl Default for KeepAlive {
    /// As the server's: every 30 s, 20 s to answer.
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(30),
            timeout: Duration::from_secs(20),
        }
    }
}

/// Runs a connection until it ends, pinging the server as `keep_alive` says.
async fn drive<T>(
    mut connection: h2::client::Connection<T, Bytes>,
    keep_alive: KeepAlive,
) -> Result<(), BoxError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use std::future::Future as _;

    let Some(mut pings) = connection.ping_pong() else {
        return Ok(connection.await?);
    };
    let timer = tokio::time::sleep(keep_alive.interval);
    tokio::pin!(timer);
    let mut awaiting_pong = false;
    poll_fn(|cx| {
        if let Poll::Ready(result) = std::pin::Pin::new(&mut connection).poll(cx) {
            return Poll::Ready(result.map_err(BoxError::from));
        }
        if awaiting_pong {
            match pings.poll_pong(cx) {
                Poll::Ready(Ok(_)) => {
                    awaiting_pong = false;
                    timer
                        .as_mut()
                        .reset(tokio::time::Instant::now() + keep_alive.interval);
                }
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error.into())),
                Poll::Pending => {}
            }
        }
        while timer.as_mut().poll(cx).is_ready() {
            if awaiting_pong {
                return Poll::Ready(Err(format!(
                    "the server did not answer a ping within {} ms; giving the connection up",
                    keep_alive.timeout.as_millis()
                )
                .into()));
            }
            pings.send_ping(h2::Ping::opaque())?;
            awaiting_pong = true;
            timer
                .as_mut()
                .reset(tokio::time::Instant::now() + keep_alive.timeout);
            // The connection writes the ping when polled next.
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    })
    .await
}

/// An open connection: the handle to start streams on, and whether it has ended.
#[derive(Clone)]
struct Open {
    sender: h2::client::SendRequest<Bytes>,
    closed: Arc<AtomicBool>,
}

/// A lazily opened HTTP/2 connection to one server, shared by every clone of a channel.
pub struct H2Connection<C> {
    connector: C,
    /// Where to connect (scheme and authority; the connector ignores the path).
    target: Uri,
    /// How long connecting (TCP, TLS and the HTTP/2 preface) may take.
    connect_timeout: Duration,
    keep_alive: KeepAlive,
    /// The open connection, if any. Held only to clone the handle.
    open: Mutex<Option<Open>>,
    /// Serializes (re)connecting, so a burst of calls opens one connection, not one each;
    /// holds the last failed attempt (when it ended, and why), which the calls that waited
    /// for it share instead of each trying again in turn.
    connecting: tokio::sync::Mutex<Option<(Instant, String)>>,
}

impl<C> H2Connection<C>
where
    C: tower_service::Service<Uri> + Clone + Send + Sync + 'static,
    C::Response: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    C::Future: Send,
    C::Error: Into<BoxError>,
{
    /// A connection to `target` through `connector`, opened on the first call.
    pub fn new(connector: C, target: Uri, connect_timeout: Duration) -> Self {
        Self {
            connector,
            target,
            connect_timeout,
            keep_alive: KeepAlive::default(),
            open: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(None),
        }
    }

    /// Pings the server with these settings instead of the defaults.
    pub(crate) fn with_keep_alive(mut self, keep_alive: KeepAlive) -> Self {
        self.keep_alive = keep_alive;
        self
    }

    /// Sends `request` as a new stream and waits for the response head. If the connection
    /// turns out dead before the stream starts, the stream is started on a new connection;
    /// nothing that reached the server is repeated.
    pub async fn send(
        &self,
        request: http::Request<Body>,
    ) -> Result<http::Response<RecvBody>, BoxError> {
        let (mut parts, body) = request.into_parts();
        strip_connection_headers(&mut parts.headers);
        parts.version = http::Version::HTTP_2;
        let end_of_stream = body.is_end_stream();
        let mut sender = self.ready().await?;
        // An error here is this request's (malformed headers) or a connection that just went
        // away, which the next call's `ready` notices; the connection stays as it is.
        let (response, stream) =
            sender.send_request(http::Request::from_parts(parts, ()), end_of_stream)?;
        let guard = if end_of_stream {
            None
        } else {
            send_body(body, stream).await
        };
        let response = response.await?;
        let (parts, recv) = response.into_parts();
        let length = parts
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse().ok());
        Ok(http::Response::from_parts(
            parts,
            RecvBody::H2(H2Body::new(recv, length, guard)),
        ))
    }

    /// A handle ready to start a stream (within the server's limit of concurrent streams).
    async fn ready(&self) -> Result<h2::client::SendRequest<Bytes>, BoxError> {
        // A connection that died under us (closed, GOAWAY) is marked, and one new one tried.
        let mut attempts = 2;
        loop {
            let open = self.open().await?;
            match open.sender.clone().ready().await {
                Ok(sender) => return Ok(sender),
                Err(error) => {
                    open.closed.store(true, Ordering::Release);
                    attempts -= 1;
                    if attempts == 0 {
                        return Err(error.into());
                    }
                }
            }
        }
    }

    /// The open connection, connecting first if there is none or it has closed.
    async fn open(&self) -> Result<Open, BoxError> {
        if let Some(open) = self.current() {
            return Ok(open);
        }
        let waiting_since = Instant::now();
        let mut last_failure = self.connecting.lock().await;
        // Another call may have connected, or failed to, while this one waited.
        if let Some(open) = self.current() {
            return Ok(open);
        }
        if let Some((at, why)) = last_failure.as_ref()
            && *at >= waiting_since
        {
            return Err(why.clone().into());
        }
        let connect = async {
            let io = tower_service::Service::call(&mut self.connector.clone(), self.target.clone())
                .await
                .map_err(Into::into)?;
            let (sender, connection) = h2::client::Builder::new()
                // Until the server's SETTINGS arrive, assume a modest stream limit (as hyper
                // does) rather than none, so a burst on a new connection is not refused.
                .initial_max_send_streams(100)
                .enable_push(false)
                .max_header_list_size(MAX_HEADER_LIST_SIZE)
                .max_frame_size(H2_MAX_FRAME_SIZE)
                .initial_window_size(STREAM_WINDOW)
                .initial_connection_window_size(CONNECTION_WINDOW)
                .handshake::<_, Bytes>(TokioIo::new(io))
                .await?;
            Ok::<_, BoxError>((sender, connection))
        };
        let connected = tokio::time::timeout(self.connect_timeout, connect)
            .await
            .map_err(|_| -> BoxError {
                format!(
                    "connecting took longer than the connect timeout of {} ms",
                    self.connect_timeout.as_millis()
                )
                .into()
            })
            .and_then(|connected| connected);
        let (sender, connection) = match connected {
            Ok(connected) => {
                *last_failure = None;
                connected
            }
            Err(error) => {
                *last_failure = Some((Instant::now(), error_chain(&*error)));
                return Err(error);
            }
        };
        let closed = Arc::new(AtomicBool::new(false));
        let target = self.target.clone();
        let flag = Arc::clone(&closed);
        // The connection runs until the server closes it, it breaks, or every handle to it
        // (this channel's and its calls') is gone.
        let keep_alive = self.keep_alive;
        tokio::spawn(async move {
            if let Err(error) = drive(connection, keep_alive).await {
                tracing::debug!(%target, %error, "HTTP/2 connection closed with an error");
            }
            flag.store(true, Ordering::Release);
        });
        let open = Open { sender, closed };
        *self.open.lock().unwrap_or_else(PoisonError::into_inner) = Some(open.clone());
        Ok(open)
    }

    /// Whether a connection is open (not before the first call, nor after it closed).
    pub fn is_open(&self) -> bool {
        self.current().is_some()
    }

    fn current(&self) -> Option<Open> {
        let open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.as_ref()
            .filter(|o| !o.closed.load(Ordering::Acquire))
            .cloned()
    }
}

/// An error and its causes, as one line.
pub(crate) fn error_chain(error: &dyn StdError) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Headers that HTTP/2 forbids (RFC 9113 §8.2.2), which a request relayed from HTTP/1.1 may
/// carry; `host` travels as `:authority`. One pass over the names finds them; removing
/// (a hash lookup each) happens only when there is something to remove.
fn strip_connection_headers(headers: &mut HeaderMap) {
    const FORBIDDEN: [&str; 6] = [
        "connection",
        "transfer-encoding",
        "upgrade",
        "host",
        "keep-alive",
        "proxy-connection",
    ];
    let te_other_than_trailers = headers
        .get(http::header::TE)
        .is_some_and(|te| te != "trailers");
    if !te_other_than_trailers
        && !headers
            .keys()
            .any(|name| FORBIDDEN.contains(&name.as_str()))
    {
        return;
    }
    // Headers that `Connection` names are hop-by-hop too (RFC 9110 §7.6.1).
    let named: Vec<String> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .filter(|name| !name.is_empty())
        .collect();
    for name in named {
        headers.remove(name.as_str());
    }
    for name in FORBIDDEN {
        headers.remove(name);
    }
    if te_other_than_trailers {
        headers.remove(http::header::TE);
    }
}

/// Sends what of `body` is ready now on the caller's task; a body that streams on is fed by
/// a task of its own, which sends each chunk as flow-control capacity opens, for as long as
/// the returned guard lives.
async fn send_body(mut body: Body, mut stream: h2::SendStream<Bytes>) -> Option<FeedGuard> {
    // Most bodies (unary messages, a server-streaming request) are complete already. A body
    // with more ready than this goes on in the task, which respects flow control.
    const EAGER_BYTES: usize = 64 * 1024;
    let mut sent = 0;
    while sent < EAGER_BYTES {
        let frame = poll_fn(|cx| Poll::Ready(std::pin::Pin::new(&mut body).poll_frame(cx))).await;
        match frame {
            Poll::Pending => break,
            Poll::Ready(frame) => {
                sent += frame
                    .as_ref()
                    .and_then(|f| f.as_ref().ok())
                    .and_then(http_body::Frame::data_ref)
                    .map_or(0, Bytes::len);
                if !send_frame(frame, &body, &mut stream) {
                    return None;
                }
            }
        }
    }
    let (cancel, mut cancelled) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        // Stops at a reset by the server or when the call is abandoned (its guard dropped).
        let mut stopped = |stream: &mut h2::SendStream<Bytes>, cx: &mut std::task::Context<'_>| {
            if std::pin::Pin::new(&mut cancelled).poll(cx).is_ready() {
                stream.send_reset(h2::Reason::CANCEL);
                return true;
            }
            stream.poll_reset(cx).is_ready()
        };
        loop {
            let frame = poll_fn(|cx| {
                if stopped(&mut stream, cx) {
                    return Poll::Ready(None);
                }
                std::pin::Pin::new(&mut body).poll_frame(cx).map(Some)
            })
            .await;
            let Some(frame) = frame else { return };
            // Data waits for room in the window before it is handed to h2 (which would buffer
            // it without limit otherwise). As hyper does: room is claimed only once there is
            // data (a claim pins connection window), and only a byte of it (h2 raises the
            // claim to the buffered length when the data is sent).
            let chunk = match &frame {
                Some(Ok(frame)) => frame.data_ref().map(Bytes::len),
                _ => None,
            };
            if chunk.is_some_and(|len| len > 0) {
                stream.reserve_capacity(1);
                let room = poll_fn(|cx| {
                    while stream.capacity() == 0 {
                        if stopped(&mut stream, cx) {
                            return Poll::Ready(false);
                        }
                        match std::task::ready!(stream.poll_capacity(cx)) {
                            Some(Ok(_)) => {}
                            Some(Err(_)) | None => return Poll::Ready(false),
                        }
                    }
                    Poll::Ready(true)
                })
                .await;
                if !room {
                    return;
                }
            }
            if !send_frame(frame, &body, &mut stream) {
                return;
            }
        }
    });
    Some(FeedGuard::new(cancel))
}

/// Sends one frame of a request body; false once the stream is finished (or failed).
fn send_frame(
    frame: Option<Result<http_body::Frame<Bytes>, crate::Error>>,
    body: &Body,
    stream: &mut h2::SendStream<Bytes>,
) -> bool {
    match frame {
        None => {
            let _ = stream.send_data(Bytes::new(), true);
            false
        }
        Some(Ok(frame)) => match frame.into_data() {
            Ok(data) => {
                let end = body.is_end_stream();
                stream.send_data(data, end).is_ok() && !end
            }
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    // No more data: give back any claimed window.
                    stream.reserve_capacity(0);
                    let _ = stream.send_trailers(trailers);
                }
                false
            }
        },
        Some(Err(error)) => {
            // The call reports this error itself (see `RequestFailure`); the server learns of
            // it as a reset.
            tracing::debug!(%error, "request body failed; resetting the stream");
            stream.send_reset(h2::Reason::CANCEL);
            false
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_default_keep_alive_pings_every_30_s_and_waits_20_s() {
        let keep_alive = super::KeepAlive::default();
        assert_eq!(
            (keep_alive.interval, keep_alive.timeout),
            (
                std::time::Duration::from_secs(30),
                std::time::Duration::from_secs(20)
            )
        );
    }

    use super::*;

    #[test]
    fn headers_forbidden_in_http2_are_dropped_and_the_rest_kept() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("content-type", "application/proto"),
            ("connection", "keep-alive"),
            ("keep-alive", "timeout=5"),
            ("host", "127.0.0.1:1"),
            ("transfer-encoding", "chunked"),
            ("te", "gzip"),
            ("x-user", "kept"),
        ] {
            headers.insert(name, value.parse().unwrap());
        }
        strip_connection_headers(&mut headers);
        let mut left: Vec<_> = headers.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["content-type", "x-user"]);

        // `te: trailers` is the one TE value HTTP/2 allows.
        let mut headers = HeaderMap::new();
        headers.insert("te", "trailers".parse().unwrap());
        strip_connection_headers(&mut headers);
        assert_eq!(headers.get("te").unwrap(), "trailers");
    }
}

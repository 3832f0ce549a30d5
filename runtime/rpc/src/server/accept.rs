//! Accepting and driving connections: the accept loop, the protocol sniff, TLS, and the limits
//! that keep a server answering when peers misbehave (hyper's habit: everything a peer controls
//! has a timeout or a limit).
//!
//! - A connection must finish its TLS handshake and send its first bytes within the
//!   handshake timeout, or it is closed (an idle or trickling socket must not hold a slot).
//! - A connection with no call in flight for the idle timeout is closed gracefully (HTTP/2
//!   GOAWAY, or HTTP/1.1 keep-alive ended); a long stream is a call in flight, so it stays.
//! - A connection told to close (idle, or evicted) that has not closed within the handshake
//!   timeout is dropped: a peer cannot keep it by ignoring the GOAWAY.
//! - At most `max_connections` are open. At the cap, a new connection evicts a sixteenth of
//!   the cap at once: first connections that never sent a request, then idle ones, then busy
//!   ones whose calls made no progress for longest (a call stalled on purpose, with no body or
//!   a closed flow-control window, holds its connection no better than an idle socket).
//!   Accepting never pauses, so new clients are always let in.
//!
//! This module moves bytes between sockets and hyper; it does not route or look at requests
//! (the router does) and knows nothing of the Connect protocol.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulConnection;
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::Router;
use crate::Error;
use crate::body::{Body, H2_MAX_FRAME_SIZE, RecvBody};
use crate::memory::{Conn, Incoming};
use crate::request::Peer;
use crate::tls::PeerCertificate;

/// Limits on connections, set through the [`Server`](super::Server) builder.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnectionLimits {
    /// TLS handshake and the first bytes of a request.
    pub(crate) handshake_timeout: Duration,
    /// No call in flight for this long closes a connection.
    pub(crate) idle_timeout: Duration,
    /// The most connections open at once.
    pub(crate) max_connections: usize,
    /// An HTTP/1.1 request's headers must arrive within this.
    pub(crate) header_read_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            max_connections: default_max_connections(),
            header_read_timeout: Duration::from_secs(30),
        }
    }
}

/// 10,000 connections, or three quarters of the process's file descriptor limit when that is
/// lower, so the cap is reached before `accept` starts failing for want of descriptors.
fn default_max_connections() -> usize {
    const PREFERRED: usize = 10_000;
    // Linux reports the limit in /proc; elsewhere the preferred cap stands.
    let soft_limit = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|limits| {
            let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
            line.split_whitespace().nth(3)?.parse::<usize>().ok()
        });
    match soft_limit {
        Some(limit) => PREFERRED.min(limit / 4 * 3).max(16),
        None => PREFERRED,
    }
}

/// How a server shuts down: the signal to stop accepting and how long calls may drain.
pub(crate) struct Shutdown<S> {
    pub(crate) signal: S,
    pub(crate) timeout: Duration,
}

/// Accepts connections from `incoming` and serves them with `router` until `shutdown.signal`
/// completes (or an in-memory listener has no connectors left), then drains.
pub(crate) async fn run(
    mut incoming: Incoming,
    router: Arc<Router>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    limits: ConnectionLimits,
    shutdown: Shutdown<impl Future<Output = ()> + Send>,
) -> std::io::Result<()> {
    let (stop_tx, stop) = watch::channel(false);
    let shared = Arc::new(Shared {
        protocols: Protocols::new(limits),
        router,
        tls,
        limits,
        stop,
    });
    let mut live = Live::new();
    let mut tasks = JoinSet::new();
    // Task id -> connection id, so a connection whose task panicked leaves the count too.
    let mut task_ids = HashMap::new();
    let mut signal = std::pin::pin!(shutdown.signal);
    let mut accept_failures = 0u32;
    loop {
        tokio::select! {
            Some(ended) = tasks.join_next_with_id(), if !tasks.is_empty() => {
                let task = match ended {
                    Ok((task, _)) => task,
                    Err(e) => e.id(),
                };
                if let Some(id) = task_ids.remove(&task) {
                    live.remove(id);
                }
            }
            accepted = incoming.accept() => {
                let (stream, peer) = match accepted {
                    Some(Ok(accepted)) => accepted,
                    // Every in-memory connector is gone: nobody can connect any more.
                    None => break,
                    Some(Err(e)) => {
                        // Per-connection failures (EMFILE, ECONNABORTED) must not stop the
                        // server; back off briefly so a full fd table does not spin, and log
                        // the first of a burst only.
                        if accept_failures == 0 {
                            tracing::warn!(error = %e, "accept failed; backing off");
                        }
                        accept_failures = accept_failures.saturating_add(1);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                accept_failures = 0;
                if live.len() >= limits.max_connections {
                    live.evict(limits.max_connections);
                }
                let (id, activity) = live.add();
                let connection = Connection { id, activity, shared: Arc::clone(&shared), peer };
                let task = tasks.spawn(connection.serve(stream));
                task_ids.insert(task.id(), id);
            }
            () = &mut signal => break,
        }
    }
    drop(incoming);
    // Connections finish their calls in flight, then close (HTTP/2 GOAWAY first).
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(shutdown.timeout, async {
        while tasks.join_next().await.is_some() {}
    });
    if drained.await.is_err() {
        tracing::warn!("graceful shutdown timed out; closing remaining connections");
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
    Ok(())
}

/// The open connections, for the cap and eviction.
struct Live {
    /// What every connection's activity is timed from, so that they compare.
    epoch: Instant,
    next_id: u64,
    connections: HashMap<u64, Arc<Activity>>,
}

impl Live {
    fn new() -> Self {
        Self {
            epoch: Instant::now(),
            next_id: 0,
            connections: HashMap::new(),
        }
    }

    fn len(&self) -> usize {
        self.connections.len()
    }

    fn add(&mut self) -> (u64, Arc<Activity>) {
        let id = self.next_id;
        self.next_id += 1;
        let activity = Arc::new(Activity::new(self.epoch));
        self.connections.insert(id, Arc::clone(&activity));
        (id, activity)
    }

    fn remove(&mut self, id: u64) {
        self.connections.remove(&id);
    }

    /// Tells a sixteenth of the cap to close at once (so that a flood of new connections
    /// costs one scan per batch, not one per connection): first connections that never sent a
    /// request, then idle ones, then busy ones by oldest progress. They leave the count at
    /// once; their tasks end shortly after.
    fn evict(&mut self, cap: usize) {
        let mut candidates: Vec<((u8, u64), u64)> = self
            .connections
            .iter()
            .map(|(id, a)| (a.eviction_order(), *id))
            .collect();
        let batch = (cap / 16).clamp(1, candidates.len().max(1));
        if batch < candidates.len() {
            candidates.select_nth_unstable(batch - 1);
        }
        for (_, id) in candidates.iter().take(batch) {
            if let Some(activity) = self.connections.remove(id) {
                activity.evict();
            }
        }
    }
}

/// One connection's calls: how many are in flight, whether it ever had one, and when the
/// last one started, made progress (a response frame) or ended.
struct Activity {
    epoch: Instant,
    inflight: AtomicUsize,
    used: AtomicBool,
    /// Milliseconds after `epoch` of the last start, progress or end (or the accept).
    last: AtomicU64,
    evict: Notify,
}

impl Activity {
    fn new(epoch: Instant) -> Self {
        let activity = Self {
            epoch,
            inflight: AtomicUsize::new(0),
            used: AtomicBool::new(false),
            last: AtomicU64::new(0),
            evict: Notify::new(),
        };
        activity.touch();
        activity
    }

    fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Acquire)
    }

    fn last_millis(&self) -> u64 {
        self.last.load(Ordering::Relaxed)
    }

    fn touch(&self) {
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(now, Ordering::Relaxed);
    }

    /// Lower goes first: never used, then idle, then busy; older activity first.
    fn eviction_order(&self) -> (u8, u64) {
        let class = if !self.used.load(Ordering::Relaxed) {
            0
        } else if self.inflight() == 0 {
            1
        } else {
            2
        };
        (class, self.last_millis())
    }

    fn evict(&self) {
        self.evict.notify_one();
    }

    /// Completes once no call has been in flight for `timeout` (never, for a zero timeout).
    async fn idle(&self, timeout: Duration) {
        if timeout.is_zero() {
            return std::future::pending().await;
        }
        loop {
            let since = Duration::from_millis(self.last_millis());
            let Some(at) = since
                .checked_add(timeout)
                .and_then(|d| self.epoch.checked_add(d))
            else {
                return std::future::pending().await;
            };
            tokio::time::sleep_until(at).await;
            // In-flight first: a call ending right now has touched `last` before its count
            // drops.
            if self.inflight() > 0 {
                tokio::time::sleep(timeout).await;
                continue;
            }
            let since = Duration::from_millis(self.last_millis());
            if self.epoch.elapsed() >= since.saturating_add(timeout) {
                return;
            }
        }
    }
}

/// Counts one call from its start to the end (or drop) of its response body.
struct CallGuard(Arc<Activity>);

impl CallGuard {
    fn start(activity: &Arc<Activity>) -> Self {
        activity.inflight.fetch_add(1, Ordering::AcqRel);
        activity.used.store(true, Ordering::Relaxed);
        activity.touch();
        Self(Arc::clone(activity))
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        self.0.touch();
        self.0.inflight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its call counted in flight until it is done.
pub(crate) struct TrackedBody {
    body: Body,
    call: CallGuard,
}

impl http_body::Body for TrackedBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let frame = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(Some(Ok(_))) = &frame {
            // Progress: a call that keeps sending is not stalled.
            self.call.0.touch();
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// What every connection of a server shares.
struct Shared {
    protocols: Protocols,
    router: Arc<Router>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    limits: ConnectionLimits,
    /// Becomes true when the server stops.
    stop: watch::Receiver<bool>,
}

/// One accepted connection.
struct Connection {
    id: u64,
    activity: Arc<Activity>,
    shared: Arc<Shared>,
    /// `None` for in-memory connections.
    peer: Option<SocketAddr>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Connection {
    /// Serves the connection to its end; returns its id so the accept loop can forget it.
    async fn serve(self, stream: Conn) -> u64 {
        let id = self.id;
        let peer = self.peer;
        let evicted = Arc::clone(&self.activity);
        let served = tokio::select! {
            served = self.handshake_and_serve(stream) => served,
            () = evicted.evict.notified() => {
                tracing::debug!(peer = ?peer, "connection evicted: the server is at its connection cap");
                Ok(())
            }
        };
        if let Err(e) = served {
            tracing::debug!(peer = ?peer, error = %e, "connection closed with an error");
        }
        id
    }

    async fn handshake_and_serve(self, stream: Conn) -> Result<(), BoxError> {
        let handshake_timeout = self.shared.limits.handshake_timeout;
        match (self.shared.tls.clone(), stream) {
            (None, Conn::Tcp(stream)) => {
                let Some(wire) = sniff(&stream, handshake_timeout).await else {
                    tracing::debug!(peer = ?self.peer, "no request bytes in time; closing");
                    return Ok(());
                };
                let peer = Peer {
                    addr: self.peer,
                    ..Peer::default()
                };
                self.drive(stream, wire, peer).await
            }
            (None, memory @ Conn::Memory(_)) => {
                self.drive(memory, Wire::Sniff, Peer::default()).await
            }
            (Some(acceptor), stream) => {
                // A client that never finishes its handshake must not hold the slot forever.
                let stream =
                    match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(e)) => {
                            tracing::debug!(peer = ?self.peer, error = %e, "TLS handshake failed");
                            return Ok(());
                        }
                        Err(_) => {
                            tracing::debug!(peer = ?self.peer, "TLS handshake timed out");
                            return Ok(());
                        }
                    };
                let session = stream.get_ref().1;
                let wire = match session.alpn_protocol() {
                    Some(b"h2") => Wire::Http2,
                    Some(b"http/1.1") => Wire::Http1,
                    _ => Wire::Sniff,
                };
                // Over mutual TLS, the verified client certificate, once per connection.
                let certificate = session
                    .peer_certificates()
                    .and_then(|chain| chain.first())
                    .map(|leaf| Arc::new(PeerCertificate::new(leaf.clone().into_owned())));
                let peer = Peer {
                    addr: self.peer,
                    certificate,
                    principal: None,
                };
                self.drive(stream, wire, peer).await
            }
        }
    }

    /// Serves HTTP on `io` until the connection ends, closing it gracefully when the server
    /// stops or the connection has been idle for the idle timeout.
    async fn drive<I>(self, io: I, wire: Wire, peer: Peer) -> Result<(), BoxError>
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let router = Arc::clone(&self.shared.router);
        let activity = Arc::clone(&self.activity);
        let service = hyper::service::service_fn(move |request: http::Request<_>| {
            let router = Arc::clone(&router);
            let call = CallGuard::start(&activity);
            let peer = peer.clone();
            async move {
                let response = router.handle(request.map(RecvBody::Hyper), &peer).await;
                Ok::<_, Infallible>(response.map(|body| TrackedBody { body, call }))
            }
        });
        let io = TokioIo::new(io);
        let idle = self.shared.limits.idle_timeout;
        let stop = self.shared.stop.clone();
        let protocols = &self.shared.protocols;
        let grace = self.shared.limits.handshake_timeout;
        match wire {
            Wire::Http2 => {
                let conn = protocols.http2.serve_connection(io, service);
                watch_connection(conn, &self.activity, idle, grace, stop).await
            }
            Wire::Http1 => {
                let conn = protocols.http1.serve_connection(io, service);
                watch_connection(conn, &self.activity, idle, grace, stop).await
            }
            Wire::Sniff => {
                let conn = protocols.auto.serve_connection(io, service);
                watch_connection(conn, &self.activity, idle, grace, stop).await
            }
        }
    }
}

/// Runs `conn` to its end, starting its graceful shutdown when the server stops or it has been
/// idle for `idle`. An idle connection that has not closed `grace` after being told to (a peer
/// that ignores the GOAWAY, or never finished its HTTP/2 preface) is dropped; at a server stop
/// the server's shutdown timeout bounds it instead.
async fn watch_connection<C>(
    conn: C,
    activity: &Activity,
    idle: Duration,
    grace: Duration,
    mut stop: watch::Receiver<bool>,
) -> Result<(), BoxError>
where
    C: GracefulConnection,
    C::Error: Into<BoxError>,
{
    let mut conn = std::pin::pin!(conn);
    let mut closing = false;
    let mut forced: Option<Instant> = None;
    loop {
        let force = async {
            match forced {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            result = conn.as_mut() => return result.map_err(Into::into),
            _ = stop.wait_for(|stop| *stop), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            () = activity.idle(idle), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
                forced = Instant::now().checked_add(grace);
            }
            () = force => {
                tracing::debug!("connection did not close after its GOAWAY; dropping it");
                return Ok(());
            }
        }
    }
}

/// The HTTP connection builders. A connection whose protocol is known up front (ALPN on TLS,
/// or the first bytes of a cleartext connection) gets the HTTP/1.1 or HTTP/2 builder
/// directly; measured, that serves about 5% more calls per second than hyper-util's auto
/// builder, which wraps every read to sniff the protocol. The auto builder remains for
/// in-memory connections and TLS without ALPN.
struct Protocols {
    auto: hyper_util::server::conn::auto::Builder<TokioExecutor>,
    http1: hyper::server::conn::http1::Builder,
    http2: hyper::server::conn::http2::Builder<TokioExecutor>,
}

/// Which builder serves a connection.
enum Wire {
    Http1,
    Http2,
    Sniff,
}

/// The first bytes of an HTTP/2 connection preface.
const H2_PREFACE_START: &[u8] = b"PRI";

impl Protocols {
    fn new(limits: ConnectionLimits) -> Self {
        // Without a timer hyper silently drops its header-read timeout and HTTP/2 keep-alive,
        // so idle or slow-loris connections would hold descriptors forever.
        let (keep_alive, keep_alive_timeout) = (Duration::from_secs(30), Duration::from_secs(20));
        let mut auto = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        auto.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout);
        auto.http2()
            .timer(TokioTimer::new())
            .max_frame_size(H2_MAX_FRAME_SIZE)
            .keep_alive_interval(keep_alive)
            .keep_alive_timeout(keep_alive_timeout);
        let mut http1 = hyper::server::conn::http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout);
        let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .max_frame_size(H2_MAX_FRAME_SIZE)
            .keep_alive_interval(keep_alive)
            .keep_alive_timeout(keep_alive_timeout);
        Self { auto, http1, http2 }
    }
}

/// The protocol of a cleartext TCP connection, from its first three bytes (without consuming
/// them); `None` if they do not arrive within `timeout` or the peer closes first.
async fn sniff(stream: &tokio::net::TcpStream, timeout: Duration) -> Option<Wire> {
    let deadline = Instant::now()
        .checked_add(timeout)
        .unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400));
    let mut first = [0u8; 3];
    let mut pause = Duration::from_millis(5);
    loop {
        match tokio::time::timeout_at(deadline, stream.peek(&mut first)).await {
            Ok(Ok(n)) if n >= first.len() => {
                return Some(if first == H2_PREFACE_START {
                    Wire::Http2
                } else {
                    Wire::Http1
                });
            }
            // Closed, failed, or nothing in time.
            Ok(Ok(0) | Err(_)) | Err(_) => return None,
            // A partial first packet: peek returns at once while bytes wait, so wait before
            // looking again, longer each time (rare for real clients, whose requests start in
            // one packet; a peer trickling bytes must not cost a wake-up every few ms).
            Ok(Ok(_)) => {
                if Instant::now() >= deadline {
                    return None;
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(320));
            }
        }
    }
}

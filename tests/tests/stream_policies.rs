//! Reliability issue: call wrappers on streaming calls, against real servers over real
//! sockets. A stream is retried (and failed over) only while no message of it has gone out;
//! a circuit breaker judges a stream by what it does first; the documented order (auth ->
//! breaker -> retry) holds for streams as for unary calls.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use connect_plugin::rpc::interceptor::{StreamCall, StreamFuture, StreamNext, Wrap};
use connect_plugin::rpc::policy::{BreakerState, CircuitBreaker, Failover, Retry};
use connect_plugin::rpc::{Channel, ChannelBuilder};
use connect_plugin::{Code, Error, MessageStream, Request, Response, Streaming};
use connect_plugin_tests::interop::{
    InteropService, InteropServiceClient, InteropServicePlugin, InteropServiceServer, Payload,
    answered_by, serve_interop, serve_named, streamed_by,
};
use tokio::sync::Notify;

/// A TCP forwarder in front of `target` that closes the first `refuse` connections at once
/// (before any byte), counts the connections it accepts, and cuts every open connection when
/// `cut` is notified.
struct Forwarder {
    addr: std::net::SocketAddr,
    accepted: Arc<AtomicUsize>,
    cut: Arc<Notify>,
}

async fn forwarder(target: &str, refuse: usize) -> Forwarder {
    let target: std::net::SocketAddr = target
        .trim_start_matches("http://")
        .parse()
        .expect("target address");
    let front = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = front.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let cut = Arc::new(Notify::new());
    let (counter, cutter) = (Arc::clone(&accepted), Arc::clone(&cut));
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = front.accept().await {
            if counter.fetch_add(1, Ordering::SeqCst) < refuse {
                drop(inbound);
                continue;
            }
            let cutter = Arc::clone(&cutter);
            tokio::spawn(async move {
                let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                    return;
                };
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    () = cutter.notified() => {}
                }
            });
        }
    });
    Forwarder {
        addr,
        accepted,
        cut,
    }
}

fn client(
    url: &str,
    configure: impl FnOnce(ChannelBuilder) -> ChannelBuilder,
) -> InteropServiceClient {
    let channel: Channel = configure(Channel::builder(url)).build().unwrap();
    connect_plugin::dispense::<InteropServicePlugin>(&channel)
}

/// Streaming methods are not marked idempotent, so retrying them is opted into.
fn stream_retry() -> Retry {
    Retry::new()
        .backoff(Duration::from_millis(10), 2, Duration::from_millis(100))
        .jitter(0.0)
        .non_idempotent(true)
}

#[tokio::test]
async fn a_stream_that_cannot_open_is_sent_again() {
    let server = serve_interop().await;
    let front = forwarder(&server, 1).await;
    let url = format!("http://{}", front.addr);

    // Without a retry, the refused connection is the caller's error.
    let plain = client(&url, |c| c);
    let refused = plain
        .server_stream(Payload {
            count: 2,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused}");

    // With one, a server-streaming call whose connection is refused opens on the next.
    let front = forwarder(&server, 1).await;
    let retrying = client(&format!("http://{}", front.addr), |c| {
        c.wrap(stream_retry())
    });
    let mut stream = retrying
        .server_stream(Payload {
            text: "again".into(),
            count: 2,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_message();
    let mut texts = Vec::new();
    while let Some(payload) = stream.message().await.unwrap() {
        texts.push(payload.text);
    }
    assert_eq!(texts, ["again", "again"], "every message, once");
    assert_eq!(front.accepted.load(Ordering::SeqCst), 2, "two attempts");

    // A client stream too, while none of its messages has gone out: here the first message
    // comes once the second connection is there.
    let front = forwarder(&server, 1).await;
    let retrying = client(&format!("http://{}", front.addr), |c| {
        c.wrap(stream_retry())
    });
    let (tx, requests) = MessageStream::channel(4);
    let call = tokio::spawn(async move { retrying.client_stream(requests).await });
    let waited = Instant::now();
    while front.accepted.load(Ordering::SeqCst) < 2 {
        assert!(
            waited.elapsed() < Duration::from_secs(5),
            "no second attempt"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for text in ["a", "b"] {
        tx.send(Payload {
            text: text.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    drop(tx);
    let joined = call.await.unwrap().unwrap();
    assert_eq!(joined.message().text, "a,b", "no message lost or repeated");
    assert_eq!(front.accepted.load(Ordering::SeqCst), 2);
}

/// Tells the test when a client stream's first message has reached the handler, then waits
/// for the rest.
struct Gate(Arc<Notify>);

impl InteropService for Gate {
    async fn client_stream(
        &self,
        request: Request<Streaming<Payload>>,
    ) -> Result<Response<Payload>, Error> {
        let mut requests = request.into_message();
        let mut count = 0;
        while requests.message().await?.is_some() {
            count += 1;
            self.0.notify_one();
        }
        Ok(Response::new(Payload {
            count,
            ..Default::default()
        }))
    }
}

#[tokio::test]
async fn a_stream_is_not_sent_again_once_a_message_went_out() {
    let arrived = Arc::new(Notify::new());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        connect_plugin::rpc::Server::new()
            .add_service(InteropServiceServer::new(Gate(Arc::clone(&arrived))).into_service())
            .serve(listener),
    );
    let front = forwarder(&server, 0).await;
    let retrying = client(&format!("http://{}", front.addr), |c| {
        c.wrap(stream_retry())
    });
    let (tx, requests) = MessageStream::channel(4);
    let call = tokio::spawn(async move { retrying.client_stream(requests).await });
    tx.send(Payload::default()).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), arrived.notified())
        .await
        .expect("the first message reaches the handler");
    // The connection breaks before the answer: the first message may have been acted on, so
    // the call fails instead of being sent again (with the first message lost).
    front.cut.notify_waiters();
    let error = tokio::time::timeout(Duration::from_secs(5), call)
        .await
        .expect("the call ends")
        .unwrap()
        .unwrap_err();
    assert_eq!(error.code(), Code::Unavailable, "{error}");
    assert_eq!(front.accepted.load(Ordering::SeqCst), 1, "not sent again");
}

#[tokio::test]
async fn the_breaker_judges_a_stream_by_what_it_does_first() {
    let server = serve_interop().await;
    let changes = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&changes);
    let guarded = client(&server, |c| {
        c.wrap(
            CircuitBreaker::new()
                .failure_threshold(2)
                .open_for(Duration::from_millis(300))
                .on_state_change(move |old, new| seen.lock().unwrap().push((old, new))),
        )
    });
    let failing = || Payload {
        fail_code: Code::Unavailable.as_str().into(),
        count: 1,
        ..Default::default()
    };
    // The server opens each stream (HTTP 200) and fails it in its end-stream message: two
    // such streams open the breaker, once their callers have read the failure.
    for _ in 0..2 {
        let mut stream = guarded
            .server_stream(failing())
            .await
            .unwrap()
            .into_message();
        let error = stream.message().await.unwrap_err();
        assert_eq!(error.code(), Code::Unavailable);
    }
    let started = Instant::now();
    let refused = guarded.server_stream(failing()).await.unwrap_err();
    let refused_in = started.elapsed();
    assert_eq!(refused.code(), Code::Unavailable);
    assert!(
        refused.message().contains("circuit breaker open"),
        "{refused}"
    );
    assert!(refused_in < Duration::from_millis(50), "{refused_in:?}");

    // After the open time, a stream is a probe until its first message: while a quiet one
    // is out, other calls are refused; dropped before its first message, it gives its place
    // back.
    tokio::time::sleep(Duration::from_millis(350)).await;
    let (_requests_open, requests) = MessageStream::channel(1);
    let quiet = guarded.bidi(requests).await.unwrap();
    let refused = guarded.server_stream(failing()).await.unwrap_err();
    assert!(refused.message().contains("half-open"), "{refused}");
    drop(quiet);
    // A stream whose first message arrives is a successful probe; two close the breaker.
    for _ in 0..2 {
        let mut stream = guarded
            .server_stream(Payload {
                count: 1,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_message();
        assert!(stream.message().await.unwrap().is_some());
    }
    use BreakerState::{Closed, HalfOpen, Open};
    assert_eq!(
        *changes.lock().unwrap(),
        [(Closed, Open), (Open, HalfOpen), (HalfOpen, Closed)]
    );
}

/// The documented order for streams: an auth wrapper outside runs once per call, the breaker
/// sees one outcome per call, and retries stay inside it.
#[tokio::test]
async fn stream_wrappers_run_in_order_auth_then_breaker_then_retry() {
    struct Auth(Arc<AtomicUsize>);
    impl Wrap for Auth {
        fn unary<'a>(
            &'a self,
            call: connect_plugin::rpc::interceptor::UnaryCall,
            next: connect_plugin::rpc::interceptor::Next<'a>,
        ) -> connect_plugin::rpc::interceptor::WrapFuture<'a> {
            next.run(call)
        }
        fn stream<'a>(&'a self, mut call: StreamCall, next: StreamNext<'a>) -> StreamFuture<'a> {
            self.0.fetch_add(1, Ordering::SeqCst);
            call.headers
                .insert("x-echo", http::HeaderValue::from_static("authorized"));
            next.run(call)
        }
    }
    let server = serve_interop().await;
    // Two refused connections: two failed attempts, then the third opens.
    let front = forwarder(&server, 2).await;
    let auth_runs = Arc::new(AtomicUsize::new(0));
    let changes = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&changes);
    let ordered = client(&format!("http://{}", front.addr), |c| {
        c.wrap(Auth(Arc::clone(&auth_runs)))
            .wrap(
                CircuitBreaker::new()
                    .failure_threshold(2)
                    .on_state_change(move |old, new| seen.lock().unwrap().push((old, new))),
            )
            .wrap(stream_retry())
    });
    let mut stream = ordered
        .server_stream(Payload {
            count: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_message();
    let payload = stream.message().await.unwrap().unwrap();
    assert_eq!(
        payload.echoed_header, "authorized",
        "auth's header on the attempt that went through"
    );
    assert_eq!(front.accepted.load(Ordering::SeqCst), 3, "retried inside");
    assert_eq!(auth_runs.load(Ordering::SeqCst), 1, "auth ran once");
    assert!(
        changes.lock().unwrap().is_empty(),
        "two failed attempts inside one successful call do not open the breaker"
    );
}

#[tokio::test]
async fn streams_fail_over_and_calls_spread_over_the_preferred_endpoints() {
    let any: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    let (stop_a, a, task_a) = serve_named("a", any).await;
    let (_stop_b, b, _task_b) = serve_named("b", any).await;
    let (_stop_c, c, _task_c) = serve_named("c", any).await;
    let channel = Failover::new(
        [(format!("http://{a}"), 10), (format!("http://{b}"), 1)],
        |endpoint| endpoint.wrap(CircuitBreaker::new().failure_threshold(1)),
    )
    .unwrap()
    .channel(|c| c)
    .unwrap();
    let failing_over = connect_plugin::dispense::<InteropServicePlugin>(&channel);
    assert_eq!(streamed_by(&failing_over).await.unwrap(), "a");
    stop_a.send(()).unwrap();
    task_a.await.unwrap();
    assert_eq!(
        streamed_by(&failing_over).await.unwrap(),
        "b",
        "a stream that cannot open on A opens on B"
    );

    // Spreading: B and C share the top tier 3:1 (tier in the upper 16 bits, share in the
    // lower), A (gone) is in a lower tier and never picked first.
    let tier = |tier: u32, share: u32| (tier << 16) | share;
    let spread = Failover::new(
        [
            (format!("http://{b}"), tier(2, 3)),
            (format!("http://{c}"), tier(2, 1)),
            (format!("http://{a}"), tier(1, 100)),
        ],
        |endpoint| endpoint,
    )
    .unwrap()
    .spread_load(true)
    .channel(|c| c)
    .unwrap();
    let spread = connect_plugin::dispense::<InteropServicePlugin>(&spread);
    let (mut to_b, mut to_c) = (0, 0);
    for _ in 0..300 {
        match answered_by(&spread).await.unwrap().as_str() {
            "b" => to_b += 1,
            "c" => to_c += 1,
            other => panic!("a call went to {other}"),
        }
    }
    println!("300 calls spread 3:1: {to_b} to b, {to_c} to c");
    assert!((30..=130).contains(&to_c), "about a quarter to c: {to_c}");
    assert!(to_b > to_c, "{to_b} vs {to_c}");
}

/// A request stream that fails before its first message is the caller's error, not a retry
/// that would send the server an empty (and so complete) stream.
#[tokio::test]
async fn a_request_stream_that_fails_at_once_is_not_sent_again_empty() {
    let server = serve_interop().await;
    let retrying = client(&server, |c| c.wrap(stream_retry()));
    let (tx, requests) = MessageStream::<Payload>::channel(1);
    tx.fail(Error::new(Code::Aborted, "the caller gave up"))
        .await;
    let error = retrying.client_stream(requests).await.unwrap_err();
    assert_eq!(error.code(), Code::Aborted, "{error}");
}

/// An opened stream a wrapper gives up on (dropped before it is read) is no verdict: a
/// half-open breaker's probe place comes back.
#[tokio::test]
async fn a_stream_dropped_by_a_wrapper_gives_its_probe_back() {
    use std::sync::atomic::AtomicBool;

    struct DropOpened(Arc<AtomicBool>);
    impl Wrap for DropOpened {
        fn unary<'a>(
            &'a self,
            call: connect_plugin::rpc::interceptor::UnaryCall,
            next: connect_plugin::rpc::interceptor::Next<'a>,
        ) -> connect_plugin::rpc::interceptor::WrapFuture<'a> {
            next.run(call)
        }
        fn stream<'a>(&'a self, call: StreamCall, next: StreamNext<'a>) -> StreamFuture<'a> {
            Box::pin(async move {
                let reply = next.run(call).await?;
                if self.0.load(Ordering::SeqCst) {
                    drop(reply);
                    return Err(Error::new(Code::Aborted, "not this one"));
                }
                Ok(reply)
            })
        }
    }
    let server = serve_interop().await;
    let dropping = Arc::new(AtomicBool::new(false));
    let guarded = client(&server, |c| {
        c.wrap(DropOpened(Arc::clone(&dropping))).wrap(
            CircuitBreaker::new()
                .failure_threshold(1)
                .open_for(Duration::from_millis(100)),
        )
    });
    let mut failing = guarded
        .server_stream(Payload {
            fail_code: Code::Unavailable.as_str().into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_message();
    assert!(failing.message().await.is_err());
    drop(failing);
    tokio::time::sleep(Duration::from_millis(150)).await;
    dropping.store(true, Ordering::SeqCst);
    let given_up = guarded.server_stream(Payload::default()).await.unwrap_err();
    assert_eq!(given_up.code(), Code::Aborted);
    dropping.store(false, Ordering::SeqCst);
    let mut probe = guarded
        .server_stream(Payload {
            count: 1,
            ..Default::default()
        })
        .await
        .expect("the probe place came back")
        .into_message();
    assert!(probe.message().await.unwrap().is_some());
}

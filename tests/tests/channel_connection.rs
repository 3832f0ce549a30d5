//! A channel's HTTP/2 connection: one connection for every call of a channel, however many run
//! at once, and a new one after the server went away and came back on the same address.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use connect_plugin::{Channel, Code, rpc::Server};
use connect_plugin_tests::interop::{
    InteropServer, InteropServiceClient, InteropServicePlugin, InteropServiceServer, Payload,
};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

fn client(addr: SocketAddr) -> InteropServiceClient {
    connect_plugin::dispense::<InteropServicePlugin>(
        &Channel::new(format!("http://{addr}")).unwrap(),
    )
}

fn payload(text: &str) -> Payload {
    Payload {
        text: text.into(),
        ..Default::default()
    }
}

/// Serves the interop service on `listener` until the returned sender fires (or drops).
fn serve(listener: TcpListener) -> (oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    serve_with(listener, InteropServer)
}

fn serve_with(
    listener: TcpListener,
    service: impl connect_plugin_tests::interop::InteropService,
) -> (oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        Server::new()
            .add_service(InteropServiceServer::new(service).into_service())
            .shutdown_timeout(Duration::from_secs(2))
            .serve_with_shutdown(listener, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    (stop, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_share_one_connection() {
    // A counting TCP forwarder in front of the server sees every connection the channel opens.
    let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server_addr = server.local_addr().unwrap();
    let (_stop, _task) = serve(server);
    let (front_addr, accepted) = connect_plugin_tests::counting_forwarder(server_addr).await;

    let client = client(front_addr);
    let calls: Vec<_> = (0..64)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move { client.unary(payload(&format!("call {i}"))).await })
        })
        .collect();
    for (i, call) in calls.into_iter().enumerate() {
        assert_eq!(call.await.unwrap().unwrap().text, format!("call {i}"));
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "64 concurrent first calls must open one HTTP/2 connection"
    );
}

#[tokio::test]
async fn a_channel_reconnects_after_the_server_comes_back() {
    // A port no other test is handed while it is free between the two servers.
    let listener = connect_plugin_tests::listen_on_a_stable_port().await;
    let addr = listener.local_addr().unwrap();
    let (stop, task) = serve(listener);
    let client = client(addr);
    assert_eq!(
        client.unary(payload("before")).await.unwrap().text,
        "before"
    );

    // The server shuts down: its connection closes, and nothing listens on the port.
    stop.send(()).unwrap();
    task.await.unwrap();
    let down = client.unary(payload("down")).await.unwrap_err();
    assert_eq!(down.code(), Code::Unavailable, "{down}");
    assert!(
        down.message().contains(&addr.to_string()),
        "the error names the server: {down}"
    );

    // A new server on the same address: the same channel connects again by itself.
    let listener = TcpListener::bind(addr).await.unwrap();
    let (_stop, _task) = serve(listener);
    assert_eq!(client.unary(payload("after")).await.unwrap().text, "after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_concurrent_calls_than_the_server_allows_streams_wait_their_turn() {
    // hyper's server allows 200 concurrent streams per connection; 300 slow calls on one
    // channel must queue for a stream, not fail.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (_stop, _task) = serve(listener);
    let client = client(addr);
    let calls: Vec<_> = (0..300)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move {
                let mut slow = payload(&i.to_string());
                slow.sleep_ms = 100;
                client.unary(slow).await
            })
        })
        .collect();
    let started = std::time::Instant::now();
    let all = async {
        for (i, call) in calls.into_iter().enumerate() {
            assert_eq!(call.await.unwrap().unwrap().text, i.to_string());
        }
    };
    tokio::time::timeout(Duration::from_secs(20), all)
        .await
        .expect("300 calls of 100 ms over 200 streams finish well within 20 s");
    // At most 200 ran at once: the other 100 waited for a stream, so the whole took two
    // rounds of 100 ms at least (all at once would take one).
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(200),
        "no call waited: {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_draining_for_shutdown_finishes_the_open_call() {
    let listener = connect_plugin_tests::listen_on_a_stable_port().await;
    let addr = listener.local_addr().unwrap();
    let arrived = Arc::new(tokio::sync::Notify::new());
    let (stop, task) = serve_with(
        listener,
        connect_plugin_tests::interop::SlowAnswer {
            arrived: Arc::clone(&arrived),
        },
    );
    let client = client(addr);

    // A slow call is in flight when the server starts its graceful shutdown (GOAWAY).
    let slow = tokio::spawn({
        let client = client.clone();
        async move {
            let mut slow = payload("slow");
            slow.sleep_ms = 300;
            client.unary(slow).await
        }
    });
    tokio::time::timeout(Duration::from_secs(5), arrived.notified())
        .await
        .expect("the slow call reaches the server");
    stop.send(()).unwrap();
    assert_eq!(
        slow.await.unwrap().unwrap().text,
        "slow",
        "the open call is finished"
    );
    task.await.unwrap();

    // The server is gone: a new call fails fast and clearly, then works once it is back.
    let gone = tokio::time::timeout(Duration::from_secs(5), client.unary(payload("gone")))
        .await
        .expect("no hang on a closed connection")
        .unwrap_err();
    assert_eq!(gone.code(), Code::Unavailable, "{gone}");
    let (_stop, _task) = serve(TcpListener::bind(addr).await.unwrap());
    assert_eq!(client.unary(payload("back")).await.unwrap().text, "back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_stream_ready_all_at_once_is_sent_within_flow_control() {
    // 10 MiB of messages ready before the call starts: more than the connection's window, so
    // most of it must wait for the server to read.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (_stop, _task) = serve(listener);
    let client = client(addr);
    let messages = (0..40).map(|i| Payload {
        text: i.to_string(),
        data: vec![1u8; 256 * 1024].into(),
        ..Default::default()
    });
    let joined = tokio::time::timeout(
        Duration::from_secs(30),
        client.client_stream(messages.collect::<connect_plugin::MessageStream<_>>()),
    )
    .await
    .expect("10 MiB in 30 s")
    .unwrap();
    assert_eq!(joined.count, 40);
    assert!(joined.text.starts_with("0,1,2,") && joined.text.ends_with(",39"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_request_stream_aborts_the_call_with_its_own_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (_stop, _task) = serve(listener);
    let client = client(addr);
    let failing = || {
        let (tx, requests) = connect_plugin::MessageStream::channel(4);
        tokio::spawn(async move {
            tx.send(payload("one")).await.unwrap();
            tx.fail(connect_plugin::Error::invalid_argument(
                "the producer gave up",
            ))
            .await;
        });
        requests
    };

    let error = client.client_stream(failing()).await.unwrap_err();
    assert_eq!(
        (error.code(), error.message()),
        (Code::InvalidArgument, "the producer gave up")
    );

    let outcome = async {
        let mut replies = client.bidi(failing()).await?.into_message();
        while replies.message().await?.is_some() {}
        Ok::<_, connect_plugin::Error>(())
    };
    let error = tokio::time::timeout(Duration::from_secs(5), outcome)
        .await
        .expect("the aborted bidi call ends")
        .unwrap_err();
    assert_eq!(
        (error.code(), error.message()),
        (Code::InvalidArgument, "the producer gave up")
    );
}

/// Reports how each bidi call's request stream ended, as the server saw it.
struct Observer(tokio::sync::mpsc::UnboundedSender<Result<usize, Code>>);

impl connect_plugin_tests::interop::InteropService for Observer {
    async fn bidi(
        &self,
        request: connect_plugin::Request<connect_plugin::Streaming<Payload>>,
    ) -> Result<
        connect_plugin::Response<connect_plugin::ServerStream<Payload>>,
        connect_plugin::Error,
    > {
        let mut requests = request.into_message();
        let (tx, replies) = connect_plugin::MessageStream::channel(4);
        let report = self.0.clone();
        tokio::spawn(async move {
            let mut seen = 0;
            let end = loop {
                match requests.message().await {
                    Ok(Some(p)) => {
                        seen += 1;
                        let _ = tx.send(p).await;
                    }
                    Ok(None) => break Ok(seen),
                    Err(e) => break Err(e.code()),
                }
            };
            let _ = report.send(end);
        });
        Ok(connect_plugin::Response::new(replies))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_bidi_call_is_cancelled_on_the_server() {
    let (report, mut ends) = tokio::sync::mpsc::unbounded_channel();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        Server::new()
            .add_service(InteropServiceServer::new(Observer(report)).into_service())
            .serve(listener),
    );
    let client = client(addr);
    // The caller keeps its sender open but stops caring about the call.
    let (tx, requests) = connect_plugin::MessageStream::channel(4);
    tx.send(payload("hello")).await.unwrap();
    let mut replies = client.bidi(requests).await.unwrap().into_message();
    assert_eq!(replies.message().await.unwrap().unwrap().text, "hello");
    drop(replies);
    let end = tokio::time::timeout(Duration::from_secs(5), ends.recv())
        .await
        .expect("the server learns that the call was abandoned")
        .unwrap();
    assert!(end.is_err(), "a cancelled stream, not a clean end: {end:?}");
    drop(tx); // kept open until here
}

/// A TCP forwarder whose current connections can be frozen: they stay open but carry nothing
/// more, as when a network partition cuts a connection without closing it.
async fn freezable_forwarder(
    target: SocketAddr,
) -> (SocketAddr, Arc<std::sync::Mutex<Vec<Arc<AtomicBool>>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn pipe(
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
        frozen: Arc<AtomicBool>,
    ) {
        let mut buf = vec![0; 16 * 1024];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if frozen.load(Ordering::SeqCst) {
                // Keep both sockets open and silent, forever.
                std::future::pending::<()>().await;
            }
            if to.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    }

    let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = front.local_addr().unwrap();
    let switches = Arc::new(std::sync::Mutex::new(Vec::new()));
    let registered = Arc::clone(&switches);
    tokio::spawn(async move {
        while let Ok((inbound, _)) = front.accept().await {
            let outbound = tokio::net::TcpStream::connect(target).await.unwrap();
            let frozen = Arc::new(AtomicBool::new(false));
            registered.lock().unwrap().push(Arc::clone(&frozen));
            let (in_read, in_write) = inbound.into_split();
            let (out_read, out_write) = outbound.into_split();
            tokio::spawn(pipe(in_read, out_write, Arc::clone(&frozen)));
            tokio::spawn(pipe(out_read, in_write, frozen));
        }
    });
    (addr, switches)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_goes_silent_is_given_up_by_its_pings() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = listener.local_addr().unwrap();
    let arrived = Arc::new(tokio::sync::Notify::new());
    let (_stop, _task) = serve_with(
        listener,
        connect_plugin_tests::interop::SlowAnswer {
            arrived: Arc::clone(&arrived),
        },
    );
    let (front, switches) = freezable_forwarder(server).await;
    let channel = Channel::builder(format!("http://{front}"))
        .keep_alive(Duration::from_millis(200), Duration::from_millis(300))
        .build()
        .unwrap();
    let client = connect_plugin::dispense::<InteropServicePlugin>(&channel);
    assert_eq!(client.unary(payload("warm")).await.unwrap().text, "warm");
    arrived.notified().await;

    // A long call is under way when the connection goes silent.
    let long = tokio::spawn({
        let client = client.clone();
        async move {
            let mut slow = payload("long");
            slow.sleep_ms = 60_000;
            client.unary(slow).await
        }
    });
    tokio::time::timeout(Duration::from_secs(5), arrived.notified())
        .await
        .expect("the long call reaches the server");
    for frozen in switches.lock().unwrap().iter() {
        frozen.store(true, Ordering::SeqCst);
    }
    let error = tokio::time::timeout(Duration::from_secs(5), long)
        .await
        .expect("the silent connection is given up within a few pings")
        .unwrap()
        .unwrap_err();
    assert_eq!(error.code(), Code::Unavailable, "{error}");

    // The next call opens a new connection (the forwarder's new ones are not frozen).
    assert_eq!(client.unary(payload("again")).await.unwrap().text, "again");
}

#[test]
fn keep_alive_must_be_above_zero() {
    let error = Channel::builder("http://127.0.0.1:1")
        .keep_alive(Duration::ZERO, Duration::from_secs(1))
        .build()
        .unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(error.message().contains("keep_alive"), "{error}");
}

#[tokio::test]
async fn the_clients_message_limit_refuses_a_larger_response() {
    let url = connect_plugin_tests::interop::serve_interop().await;
    let channel = Channel::builder(url)
        .max_message_size(1024)
        .build()
        .unwrap();
    let client = connect_plugin::dispense::<InteropServicePlugin>(&channel);
    let mut small = payload("small");
    small.data = vec![1u8; 512].into();
    client.unary(small).await.expect("under the limit");
    // The request is not limited by the client's receive limit; the 2 KiB echo is.
    let mut big = payload("big");
    big.data = vec![1u8; 2048].into();
    let err = client.unary(big).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
}

#[tokio::test]
async fn a_servers_own_message_limit_refuses_a_larger_request() {
    let url =
        connect_plugin_tests::interop::serve_interop_with(Server::new().max_message_size(1024))
            .await;
    let client = connect_plugin::dispense::<InteropServicePlugin>(&Channel::new(url).unwrap());
    let mut big = payload("big");
    big.data = vec![1u8; 2048].into();
    let err = client.unary(big).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    assert!(err.message().contains("1024"), "the limit is named: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_calls_reuse_pooled_connections_and_open_more_when_busy() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = listener.local_addr().unwrap();
    let (_stop, _task) = serve(listener);
    let (front, accepted) = connect_plugin_tests::counting_forwarder(server).await;
    let channel = Channel::builder(format!("http://{front}"))
        .http_version(connect_plugin::rpc::HttpVersion::Http1)
        .build()
        .unwrap();
    let client = connect_plugin::dispense::<InteropServicePlugin>(&channel);
    for i in 0..10 {
        client.unary(payload(&i.to_string())).await.unwrap();
    }
    // hyper's pool takes a connection back once its response is done, asynchronously: the
    // call right after the first may still open a second one; the rest reuse them.
    let sequential = accepted.load(Ordering::SeqCst);
    assert!(
        (1..=2).contains(&sequential),
        "one after another, the calls share pooled connections: {sequential} for 10 calls"
    );
    // Five at once: HTTP/1.1 carries one call per connection at a time.
    let calls: Vec<_> = (0..5)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move {
                let mut slow = payload(&i.to_string());
                slow.sleep_ms = 200;
                client.unary(slow).await
            })
        })
        .collect();
    for call in calls {
        call.await.unwrap().unwrap();
    }
    let busy = accepted.load(Ordering::SeqCst);
    assert!(
        (5..=sequential + 5).contains(&busy),
        "five calls at once need five connections (pooled ones reused): {busy}"
    );
}

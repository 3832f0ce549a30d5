//! Abuse suite, connection hygiene (security issue, item 1: lockout by idle sockets). Sockets
//! that send nothing, a partial first packet, partial headers or a trickling body are closed
//! within the configured timeouts; idle keep-alive connections are closed gracefully while
//! long streams stay open; at the connection cap new clients evict idle sockets instead of
//! waiting behind them. Every test also checks that a well-behaved client keeps getting
//! answers while the abuse goes on.

use std::time::{Duration, Instant};

use connect_plugin::rpc::{Channel, HttpVersion, Server};
use connect_plugin::{Code, Plugin};
use connect_plugin_tests::interop::{
    InteropServiceClient, InteropServicePlugin, Payload, serve_interop_with,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn addr_of(url: &str) -> String {
    url.trim_start_matches("http://").to_owned()
}

fn client(url: &str) -> InteropServiceClient {
    let channel = Channel::builder(url)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    InteropServicePlugin::client(channel)
}

/// How many of `sockets` the server has not closed (a read does not end within 20 ms).
async fn still_open(sockets: &mut [TcpStream]) -> usize {
    let mut open = 0;
    for socket in sockets {
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_millis(20), socket.read(&mut buf)).await;
        open += usize::from(read.is_err());
    }
    open
}

/// A fresh client (its own connection) answers a unary call.
async fn answers(url: &str) {
    let reply = client(url)
        .unary(Payload {
            text: "still here".into(),
            ..Payload::default()
        })
        .await
        .expect("a well-behaved client gets an answer");
    assert_eq!(reply.message().text, "still here");
}

/// Waits until the server closes `socket` (a read returns end of file or an error), bounded.
async fn closed_within(socket: &mut TcpStream, bound: Duration) -> Duration {
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(bound, async {
        loop {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the server did not close the connection within {bound:?}"
    );
    started.elapsed()
}

#[tokio::test]
async fn silent_and_partial_connections_close_within_the_handshake_timeout() {
    let url = serve_interop_with(Server::new().handshake_timeout(Duration::from_millis(300))).await;
    let addr = addr_of(&url);
    let mut silent = TcpStream::connect(&addr).await.unwrap();
    let mut partial = TcpStream::connect(&addr).await.unwrap();
    partial.write_all(b"P").await.unwrap();
    let mut partial_two = TcpStream::connect(&addr).await.unwrap();
    partial_two.write_all(b"PO").await.unwrap();
    // Other clients are served meanwhile.
    answers(&url).await;
    for socket in [&mut silent, &mut partial, &mut partial_two] {
        let took = closed_within(socket, Duration::from_secs(3)).await;
        assert!(
            took < Duration::from_millis(1500),
            "closed after {took:?}, the handshake timeout is 300 ms"
        );
    }
    answers(&url).await;
}

#[tokio::test]
async fn partial_http1_headers_close_within_the_header_read_timeout() {
    let url = serve_interop_with(
        Server::new()
            .handshake_timeout(Duration::from_secs(5))
            .header_read_timeout(Duration::from_millis(400)),
    )
    .await;
    let mut socket = TcpStream::connect(addr_of(&url)).await.unwrap();
    socket
        .write_all(b"POST /interop.v1.InteropService/Unary HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    answers(&url).await;
    let took = closed_within(&mut socket, Duration::from_secs(5)).await;
    assert!(took < Duration::from_secs(2), "closed after {took:?}");
}

#[tokio::test]
async fn a_trickling_unary_body_gets_deadline_exceeded_within_the_body_timeout() {
    let url =
        serve_interop_with(Server::new().request_body_timeout(Duration::from_millis(400))).await;
    let mut socket = TcpStream::connect(addr_of(&url)).await.unwrap();
    // Promises 100 bytes of JSON, sends one.
    socket
        .write_all(
            b"POST /interop.v1.InteropService/Unary HTTP/1.1\r\nHost: x\r\n\
              Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
        )
        .await
        .unwrap();
    let started = Instant::now();
    let mut response = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = [0u8; 4096];
        loop {
            let n = socket.read(&mut buf).await.unwrap_or(0);
            response.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&response);
            if n == 0 || text.contains("deadline_exceeded") {
                return;
            }
        }
    })
    .await;
    assert!(read.is_ok(), "no answer to a trickling body within 5 s");
    let text = String::from_utf8_lossy(&response);
    assert!(
        text.contains("deadline_exceeded") && text.contains("request body did not arrive"),
        "{text}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    answers(&url).await;
}

#[tokio::test]
async fn idle_connections_close_gracefully_but_open_streams_stay() {
    let url = serve_interop_with(Server::new().idle_timeout(Duration::from_millis(300))).await;
    // An HTTP/2 connection that made one call and then went quiet is closed with a GOAWAY.
    let target = addr_of(&url).parse().unwrap();
    let (front, accepted) = connect_plugin_tests::counting_forwarder(target).await;
    let via = format!("http://{front}");
    let interop = client(&via);
    interop.unary(Payload::default()).await.expect("first call");
    tokio::time::sleep(Duration::from_millis(900)).await;
    // The client reconnects by itself: the next call works on a second connection.
    interop
        .unary(Payload::default())
        .await
        .expect("a call after the idle close");
    assert_eq!(
        accepted.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "the idle connection was closed and a new one opened"
    );

    // A server stream that lasts longer than the idle timeout is a call in flight: its
    // connection is neither cut nor closed, and the next call goes over it too.
    let mut stream = interop
        .server_stream(Payload {
            text: "slow".into(),
            count: 1,
            sleep_ms: 1200,
            ..Payload::default()
        })
        .await
        .expect("the stream opens")
        .into_message();
    let first = stream.message().await.expect("the stream is not cut");
    assert_eq!(first.map(|m| m.text).as_deref(), Some("slow"));
    assert!(stream.message().await.unwrap().is_none());
    interop
        .unary(Payload::default())
        .await
        .expect("a call right after the stream");
    assert_eq!(
        accepted.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "no new connection: the stream's connection stayed open past the idle timeout"
    );
}

#[tokio::test]
async fn at_the_connection_cap_new_clients_evict_idle_sockets() {
    let url = serve_interop_with(
        Server::new()
            .max_connections(20)
            .handshake_timeout(Duration::from_secs(30)),
    )
    .await;
    let addr = addr_of(&url);
    let mut idle = Vec::new();
    for _ in 0..100 {
        idle.push(TcpStream::connect(&addr).await.unwrap());
    }
    // Without eviction this client would wait the 30 s handshake timeout behind them.
    let started = Instant::now();
    for _ in 0..5 {
        answers(&url).await;
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "answered after {:?}",
        started.elapsed()
    );
    // The evicted sockets were closed, not left hanging: at most the cap remains open.
    let open = still_open(&mut idle).await;
    assert!(
        open <= 20,
        "{open} idle sockets still open with a cap of 20"
    );
}

/// Calls stalled on purpose (a client-streaming call whose body never comes, no deadline) hold
/// their connections no better than idle sockets: at the cap they are evicted for new clients.
#[tokio::test]
async fn at_the_cap_stalled_calls_do_not_lock_out_new_clients() {
    let url = serve_interop_with(Server::new().max_connections(5)).await;
    let mut stalled = Vec::new();
    for _ in 0..20 {
        let mut socket = TcpStream::connect(addr_of(&url)).await.unwrap();
        socket
            .write_all(
                b"POST /interop.v1.InteropService/ClientStream HTTP/1.1\r\nHost: x\r\n\
                  Content-Type: application/connect+proto\r\nTransfer-Encoding: chunked\r\n\r\n",
            )
            .await
            .unwrap();
        stalled.push(socket);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let started = Instant::now();
    for _ in 0..3 {
        answers(&url).await;
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "new clients waited {:?} behind stalled calls",
        started.elapsed()
    );
    // The cap holds: stalled calls were evicted, not merely outnumbered.
    let open = still_open(&mut stalled).await;
    assert!(
        open <= 5,
        "{open} stalled calls still hold connections with a cap of 5"
    );
}

/// A peer that sends the HTTP/2 preface and nothing else never finishes the handshake; it is
/// closed by the idle timeout and the close deadline instead of living forever.
#[tokio::test]
async fn an_unfinished_http2_preface_is_closed() {
    let url = serve_interop_with(
        Server::new()
            .handshake_timeout(Duration::from_millis(300))
            .idle_timeout(Duration::from_millis(300)),
    )
    .await;
    let mut socket = TcpStream::connect(addr_of(&url)).await.unwrap();
    socket
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    answers(&url).await;
    let took = closed_within(&mut socket, Duration::from_secs(5)).await;
    assert!(took < Duration::from_secs(3), "closed after {took:?}");
}

#[tokio::test]
async fn http1_and_http2_clients_both_pass_the_sniff() {
    let url = serve_interop_with(Server::new().handshake_timeout(Duration::from_millis(300))).await;
    for version in [HttpVersion::Http1, HttpVersion::Http2] {
        let channel = Channel::builder(&url)
            .http_version(version)
            .build()
            .unwrap();
        let reply = InteropServicePlugin::client(channel)
            .unary(Payload::default())
            .await;
        assert!(reply.is_ok(), "{version:?}: {reply:?}");
    }
    let error = client(&url)
        .unary(Payload {
            fail_code: "aborted".into(),
            ..Payload::default()
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::Aborted);
}

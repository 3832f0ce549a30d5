//! P5 and the spec's advice on timeouts: a handler's outgoing calls inherit the deadline of
//! the call it serves, so a slow downstream cannot outlive the caller's patience.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use connect_plugin::{Channel, Code, Error, Request, Response, rpc::Server};
use connect_plugin_tests::interop::{
    InteropService, InteropServiceClient, InteropServicePlugin, InteropServiceServer, Payload,
    serve_interop,
};

/// Per forwarded call: whether the handler saw a deadline, and the downstream error code.
type Seen = Arc<Mutex<Vec<(bool, Option<Code>)>>>;

/// Forwards `unary` to a downstream interop server, recording what happened.
struct Proxy {
    downstream: InteropServiceClient,
    seen: Seen,
}

impl InteropService for Proxy {
    async fn unary(&self, request: Request<Payload>) -> Result<Response<Payload>, Error> {
        let had_deadline = connect_plugin::rpc::current_deadline().is_some();
        // No explicit timeout here: the inherited deadline bounds the call.
        let outcome = self.downstream.unary(request.into_message()).await;
        self.seen
            .lock()
            .unwrap()
            .push((had_deadline, outcome.as_ref().err().map(Error::code)));
        outcome.map(|r| Response::new(r.into_message()))
    }
}

#[tokio::test]
async fn a_handlers_calls_inherit_its_deadline() {
    let downstream = connect_plugin::dispense::<InteropServicePlugin>(
        &Channel::new(serve_interop().await).unwrap(),
    );
    let seen = Arc::new(Mutex::new(Vec::new()));
    let proxy = Proxy {
        downstream,
        seen: Arc::clone(&seen),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        Server::new()
            .add_service(InteropServiceServer::new(proxy).into_service())
            .serve(listener),
    );
    let client = connect_plugin::dispense::<InteropServicePlugin>(&Channel::new(url).unwrap());

    // A fast call goes through, and the handler saw a deadline.
    let fast = Request::new(Payload {
        text: "fast".into(),
        ..Default::default()
    })
    .with_timeout(Duration::from_secs(5));
    assert_eq!(client.unary(fast).await.unwrap().text, "fast");

    // A downstream that sleeps 10 s: the downstream call gives up at the caller's deadline.
    let slow = Request::new(Payload {
        sleep_ms: 10_000,
        ..Default::default()
    })
    .with_timeout(Duration::from_millis(300));
    let err = client.unary(slow).await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err}");
    // The proxy's own handler was cut off at the same deadline, or its downstream call failed
    // with deadline_exceeded first; either way nothing waited the full 10 s.
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen[0],
        (true, None),
        "the fast call saw a deadline and succeeded"
    );
    assert!(
        seen.len() == 1 || seen[1] == (true, Some(Code::DeadlineExceeded)),
        "{seen:?}"
    );
}

#[tokio::test]
async fn without_a_deadline_nothing_is_inherited() {
    assert!(connect_plugin::rpc::current_deadline().is_none());
}

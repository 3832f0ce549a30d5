//! P5 and the spec's advice on timeouts: a handler's outgoing calls inherit the deadline of
//! the call it serves, so a slow downstream cannot outlive the caller's patience.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use connect_plugin::{Channel, Code, Error, Request, Response, rpc::Server};
use connect_plugin_tests::interop::{
    InteropService, InteropServiceClient, InteropServicePlugin, InteropServiceServer, Payload,
};

/// What the downstream server saw of each call: the timeout it was given.
type Timeouts = Arc<Mutex<Vec<Option<Duration>>>>;

/// The downstream: records the timeout each call arrived with (from `Connect-Timeout-Ms`),
/// then answers, after `sleep_ms` if asked.
struct Downstream(Timeouts);

impl InteropService for Downstream {
    async fn unary(&self, request: Request<Payload>) -> Result<Response<Payload>, Error> {
        self.0.lock().unwrap().push(request.timeout());
        let payload = request.into_message();
        if payload.sleep_ms > 0 {
            tokio::time::sleep(Duration::from_millis(payload.sleep_ms as u64)).await;
        }
        Ok(Response::new(payload))
    }
}

/// Forwards `unary` to the downstream with no timeout of its own.
struct Proxy {
    downstream: InteropServiceClient,
}

impl InteropService for Proxy {
    async fn unary(&self, request: Request<Payload>) -> Result<Response<Payload>, Error> {
        // No explicit timeout here: the inherited deadline bounds the call.
        let answer = self.downstream.unary(request.into_message()).await?;
        Ok(Response::new(answer.into_message()))
    }
}

async fn serve(service: connect_plugin::rpc::Service) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(Server::new().add_service(service).serve(listener));
    url
}

/// A proxy in front of a recording downstream: the client of the proxy, and what the
/// downstream saw.
async fn proxy_chain() -> (InteropServiceClient, Timeouts) {
    let timeouts = Timeouts::default();
    let downstream_url =
        serve(InteropServiceServer::new(Downstream(Arc::clone(&timeouts))).into_service()).await;
    let proxy = Proxy {
        downstream: connect_plugin::dispense::<InteropServicePlugin>(
            &Channel::new(downstream_url).unwrap(),
        ),
    };
    let url = serve(InteropServiceServer::new(proxy).into_service()).await;
    (
        connect_plugin::dispense::<InteropServicePlugin>(&Channel::new(url).unwrap()),
        timeouts,
    )
}

#[tokio::test]
async fn a_handlers_calls_carry_what_is_left_of_its_deadline() {
    let (client, timeouts) = proxy_chain().await;
    let fast = Request::new(Payload {
        text: "fast".into(),
        ..Default::default()
    })
    .with_timeout(Duration::from_secs(5));
    assert_eq!(client.unary(fast).await.unwrap().text, "fast");
    let seen = timeouts.lock().unwrap()[0].expect("the nested call carried Connect-Timeout-Ms");
    assert!(
        seen <= Duration::from_secs(5) && seen > Duration::from_secs(4),
        "the nested call's timeout is what is left of 5 s: {seen:?}"
    );
}

#[tokio::test]
async fn a_nested_call_ends_at_the_callers_deadline() {
    let (client, timeouts) = proxy_chain().await;
    let slow = Request::new(Payload {
        sleep_ms: 10_000,
        ..Default::default()
    })
    .with_timeout(Duration::from_millis(300));
    let started = std::time::Instant::now();
    let err = client.unary(slow).await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let seen = timeouts.lock().unwrap()[0].expect("the nested call carried Connect-Timeout-Ms");
    assert!(
        seen <= Duration::from_millis(300),
        "the downstream was given at most the caller's 300 ms: {seen:?}"
    );
}

#[tokio::test]
async fn without_a_deadline_the_nested_call_has_none() {
    let (client, timeouts) = proxy_chain().await;
    client
        .unary(Payload {
            text: "no deadline".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(*timeouts.lock().unwrap(), [None]);
}

//! Reliability issue: retry and circuit breaker as wrappers of a channel's unary calls, against
//! a real server that fails on purpose (counting the attempts it really received).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use connect_plugin::rpc::policy::{BreakerState, CircuitBreaker, Retry};
use connect_plugin::rpc::{Channel, ChannelBuilder, Server};
use connect_plugin::{Code, Error, Request, Response};
use connect_plugin_tests::interop::{
    InteropService, InteropServicePlugin, InteropServiceServer, Payload, answered_by, serve_named,
};

/// Fails the first `count` calls for each `text` with `fail_code`, then answers; counts every
/// call it receives.
#[derive(Clone, Default)]
struct Flaky {
    seen: Arc<Mutex<HashMap<String, i32>>>,
}

impl Flaky {
    fn answer(&self, payload: Payload) -> Result<Response<Payload>, Error> {
        let mut seen = self.seen.lock().unwrap();
        let calls = seen.entry(payload.text.clone()).or_default();
        *calls += 1;
        if *calls <= payload.count {
            let code = Code::ALL
                .into_iter()
                .find(|c| c.as_str() == payload.fail_code)
                .unwrap_or(Code::Unknown);
            return Err(Error::new(code, format!("call {calls} fails on purpose")));
        }
        Ok(Response::new(payload))
    }

    fn calls(&self, text: &str) -> i32 {
        self.seen.lock().unwrap().get(text).copied().unwrap_or(0)
    }
}

impl InteropService for Flaky {
    async fn unary(&self, request: Request<Payload>) -> Result<Response<Payload>, Error> {
        self.answer(request.into_message())
    }
    async fn lookup(&self, request: Request<Payload>) -> Result<Response<Payload>, Error> {
        self.answer(request.into_message())
    }
}

async fn serve(flaky: &Flaky) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = Server::new().add_service(InteropServiceServer::new(flaky.clone()).into_service());
    tokio::spawn(server.serve(listener));
    url
}

fn client(
    url: &str,
    configure: impl FnOnce(ChannelBuilder) -> ChannelBuilder,
) -> connect_plugin_tests::interop::InteropServiceClient {
    let channel: Channel = configure(Channel::builder(url)).build().unwrap();
    connect_plugin::dispense::<InteropServicePlugin>(&channel)
}

fn failing(text: &str, times: i32, code: Code) -> Payload {
    Payload {
        text: text.into(),
        count: times,
        fail_code: code.as_str().into(),
        ..Default::default()
    }
}

fn quick_retry() -> Retry {
    Retry::new()
        .backoff(Duration::from_millis(10), 2, Duration::from_millis(100))
        .jitter(0.0)
}

#[tokio::test]
async fn retry_hides_transient_failures_of_safe_methods_only() {
    let flaky = Flaky::default();
    let url = serve(&flaky).await;
    let retrying = client(&url, |c| c.wrap(quick_retry()));

    // A side-effect-free method failing twice with `unavailable`: the third attempt answers.
    let answer = retrying
        .lookup(failing("safe", 2, Code::Unavailable))
        .await
        .expect("retried until it succeeded");
    assert_eq!(answer.text, "safe");
    assert_eq!(flaky.calls("safe"), 3);

    // Three attempts at most.
    let err = retrying
        .lookup(failing("down", 9, Code::Unavailable))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert_eq!(flaky.calls("down"), 3);

    // Not a retryable code: one attempt.
    let err = retrying
        .lookup(failing("mistake", 9, Code::InvalidArgument))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(flaky.calls("mistake"), 1);

    // A method not marked idempotent is not retried, unless asked.
    let err = retrying
        .unary(failing("effect", 1, Code::Unavailable))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert_eq!(flaky.calls("effect"), 1);
    let asked = client(&url, |c| c.wrap(quick_retry().non_idempotent(true)));
    asked
        .unary(failing("effect-ok", 1, Code::Unavailable))
        .await
        .expect("retried when asked");
    assert_eq!(flaky.calls("effect-ok"), 2);
}

#[tokio::test]
async fn retries_never_go_past_the_calls_deadline() {
    let flaky = Flaky::default();
    let url = serve(&flaky).await;
    let slow_retry = client(&url, |c| {
        c.wrap(
            Retry::new()
                .backoff(Duration::from_millis(200), 2, Duration::from_secs(1))
                .jitter(0.0),
        )
        .timeout(Duration::from_millis(300))
    });
    // The connection first, so its setup is not part of the timing.
    slow_retry
        .lookup(failing("warm", 0, Code::Unavailable))
        .await
        .unwrap();
    let started = Instant::now();
    let err = slow_retry
        .lookup(failing("deadline", 9, Code::Unavailable))
        .await
        .unwrap_err();
    // One attempt, one 200 ms backoff, a second attempt; a third would end past 300 ms.
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    assert_eq!(flaky.calls("deadline"), 2);
    assert!(
        started.elapsed() < Duration::from_millis(450),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn the_breaker_opens_fails_fast_and_closes_after_probes() {
    let flaky = Flaky::default();
    let url = serve(&flaky).await;
    let changes = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&changes);
    let breaker = client(&url, |c| {
        c.wrap(
            CircuitBreaker::new()
                .open_for(Duration::from_millis(300))
                .on_state_change(move |old, new| seen.lock().unwrap().push((old, new))),
        )
    });
    for _ in 0..5 {
        let err = breaker
            .lookup(failing("down", 5, Code::Unavailable))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unavailable);
    }
    // Open: refused without reaching the server, at once.
    let started = Instant::now();
    let err = breaker
        .lookup(failing("down", 5, Code::Unavailable))
        .await
        .unwrap_err();
    let refused_in = started.elapsed();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(err.message().contains("circuit breaker open"), "{err}");
    assert_eq!(flaky.calls("down"), 5, "the open breaker sent nothing");
    // Without a network round trip (a loaded CI machine gets a generous bound).
    assert!(refused_in < Duration::from_millis(50), "{refused_in:?}");

    // After the open time, two successful probes close it again.
    tokio::time::sleep(Duration::from_millis(350)).await;
    breaker
        .lookup(failing("down", 5, Code::Unavailable))
        .await
        .unwrap();
    breaker
        .lookup(failing("down", 5, Code::Unavailable))
        .await
        .unwrap();
    use BreakerState::{Closed, HalfOpen, Open};
    assert_eq!(
        *changes.lock().unwrap(),
        [(Closed, Open), (Open, HalfOpen), (HalfOpen, Closed)]
    );
    println!("open breaker refused a call in {refused_in:?}");
}

/// The documented order, auth -> breaker -> retry: the breaker sees one outcome per call
/// (three failed attempts count once), and an auth wrapper outside both runs once per call.
#[tokio::test]
async fn wrappers_run_in_order_auth_then_breaker_then_retry() {
    use connect_plugin::rpc::interceptor::{Next, UnaryCall, Wrap, WrapFuture};

    struct Auth(Arc<Mutex<u32>>);
    impl Wrap for Auth {
        fn unary<'a>(&'a self, mut call: UnaryCall, next: Next<'a>) -> WrapFuture<'a> {
            *self.0.lock().unwrap() += 1;
            call.headers
                .insert("authorization", http::HeaderValue::from_static("Bearer t"));
            next.run(call)
        }
    }
    let flaky = Flaky::default();
    let url = serve(&flaky).await;
    let auth_runs = Arc::new(Mutex::new(0));
    let breaker = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&breaker);
    let ordered = client(&url, |c| {
        c.wrap(Auth(Arc::clone(&auth_runs)))
            .wrap(
                CircuitBreaker::new()
                    .failure_threshold(2)
                    .on_state_change(move |old, new| seen.lock().unwrap().push((old, new))),
            )
            .wrap(quick_retry())
    });
    let err = ordered
        .lookup(failing("once", 9, Code::Unavailable))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert_eq!(flaky.calls("once"), 3, "retried inside the breaker");
    assert_eq!(*auth_runs.lock().unwrap(), 1, "auth ran once for the call");
    assert!(
        breaker.lock().unwrap().is_empty(),
        "three attempts, one failure"
    );
    let _ = ordered.lookup(failing("twice", 9, Code::Unavailable)).await;
    assert_eq!(
        *breaker.lock().unwrap(),
        [(BreakerState::Closed, BreakerState::Open)],
        "the second failed call opens it"
    );
}

#[tokio::test]
async fn failover_moves_to_a_healthy_endpoint_and_back() {
    use connect_plugin::rpc::policy::Failover;

    let any: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    // A's port must stay free for A's return: one no other test is handed meanwhile.
    let stable = connect_plugin_tests::listen_on_a_stable_port()
        .await
        .local_addr()
        .unwrap();
    let (stop_a, a, task_a) = serve_named("a", stable).await;
    let (_stop_b, b, _task_b) = serve_named("b", any).await;
    let channel = Failover::new(
        [(format!("http://{a}"), 10), (format!("http://{b}"), 1)],
        |endpoint| {
            endpoint.wrap(
                CircuitBreaker::new()
                    .failure_threshold(1)
                    .open_for(Duration::from_millis(300)),
            )
        },
    )
    .unwrap()
    .channel(|c| c)
    .unwrap();
    let client = connect_plugin::dispense::<InteropServicePlugin>(&channel);
    assert_eq!(
        answered_by(&client).await.unwrap(),
        "a",
        "the preferred endpoint"
    );

    // A goes away: calls move to B without failing; A's breaker then skips it at once.
    stop_a.send(()).unwrap();
    task_a.await.unwrap();
    assert_eq!(answered_by(&client).await.unwrap(), "b");
    assert_eq!(answered_by(&client).await.unwrap(), "b");

    // A comes back on its address: after the breaker's open time, calls return to it.
    let (_stop_a, _, _task_a) = serve_named("a", a).await;
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(
        answered_by(&client).await.unwrap(),
        "a",
        "back to the preferred endpoint"
    );
}

/// Discovery feeds failover: every endpoint a discovery knows, by weight.
#[tokio::test]
async fn a_failover_channel_from_static_discovery() {
    use connect_plugin::client::discovery::{Endpoint, StaticDiscovery, failover_channel};

    let any: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    let (stop_heavy, heavy, task) = serve_named("heavy", any).await;
    let (_stop_light, light, _task) = serve_named("light", any).await;
    let discovery = StaticDiscovery::new();
    discovery.add_endpoint("echo", Endpoint::new(format!("http://{light}")));
    discovery.add_endpoint(
        "echo",
        Endpoint {
            weight: 5,
            ..Endpoint::new(format!("http://{heavy}"))
        },
    );
    let channel = failover_channel(&discovery, "echo", |e| e.wrap(CircuitBreaker::new()), |c| c)
        .await
        .unwrap();
    let client = connect_plugin::dispense::<InteropServicePlugin>(&channel);
    assert_eq!(answered_by(&client).await.unwrap(), "heavy");
    stop_heavy.send(()).unwrap();
    task.await.unwrap();
    assert_eq!(answered_by(&client).await.unwrap(), "light");
}

//! Reliability issue: server interceptors for users' own services, authentication (bearer
//! tokens, API keys; the principal reaches the handler) and rate limiting per verified caller,
//! against real clients over real sockets.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use connect_plugin::rpc::policy::{ApiKey, Auth, BearerToken, RateLimit};
use connect_plugin::rpc::server::{CallContext, CallSummary, ServerInterceptor};
use connect_plugin::rpc::{Channel, ChannelBuilder, Server};
use connect_plugin::{Code, Error, Request, Response};
use connect_plugin_tests::interop::{
    InteropService, InteropServiceClient, InteropServicePlugin, InteropServiceServer, Payload,
};

/// Answers with the principal the interceptors established ("" without one).
struct WhoAmI;

impl InteropService for WhoAmI {
    async fn unary(&self, request: Request<Payload>) -> Result<Response<Payload>, Error> {
        Ok(Response::new(Payload {
            text: request.principal().unwrap_or_default().to_owned(),
            ..Default::default()
        }))
    }
    async fn lookup(&self, request: Request<Payload>) -> Result<Response<Payload>, Error> {
        self.unary(request).await
    }
}

async fn serve(server: Server) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        server
            .add_service(InteropServiceServer::new(WhoAmI).into_service())
            .serve(listener),
    );
    url
}

fn client(
    url: &str,
    configure: impl FnOnce(ChannelBuilder) -> ChannelBuilder,
) -> InteropServiceClient {
    connect_plugin::dispense::<InteropServicePlugin>(
        &configure(Channel::builder(url)).build().unwrap(),
    )
}

fn auth() -> Auth {
    Auth::new()
        .bearer(|token| match token {
            "alice-token" => Some("alice".to_owned()),
            "bob-token" => Some("bob".to_owned()),
            _ => None,
        })
        .api_key("x-api-key", |key| {
            (key == "key-1").then(|| "batch".to_owned())
        })
        .open("/interop.v1.InteropService/Lookup")
}

#[tokio::test]
async fn auth_names_the_principal_and_refuses_missing_or_bad_credentials() {
    let url = serve(Server::new().intercept(auth())).await;
    let who = |c: &InteropServiceClient| {
        let c = c.clone();
        async move {
            c.unary(Payload::default())
                .await
                .map(|r| r.into_message().text)
        }
    };

    let alice = client(&url, |c| {
        c.interceptor(BearerToken::new("alice-token").unwrap())
    });
    assert_eq!(who(&alice).await.unwrap(), "alice");
    let batch = client(&url, |c| {
        c.interceptor(ApiKey::new("x-api-key", "key-1").unwrap())
    });
    assert_eq!(who(&batch).await.unwrap(), "batch");

    let anonymous = client(&url, |c| c);
    let err = who(&anonymous).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");
    assert!(
        err.message()
            .contains("Authorization: Bearer <token>, or x-api-key: <key>"),
        "{err}"
    );
    let guessing = client(&url, |c| c.interceptor(BearerToken::new("guess").unwrap()));
    let err = who(&guessing).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");
    assert!(err.message().contains("not valid"), "{err}");

    // A stream is refused in its end-stream message, as its handler would have refused it.
    let streamed = async {
        let mut stream = anonymous
            .server_stream(Payload::default())
            .await?
            .into_message();
        stream.message().await
    };
    let err = streamed.await.expect_err("a refused stream");
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");
    // On the wire: HTTP 200 and the error in the end-stream message (Connect's streaming rule).
    let raw = connect_plugin_tests::raw_http1(
        url.trim_start_matches("http://").parse().unwrap(),
        "POST",
        "/interop.v1.InteropService/ServerStream",
        &[
            ("content-type", "application/connect+json"),
            ("connect-protocol-version", "1"),
        ],
        b"\x00\x00\x00\x00\x02{}",
    )
    .await;
    assert_eq!(raw.status, 200, "{}", raw.text());
    assert!(raw.text().contains("unauthenticated"), "{}", raw.text());

    // An open procedure needs nothing, and names no one.
    let open = anonymous.lookup(Payload::default()).await.unwrap();
    assert_eq!(open.text, "");
}

#[tokio::test]
async fn the_rate_limit_is_per_verified_caller() {
    let url = serve(
        Server::new()
            .intercept(auth())
            .intercept(RateLimit::per_second(0.01, 3)),
    )
    .await;
    let alice = client(&url, |c| {
        c.interceptor(BearerToken::new("alice-token").unwrap())
    });
    for _ in 0..3 {
        alice.unary(Payload::default()).await.unwrap();
    }
    let err = alice.unary(Payload::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    assert!(err.message().contains("principal alice"), "{err}");
    let hint: u64 = err
        .metadata()
        .get("retry-after-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("a retry hint");
    assert!(hint >= 1, "{hint}");

    // Bob has his own bucket.
    let bob = client(&url, |c| {
        c.interceptor(BearerToken::new("bob-token").unwrap())
    });
    bob.unary(Payload::default())
        .await
        .expect("bob is not limited by alice");
}

#[tokio::test]
async fn credentials_are_read_strictly() {
    let url = serve(
        Server::new().intercept(
            Auth::new()
                .bearer(|token| (token == "alice-token").then(|| "alice".to_owned()))
                .api_key("X-Api-Key", |key| {
                    (key == "key-1").then(|| "batch".to_owned())
                })
                .optional(),
        ),
    )
    .await;
    let plain = client(&url, |c| c);
    let with = |headers: &[(&'static str, &'static str)]| {
        let mut request = Request::new(Payload::default());
        for (name, value) in headers {
            request
                .metadata_mut()
                .append(*name, http::HeaderValue::from_static(value));
        }
        let plain = plain.clone();
        async move { plain.unary(request).await.map(|r| r.into_message().text) }
    };
    // The scheme in any case; the API key header named in any case.
    assert_eq!(
        with(&[("authorization", "bearer alice-token")])
            .await
            .unwrap(),
        "alice"
    );
    assert_eq!(with(&[("x-api-key", "key-1")]).await.unwrap(), "batch");
    // Optional lets the anonymous through, but not a bad or doubled credential.
    assert_eq!(with(&[]).await.unwrap(), "");
    for bad in [
        &[("authorization", "Bearer guess")][..],
        &[("authorization", "Basic YWxpY2U6cHc=")],
        &[
            ("authorization", "Bearer alice-token"),
            ("authorization", "Bearer other"),
        ],
        &[("x-api-key", "key-1"), ("x-api-key", "key-2")],
    ] {
        let err = with(bad).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{bad:?}: {err}");
    }
}

/// Writes down what it sees: `<name> before <procedure>` and `<name> after <procedure>
/// <outcome>`; `refuse` refuses calls carrying `x-refuse`.
struct Recorder {
    name: &'static str,
    refuse: bool,
    log: Arc<Mutex<Vec<String>>>,
}

impl Recorder {
    fn new(name: &'static str, refuse: bool, log: &Arc<Mutex<Vec<String>>>) -> Self {
        Self {
            name,
            refuse,
            log: Arc::clone(log),
        }
    }
}

impl ServerInterceptor for Recorder {
    fn before(&self, call: &mut CallContext<'_>) -> Result<(), Error> {
        let line = format!("{} before {}", self.name, call.procedure());
        self.log.lock().unwrap().push(line);
        if self.refuse && call.headers().contains_key("x-refuse") {
            return Err(Error::new(Code::PermissionDenied, "refused on purpose"));
        }
        Ok(())
    }

    fn after(&self, call: &CallSummary, outcome: Result<(), &Error>) {
        let outcome = outcome.map_or_else(|e| e.code().as_str(), |()| "ok");
        let line = format!("{} after {} {outcome}", self.name, call.procedure());
        self.log.lock().unwrap().push(line);
    }
}

/// Takes the log, waiting up to 5 s for it to hold `lines` lines.
async fn take(log: &Arc<Mutex<Vec<String>>>, lines: usize) -> Vec<String> {
    let started = std::time::Instant::now();
    while log.lock().unwrap().len() < lines && started.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    std::mem::take(&mut *log.lock().unwrap())
}

/// The order, and outcomes: `before` in the order added, `after` in reverse, each with the
/// call's outcome (a handler's error, a later interceptor's refusal, a stream's end, a client
/// gone).
#[tokio::test]
async fn interceptors_see_each_calls_outcome_innermost_first() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let url = connect_plugin_tests::interop::serve_interop_with(
        Server::new()
            .intercept(Recorder::new("A", false, &log))
            .intercept(Recorder::new("B", true, &log)),
    )
    .await;
    let interop = client(&url, |c| c);
    const UNARY: &str = "/interop.v1.InteropService/Unary";
    const STREAM: &str = "/interop.v1.InteropService/ServerStream";
    const BIDI: &str = "/interop.v1.InteropService/Bidi";

    interop.unary(Payload::default()).await.unwrap();
    assert_eq!(
        take(&log, 4).await,
        [
            format!("A before {UNARY}"),
            format!("B before {UNARY}"),
            format!("B after {UNARY} ok"),
            format!("A after {UNARY} ok"),
        ]
    );

    let failing = Payload {
        fail_code: "not_found".into(),
        ..Default::default()
    };
    interop.unary(failing).await.unwrap_err();
    assert_eq!(
        take(&log, 4).await[2..],
        [
            format!("B after {UNARY} not_found"),
            format!("A after {UNARY} not_found"),
        ]
    );

    // B refuses: A (outside) sees the refusal, and so does B; the handler never ran.
    let mut refused = Request::new(Payload::default());
    refused
        .metadata_mut()
        .insert("x-refuse", http::HeaderValue::from_static("1"));
    let err = interop.unary(refused).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(
        take(&log, 4).await,
        [
            format!("A before {UNARY}"),
            format!("B before {UNARY}"),
            format!("B after {UNARY} permission_denied"),
            format!("A after {UNARY} permission_denied"),
        ]
    );

    // A stream's outcome comes with its end-stream message, after its messages.
    let mut stream = interop
        .server_stream(Payload {
            count: 3,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_message();
    let mut read = 0;
    while stream.message().await.unwrap().is_some() {
        read += 1;
    }
    assert_eq!(read, 3);
    assert_eq!(
        take(&log, 4).await[2..],
        [
            format!("B after {STREAM} ok"),
            format!("A after {STREAM} ok")
        ]
    );

    // A client that goes away mid-stream: the call ends `canceled`.
    let (_requests_open, requests) = connect_plugin::MessageStream::channel(1);
    let open = interop.bidi(requests).await.unwrap();
    drop(open);
    assert_eq!(
        take(&log, 4).await[2..],
        [
            format!("B after {BIDI} canceled"),
            format!("A after {BIDI} canceled"),
        ]
    );
}

/// A host's interceptors see its own procedures and the calls it forwards between plugins,
/// with the forwarded procedure.
#[tokio::test]
async fn a_hosts_interceptors_see_routed_calls() {
    use connect_plugin::host::Host;
    use connect_plugin::{Client, ClientConfig, ServeConfig};

    let log = Arc::new(Mutex::new(Vec::new()));
    let host = Host::builder()
        .intercept(Recorder::new("H", true, &log))
        .start()
        .await
        .unwrap();
    host.registry().join_policy().set_open(true);
    let (listener, provider_url) = {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        (listener, url)
    };
    tokio::spawn(connect_plugin::serve(
        ServeConfig::new()
            .service(InteropServiceServer::new(WhoAmI).into_service())
            .listener(listener),
    ));
    let provider = Client::new(
        ClientConfig::new(host.url())
            .self_id("echo", "1.0.0")
            .provides(["interop"]),
    )
    .unwrap();
    connect_plugin_tests::register_interop(&provider, provider_url).await;
    let app = Client::new(ClientConfig::new(host.url()).self_id("app", "1.0.0")).unwrap();
    let interop = app.provider::<InteropServicePlugin>("").await.unwrap();
    log.lock().unwrap().clear();

    interop.unary(Payload::default()).await.unwrap();
    const UNARY: &str = "/interop.v1.InteropService/Unary";
    assert_eq!(
        take(&log, 2).await,
        [format!("H before {UNARY}"), format!("H after {UNARY} ok")]
    );
    // A refusal at the host: the call is not forwarded.
    let mut refused = Request::new(Payload::default());
    refused
        .metadata_mut()
        .insert("x-refuse", http::HeaderValue::from_static("1"));
    let err = interop.unary(refused).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    assert_eq!(
        take(&log, 2).await,
        [
            format!("H before {UNARY}"),
            format!("H after {UNARY} permission_denied")
        ]
    );
    // The host's own procedures go through them too (a registry lookup here).
    app.registry()
        .discover_service(
            connect_plugin::proto::connectplugin::v1::DiscoverServiceRequest {
                service_type: "interop".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let seen = take(&log, 2).await;
    assert!(
        seen[0].starts_with("H before /connectplugin.v1.ServiceRegistry/DiscoverService"),
        "{seen:?}"
    );
    host.shutdown().await;
}

//! Plugin-to-plugin calls through the host: discovered with the registry, proxied at
//! `/services/{type}/{provider}/...` for every RPC shape, with the caller's identity checked
//! and passed on, and unhealthy or unknown providers answered with `unavailable`.

use std::sync::atomic::Ordering;
use std::time::Duration;

use connect_plugin::proto::connectplugin::v1::HealthState;
use connect_plugin::{
    Client, ClientConfig, Code, Error, MessageStream, Request, Response, ServeConfig, ServerStream,
    ServiceRegistry, Streaming, host::registry::SelectionStrategy,
};
use connect_plugin_tests::interop::{
    InteropService, InteropServicePlugin, InteropServiceServer, Named, Payload,
};
use connect_plugin_tests::raw_http1;

/// A provider that answers with the caller id the host passed on.
struct WhoCalls;

impl InteropService for WhoCalls {
    async fn unary(&self, request: Request<Payload>) -> Result<Response<Payload>, Error> {
        let caller = request
            .metadata()
            .get("x-plugin-caller-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none")
            .to_owned();
        let leaked = request.metadata().contains_key("authorization");
        Ok(Response::new(Payload {
            text: caller,
            count: i32::from(leaked),
            ..request.into_message()
        }))
    }
    async fn server_stream(
        &self,
        request: Request<Payload>,
    ) -> Result<Response<ServerStream<Payload>>, Error> {
        let p = request.into_message();
        Ok(Response::new(
            std::iter::repeat_n(p.clone(), p.count as usize).collect(),
        ))
    }
    async fn client_stream(
        &self,
        request: Request<Streaming<Payload>>,
    ) -> Result<Response<Payload>, Error> {
        let mut texts = Vec::new();
        let mut stream = request.into_message();
        while let Some(p) = stream.message().await? {
            texts.push(p.text);
        }
        Ok(Response::new(Payload {
            text: texts.join(","),
            ..Default::default()
        }))
    }
    async fn bidi(
        &self,
        request: Request<Streaming<Payload>>,
    ) -> Result<Response<ServerStream<Payload>>, Error> {
        let mut requests = request.into_message();
        let (tx, stream) = MessageStream::channel(1);
        tokio::spawn(async move {
            while let Ok(Some(p)) = requests.message().await {
                if tx.send(p).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(stream))
    }
}

async fn listen() -> (tokio::net::TcpListener, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    (listener, url)
}

/// A host serving `registry`; its URL.
async fn serve_host(registry: ServiceRegistry) -> String {
    let (host_listener, host_url) = listen().await;
    tokio::spawn(connect_plugin::serve(
        ServeConfig::new()
            .registry(registry)
            .listener(host_listener),
    ));
    host_url
}

/// A provider plugin named `name` serving `service`, registered with the host as a provider
/// of "interop" at its own base URL: its client and runtime id.
async fn register_provider(
    host_url: &str,
    name: &str,
    service: connect_plugin::rpc::Service,
) -> (Client, String) {
    let (provider_listener, provider_url) = listen().await;
    tokio::spawn(connect_plugin::serve(
        ServeConfig::new()
            .service(service)
            .listener(provider_listener),
    ));
    let provider = Client::new(
        ClientConfig::new(host_url)
            .self_id(name, "1.0.0")
            .provides(["interop"]),
    )
    .unwrap();
    connect_plugin_tests::register_interop(&provider, provider_url).await;
    let provider_id = provider.runtime_identity().unwrap().runtime_id.clone();
    (provider, provider_id)
}

/// A host with a registry, and a provider plugin of "interop" registered with it: the host's
/// URL, and the provider's client and runtime id.
async fn host_with_provider() -> (String, Client, String) {
    let host_url = serve_host(connect_plugin_tests::open_registry()).await;
    let service = InteropServiceServer::new(WhoCalls).into_service();
    let (provider, provider_id) = register_provider(&host_url, "echo", service).await;
    (host_url, provider, provider_id)
}

#[tokio::test]
async fn routed_calls_take_turns_between_providers_with_round_robin() {
    let registry = connect_plugin_tests::open_registry();
    registry.set_strategy("interop", SelectionStrategy::RoundRobin);
    let host_url = serve_host(registry).await;
    let mut providers = Vec::new();
    for name in ["a", "b"] {
        let service = InteropServiceServer::new(Named(name)).into_service();
        providers.push(register_provider(&host_url, name, service).await);
    }
    let app = Client::new(ClientConfig::new(&host_url).self_id("app", "1.0.0")).unwrap();
    let mut answers = Vec::new();
    for _ in 0..4 {
        let interop = app.provider::<InteropServicePlugin>("").await.unwrap();
        answers.push(
            interop
                .unary(Payload::default())
                .await
                .unwrap()
                .into_message()
                .text,
        );
    }
    assert_eq!(answers, ["a", "b", "a", "b"]);
}

#[tokio::test]
async fn a_plugin_reaches_the_host_and_other_plugins_over_one_connection() {
    let (host_url, _provider, _) = host_with_provider().await;
    // A counting TCP forwarder in front of the host sees every connection the app opens.
    let host_addr: std::net::SocketAddr = host_url.trim_start_matches("http://").parse().unwrap();
    let (front, accepted) = connect_plugin_tests::counting_forwarder(host_addr).await;
    let front_url = format!("http://{front}");

    // Handshake, discovery and routed calls through two typed clients.
    let app = Client::new(ClientConfig::new(&front_url).self_id("app", "1.0.0")).unwrap();
    for _ in 0..2 {
        let interop = app.provider::<InteropServicePlugin>("1.0.0").await.unwrap();
        let app_id = app.runtime_identity().unwrap().runtime_id.clone();
        let echoed = interop.unary(Payload::default()).await.unwrap();
        assert_eq!(
            echoed.text, app_id,
            "the routed call carries the app's identity"
        );
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "the app's calls to the host and through it share one connection"
    );
}

#[tokio::test]
async fn calls_flow_plugin_to_plugin_through_the_host() {
    let (host_url, provider, provider_id) = host_with_provider().await;

    // The consumer: a typed client of "a provider of interop", routed through the host.
    let app = Client::new(ClientConfig::new(&host_url).self_id("app", "1.0.0")).unwrap();
    let interop = app.provider::<InteropServicePlugin>("1.0.0").await.unwrap();
    let app_id = app.runtime_identity().unwrap().runtime_id.clone();
    let echoed = interop
        .unary(Payload {
            text: "x".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        echoed.text, app_id,
        "the provider sees the checked caller id"
    );
    assert_eq!(
        echoed.count, 0,
        "the caller's credentials are not forwarded"
    );

    let mut stream = interop
        .server_stream(Payload {
            count: 3,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_message();
    let mut n = 0;
    while stream.message().await.unwrap().is_some() {
        n += 1;
    }
    assert_eq!(n, 3);
    let joined = interop
        .client_stream(
            ["a", "b"]
                .into_iter()
                .map(|t| Payload {
                    text: t.into(),
                    ..Default::default()
                })
                .collect::<MessageStream<_>>(),
        )
        .await
        .unwrap();
    assert_eq!(joined.text, "a,b");
    let (tx, requests) = MessageStream::channel(1);
    let (opened, sent) = tokio::join!(
        interop.bidi(requests),
        tx.send(Payload {
            text: "duplex".into(),
            ..Default::default()
        })
    );
    sent.unwrap();
    let mut replies = opened.unwrap().into_message();
    assert_eq!(
        replies.message().await.unwrap().unwrap().text,
        "duplex",
        "full duplex through the proxy"
    );
    drop(tx);

    // 12 MiB each way, more than any HTTP/2 flow-control window on the way: both hops must
    // hand capacity back as they read, and feed the request only as capacity opens.
    let big = Payload {
        data: vec![7u8; 512 * 1024].into(),
        ..Default::default()
    };
    let (tx, requests) = MessageStream::channel(2);
    let opened = interop.bidi(requests);
    let feed = async {
        for i in 0..24 {
            let mut payload = big.clone();
            payload.count = i;
            tx.send(payload).await.unwrap();
        }
        drop(tx);
    };
    let read = async {
        let mut replies = opened.await.unwrap().into_message();
        let mut seen = 0;
        while let Some(reply) = replies.message().await.unwrap() {
            assert_eq!((reply.count, reply.data.len()), (seen, 512 * 1024));
            seen += 1;
        }
        seen
    };
    let ((), seen) =
        tokio::time::timeout(Duration::from_secs(30), async { tokio::join!(feed, read) })
            .await
            .expect("12 MiB through the proxy in 30 s");
    assert_eq!(seen, 24);

    // A caller on HTTP/1.1 (with its connection headers) is relayed to the provider over
    // HTTP/2, which forbids those headers.
    let addr = host_url.trim_start_matches("http://").parse().unwrap();
    let token = app.runtime_identity().unwrap().token.clone();
    let r = raw_http1(
        addr,
        "POST",
        &format!("/services/interop/{provider_id}/interop.v1.InteropService/Unary"),
        &[
            ("content-type", "application/json"),
            ("x-plugin-runtime-id", &app_id),
            ("authorization", &format!("Bearer {token}")),
            ("keep-alive", "timeout=5"),
        ],
        b"{}",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains(&app_id), "{}", r.text());

    // An unhealthy provider is not routed; it is again once healthy.
    provider
        .report_health(HealthState::Unhealthy, "maintenance")
        .await
        .unwrap();
    let err = interop.unary(Payload::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    provider
        .report_health(HealthState::Healthy, "")
        .await
        .unwrap();
    interop.unary(Payload::default()).await.unwrap();

    // Without a valid runtime token, or to an unknown provider: refused.
    let path = format!("/services/interop/{provider_id}/interop.v1.InteropService/Unary");
    let r = raw_http1(
        addr,
        "POST",
        &path,
        &[
            ("content-type", "application/json"),
            ("x-plugin-runtime-id", &app_id),
            ("authorization", "Bearer forged"),
        ],
        b"{}",
    )
    .await;
    assert_eq!(r.status, 401, "{}", r.text());
    let r = raw_http1(
        addr,
        "POST",
        "/services/interop/nobody-00000000/interop.v1.InteropService/Unary",
        &[("content-type", "application/json")],
        b"{}",
    )
    .await;
    assert_eq!(r.status, 401, "no identity at all: {}", r.text());
    let mut unknown = Request::new(Payload::default());
    app.runtime_identity()
        .unwrap()
        .apply(unknown.metadata_mut());
    let channel =
        connect_plugin::Channel::new(format!("{host_url}/services/interop/nobody-00000000"))
            .unwrap();
    let err = connect_plugin::dispense::<InteropServicePlugin>(&channel)
        .unary(unknown)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err}");
}

/// Abuse suite (security issue, item 3): the gateway forwards only procedures under the
/// provider's registered `endpoint_path`, so a caller cannot reach the provider's handshake,
/// its identity control RPCs, or any other service it happens to serve.
#[tokio::test]
async fn only_procedures_under_the_registered_endpoint_path_are_routed() {
    use connect_plugin::proto::connectplugin::v1::{
        HandshakeRequest, HandshakeServiceClient, PluginIdentityClient, SetRuntimeIdentityRequest,
    };

    let (host_url, _provider, provider_id) = host_with_provider().await;
    let caller = Client::new(ClientConfig::new(&host_url).self_id("caller", "1.0.0")).unwrap();
    caller.connect().await.unwrap();
    let mut headers = http::HeaderMap::new();
    caller.runtime_identity().unwrap().apply(&mut headers);
    let routed = caller
        .channel()
        .derive(&format!("/services/interop/{provider_id}"), headers)
        .unwrap();

    let refused = HandshakeServiceClient::new(routed.clone())
        .handshake(HandshakeRequest::default())
        .await
        .expect_err("the provider's handshake is not exposed");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused}");
    assert!(refused.message().contains("endpoint_path"), "{refused}");
    let refused = PluginIdentityClient::new(routed.clone())
        .set_runtime_identity(SetRuntimeIdentityRequest {
            runtime_id: "hijacked".into(),
            ..Default::default()
        })
        .await
        .expect_err("control RPCs are not exposed");
    assert_eq!(refused.code(), Code::PermissionDenied);

    // A registered procedure still routes, and nothing past it sneaks through.
    let interop = connect_plugin::dispense::<InteropServicePlugin>(&routed);
    interop.unary(Payload::default()).await.unwrap();
    let sneaky = routed
        .derive(
            "/interop.v1.InteropService/../connectplugin.v1.HandshakeService",
            http::HeaderMap::new(),
        )
        .unwrap();
    let refused = HandshakeServiceClient::new(sneaky)
        .handshake(HandshakeRequest::default())
        .await
        .expect_err("a path below the endpoint is not a procedure of it");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused}");
}

#[tokio::test]
async fn a_registration_must_name_one_service() {
    use connect_plugin::proto::connectplugin::v1::RegisterServiceRequest;

    let host_url = serve_host(connect_plugin_tests::open_registry()).await;
    let provider = Client::new(
        ClientConfig::new(&host_url)
            .self_id("greedy", "1.0.0")
            .provides(["interop"]),
    )
    .unwrap();
    for path in [
        "",
        "/",
        "//",
        "/a/b/",
        "/nodot/",
        "/../x.y/",
        "/connectplugin.v1.PluginIdentity/",
        "/grpc.health.v1.Health/",
    ] {
        let request = provider
            .authenticated(RegisterServiceRequest {
                service_type: "interop".into(),
                version: "1.0.0".into(),
                endpoint_path: path.into(),
                metadata: [("base_url".to_owned(), "http://127.0.0.1:1".to_owned())].into(),
            })
            .await
            .unwrap();
        let refused = provider
            .registry()
            .register_service(request)
            .await
            .expect_err(path);
        assert_eq!(refused.code(), Code::InvalidArgument, "{path:?}: {refused}");
    }
}

/// Abuse suite (security issue, item 3): the gateway honours the caller's
/// `Connect-Timeout-Ms`. A provider process stopped with SIGSTOP accepts connections (the
/// kernel does) and never answers; the routed call ends with `deadline_exceeded` within its
/// timeout and 10%, not `unavailable` much later.
#[tokio::test]
async fn a_routed_call_to_a_stopped_provider_ends_at_the_callers_deadline() {
    use kv::v1::{GetRequest, KvServicePlugin};

    let host_url = serve_host(connect_plugin_tests::open_registry()).await;
    let kv_process =
        connect_plugin_tests::launch_kv_plugin_for_anyone(env!("CARGO_BIN_EXE_e2e-kv-plugin"))
            .await;
    let provider =
        connect_plugin_tests::register_kv_provider(&host_url, kv_process.endpoint()).await;
    let caller = Client::new(ClientConfig::new(&host_url).self_id("caller", "1.0.0")).unwrap();
    let kv = caller.provider::<KvServicePlugin>("").await.unwrap();
    kv.get(GetRequest { key: "k".into() })
        .await
        .expect("routed while the provider runs");

    let pid = kv_process.id().unwrap().to_string();
    let signal = |sig: &str| {
        let status = std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap();
        assert!(status.success());
    };
    signal("-STOP");
    // kill returns once the signal is sent; wait until every thread has stopped (state T),
    // or a loaded machine lets the provider answer one more call.
    let all_stopped = || {
        std::fs::read_dir(format!("/proc/{pid}/task")).is_ok_and(|tasks| {
            tasks.flatten().all(|task| {
                std::fs::read_to_string(task.path().join("stat")).is_ok_and(|stat| {
                    stat.rsplit(')')
                        .next()
                        .is_some_and(|rest| rest.trim_start().starts_with('T'))
                })
            })
        })
    };
    let stopped = async {
        while !all_stopped() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), stopped)
        .await
        .expect("the provider stops within 5 s of SIGSTOP");
    // A raw caller that sends Connect-Timeout-Ms and then simply waits: what it sees is the
    // host's doing (our own client would give up by itself at the deadline).
    let timeout = Duration::from_millis(500);
    let identity = caller.runtime_identity().unwrap();
    let bearer = format!("Bearer {}", identity.token);
    let provider_id = provider.runtime_identity().unwrap().runtime_id.clone();
    let started = std::time::Instant::now();
    let answer = tokio::time::timeout(
        Duration::from_secs(10),
        raw_http1(
            host_url.trim_start_matches("http://").parse().unwrap(),
            "POST",
            &format!("/services/kv/{provider_id}/kv.v1.KVService/Get"),
            &[
                ("content-type", "application/json"),
                ("connect-protocol-version", "1"),
                ("connect-timeout-ms", "500"),
                ("x-plugin-runtime-id", &identity.runtime_id),
                ("authorization", &bearer),
            ],
            b"{\"key\":\"k\"}",
        ),
    )
    .await;
    let took = started.elapsed();
    // And our own client, with the same timeout.
    let outcome = kv
        .get(Request::new(GetRequest { key: "k".into() }).with_timeout(timeout))
        .await;
    signal("-CONT");
    let answer = answer.expect("the host answers a call to a stopped provider");
    assert!(
        answer.text().contains("deadline_exceeded"),
        "{} {}",
        answer.status,
        answer.text()
    );
    assert!(
        took < timeout + timeout / 10,
        "the host answered after {took:?}, the caller's timeout is {timeout:?}"
    );
    let error = outcome.expect_err("a stopped provider cannot answer");
    assert_eq!(error.code(), Code::DeadlineExceeded, "{error}");
    kv.get(GetRequest { key: "k".into() })
        .await
        .expect("routed again once the provider runs");
}

/// Registers `provider` as the "interop" provider at `base_url`, with `metadata` besides.
async fn register_at(provider: &Client, base_url: &str, metadata: &[(&str, &str)]) {
    use connect_plugin::proto::connectplugin::v1::RegisterServiceRequest;
    let mut registration = RegisterServiceRequest {
        service_type: "interop".into(),
        version: "1.0.0".into(),
        endpoint_path: "/interop.v1.InteropService/".into(),
        metadata: [("base_url".to_owned(), base_url.to_owned())].into(),
    };
    for (key, value) in metadata {
        registration
            .metadata
            .insert((*key).to_owned(), (*value).to_owned());
    }
    provider
        .registry()
        .register_service(provider.authenticated(registration).await.unwrap())
        .await
        .expect("registered");
}

async fn echo_through_host(host_url: &str, text: &str) -> Result<String, Error> {
    let app = Client::new(ClientConfig::new(host_url).self_id("app", "1.0.0")).unwrap();
    let interop = app.provider::<InteropServicePlugin>("").await?;
    interop
        .unary(Payload {
            text: text.into(),
            ..Default::default()
        })
        .await
        .map(|r| r.into_message().text)
}

/// The gateway reaches providers as they serve: over TLS (trusting what the host is told to)
/// and over HTTP/1.1 only (a connect-node server without HTTP/2), not only h2c.
#[tokio::test]
async fn providers_over_tls_and_http1_only_are_routed() {
    use connect_plugin::rpc::tls::{ClientTls, ServerTls};

    // Over TLS: refused with a clear error until the host has TLS settings for providers.
    let key = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
    let (cert, key) = (key.cert.pem(), key.signing_key.serialize_pem());
    let tls_provider = connect_plugin_tests::interop::serve_interop_with(
        connect_plugin::rpc::Server::new()
            .tls(ServerTls::from_pem(cert.as_bytes(), key.as_bytes()).unwrap()),
    )
    .await;
    assert!(tls_provider.starts_with("https://"));
    let registry = connect_plugin_tests::open_registry();
    let host_url = serve_host(registry.clone()).await;
    let provider = Client::new(
        ClientConfig::new(&host_url)
            .self_id("tls-echo", "1.0.0")
            .provides(["interop"]),
    )
    .unwrap();
    register_at(&provider, &tls_provider, &[]).await;
    let err = echo_through_host(&host_url, "x").await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    assert!(err.message().contains("set_provider_tls"), "{err}");
    registry.set_provider_tls(ClientTls::with_root_certificates_pem(cert.as_bytes()).unwrap());
    assert_eq!(
        echo_through_host(&host_url, "over TLS").await.unwrap(),
        "over TLS"
    );

    // HTTP/1.1 only: h2c prior knowledge fails; declared, it is routed.
    let node = connect_plugin_tests::start_node_server("1.1").await;
    for (declared, works) in [(false, false), (true, true)] {
        let registry = connect_plugin_tests::open_registry();
        let host_url = serve_host(registry).await;
        let provider = Client::new(
            ClientConfig::new(&host_url)
                .self_id("h1-echo", "1.0.0")
                .provides(["interop"]),
        )
        .unwrap();
        let metadata: &[(&str, &str)] = if declared {
            &[("http_version", "1.1")]
        } else {
            &[]
        };
        register_at(&provider, &node.url, metadata).await;
        let outcome = echo_through_host(&host_url, "over HTTP/1.1").await;
        if works {
            assert_eq!(outcome.unwrap(), "over HTTP/1.1");
        } else {
            let err = outcome.unwrap_err();
            assert_eq!(err.code(), Code::Unavailable, "{err}");
        }
    }
}

/// The host limits the calls each plugin routes through it, keyed by its verified runtime id.
#[tokio::test]
async fn the_host_limits_routed_calls_per_calling_plugin() {
    use connect_plugin::rpc::policy::RateLimit;

    let registry = connect_plugin_tests::open_registry();
    assert!(registry.set_routed_rate_limit(RateLimit::per_second(1.0, 2)));
    let host_url = serve_host(registry).await;
    register_provider(
        &host_url,
        "echo",
        InteropServiceServer::new(Named("echo")).into_service(),
    )
    .await;
    let app = |name: &'static str| {
        let host_url = host_url.clone();
        async move {
            let client = Client::new(ClientConfig::new(&host_url).self_id(name, "1.0.0")).unwrap();
            client.provider::<InteropServicePlugin>("").await.unwrap()
        }
    };
    let busy = app("busy").await;
    for _ in 0..2 {
        busy.unary(Payload::default()).await.unwrap();
    }
    let err = busy.unary(Payload::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    assert!(err.metadata().contains_key("retry-after-ms"), "{err:?}");
    let calm = app("calm").await;
    calm.unary(Payload::default())
        .await
        .expect("another plugin has its own rate");
}

/// A stream cut mid-way (its provider killed with `kill -9`) ends with a Connect error for
/// the caller, directly and through the host: never a clean, silent end.
#[tokio::test]
async fn a_stream_cut_mid_way_ends_with_an_error_not_silently() {
    use kv::v1::{KvServicePlugin, PutRequest, WatchRequest};

    let kv_process =
        connect_plugin_tests::launch_kv_plugin_for_anyone(env!("CARGO_BIN_EXE_e2e-kv-plugin"))
            .await;
    let host_url = serve_host(connect_plugin_tests::open_registry()).await;
    let _provider =
        connect_plugin_tests::register_kv_provider(&host_url, kv_process.endpoint()).await;
    let direct = connect_plugin::dispense::<KvServicePlugin>(
        &connect_plugin::Channel::new(kv_process.endpoint()).unwrap(),
    );
    let caller = Client::new(ClientConfig::new(&host_url).self_id("caller", "1.0.0")).unwrap();
    let routed = caller.provider::<KvServicePlugin>("").await.unwrap();

    let watch = |kv: kv::v1::KvServiceClient| async move {
        kv.watch(WatchRequest {
            prefix: "cut/".into(),
        })
        .await
        .unwrap()
        .into_message()
    };
    let mut direct_events = watch(direct.clone()).await;
    let mut routed_events = watch(routed).await;
    direct
        .put(PutRequest {
            key: "cut/a".into(),
            value: "1".into(),
        })
        .await
        .unwrap();
    for events in [&mut direct_events, &mut routed_events] {
        let first = tokio::time::timeout(Duration::from_secs(5), events.message())
            .await
            .expect("an event arrives")
            .expect("no error yet");
        assert!(first.is_some(), "the stream carries the event");
    }

    let status = std::process::Command::new("kill")
        .args(["-9", &kv_process.id().unwrap().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    for (how, events) in [
        ("direct", &mut direct_events),
        ("routed", &mut routed_events),
    ] {
        let end = tokio::time::timeout(Duration::from_secs(5), events.message())
            .await
            .unwrap_or_else(|_| panic!("the {how} stream ends within 5 s"));
        let err = end.expect_err(&format!("the {how} stream ends with an error"));
        assert!(
            matches!(
                err.code(),
                Code::Unavailable | Code::Internal | Code::Unknown | Code::Canceled
            ),
            "{how}: {err}"
        );
    }
}

/// Always fails, as a provider in trouble does.
struct Down;

impl InteropService for Down {
    async fn unary(&self, _: Request<Payload>) -> Result<Response<Payload>, Error> {
        Err(Error::unavailable("down for maintenance"))
    }
}

/// A breaker per provider client: a provider that keeps failing opens its own breaker, and
/// the client's calls to the host and to other providers go on.
#[tokio::test]
async fn each_provider_client_has_a_breaker_of_its_own() {
    use connect_plugin::proto::connectplugin::v1::HealthState;
    use connect_plugin::rpc::policy::CircuitBreaker;

    let host_url = serve_host(connect_plugin_tests::open_registry()).await;
    register_provider(
        &host_url,
        "down",
        InteropServiceServer::new(Down).into_service(),
    )
    .await;
    let app = Client::new(
        ClientConfig::new(&host_url)
            .self_id("app", "1.0.0")
            .provider_wrapper(|| CircuitBreaker::new().failure_threshold(2)),
    )
    .unwrap();
    let failing = app.provider::<InteropServicePlugin>("").await.unwrap();
    for _ in 0..2 {
        let err = failing.unary(Payload::default()).await.unwrap_err();
        assert!(err.message().contains("down for maintenance"), "{err}");
    }
    let err = failing.unary(Payload::default()).await.unwrap_err();
    assert!(err.message().contains("circuit breaker open"), "{err}");

    // The host is not behind that breaker, nor is another provider client.
    app.report_health(HealthState::Healthy, "")
        .await
        .expect("calls to the host go on");
    let fresh = app.provider::<InteropServicePlugin>("").await.unwrap();
    let err = fresh.unary(Payload::default()).await.unwrap_err();
    assert!(err.message().contains("down for maintenance"), "{err}");
}

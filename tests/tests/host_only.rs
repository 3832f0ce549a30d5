//! Abuse suite (security issue, items 2 and 3): a plugin launched by a host answers only that
//! host (its launch secret), takes its identity once, and a registration may point the host
//! only at the plugin's own address. Real plugin processes, real sockets, loopback only.

use std::time::Duration;

use connect_plugin::proto::connectplugin::v1::{
    GetPluginInfoRequest, PluginIdentityClient, RegisterServiceRequest, SetRuntimeIdentityRequest,
};
use connect_plugin::serve::host_only::LAUNCH_SECRET_HEADER;
use connect_plugin::{
    Channel, Client, ClientConfig, Code, LaunchConfig, PluginProcess, ServiceRegistry,
};
use connect_plugin_tests::{launch_kv_plugin, raw_http1};
use kv::v1::{GetRequest, KvServicePlugin, WatchRequest};

const KV_PLUGIN: &str = env!("CARGO_BIN_EXE_e2e-kv-plugin");
const LOGGER_PLUGIN: &str = env!("CARGO_BIN_EXE_e2e-logger-plugin");

fn with_header(endpoint: &str, name: &'static str, value: &str) -> Channel {
    Channel::builder(endpoint)
        .header(
            http::HeaderName::from_static(name),
            http::HeaderValue::from_str(value).unwrap(),
        )
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_launched_plugin_refuses_calls_without_its_launch_secret() {
    let plugin = launch_kv_plugin(KV_PLUGIN).await;
    let endpoint = plugin.endpoint();
    let get = || GetRequest { key: "k".into() };

    // No secret, a wrong one, or a forged caller id: refused before any handler runs.
    for (what, channel) in [
        ("no secret", Channel::new(&endpoint).unwrap()),
        (
            "a guessed secret",
            with_header(&endpoint, LAUNCH_SECRET_HEADER, &"0".repeat(64)),
        ),
        (
            "a forged caller id",
            with_header(&endpoint, "x-plugin-caller-id", "host"),
        ),
    ] {
        let kv = connect_plugin::dispense::<KvServicePlugin>(&channel);
        let err = kv.get(get()).await.expect_err(what);
        assert_eq!(err.code(), Code::Unauthenticated, "{what}: {err}");
        assert!(err.message().contains(LAUNCH_SECRET_HEADER), "{err}");
        // A stream is refused as a stream (in its end-stream message), so a streaming
        // client reads the same error rather than an HTTP status.
        let refused = match kv.watch(WatchRequest::default()).await {
            Err(err) => err,
            Ok(stream) => stream
                .into_message()
                .message()
                .await
                .expect_err("a refused stream"),
        };
        assert_eq!(refused.code(), Code::Unauthenticated, "{what}: {refused}");
        assert!(
            refused.message().contains(LAUNCH_SECRET_HEADER),
            "{refused}"
        );
    }
    let streamed = raw_http1(
        plugin.addr(),
        "POST",
        "/kv.v1.KVService/Watch",
        &[("content-type", "application/connect+json")],
        b"\x00\x00\x00\x00\x02{}",
    )
    .await;
    assert_eq!(streamed.status, 200, "{}", streamed.text());
    assert!(
        streamed.text().contains("unauthenticated"),
        "{}",
        streamed.text()
    );
    // The handshake too: a stranger learns nothing about what it serves.
    let stranger = Client::new(ClientConfig::new(&endpoint).plugin::<KvServicePlugin>()).unwrap();
    let err = stranger.connect().await.expect_err("no handshake");
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");
    // Over raw HTTP/1.1 as well; only the plain probes stay open.
    let json = [("content-type", "application/json")];
    let raw = raw_http1(
        plugin.addr(),
        "POST",
        "/kv.v1.KVService/Get",
        &json,
        br#"{"key":"k"}"#,
    )
    .await;
    assert_eq!(raw.status, 401, "{}", raw.text());
    assert!(raw.text().contains("unauthenticated"), "{}", raw.text());
    let probe = raw_http1(plugin.addr(), "GET", "/healthz", &[], b"").await;
    assert_eq!(probe.status, 200, "{}", probe.text());

    // The host's own channel carries the secret.
    let host = Client::new(plugin.client_config().plugin::<KvServicePlugin>()).unwrap();
    let kv = host.dispense::<KvServicePlugin>().await.expect("handshake");
    assert!(!kv.get(get()).await.unwrap().into_message().found);
}

#[tokio::test]
async fn a_managed_plugin_takes_its_identity_only_from_its_host() {
    // The logger plugin without HOST_URL waits for a host to assign its identity (model A).
    let plugin = PluginProcess::launch(
        LaunchConfig::new("logger", LOGGER_PLUGIN).start_timeout(Duration::from_secs(20)),
    )
    .await
    .unwrap();
    let assign = |runtime_id: &str| SetRuntimeIdentityRequest {
        runtime_id: runtime_id.into(),
        runtime_token: "t".repeat(32),
        host_url: "http://127.0.0.1:1".into(),
    };

    // A local process that finds the port can neither read the plugin's info nor assign it.
    let stranger = PluginIdentityClient::new(Channel::new(plugin.endpoint()).unwrap());
    let err = stranger
        .get_plugin_info(GetPluginInfoRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");
    let err = stranger
        .set_runtime_identity(assign("impostor"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");

    // The host, with the launch secret, is answered. (That a second assignment is refused
    // is `deploy::assigned`'s unit test: once assigned, this plugin goes to its host.)
    let host = PluginIdentityClient::new(plugin.channel().unwrap());
    let info = host
        .get_plugin_info(GetPluginInfoRequest {})
        .await
        .unwrap()
        .into_message();
    assert_eq!(info.self_id, "logger-plugin");
    let acknowledged = host
        .set_runtime_identity(assign("first"))
        .await
        .unwrap()
        .into_message()
        .acknowledged;
    assert!(acknowledged);
}

fn registration(base_url: &str) -> RegisterServiceRequest {
    RegisterServiceRequest {
        service_type: "cache".into(),
        version: "1.0.0".into(),
        endpoint_path: "/cache.v1.Cache/".into(),
        metadata: [("base_url".to_owned(), base_url.to_owned())].into(),
    }
}

async fn register(client: &Client, base_url: &str) -> Result<String, connect_plugin::Error> {
    let request = client.authenticated(registration(base_url)).await?;
    client
        .registry()
        .register_service(request)
        .await
        .map(|r| r.into_message().registration_id)
}

#[tokio::test]
async fn a_registration_points_the_host_only_at_the_plugins_own_address() {
    const TOKEN: &str = "cache-join-token-0123456789abcdef";
    const PINNED: &str = "pinned-join-token-0123456789abcdef";
    let registry = ServiceRegistry::new();
    let policy = registry.join_policy();
    policy
        .allow(Some("cache-plugin"), TOKEN, ["cache"])
        .unwrap();
    policy
        .allow(Some("pinned-plugin"), PINNED, ["cache"])
        .unwrap();
    policy
        .allow_addresses(PINNED, ["http://cache.internal:8081"])
        .unwrap();
    let host_url = connect_plugin_tests::serve_registry(&registry).await;
    let plugin = |id: &str, token: &str| {
        Client::new(
            ClientConfig::new(&host_url)
                .self_id(id, "1.0.0")
                .join_token(token),
        )
        .unwrap()
    };

    // Calling from loopback, a plugin may name loopback, and nothing else: not the cloud
    // metadata address, another machine, or a name the host would resolve.
    let cache = plugin("cache-plugin", TOKEN);
    for elsewhere in [
        "http://169.254.169.254",
        "http://10.0.0.1:8080",
        "https://example.com",
        "http://cache.internal:8081",
    ] {
        let err = register(&cache, elsewhere).await.expect_err(elsewhere);
        assert_eq!(err.code(), Code::PermissionDenied, "{elsewhere}: {err}");
        assert!(err.message().contains("registers its own address"), "{err}");
    }
    for own in ["http://127.0.0.1:9001", "http://localhost:9002"] {
        register(&cache, own).await.expect(own);
    }
    let err = register(&cache, "not a url").await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert_eq!(registry.providers("cache").len(), 2);

    // An operator's list adds addresses (a container name): those, and its own, but still
    // nothing else.
    let pinned = plugin("pinned-plugin", PINNED);
    let err = register(&pinned, "http://10.0.0.1:8081").await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    assert!(
        err.message().contains("JoinPolicy::allow_addresses"),
        "{err}"
    );
    register(&pinned, "http://CACHE.internal:8081/")
        .await
        .expect("the listed address");
    register(&pinned, "http://127.0.0.1:9003")
        .await
        .expect("its own address");
    assert_eq!(registry.providers("cache").len(), 4);
}

/// A plugin's secrets for its host (its control token, a join token from the environment) go
/// to its own host (`HOST_URL`) only: not to another server it introduces itself to.
#[tokio::test]
async fn a_plugin_shows_its_control_token_to_no_server_but_its_host() {
    use connect_plugin::proto::connectplugin::v1::{
        HandshakeRequest, HandshakeResponse, HandshakeService, HandshakeServiceServer,
    };
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    /// Records what a client tells it in the handshake.
    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<Option<HashMap<String, String>>>>);
    impl HandshakeService for Recorder {
        async fn handshake(
            &self,
            request: connect_plugin::Request<HandshakeRequest>,
        ) -> Result<connect_plugin::Response<HandshakeResponse>, connect_plugin::Error> {
            *self.0.lock().unwrap() = Some(request.into_message().client_metadata);
            Ok(connect_plugin::Response::new(HandshakeResponse {
                core_protocol_version: 1,
                app_protocol_version: 1,
                ..Default::default()
            }))
        }
    }
    let recorder = Recorder::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        connect_plugin::rpc::Server::new()
            .add_service(HandshakeServiceServer::new(recorder.clone()).into_service())
            .serve(listener),
    );
    let client = Client::new(ClientConfig::new(&url).self_id("curious-plugin", "1.0.0")).unwrap();
    client.connect().await.unwrap();
    let told = recorder.0.lock().unwrap().clone().expect("a handshake");
    assert!(told.contains_key("client_version"), "{told:?}");
    assert!(
        !told.contains_key(connect_plugin::handshake::CONTROL_TOKEN_KEY),
        "{told:?}"
    );
    assert!(
        !told.contains_key(connect_plugin::handshake::JOIN_TOKEN_KEY),
        "{told:?}"
    );
}

//! Abuse suite (security issue, item 2): the magic cookie proves nothing, so a handshake gets a
//! runtime identity only with a join token the host knows, and a token admits one plugin id
//! and only the service types the operator (or the launching host) gave it. A local process
//! with only the public cookie learns versions, but cannot register, discover, route or
//! replace a provider.

use connect_plugin::handshake::PROVIDES_KEY;
use connect_plugin::proto::connectplugin::v1::{
    DiscoverServiceRequest, RegisterServiceRequest, ServiceRegistryClient,
};
use connect_plugin::{Client, ClientConfig, Code, Request, ServeConfig, ServiceRegistry};

const LOGGER_TOKEN: &str = "logger-join-token-0123456789abcdef";

/// A host with a closed registry (the default) and a join token for "logger-plugin",
/// admitting it as a provider of "logger" only.
async fn host() -> (String, ServiceRegistry) {
    let registry = ServiceRegistry::new();
    registry
        .join_policy()
        .allow(Some("logger-plugin"), LOGGER_TOKEN, ["logger"])
        .unwrap();
    let url = serve_registry(&registry).await;
    (url, registry)
}

/// Serves a host with `registry` on a free port; its URL.
async fn serve_registry(registry: &ServiceRegistry) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(connect_plugin::serve(
        ServeConfig::new()
            .registry(registry.clone())
            .listener(listener),
    ));
    url
}

fn registration(service_type: &str) -> RegisterServiceRequest {
    RegisterServiceRequest {
        service_type: service_type.into(),
        version: "9.9.9".into(),
        endpoint_path: "/capability.logger.v1.Logger/".into(),
        metadata: [("base_url".to_owned(), "http://127.0.0.1:1".to_owned())].into(),
    }
}

#[tokio::test]
async fn the_public_cookie_alone_gets_no_identity_and_cannot_register_or_discover() {
    let (url, registry) = host().await;
    let stranger = Client::new(
        ClientConfig::new(&url)
            .self_id("logger-plugin", "1.0.0")
            .provides(["logger"]),
    )
    .unwrap();
    let handshake = stranger
        .connect()
        .await
        .expect("the handshake itself works");
    assert_eq!(
        handshake.app_protocol_version, 1,
        "versions are still learned"
    );
    assert!(handshake.identity.is_none(), "but no identity is issued");
    let refused = stranger
        .authenticated(registration("logger"))
        .await
        .expect_err("nothing to authenticate with");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(refused.message().contains("join token"), "{refused}");

    // Forged identity headers on a raw registry call are refused too.
    let mut forged = Request::new(DiscoverServiceRequest {
        service_type: "logger".into(),
        min_version: String::new(),
    });
    forged.metadata_mut().insert(
        "x-plugin-runtime-id",
        "logger-plugin-00000000".parse().unwrap(),
    );
    forged
        .metadata_mut()
        .insert("authorization", "Bearer guessed".parse().unwrap());
    let refused = ServiceRegistryClient::new(stranger.channel().clone())
        .discover_service(forged)
        .await
        .expect_err("a forged identity is not an identity");
    assert_eq!(refused.code(), Code::Unauthenticated);
    assert!(registry.providers("logger").is_empty());
}

#[tokio::test]
async fn a_join_token_admits_only_its_plugin_and_only_the_types_it_allows() {
    let (url, registry) = host().await;
    // The rightful plugin declares more than its token allows: the token decides.
    let logger = Client::new(
        ClientConfig::new(&url)
            .self_id("logger-plugin", "1.0.0")
            .metadata(PROVIDES_KEY, "logger,cache")
            .join_token(LOGGER_TOKEN),
    )
    .unwrap();
    logger
        .registry()
        .register_service(logger.authenticated(registration("logger")).await.unwrap())
        .await
        .expect("the token admits logger");
    let refused = logger
        .registry()
        .register_service(logger.authenticated(registration("cache")).await.unwrap())
        .await
        .expect_err("the token does not admit cache, whatever the plugin declares");
    assert_eq!(refused.code(), Code::PermissionDenied);

    // The same token under another plugin id admits nothing.
    let thief = Client::new(
        ClientConfig::new(&url)
            .self_id("impostor", "1.0.0")
            .join_token(LOGGER_TOKEN),
    )
    .unwrap();
    assert!(thief.connect().await.unwrap().identity.is_none());
    // A wrong token admits nothing either, even with the right plugin id.
    let guesser = Client::new(
        ClientConfig::new(&url)
            .self_id("logger-plugin", "1.0.0")
            .join_token("logger-join-token-guess-0000000000"),
    )
    .unwrap();
    assert!(guesser.connect().await.unwrap().identity.is_none());

    // So an impostor cannot replace the provider: discovery still finds the real one.
    let providers = registry.providers("logger");
    assert_eq!(providers.len(), 1);
    assert_eq!(
        &providers[0].runtime_id,
        &logger.runtime_identity().unwrap().runtime_id
    );
}

#[tokio::test]
async fn open_joining_is_an_explicit_opt_in() {
    let registry = ServiceRegistry::new();
    assert!(!registry.join_policy().is_open(), "closed by default");
    registry.join_policy().set_open(true);
    let url = serve_registry(&registry).await;
    // Upstream behaviour: the cookie and a declaration are enough.
    let go_like = Client::new(
        ClientConfig::new(&url)
            .self_id("go-plugin", "1.0.0")
            .provides(["logger"]),
    )
    .unwrap();
    go_like
        .registry()
        .register_service(go_like.authenticated(registration("logger")).await.unwrap())
        .await
        .expect("open mode admits self-declared providers");
    assert_eq!(registry.providers("logger").len(), 1);
}

/// The defaults are closed everywhere an identity can be issued: a plain `ServeConfig` (a
/// broker-only host) and a `Host`.
#[tokio::test]
async fn every_default_is_closed() {
    use connect_plugin::CapabilityBroker;
    use connect_plugin::host::broker::TracingLogger;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let broker = CapabilityBroker::new()
        .capability(TracingLogger::definition())
        .unwrap();
    tokio::spawn(connect_plugin::serve(
        ServeConfig::new().broker(broker).listener(listener),
    ));
    let stranger = Client::new(ClientConfig::new(&url).self_id("stranger", "1.0.0")).unwrap();
    let refused = stranger
        .request_capability("logger", "")
        .await
        .expect_err("no identity, no capability");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(stranger.connect().await.unwrap().identity.is_none());

    let host = connect_plugin::Host::builder().start().await.unwrap();
    let stranger = Client::new(ClientConfig::new(host.url()).self_id("stranger", "1.0.0")).unwrap();
    assert!(
        stranger.connect().await.unwrap().identity.is_none(),
        "a Host admits no one without a token"
    );
    host.shutdown().await;
}

/// Abuse suite (security issue, item 4): what one plugin can make the host keep is bounded,
/// and a removed plugin's identity ends with it.
#[tokio::test]
async fn registrations_and_metadata_are_bounded_and_identities_end_with_their_plugin() {
    let (url, registry) = host().await;
    let logger = Client::new(
        ClientConfig::new(&url)
            .self_id("logger-plugin", "1.0.0")
            .join_token(LOGGER_TOKEN),
    )
    .unwrap();
    let mut accepted = 0;
    let mut exhausted = 0;
    for _ in 0..40 {
        let request = logger.authenticated(registration("logger")).await.unwrap();
        match logger.registry().register_service(request).await {
            Ok(_) => accepted += 1,
            Err(e) if e.code() == Code::ResourceExhausted => exhausted += 1,
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(
        (accepted, exhausted),
        (32, 8),
        "32 registrations per plugin"
    );

    let mut fat = registration("logger");
    fat.metadata.insert("blob".into(), "x".repeat(2048));
    let refused = logger
        .registry()
        .register_service(logger.authenticated(fat).await.unwrap())
        .await
        .expect_err("a 2 KiB metadata value");
    assert_eq!(refused.code(), Code::InvalidArgument);
    let mut many = registration("logger");
    many.metadata
        .extend((0..40).map(|i| (format!("k{i}"), "v".to_owned())));
    let refused = logger
        .registry()
        .register_service(logger.authenticated(many).await.unwrap())
        .await
        .expect_err("41 metadata entries");
    assert_eq!(refused.code(), Code::InvalidArgument);

    // Removing the plugin ends its identity: it cannot call the host any more.
    let id = logger.runtime_identity().unwrap().runtime_id.clone();
    assert_eq!(registry.remove_runtime(&id), 32);
    let refused = logger
        .registry()
        .register_service(logger.authenticated(registration("logger")).await.unwrap())
        .await
        .expect_err("a removed plugin's identity is gone");
    assert_eq!(refused.code(), Code::Unauthenticated);
}

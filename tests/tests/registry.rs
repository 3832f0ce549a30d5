//! The service registry over real sockets: plugins with runtime identities register what they
//! declared, discover providers, watch availability through registrations, health reports and
//! removals; and every misuse (forged identity, undeclared type, someone else's registration)
//! is refused.

use std::time::Duration;

use connect_plugin::proto::connectplugin::v1::{
    DiscoverServiceRequest, HealthState, RegisterServiceRequest, ServiceState,
    UnregisterServiceRequest, WatchServiceRequest,
};
use connect_plugin::{
    Client, ClientConfig, Code, Request, ServeConfig, ServiceRegistry,
    host::registry::SelectionStrategy,
};

async fn host(registry: &ServiceRegistry) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(connect_plugin::serve(
        ServeConfig::new()
            .registry(registry.clone())
            .listener(listener),
    ));
    url
}

fn plugin(url: &str, name: &str, provides: &[&str]) -> Client {
    Client::new(
        ClientConfig::new(url)
            .self_id(name, "1.0.0")
            .provides(provides),
    )
    .unwrap()
}

fn registration(service_type: &str, version: &str) -> RegisterServiceRequest {
    RegisterServiceRequest {
        service_type: service_type.into(),
        version: version.into(),
        endpoint_path: "/logger.v1.Logger/".into(),
        metadata: Default::default(),
    }
}

#[tokio::test]
async fn register_discover_and_watch_through_health_changes() {
    let registry = connect_plugin_tests::open_registry();
    let url = host(&registry).await;
    let logger = plugin(&url, "logger", &["logger"]);
    let cache = plugin(&url, "cache", &["cache"]);

    let mut watch = cache
        .registry()
        .watch_service(
            cache
                .authenticated(WatchServiceRequest {
                    service_type: "logger".into(),
                })
                .await
                .unwrap(),
        )
        .await
        .unwrap()
        .into_message();
    let mut next_state = async || {
        let event = tokio::time::timeout(Duration::from_secs(5), watch.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        ServiceState::try_from(event.state).unwrap()
    };
    assert_eq!(
        next_state().await,
        ServiceState::Unavailable,
        "the current state comes first"
    );

    let id = logger
        .registry()
        .register_service(
            logger
                .authenticated(registration("logger", "1.2.0"))
                .await
                .unwrap(),
        )
        .await
        .unwrap()
        .into_message()
        .registration_id;
    assert_eq!(next_state().await, ServiceState::Available);

    let registered = registry.providers("logger");
    assert_eq!(registered.len(), 1);
    assert_eq!(registered[0].endpoint_path, "/logger.v1.Logger/");
    assert_eq!(registered[0].version.to_string(), "1.2.0");
    let found = cache
        .registry()
        .discover_service(
            cache
                .authenticated(DiscoverServiceRequest {
                    service_type: "logger".into(),
                    min_version: "1.0.0".into(),
                })
                .await
                .unwrap(),
        )
        .await
        .unwrap()
        .into_message();
    let endpoint = found.endpoint.unwrap();
    let logger_id = logger.runtime_identity().unwrap().runtime_id.clone();
    assert_eq!(endpoint.provider_id, logger_id);
    assert_eq!(
        endpoint.endpoint_url,
        format!("/services/logger/{logger_id}")
    );
    assert!(found.single_provider);

    logger
        .report_health(HealthState::Degraded, "slow disk")
        .await
        .unwrap();
    assert_eq!(next_state().await, ServiceState::Degraded);
    logger
        .report_health(HealthState::Unhealthy, "disk gone")
        .await
        .unwrap();
    assert_eq!(
        next_state().await,
        ServiceState::Unavailable,
        "unhealthy providers are not routed"
    );
    let err = cache
        .registry()
        .discover_service(
            cache
                .authenticated(DiscoverServiceRequest {
                    service_type: "logger".into(),
                    min_version: String::new(),
                })
                .await
                .unwrap(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    logger
        .report_health(HealthState::Healthy, "")
        .await
        .unwrap();
    assert_eq!(next_state().await, ServiceState::Available);

    logger
        .registry()
        .unregister_service(
            logger
                .authenticated(UnregisterServiceRequest {
                    registration_id: id,
                })
                .await
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(next_state().await, ServiceState::Unavailable);
}

#[tokio::test]
async fn misuse_is_refused() {
    let registry = connect_plugin_tests::open_registry();
    let url = host(&registry).await;
    let logger = plugin(&url, "logger", &["logger"]);
    let cache = plugin(&url, "cache", &["cache"]);
    let id = logger
        .registry()
        .register_service(
            logger
                .authenticated(registration("logger", "1.0.0"))
                .await
                .unwrap(),
        )
        .await
        .unwrap()
        .into_message()
        .registration_id;

    // Registering a type the plugin did not declare.
    let err = cache
        .registry()
        .register_service(
            cache
                .authenticated(registration("logger", "1.0.0"))
                .await
                .unwrap(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");

    // Unregistering someone else's registration.
    let err = cache
        .registry()
        .unregister_service(
            cache
                .authenticated(UnregisterServiceRequest {
                    registration_id: id,
                })
                .await
                .unwrap(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");

    // A forged runtime-id header with a wrong token, and no identity at all.
    let mut forged = Request::new(registration("logger", "1.0.0"));
    forged.metadata_mut().insert(
        "x-plugin-runtime-id",
        logger
            .runtime_identity()
            .unwrap()
            .runtime_id
            .parse()
            .unwrap(),
    );
    forged
        .metadata_mut()
        .insert("authorization", "Bearer not-the-token".parse().unwrap());
    let err = cache.registry().register_service(forged).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");
    // Without the identity headers (a channel that is not the client's, which puts them on
    // every call).
    let bare = connect_plugin::proto::connectplugin::v1::ServiceRegistryClient::new(
        connect_plugin::Channel::new(cache.channel().base_url()).unwrap(),
    );
    let err = bare
        .register_service(registration("logger", "1.0.0"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");
    let err = cache
        .report_health(HealthState::Unspecified, "")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
}

#[tokio::test]
async fn round_robin_really_alternates_between_providers() {
    let registry = connect_plugin_tests::open_registry();
    registry.set_strategy("logger", SelectionStrategy::RoundRobin);
    let url = host(&registry).await;
    let mut ids = Vec::new();
    for name in ["logger-a", "logger-b"] {
        let p = plugin(&url, name, &["logger"]);
        p.registry()
            .register_service(
                p.authenticated(registration("logger", "1.0.0"))
                    .await
                    .unwrap(),
            )
            .await
            .unwrap();
        ids.push(p.runtime_identity().unwrap().runtime_id.clone());
    }
    let app = plugin(&url, "app", &[]);
    let mut picks = Vec::new();
    for _ in 0..4 {
        let found = app
            .registry()
            .discover_service(
                app.authenticated(DiscoverServiceRequest {
                    service_type: "logger".into(),
                    min_version: String::new(),
                })
                .await
                .unwrap(),
            )
            .await
            .unwrap()
            .into_message();
        picks.push(found.endpoint.unwrap().provider_id);
    }
    assert_eq!(
        picks,
        [
            ids[0].clone(),
            ids[1].clone(),
            ids[0].clone(),
            ids[1].clone()
        ]
    );
}

#[tokio::test]
async fn a_plugin_that_stops_heartbeating_expires_and_watchers_hear_it() {
    // A 600 ms lease, heartbeats every 50 ms: a loaded machine may delay a heartbeat, not
    // twelve of them.
    let registry = connect_plugin_tests::open_registry_with_lease(Duration::from_millis(600));
    let url = host(&registry).await;
    let logger = std::sync::Arc::new(plugin(&url, "logger", &["logger"]));
    logger
        .registry()
        .register_service(
            logger
                .authenticated(registration("logger", "1.0.0"))
                .await
                .unwrap(),
        )
        .await
        .unwrap();
    let heartbeat = logger.heartbeat(Duration::from_millis(50));
    let watcher = plugin(&url, "watcher", &[]);
    let mut watch = watcher
        .registry()
        .watch_service(
            watcher
                .authenticated(WatchServiceRequest {
                    service_type: "logger".into(),
                })
                .await
                .unwrap(),
        )
        .await
        .unwrap()
        .into_message();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.state, ServiceState::Available as i32);
    // Alive while it heartbeats, past two leases (the time passing is what is tested here).
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    assert_eq!(
        registry.providers("logger").len(),
        1,
        "heartbeats keep the lease"
    );
    // It "dies": no more heartbeats. The registration expires and watchers are told.
    drop(heartbeat);
    // (A heartbeat's first health report may still show up as AVAILABLE before that.)
    let expired = async {
        while let Some(event) = watch.message().await.unwrap() {
            if event.state == ServiceState::Unavailable as i32 {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(3), expired)
        .await
        .expect("an expiry event");
    assert!(registry.providers("logger").is_empty());
}

#[tokio::test]
async fn a_self_registering_plugin_registers_again_when_its_host_restarts() {
    use connect_plugin::deploy::self_registration::{
        RegistrationConfig, RegistrationState, SelfRegistration,
    };
    // Host A on some port (one no other test is handed while it is free).
    let listener = connect_plugin_tests::listen_on_a_stable_port().await;
    let addr = listener.local_addr().unwrap();
    let url = format!("http://{addr}");
    let first = connect_plugin_tests::open_registry();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let host_a = tokio::spawn(connect_plugin::serve(
        ServeConfig::new()
            .registry(first.clone())
            .listener(listener)
            .shutdown_timeout(Duration::from_millis(200))
            .stop_signal(async {
                let _ = stopped.await;
            }),
    ));

    let mut config = RegistrationConfig::new(
        &url,
        "logger",
        "1.0.0",
        vec![registration("logger", "1.0.0")],
    );
    config.heartbeat = Duration::from_millis(50);
    let plugin = SelfRegistration::start(config);
    let first_id = plugin.registered().await;
    assert_eq!(first.providers("logger")[0].runtime_id, first_id);

    // The host restarts: a new process knows nothing of the plugin.
    stop.send(()).unwrap();
    host_a.await.unwrap().unwrap();
    let second = connect_plugin_tests::open_registry();
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    tokio::spawn(connect_plugin::serve(
        ServeConfig::new()
            .registry(second.clone())
            .listener(listener),
    ));
    second
        .wait_for_provider("logger", Duration::from_secs(10))
        .await
        .expect("the plugin registered again");
    let runtime_id = plugin.registered().await;
    let RegistrationState::Registered { reconnects, .. } = plugin.state() else {
        panic!("{:?}", plugin.state());
    };
    assert!(reconnects >= 1);
    assert_eq!(second.providers("logger")[0].runtime_id, runtime_id);
}

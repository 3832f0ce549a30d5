//! Abuse suite (security issue, item 8): runtime tokens expire, and a plugin keeps working
//! anyway: its client renews the token before it expires (same runtime id, so its
//! registrations stay), and joins again when the host no longer knows it (a restart).

use std::sync::Arc;
use std::time::Duration;

use connect_plugin::proto::connectplugin::v1::{
    DiscoverServiceRequest, HealthState, RegisterServiceRequest,
};
use connect_plugin::{Client, ClientConfig, Code, Request, ServeConfig, ServiceRegistry};

const TOKEN: &str = "cache-join-token-0123456789abcdef";

fn registry() -> ServiceRegistry {
    let registry = ServiceRegistry::new();
    registry
        .join_policy()
        .allow(Some("cache-plugin"), TOKEN, ["cache"])
        .unwrap();
    registry
}

fn plugin(host_url: &str) -> Arc<Client> {
    Arc::new(
        Client::new(
            ClientConfig::new(host_url)
                .self_id("cache-plugin", "1.0.0")
                .join_token(TOKEN),
        )
        .unwrap(),
    )
}

async fn discover(client: &Client) -> Result<usize, connect_plugin::Error> {
    let request = client
        .authenticated(DiscoverServiceRequest {
            service_type: "cache".into(),
            min_version: String::new(),
        })
        .await?;
    client
        .registry()
        .discover_service(request)
        .await
        .map(|r| usize::from(r.into_message().endpoint.is_some()))
}

#[tokio::test]
async fn a_plugin_keeps_its_identity_across_token_expiry() {
    let registry = registry();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let host_url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(connect_plugin::serve(
        ServeConfig::new()
            .registry(registry.clone())
            .runtime_token_ttl(Duration::from_millis(900))
            .listener(listener),
    ));
    let cache = plugin(&host_url);
    let request = cache
        .authenticated(RegisterServiceRequest {
            service_type: "cache".into(),
            version: "1.0.0".into(),
            endpoint_path: "/cache.v1.Cache/".into(),
            metadata: [("base_url".to_owned(), "http://127.0.0.1:9".to_owned())].into(),
        })
        .await
        .unwrap();
    cache.registry().register_service(request).await.unwrap();
    let first = cache.runtime_identity().expect("joined");
    let _beat = cache.heartbeat(Duration::from_millis(100));

    // Three token lifetimes later the plugin is still the same identity, still registered.
    tokio::time::sleep(Duration::from_millis(2_700)).await;
    let now = cache.runtime_identity().expect("still joined");
    assert_eq!(now.runtime_id, first.runtime_id, "renewed, not re-joined");
    assert_ne!(now.token, first.token, "the token was renewed");
    assert_eq!(discover(&cache).await.expect("calls still work"), 1);
    assert_eq!(registry.providers("cache").len(), 1);
    assert_eq!(registry.providers("cache")[0].runtime_id, first.runtime_id);

    // The first token itself has expired: renewal was needed.
    let mut stale = Request::new(DiscoverServiceRequest {
        service_type: "cache".into(),
        min_version: String::new(),
    });
    first.apply(stale.metadata_mut());
    let bare = connect_plugin::proto::connectplugin::v1::ServiceRegistryClient::new(
        connect_plugin::Channel::new(&host_url).unwrap(),
    );
    let err = bare.discover_service(stale).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");
}

#[tokio::test]
async fn after_a_host_restart_heartbeats_join_again() {
    let mut host = connect_plugin_tests::RestartableHost::start(&registry()).await;
    let host_url = host.url.clone();
    let cache = plugin(&host_url);
    cache.report_health(HealthState::Healthy, "").await.unwrap();
    let first = cache.runtime_identity().unwrap();
    let _beat = cache.heartbeat(Duration::from_millis(100));

    // The host restarts with the same operator token; it knows nothing of the old identity.
    let second = registry();
    host.restart(&second).await;
    let rejoined = async {
        loop {
            if let Some(now) = cache.runtime_identity()
                && now.runtime_id != first.runtime_id
            {
                return now;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let now = tokio::time::timeout(Duration::from_secs(5), rejoined)
        .await
        .expect("the heartbeat joined the new host");
    assert!(now.runtime_id.starts_with("cache-plugin-"), "{now:?}");
    cache
        .report_health(HealthState::Healthy, "")
        .await
        .expect("the new host knows the new identity");
    // Authenticated again: the new host answers the question (it has no provider yet).
    let err = discover(&cache).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err}");
    assert!(second.providers("cache").is_empty());
}

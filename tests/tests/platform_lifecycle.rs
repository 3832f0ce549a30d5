//! Plugins added, removed and replaced at runtime on a host (model B processes): dependency
//! checks, impact analysis, and a replacement under continuous traffic with no failed call.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use connect_plugin::host::platform::{Platform, PluginSpec};
use connect_plugin::{Client, ClientConfig, Code, ServeConfig};
use platform::cache::{CacheServicePlugin, GetRequest, SetRequest};

use connect_plugin_tests::plugin_spec as spec;

fn logger() -> PluginSpec {
    spec(
        "logger-plugin",
        env!("CARGO_BIN_EXE_e2e-logger-plugin"),
        "logger",
        None,
    )
}

fn cache() -> PluginSpec {
    spec(
        "cache-plugin",
        env!("CARGO_BIN_EXE_e2e-cache-plugin"),
        "cache",
        Some("logger"),
    )
}

/// Four workers calling set then get on the cache until stopped; returns the stop flag, the
/// count of successful rounds, and the workers (each returns its errors).
fn traffic(
    cache_client: &platform::cache::CacheServiceClient,
) -> (
    Arc<AtomicBool>,
    Arc<AtomicUsize>,
    Vec<tokio::task::JoinHandle<Vec<String>>>,
) {
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let workers = (0..4)
        .map(|worker| {
            let (cache_client, stop, ok) =
                (cache_client.clone(), Arc::clone(&stop), Arc::clone(&ok));
            tokio::spawn(async move {
                let mut errors = Vec::new();
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("w{worker}-{i}");
                    let set = cache_client
                        .set(SetRequest {
                            key: key.clone(),
                            value: "v".into(),
                        })
                        .await;
                    let get = cache_client.get(GetRequest { key }).await;
                    match (set, get) {
                        (Ok(_), Ok(_)) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        (set, get) => errors.push(format!("{:?} {:?}", set.err(), get.err())),
                    }
                    i += 1;
                }
                errors
            })
        })
        .collect();
    (stop, ok, workers)
}

/// Waits until `n` more rounds succeeded.
/// Waits (at most 20 s, else fails saying so) until `n` more calls have succeeded.
async fn rounds(ok: &AtomicUsize, n: usize) {
    let start = ok.load(Ordering::Relaxed);
    let more = async {
        while ok.load(Ordering::Relaxed) < start + n {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), more)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{n} more calls did not succeed within 20 s ({} did)",
                ok.load(Ordering::Relaxed) - start
            )
        });
}

#[tokio::test]
async fn model_a_replacing_the_logger_under_traffic_fails_no_call() {
    let registry = connect_plugin_tests::open_registry();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let host_url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(connect_plugin::serve(
        ServeConfig::new()
            .registry(registry.clone())
            .listener(listener),
    ));
    let platform = Platform::new(registry.clone(), &host_url).timeout(Duration::from_secs(10));
    let old = platform.add_managed(logger()).await.unwrap();
    platform.add_plugin(cache()).await.unwrap();
    let app = Client::new(ClientConfig::new(&host_url).self_id("app", "1.0.0")).unwrap();
    // Every set goes app -> host -> cache -> host -> logger.
    let cache_client = app.provider::<CacheServicePlugin>("").await.unwrap();
    let (stop, ok, workers) = traffic(&cache_client);
    rounds(&ok, 50).await;
    let new = platform
        .replace_plugin(
            "logger-plugin",
            PluginSpec {
                managed: true,
                ..logger()
            },
        )
        .await
        .unwrap();
    rounds(&ok, 50).await;
    stop.store(true, Ordering::Relaxed);
    let mut errors = Vec::new();
    for worker in workers {
        errors.extend(worker.await.unwrap());
    }
    assert!(
        errors.is_empty(),
        "{} calls failed: {:?}",
        errors.len(),
        &errors[..errors.len().min(3)]
    );
    assert_ne!(new, old);
    assert_eq!(
        registry.resolve(&old),
        new,
        "calls addressed to the old logger reach the new one"
    );
    platform.shutdown().await;
}

#[tokio::test]
async fn add_replace_under_traffic_and_remove() {
    let registry = connect_plugin_tests::open_registry();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let host_url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(connect_plugin::serve(
        ServeConfig::new()
            .registry(registry.clone())
            .listener(listener),
    ));
    let platform = Platform::new(registry.clone(), &host_url).timeout(Duration::from_secs(10));

    // The cache needs a logger to start: refused until one is there.
    let err = platform.add_plugin(cache()).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains("requires service \"logger\""),
        "{err}"
    );
    platform.add_plugin(logger()).await.unwrap();
    let old = platform.add_plugin(cache()).await.unwrap();

    let impact = platform.impact("logger-plugin").await;
    assert_eq!(impact.affected_plugins, ["cache-plugin"]);
    assert_eq!(impact.affected_services, ["cache", "logger"]);

    // Continuous traffic from an app, through the host, while the cache is replaced.
    let app = Client::new(ClientConfig::new(&host_url).self_id("app", "1.0.0")).unwrap();
    let cache_client = app.provider::<CacheServicePlugin>("").await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut workers = Vec::new();
    for worker in 0..4 {
        let (cache_client, stop, ok, failed) = (
            cache_client.clone(),
            Arc::clone(&stop),
            Arc::clone(&ok),
            Arc::clone(&failed),
        );
        workers.push(tokio::spawn(async move {
            let mut errors = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("w{worker}-{i}");
                let set = cache_client
                    .set(SetRequest {
                        key: key.clone(),
                        value: "v".into(),
                    })
                    .await;
                let get = cache_client.get(GetRequest { key }).await;
                match (set, get) {
                    (Ok(_), Ok(_)) => ok.fetch_add(1, Ordering::Relaxed),
                    (set, get) => {
                        errors.push(format!("{:?} {:?}", set.err(), get.err()));
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
                i += 1;
            }
            errors
        }));
    }
    // Let traffic flow, replace, let it flow on the new version.
    rounds(&ok, 50).await;
    let new = platform
        .replace_plugin("cache-plugin", cache())
        .await
        .unwrap();
    rounds(&ok, 50).await;
    stop.store(true, Ordering::Relaxed);
    let mut errors = Vec::new();
    for worker in workers {
        errors.extend(worker.await.unwrap());
    }
    assert!(
        errors.is_empty(),
        "{} calls failed during the replacement: {:?}",
        errors.len(),
        &errors[..errors.len().min(3)]
    );
    assert_ne!(new, old);
    let providers: Vec<_> = registry
        .providers("cache")
        .into_iter()
        .map(|p| p.runtime_id)
        .collect();
    assert_eq!(
        providers,
        std::slice::from_ref(&new),
        "only the new version is registered"
    );
    assert_eq!(registry.inflight(&old), 0, "the old version was drained");

    // Removal: nothing is routed to it any more.
    platform.remove_plugin("cache-plugin").await.unwrap();
    assert!(registry.providers("cache").is_empty());
    let err = cache_client
        .get(GetRequest { key: "x".into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    platform.shutdown().await;
}

#[tokio::test]
async fn model_a_the_host_manages_the_plugins_identity() {
    use connect_plugin::proto::capability::logger::v1::{LogRequest, LoggerPlugin};
    let registry = connect_plugin_tests::open_registry();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let host_url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(connect_plugin::serve(
        ServeConfig::new()
            .registry(registry.clone())
            .listener(listener),
    ));
    let platform = Platform::new(registry.clone(), &host_url).timeout(Duration::from_secs(10));

    // Model A dependency validation: the cache declares (in GetPluginInfo) that it needs a
    // logger, and there is none yet.
    let err = platform
        .add_managed(PluginSpec {
            provides: vec![],
            requires: vec![],
            ..cache()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    assert!(
        err.message().contains("requires service \"logger\""),
        "{err}"
    );

    // No HOST_URL: the plugin waits to be managed; the spec's provides come from the plugin.
    let mut managed = logger();
    managed.provides.clear();
    let runtime_id = platform.add_managed(managed).await.unwrap();
    assert!(runtime_id.starts_with("logger-plugin-"), "{runtime_id}");
    let providers = registry.providers("logger");
    assert_eq!(providers.len(), 1);
    assert_eq!(providers[0].runtime_id, runtime_id);

    // Now the managed cache can start: its declared dependency is there.
    platform
        .add_managed(PluginSpec {
            provides: vec![],
            requires: vec![],
            ..cache()
        })
        .await
        .unwrap();
    assert_eq!(registry.providers("cache").len(), 1);

    // It is discoverable and callable through the host like a self-registered one.
    let app = Client::new(ClientConfig::new(&host_url).self_id("app", "1.0.0")).unwrap();
    let logger = app.provider::<LoggerPlugin>("").await.unwrap();
    logger
        .log(LogRequest {
            level: "info".into(),
            message: "managed".into(),
            fields: Default::default(),
        })
        .await
        .unwrap();
    platform.shutdown().await;
}

//! Reliability issue, a host that heals: a platform plugin killed with `kill -9` under load is
//! noticed at once (its registrations withdrawn, the process reaped), started again with
//! backoff, and calls made through typed clients created before the crash reach the new
//! process. Real processes, real sockets; each test prints its counts.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use connect_plugin::host::platform::Platform;
use connect_plugin::process::RestartPolicy;
use connect_plugin::rpc::policy::Retry;
use connect_plugin::{Client, ClientConfig, Code, Request, ServiceRegistry};
use connect_plugin_tests::{plugin_spec, serve_registry};
use platform::cache::{CacheServicePlugin, SetRequest};

const APP_TOKEN: &str = "app-join-token-0123456789abcdef";
const LOGGER: &str = env!("CARGO_BIN_EXE_e2e-logger-plugin");
const CACHE: &str = env!("CARGO_BIN_EXE_e2e-cache-plugin");

use connect_plugin_tests::kill9;

/// The URL of the host `app` joined.
fn platform_host_url(app: &Client) -> String {
    app.channel().base_url().to_owned()
}

/// Polls `check` every 2 ms until it holds; how long that took, or `None` after `limit`.
async fn within(limit: Duration, mut check: impl FnMut() -> bool) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if check() {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    None
}

/// A platform with the logger and a cache that restarts up to `restarts` times, and an app
/// client joined to the host.
async fn platform_with_cache(restarts: u32) -> (Platform, ServiceRegistry, Client, String) {
    let registry = ServiceRegistry::new();
    registry
        .join_policy()
        .allow(Some("app"), APP_TOKEN, Vec::<String>::new())
        .unwrap();
    let host_url = serve_registry(&registry).await;
    let platform = Platform::new(registry.clone(), &host_url).timeout(Duration::from_secs(20));
    platform
        .add_plugin(plugin_spec("logger-plugin", LOGGER, "logger", None))
        .await
        .unwrap();
    let mut cache = plugin_spec("cache-plugin", CACHE, "cache", Some("logger"));
    cache.launch = cache.launch.restart(RestartPolicy::with_backoff(
        restarts,
        Duration::from_millis(50),
        Duration::from_secs(1),
    ));
    let cache_id = platform.add_plugin(cache).await.unwrap();
    let app = Client::new(
        ClientConfig::new(&host_url)
            .self_id("app", "1.0.0")
            .join_token(APP_TOKEN),
    )
    .unwrap();
    (platform, registry, app, cache_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_plugin_is_withdrawn_at_once_restarted_and_called_again() {
    let (platform, registry, app, first_id) = platform_with_cache(3).await;
    // Made before the crash: pinned to the first process's id.
    let cache = app.provider::<CacheServicePlugin>("").await.unwrap();

    // The same load from a client that retries (5 attempts, 100 ms doubling): it should see
    // none of the failures the plain workers see while the cache restarts.
    let retrying_app = Client::new(
        ClientConfig::new(platform_host_url(&app))
            .self_id("app", "1.0.0")
            .join_token(APP_TOKEN)
            .channel(|c| c.wrap(Retry::new().max_attempts(5).non_idempotent(true))),
    )
    .unwrap();
    let retrying = retrying_app
        .provider::<CacheServicePlugin>("")
        .await
        .unwrap();

    // Continuous routed load: two workers, each call with a 2 s deadline.
    let stop = Arc::new(AtomicBool::new(false));
    let (made, failed, hung, ok) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let workers: Vec<_> = (0..2)
        .map(|w| {
            let (cache, stop) = (cache.clone(), Arc::clone(&stop));
            let (made, failed, hung, ok) = (
                Arc::clone(&made),
                Arc::clone(&failed),
                Arc::clone(&hung),
                Arc::clone(&ok),
            );
            tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let started = Instant::now();
                    let request = Request::new(SetRequest {
                        key: format!("w{w}-{i}"),
                        value: "v".into(),
                    })
                    .with_timeout(Duration::from_secs(2));
                    made.fetch_add(1, Ordering::Relaxed);
                    let outcome = cache.set(request).await;
                    if started.elapsed() > Duration::from_millis(2_500) {
                        hung.fetch_add(1, Ordering::Relaxed);
                    }
                    match outcome {
                        Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    let (retried_made, retried_failed) =
        (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let retrying_worker = {
        let (stop, made, failed) = (
            Arc::clone(&stop),
            Arc::clone(&retried_made),
            Arc::clone(&retried_failed),
        );
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let request = Request::new(SetRequest {
                    key: format!("r-{i}"),
                    value: "v".into(),
                })
                .with_timeout(Duration::from_secs(5));
                made.fetch_add(1, Ordering::Relaxed);
                if retrying.set(request).await.is_err() {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    within(Duration::from_secs(5), || ok.load(Ordering::Relaxed) >= 20)
        .await
        .expect("calls succeed before the crash");

    let pid = platform.pid("cache-plugin").await.expect("running");
    kill9(pid);
    let withdrawn = within(Duration::from_secs(1), || {
        registry
            .providers("cache")
            .iter()
            .all(|p| p.runtime_id != first_id)
    })
    .await
    .expect("the dead provider is withdrawn within 1 s");
    let reaped = within(Duration::from_secs(1), || {
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
    })
    .await
    .expect("the dead process is reaped, not left a zombie");
    let restarted = within(Duration::from_secs(10), || {
        !registry.providers("cache").is_empty()
    })
    .await
    .expect("the plugin is started again and registers");
    // The platform takes the new process on once it is healthy.
    let started = Instant::now();
    loop {
        let new_id = platform.runtime_id("cache-plugin").await.unwrap();
        let new_pid = platform.pid("cache-plugin").await;
        if new_id != first_id && new_pid.is_some() {
            assert_ne!(new_pid, Some(pid));
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the restart completes"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // Calls through the client made before the crash reach the new process.
    let ok_at_restart = ok.load(Ordering::Relaxed);
    within(Duration::from_secs(5), || {
        ok.load(Ordering::Relaxed) >= ok_at_restart + 20
    })
    .await
    .expect("calls succeed again through the same typed client");
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }
    retrying_worker.await.unwrap();
    println!(
        "kill -9 under load: withdrawn after {withdrawn:?}, reaped after {reaped:?}, registered again after {restarted:?}; plain calls made {}, ok {}, failed {}, hung {}; retrying calls made {}, failed {}",
        made.load(Ordering::Relaxed),
        ok.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        hung.load(Ordering::Relaxed),
        retried_made.load(Ordering::Relaxed),
        retried_failed.load(Ordering::Relaxed),
    );
    assert_eq!(
        retried_failed.load(Ordering::Relaxed),
        0,
        "retries hide the restart"
    );
    assert_eq!(
        hung.load(Ordering::Relaxed),
        0,
        "no call outlived its deadline"
    );
    platform.shutdown().await;
}

#[tokio::test]
async fn without_restarts_a_killed_plugin_stays_withdrawn() {
    let (platform, registry, app, first_id) = platform_with_cache(0).await;
    let cache = app.provider::<CacheServicePlugin>("").await.unwrap();
    kill9(platform.pid("cache-plugin").await.unwrap());
    within(Duration::from_secs(1), || {
        registry.providers("cache").is_empty()
    })
    .await
    .expect("withdrawn within 1 s");
    let err = cache
        .set(SetRequest {
            key: "k".into(),
            value: "v".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    assert_eq!(platform.pid("cache-plugin").await, None);
    assert_eq!(
        platform.runtime_id("cache-plugin").await.as_deref(),
        Some(first_id.as_str())
    );
    platform.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_dependency_degrades_its_dependent_which_recovers_when_one_returns() {
    use connect_plugin::proto::connectplugin::v1::HealthState;

    let (platform, registry, app, cache_id) = platform_with_cache(3).await;
    let cache = app.provider::<CacheServicePlugin>("").await.unwrap();
    let set = |key: &str| {
        cache.set(SetRequest {
            key: key.into(),
            value: "v".into(),
        })
    };
    set("before").await.unwrap();
    let cache_pid = platform.pid("cache-plugin").await.unwrap();

    // The logger dies (and is not restarted): the cache keeps serving, DEGRADED.
    let lost = Instant::now();
    kill9(platform.pid("logger-plugin").await.unwrap());
    within(Duration::from_secs(1), || {
        registry.providers("logger").is_empty()
    })
    .await
    .expect("the logger is withdrawn");
    set("while degraded")
        .await
        .expect("the cache serves without its logger");
    let degraded = within(Duration::from_secs(5), || {
        registry.health(&cache_id) == HealthState::Degraded
    })
    .await
    .map(|_| lost.elapsed())
    .expect("the cache reports DEGRADED");

    // A logger comes back: the cache's logger client (pinned to the dead one) reaches it
    // through the host, and the cache turns HEALTHY by itself, without a restart.
    platform.remove_plugin("logger-plugin").await.unwrap();
    let returned = Instant::now();
    platform
        .add_plugin(plugin_spec("logger-plugin", LOGGER, "logger", None))
        .await
        .unwrap();
    let recovered = within(Duration::from_secs(10), || {
        registry.health(&cache_id) == HealthState::Healthy
    })
    .await
    .map(|_| returned.elapsed())
    .expect("the cache turns HEALTHY again");
    set("after").await.unwrap();
    assert_eq!(
        platform.pid("cache-plugin").await,
        Some(cache_pid),
        "the cache was not restarted"
    );
    println!(
        "dependency loss: cache DEGRADED {degraded:?} after the logger died; HEALTHY {recovered:?} after a logger returned (including its start)"
    );
    platform.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_host_restart_a_self_registering_plugin_is_back_within_5_s() {
    use connect_plugin::handshake::JOIN_TOKEN_ENV;
    use connect_plugin::{LaunchConfig, PluginProcess};

    const TOKEN: &str = "logger-join-token-0123456789abcdef";
    let registry = || {
        let registry = ServiceRegistry::new();
        registry
            .join_policy()
            .allow(Some("logger-plugin"), TOKEN, ["logger"])
            .unwrap();
        registry
    };
    let first = registry();
    let mut host = connect_plugin_tests::RestartableHost::start(&first).await;
    let host_url = host.url.clone();
    // The example logger in deployment model B: it joins with the operator's token.
    let _logger = PluginProcess::launch(
        LaunchConfig::new("logger", LOGGER)
            .env("HOST_URL", &host_url)
            .env(JOIN_TOKEN_ENV, TOKEN)
            .start_timeout(Duration::from_secs(20)),
    )
    .await
    .unwrap();
    within(Duration::from_secs(10), || {
        !first.providers("logger").is_empty()
    })
    .await
    .expect("registered with the first host");

    // The host restarts on the same address and knows nothing of the plugin.
    let second = registry();
    host.restart(&second).await;
    let back = within(Duration::from_secs(5), || {
        !second.providers("logger").is_empty()
    })
    .await
    .expect("the plugin joins and registers again within 5 s");
    println!("host restart: the example logger registered again after {back:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_managed_plugin_is_restarted_and_assigned_a_new_identity() {
    let registry = ServiceRegistry::new();
    let host_url = serve_registry(&registry).await;
    let platform = Platform::new(registry.clone(), &host_url).timeout(Duration::from_secs(20));
    let mut logger = plugin_spec("logger-plugin", LOGGER, "logger", None);
    logger.launch = logger.launch.restart(RestartPolicy::with_backoff(
        2,
        Duration::from_millis(50),
        Duration::from_secs(1),
    ));
    let first_id = platform.add_managed(logger).await.unwrap();
    let pid = platform.pid("logger-plugin").await.unwrap();
    kill9(pid);
    within(Duration::from_secs(1), || {
        registry
            .providers("logger")
            .iter()
            .all(|p| p.runtime_id != first_id)
    })
    .await
    .expect("withdrawn within 1 s");
    let started = Instant::now();
    let new_id = loop {
        let id = platform.runtime_id("logger-plugin").await.unwrap();
        if id != first_id && platform.pid("logger-plugin").await.is_some() {
            break id;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the managed plugin is restarted"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert!(
        registry
            .providers("logger")
            .iter()
            .any(|p| p.runtime_id == new_id),
        "it registered again under the identity the host assigned"
    );
    platform.shutdown().await;
}

/// `PluginControl`: the host stops a plugin it did not launch (model B) with the control token
/// the plugin gave it when it joined; a stranger who finds the port cannot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_stops_a_plugin_it_did_not_launch_and_a_stranger_cannot() {
    use connect_plugin::handshake::JOIN_TOKEN_ENV;
    use connect_plugin::proto::connectplugin::v1::{
        GetHealthRequest, HealthState, PluginControlClient, ShutdownRequest,
    };
    use connect_plugin::{Channel, LaunchConfig, PluginProcess};

    const TOKEN: &str = "logger-join-token-0123456789abcdef";
    let registry = ServiceRegistry::new();
    registry
        .join_policy()
        .allow(Some("logger-plugin"), TOKEN, ["logger"])
        .unwrap();
    let host_url = serve_registry(&registry).await;
    // Started by someone else (no launch secret guards it): only the control token does.
    let logger = PluginProcess::launch(
        LaunchConfig::new("logger", LOGGER)
            .env("HOST_URL", &host_url)
            .env(JOIN_TOKEN_ENV, TOKEN)
            .answer_anyone()
            .start_timeout(Duration::from_secs(20)),
    )
    .await
    .unwrap();
    within(Duration::from_secs(10), || {
        !registry.providers("logger").is_empty()
    })
    .await
    .expect("registered");
    let runtime_id = registry.providers("logger")[0].runtime_id.clone();
    let pid = logger.id().unwrap();

    let stranger = PluginControlClient::new(Channel::new(logger.endpoint()).unwrap());
    let health = stranger
        .get_health(GetHealthRequest {})
        .await
        .unwrap()
        .into_message();
    assert_eq!(health.state, HealthState::Healthy as i32);
    let err = stranger
        .shutdown(ShutdownRequest {
            grace_period_seconds: 1,
            reason: "mischief".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");

    registry
        .stop_plugin(&runtime_id, Duration::from_secs(5), "maintenance")
        .await
        .expect("the host stops it");
    assert!(registry.providers("logger").is_empty(), "withdrawn");
    let exited = within(Duration::from_secs(10), || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map_or(true, |stat| stat.split(' ').nth(2) == Some("Z"))
    })
    .await;
    assert!(exited.is_some(), "the plugin process exits");
    drop(logger);
}

/// `Shutdown`'s grace period holds: a plugin with a call that would keep its drain going for
/// its own 30 s shutdown timeout stops once the host's 1 s grace period is over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_plugin_keeps_to_the_grace_period_its_host_gives() {
    use connect_plugin::handshake::JOIN_TOKEN_ENV;
    use connect_plugin::{Channel, LaunchConfig, MessageStream, PluginProcess};
    use connect_plugin_tests::interop::InteropServicePlugin;

    const TOKEN: &str = "interop-join-token-0123456789abcdef";
    let registry = ServiceRegistry::new();
    registry
        .join_policy()
        .allow(Some("interop-plugin"), TOKEN, ["interop"])
        .unwrap();
    let host_url = serve_registry(&registry).await;
    let plugin = PluginProcess::launch(
        LaunchConfig::new("interop", env!("CARGO_BIN_EXE_interop-plugin"))
            .env("HOST_URL", &host_url)
            .env(JOIN_TOKEN_ENV, TOKEN)
            .answer_anyone()
            .start_timeout(Duration::from_secs(20)),
    )
    .await
    .unwrap();
    within(Duration::from_secs(10), || {
        !registry.providers("interop").is_empty()
    })
    .await
    .expect("registered");
    let runtime_id = registry.providers("interop")[0].runtime_id.clone();
    let pid = plugin.id().unwrap();

    // A bidi call that stays open: without the grace period the drain would wait 30 s.
    let interop =
        connect_plugin::dispense::<InteropServicePlugin>(&Channel::new(plugin.endpoint()).unwrap());
    let (_requests_open, requests) = MessageStream::channel(1);
    let open = interop.bidi(requests).await.unwrap();

    let asked = Instant::now();
    registry
        .stop_plugin(&runtime_id, Duration::from_secs(1), "maintenance")
        .await
        .expect("the host stops it");
    let exited = within(Duration::from_secs(10), || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map_or(true, |stat| stat.split(' ').nth(2) == Some("Z"))
    })
    .await
    .map(|_| asked.elapsed());
    println!("stopped with a 1 s grace period and a call open: exited after {exited:?}");
    let exited = exited.expect("the plugin process exits");
    assert!(
        exited >= Duration::from_millis(900) && exited < Duration::from_secs(4),
        "{exited:?}"
    );
    drop(open);
    drop(plugin);
}

/// `kill -9` under continuous direct load (no host in between), through a circuit breaker:
/// no call outlives its deadline, the breaker opens while the plugin is down and closes again
/// once its restart answers, and calls through the channel made before the crash succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_breaker_opens_on_a_killed_plugin_and_closes_once_it_is_back() {
    use connect_plugin::process::{PluginState, RestartPolicy as Policy};
    use connect_plugin::rpc::policy::{BreakerState, CircuitBreaker};
    use connect_plugin::{LaunchConfig, SupervisedPlugin};
    use kv::v1::{KvServicePlugin, PutRequest};

    let plugin =
        SupervisedPlugin::launch(
            LaunchConfig::new("kv", env!("CARGO_BIN_EXE_e2e-kv-plugin")).restart(
                Policy::with_backoff(3, Duration::from_millis(50), Duration::from_secs(1)),
            ),
        )
        .await
        .unwrap();
    let changes = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = Arc::clone(&changes);
    let channel = plugin.channel().unwrap();
    // The same connection settings, with a breaker: rebuild from the plugin's channel.
    let channel = connect_plugin::Channel::builder(channel.base_url())
        .metadata(channel.metadata().clone())
        .wrap(
            CircuitBreaker::new()
                .failure_threshold(3)
                .open_for(Duration::from_millis(300))
                .on_state_change(move |old, new| seen.lock().unwrap().push((old, new))),
        )
        .build()
        .unwrap();
    let kv = connect_plugin::dispense::<KvServicePlugin>(&channel);

    let stop = Arc::new(AtomicBool::new(false));
    let counts: Arc<[AtomicUsize; 5]> = Arc::new(Default::default());
    const MADE: usize = 0;
    const OK: usize = 1;
    const FAILED: usize = 2;
    const REFUSED_BY_BREAKER: usize = 3;
    const HUNG: usize = 4;
    let worker = {
        let (kv, stop, counts) = (kv.clone(), Arc::clone(&stop), Arc::clone(&counts));
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                counts[MADE].fetch_add(1, Ordering::Relaxed);
                let started = Instant::now();
                let request = Request::new(PutRequest {
                    key: format!("k{i}"),
                    value: "v".into(),
                })
                .with_timeout(Duration::from_secs(1));
                let outcome = kv.put(request).await;
                if started.elapsed() > Duration::from_millis(1_500) {
                    counts[HUNG].fetch_add(1, Ordering::Relaxed);
                }
                match outcome {
                    Ok(_) => counts[OK].fetch_add(1, Ordering::Relaxed),
                    Err(e) if e.message().contains("circuit breaker") => {
                        counts[REFUSED_BY_BREAKER].fetch_add(1, Ordering::Relaxed)
                    }
                    Err(_) => counts[FAILED].fetch_add(1, Ordering::Relaxed),
                };
                // A caller that backs off a little, as real ones do.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };
    within(Duration::from_secs(5), || {
        counts[OK].load(Ordering::Relaxed) >= 20
    })
    .await
    .expect("calls succeed before the crash");
    let PluginState::Running { pid, .. } = plugin.state() else {
        panic!("not running: {:?}", plugin.state());
    };
    let killed = Instant::now();
    kill9(pid);
    use BreakerState::{Closed, HalfOpen, Open};
    let opened = within(Duration::from_secs(2), || {
        changes.lock().unwrap().contains(&(Closed, Open))
    })
    .await
    .expect("the breaker opens while the plugin is down");
    let closed = within(Duration::from_secs(10), || {
        changes.lock().unwrap().contains(&(HalfOpen, Closed))
    })
    .await
    .expect("the breaker closes once the plugin is back");
    let ok_then = counts[OK].load(Ordering::Relaxed);
    within(Duration::from_secs(5), || {
        counts[OK].load(Ordering::Relaxed) >= ok_then + 20
    })
    .await
    .expect("calls succeed again");
    stop.store(true, Ordering::Relaxed);
    worker.await.unwrap();
    let count = |i: usize| counts[i].load(Ordering::Relaxed);
    println!(
        "kill -9 under direct load with a breaker: opened {opened:?} and closed {closed:?} after the kill ({:?} ago); calls made {}, ok {}, failed {}, refused by the open breaker {}, hung {}; breaker changes {:?}",
        killed.elapsed(),
        count(MADE),
        count(OK),
        count(FAILED),
        count(REFUSED_BY_BREAKER),
        count(HUNG),
        changes.lock().unwrap()
    );
    assert_eq!(count(HUNG), 0, "no call outlived its deadline");
    assert!(
        count(REFUSED_BY_BREAKER) > 0,
        "the open breaker answered at once"
    );
    plugin.shutdown(Duration::from_secs(5)).await;
}

//! Plugin system part 1 over real sockets: serve, handshake (every rejection), version
//! negotiation, typed dispensing, health, the capability broker (and every misuse of a grant),
//! graceful shutdown and the cleanup hook.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use connect_plugin::handshake::JoinPolicy;
use connect_plugin::proto::capability::logger::v1::{
    LogRequest, Logger, LoggerPlugin, LoggerServer,
};
use connect_plugin::proto::connectplugin::health::v1::{
    HealthCheckRequest, HealthServicePlugin, ServingStatus,
};
use connect_plugin::{
    CapabilityBroker, Client, ClientConfig, Code, Error, HealthServer, Request, Response,
    ServeConfig, host::broker::CapabilityDefinition,
};
use connect_plugin_tests::interop::{InteropServicePlugin, InteropServiceServer, Payload};
use connect_plugin_tests::raw_http1;
use kv::MemoryStore;
use kv::v1::{GetRequest, KvServicePlugin, PutRequest};
use tokio::sync::oneshot;

/// Serves `config` on an ephemeral port until the returned sender is dropped or fired.
async fn start(
    config: ServeConfig,
) -> (
    String,
    oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), Error>>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let config = config.listener(listener).stop_signal(async {
        let _ = stopped.await;
    });
    let task = tokio::spawn(connect_plugin::serve(config));
    (format!("http://{addr}"), stop, task)
}

fn kv_config() -> ServeConfig {
    ServeConfig::new().plugin(KvServicePlugin::server(MemoryStore::default()))
}

#[tokio::test]
async fn handshake_then_typed_dispense() {
    let (url, _stop, _task) = start(kv_config().server_metadata("region", "test")).await;
    let client = Client::new(ClientConfig::new(&url).plugin::<KvServicePlugin>()).unwrap();
    assert!(client.handshake_info().is_none(), "lazy: nothing sent yet");
    let kv = client.dispense::<KvServicePlugin>().await.unwrap();
    kv.put(PutRequest {
        key: "k".into(),
        value: "v".into(),
    })
    .await
    .unwrap();
    assert!(kv.get(GetRequest { key: "k".into() }).await.unwrap().found);
    let info = client.connect().await.unwrap();
    assert_eq!(info.server_metadata["region"], "test");
    assert_eq!(info.plugins[0].name, "kv");
    assert_eq!(info.plugins[0].service_path, "kv.v1.KVService");
    assert!(info.identity.is_none());
    // connect() is idempotent; close() makes later use fail clearly.
    client.connect().await.unwrap();
    client.close();
    assert_eq!(
        client
            .dispense::<KvServicePlugin>()
            .await
            .unwrap_err()
            .code(),
        Code::FailedPrecondition
    );
}

#[tokio::test]
async fn every_handshake_rejection_is_clear() {
    let (url, _stop, _task) = start(kv_config().app_protocol_versions(vec![1, 2, 3])).await;

    let bad_cookie =
        Client::new(ClientConfig::new(&url).magic_cookie("CONNECT_PLUGIN", "wrong")).unwrap();
    let err = bad_cookie.connect().await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("invalid magic cookie"), "{err}");

    let old = Client::new(ClientConfig::new(&url).app_protocol_version(7)).unwrap();
    let err = old.connect().await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("version mismatch"), "{err}");

    let negotiating =
        Client::new(ClientConfig::new(&url).app_protocol_versions(vec![2, 3, 4])).unwrap();
    negotiating.connect().await.unwrap();
    assert_eq!(
        negotiating.app_protocol_version(),
        Some(3),
        "the highest common version wins"
    );

    let wants_logger = Client::new(ClientConfig::new(&url).plugin::<LoggerPlugin>()).unwrap();
    let err = wants_logger.connect().await.unwrap_err();
    assert!(
        err.message()
            .contains("requested plugin \"logger\" not available"),
        "{err}"
    );

    let not_requested = Client::new(ClientConfig::new(&url)).unwrap();
    let err = not_requested
        .dispense::<KvServicePlugin>()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(
        err.message()
            .contains("ClientConfig::plugin::<KvServicePlugin>()"),
        "{err}"
    );

    let nobody = Client::new(ClientConfig::new("http://127.0.0.1:1")).unwrap();
    assert_eq!(
        nobody.connect().await.unwrap_err().code(),
        Code::Unavailable
    );
}

#[tokio::test]
async fn health_check_watch_and_probes() {
    let health = HealthServer::new();
    let (url, stop, task) = start(kv_config().health(health.clone())).await;
    let channel = connect_plugin::Channel::new(&url).unwrap();
    let client = connect_plugin::dispense::<HealthServicePlugin>(&channel);
    let overall = client
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(overall.status, ServingStatus::Serving as i32);
    let kv = client
        .check(HealthCheckRequest {
            service: "kv.v1.KVService".into(),
        })
        .await
        .unwrap();
    assert_eq!(
        kv.status,
        ServingStatus::Serving as i32,
        "each plugin's service is reported"
    );
    let err = client
        .check(HealthCheckRequest {
            service: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    let mut watch = client
        .watch(HealthCheckRequest {
            service: "kv.v1.KVService".into(),
        })
        .await
        .unwrap()
        .into_message();
    assert_eq!(
        watch.message().await.unwrap().unwrap().status,
        ServingStatus::Serving as i32,
        "current status first"
    );
    health.set_status("kv.v1.KVService", ServingStatus::NotServing);
    assert_eq!(
        watch.message().await.unwrap().unwrap().status,
        ServingStatus::NotServing as i32,
        "then changes"
    );

    let addr = url.trim_start_matches("http://").parse().unwrap();
    let r = raw_http1(addr, "GET", "/healthz", &[], b"").await;
    assert_eq!((r.status, r.text().as_str()), (200, "ok"));
    let r = raw_http1(addr, "GET", "/readyz", &[], b"").await;
    assert_eq!((r.status, r.text().as_str()), (200, "ready"));
    health.set_status("", ServingStatus::NotServing);
    let r = raw_http1(addr, "GET", "/readyz", &[], b"").await;
    assert_eq!((r.status, r.text().as_str()), (503, "not ready"));

    drop(stop);
    task.await.unwrap().unwrap();
    assert!(!health.is_ready(), "shutdown leaves everything NOT_SERVING");
}

#[tokio::test]
async fn health_monitor_reports_changes() {
    let health = HealthServer::new();
    let (url, _stop, _task) = start(kv_config().health(health.clone())).await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let recorder = Arc::clone(&seen);
    let mut monitor = connect_plugin::health::HealthMonitor::start(
        &connect_plugin::Channel::new(&url).unwrap(),
        "",
        Duration::from_millis(20),
        move |status| recorder.lock().unwrap().push(status),
    );
    monitor
        .wait_for(connect_plugin::health::HealthStatus::Serving)
        .await;
    health.set_status("", ServingStatus::NotServing);
    tokio::time::timeout(
        Duration::from_secs(5),
        monitor.wait_for(connect_plugin::health::HealthStatus::NotServing),
    )
    .await
    .expect("the monitor notices within 5 s");
    assert_eq!(
        *seen.lock().unwrap(),
        [
            connect_plugin::health::HealthStatus::Serving,
            connect_plugin::health::HealthStatus::NotServing
        ]
    );
}

/// A logger capability that records what it is told.
#[derive(Clone, Default)]
struct RecordingLogger(Arc<Mutex<Vec<(String, String)>>>);

impl Logger for RecordingLogger {
    async fn log(
        &self,
        request: Request<LogRequest>,
    ) -> Result<Response<connect_plugin::proto::capability::logger::v1::LogResponse>, Error> {
        let caller = request
            .metadata()
            .get("x-plugin-runtime-id")
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        self.0
            .lock()
            .unwrap()
            .push((caller, request.into_message().message));
        Ok(Response::new(Default::default()))
    }
}

fn broker(logger: &RecordingLogger, ttl: Duration) -> CapabilityBroker {
    CapabilityBroker::with_grant_ttl(ttl)
        .capability(CapabilityDefinition::new(
            "logger",
            "1.2.0",
            LoggerServer::new(logger.clone()).into_service(),
        ))
        .unwrap()
}

async fn log_via(
    grant: &connect_plugin::client::CapabilityGrant,
    message: &str,
) -> Result<(), Error> {
    connect_plugin::dispense::<LoggerPlugin>(grant.channel())
        .log(LogRequest {
            level: "info".into(),
            message: message.into(),
            fields: Default::default(),
        })
        .await
        .map(drop)
}

#[tokio::test]
async fn capability_broker_grants_and_refuses_misuse() {
    let logger = RecordingLogger::default();
    let broker = broker(&logger, Duration::from_secs(60));
    let (url, _stop, _task) = start(
        kv_config()
            .broker(broker.clone())
            .join_policy(JoinPolicy::open()),
    )
    .await;

    let plugin_a = Client::new(ClientConfig::new(&url).self_id("plugin-a", "1.0.0")).unwrap();
    let caps = &plugin_a.connect().await.unwrap().host_capabilities;
    assert_eq!(
        (caps[0].r#type.as_str(), caps[0].version.as_str()),
        ("logger", "1.2.0"),
        "advertised in the handshake"
    );
    let a_id = plugin_a.runtime_identity().unwrap().runtime_id.clone();
    let grant = plugin_a
        .request_capability("logger", "1.0.0")
        .await
        .unwrap();
    log_via(&grant, "hello from a").await.unwrap();
    assert_eq!(
        *logger.0.lock().unwrap(),
        [(a_id.clone(), "hello from a".to_owned())]
    );

    // min_version is compared as semver: 1.10.0 > 1.2.0 (a string compare would say no).
    assert_eq!(
        plugin_a
            .request_capability("logger", "1.10.0")
            .await
            .unwrap_err()
            .code(),
        Code::FailedPrecondition
    );
    assert_eq!(
        plugin_a
            .request_capability("logger", "one")
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
    assert_eq!(
        plugin_a
            .request_capability("metrics", "")
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );

    // No identity, no grant.
    let anonymous = Client::new(ClientConfig::new(&url)).unwrap();
    assert_eq!(
        anonymous
            .request_capability("logger", "")
            .await
            .unwrap_err()
            .code(),
        Code::FailedPrecondition
    );

    // Another plugin cannot use a's grant: the grant is bound to a's runtime id.
    let plugin_b = Client::new(ClientConfig::new(&url).self_id("plugin-b", "1.0.0")).unwrap();
    plugin_b.connect().await.unwrap();
    let b = plugin_b.runtime_identity().unwrap().clone();
    let addr = url.trim_start_matches("http://").parse().unwrap();
    let (second_id, token_of_a) = grant_token(&plugin_a).await;
    let path = format!("/capabilities/logger/{second_id}/capability.logger.v1.Logger/Log");
    let r = raw_http1(
        addr,
        "POST",
        &path,
        &[
            ("content-type", "application/json"),
            ("x-plugin-runtime-id", &b.runtime_id),
            ("authorization", &format!("Bearer {token_of_a}")),
        ],
        b"{}",
    )
    .await;
    assert_eq!(r.status, 403, "another plugin's grant: {}", r.text());
    // Wrong token, unknown grant, no token.
    let r = raw_http1(
        addr,
        "POST",
        &path,
        &[
            ("content-type", "application/json"),
            ("x-plugin-runtime-id", &a_id),
            ("authorization", "Bearer wrong"),
        ],
        b"{}",
    )
    .await;
    assert_eq!(r.status, 401, "{}", r.text());
    let r = raw_http1(
        addr,
        "POST",
        "/capabilities/logger/0000/capability.logger.v1.Logger/Log",
        &[
            ("content-type", "application/json"),
            ("authorization", "Bearer x"),
        ],
        b"{}",
    )
    .await;
    assert_eq!(r.status, 401, "{}", r.text());
    let r = raw_http1(
        addr,
        "POST",
        &path,
        &[("content-type", "application/json")],
        b"{}",
    )
    .await;
    assert_eq!(r.status, 401, "{}", r.text());

    // Revoked grants stop working.
    assert!(broker.revoke(&grant.grant_id));
    assert_eq!(
        log_via(&grant, "after revoke").await.unwrap_err().code(),
        Code::Unauthenticated
    );

    // A plugin that goes loses every grant it holds at once (revoke_runtime), and only its.
    let first = plugin_a.request_capability("logger", "").await.unwrap();
    let second = plugin_a.request_capability("logger", "").await.unwrap();
    let of_b = plugin_b.request_capability("logger", "").await.unwrap();
    // Grants of a made above and not revoked: the one grant_token took.
    assert_eq!(broker.revoke_runtime(&a_id), 3, "a's three live grants");
    for grant in [&first, &second] {
        assert_eq!(
            log_via(grant, "after revoke_runtime")
                .await
                .unwrap_err()
                .code(),
            Code::Unauthenticated
        );
    }
    log_via(&of_b, "b's grant still works").await.unwrap();
    assert_eq!(broker.revoke_runtime(&a_id), 0);
}

/// A fresh grant's id and bearer token, as the plugin that asked for it holds them.
async fn grant_token(client: &Client) -> (String, String) {
    let grant = client.request_capability("logger", "").await.unwrap();
    let token = grant
        .channel()
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").map(str::to_owned))
        .unwrap();
    (grant.grant_id, token)
}

#[tokio::test]
async fn expired_grants_are_refused() {
    let logger = RecordingLogger::default();
    let (url, _stop, _task) = start(
        kv_config()
            .broker(broker(&logger, Duration::from_millis(50)))
            .join_policy(JoinPolicy::open()),
    )
    .await;
    let plugin = Client::new(ClientConfig::new(&url).self_id("p", "1")).unwrap();
    let grant = plugin.request_capability("logger", "").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let err = log_via(&grant, "late").await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(err.message().contains("expired"), "{err}");
}

#[tokio::test]
async fn shutdown_flips_readiness_drains_in_flight_calls_and_runs_cleanup() {
    let health = HealthServer::new();
    let cleaned = Arc::new(Mutex::new(false));
    let flag = Arc::clone(&cleaned);
    let arrived = Arc::new(tokio::sync::Notify::new());
    let config = ServeConfig::new()
        .service(
            InteropServiceServer::new(connect_plugin_tests::interop::SlowAnswer {
                arrived: Arc::clone(&arrived),
            })
            .into_service(),
        )
        .health(health.clone())
        .cleanup(move || async move { *flag.lock().unwrap() = true });
    let (url, stop, task) = start(config).await;
    let client = connect_plugin::dispense::<InteropServicePlugin>(
        &connect_plugin::Channel::new(&url).unwrap(),
    );
    let slow = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .unary(Payload {
                    text: "slow".into(),
                    sleep_ms: 300,
                    ..Default::default()
                })
                .await
        }
    });
    tokio::time::timeout(Duration::from_secs(5), arrived.notified())
        .await
        .expect("the slow call reaches the server");
    assert!(health.is_ready());
    stop.send(()).unwrap();
    // Readiness flips first: while the call is still in flight.
    let flipped = async {
        while health.is_ready() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), flipped)
        .await
        .expect("readiness flips once the stop is asked");
    assert!(
        !slow.is_finished(),
        "readiness flipped while the call was still in flight"
    );
    let done = slow
        .await
        .unwrap()
        .expect("the in-flight call completes during the drain");
    assert_eq!(done.text, "slow");
    task.await.unwrap().unwrap();
    assert!(!health.is_ready());
    assert!(*cleaned.lock().unwrap(), "the cleanup hook ran");
    assert_eq!(
        client.unary(Payload::default()).await.unwrap_err().code(),
        Code::Unavailable,
        "no longer serving"
    );
}

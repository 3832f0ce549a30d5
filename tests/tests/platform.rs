//! The platform example as separate processes: a host and three plugins started in dependency
//! order (logger, cache, app), each registering with the host, and calls flowing plugin to
//! plugin through the host (app -> host -> cache -> host -> logger).

use std::time::Duration;

#[tokio::test]
async fn three_plugins_and_a_host_call_each_other_through_the_host() {
    let host = env!("CARGO_BIN_EXE_e2e-platform-host");
    let dir = std::path::Path::new(host).parent().unwrap();
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(host)
            .env("PLATFORM_PLUGIN_DIR", dir)
            .env("PLATFORM_PLUGIN_PREFIX", "e2e-")
            .output(),
    )
    .await
    .expect("the platform demo finishes within 60 s")
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines.contains(&"startup order: logger-plugin -> cache-plugin -> app-plugin"),
        "{stdout}"
    );
    let position = |prefix: &str| {
        lines
            .iter()
            .position(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} in {stdout}"))
    };
    assert!(
        position("logger-plugin registered logger") < position("cache-plugin registered cache")
    );
    assert!(position("cache-plugin registered cache") < position("app-plugin: cache returned"));
    assert!(
        stdout.contains("app-plugin: cache returned found=true value=\"hello from app-plugin\""),
        "{stdout}"
    );
    // The cache logged the app's write through the logger plugin, via the host.
    assert!(
        stderr.contains("cache set greeting=hello from app-plugin"),
        "{stderr}"
    );
    assert!(
        stderr.contains("[cache-plugin-"),
        "the logger saw the caller's checked id: {stderr}"
    );
    assert!(
        stdout.contains("stopped logger-plugin (exit status: 0)"),
        "{stdout}"
    );
}

/// Reads watch events until one has `state`, within 10 s.
async fn wait_state(
    watch: &mut connect_plugin::Streaming<
        connect_plugin::proto::connectplugin::v1::WatchServiceEvent,
    >,
    state: connect_plugin::proto::connectplugin::v1::ServiceState,
) {
    let until = async {
        while let Some(event) = watch.message().await.unwrap() {
            if event.state == state as i32 {
                return;
            }
        }
        panic!("the watch ended before {state:?}");
    };
    tokio::time::timeout(Duration::from_secs(10), until)
        .await
        .unwrap_or_else(|_| panic!("no {state:?} within 10 s"));
}

#[tokio::test]
async fn cache_is_degraded_without_a_logger_and_healthy_once_one_appears() {
    use connect_plugin::proto::connectplugin::v1::{ServiceState, WatchServiceRequest};
    use connect_plugin::{Client, ClientConfig, LaunchConfig, PluginProcess, ServeConfig};

    let registry = connect_plugin_tests::open_registry();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let host_url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(connect_plugin::serve(
        ServeConfig::new()
            .registry(registry.clone())
            .listener(listener),
    ));
    let watcher = Client::new(ClientConfig::new(&host_url).self_id("watcher", "1.0.0")).unwrap();
    let mut watch = watcher
        .registry()
        .watch_service(
            watcher
                .authenticated(WatchServiceRequest {
                    service_type: "cache".into(),
                })
                .await
                .unwrap(),
        )
        .await
        .unwrap()
        .into_message();

    let _cache = PluginProcess::launch(
        LaunchConfig::new("cache", env!("CARGO_BIN_EXE_e2e-cache-plugin"))
            .env("HOST_URL", &host_url),
    )
    .await
    .unwrap();
    wait_state(&mut watch, ServiceState::Degraded).await;

    let _logger = PluginProcess::launch(
        LaunchConfig::new("logger", env!("CARGO_BIN_EXE_e2e-logger-plugin"))
            .env("HOST_URL", &host_url),
    )
    .await
    .unwrap();
    wait_state(&mut watch, ServiceState::Available).await;
    let cache_id = &registry.providers("cache")[0].runtime_id;
    assert_eq!(
        registry.health(cache_id),
        connect_plugin::proto::connectplugin::v1::HealthState::Healthy
    );
}

#[tokio::test]
async fn the_packaged_host_runs_plugins_from_a_config_file() {
    use tokio::io::AsyncBufReadExt;
    let dir = std::env::temp_dir().join(format!("connect-plugin-host-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = serde_json::json!({
        "lease_seconds": 30,
        "logger_capability": true,
        "join_tokens": [{ "plugin": "app", "token_env": "APP_JOIN_TOKEN" }],
        "plugins": [
            { "name": "logger-plugin", "path": env!("CARGO_BIN_EXE_e2e-logger-plugin"), "managed": true,
              "provides": [{ "type": "logger", "version": "0.1.0" }] },
            { "name": "cache-plugin", "path": env!("CARGO_BIN_EXE_e2e-cache-plugin"),
              "provides": [{ "type": "cache", "version": "0.1.0" }], "requires": ["logger"] }
        ]
    });
    let path = dir.join("host.json");
    std::fs::write(&path, config.to_string()).unwrap();
    let mut host = tokio::process::Command::new(env!("CARGO_BIN_EXE_e2e-connect-plugin-host"))
        .arg(&path)
        .env("APP_JOIN_TOKEN", "app-token-0123456789abcdef")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(host.stdout.take().unwrap()).lines();
    let mut url = None;
    let mut started = Vec::new();
    while let Some(line) = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .unwrap()
        .unwrap()
    {
        if let Some(rest) = line.strip_prefix("started ") {
            started.push(rest.split(' ').next().unwrap().to_owned());
        }
        if let Some(rest) = line.strip_prefix("ready ") {
            url = Some(rest.to_owned());
            break;
        }
    }
    assert_eq!(
        started,
        ["logger-plugin", "cache-plugin"],
        "dependency order"
    );
    let url = url.expect("the host printed its URL");

    let app = connect_plugin::Client::new(
        connect_plugin::ClientConfig::new(&url)
            .self_id("app", "1.0.0")
            .join_token("app-token-0123456789abcdef"),
    )
    .unwrap();
    let caps = &app.connect().await.unwrap().host_capabilities;
    assert_eq!(
        caps[0].r#type, "logger",
        "the configured capability is offered"
    );
    let cache = app
        .provider::<platform::cache::CacheServicePlugin>("")
        .await
        .unwrap();
    cache
        .set(platform::cache::SetRequest {
            key: "k".into(),
            value: "v".into(),
        })
        .await
        .unwrap();
    assert!(
        cache
            .get(platform::cache::GetRequest { key: "k".into() })
            .await
            .unwrap()
            .found
    );

    let status = std::process::Command::new("kill")
        .args(["-TERM", &host.id().unwrap().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(15), host.wait())
        .await
        .expect("the host stops")
        .unwrap();
    assert!(exit.success(), "{exit}");
    let _ = std::fs::remove_dir_all(dir);
}

/// Security issue, item 7 (part): a host serving cleartext on a non-loopback address says so.
#[tokio::test]
async fn cleartext_on_a_non_loopback_address_is_warned_about() {
    use tokio::io::AsyncBufReadExt;
    let dir = std::env::temp_dir().join(format!("connect-plugin-cleartext-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("host.json");
    std::fs::write(&path, r#"{ "addr": "0.0.0.0:0", "plugins": [] }"#).unwrap();
    let mut host = tokio::process::Command::new(env!("CARGO_BIN_EXE_e2e-connect-plugin-host"))
        .arg(&path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(host.stderr.take().unwrap()).lines();
    let warned = tokio::time::timeout(Duration::from_secs(20), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("WARN") && line.contains("cleartext on a non-loopback address") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(
        warned,
        Ok(true),
        "no cleartext warning from a host on 0.0.0.0"
    );
    let _ = host.kill().await;
    let _ = std::fs::remove_dir_all(&dir);
}

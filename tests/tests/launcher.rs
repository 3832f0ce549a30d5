//! Managed plugin processes: crash detection and restart, plugins dying with their host,
//! checksum verification, start failures, and the in-memory strategy running the same KV
//! scenario as a real process.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use connect_plugin::{
    Client, Code, InMemoryPlugin, LaunchConfig, PluginProcess, ServeConfig, SupervisedPlugin,
    process::PluginState, process::RestartPolicy,
};
use kv::MemoryStore;
use kv::v1::{DeleteRequest, GetRequest, KvServicePlugin, PutRequest, WatchRequest};
use tokio::io::{AsyncBufReadExt, BufReader};

const KV_PLUGIN: &str = env!("CARGO_BIN_EXE_e2e-kv-plugin");
const KV_HOST: &str = env!("CARGO_BIN_EXE_e2e-kv-host");

fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

use connect_plugin_tests::kill9;

#[tokio::test]
async fn kill_9_is_noticed_within_a_second_and_the_plugin_comes_back() {
    let crashes = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&crashes);
    let plugin = SupervisedPlugin::launch(
        LaunchConfig::new("kv", KV_PLUGIN)
            .restart(RestartPolicy::with_backoff(
                3,
                Duration::from_millis(50),
                Duration::from_secs(1),
            ))
            .on_crash(move |event| seen.lock().unwrap().push(event.clone())),
    )
    .await
    .unwrap();
    let PluginState::Running {
        endpoint,
        pid,
        restarts: 0,
    } = plugin.state()
    else {
        panic!("not running: {:?}", plugin.state());
    };
    let kv = connect_plugin::dispense::<KvServicePlugin>(&plugin.channel().unwrap());
    kv.put(PutRequest {
        key: "k".into(),
        value: "v".into(),
    })
    .await
    .unwrap();

    kill9(pid);
    tokio::time::timeout(
        Duration::from_secs(1),
        plugin.wait_for(|s| !matches!(s, PluginState::Running { restarts: 0, .. })),
    )
    .await
    .expect("the crash is noticed within a second");
    let state = tokio::time::timeout(
        Duration::from_secs(10),
        plugin.wait_for(|s| matches!(s, PluginState::Running { restarts: 1, .. })),
    )
    .await
    .expect("the restart policy brings it back");
    let PluginState::Running {
        endpoint: again,
        pid: new_pid,
        ..
    } = state
    else {
        unreachable!()
    };
    assert_eq!(
        again, endpoint,
        "same port, so existing channels keep working"
    );
    assert_ne!(new_pid, pid);
    let got = kv.get(GetRequest { key: "k".into() }).await.unwrap();
    assert!(
        !got.found,
        "a new process: the in-memory store started empty"
    );
    {
        let crashes = crashes.lock().unwrap();
        assert_eq!(crashes.len(), 1);
        assert!(crashes[0].will_restart);
        assert_eq!(crashes[0].plugin, "kv");
    }
    plugin.shutdown(Duration::from_secs(5)).await;
    assert!(!alive(new_pid), "shutdown stops the process");
}

#[tokio::test]
async fn without_a_restart_policy_a_crash_is_final() {
    let plugin = SupervisedPlugin::launch(LaunchConfig::new("kv", KV_PLUGIN))
        .await
        .unwrap();
    let PluginState::Running { pid, .. } = plugin.state() else {
        panic!()
    };
    kill9(pid);
    let state = tokio::time::timeout(
        Duration::from_secs(5),
        plugin.wait_for(|s| matches!(s, PluginState::Failed { .. })),
    )
    .await
    .unwrap();
    assert!(matches!(state, PluginState::Failed { .. }));
}

#[tokio::test]
async fn a_plugin_exits_within_two_seconds_of_its_host_being_killed() {
    let mut host = tokio::process::Command::new(KV_HOST)
        .env("KV_PLUGIN_BIN", KV_PLUGIN)
        .env("KV_HOST_HOLD", "1")
        .env_remove("PLUGIN_ENDPOINT")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(host.stdout.take().unwrap()).lines();
    let mut plugin_pid = None;
    while let Some(line) = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .unwrap()
        .unwrap()
    {
        if let Some(rest) = line.strip_prefix("launched kv-plugin (pid ") {
            plugin_pid = rest.split(')').next().and_then(|p| p.parse::<u32>().ok());
        }
        if line == "holding" {
            break;
        }
    }
    let plugin_pid = plugin_pid.expect("kv-host printed the plugin's pid");
    assert!(alive(plugin_pid));
    kill9(host.id().unwrap());
    let _ = host.wait().await;
    let gone = async {
        while alive(plugin_pid) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(2), gone)
        .await
        .expect("the orphaned plugin exits within two seconds");
}

#[tokio::test]
async fn checksums_are_verified_before_running() {
    let output = std::process::Command::new("sha256sum")
        .arg(KV_PLUGIN)
        .output()
        .unwrap();
    let sum = String::from_utf8(output.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    let ok = PluginProcess::launch(LaunchConfig::new("kv", KV_PLUGIN).checksum(&sum))
        .await
        .unwrap();
    drop(ok);
    let wrong = "0".repeat(64);
    let err = PluginProcess::launch(LaunchConfig::new("kv", KV_PLUGIN).checksum(&wrong))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message().contains("checksum mismatch") && err.message().contains(&sum),
        "{err}"
    );
}

/// Abuse suite (security issue, item 6): the checked bytes are the ones that run. The file at
/// the configured path is replaced after the check; the supervisor's restart still runs the
/// checked plugin, not the replacement.
#[tokio::test]
async fn a_plugin_file_replaced_after_its_checksum_check_is_not_what_runs() {
    let dir = std::env::temp_dir().join(format!("cp-toctou-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let program = dir.join("kv-plugin");
    std::fs::copy(KV_PLUGIN, &program).unwrap();
    let output = std::process::Command::new("sha256sum")
        .arg(&program)
        .output()
        .unwrap();
    let sum = String::from_utf8(output.stdout).unwrap()[..64].to_owned();
    let plugin =
        SupervisedPlugin::launch(LaunchConfig::new("kv", &program).checksum(&sum).restart(
            RestartPolicy::with_backoff(1, Duration::from_millis(20), Duration::from_millis(20)),
        ))
        .await
        .unwrap();
    let PluginState::Running { pid, .. } = plugin.state() else {
        panic!("not running: {:?}", plugin.state());
    };
    // An attacker swaps the file for a script that would announce itself as the plugin.
    std::fs::remove_file(&program).unwrap();
    std::fs::write(
        &program,
        "#!/bin/sh\necho 'CONNECT_PLUGIN|1|tcp|127.0.0.1:9|connect'\nsleep 60\n",
    )
    .unwrap();
    std::fs::set_permissions(
        &program,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    kill9(pid);
    let state = tokio::time::timeout(
        Duration::from_secs(10),
        plugin.wait_for(|s| matches!(s, PluginState::Running { restarts: 1, .. })),
    )
    .await
    .expect("the plugin is restarted");
    let PluginState::Running { endpoint, .. } = state else {
        unreachable!()
    };
    assert!(
        !endpoint.ends_with(":9"),
        "the replacement ran: it announced {endpoint}"
    );
    let kv = connect_plugin::dispense::<KvServicePlugin>(&plugin.channel().unwrap());
    kv.put(PutRequest {
        key: "k".into(),
        value: "v".into(),
    })
    .await
    .expect("the restarted process is the checked kv-plugin");
    plugin.shutdown(Duration::from_secs(5)).await;
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A launched plugin cannot point its host elsewhere by announcing another machine's address:
/// the host reaches its children over loopback only.
#[tokio::test]
async fn a_plugin_announcing_a_non_loopback_address_is_refused() {
    let err = PluginProcess::launch(
        LaunchConfig::new("liar", "/bin/sh")
            .arg("-c")
            .arg("echo 'CONNECT_PLUGIN|1|tcp|169.254.169.254:80|connect'; sleep 5"),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    assert!(err.message().contains("not a loopback address"), "{err}");
    // Every interface is fine: the host calls it on loopback.
    let any = PluginProcess::launch(
        LaunchConfig::new("anywhere", "/bin/sh")
            .arg("-c")
            .arg("echo 'CONNECT_PLUGIN|1|tcp|0.0.0.0:4242|connect'; sleep 5"),
    )
    .await
    .unwrap();
    assert_eq!(any.endpoint(), "http://127.0.0.1:4242");
}

#[tokio::test]
async fn start_failures_name_the_program_and_the_reason() {
    let err = PluginProcess::launch(LaunchConfig::new("nothing", "/no/such/plugin"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(err.message().contains("/no/such/plugin"), "{err}");
    let err = PluginProcess::launch(LaunchConfig::new("quitter", "/bin/true"))
        .await
        .unwrap_err();
    assert!(
        err.message()
            .contains("without printing the readiness line"),
        "{err}"
    );
    let err = PluginProcess::launch(
        LaunchConfig::new("sleeper", "/bin/sleep")
            .arg("5")
            .start_timeout(Duration::from_millis(200)),
    )
    .await
    .unwrap_err();
    assert!(
        err.message()
            .contains("did not print its readiness line within 200 ms"),
        "{err}"
    );
}

#[tokio::test]
async fn the_in_memory_strategy_runs_the_kv_scenario() {
    let plugin = InMemoryPlugin::start(
        ServeConfig::new().plugin(KvServicePlugin::server(MemoryStore::default())),
    );
    let client = Client::new(plugin.client_config().plugin::<KvServicePlugin>()).unwrap();
    let kv = client.dispense::<KvServicePlugin>().await.unwrap();
    let mut watch = kv
        .watch(WatchRequest {
            prefix: "m/".into(),
        })
        .await
        .unwrap()
        .into_message();
    kv.put(PutRequest {
        key: "m/a".into(),
        value: "1".into(),
    })
    .await
    .unwrap();
    assert!(
        kv.get(GetRequest { key: "m/a".into() })
            .await
            .unwrap()
            .found
    );
    assert!(
        kv.delete(DeleteRequest { key: "m/a".into() })
            .await
            .unwrap()
            .found
    );
    assert!(
        !kv.get(GetRequest { key: "m/a".into() })
            .await
            .unwrap()
            .found
    );
    assert_eq!(watch.message().await.unwrap().unwrap().key, "m/a");
    assert_eq!(
        watch.message().await.unwrap().unwrap().r#type,
        kv::v1::EventType::Delete as i32
    );
    drop(watch);
    drop(kv);
    drop(client);
    plugin.shutdown().await.unwrap();
}

//! The plugin system against Go peers: plugins, a client and a host written in Go with
//! connect-go on the system's wire protos (`tests/go/cmd/peer`). connect-plugin-go itself is
//! not served by the Go module proxy this project uses, so its behaviour is re-created there
//! as UPSTREAM.md describes it: HTTP/1.1-only servers, self-registration without "provides",
//! health checked by plugin name, identity headers.

use std::time::Duration;

use connect_plugin::{Client, ClientConfig, LaunchConfig, PluginProcess};
use connect_plugin_tests::{GoPeer, go_peer, launch_kv_plugin_for_anyone, run_go_client};
use kv::v1::{GetRequest, KvServicePlugin, PutRequest, WatchRequest};

const KV_PLUGIN: &str = env!("CARGO_BIN_EXE_e2e-kv-plugin");
const LOGGER_PLUGIN: &str = env!("CARGO_BIN_EXE_e2e-logger-plugin");

/// Put, get and a watch event through a typed KV client.
async fn use_kv(kv: &kv::v1::KvServiceClient, key: &str) {
    let mut watch = kv
        .watch(WatchRequest { prefix: key.into() })
        .await
        .expect("watch")
        .into_message();
    kv.put(PutRequest {
        key: key.into(),
        value: "from rust".into(),
    })
    .await
    .expect("put");
    let got = kv
        .get(GetRequest { key: key.into() })
        .await
        .expect("get")
        .into_message();
    assert!(got.found && got.value.as_ref() == b"from rust");
    let event = tokio::time::timeout(Duration::from_secs(5), watch.message())
        .await
        .expect("a watch event within 5 s")
        .expect("the watch goes on")
        .expect("an event");
    assert_eq!(event.key, key);
}

/// A Go client dispenses our Rust KV plugin: handshake, health by the plugin's name (as
/// connect-plugin-go checks it), calls over HTTP/1.1 and h2c, a watch.
#[tokio::test]
async fn a_go_client_dispenses_our_kv_plugin() {
    let plugin = launch_kv_plugin_for_anyone(KV_PLUGIN).await;
    let checks = run_go_client(&["kv-client", &plugin.endpoint()]).await;
    assert!(checks >= 8, "{checks}");
}

/// Our host launches a Go KV plugin that answers HTTP/1.1 only (as connect-plugin-go's
/// `Serve` does; its readiness line says `connect-http1`) and calls it through our typed
/// client.
#[tokio::test]
async fn our_host_launches_an_http1_only_go_plugin_and_calls_it() {
    let plugin = PluginProcess::launch(
        LaunchConfig::new("go-kv", go_peer())
            .arg("kv-plugin")
            .start_timeout(Duration::from_secs(20)),
    )
    .await
    .expect("the Go plugin starts and announces itself");
    assert!(plugin.http1_only());
    let client = Client::new(plugin.client_config().plugin::<KvServicePlugin>()).unwrap();
    let kv = client
        .dispense::<KvServicePlugin>()
        .await
        .expect("handshake and dispense over HTTP/1.1");
    use_kv(&kv, "launched-go").await;
}

/// A Go plugin joins our host the way connect-plugin-go's do (open mode: a self id, no
/// "provides", no join token), registers "kv" at its own address, and a Rust plugin calls it
/// through our host's router.
#[tokio::test]
async fn a_self_registering_go_plugin_is_called_through_our_host() {
    let registry = connect_plugin_tests::open_registry();
    let host_url = connect_plugin_tests::serve_registry(&registry).await;
    let mut plugin = GoPeer::start(&["self-registering"], &[("HOST_URL", &host_url)]);
    let runtime_id = plugin.line("REGISTERED ").await;
    assert_eq!(registry.providers("kv")[0].runtime_id, runtime_id);

    let app = Client::new(ClientConfig::new(&host_url).self_id("rust-app", "1.0.0")).unwrap();
    let kv = app
        .provider::<KvServicePlugin>("1.0.0")
        .await
        .expect("discovered through the host");
    use_kv(&kv, "routed-go").await;
    plugin.stop().await;
}

/// Our Rust plugin (the logger example, model B) registers with a host written in Go, which
/// then calls it back at the address it registered.
#[tokio::test]
async fn our_plugin_registers_with_a_go_host() {
    let mut host = GoPeer::start(&["host"], &[]);
    let host_url = host.line("LISTENING ").await;
    let _logger = PluginProcess::launch(
        LaunchConfig::new("logger", LOGGER_PLUGIN)
            .env("HOST_URL", &host_url)
            // The Go host calls it without a launch secret, as a host that did not launch it.
            .answer_anyone()
            .start_timeout(Duration::from_secs(20)),
    )
    .await
    .expect("the logger starts");
    let registered = host.line("REGISTERED ").await;
    assert!(
        registered.starts_with("logger http://127.0.0.1:"),
        "{registered}"
    );
    assert_eq!(host.line("CALLED ").await, "logger");
    host.stop().await;
}

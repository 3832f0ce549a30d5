//! "Plugins in any language": a plugin written in TypeScript with connect-node
//! (tests/ts-plugin/plugin.ts, built by scripts/test.sh) joins our host with a join token,
//! registers a service, calls a Rust provider through the host's router, and is called by a
//! Rust plugin through it.

use std::time::Duration;

use connect_plugin::{Client, ClientConfig};
use connect_plugin_tests::interop::{InteropServicePlugin, Payload};
use connect_plugin_tests::{launch_kv_plugin_for_anyone, node, register_kv_provider, repo_root};
use tokio::io::AsyncBufReadExt;

const KV_PLUGIN: &str = env!("CARGO_BIN_EXE_e2e-kv-plugin");
const TS_TOKEN: &str = "ts-plugin-join-token-0123456789abcdef";

#[tokio::test]
async fn a_typescript_plugin_calls_a_rust_provider_and_is_called_by_a_rust_plugin() {
    let script = repo_root().join("target/ts-plugin/plugin.js");
    assert!(
        script.exists(),
        "{} is missing: scripts/test.sh builds it (npx tsc -p tests/ts-plugin)",
        script.display()
    );
    let registry = connect_plugin_tests::open_registry();
    // The TypeScript plugin joins as a token holder would in production.
    registry
        .join_policy()
        .allow(Some("ts-echo"), TS_TOKEN, ["interop"])
        .unwrap();
    let host_url = connect_plugin_tests::serve_registry(&registry).await;
    let kv_plugin = launch_kv_plugin_for_anyone(KV_PLUGIN).await;
    let _kv_provider = register_kv_provider(&host_url, kv_plugin.endpoint()).await;

    let mut ts = tokio::process::Command::new(node())
        .arg(&script)
        .env("HOST_URL", &host_url)
        .env(connect_plugin::handshake::JOIN_TOKEN_ENV, TS_TOKEN)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs the TypeScript plugin");
    let mut lines = tokio::io::BufReader::new(ts.stdout.take().unwrap()).lines();
    let mut said = Vec::new();
    let wait = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            assert!(!line.starts_with("FAILED"), "{line}");
            let called = line.starts_with("CALLED ");
            said.push(line);
            if called {
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), wait)
        .await
        .expect("the TypeScript plugin registers and calls kv within 20 s");
    let runtime_id = said[0]
        .strip_prefix("REGISTERED ")
        .expect("registered first");
    assert_eq!(registry.providers("interop")[0].runtime_id, runtime_id);
    assert_eq!(said[1], "CALLED kv hello from typescript", "{said:?}");

    // A Rust plugin calls the TypeScript one through the host; the host vouches for the caller.
    let app = Client::new(ClientConfig::new(&host_url).self_id("rust-app", "1.0.0")).unwrap();
    let interop = app.provider::<InteropServicePlugin>("1.0.0").await.unwrap();
    let echoed = interop
        .unary(Payload {
            text: "to typescript".into(),
            ..Default::default()
        })
        .await
        .expect("a routed call to the TypeScript plugin")
        .into_message();
    assert_eq!(echoed.text, "to typescript");
    assert_eq!(
        echoed.echoed_header,
        app.runtime_identity().unwrap().runtime_id,
        "the TypeScript plugin sees the caller the host checked"
    );
    drop(ts.stdin.take());
}

//! Abuse suite: 20,000 idle sockets against a real plugin process with its default settings
//! do not stop a well-behaved client (security issue, item 1). The sockets come from two
//! helper processes of 10,000 each, since one process may hold at most 20,000 descriptors
//! here. The plugin caps its connections below its descriptor limit and evicts idle sockets
//! for new clients, so it never runs out of descriptors and keeps answering.

use std::process::Stdio;
use std::time::{Duration, Instant};

use connect_plugin_tests::launch_kv_plugin;
use kv::v1::{GetRequest, KvServicePlugin, PutRequest};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const KV_PLUGIN: &str = env!("CARGO_BIN_EXE_e2e-kv-plugin");
const HOLD_SOCKETS: &str = env!("CARGO_BIN_EXE_hold-sockets");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_idle_sockets_do_not_stop_a_well_behaved_client() {
    let plugin = launch_kv_plugin(KV_PLUGIN).await;
    let addr = plugin.addr().to_string();
    let kv = connect_plugin::dispense::<KvServicePlugin>(&plugin.channel().unwrap());
    kv.put(PutRequest {
        key: "k".into(),
        value: "v".into(),
    })
    .await
    .expect("put before the flood");

    let mut holders = Vec::new();
    let mut opened = 0;
    let mut children: Vec<_> = (0..2)
        .map(|_| {
            Command::new(HOLD_SOCKETS)
                .args([&addr, "10000"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .expect("hold-sockets starts")
        })
        .collect();
    for child in &mut children {
        let stdout = child.stdout.take().unwrap();
        let line = tokio::time::timeout(
            Duration::from_secs(60),
            BufReader::new(stdout).lines().next_line(),
        )
        .await
        .expect("hold-sockets opens its sockets within 60 s")
        .unwrap()
        .unwrap_or_default();
        let count: usize = line
            .strip_prefix("opened ")
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("unexpected hold-sockets output {line:?}"));
        opened += count;
    }
    holders.extend(children);
    assert!(
        opened >= 19_000,
        "only {opened} idle sockets could be opened"
    );

    // A new client, on a new connection, while all of them are held open.
    let started = Instant::now();
    let fresh = connect_plugin::dispense::<KvServicePlugin>(
        &plugin
            .channel_builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap(),
    );
    let got = fresh
        .get(GetRequest { key: "k".into() })
        .await
        .expect("a well-behaved client is answered during the flood")
        .into_message();
    assert!(got.found);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "answered after {:?}",
        started.elapsed()
    );
    drop(holders);
}

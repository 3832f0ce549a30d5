//! Interop with `buf curl` (the buf CLI from `@bufbuild/buf`, pinned in package-lock.json),
//! a Connect client built on connect-go, calling our kv-plugin over HTTP/1.1 and h2c.

use std::process::Stdio;
use std::time::Duration;

use connect_plugin::PluginProcess;
use connect_plugin::serve::host_only::LAUNCH_SECRET_HEADER;
use connect_plugin_tests::{launch_kv_plugin, node_tool, repo_root};
use kv::v1::{KvServicePlugin, PutRequest};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

const KV_PLUGIN: &str = env!("CARGO_BIN_EXE_e2e-kv-plugin");

/// `buf curl` calling `plugin`, with its launch secret as a header.
fn buf_curl(
    plugin: &PluginProcess,
    h2c: bool,
    method: &str,
    data: &str,
) -> tokio::process::Command {
    let url = plugin.endpoint();
    let secret = plugin
        .launch_secret()
        .and_then(|s| s.to_str().ok())
        .expect("the plugin was launched with a launch secret");
    let mut command = tokio::process::Command::new(node_tool("buf"));
    command
        .current_dir(repo_root())
        .args(["-H", &format!("{LAUNCH_SECRET_HEADER}: {secret}")])
        .args([
            "curl",
            "--schema",
            "examples/kv/proto",
            "--protocol",
            "connect",
        ])
        .args(if h2c {
            &["--http2-prior-knowledge"][..]
        } else {
            &[]
        })
        .args(["-d", data])
        .arg(format!("{url}/kv.v1.KVService/{method}"))
        .kill_on_drop(true);
    command
}

async fn run(mut command: tokio::process::Command) -> (bool, String, String) {
    let output = tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .expect("buf curl finishes within 60 s")
        .expect("buf runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn buf_curl_calls_our_plugin_unary_and_errors() {
    let plugin = launch_kv_plugin(KV_PLUGIN).await;
    let url = &plugin;
    for h2c in [false, true] {
        let key = if h2c { "h2c" } else { "http1" };
        let (ok, out, err) = run(buf_curl(
            url,
            h2c,
            "Put",
            &format!(r#"{{"key":"{key}","value":"dmFsdWU="}}"#),
        ))
        .await;
        assert!(ok, "Put failed: {out} {err}");
        assert_eq!(out.trim(), "{}");

        let (ok, out, err) = run(buf_curl(url, h2c, "Get", &format!(r#"{{"key":"{key}"}}"#))).await;
        assert!(ok, "Get failed: {out} {err}");
        assert!(
            out.contains(r#""value": "dmFsdWU=""#) && out.contains(r#""found": true"#),
            "{out}"
        );

        let (ok, out, err) = run(buf_curl(url, h2c, "Get", r#"{"key":""}"#)).await;
        assert!(!ok, "an empty key must fail: {out}");
        assert!(err.contains(r#""code": "invalid_argument""#), "{err}");
        assert!(err.contains("key must not be empty"), "{err}");

        let (ok, _, err) = run(buf_curl(url, h2c, "Get", r#"{"key": 5}"#)).await;
        assert!(
            !ok,
            "a request that does not match the schema is refused: {err}"
        );
    }
}

#[tokio::test]
async fn buf_curl_reads_a_server_stream_and_its_end_stream_error() {
    let plugin = launch_kv_plugin(KV_PLUGIN).await;
    let kv = connect_plugin::dispense::<KvServicePlugin>(&plugin.channel().unwrap());
    for h2c in [false, true] {
        let prefix = if h2c { "w2/" } else { "w1/" };
        let mut command = buf_curl(
            &plugin,
            h2c,
            "Watch",
            &format!(r#"{{"prefix":"{prefix}"}}"#),
        );
        // buf curl turns its timeout into Connect-Timeout-Ms; the stream then ends with
        // deadline_exceeded, after the events below.
        command
            .arg("--timeout")
            .arg("2s")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("buf starts");
        let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let key = format!("{prefix}event");
        let saw_event = async {
            // Put until the watch (which buf curl may not have started yet) reports it.
            let mut seen = String::new();
            loop {
                kv.put(PutRequest {
                    key: key.clone(),
                    value: "v".into(),
                })
                .await
                .unwrap();
                let line =
                    tokio::time::timeout(Duration::from_millis(100), stdout.next_line()).await;
                if let Ok(line) = line {
                    let line = line
                        .unwrap()
                        .expect("buf curl printed an event before ending");
                    seen.push_str(&line);
                    if line.contains(&format!(r#""key": "{key}""#)) {
                        return seen;
                    }
                }
            }
        };
        let seen = tokio::time::timeout(Duration::from_secs(30), saw_event)
            .await
            .expect("buf curl prints a watch event");
        assert!(seen.contains(r#""type": "EVENT_TYPE_PUT""#), "{seen}");
        let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
            .await
            .expect("buf curl stops at its timeout")
            .unwrap();
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .await
            .unwrap();
        assert!(!status.success());
        assert!(stderr.contains("deadline_exceeded"), "{stderr}");
    }
}

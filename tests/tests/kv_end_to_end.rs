//! The KV example over real processes: the kv-host demo, typed calls through the plugin binding,
//! and bad input that must get the Connect-specified error while the server stays up.

use std::process::Stdio;
use std::time::Duration;

use connect_plugin::{Code, Request, rpc::HttpVersion};
use connect_plugin_tests::{launch_kv_plugin, launch_kv_plugin_for_anyone, raw_http1};
use kv::v1::{GetRequest, KvServicePlugin, PutRequest, WatchRequest};

const KV_PLUGIN: &str = env!("CARGO_BIN_EXE_e2e-kv-plugin");
const KV_HOST: &str = env!("CARGO_BIN_EXE_e2e-kv-host");

#[tokio::test]
async fn kv_host_demo_launches_the_plugin_and_runs_every_rpc() {
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(KV_HOST)
            .env("KV_PLUGIN_BIN", KV_PLUGIN)
            .env_remove("PLUGIN_ENDPOINT")
            .output(),
    )
    .await
    .expect("kv-host finishes within 60 s")
    .expect("kv-host runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "kv-host failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for expected in [
        "launched kv-plugin",
        "handshake ok: app protocol version 1, plugins [\"kv 1.0.0\"]",
        "health: Serving",
        "Get demo/greeting -> found=true value=\"hello, plugin\"",
        "Delete demo/greeting -> found=true",
        "Get demo/greeting -> found=false",
        "Get \"\" -> error invalid_argument: key must not be empty",
        "Watch event: Put demo/greeting \"hello, plugin\"",
        "Watch event: Delete demo/greeting",
        "stopped kv-plugin (exit status: 0)",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
}

#[tokio::test]
async fn kv_host_uses_plugin_endpoint_when_set() {
    // A plugin run by hand (no launch secret) answers whoever calls it.
    let plugin = launch_kv_plugin_for_anyone(KV_PLUGIN).await;
    let output = tokio::process::Command::new(KV_HOST)
        .env("PLUGIN_ENDPOINT", plugin.endpoint())
        .output()
        .await
        .expect("kv-host runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(stdout.contains(&format!("using the plugin at {}", plugin.endpoint())));
    assert!(!stdout.contains("launched kv-plugin"));
}

#[tokio::test]
async fn typed_client_over_both_http_versions_and_codecs() {
    let plugin = launch_kv_plugin(KV_PLUGIN).await;
    for version in [HttpVersion::Http1, HttpVersion::Http2] {
        for codec in [
            connect_plugin::rpc::Codec::Proto,
            connect_plugin::rpc::Codec::Json,
        ] {
            let channel = plugin
                .channel_builder()
                .http_version(version)
                .codec(codec)
                .build()
                .unwrap();
            let kv = connect_plugin::dispense::<KvServicePlugin>(&channel);
            let key = format!("{version:?}/{codec:?}");
            kv.put(PutRequest {
                key: key.clone(),
                value: vec![0, 1, 2, 255].into(),
            })
            .await
            .unwrap();
            let got = kv.get(GetRequest { key }).await.unwrap();
            assert!(got.message().found);
            assert_eq!(got.message().value.as_ref(), &[0, 1, 2, 255]);
        }
    }
}

#[tokio::test]
async fn client_timeout_is_deadline_exceeded_and_watch_ends_cleanly_on_drop() {
    let plugin = launch_kv_plugin(KV_PLUGIN).await;
    let kv = connect_plugin::dispense::<KvServicePlugin>(&plugin.channel().unwrap());
    // A watch with a short timeout and no changes: the client's deadline ends it.
    let mut watch = kv
        .watch(
            Request::new(WatchRequest {
                prefix: "none/".into(),
            })
            .with_timeout(Duration::from_millis(200)),
        )
        .await
        .unwrap()
        .into_message();
    let err = watch.message().await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err}");
    // The plugin is still fine.
    let got = kv.get(GetRequest { key: "x".into() }).await.unwrap();
    assert!(!got.message().found);
}

#[tokio::test]
async fn bad_input_gets_connect_errors_and_the_server_stays_up() {
    let plugin = launch_kv_plugin_for_anyone(KV_PLUGIN).await;
    let addr = plugin.addr();
    let json = [("content-type", "application/json")];

    // P1: unknown method -> 404, body says unimplemented.
    let r = raw_http1(addr, "POST", "/kv.v1.KVService/Nope", &json, b"{}").await;
    assert_eq!(r.status, 404);
    assert!(
        r.text().contains(r#""code":"unimplemented""#),
        "{}",
        r.text()
    );

    // P2: wrong verb -> 405 with Allow.
    let r = raw_http1(addr, "PUT", "/kv.v1.KVService/Get", &json, b"{}").await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("POST"));

    // U2: unsupported content type -> 415.
    let r = raw_http1(
        addr,
        "POST",
        "/kv.v1.KVService/Get",
        &[("content-type", "application/xml")],
        b"<k/>",
    )
    .await;
    assert_eq!(r.status, 415);
    assert!(
        r.header("accept-post")
            .is_some_and(|v| v.contains("application/proto"))
    );

    // S1: a unary content type on a streaming method -> 415.
    let r = raw_http1(addr, "POST", "/kv.v1.KVService/Watch", &json, b"{}").await;
    assert_eq!(r.status, 415);

    // Garbage bodies -> 400 invalid_argument, for both codecs.
    let r = raw_http1(addr, "POST", "/kv.v1.KVService/Get", &json, b"{not json").await;
    assert_eq!(r.status, 400);
    assert!(
        r.text().contains(r#""code":"invalid_argument""#),
        "{}",
        r.text()
    );
    let r = raw_http1(
        addr,
        "POST",
        "/kv.v1.KVService/Get",
        &[("content-type", "application/proto")],
        &[0xff, 0xff, 0xff],
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert!(
        r.text().contains(r#""code":"invalid_argument""#),
        "{}",
        r.text()
    );

    // Garbage envelope on a stream -> 200 with an end-stream error (S6).
    let r = raw_http1(
        addr,
        "POST",
        "/kv.v1.KVService/Watch",
        &[("content-type", "application/connect+json")],
        &[0x80, 0, 0, 0, 1, b'x'],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body[0], 0x02, "an end-stream envelope");
    assert!(
        r.text().contains(r#""code":"invalid_argument""#),
        "{}",
        r.text()
    );

    // Empty key -> invalid_argument from the handler.
    let r = raw_http1(
        addr,
        "POST",
        "/kv.v1.KVService/Get",
        &json,
        br#"{"key":""}"#,
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.text(),
        r#"{"code":"invalid_argument","message":"key must not be empty"}"#
    );

    // U8: a wrong protocol version -> 400 invalid_argument; P5: a bad timeout too.
    let r = raw_http1(
        addr,
        "POST",
        "/kv.v1.KVService/Get",
        &[
            ("content-type", "application/json"),
            ("connect-protocol-version", "2"),
        ],
        b"{}",
    )
    .await;
    assert_eq!(r.status, 400);
    let r = raw_http1(
        addr,
        "POST",
        "/kv.v1.KVService/Get",
        &[
            ("content-type", "application/json"),
            ("connect-timeout-ms", "12345678901"),
        ],
        b"{}",
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(r.text().contains("Connect-Timeout-Ms"), "{}", r.text());

    // U9: a message over the 4 MiB limit -> resource_exhausted (429).
    let big = vec![b' '; 4 * 1024 * 1024 + 1];
    let r = raw_http1(addr, "POST", "/kv.v1.KVService/Get", &json, &big).await;
    assert_eq!(r.status, 429);
    assert!(r.text().contains("resource_exhausted"), "{}", r.text());

    // The server is still up and correct.
    let r = raw_http1(
        addr,
        "POST",
        "/kv.v1.KVService/Put",
        &json,
        br#"{"key":"still","value":"dXA="}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = raw_http1(
        addr,
        "POST",
        "/kv.v1.KVService/Get",
        &json,
        br#"{"key":"still"}"#,
    )
    .await;
    assert_eq!(r.text(), r#"{"value":"dXA=","found":true}"#);
}

#[tokio::test]
async fn plugin_exits_when_its_host_closes_stdin() {
    let mut child = tokio::process::Command::new(KV_PLUGIN)
        .env("PORT", "0")
        .env(
            "CONNECT_PLUGIN_LAUNCHED",
            connect_plugin::plugin::MAGIC_COOKIE_VALUE,
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let line = lines.next_line().await.unwrap().unwrap();
    assert!(
        connect_plugin::serve::readiness::parse_ready_line(&line).is_some(),
        "{line}"
    );
    drop(child.stdin.take());
    let status = tokio::time::timeout(Duration::from_secs(2), child.wait())
        .await
        .expect("the plugin exits within 2 s of its host going away")
        .unwrap();
    assert!(status.success(), "{status}");
}

/// The example plugin serves TLS when given a certificate (`TLS_CERT_FILE`, `TLS_KEY_FILE`):
/// a client that trusts it is answered over `https://`, a cleartext one is not.
#[tokio::test]
async fn the_example_plugin_serves_tls_from_its_environment() {
    let key = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
    let dir = std::env::temp_dir().join(format!("kv-plugin-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert_file, key_file) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_file, key.cert.pem()).unwrap();
    std::fs::write(&key_file, key.signing_key.serialize_pem()).unwrap();
    let plugin = connect_plugin::PluginProcess::launch(
        connect_plugin::LaunchConfig::new("kv", KV_PLUGIN)
            .env("TLS_CERT_FILE", &cert_file)
            .env("TLS_KEY_FILE", &key_file)
            .start_timeout(Duration::from_secs(20)),
    )
    .await
    .unwrap();
    let https = format!("https://{}", plugin.addr());
    let trust =
        connect_plugin::rpc::tls::ClientTls::with_root_certificates_pem(key.cert.pem().as_bytes())
            .unwrap();
    let secret = plugin.launch_secret().unwrap().clone();
    let channel = connect_plugin::Channel::builder(&https)
        .tls(trust)
        .header(
            http::HeaderName::from_static(connect_plugin::serve::host_only::LAUNCH_SECRET_HEADER),
            secret,
        )
        .build()
        .unwrap();
    let kv = connect_plugin::dispense::<KvServicePlugin>(&channel);
    assert!(!kv.get(GetRequest { key: "k".into() }).await.unwrap().found);
    let cleartext = connect_plugin::dispense::<KvServicePlugin>(&plugin.channel().unwrap());
    let err = cleartext
        .get(GetRequest { key: "k".into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

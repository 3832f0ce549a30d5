//! Abuse suite (security issue, item 5): text from plugins cannot forge or rewrite the host's
//! log. A plugin logging through the host's logger capability, and a launched plugin writing
//! to its stdout and stderr, both send a newline followed by a fake `ERROR` line, a carriage
//! return and an ANSI escape; the host's log shows them escaped, on the one line they belong
//! to. The host's log is captured by a tracing subscriber writing into memory (this file holds
//! one test, so the global subscriber is its own).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use connect_plugin::host::broker::TracingLogger;
use connect_plugin::proto::capability::logger::v1::{LogRequest, LoggerPlugin};
use connect_plugin::{
    CapabilityBroker, Client, ClientConfig, LaunchConfig, PluginProcess, ServeConfig,
};

const FORGED: &str = "2026-12-02T00:00:00.000000Z ERROR connect_plugin: forged";

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[tokio::test]
async fn plugin_text_cannot_forge_or_rewrite_host_log_lines() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();

    // Through the logger capability.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let broker: CapabilityBroker = CapabilityBroker::new()
        .capability(TracingLogger::definition())
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let joining = connect_plugin::handshake::JoinPolicy::new();
    joining
        .allow(
            Some("chatty"),
            "chatty-join-token-0123456789",
            Vec::<String>::new(),
        )
        .unwrap();
    let host = tokio::spawn(connect_plugin::serve(
        ServeConfig::new()
            .broker(broker)
            .join_policy(joining)
            .listener(listener)
            .stop_signal(async {
                let _ = stopped.await;
            }),
    ));
    let plugin = Client::new(
        ClientConfig::new(&url)
            .self_id("chatty", "1.0.0")
            .join_token("chatty-join-token-0123456789"),
    )
    .unwrap();
    let grant = plugin.request_capability("logger", "").await.unwrap();
    connect_plugin::dispense::<LoggerPlugin>(grant.channel())
        .log(LogRequest {
            level: "info".into(),
            message: format!("capability says hi\n{FORGED}\r\u{1b}[2J"),
            fields: Default::default(),
        })
        .await
        .unwrap();

    // Through a launched plugin's stdout and stderr.
    let script = std::env::temp_dir().join(format!("cp-log-injection-{}.sh", std::process::id()));
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nprintf 'stderr says hi\\r{FORGED}\\033[2J\\n' >&2\n\
             printf 'stdout says hi\\r{FORGED}\\n'\n\
             echo 'CONNECT_PLUGIN|1|tcp|127.0.0.1:9|connect'\nsleep 30\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let launched = PluginProcess::launch(LaunchConfig::new("chatty-process", &script))
        .await
        .unwrap();

    // Wait until all three lines are in the log.
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let text = captured.text();
            if ["capability says hi", "stderr says hi", "stdout says hi"]
                .iter()
                .all(|t| text.contains(t))
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "the plugin lines never reached the log:\n{}",
            captured.text()
        )
    });
    let text = captured.text();
    for line in text.lines() {
        assert!(
            !line.starts_with("2026-12-02T00:00:00.000000Z"),
            "a forged line reached the host's log: {line:?}\n{text}"
        );
        assert!(!line.contains('\r') && !line.contains('\u{1b}'), "{line:?}");
    }
    assert!(
        text.contains("capability says hi\\n2026-12-02T00:00:00.000000Z ERROR"),
        "{text}"
    );
    assert!(
        text.contains("stderr says hi\\r2026-12-02T00:00:00.000000Z ERROR"),
        "{text}"
    );
    assert!(text.contains("\\u{1b}[2J"), "{text}");

    drop(launched);
    let _ = std::fs::remove_file(&script);
    let _ = stop.send(());
    let _ = host.await;
}

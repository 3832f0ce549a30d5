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

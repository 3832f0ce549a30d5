//! `kv-host`: launches `kv-plugin` as a child process (or uses `PLUGIN_ENDPOINT`), handshakes,
//! checks its health, takes a typed KV client from the plugin binding, and runs Put, Get,
//! Delete and a Watch. It also offers the plugin a `logger` capability: the plugin's log lines
//! arrive in this host's log through the capability broker.

use std::process::ExitCode;
use std::time::Duration;

use connect_plugin::handshake::{JOIN_TOKEN_ENV, JoinPolicy};
use connect_plugin::proto::connectplugin::health::v1::{
    HealthCheckRequest, HealthServicePlugin, ServingStatus,
};
use connect_plugin::{
    CapabilityBroker, Client, ClientConfig, Code, LaunchConfig, PluginProcess, ServeConfig,
    host::broker::TracingLogger,
};
use kv::v1::{DeleteRequest, EventType, GetRequest, KvServicePlugin, PutRequest, WatchRequest};

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            // Lines the plugin logs through the logger capability show at info.
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,connect_plugin::host::broker=info".into()),
        )
        .init();
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("kv-host: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let (config, process) = match std::env::var("PLUGIN_ENDPOINT") {
        Ok(endpoint) => {
            println!("using the plugin at {endpoint}");
            (ClientConfig::new(endpoint), None)
        }
        Err(_) => {
            let program = std::env::var_os("KV_PLUGIN_BIN")
                .map(Into::into)
                .unwrap_or_else(|| {
                    let exe = std::env::current_exe().unwrap_or_default();
                    exe.with_file_name(format!("kv-plugin{}", std::env::consts::EXE_SUFFIX))
                });
            if !program.exists() {
                return Err(format!(
                    "{} not found: build it with `cargo build -p kv`, or set KV_PLUGIN_BIN or PLUGIN_ENDPOINT",
                    program.display()
                )
                .into());
            }
            // A host capability for the plugin: a logger, behind a capability broker.
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let host_url = format!("http://{}", listener.local_addr()?);
            let broker = CapabilityBroker::new().capability(TracingLogger::definition())?;
            // Only the process launched here may join and ask for the logger: it alone gets
            // the join token.
            let joining = JoinPolicy::new();
            let token = joining.issue("kv-plugin", Vec::<String>::new())?;
            tokio::spawn(connect_plugin::serve(
                ServeConfig::new()
                    .broker(broker)
                    .join_policy(joining)
                    .listener(listener),
            ));
            let process = PluginProcess::launch(
                LaunchConfig::new("kv", program)
                    .env("HOST_URL", &host_url)
                    .env(JOIN_TOKEN_ENV, token),
            )
            .await?;
            println!(
                "launched kv-plugin (pid {}) at {}",
                process.id().unwrap_or_default(),
                process.endpoint()
            );
            // The plugin answers only this host: the config carries its launch secret.
            (process.client_config(), Some(process))
        }
    };

    let client = Client::new(
        config
            .plugin::<KvServicePlugin>()
            .channel(|c| c.timeout(Duration::from_secs(10))),
    )?;
    let handshake = client.connect().await?;
    println!(
        "handshake ok: app protocol version {}, plugins {:?}",
        handshake.app_protocol_version,
        handshake
            .plugins
            .iter()
            .map(|p| format!("{} {}", p.name, p.version))
            .collect::<Vec<_>>()
    );
    let health = connect_plugin::dispense::<HealthServicePlugin>(client.channel())
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await?;
    println!(
        "health: {:?}",
        ServingStatus::try_from(health.status).unwrap_or(ServingStatus::Unspecified)
    );
    let kv = client.dispense::<KvServicePlugin>().await?;

    // Watch first, so the changes below are seen; the call returns once the plugin subscribed.
    let mut watch = kv
        .watch(WatchRequest {
            prefix: "demo/".into(),
        })
        .await?
        .into_message();

    kv.put(PutRequest {
        key: "demo/greeting".into(),
        value: "hello, plugin".into(),
    })
    .await?;
    println!("Put demo/greeting = \"hello, plugin\"");

    let got = kv
        .get(GetRequest {
            key: "demo/greeting".into(),
        })
        .await?
        .into_message();
    println!(
        "Get demo/greeting -> found={} value={:?}",
        got.found,
        String::from_utf8_lossy(&got.value)
    );

    let deleted = kv
        .delete(DeleteRequest {
            key: "demo/greeting".into(),
        })
        .await?
        .into_message();
    println!("Delete demo/greeting -> found={}", deleted.found);

    let missing = kv
        .get(GetRequest {
            key: "demo/greeting".into(),
        })
        .await?
        .into_message();
    println!("Get demo/greeting -> found={}", missing.found);

    match kv.get(GetRequest { key: String::new() }).await {
        Err(e) if e.code() == Code::InvalidArgument => {
            println!("Get \"\" -> error {}: {}", e.code(), e.message());
        }
        other => {
            return Err(format!("an empty key should be invalid_argument, got {other:?}").into());
        }
    }

    for _ in 0..2 {
        let event = tokio::time::timeout(Duration::from_secs(5), watch.message())
            .await
            .map_err(|_| "no watch event within 5 s")??
            .ok_or("the watch ended early")?;
        println!(
            "Watch event: {:?} {} {:?}",
            EventType::try_from(event.r#type).unwrap_or(EventType::Unspecified),
            event.key,
            String::from_utf8_lossy(&event.value)
        );
    }
    drop(watch);

    // For tests of what happens when a host dies: keep the plugin running and wait.
    if std::env::var_os("KV_HOST_HOLD").is_some() {
        println!("holding");
        std::future::pending::<()>().await;
    }
    if let Some(process) = process {
        let status = process.shutdown(Duration::from_secs(5)).await?;
        println!("stopped kv-plugin ({status})");
    }
    Ok(())
}

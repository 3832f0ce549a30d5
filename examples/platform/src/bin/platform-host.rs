//! `platform-host`: a host with a service registry. It orders the plugins by their
//! dependencies, launches logger-plugin, cache-plugin and app-plugin in that order with
//! `HOST_URL` set, waits for each provider to register, and shows what the app did through
//! the host. Plugin binaries are looked up next to this one, or in `PLATFORM_PLUGIN_DIR`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use connect_plugin::handshake::JOIN_TOKEN_ENV;
use connect_plugin::host::depgraph::{DependencyGraph, PluginNode};
use connect_plugin::{
    LaunchConfig, PluginProcess, ServeConfig, ServiceRegistry, plugin::ServiceDependency,
};

fn dependency(service_type: &str) -> ServiceDependency {
    ServiceDependency {
        service_type: service_type.into(),
        min_version: String::new(),
        required_for_startup: true,
        watch_for_changes: true,
    }
}

fn plugin_path(name: &str) -> PathBuf {
    let dir = std::env::var_os("PLATFORM_PLUGIN_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::current_exe()
                .ok()
                .and_then(|p| p.parent().map(PathBuf::from))
        })
        .unwrap_or_default();
    // Tests build the same binaries under prefixed names.
    let prefix = std::env::var("PLATFORM_PLUGIN_PREFIX").unwrap_or_default();
    dir.join(format!("{prefix}{name}"))
}

#[tokio::main]
async fn main() -> ExitCode {
    platform::init_tracing();
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("platform-host: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let registry = ServiceRegistry::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let host_url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(connect_plugin::serve(
        ServeConfig::new()
            .registry(registry.clone())
            .listener(listener),
    ));
    println!("host listening at {host_url}");

    let mut graph = DependencyGraph::new();
    graph.add(PluginNode {
        id: "app-plugin".into(),
        provides: vec![],
        requires: vec![dependency("cache")],
    });
    graph.add(PluginNode {
        id: "cache-plugin".into(),
        provides: vec![("cache".into(), "0.1.0".into())],
        requires: vec![dependency("logger")],
    });
    graph.add(PluginNode {
        id: "logger-plugin".into(),
        provides: vec![("logger".into(), "0.1.0".into())],
        requires: vec![],
    });
    let order = graph.startup_order()?;
    println!("startup order: {}", order.join(" -> "));

    let mut running = Vec::new();
    for name in &order {
        let path = plugin_path(name);
        let provided = graph
            .get(name)
            .map(|n| n.provides.clone())
            .unwrap_or_default();
        // Each plugin joins with a token only it receives, admitting it as `name` providing
        // what the graph says.
        let token = registry
            .join_policy()
            .issue(name, provided.iter().map(|(t, _)| t.clone()))?;
        if !path.exists() {
            return Err(format!("{} not found: build the example with `cargo build -p platform`, or set PLATFORM_PLUGIN_DIR", path.display()).into());
        }
        if name == "app-plugin" {
            // The app does its work and exits; show what it printed.
            let output = tokio::process::Command::new(&path)
                .env("HOST_URL", &host_url)
                .env(JOIN_TOKEN_ENV, &token)
                .output()
                .await?;
            print!("{}", String::from_utf8_lossy(&output.stdout));
            if !output.status.success() {
                return Err(format!(
                    "app-plugin failed: {}",
                    String::from_utf8_lossy(&output.stderr)
                )
                .into());
            }
            continue;
        }
        let process = PluginProcess::launch(
            LaunchConfig::new(name.clone(), &path)
                .env("HOST_URL", &host_url)
                .env(JOIN_TOKEN_ENV, &token),
        )
        .await?;
        // Its registrations must point at this process, and calls routed to it carry the
        // launch secret it answers to.
        registry.launched(&token, &process)?;
        for (service_type, _) in &provided {
            registry
                .wait_for_provider(service_type, Duration::from_secs(10))
                .await?;
            println!(
                "{name} registered {service_type} (pid {})",
                process.id().unwrap_or_default()
            );
        }
        running.push(process);
    }
    for process in running.into_iter().rev() {
        let name = process.name().to_owned();
        let status = process.shutdown(Duration::from_secs(5)).await?;
        println!("stopped {name} ({status})");
    }
    Ok(())
}

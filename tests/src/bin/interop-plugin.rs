//! `interop-plugin`: the interop test service as a plugin process. It serves
//! `interop.v1.InteropService` on `127.0.0.1:$PORT` (any free port if unset) and, with
//! `HOST_URL`, registers itself with that host as a provider of `interop` (deployment model
//! B), handing it its control token. For tests that need a plugin process with calls that
//! stay open (its `Bidi` lasts as long as the caller's request stream).

use connect_plugin::{Client, ClientConfig, ServeConfig};
use connect_plugin_tests::interop::{InteropServer, InteropServiceServer};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    let listener = match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("interop-plugin: cannot listen on port {port}: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let url = match listener.local_addr() {
        Ok(addr) => format!("http://{addr}"),
        Err(error) => {
            eprintln!("interop-plugin: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let served = tokio::spawn(connect_plugin::serve(
        ServeConfig::new()
            .service(InteropServiceServer::new(InteropServer).into_service())
            .listener(listener)
            .announce_readiness(true),
    ));
    let _host = match std::env::var("HOST_URL") {
        Ok(host_url) => {
            let host =
                match Client::new(ClientConfig::new(host_url).self_id("interop-plugin", "1.0.0")) {
                    Ok(host) => host,
                    Err(error) => {
                        eprintln!("interop-plugin: {error}");
                        return std::process::ExitCode::FAILURE;
                    }
                };
            connect_plugin_tests::register_interop(&host, url).await;
            Some(host)
        }
        Err(_) => None,
    };
    match served.await {
        Ok(Ok(())) => std::process::ExitCode::SUCCESS,
        Ok(Err(error)) => {
            eprintln!("interop-plugin: {error}");
            std::process::ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("interop-plugin: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

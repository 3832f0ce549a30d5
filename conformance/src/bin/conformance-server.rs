//! Conformance server under test: reads a `ServerCompatRequest` from stdin, serves
//! `ConformanceService` on 127.0.0.1 (TLS if asked), writes a `ServerCompatResponse` to stdout,
//! and serves until SIGINT or SIGTERM. Logs go to stderr.

use std::process::ExitCode;

use connect_plugin_conformance::proto::{
    ConformanceServiceServer, Protocol, ServerCompatRequest, ServerCompatResponse,
};
use connect_plugin_conformance::service::Conformance;
use connect_plugin_conformance::{read_delimited, write_delimited};
use connect_plugin_rpc::Server;
use connect_plugin_rpc::tls::ServerTls;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("conformance-server: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let request: ServerCompatRequest =
        read_delimited(&mut std::io::stdin().lock())?.ok_or("no ServerCompatRequest on stdin")?;
    match Protocol::try_from(request.protocol) {
        Ok(Protocol::Connect | Protocol::Unspecified) => {}
        _ => {
            return Err(format!(
                "protocol {} is not supported: only Connect",
                request.protocol
            )
            .into());
        }
    }
    let mut server =
        Server::new().add_service(ConformanceServiceServer::new(Conformance).into_service());
    if request.message_receive_limit > 0 {
        server = server.max_message_size(request.message_receive_limit as usize);
    }
    let mut pem_cert = Vec::new();
    if request.use_tls {
        let creds = request
            .server_creds
            .as_ref()
            .ok_or("use_tls is set but server_creds is missing")?;
        // With a client certificate to trust, clients must present it (mutual TLS).
        server = server.tls(if request.client_tls_cert.is_empty() {
            ServerTls::from_pem(&creds.cert, &creds.key)?
        } else {
            ServerTls::mutual_from_pem(
                &creds.cert,
                &creds.key,
                &request.client_tls_cert,
                connect_plugin_rpc::tls::ClientAuth::Required,
            )?
        });
        pem_cert = creds.cert.to_vec();
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    write_delimited(
        &mut std::io::stdout().lock(),
        &ServerCompatResponse {
            host: addr.ip().to_string(),
            port: u32::from(addr.port()),
            pem_cert: pem_cert.into(),
        },
    )?;
    let stop = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    server.serve_with_shutdown(listener, stop).await?;
    Ok(())
}

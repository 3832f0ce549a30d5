//! `logger-plugin`: provides `logger`; writes every line it receives to its log (which its
//! host shows). With `HOST_URL` it registers itself with that host (deployment model B);
//! without, it waits for a host to manage it (model A: `GetPluginInfo`, `SetRuntimeIdentity`).

use std::process::ExitCode;

use connect_plugin::deploy::assigned::AssignedIdentity;
use connect_plugin::proto::capability::logger::v1::{
    LogRequest, LogResponse, Logger, LoggerServer,
};
use connect_plugin::proto::connectplugin::v1::HealthState;
use connect_plugin::{Error, Request, Response, ServeConfig};

struct StderrLogger;

impl Logger for StderrLogger {
    async fn log(&self, request: Request<LogRequest>) -> Result<Response<LogResponse>, Error> {
        let caller = request
            .metadata()
            .get("x-plugin-caller-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("unknown")
            .to_owned();
        let line = request.into_message();
        tracing::info!("[{caller}] {} {}", line.level, line.message);
        Ok(Response::new(LogResponse {}))
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    platform::init_tracing();
    let provides = [("logger", "/capability.logger.v1.Logger/")];
    let managed = AssignedIdentity::new(
        "logger-plugin",
        env!("CARGO_PKG_VERSION"),
        &[(
            "logger",
            env!("CARGO_PKG_VERSION"),
            "capability.logger.v1.Logger",
        )],
        Vec::new(),
    );
    let config = ServeConfig::new()
        .service(LoggerServer::new(StderrLogger).into_service())
        .service(managed.service());
    let run = async {
        let (url, server) = platform::serve_plugin(config).await?;
        let host = platform::connect_host("logger-plugin", &provides, &managed).await?;
        platform::register(&host, &provides, &url).await?;
        // The heartbeat reports it again: a host that just went away is no reason to stop.
        if let Err(error) = host.report_health(HealthState::Healthy, "").await {
            tracing::warn!("reporting health failed: {error}");
        }
        // Keep the registration's lease on hosts that have one.
        let host = std::sync::Arc::new(host);
        let _heartbeat = host.heartbeat(std::time::Duration::from_secs(2));
        server.await.map_err(|e| Error::internal(e.to_string()))?
    };
    match run.await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("logger-plugin: {error}");
            ExitCode::FAILURE
        }
    }
}

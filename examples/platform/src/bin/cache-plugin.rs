//! `cache-plugin`: provides `cache`, requires `logger`: every change is logged through a
//! logger found with the host's registry and called through the host. Needs `HOST_URL`.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, OnceLock};

use connect_plugin::proto::capability::logger::v1::{LogRequest, LoggerClient, LoggerPlugin};
use connect_plugin::{Error, Request, Response, ServeConfig};
use platform::cache::{
    CacheService, CacheServiceServer, GetRequest, GetResponse, SetRequest, SetResponse,
};

#[derive(Clone, Default)]
struct Cache {
    entries: Arc<Mutex<HashMap<String, String>>>,
    logger: Arc<OnceLock<LoggerClient>>,
}

impl CacheService for Cache {
    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetResponse>, Error> {
        let key = request.into_message().key;
        let value = self
            .entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .cloned();
        Ok(Response::new(GetResponse {
            found: value.is_some(),
            value: value.unwrap_or_default(),
        }))
    }

    async fn set(&self, request: Request<SetRequest>) -> Result<Response<SetResponse>, Error> {
        let SetRequest { key, value } = request.into_message();
        if let Some(logger) = self.logger.get() {
            // The call goes cache-plugin -> host -> logger-plugin.
            logger
                .log(LogRequest {
                    level: "info".into(),
                    message: format!("cache set {key}={value}"),
                    fields: Default::default(),
                })
                .await?;
        }
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, value);
        Ok(Response::new(SetResponse {}))
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    platform::init_tracing();
    let cache = Cache::default();
    let config = ServeConfig::new().service(CacheServiceServer::new(cache.clone()).into_service());
    let run = async {
        let provides = [("cache", "/cache.v1.CacheService/")];
        let (url, server) = platform::serve_plugin(config).await?;
        let host = platform::join_host("cache-plugin", &provides)?;
        // The logger is required to start: find it before offering the cache.
        let logger = host.provider::<LoggerPlugin>("").await?;
        let _ = cache.logger.set(logger);
        tracing::info!("cache-plugin found a logger through the host");
        platform::register(&host, &provides, &url).await?;
        server.await.map_err(|e| Error::internal(e.to_string()))?
    };
    match run.await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("cache-plugin: {error}");
            ExitCode::FAILURE
        }
    }
}

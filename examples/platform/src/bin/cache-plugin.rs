//! `cache-plugin`: provides `cache`, requires `logger`: every change is logged through a
//! logger found with the host's registry and called through the host. Without a logger (none
//! yet, or the one it used went away) it still serves but reports itself DEGRADED, watches
//! for one, and turns HEALTHY when a logger answers again; the host routes its logger client
//! to whichever logger is there, so nothing restarts. With `HOST_URL` it registers itself
//! with that host; without, it waits for a host to manage it.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use connect_plugin::deploy::assigned::AssignedIdentity;
use connect_plugin::proto::capability::logger::v1::{LogRequest, LoggerClient, LoggerPlugin};
use connect_plugin::proto::connectplugin::v1::{HealthState, ServiceState, WatchServiceRequest};
use connect_plugin::{Client, Error, Request, Response, ServeConfig, plugin::ServiceDependency};
use platform::cache::{
    CacheService, CacheServiceServer, GetRequest, GetResponse, SetRequest, SetResponse,
};

#[derive(Clone, Default)]
struct Cache {
    entries: Arc<Mutex<HashMap<String, String>>>,
    logger: Arc<OnceLock<LoggerClient>>,
    host: Arc<OnceLock<Arc<Client>>>,
    degraded: Arc<AtomicBool>,
}

impl Cache {
    /// The logger failed: report DEGRADED (once) and recover in the background when a
    /// logger answers again.
    fn degrade(&self, error: &Error) {
        if self.degraded.swap(true, Ordering::AcqRel) {
            return;
        }
        tracing::warn!("logging failed ({error}); DEGRADED until a logger answers");
        let (Some(host), Some(logger)) = (self.host.get().cloned(), self.logger.get().cloned())
        else {
            return;
        };
        let degraded = Arc::clone(&self.degraded);
        let reason = format!("logger unavailable: {}", error.message());
        tokio::spawn(async move {
            let _ = host.report_health(HealthState::Degraded, &reason).await;
            loop {
                let _ = wait_for_logger(&host).await;
                let probe = logger
                    .log(LogRequest {
                        level: "info".into(),
                        message: "cache-plugin: logger back".into(),
                        fields: Default::default(),
                    })
                    .await;
                if probe.is_ok() {
                    break;
                }
                // A logger is registered but does not answer yet: look again in a second.
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
            tracing::info!("a logger answers again; cache-plugin is HEALTHY");
            // Cleared first: a failure from now on degrades it again.
            degraded.store(false, Ordering::Release);
            let _ = host.report_health(HealthState::Healthy, "").await;
        });
    }
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
            // The call goes cache-plugin -> host -> logger-plugin. Without a logger the cache
            // still works, DEGRADED.
            let logged = logger
                .log(LogRequest {
                    level: "info".into(),
                    message: format!("cache set {key}={value}"),
                    fields: Default::default(),
                })
                .await;
            if let Err(error) = logged {
                self.degrade(&error);
            }
        }
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, value);
        Ok(Response::new(SetResponse {}))
    }
}

/// Waits, with the registry's watch, until a logger is available.
async fn wait_for_logger(host: &Client) -> Result<(), Error> {
    let request = host
        .authenticated(WatchServiceRequest {
            service_type: "logger".into(),
        })
        .await?;
    let mut events = host.registry().watch_service(request).await?.into_message();
    while let Some(event) = events.message().await? {
        if event.state == ServiceState::Available as i32 {
            return Ok(());
        }
    }
    Err(Error::unavailable("the host ended the logger watch"))
}

#[tokio::main]
async fn main() -> ExitCode {
    platform::init_tracing();
    let cache = Cache::default();
    let managed = AssignedIdentity::new(
        "cache-plugin",
        env!("CARGO_PKG_VERSION"),
        &[("cache", env!("CARGO_PKG_VERSION"), "cache.v1.CacheService")],
        vec![ServiceDependency {
            service_type: "logger".into(),
            min_version: String::new(),
            required_for_startup: true,
            watch_for_changes: true,
        }],
    );
    let config = ServeConfig::new()
        .service(CacheServiceServer::new(cache.clone()).into_service())
        .service(managed.service());
    let run = async {
        let provides = [("cache", "/cache.v1.CacheService/")];
        let (url, server) = platform::serve_plugin(config).await?;
        // With HOST_URL it joins by itself (model B); without, a host manages it (model A).
        let host = Arc::new(platform::connect_host("cache-plugin", &provides, &managed).await?);
        let _ = cache.host.set(Arc::clone(&host));
        // Find the logger before offering the cache, so the first writes are logged.
        match host.provider::<LoggerPlugin>("").await {
            Ok(logger) => {
                let _ = cache.logger.set(logger);
                tracing::info!("cache-plugin found a logger through the host");
                platform::register(&host, &provides, &url).await?;
                // The heartbeat reports it again: a host that just went away is no reason to stop.
                if let Err(error) = host.report_health(HealthState::Healthy, "").await {
                    tracing::warn!("reporting health failed: {error}");
                }
            }
            Err(error) => {
                tracing::warn!("no logger yet ({error}); serving DEGRADED until one appears");
                platform::register(&host, &provides, &url).await?;
                host.report_health(HealthState::Degraded, "logger unavailable")
                    .await?;
                wait_for_logger(&host).await?;
                let _ = cache.logger.set(host.provider::<LoggerPlugin>("").await?);
                tracing::info!("a logger appeared; cache-plugin is HEALTHY");
                // The heartbeat reports it again: a host that just went away is no reason to stop.
                if let Err(error) = host.report_health(HealthState::Healthy, "").await {
                    tracing::warn!("reporting health failed: {error}");
                }
            }
        }
        // Keep the registration's lease on hosts that have one.
        let _heartbeat = host.heartbeat(std::time::Duration::from_secs(2));
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

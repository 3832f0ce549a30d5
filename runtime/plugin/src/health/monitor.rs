//! [`HealthMonitor`]: the client side of health checking. It polls a plugin's
//! `HealthService.Check` at an interval and reports each change of [`HealthStatus`]; it serves
//! nothing.

use std::time::Duration;

use super::ServingStatus;
use crate::proto::connectplugin::health::v1 as wire;
use crate::{Channel, Request};

/// What a [`HealthMonitor`] last saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HealthStatus {
    /// The service answers `SERVING`.
    Serving,
    /// The service answers, but not `SERVING`.
    NotServing,
    /// The check failed: the plugin is unreachable or does not know the service.
    Unreachable,
}

/// Polls a plugin's health at an interval and calls back on every change. Dropping the
/// monitor stops it.
#[derive(Debug)]
pub struct HealthMonitor {
    task: tokio::task::JoinHandle<()>,
    status: tokio::sync::watch::Receiver<HealthStatus>,
}

impl HealthMonitor {
    /// Starts polling `service` (`""` for the whole plugin) over `channel` every `interval`;
    /// `on_change` runs with each new status, the first one included.
    pub fn start(
        channel: &Channel,
        service: impl Into<String>,
        interval: Duration,
        on_change: impl Fn(HealthStatus) + Send + Sync + 'static,
    ) -> Self {
        let client = wire::HealthServiceClient::new(channel.clone());
        let service = service.into();
        let (tx, status) = tokio::sync::watch::channel(HealthStatus::Unreachable);
        let task = tokio::spawn(async move {
            let mut last = None;
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let request = Request::new(wire::HealthCheckRequest {
                    service: service.clone(),
                })
                .with_timeout(interval.max(Duration::from_millis(100)));
                let now = match client.check(request).await {
                    Ok(r) if r.status == ServingStatus::Serving as i32 => HealthStatus::Serving,
                    Ok(_) => HealthStatus::NotServing,
                    Err(_) => HealthStatus::Unreachable,
                };
                if last != Some(now) {
                    last = Some(now);
                    let _ = tx.send(now);
                    on_change(now);
                }
            }
        });
        Self { task, status }
    }

    /// The last status seen.
    pub fn status(&self) -> HealthStatus {
        *self.status.borrow()
    }

    /// Waits until the monitor reports `wanted`.
    pub async fn wait_for(&mut self, wanted: HealthStatus) {
        let _ = self.status.wait_for(|s| *s == wanted).await;
    }
}

impl Drop for HealthMonitor {
    fn drop(&mut self) {
        self.task.abort();
    }
}

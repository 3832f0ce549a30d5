//! The registry's two Connect services: `connectplugin.v1.ServiceRegistry` (register,
//! unregister, discover, watch) and `connectplugin.v1.PluginLifecycle.ReportHealth`. They
//! authenticate the caller and translate wire messages; every decision is the registry's.

use super::ServiceRegistry;
use crate::proto::connectplugin::v1 as wire;
use tokio::sync::broadcast;

use crate::health::HealthState;
use crate::{Code, Error, MessageStream, Request, Response, ServerStream};

impl wire::ServiceRegistry for ServiceRegistry {
    async fn register_service(
        &self,
        request: Request<wire::RegisterServiceRequest>,
    ) -> Result<Response<wire::RegisterServiceResponse>, Error> {
        let runtime_id = self.authenticate(request.metadata())?;
        let registration_id =
            self.register_from(&runtime_id, request.message(), request.peer_addr())?;
        Ok(Response::new(wire::RegisterServiceResponse {
            registration_id,
        }))
    }

    async fn unregister_service(
        &self,
        request: Request<wire::UnregisterServiceRequest>,
    ) -> Result<Response<wire::UnregisterServiceResponse>, Error> {
        let runtime_id = self.authenticate(request.metadata())?;
        self.unregister(&runtime_id, &request.message().registration_id)?;
        Ok(Response::new(wire::UnregisterServiceResponse {}))
    }

    async fn discover_service(
        &self,
        request: Request<wire::DiscoverServiceRequest>,
    ) -> Result<Response<wire::DiscoverServiceResponse>, Error> {
        self.authenticate(request.metadata())?;
        let message = request.message();
        self.discover(&message.service_type, &message.min_version)
            .map(Response::new)
    }

    async fn watch_service(
        &self,
        request: Request<wire::WatchServiceRequest>,
    ) -> Result<Response<ServerStream<wire::WatchServiceEvent>>, Error> {
        self.authenticate(request.metadata())?;
        let service_type = request.into_message().service_type;
        // Subscribe before reading the current state, so no change falls in between.
        let mut events = self.inner.events.subscribe();
        let current = self.event(&service_type);
        let (tx, stream) = MessageStream::channel(16);
        tokio::spawn(async move {
            if tx.send(current).await.is_err() {
                return;
            }
            loop {
                let event = tokio::select! {
                    event = events.recv() => event,
                    () = tx.closed() => return,
                };
                match event {
                    Ok(event) if event.service_type == service_type => {
                        if tx.send(event).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        let error = Error::new(
                            Code::ResourceExhausted,
                            format!(
                                "watcher fell {missed} events behind; watch again for the current state"
                            ),
                        );
                        return tx.fail(error).await;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(Response::new(stream))
    }
}

impl wire::PluginLifecycle for ServiceRegistry {
    async fn report_health(
        &self,
        request: Request<wire::ReportHealthRequest>,
    ) -> Result<Response<wire::ReportHealthResponse>, Error> {
        let runtime_id = self.authenticate(request.metadata())?;
        let state = HealthState::try_from(request.message().state)
            .ok()
            .filter(|s| *s != HealthState::Unspecified)
            .ok_or_else(|| {
                Error::invalid_argument("health state must be HEALTHY, DEGRADED or UNHEALTHY")
            })?;
        self.set_health(&runtime_id, state);
        Ok(Response::new(wire::ReportHealthResponse {}))
    }
}

//! [`MemoryStore`]: an in-memory implementation of `kv.v1.KVService`.

use std::collections::HashMap;
use std::sync::RwLock;

use connect_plugin::proto::capability::logger::v1::{LogRequest, LoggerClient};
use connect_plugin::{Code, Error, Request, Response, ServerStream};
use prost::bytes::Bytes;
use tokio::sync::broadcast;

use crate::v1::{
    DeleteRequest, DeleteResponse, EventType, GetRequest, GetResponse, KvService, PutRequest,
    PutResponse, WatchEvent, WatchRequest,
};

/// How many changes a watcher may fall behind before its stream ends with
/// `resource_exhausted` (it is told, never silently skipped).
pub const WATCH_BUFFER: usize = 1024;

/// A key-value store in memory, with prefix watches.
#[derive(Debug)]
pub struct MemoryStore {
    entries: RwLock<HashMap<String, Bytes>>,
    changes: broadcast::Sender<WatchEvent>,
    logger: Option<LoggerClient>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self {
            entries: RwLock::new(HashMap::new()),
            changes: broadcast::channel(WATCH_BUFFER).0,
            logger: None,
        }
    }
}

fn check_key(key: &str) -> Result<(), Error> {
    if key.is_empty() {
        return Err(Error::invalid_argument("key must not be empty"));
    }
    Ok(())
}

impl MemoryStore {
    /// Logs every change through a host's logger capability.
    #[must_use]
    pub fn with_logger(mut self, logger: LoggerClient) -> Self {
        self.logger = Some(logger);
        self
    }

    /// Sends a line to the host's logger, if there is one; a logging failure never fails the
    /// operation itself.
    fn log(&self, message: String, key: &str) {
        let Some(logger) = self.logger.clone() else {
            return;
        };
        let request = LogRequest {
            level: "info".into(),
            message,
            fields: [("key".to_owned(), key.to_owned())].into(),
        };
        tokio::spawn(async move {
            if let Err(error) = logger.log(request).await {
                tracing::warn!("logging through the host failed: {error}");
            }
        });
    }

    fn entries_write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Bytes>> {
        // A poisoned lock only means another handler panicked mid-update of a plain map.
        self.entries.write().unwrap_or_else(|e| e.into_inner())
    }
}

impl KvService for MemoryStore {
    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetResponse>, Error> {
        let key = &request.message().key;
        check_key(key)?;
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        let response = match entries.get(key) {
            Some(value) => GetResponse {
                value: value.clone(),
                found: true,
            },
            None => GetResponse::default(),
        };
        Ok(Response::new(response))
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Error> {
        let PutRequest { key, value } = request.into_message();
        check_key(&key)?;
        // Publish under the lock so watchers see changes in the order they were applied.
        let mut entries = self.entries_write();
        entries.insert(key.clone(), value.clone());
        self.log(format!("put {} bytes", value.len()), &key);
        let _ = self.changes.send(WatchEvent {
            r#type: EventType::Put as i32,
            key,
            value,
        });
        Ok(Response::new(PutResponse {}))
    }

    async fn delete(
        &self,
        request: Request<DeleteRequest>,
    ) -> Result<Response<DeleteResponse>, Error> {
        let key = request.into_message().key;
        check_key(&key)?;
        let mut entries = self.entries_write();
        let found = entries.remove(&key).is_some();
        self.log(format!("delete (found={found})"), &key);
        if found {
            let _ = self.changes.send(WatchEvent {
                r#type: EventType::Delete as i32,
                key,
                value: Bytes::new(),
            });
        }
        Ok(Response::new(DeleteResponse { found }))
    }

    async fn watch(
        &self,
        request: Request<WatchRequest>,
    ) -> Result<Response<ServerStream<WatchEvent>>, Error> {
        let prefix = request.into_message().prefix;
        // Subscribe before answering: once the client has the response headers, no change
        // can be missed.
        let mut changes = self.changes.subscribe();
        let (tx, stream) = ServerStream::channel(64);
        tokio::spawn(async move {
            loop {
                let event = tokio::select! {
                    event = changes.recv() => event,
                    () = tx.closed() => return,
                };
                match event {
                    Ok(event) if event.key.starts_with(&prefix) => {
                        if tx.send(event).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tx.fail(Error::new(
                            Code::ResourceExhausted,
                            format!("watcher fell behind and missed {missed} changes; watch again and re-read the keys"),
                        ))
                        .await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(Response::new(stream))
    }
}

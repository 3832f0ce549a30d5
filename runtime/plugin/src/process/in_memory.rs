//! [`InMemoryPlugin`]: a plugin served in this process over the Connect crate's in-memory
//! transport, with exactly the code path of a plugin process (router, codecs, streaming,
//! handshake) and no socket. Useful in tests and for plugins compiled into the host.

use tokio::sync::oneshot;

use crate::rpc::{__private as rpc_private, ChannelBuilder};
use crate::{Channel, ClientConfig, Error, ServeConfig};

/// A plugin served in-process over an in-memory transport: same router, codecs and streaming
/// as over the network, no socket and no port.
#[derive(Debug)]
pub struct InMemoryPlugin {
    connector: rpc_private::MemoryConnector,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), Error>>,
}

/// The base URL in-memory channels use; it names no network host.
pub const IN_MEMORY_URL: &str = "http://in-memory.connect-plugin";

impl InMemoryPlugin {
    /// Serves `config` (plugins, health, broker...) in this process.
    pub fn start(config: ServeConfig) -> Self {
        let (connector, incoming) = rpc_private::memory_pair();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let config = config.in_memory(incoming).stop_signal(async {
            let _ = stop_rx.await;
        });
        let task = tokio::spawn(crate::serve(config));
        Self {
            connector,
            stop: Some(stop_tx),
            task,
        }
    }

    /// A channel builder that connects to this plugin in memory.
    pub fn channel_builder(&self) -> ChannelBuilder {
        rpc_private::memory_channel(Channel::builder(IN_MEMORY_URL), self.connector.clone())
    }

    /// A channel to this plugin.
    ///
    /// # Errors
    /// None in practice (the URL is fixed); kept fallible like [`Channel::new`].
    pub fn channel(&self) -> Result<Channel, Error> {
        self.channel_builder().build()
    }

    /// A [`ClientConfig`] that reaches this plugin in memory (handshake and dispense as usual).
    pub fn client_config(&self) -> ClientConfig {
        let connector = self.connector.clone();
        ClientConfig::new(IN_MEMORY_URL)
            .channel(move |builder| rpc_private::memory_channel(builder, connector))
    }

    /// Stops serving and waits for in-flight calls to drain.
    ///
    /// # Errors
    /// What [`crate::serve()`] returned.
    pub async fn shutdown(mut self) -> Result<(), Error> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task)
            .await
            .map_err(|e| Error::internal(format!("the in-memory plugin task failed: {e}")))?
    }
}

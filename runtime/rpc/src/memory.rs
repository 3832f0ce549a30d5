//! An in-memory transport: HTTP/2 (or HTTP/1.1) over `tokio::io::duplex` pipes instead of
//! sockets, so a server can run in-process with exactly the same code path (router,
//! codecs, streaming) and no port.
//!
//! It supplies pipes and nothing else: serving and calling over them are [`crate::server`]'s and
//! [`crate::channel`]'s. It knows no plugin concept; `connect-plugin` builds in-process plugins on
//! it and reaches it only through `connect_plugin_rpc::__private`.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// Size of each direction's in-memory buffer.
const PIPE_BYTES: usize = 256 * 1024;

/// The client end of an in-memory connection.
pub struct MemoryStream(DuplexStream);

impl Connection for MemoryStream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

/// Connects channels to an in-memory server: each connection is a fresh duplex pipe whose
/// other end is handed to the server's accept loop.
#[derive(Clone, Debug)]
pub struct MemoryConnector {
    tx: mpsc::Sender<DuplexStream>,
}

/// A connector and the server side's stream of accepted pipes.
pub(crate) fn pair() -> (MemoryConnector, mpsc::Receiver<DuplexStream>) {
    let (tx, rx) = mpsc::channel(16);
    (MemoryConnector { tx }, rx)
}

impl tower_service::Service<Uri> for MemoryConnector {
    type Response = TokioIo<MemoryStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let tx = self.tx.clone();
        Box::pin(async move {
            let (client, server) = tokio::io::duplex(PIPE_BYTES);
            tx.send(server).await.map_err(|_| {
                io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    "the in-memory server has stopped",
                )
            })?;
            Ok(TokioIo::new(MemoryStream(client)))
        })
    }
}

/// Where a server accepts connections: a TCP listener or in-memory pipes.
pub(crate) enum Incoming {
    Tcp(TcpListener),
    Memory(mpsc::Receiver<DuplexStream>),
}

/// An accepted connection.
pub(crate) enum Conn {
    Tcp(TcpStream),
    Memory(DuplexStream),
}

impl Incoming {
    /// The next connection; `None` when an in-memory listener has no connectors left.
    pub(crate) async fn accept(
        &mut self,
    ) -> Option<io::Result<(Conn, Option<std::net::SocketAddr>)>> {
        match self {
            Incoming::Tcp(listener) => Some(listener.accept().await.map(|(stream, peer)| {
                // Without TCP_NODELAY small HTTP/1.1 responses can wait on Nagle's algorithm.
                let _ = stream.set_nodelay(true);
                (Conn::Tcp(stream), Some(peer))
            })),
            Incoming::Memory(rx) => rx.recv().await.map(|pipe| Ok((Conn::Memory(pipe), None))),
        }
    }
}

macro_rules! delegate_io {
    ($ty:ty, $($variant:path),+) => {
        impl AsyncRead for $ty {
            fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() { $($variant(s) => Pin::new(s).poll_read(cx, buf),)+ }
            }
        }
        impl AsyncWrite for $ty {
            fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
                match self.get_mut() { $($variant(s) => Pin::new(s).poll_write(cx, buf),)+ }
            }
            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() { $($variant(s) => Pin::new(s).poll_flush(cx),)+ }
            }
            fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() { $($variant(s) => Pin::new(s).poll_shutdown(cx),)+ }
            }
            fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
                match self.get_mut() { $($variant(s) => Pin::new(s).poll_write_vectored(cx, bufs),)+ }
            }
            fn is_write_vectored(&self) -> bool {
                match self { $($variant(s) => s.is_write_vectored(),)+ }
            }
        }
    };
}

delegate_io!(Conn, Conn::Tcp, Conn::Memory);
delegate_io!(MemoryStream, MemoryStream);

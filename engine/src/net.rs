//! The network seam. The engine reaches the network only through these traits,
//! so the same code runs on real tokio sockets (`tiersim serve`) and on the
//! simulated network (the sim crate implements them over turmoil).

use std::io;

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncWrite};

/// A bidirectional byte stream: what a connector or listener hands out.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// Opens outbound connections.
#[async_trait]
pub trait Connector: Send + Sync + 'static {
    /// Connects to `authority` (`host:port`).
    async fn connect(&self, authority: &str) -> io::Result<Box<dyn Io>>;
}

/// Accepts inbound connections.
#[async_trait]
pub trait Listener: Send + 'static {
    async fn accept(&mut self) -> io::Result<Box<dyn Io>>;
}

#[async_trait]
impl<L: Listener + ?Sized> Listener for Box<L> {
    async fn accept(&mut self) -> io::Result<Box<dyn Io>> {
        (**self).accept().await
    }
}

/// Production connector over tokio TCP.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioConnector;

#[async_trait]
impl Connector for TokioConnector {
    async fn connect(&self, authority: &str) -> io::Result<Box<dyn Io>> {
        let stream = tokio::net::TcpStream::connect(authority).await?;
        // Requests are small and latency-bound; Nagle only adds delay.
        stream.set_nodelay(true)?;
        Ok(Box::new(stream))
    }
}

/// Production listener over tokio TCP.
#[derive(Debug)]
pub struct TokioListener(tokio::net::TcpListener);

impl TokioListener {
    pub async fn bind(addr: &str) -> io::Result<Self> {
        Ok(TokioListener(tokio::net::TcpListener::bind(addr).await?))
    }

    pub fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.0.local_addr()
    }
}

#[async_trait]
impl Listener for TokioListener {
    async fn accept(&mut self) -> io::Result<Box<dyn Io>> {
        let (stream, _) = self.0.accept().await?;
        stream.set_nodelay(true)?;
        Ok(Box::new(stream))
    }
}

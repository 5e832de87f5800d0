//! The engine's network seam over turmoil's simulated TCP.

use std::io;
use std::sync::Arc;

use async_trait::async_trait;
use tiersim_engine::http::HttpClient;
use tiersim_engine::net::{Connector, Io, Listener};

/// Port every simulated HTTP host listens on (so URLs are `http://<host>`).
pub const HTTP_PORT: u16 = 80;

/// The base URL of a simulated host.
pub fn url(host: &str) -> String {
    format!("http://{host}")
}

/// Connects through turmoil; resolves host names with turmoil's DNS.
#[derive(Debug, Clone, Copy, Default)]
pub struct TurmoilConnector;

#[async_trait]
impl Connector for TurmoilConnector {
    async fn connect(&self, authority: &str) -> io::Result<Box<dyn Io>> {
        Ok(Box::new(turmoil::net::TcpStream::connect(authority).await?))
    }
}

/// An HTTP client whose connections run on the simulated network.
pub fn http_client() -> HttpClient {
    HttpClient::new(Arc::new(TurmoilConnector))
}

/// Accepts simulated TCP connections on the current turmoil host.
pub struct TurmoilListener(turmoil::net::TcpListener);

impl TurmoilListener {
    pub async fn bind(port: u16) -> io::Result<Self> {
        Ok(TurmoilListener(
            turmoil::net::TcpListener::bind(("0.0.0.0", port)).await?,
        ))
    }
}

#[async_trait]
impl Listener for TurmoilListener {
    async fn accept(&mut self) -> io::Result<Box<dyn Io>> {
        let (stream, _) = self.0.accept().await?;
        Ok(Box::new(stream))
    }
}

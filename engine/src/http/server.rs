//! Serving an axum router over a [`Listener`].

use std::io;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;

use crate::net::Listener;

/// Accepts connections from `listener` forever, serving each on its own task
/// with HTTP/1.1. Returns only when accepting fails.
pub async fn serve<L: Listener>(mut listener: L, router: axum::Router) -> io::Result<()> {
    loop {
        let io = listener.accept().await?;
        let service = TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                // tokio time: simulated under turmoil, so the header-read
                // timeout is deterministic there.
                .timer(TokioTimer::new())
                // The Date header reads the wall clock: responses must be
                // byte-identical across runs of a seed.
                .auto_date_header(false)
                .serve_connection(TokioIo::new(io), service)
                .await;
            if let Err(e) = conn {
                tracing::debug!(error = %e, "server connection ended with an error");
            }
        });
    }
}

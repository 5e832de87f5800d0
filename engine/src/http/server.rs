//! Serving an axum router over a [`Listener`].

use std::io;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;

use crate::net::Listener;

/// Accepts connections from `listener` forever, serving each on its own task
/// with HTTP/1.1. Returns only when accepting fails. The connection tasks
/// belong to this future: dropping it (a shut-down or crashed host) closes
/// the listener and every open connection with it.
pub async fn serve<L: Listener>(mut listener: L, router: axum::Router) -> io::Result<()> {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let io = listener.accept().await?;
        // Reap finished connections so the set stays as small as the load.
        while connections.try_join_next().is_some() {}
        let service = TowerToHyperService::new(router.clone());
        connections.spawn(async move {
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use axum::routing::get;
    use bytes::Bytes;
    use futures_util::StreamExt;

    use super::*;
    use crate::http::{lines, HttpClient, HttpError};
    use crate::net::{TokioConnector, TokioListener};

    /// The production seam end to end, on real loopback sockets.
    #[tokio::test]
    async fn serves_and_fetches_over_real_sockets() {
        let listener = TokioListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = axum::Router::new()
            .route("/hello", get(|| async { "hi" }))
            .route("/lines", get(|| async { "a\nbb\n" }));
        let server = tokio::spawn(serve(listener, router));

        let client = HttpClient::new(Arc::new(TokioConnector));
        let get = |path: &str| {
            http::Request::get(format!("http://{addr}{path}"))
                .body(Bytes::new())
                .unwrap()
        };
        let t = Duration::from_secs(5);
        let (status, headers, body) = client.fetch(get("/hello"), t, 1024).await.unwrap();
        assert_eq!((status.as_u16(), &body[..]), (200, &b"hi"[..]));
        assert!(
            headers.get(http::header::DATE).is_none(),
            "no wall clock on the wire"
        );
        assert_eq!(
            client.fetch(get("/hello"), t, 1).await.unwrap_err(),
            HttpError::BodyTooLarge { limit: 1 }
        );
        let resp = client.open(get("/lines"), t).await.unwrap();
        let got: Vec<_> = lines(resp.into_stream(1024, t), 16)
            .map(|l| l.unwrap())
            .collect()
            .await;
        assert_eq!(got, [Bytes::from("a"), Bytes::from("bb")]);
        server.abort();
    }
}

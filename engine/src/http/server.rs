//! Serving an axum router over a [`Listener`].

use std::io;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;

use crate::net::Listener;

/// Accepts connections from `listener` forever, serving each on its own task
/// with HTTP/1.1. Returns only when accepting fails. The connection tasks
/// belong to this future: dropping it (a shut-down or crashed host) closes
/// the listener and every open connection with it.
pub async fn serve<L: Listener>(listener: L, router: axum::Router) -> io::Result<()> {
    serve_until(listener, router, std::future::pending()).await
}

/// [`serve`] until `stop` resolves, then a graceful shutdown: the listener
/// is closed at once (a new connection is refused), each open connection
/// finishes the request it is serving and closes (hyper's graceful
/// shutdown: an idle keep-alive connection closes now), and the future
/// returns when every connection has ended.
pub async fn serve_until<L: Listener>(
    mut listener: L,
    router: axum::Router,
    stop: impl std::future::Future<Output = ()>,
) -> io::Result<()> {
    tokio::pin!(stop);
    let (stopping, stopped) = tokio::sync::watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let io = tokio::select! {
            biased;
            _ = &mut stop => break,
            io = listener.accept() => io?,
        };
        // Reap finished connections so the set stays as small as the load.
        while connections.try_join_next().is_some() {}
        let service = TowerToHyperService::new(router.clone());
        let mut stopped = stopped.clone();
        connections.spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                // tokio time: simulated under turmoil, so the header-read
                // timeout is deterministic there.
                .timer(TokioTimer::new())
                // The Date header reads the wall clock: responses must be
                // byte-identical across runs of a seed.
                .auto_date_header(false)
                .serve_connection(TokioIo::new(io), service);
            tokio::pin!(conn);
            let ended = tokio::select! {
                biased;
                ended = conn.as_mut() => ended,
                // The guard `wait_for` returns is dropped before the drain.
                _ = async { stopped.wait_for(|stop| *stop).await.map(drop) } => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = ended {
                tracing::debug!(error = %e, "server connection ended with an error");
            }
        });
    }
    drop(listener);
    let _ = stopping.send(true);
    while connections.join_next().await.is_some() {}
    Ok(())
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

    /// A graceful stop: the request in flight still gets its answer, the
    /// server returns once it is done, and the closed port refuses the next
    /// connection.
    #[tokio::test]
    async fn serve_until_finishes_the_request_in_flight_then_refuses() {
        let listener = TokioListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = axum::Router::new().route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                "done"
            }),
        );
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_until(listener, router, async {
            let _ = stopped.await;
        }));
        let client = HttpClient::new(Arc::new(TokioConnector));
        let slow = move || {
            http::Request::get(format!("http://{addr}/slow"))
                .body(Bytes::new())
                .unwrap()
        };
        let t = Duration::from_secs(5);
        let in_flight = tokio::spawn({
            let client = client.clone();
            let req = slow();
            async move { client.fetch(req, t, 1024).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        stop.send(()).unwrap();
        let (status, _, body) = in_flight.await.unwrap().unwrap();
        assert_eq!((status.as_u16(), &body[..]), (200, &b"done"[..]));
        server.await.unwrap().unwrap();
        assert!(client.fetch(slow(), t, 1024).await.is_err());
    }
}

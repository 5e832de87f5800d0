//! HTTP/1.1 client over a [`Connector`].
//!
//! Every call is bounded in time: the simulated network has no TCP
//! retransmission, so a lost segment only ever surfaces as the caller's
//! deadline. Every body read is bounded in size.

use std::error::Error as _;
use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use http::header::{CONNECTION, HOST};
use http::{HeaderMap, HeaderValue, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::task::JoinHandle;

use crate::net::Connector;

/// Why an HTTP exchange failed. Messages never carry addresses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// The URL is not an absolute `http://` URL.
    #[error("invalid url: {0}")]
    InvalidUrl(String),
    /// The TCP connection could not be opened.
    #[error("connect failed: {0}")]
    Connect(String),
    /// The connection broke: reset, closed early, broken pipe.
    #[error("connection failed: {0}")]
    Connection(String),
    /// The peer did not speak valid HTTP/1.1.
    #[error("malformed HTTP response: {0}")]
    Protocol(String),
    /// The call's deadline passed (or a stream went idle too long).
    #[error("timed out")]
    Timeout,
    #[error("body exceeds {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("line exceeds {limit} bytes")]
    LineTooLong { limit: usize },
}

impl HttpError {
    fn from_io(e: &io::Error) -> String {
        // The kind, not the message: io messages may embed peer addresses.
        e.kind().to_string()
    }

    fn from_hyper(e: hyper::Error) -> HttpError {
        if e.is_parse() || e.is_parse_status() || e.is_parse_too_large() {
            return HttpError::Protocol(e.to_string());
        }
        if e.is_timeout() {
            return HttpError::Timeout;
        }
        // Name the underlying io failure (reset, broken pipe, eof) if any.
        let mut source = e.source();
        while let Some(s) = source {
            if let Some(io) = s.downcast_ref::<io::Error>() {
                return HttpError::Connection(format!("{e}: {}", Self::from_io(io)));
            }
            source = s.source();
        }
        HttpError::Connection(e.to_string())
    }
}

/// Aborts the spawned connection task when the response (or its body stream)
/// is dropped, so an abandoned exchange never lingers on the network.
struct ConnGuard(JoinHandle<()>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// An HTTP/1.1 client: one fresh connection per request.
#[derive(Clone)]
pub struct HttpClient {
    connector: Arc<dyn Connector>,
    connect_timeout: Duration,
}

/// Default bound on opening a connection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HttpClient")
    }
}

/// A response whose head has arrived; the body is still on the wire.
pub struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    body: Incoming,
    conn: ConnGuard,
}

impl fmt::Debug for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Response")
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

/// A response body as a stream of byte chunks, size- and idle-bounded.
pub type BodyStream = Pin<Box<dyn Stream<Item = Result<Bytes, HttpError>> + Send>>;

impl HttpClient {
    pub fn new(connector: Arc<dyn Connector>) -> Self {
        HttpClient {
            connector,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }

    /// Bounds opening a connection. A connect that does not finish in time
    /// (an unreachable or partitioned host) is a connection failure, not the
    /// call's timeout: nothing reached the upstream, so R19 may retry it.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sends `req` (absolute `http://` URI) and waits for the response head,
    /// at most `timeout` in total.
    pub async fn open(
        &self,
        req: Request<Bytes>,
        timeout: Duration,
    ) -> Result<Response, HttpError> {
        tokio::time::timeout(timeout, self.open_inner(req))
            .await
            .unwrap_or(Err(HttpError::Timeout))
    }

    /// The whole exchange (head and body of at most `limit` bytes) within
    /// `timeout`.
    pub async fn fetch(
        &self,
        req: Request<Bytes>,
        timeout: Duration,
        limit: usize,
    ) -> Result<(StatusCode, HeaderMap, Bytes), HttpError> {
        tokio::time::timeout(timeout, async {
            let Response {
                status,
                headers,
                body,
                conn: _conn,
            } = self.open_inner(req).await?;
            Ok((status, headers, read_body(body, limit).await?))
        })
        .await
        .unwrap_or(Err(HttpError::Timeout))
    }

    async fn open_inner(&self, req: Request<Bytes>) -> Result<Response, HttpError> {
        let (mut parts, body) = req.into_parts();
        let (authority, host) = connect_target(&parts.uri)?;
        let io = tokio::time::timeout(self.connect_timeout, self.connector.connect(&authority))
            .await
            .map_err(|_| HttpError::Connect("connect timed out".into()))?
            .map_err(|e| HttpError::Connect(HttpError::from_io(&e)))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(HttpError::from_hyper)?;
        let guard = ConnGuard(tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "client connection ended with an error");
            }
        }));

        // Origin-form target on the wire; the authority goes in Host.
        parts.uri = parts
            .uri
            .path_and_query()
            .map(|pq| pq.as_str())
            .unwrap_or("/")
            .parse()
            .map_err(|e: http::uri::InvalidUri| HttpError::InvalidUrl(e.to_string()))?;
        parts.headers.insert(HOST, host);
        // One request per connection: the server closes after responding.
        parts
            .headers
            .insert(CONNECTION, HeaderValue::from_static("close"));

        let resp = sender
            .send_request(Request::from_parts(parts, Full::new(body)))
            .await
            .map_err(HttpError::from_hyper)?;
        let (head, body) = resp.into_parts();
        Ok(Response {
            status: head.status,
            headers: head.headers,
            body,
            conn: guard,
        })
    }
}

/// `(host:port to connect to, Host header)` of an absolute `http://` URI.
fn connect_target(uri: &Uri) -> Result<(String, HeaderValue), HttpError> {
    if uri.scheme_str() != Some("http") {
        // TLS would be a connector concern; none is built yet.
        return Err(HttpError::InvalidUrl(
            "only absolute http:// URLs are supported".into(),
        ));
    }
    let authority = uri
        .authority()
        .ok_or_else(|| HttpError::InvalidUrl("missing host".into()))?;
    let connect = format!(
        "{}:{}",
        authority.host(),
        authority.port_u16().unwrap_or(80)
    );
    let host = HeaderValue::from_str(authority.as_str())
        .map_err(|_| HttpError::InvalidUrl("invalid host".into()))?;
    Ok((connect, host))
}

async fn read_body(mut body: Incoming, limit: usize) -> Result<Bytes, HttpError> {
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(HttpError::from_hyper)?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                return Err(HttpError::BodyTooLarge { limit });
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

impl Response {
    /// Reads the whole body, at most `limit` bytes, within `timeout`.
    pub async fn bytes(self, limit: usize, timeout: Duration) -> Result<Bytes, HttpError> {
        let Response { body, conn, .. } = self;
        let out = tokio::time::timeout(timeout, read_body(body, limit))
            .await
            .unwrap_or(Err(HttpError::Timeout));
        drop(conn);
        out
    }

    /// The body as a stream of chunks: fails once more than `limit` bytes
    /// arrive in total, or when no chunk arrives for `idle`. Ends after the
    /// first error.
    pub fn into_stream(self, limit: usize, idle: Duration) -> BodyStream {
        struct State {
            body: Incoming,
            seen: usize,
            _conn: ConnGuard,
        }
        let state = Some(State {
            body: self.body,
            seen: 0,
            _conn: self.conn,
        });
        Box::pin(futures_util::stream::unfold(
            state,
            move |state| async move {
                let mut st = state?;
                loop {
                    let frame = match tokio::time::timeout(idle, st.body.frame()).await {
                        Err(_) => return Some((Err(HttpError::Timeout), None)),
                        Ok(None) => return None,
                        Ok(Some(Err(e))) => return Some((Err(HttpError::from_hyper(e)), None)),
                        Ok(Some(Ok(frame))) => frame,
                    };
                    let Ok(data) = frame.into_data() else {
                        continue; // trailers carry nothing we use
                    };
                    st.seen += data.len();
                    if st.seen > limit {
                        return Some((Err(HttpError::BodyTooLarge { limit }), None));
                    }
                    if !data.is_empty() {
                        return Some((Ok(data), Some(st)));
                    }
                }
            },
        ))
    }
}

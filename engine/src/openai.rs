//! The OpenAI-compatible chat client shared by every plaintext-HTTP provider
//! (NEAR backends and external providers): request forwarding, SSE parsing
//! and the mapping of HTTP failures to [`ProviderError`] (R19's inputs).

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, StatusCode};
use serde_json::{Map, Value};

use crate::http::{lines, HttpClient, HttpError};
use crate::provider::{ChatRequest, ChatResponse, ChatStream, ProviderError, StreamItem};

/// Longest SSE line accepted (R23's cap, shared by every stream).
pub const MAX_SSE_LINE: usize = 16 << 20;
/// Largest response body accepted.
pub const MAX_BODY: usize = 64 << 20;
/// Largest error body read to explain a failed status.
const MAX_ERROR_BODY: usize = 64 << 10;
/// Longest upstream error message passed on.
const MAX_MESSAGE: usize = 300;

/// Deadlines of one upstream call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Connect, send and receive the whole JSON body (or, for a stream, the
    /// response head).
    pub request: Duration,
    /// Longest silence between two chunks of a stream.
    pub stream_idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            request: Duration::from_secs(120),
            stream_idle: Duration::from_secs(60),
        }
    }
}

/// An OpenAI-compatible endpoint at `base` (`http://host[:port]`).
#[derive(Debug, Clone)]
pub struct OpenAiClient {
    http: HttpClient,
    base: String,
    authority: String,
    api_key: Option<String>,
    timeouts: Timeouts,
    /// Forward `x-model-pub-key` / `x-client-pub-key` (NEAR backends serve
    /// E2EE; a plaintext provider must not receive them).
    forward_key_headers: bool,
}

impl OpenAiClient {
    pub fn new(http: HttpClient, base_url: &str) -> Result<Self, HttpError> {
        let base = base_url.trim_end_matches('/').to_string();
        let uri: http::Uri = base
            .parse()
            .map_err(|_| HttpError::InvalidUrl("unparseable URL".into()))?;
        let authority = match (uri.scheme_str(), uri.authority()) {
            (Some("http"), Some(a)) => a.as_str().to_string(),
            _ => {
                return Err(HttpError::InvalidUrl(
                    "only http://host URLs are supported".into(),
                ))
            }
        };
        Ok(OpenAiClient {
            http,
            base,
            authority,
            api_key: None,
            timeouts: Timeouts::default(),
            forward_key_headers: false,
        })
    }

    pub fn with_api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into());
        self
    }

    pub fn with_timeouts(mut self, timeouts: Timeouts) -> Self {
        self.timeouts = timeouts;
        self
    }

    pub fn forwarding_key_headers(mut self, on: bool) -> Self {
        self.forward_key_headers = on;
        self
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// `host[:port]` of the base URL.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    pub fn timeouts(&self) -> Timeouts {
        self.timeouts
    }

    /// `GET {base}{path}` decoded as JSON.
    pub async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<T, ProviderError> {
        let req = self.request(Method::GET, path, Bytes::new())?;
        let body = self.fetch_ok(req).await?;
        serde_json::from_slice(&body).map_err(|e| ProviderError::BodyDecode(e.to_string()))
    }

    /// `{method} {base}{path}` with a JSON body, answer decoded as JSON.
    pub async fn send_json<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: &impl serde::Serialize,
    ) -> Result<T, ProviderError> {
        let body =
            serde_json::to_vec(body).map_err(|e| ProviderError::BodyDecode(e.to_string()))?;
        let req = self.request(method, path, body.into())?;
        let body = self.fetch_ok(req).await?;
        serde_json::from_slice(&body).map_err(|e| ProviderError::BodyDecode(e.to_string()))
    }

    /// A non-streamed completion. The upstream is asked for `upstream_model`;
    /// the response carries the request's canonical id in `model` (R3).
    pub async fn chat_completion(
        &self,
        req: &ChatRequest,
        upstream_model: &str,
    ) -> Result<ChatResponse, ProviderError> {
        let http_req = self.chat_request(req, upstream_model, false)?;
        let body = self.fetch_ok(http_req).await?;
        let body = with_model(body, &req.model)?;
        Ok(ChatResponse { body })
    }

    /// A streamed completion: each upstream `data:` payload becomes a
    /// [`StreamItem::Chunk`] carrying the canonical id, `data: [DONE]`
    /// becomes [`StreamItem::Done`], and an end without it is
    /// [`ProviderError::Truncated`].
    pub async fn chat_completion_stream(
        &self,
        req: &ChatRequest,
        upstream_model: &str,
    ) -> Result<ChatStream, ProviderError> {
        let http_req = self.chat_request(req, upstream_model, true)?;
        let resp = self
            .http
            .open(http_req, self.timeouts.request)
            .await
            .map_err(provider_error)?;
        if !resp.status.is_success() {
            let status = resp.status;
            let body = resp
                .bytes(MAX_ERROR_BODY, self.timeouts.request)
                .await
                .unwrap_or_default();
            return Err(status_error(status, &body));
        }
        let body = resp.into_stream(MAX_BODY, self.timeouts.stream_idle);
        Ok(sse_stream(lines(body, MAX_SSE_LINE), req.model.clone()))
    }

    fn chat_request(
        &self,
        req: &ChatRequest,
        upstream_model: &str,
        stream: bool,
    ) -> Result<Request<Bytes>, ProviderError> {
        let mut body: Map<String, Value> = req.body.clone();
        body.insert("model".into(), Value::String(upstream_model.into()));
        body.insert("stream".into(), Value::Bool(stream));
        let bytes =
            serde_json::to_vec(&body).map_err(|e| ProviderError::BodyDecode(e.to_string()))?;
        let mut http_req = self.request(Method::POST, "/v1/chat/completions", bytes.into())?;
        let headers = http_req.headers_mut();
        if stream {
            headers.insert(ACCEPT, HeaderValue::from_static("text/event-stream"));
        }
        if self.forward_key_headers {
            for (name, value) in [
                ("x-model-pub-key", &req.model_pub_key),
                ("x-client-pub-key", &req.client_pub_key),
            ] {
                if let Some(v) = value.as_deref().and_then(|v| HeaderValue::from_str(v).ok()) {
                    headers.insert(name, v);
                }
            }
        }
        Ok(http_req)
    }

    fn request(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<Request<Bytes>, ProviderError> {
        let mut builder = Request::builder()
            .method(method)
            .uri(format!("{}{}", self.base, path))
            .header(CONTENT_TYPE, "application/json");
        if let Some(key) = &self.api_key {
            builder = builder.header(AUTHORIZATION, format!("Bearer {key}"));
        }
        builder
            .body(body)
            .map_err(|e| ProviderError::Connection(format!("invalid request: {e}")))
    }

    /// The body of a 2xx answer; any other status becomes its error.
    async fn fetch_ok(&self, req: Request<Bytes>) -> Result<Bytes, ProviderError> {
        let (status, _, body) = self
            .http
            .fetch(req, self.timeouts.request, MAX_BODY)
            .await
            .map_err(provider_error)?;
        if !status.is_success() {
            return Err(status_error(status, &body));
        }
        Ok(body)
    }
}

/// Transport failures as provider errors (classified by R19).
pub fn provider_error(e: HttpError) -> ProviderError {
    match e {
        HttpError::Timeout => ProviderError::Timeout,
        HttpError::Connect(m) | HttpError::Connection(m) | HttpError::InvalidUrl(m) => {
            ProviderError::Connection(m)
        }
        e @ (HttpError::Protocol(_)
        | HttpError::BodyTooLarge { .. }
        | HttpError::LineTooLong { .. }) => ProviderError::BodyDecode(e.to_string()),
    }
}

/// A non-success status with its error body as a provider error. R31's
/// extraction: `error.message`, else a top-level `message`, else `detail`,
/// else the raw body; `error.code` and `error.type` are dropped. The text is
/// kept unredacted (classification reads it, R35–R38) but bounded.
pub fn status_error(status: StatusCode, body: &[u8]) -> ProviderError {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_string);
    let extracted = parsed.as_ref().and_then(|v| {
        text(v.get("error").and_then(|e| e.get("message")))
            .or_else(|| text(v.get("message")))
            .or_else(|| text(v.get("detail")))
    });
    let raw = extracted.unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    let mut message = bound_message(&raw);
    if message.is_empty() {
        message = status.canonical_reason().unwrap_or("error").to_string();
    }
    ProviderError::Status {
        status: status.as_u16(),
        message,
    }
}

/// An upstream message bounded for logs and replies: control characters and
/// runs of whitespace collapsed, at most [`MAX_MESSAGE`] bytes. Redaction
/// happens where it is shown (`client_error::redact`).
pub fn bound_message(raw: &str) -> String {
    let mut out = raw
        .split(|c: char| c.is_whitespace() || c.is_control())
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    if out.len() > MAX_MESSAGE {
        let mut cut = MAX_MESSAGE;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push('…');
    }
    out
}

/// Validates a JSON object and makes its `model` the canonical id, leaving
/// the bytes untouched when they already carry it (R3). Shared with the
/// Chutes provider, which applies it to decrypted bodies and chunks.
///
/// A complete body that is not a JSON object is R37's unparseable answer
/// ([`ProviderError::Parse`]), not a broken one.
pub fn with_model(body: Bytes, canonical: &str) -> Result<Bytes, ProviderError> {
    // The common case (every body and chunk the router passes on, a NEAR
    // answer naming its model) needs no rewrite: one validating pass that
    // builds nothing. Anything else takes the full parse below, which also
    // gives the exact error.
    if model_scan::is_canonical_object(&body, canonical) {
        return Ok(body);
    }
    let mut value: Value =
        serde_json::from_slice(&body).map_err(|e| ProviderError::Parse(e.to_string()))?;
    let obj = value
        .as_object_mut()
        .ok_or_else(|| ProviderError::Parse("expected a JSON object".into()))?;
    match obj.get("model") {
        Some(Value::String(m)) if m == canonical => Ok(body),
        None => Ok(body),
        Some(_) => {
            obj.insert("model".into(), Value::String(canonical.into()));
            serde_json::to_vec(&value)
                .map(Bytes::from)
                .map_err(|e| ProviderError::BodyDecode(e.to_string()))
        }
    }
}

/// [`with_model`]'s fast path: whether bytes are a JSON object whose
/// `model` is `canonical` or absent, decided without building a
/// `serde_json::Value`.
///
/// It accepts exactly what `serde_json::from_slice::<Value>` accepts: every
/// value goes through the same `Deserializer::deserialize_any` (numbers
/// range-checked, strings UTF-8- and escape-checked, the same depth limit)
/// and every key through `deserialize_str`, as `Value`'s own visitor does;
/// a repeated `model` counts by its last occurrence, as in a `Value` map.
mod model_scan {
    use std::fmt;

    use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

    pub(super) fn is_canonical_object(body: &[u8], canonical: &str) -> bool {
        let mut de = serde_json::Deserializer::from_slice(body);
        matches!(Object(canonical).deserialize(&mut de), Ok(true)) && de.end().is_ok()
    }

    /// The top level: a map whose last `model` is `canonical` (or absent).
    struct Object<'c>(&'c str);

    impl<'de> DeserializeSeed<'de> for Object<'_> {
        type Value = bool;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
            d.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for Object<'_> {
        type Value = bool;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
            let mut canonical = true;
            while let Some(is_model) = map.next_key_seed(Key)? {
                if is_model {
                    canonical = map.next_value_seed(Equals(self.0))?;
                } else {
                    map.next_value_seed(Skip)?;
                }
            }
            Ok(canonical)
        }
    }

    /// A key, validated; `true` when it is `model`.
    struct Key;

    impl<'de> DeserializeSeed<'de> for Key {
        type Value = bool;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
            d.deserialize_str(self)
        }
    }

    impl<'de> Visitor<'de> for Key {
        type Value = bool;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a string key")
        }
        fn visit_str<E>(self, v: &str) -> Result<bool, E> {
            Ok(v == "model")
        }
    }

    /// Any value, validated; `true` when it is the string given.
    struct Equals<'c>(&'c str);

    impl<'de> DeserializeSeed<'de> for Equals<'_> {
        type Value = bool;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
            d.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for Equals<'_> {
        type Value = bool;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("any JSON value")
        }
        fn visit_str<E>(self, v: &str) -> Result<bool, E> {
            Ok(v == self.0)
        }
        fn visit_bool<E>(self, _: bool) -> Result<bool, E> {
            Ok(false)
        }
        fn visit_i64<E>(self, _: i64) -> Result<bool, E> {
            Ok(false)
        }
        fn visit_u64<E>(self, _: u64) -> Result<bool, E> {
            Ok(false)
        }
        fn visit_f64<E>(self, _: f64) -> Result<bool, E> {
            Ok(false)
        }
        fn visit_unit<E>(self) -> Result<bool, E> {
            Ok(false)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<bool, A::Error> {
            Skip.visit_seq(seq).map(|()| false)
        }
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<bool, A::Error> {
            Skip.visit_map(map).map(|()| false)
        }
    }

    /// Any value, validated and dropped.
    struct Skip;

    impl<'de> DeserializeSeed<'de> for Skip {
        type Value = ();
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for Skip {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("any JSON value")
        }
        fn visit_str<E>(self, _: &str) -> Result<(), E> {
            Ok(())
        }
        fn visit_bool<E>(self, _: bool) -> Result<(), E> {
            Ok(())
        }
        fn visit_i64<E>(self, _: i64) -> Result<(), E> {
            Ok(())
        }
        fn visit_u64<E>(self, _: u64) -> Result<(), E> {
            Ok(())
        }
        fn visit_f64<E>(self, _: f64) -> Result<(), E> {
            Ok(())
        }
        fn visit_unit<E>(self) -> Result<(), E> {
            Ok(())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            while seq.next_element_seed(Skip)?.is_some() {}
            Ok(())
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            while map.next_key_seed(Key)?.is_some() {
                map.next_value_seed(Skip)?;
            }
            Ok(())
        }
    }
}

/// Upstream SSE lines → stream items. Keepalive comments, blank lines and
/// non-`data` fields are skipped; the stream ends after `[DONE]` or the first
/// error.
fn sse_stream(lines: crate::http::LineStream, canonical: String) -> ChatStream {
    let state = Some((lines, canonical));
    Box::pin(futures_util::stream::unfold(state, |state| async move {
        let (mut lines, canonical) = state?;
        loop {
            let line = match lines.next().await {
                None => return Some((Err(ProviderError::Truncated), None)),
                Some(Err(e)) => return Some((Err(provider_error(e)), None)),
                Some(Ok(line)) => line,
            };
            let Some(payload) = line.strip_prefix(b"data:") else {
                continue;
            };
            let payload = payload.strip_prefix(b" ").unwrap_or(payload);
            if payload == b"[DONE]" {
                return Some((Ok(StreamItem::Done), None));
            }
            if let Some(e) = in_stream_error(payload) {
                return Some((Err(e), None));
            }
            return match with_model(line.slice_ref(payload), &canonical) {
                Ok(chunk) => Some((Ok(StreamItem::Chunk(chunk)), Some((lines, canonical)))),
                Err(e) => Some((Err(e), None)),
            };
        }
    }))
}

/// R34.6: an upstream's in-stream `{"error":{…}}` object is an HTTP error:
/// its status is the numeric `error.code` when that is in 100–599, else
/// 502; its message is `error.message`, else a fixed text. Anything else is
/// not an error event.
fn in_stream_error(payload: &[u8]) -> Option<ProviderError> {
    // Cheap pre-check: chunks are parsed again by `with_model` anyway.
    if !payload.windows(7).any(|w| w == b"\"error\"") {
        return None;
    }
    let value: Value = serde_json::from_slice(payload).ok()?;
    let error = value.as_object()?.get("error")?.as_object()?;
    let status = error
        .get("code")
        .and_then(Value::as_u64)
        .filter(|c| (100..=599).contains(c))
        .map_or(502, |c| c as u16);
    let message = error.get("message").and_then(Value::as_str).map_or_else(
        || "Upstream stream emitted an error event".to_string(),
        bound_message,
    );
    Some(ProviderError::Status { status, message })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn r34_in_stream_error_objects_are_http_errors() {
        assert_eq!(
            in_stream_error(br#"{"error":{"code":503,"message":"queue full"}}"#),
            Some(ProviderError::status(503, "queue full"))
        );
        assert_eq!(
            in_stream_error(br#"{"error":{"code":"overloaded"}}"#),
            Some(ProviderError::status(
                502,
                "Upstream stream emitted an error event"
            ))
        );
        assert_eq!(
            in_stream_error(br#"{"error":{"code":42,"message":"x"}}"#),
            Some(ProviderError::status(502, "x"))
        );
        // A chunk whose content merely mentions "error" is a chunk.
        assert_eq!(
            in_stream_error(br#"{"choices":[{"delta":{"content":"\"error\""}}]}"#),
            None
        );
    }

    #[test]
    fn r31_extraction_order_drops_code_and_type() {
        let nf = br#"{"error":{"message":"bad request","type":"invalid_request_error","code":"model_not_found"}}"#;
        assert_eq!(
            status_error(StatusCode::BAD_REQUEST, nf),
            ProviderError::status(400, "bad request")
        );
        let top = br#"{"message":"top","detail":"d"}"#;
        assert_eq!(
            status_error(StatusCode::BAD_REQUEST, top),
            ProviderError::status(400, "top")
        );
        let detail = br#"{"detail":"only detail"}"#;
        assert_eq!(
            status_error(StatusCode::UNPROCESSABLE_ENTITY, detail),
            ProviderError::status(422, "only detail")
        );
        let e = status_error(StatusCode::SERVICE_UNAVAILABLE, b"");
        assert_eq!(e, ProviderError::status(503, "Service Unavailable"));
        let e = status_error(StatusCode::BAD_GATEWAY, b"<html>bad\n gateway</html>");
        assert_eq!(e, ProviderError::status(502, "<html>bad gateway</html>"));
        // Unredacted: R36 must see the embedded status and the URL.
        let e = status_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            br#"{"error":{"message":"at http://10.0.0.1/x"}}"#,
        );
        assert_eq!(e, ProviderError::status(500, "at http://10.0.0.1/x"));
        assert!(bound_message(&"é".repeat(400)).len() <= MAX_MESSAGE + '…'.len_utf8());
    }

    #[test]
    fn r37_complete_but_unparseable_is_a_parse_error() {
        assert!(matches!(
            with_model(Bytes::from_static(br#"{"model":"m","#), "m"),
            Err(ProviderError::Parse(_))
        ));
    }

    #[test]
    fn model_is_rewritten_only_when_it_differs() {
        let same = Bytes::from_static(br#"{"model":"m",  "x":1}"#);
        assert_eq!(with_model(same.clone(), "m").unwrap(), same);
        let other = Bytes::from_static(br#"{"model":"slug","x":1}"#);
        assert_eq!(
            &with_model(other, "m").unwrap()[..],
            br#"{"model":"m","x":1}"#
        );
        assert!(matches!(
            with_model(Bytes::from_static(b"nope"), "m"),
            Err(ProviderError::Parse(_))
        ));
    }

    /// The fast path takes exactly the bodies the full parse would pass
    /// through untouched, and leaves everything else (rewrites, errors) to it.
    #[test]
    fn r3_model_scan_agrees_with_the_full_parse() {
        let slow = |body: &[u8], canonical: &str| -> bool {
            let Ok(Value::Object(obj)) = serde_json::from_slice::<Value>(body) else {
                return false;
            };
            match obj.get("model") {
                None => true,
                Some(Value::String(m)) => m == canonical,
                Some(_) => false,
            }
        };
        let deep = format!("{{\"a\":{}1{}}}", "[".repeat(200), "]".repeat(200));
        let cases: Vec<&[u8]> = vec![
            br#"{"model":"m"}"#,
            br#"{"model":"m","x":[1,-2,3.5e3,true,false,null,{"model":"z"}],"y":{"k":"v"}}"#,
            br#" {"x":1} "#,
            br#"{}"#,
            br#"{"model":"slug"}"#,
            br#"{"model":"slug","model":"m"}"#,
            br#"{"model":"m","model":"slug"}"#,
            br#"{"model":"\u006d"}"#,
            br#"{"mo\u0064el":"m"}"#,
            br#"{"model":null}"#,
            br#"{"model":["m"]}"#,
            br#"{"model":{"m":1}}"#,
            br#"{"model":7}"#,
            br#"["m"]"#,
            br#""m""#,
            br#"null"#,
            br#"{"model":"m"} x"#,
            br#"{"model":"m","#,
            br#"{"model":"m","x":1e400}"#,
            br#"{"model":"m","x":"\ud800"}"#,
            br#"{"model":"m","x":"\q"}"#,
            b"{\"model\":\"m\",\"x\":\"\xff\"}",
            b"{\"model\":\"m\",\"x\":\"a\nb\"}",
            br#"{"model":"m",}"#,
            br#"{"model":"m" "x":1}"#,
            br#"{1:"m"}"#,
            deep.as_bytes(),
            b"",
        ];
        for body in cases {
            assert_eq!(
                model_scan::is_canonical_object(body, "m"),
                slow(body, "m"),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    /// R3: a `model` that is not a string (a boolean, a negative or
    /// fractional number, an empty array or object) is not the canonical id:
    /// it is rewritten, never passed through.
    #[test]
    fn r3_a_model_of_any_other_json_type_is_rewritten() {
        for body in [
            r#"{"model":true}"#,
            r#"{"model":false}"#,
            r#"{"model":-1}"#,
            r#"{"model":1.5}"#,
            r#"{"model":[]}"#,
            r#"{"model":{}}"#,
            r#"{"model":null}"#,
            r#"{"model":7}"#,
        ] {
            assert_eq!(
                &with_model(Bytes::from_static(body.as_bytes()), "m").unwrap()[..],
                br#"{"model":"m"}"#,
                "{body}"
            );
        }
    }

    /// R3's fast path reads a repeated `model` by its last occurrence, as a
    /// `Value` map does, whatever value came earlier (a non-empty array or
    /// object included): such a body is taken as canonical in the one pass,
    /// its bytes untouched.
    #[test]
    fn r3_model_scan_reads_a_repeated_model_past_any_earlier_value() {
        for body in [
            r#"{"model":[1,[2]],"model":"m"}"#,
            r#"{"model":{"a":{"b":1}},"model":"m"}"#,
            r#"{"model":true,"model":-1.5,"model":"m"}"#,
        ] {
            assert!(
                model_scan::is_canonical_object(body.as_bytes(), "m"),
                "{body}"
            );
            let bytes = Bytes::from_static(body.as_bytes());
            assert_eq!(with_model(bytes.clone(), "m").unwrap(), bytes, "{body}");
        }
    }

    /// R31: a message longer than the bound is cut at the last character
    /// boundary at or before [`MAX_MESSAGE`] bytes, then marked; one of
    /// exactly the bound is kept whole.
    #[test]
    fn r31_messages_are_cut_at_a_character_boundary_within_the_bound() {
        let exact = "a".repeat(MAX_MESSAGE);
        assert_eq!(bound_message(&exact), exact);
        // 'a' then 2-byte characters: byte MAX_MESSAGE falls inside one.
        let odd = format!("a{}", "é".repeat(400));
        let cut = bound_message(&odd);
        assert_eq!(cut, format!("a{}…", "é".repeat((MAX_MESSAGE - 1) / 2)));
        assert_eq!(cut.len(), MAX_MESSAGE - 1 + '…'.len_utf8());
    }

    /// R3 and R31 through the client itself, on real loopback sockets: the
    /// upstream is asked for its own model id with the key and `stream`
    /// flag, a JSON answer and each stream chunk come back under the
    /// canonical id, and a failed status (JSON or stream) carries its error
    /// body's message. The client keeps its base URL (no trailing slash),
    /// its authority and its deadlines.
    #[tokio::test]
    async fn r3_r31_the_client_rewrites_answers_and_reads_failed_statuses() {
        use std::sync::Arc;

        use crate::http::serve;
        use crate::net::{TokioConnector, TokioListener};

        let listener = TokioListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let upstream = axum::Router::new().route(
            "/v1/chat/completions",
            axum::routing::post(
                |headers: http::HeaderMap, axum::Json(body): axum::Json<Value>| async move {
                    if body["model"] == "fail" {
                        let error = r#"{"error":{"message":"queue full"}}"#;
                        return (StatusCode::SERVICE_UNAVAILABLE, error.to_string());
                    }
                    let auth = headers
                        .get(AUTHORIZATION)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    let answer = serde_json::json!({
                        "model": "served-slug",
                        "asked": body["model"],
                        "stream": body["stream"],
                        "auth": auth,
                    });
                    if body["stream"] == true {
                        (
                            StatusCode::OK,
                            format!("data: {answer}\n\ndata: [DONE]\n\n"),
                        )
                    } else {
                        (StatusCode::OK, answer.to_string())
                    }
                },
            ),
        );
        let server = tokio::spawn(serve(listener, upstream));
        let timeouts = Timeouts {
            request: Duration::from_secs(5),
            stream_idle: Duration::from_secs(4),
        };
        let client = OpenAiClient::new(
            HttpClient::new(Arc::new(TokioConnector)),
            &format!("http://{addr}/"),
        )
        .unwrap()
        .with_api_key("k")
        .with_timeouts(timeouts);
        assert_eq!(client.base_url(), format!("http://{addr}"));
        assert_eq!(client.authority(), addr.to_string());
        assert_eq!(client.timeouts(), timeouts);

        let req = ChatRequest {
            model: "m".into(),
            body: Map::new(),
            model_pub_key: None,
            client_pub_key: None,
        };
        let json = client.chat_completion(&req, "up-slug").await.unwrap();
        let want = |stream: bool| {
            serde_json::json!({
                "model": "m", "asked": "up-slug", "stream": stream, "auth": "Bearer k",
            })
        };
        let got: Value = serde_json::from_slice(&json.body).unwrap();
        assert_eq!(got, want(false));
        let items: Vec<_> = client
            .chat_completion_stream(&req, "up-slug")
            .await
            .unwrap()
            .collect()
            .await;
        assert_eq!(items.len(), 2, "{items:?}");
        let Ok(StreamItem::Chunk(chunk)) = &items[0] else {
            panic!("{items:?}");
        };
        assert_eq!(serde_json::from_slice::<Value>(chunk).unwrap(), want(true));
        assert_eq!(items[1], Ok(StreamItem::Done));

        let failed = ProviderError::status(503, "queue full");
        assert_eq!(
            client.chat_completion(&req, "fail").await.unwrap_err(),
            failed
        );
        assert_eq!(
            client
                .chat_completion_stream(&req, "fail")
                .await
                .err()
                .unwrap(),
            failed
        );
        server.abort();
    }

    fn sse(chunks: &[&'static str], max_line: usize) -> ChatStream {
        let body: Vec<Result<Bytes, HttpError>> = chunks
            .iter()
            .map(|c| Ok(Bytes::from_static(c.as_bytes())))
            .collect();
        sse_stream(
            lines(Box::pin(futures_util::stream::iter(body)), max_line),
            "m".into(),
        )
    }

    #[tokio::test]
    async fn sse_maps_data_done_comments_and_eof() {
        let items: Vec<_> = sse(
            &[
                ": keepalive\r\n\nevent: x\ndata: {\"model\":\"slug\"}\r\n\n",
                "data:{}\n\ndata: [DONE]\n\ndata: {}\n",
            ],
            1024,
        )
        .collect()
        .await;
        assert_eq!(
            items,
            vec![
                Ok(StreamItem::Chunk(Bytes::from_static(br#"{"model":"m"}"#))),
                Ok(StreamItem::Chunk(Bytes::from_static(b"{}"))),
                Ok(StreamItem::Done),
            ]
        );
        // No [DONE] (and a half line at the cut): truncated, never Done.
        let items: Vec<_> = sse(&["data: {}\n\ndata: [DO"], 1024).collect().await;
        assert_eq!(items.last(), Some(&Err(ProviderError::Truncated)));
        assert!(!items.contains(&Ok(StreamItem::Done)));
        // An oversized line is a broken body; a complete line that is not
        // JSON is an unparseable one (R37). Both end the stream.
        let items: Vec<_> = sse(&["data: 0123456789\n"], 8).collect().await;
        assert!(
            matches!(items[..], [Err(ProviderError::BodyDecode(_))]),
            "{items:?}"
        );
        let items: Vec<_> = sse(&["data: {nope\n"], 64).collect().await;
        assert!(
            matches!(items[..], [Err(ProviderError::Parse(_))]),
            "{items:?}"
        );
    }
}

//! The client error contract (SPEC-parity R28–R32, R34): the one place that
//! decides what a client sees when a chat request is not served: status,
//! `type`, message and `param` of the R26 envelope, the in-stream error
//! frame, and the text redaction every shown upstream message goes through.
//!
//! Classification (which failures are retried, R35–R38) lives in `retry.rs`;
//! this module only maps the failure that ended a request to its reply.

use bytes::Bytes;
use serde_json::json;

use crate::config::Profile;
use crate::echo::echo;
use crate::provider::ProviderError;
use crate::retry;
use crate::router::RouteError;

/// What a client sees instead of an upstream's words (R29, R30).
pub const GENERIC: &str = "The model is currently unavailable. Please try again later.";

/// R32: the `Retry-After` value of a 429 that has none of its own.
pub const RETRY_AFTER_SECS: &str = "2";

/// R30: the fixed text of a client-media error; the URL is never echoed.
pub const CLIENT_MEDIA: &str =
    "One or more image or video inputs could not be fetched or decoded. \
Ensure each URL is reachable and resolves to a valid image or video.";

/// A reply in the R26 envelope, before it becomes HTTP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub kind: &'static str,
    pub message: String,
    pub param: Option<&'static str>,
}

impl Reply {
    fn new(status: u16, kind: &'static str, message: impl Into<String>) -> Reply {
        Reply {
            status,
            kind,
            message: message.into(),
            param: None,
        }
    }

    fn param(mut self, param: &'static str) -> Reply {
        self.param = Some(param);
        self
    }

    fn generic(status: u16, kind: &'static str) -> Reply {
        Reply::new(status, kind, GENERIC)
    }
}

/// R28–R31: the reply for a request that was not served. `requested` is the
/// id the client sent (the world has no aliases, so it is also the canonical
/// id); it is echoed bounded and escaped.
pub fn reply(e: &RouteError) -> Reply {
    match e {
        RouteError::UnknownModel { model } | RouteError::Inactive { model } => Reply::new(
            400,
            "invalid_request_error",
            format!(
                "Model '{}' not found. It's not a valid model name or alias.",
                echo(model)
            ),
        )
        .param("model"),
        RouteError::NoProviders { model } => Reply::new(
            400,
            "invalid_request_error",
            format!("Model '{}' not found in any configured provider", echo(model)),
        )
        .param("model"),
        RouteError::NoProviderForPubKey { .. } => Reply::new(
            421,
            "provider_error",
            "The encryption key is no longer valid. Please refresh your attestation report and retry.",
        ),
        RouteError::Overloaded { model, limit } => Reply::new(
            429,
            "rate_limit_exceeded",
            format!(
                "Concurrent request limit exceeded for model {}. Organization limit: {limit} concurrent requests per model.",
                echo(model)
            ),
        ),
        RouteError::Provider {
            model,
            error,
            external,
            candidates,
            fast_return,
            ..
        } => provider_reply(model, error, *external, *candidates, *fast_return),
    }
}

/// R29 (HTTP failures) and R30 (everything else).
fn provider_reply(
    model: &str,
    error: &ProviderError,
    external: bool,
    candidates: usize,
    fast_return: bool,
) -> Reply {
    let model = echo(model);
    let ProviderError::Status { status, message } = error else {
        return match error {
            ProviderError::Timeout => Reply::new(
                504,
                "gateway_timeout",
                "The request timed out waiting for the model to respond. Please try again.",
            ),
            _ => Reply::generic(502, "bad_gateway"),
        };
    };
    if retry::is_client_media(*status, message) {
        return Reply::new(400, "invalid_request_error", CLIENT_MEDIA);
    }
    // R31: wrapped and redacted; prefixed when a walk over several
    // providers ended on it (a fast-return is one provider's answer).
    let pass_through = || {
        let wrapped = format!("Provider failed for model '{model}': {}", redact(message));
        if candidates >= 2 && !fast_return {
            format!(
                "All {candidates} provider(s) failed for model '{model}'. Last error: {wrapped}"
            )
        } else {
            wrapped
        }
    };
    match (*status, external) {
        (400 | 413 | 422, _) => Reply::new(400, "invalid_request_error", pass_through()),
        (404, false) => Reply::new(400, "invalid_request_error", pass_through()).param("model"),
        (408, _) => Reply::new(
            504,
            "gateway_timeout",
            "The request timed out. Please try again.",
        ),
        (429, _) => Reply::new(
            429,
            "rate_limit_exceeded",
            format!(
                "Rate limit exceeded by upstream provider for model '{model}'. Please retry with exponential backoff."
            ),
        ),
        (401 | 403, _) => Reply::generic(500, "provider_error"),
        (503, _) => Reply::new(
            429,
            "service_overloaded",
            "The service is temporarily overloaded. Please retry with exponential backoff.",
        ),
        (504, false) => Reply::new(
            504,
            "gateway_timeout",
            "The request timed out waiting for the model to respond. Please try again.",
        ),
        (500..=599, _) | (_, true) => Reply::generic(502, "bad_gateway"),
        (other, false) => Reply::new(other, "provider_error", pass_through()),
    }
}

/// R34.2–R34.4: the frame for an error inside a stream that was already
/// handed to the client: exactly `message` and `type`. Under `Tiersim` the
/// message is redacted as R31 says; under `Upstream` it is the error's raw
/// text (Decisions, R34.4).
pub fn stream_frame(e: &ProviderError, profile: Profile) -> Bytes {
    let kind = match e {
        ProviderError::Status { status: 429, .. } => "rate_limit_exceeded",
        ProviderError::Status { status, message } if retry::is_client_media(*status, message) => {
            "invalid_request_error"
        }
        ProviderError::Status {
            status: 400..=499, ..
        } => "invalid_request_error",
        _ => "server_error",
    };
    let text = e.to_string();
    let message = match profile {
        Profile::Tiersim => redact(&text),
        Profile::Upstream => text,
    };
    let frame = json!({ "error": { "message": message, "type": kind } });
    Bytes::from(format!("data: {frame}\n\n"))
}

/// R31's redaction: `http://…`/`https://…` up to whitespace or `)` become
/// `[URL_REDACTED]`, an IPv4 address with or without a port becomes
/// `[IP_REDACTED]`, and `error sending request for url` becomes
/// `provider connection failed`. Every upstream text a person reads (a
/// reply, an in-stream frame, the attempt log) goes through here.
pub fn redact(text: &str) -> String {
    let text = text.replace(
        "error sending request for url",
        "provider connection failed",
    );
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(at) = ["http://", "https://"]
        .iter()
        .filter_map(|scheme| rest.find(scheme))
        .min()
    {
        out.push_str(&rest[..at]);
        out.push_str("[URL_REDACTED]");
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| c.is_whitespace() || c == ')')
            .unwrap_or(tail.len());
        rest = &tail[end..];
    }
    out.push_str(rest);
    redact_ipv4(&out)
}

/// Replaces every `a.b.c.d` (each part 1–3 digits, not inside a longer
/// dotted number) and its `:port` with `[IP_REDACTED]`.
fn redact_ipv4(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut i = 0;
    while i < b.len() {
        let starts =
            b[i].is_ascii_digit() && (i == 0 || !(b[i - 1].is_ascii_digit() || b[i - 1] == b'.'));
        if let Some(end) = starts.then(|| ipv4_end(b, i)).flatten() {
            out.push_str(&text[copied..i]);
            out.push_str("[IP_REDACTED]");
            copied = end;
            i = end;
        } else {
            i += 1;
        }
    }
    out.push_str(&text[copied..]);
    out
}

/// The end of an IPv4 address (and its port) starting at `i`, if one does.
fn ipv4_end(b: &[u8], mut i: usize) -> Option<usize> {
    let digits = |b: &[u8], i: usize| b[i..].iter().take_while(|c| c.is_ascii_digit()).count();
    for part in 0..4 {
        let n = digits(b, i);
        if !(1..=3).contains(&n) {
            return None;
        }
        i += n;
        if part < 3 {
            if b.get(i) != Some(&b'.') {
                return None;
            }
            i += 1;
        }
    }
    if b.get(i).is_some_and(|c| c.is_ascii_digit() || *c == b'.')
        && b.get(i + 1).is_some_and(u8::is_ascii_digit)
    {
        return None;
    }
    if b.get(i) == Some(&b':') && b.get(i + 1).is_some_and(u8::is_ascii_digit) {
        i += 1 + digits(b, i + 1);
    }
    Some(i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider(status: u16, message: &str, external: bool, candidates: usize) -> Reply {
        reply(&RouteError::Provider {
            model: "m".into(),
            provider: crate::provider::ProviderId::new("near-1"),
            error: ProviderError::status(status, message),
            external,
            candidates,
            fast_return: (400..500).contains(&status) && status != 404,
        })
    }

    #[test]
    fn r31_redaction() {
        assert_eq!(
            redact("bad temp at http://10.0.0.1:8000/x"),
            "bad temp at [URL_REDACTED]"
        );
        assert_eq!(
            redact("(see https://a.b/c) and 10.1.2.3:8080, 192.168.0.1."),
            "(see [URL_REDACTED]) and [IP_REDACTED], [IP_REDACTED]."
        );
        assert_eq!(
            redact("error sending request for url x"),
            "provider connection failed x"
        );
        assert_eq!(
            redact("version 1.2.3 and 1.2.3.4.5"),
            "version 1.2.3 and 1.2.3.4.5"
        );
    }

    #[test]
    fn r29_status_table() {
        let r = provider(400, "bad temp at http://10.0.0.1:8000/x", false, 1);
        assert_eq!((r.status, r.kind), (400, "invalid_request_error"));
        assert_eq!(
            r.message,
            "Provider failed for model 'm': bad temp at [URL_REDACTED]"
        );
        let r = provider(404, "The model `m` does not exist.", false, 2);
        assert_eq!((r.status, r.param), (400, Some("model")));
        assert!(r.message.starts_with(
            "All 2 provider(s) failed for model 'm'. Last error: Provider failed for model 'm': "
        ));
        assert_eq!(
            provider(404, "x", true, 1),
            Reply::generic(502, "bad_gateway")
        );
        assert_eq!(provider(408, "x", false, 1).status, 504);
        let r = provider(429, "x", true, 1);
        assert_eq!((r.status, r.kind), (429, "rate_limit_exceeded"));
        assert_eq!(
            provider(401, "x", false, 1),
            Reply::generic(500, "provider_error")
        );
        let r = provider(503, "queue full", false, 1);
        assert_eq!((r.status, r.kind), (429, "service_overloaded"));
        assert_eq!(provider(504, "x", false, 1).kind, "gateway_timeout");
        assert_eq!(
            provider(504, "x", true, 1),
            Reply::generic(502, "bad_gateway")
        );
        assert_eq!(
            provider(500, "secret", false, 1),
            Reply::generic(502, "bad_gateway")
        );
        assert_eq!(
            provider(409, "x", true, 1),
            Reply::generic(502, "bad_gateway")
        );
        let r = provider(409, "conflict", false, 1);
        assert_eq!((r.status, r.kind), (409, "provider_error"));
    }

    #[test]
    fn r30_non_http_table() {
        let r = |error| {
            reply(&RouteError::Provider {
                model: "m".into(),
                provider: crate::provider::ProviderId::new("near-1"),
                error,
                external: false,
                candidates: 1,
                fast_return: false,
            })
        };
        assert_eq!(r(ProviderError::Timeout).status, 504);
        assert_eq!(
            r(ProviderError::Connection("reset".into())),
            Reply::generic(502, "bad_gateway")
        );
        assert_eq!(
            r(ProviderError::Parse("eof".into())),
            Reply::generic(502, "bad_gateway")
        );
        let media = r(ProviderError::status(
            500,
            "error loading image data: 403 Client Error: Forbidden for url http://x",
        ));
        assert_eq!((media.status, media.message.as_str()), (400, CLIENT_MEDIA));
        let pubkey = reply(&RouteError::NoProviderForPubKey { model: "m".into() });
        assert_eq!((pubkey.status, pubkey.kind), (421, "provider_error"));
    }

    #[test]
    fn r34_stream_frame_types_and_text() {
        let frame = |e: ProviderError, p| String::from_utf8(stream_frame(&e, p).to_vec()).unwrap();
        let f = frame(ProviderError::status(429, "slow down"), Profile::Tiersim);
        assert!(f.contains(r#""type":"rate_limit_exceeded""#), "{f}");
        let f = frame(ProviderError::status(400, "x"), Profile::Tiersim);
        assert!(f.contains("invalid_request_error"), "{f}");
        let f = frame(
            ProviderError::status(503, "queue full at http://10.0.0.1/"),
            Profile::Tiersim,
        );
        assert_eq!(
            f,
            "data: {\"error\":{\"message\":\"HTTP error 503: queue full at [URL_REDACTED]\",\"type\":\"server_error\"}}\n\n"
        );
        let f = frame(
            ProviderError::status(503, "queue full at http://10.0.0.1/"),
            Profile::Upstream,
        );
        assert!(f.contains("http://10.0.0.1/"), "{f}");
    }
}

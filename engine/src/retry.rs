//! Retry and fallback (R19–R22): classification, rounds with backoff on tokio
//! time, health updates and the choice of the error the client sees.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use crate::health::Health;
use crate::provider::{Provider, ProviderError, ProviderId};

/// At most this many retries, i.e. `MAX_RETRIES + 1` rounds (R20).
pub const MAX_RETRIES: u32 = 3;

/// Which backoff schedule a retryable failure asks for (R20).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Backoff {
    /// Connection, body-decode and 5xx failures: 500 ms, 1 s, 2 s.
    Standard,
    /// HTTP 429: 1 s, 2 s, 4 s.
    RateLimited,
}

impl Backoff {
    /// The sleep before retry number `retry` (1-based).
    pub fn delay(self, retry: u32) -> Duration {
        let base = match self {
            Backoff::Standard => Duration::from_millis(500),
            Backoff::RateLimited => Duration::from_secs(1),
        };
        base * (1 << (retry.saturating_sub(1)))
    }
}

/// R19/R35: what a failed attempt means for the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Class {
    /// Transient: counts against the provider's health (R21), the walk goes on
    /// to the next provider and the round may be re-run after a backoff.
    Retryable(Backoff),
    /// The walk goes on to the next provider, but this failure neither makes
    /// the round retryable nor counts against health.
    FallThrough,
    /// A client error (R35.1) or a client-media error (R36): return it at
    /// once, no further provider, no retry round, no count.
    FastReturn,
    /// Encryption or attestation failed: fail closed at once.
    Fatal,
}

/// R35, the one classification of provider failures, in its order. It reads
/// the raw error (before any redaction), so redaction cannot hide a status
/// embedded in the text (R36).
pub fn classify(e: &ProviderError) -> Class {
    use ProviderError as E;
    match e {
        E::Status { status, message } => match *status {
            429 => Class::Retryable(Backoff::RateLimited),
            408 => Class::FallThrough,
            400..=499 if is_model_not_found(*status, message) => Class::FallThrough,
            400..=499 => Class::FastReturn,
            500.. if is_client_media(*status, message) => Class::FastReturn,
            500.. => Class::Retryable(Backoff::Standard),
            _ => Class::FallThrough,
        },
        E::Timeout => Class::FallThrough,
        E::Integrity(_) | E::Attestation(_) => Class::Fatal,
        // R37: a cut can only surface before the stream is handed over
        // (afterwards it is a stream item), so it is a body broken in
        // transit.
        E::Truncated => Class::Retryable(Backoff::Standard),
        E::Connection(_) | E::BodyDecode(_) | E::Parse(_) | E::Refused(_) | E::Masked(_) => {
            scan(&e.to_string())
        }
    }
}

/// R35.6: any other error carrying text is judged by its words.
pub(crate) fn scan(text: &str) -> Class {
    let t = text.to_ascii_lowercase();
    if (t.contains("operation timed out") || t.contains("timed out after"))
        && !t.contains("connect")
    {
        return Class::FallThrough;
    }
    const TRANSIENT: [&str; 6] = [
        "connection",
        "connect",
        "reset",
        "broken pipe",
        "decoding response body",
        "body error",
    ];
    if TRANSIENT.iter().any(|w| t.contains(w)) {
        Class::Retryable(Backoff::Standard)
    } else {
        Class::FallThrough
    }
}

/// SPEC-parity R45.1: a 400 whose text says the request exceeds the
/// provider's context window.
fn is_context_overflow(e: &ProviderError) -> bool {
    matches!(e, ProviderError::Status { status, message }
        if crate::context::is_context_length_exceeded(*status, message))
}

/// R38: a 400 or 404 whose text says the model is not served there (an
/// `error.code` alone never counts: extraction drops it, R31).
pub fn is_model_not_found(status: u16, message: &str) -> bool {
    if status != 400 && status != 404 {
        return false;
    }
    let m = message.to_ascii_lowercase();
    m.contains("model_not_found")
        || (m.contains("model") && (m.contains("does not exist") || m.contains("not found")))
}

/// R36: a 5xx caused by the client's media: a decode failure, or a fetch
/// failure whose embedded fetch status is 4xx. A 5xx or missing embedded
/// status leaves it an ordinary (retryable) 5xx.
pub fn is_client_media(status: u16, message: &str) -> bool {
    if status < 500 {
        return false;
    }
    let m = message.to_ascii_lowercase();
    if m.contains("cannot identify image file") || m.contains("failed to open input buffer") {
        return true;
    }
    const FETCH_MARKERS: [&str; 11] = [
        "failed to fetch image",
        "failed to fetch video",
        "error fetching image",
        "error fetching video",
        "failed to load image",
        "failed to load video",
        "clientresponseerror",
        "client error:",
        "http error 500:",
        "loading image data",
        "loading video data",
    ];
    FETCH_MARKERS.iter().any(|k| m.contains(k))
        && embedded_fetch_status(&m).is_some_and(|s| (400..500).contains(&s))
}

/// The fetch status inside a lower-cased client-media text: the first
/// 400–599 number captured by one of R36's four phrasings.
fn embedded_fetch_status(lower: &str) -> Option<u16> {
    static FORMS: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let forms = FORMS.get_or_init(|| {
        regex::Regex::new(
            r"(?-u)http error 500:\s*(\d{3})\b|status=(\d{3})\b|\b(\d{3}) client error:|\b(\d{3}), message=",
        )
        .expect("a valid pattern")
    });
    forms
        .captures_iter(lower)
        .filter_map(|c| (1..=4).find_map(|i| c.get(i)))
        .filter_map(|m| m.as_str().parse::<u16>().ok())
        .find(|s| (400..600).contains(s))
}

/// The status an attempt log shows for a failure: its HTTP status, or the
/// one its R30 row gives.
pub fn http_status(e: &ProviderError) -> u16 {
    match e {
        ProviderError::Status { status, .. } => *status,
        ProviderError::Timeout => 504,
        _ => 502,
    }
}

/// R22 (the `tiersim` profile): how informative an error is to the client,
/// higher is better. A refusal ranks lowest so it never replaces a real
/// failure of the primary. Only errors that let the walk go on are ranked:
/// a fast-return or fatal error ends the request at once and is returned as
/// it is.
fn informativeness(e: &ProviderError) -> u8 {
    match e {
        ProviderError::Status {
            status: 429 | 500..=599,
            ..
        } => 5,
        ProviderError::Connection(_) | ProviderError::BodyDecode(_) | ProviderError::Truncated => 4,
        ProviderError::Timeout => 3,
        ProviderError::Status { .. } | ProviderError::Parse(_) | ProviderError::Masked(_) => 2,
        ProviderError::Refused(_) | ProviderError::Integrity(_) | ProviderError::Attestation(_) => {
            1
        }
    }
}

/// What happened on one attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Outcome {
    Ok,
    Error {
        /// The HTTP status this failure maps to ([`http_status`]).
        status: u16,
        /// The error text, redacted (R31).
        message: String,
    },
}

/// What the router did after one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Decision {
    Served,
    /// Retryable: counted, next provider (or a new round).
    Retryable,
    /// Next provider, round not made retryable.
    FallThrough,
    FastReturn,
    FailClosed,
}

/// One provider attempt of one request (R20), for the attempt log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Attempt {
    pub provider: ProviderId,
    /// 1-based round.
    pub round: u32,
    /// Tokio time since the router was created.
    pub at: Duration,
    pub outcome: Outcome,
    pub decision: Decision,
    /// Set on a round's last attempt when the round is re-run after this sleep.
    pub retry_after: Option<Duration>,
}

/// How a round's failures decide what happens next: [`Rounds::SPEC`]
/// (R20/R22, the `tiersim` profile) or [`Rounds::LAST_ERROR`], where each
/// failure replaces the recorded error and alone decides the retry and its
/// backoff (production's R33, the `upstream` profile). Every other value
/// reproduces bugs planted for sweep tests (`registry/planted.rs`; the
/// seed PR's masking bug is R33's rule).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rounds {
    /// The seed PR's masking bug: each failure overwrote the round's last
    /// error and retry decision.
    pub last_error_decides: bool,
    /// A success leaves the failure counter as it was (R21 broken).
    pub keep_failures_on_success: bool,
    /// The backoff schedule one step ahead (R20 broken).
    pub backoff_step_ahead: bool,
    /// A later error of equal informativeness wins (R22 broken).
    pub tie_goes_last: bool,
    /// An undeclared window counts as larger than any declared one
    /// (SPEC-parity R45.3 broken).
    pub undeclared_window_is_larger: bool,
    /// A model-not-found 4xx is returned to the client like any other
    /// (SPEC-parity R38 broken).
    pub not_found_fast_returns: bool,
    /// A served JSON attempt gives its provider a TTFT sample (SPEC-parity
    /// R46 broken: streamed chat only).
    pub sample_on_json: bool,
}

impl Rounds {
    /// R19/R20/R21/R22 as specified.
    pub const SPEC: Rounds = Rounds {
        last_error_decides: false,
        keep_failures_on_success: false,
        backoff_step_ahead: false,
        tie_goes_last: false,
        undeclared_window_is_larger: false,
        not_found_fast_returns: false,
        sample_on_json: false,
    };
    /// R33: the last recorded error alone decides.
    pub const LAST_ERROR: Rounds = Rounds {
        last_error_decides: true,
        ..Rounds::SPEC
    };
}

/// A request's failure after the walk: the provider and its error, and
/// whether it was a fast-return (R31 does not prefix those).
pub(crate) struct Failure {
    pub provider: ProviderId,
    pub error: ProviderError,
    pub fast_return: bool,
}

/// R20/R21/R22: walks `candidates` in order, re-running the round after a
/// backoff while it saw a retryable failure, at most [`MAX_RETRIES`] times.
/// Returns the first success, or the most informative error of the last round.
///
/// R21: a success resets the provider's failure count. For a stream the
/// success is only known at its authenticated end, so `opened_is_success`
/// is false and the caller records it then (see `router::canonical_stream`).
pub(crate) async fn run<T, F, Fut>(
    candidates: &[(Arc<dyn Provider>, Arc<Health>)],
    epoch: Instant,
    attempts: &mut Vec<Attempt>,
    opened_is_success: bool,
    rounds: Rounds,
    mut call: F,
) -> Result<(usize, T), Failure>
where
    F: FnMut(Arc<dyn Provider>) -> Fut,
    Fut: Future<Output = Result<T, ProviderError>>,
{
    // SPEC-parity R45: the largest window a candidate declares.
    let largest_window = if rounds.undeclared_window_is_larger
        && candidates.iter().any(|(p, _)| p.context_window().is_none())
    {
        Some(u32::MAX)
    } else {
        candidates
            .iter()
            .filter_map(|(p, _)| p.context_window())
            .max()
    };
    let mut round = 1;
    loop {
        let mut retry: Option<Backoff> = None;
        let mut best: Option<Failure> = None;
        for (i, (provider, health)) in candidates.iter().enumerate() {
            let at = epoch.elapsed();
            let id = provider.id().clone();
            let error = match call(provider.clone()).await {
                Ok(v) => {
                    tracing::debug!(provider = %id, round, "attempt served");
                    if opened_is_success && !rounds.keep_failures_on_success {
                        health.record_success();
                    }
                    if opened_is_success && rounds.sample_on_json {
                        health.record_ttft(epoch.elapsed().saturating_sub(at));
                    }
                    attempts.push(Attempt {
                        provider: id,
                        round,
                        at,
                        outcome: Outcome::Ok,
                        decision: Decision::Served,
                        retry_after: None,
                    });
                    return Ok((i, v));
                }
                Err(e) => e,
            };
            // R45: a context-length 400 from a provider with a declared
            // window, while a candidate declares a strictly larger one,
            // falls through: not retryable, not counted.
            let context_fall_through = is_context_overflow(&error)
                && provider
                    .context_window()
                    .zip(largest_window)
                    .is_some_and(|(w, largest)| largest > w);
            let class = if context_fall_through {
                Class::FallThrough
            } else if rounds.not_found_fast_returns
                && matches!(&error, ProviderError::Status { status, message }
                    if is_model_not_found(*status, message))
            {
                Class::FastReturn
            } else {
                classify(&error)
            };
            let decision = match class {
                // R19/R20: a fall-through failure (408, model-not-found 404,
                // timeout, refusal) neither makes nor unmakes the round
                // retryable, so a provider tried after a retryable primary
                // can never suppress its backoff (the seed PR's masking bug).
                Class::Retryable(kind) => {
                    health.record_failure();
                    retry = Some(kind);
                    Decision::Retryable
                }
                Class::FallThrough => Decision::FallThrough,
                Class::FastReturn => Decision::FastReturn,
                Class::Fatal => Decision::FailClosed,
            };
            tracing::debug!(provider = %id, round, error = %error, ?decision, "attempt failed");
            attempts.push(Attempt {
                provider: id.clone(),
                round,
                at,
                outcome: Outcome::Error {
                    status: http_status(&error),
                    message: crate::client_error::redact(&error.to_string()),
                },
                decision,
                retry_after: None,
            });
            let failure = Failure {
                provider: id,
                error,
                fast_return: class == Class::FastReturn,
            };
            if matches!(class, Class::FastReturn | Class::Fatal) {
                return Err(failure);
            }
            if rounds.last_error_decides {
                // R45: it never replaces a recorded retryable error (R33).
                if context_fall_through && retry.is_some() {
                    continue;
                }
                retry = match class {
                    Class::Retryable(kind) => Some(kind),
                    _ => None,
                };
                best = Some(failure);
                continue;
            }
            // Strictly better only: ties keep the earlier (primary) provider.
            if best.as_ref().is_none_or(|b| {
                let (new, old) = (informativeness(&failure.error), informativeness(&b.error));
                new > old || (rounds.tie_goes_last && new == old)
            }) {
                best = Some(failure);
            }
        }
        let best = best.expect("a round without success has at least one failure");
        match retry {
            Some(kind) if round <= MAX_RETRIES => {
                let delay = kind.delay(round + u32::from(rounds.backoff_step_ahead));
                if let Some(last) = attempts.last_mut() {
                    last.retry_after = Some(delay);
                }
                tracing::debug!(round, ?delay, "round had a retryable failure; backing off");
                tokio::time::sleep(delay).await;
                round += 1;
            }
            _ => return Err(best),
        }
    }
}

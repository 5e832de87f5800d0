//! Retry and fallback (R19–R22): classification, rounds with backoff on tokio
//! time, health updates and the choice of the error the client sees.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use crate::provider::{Provider, ProviderError, ProviderId, StatusDetail};
use crate::registry::Health;

/// At most this many retries, i.e. `MAX_RETRIES + 1` rounds (R20).
pub const MAX_RETRIES: u32 = 3;
/// Consecutive retryable failures after which a provider is demoted (R21, R17).
pub const DEMOTE_AFTER: u32 = 10;

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

/// R19: what a failed attempt means for the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Class {
    /// Transient: counts against the provider's health (R21), the walk goes on
    /// to the next provider and the round may be re-run after a backoff.
    Retryable(Backoff),
    /// The walk goes on to the next provider, but this failure neither makes
    /// the round retryable nor counts against health.
    FallThrough,
    /// A client error: return it at once, no further provider, no count.
    FastReturn,
    /// Encryption or attestation failed: fail closed at once.
    Fatal,
}

/// R19, the one classification of provider failures.
pub fn classify(e: &ProviderError) -> Class {
    use ProviderError as E;
    match e {
        E::Status { status: 429, .. } => Class::Retryable(Backoff::RateLimited),
        // The upstream could not fetch the client's media: another round
        // would fail the same way.
        E::Status {
            status: 500..=599,
            detail: StatusDetail::ClientMediaFetch,
            ..
        } => Class::FallThrough,
        E::Status {
            status: 500..=599, ..
        } => Class::Retryable(Backoff::Standard),
        E::Status { status: 408, .. }
        | E::Status {
            status: 404,
            detail: StatusDetail::ModelNotFound,
            ..
        } => Class::FallThrough,
        E::Status {
            status: 400..=499, ..
        } => Class::FastReturn,
        E::Status { .. } => Class::FallThrough,
        // A truncation can only surface before the stream is handed over
        // (afterwards it is a stream item), so it is an unreadable body.
        E::Connection(_) | E::BodyDecode(_) | E::Truncated => Class::Retryable(Backoff::Standard),
        E::Timeout | E::Refused(_) => Class::FallThrough,
        E::Integrity(_) => Class::Fatal,
    }
}

/// The HTTP status a client sees for a provider failure.
pub fn http_status(e: &ProviderError) -> u16 {
    match e {
        ProviderError::Status { status, .. } => *status,
        ProviderError::Connection(_)
        | ProviderError::BodyDecode(_)
        | ProviderError::Truncated
        | ProviderError::Integrity(_) => 502,
        ProviderError::Timeout => 504,
        ProviderError::Refused(_) => 400,
    }
}

/// R22: how informative an error is to the client, higher is better. A
/// refusal ranks lowest so it never replaces a real failure of the primary.
/// Only errors that let the walk go on are ranked: a fast-return or fatal
/// error ends the request at once and is returned as it is.
fn informativeness(e: &ProviderError) -> u8 {
    match e {
        ProviderError::Status {
            detail: StatusDetail::ClientMediaFetch,
            ..
        } => 6,
        ProviderError::Status {
            status: 429 | 500..=599,
            ..
        } => 5,
        ProviderError::Connection(_) | ProviderError::BodyDecode(_) | ProviderError::Truncated => 4,
        ProviderError::Timeout => 3,
        ProviderError::Status { .. } => 2,
        ProviderError::Refused(_) | ProviderError::Integrity(_) => 1,
    }
}

/// R22: redacts upstream URLs so internal endpoints never reach a client.
pub fn sanitize(msg: &str) -> String {
    const REDACTED: &str = "[redacted-url]";
    let mut out = String::with_capacity(msg.len());
    let mut rest = msg;
    while let Some(at) = ["http://", "https://"]
        .iter()
        .filter_map(|scheme| rest.find(scheme))
        .min()
    {
        out.push_str(&rest[..at]);
        out.push_str(REDACTED);
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>' | '`'))
            .unwrap_or(tail.len());
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// What happened on one attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Outcome {
    Ok,
    Error {
        /// The HTTP status this failure maps to ([`http_status`]).
        status: u16,
        /// The sanitised error text.
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

/// How a round's failures decide what happens next. [`Rounds::SPEC`] is the
/// only value production uses; every other value reproduces bugs planted for
/// sweep tests (`registry/planted.rs`).
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
}

impl Rounds {
    /// R19/R20/R21/R22 as specified.
    pub const SPEC: Rounds = Rounds {
        last_error_decides: false,
        keep_failures_on_success: false,
        backoff_step_ahead: false,
        tie_goes_last: false,
    };
}

/// A request's failure after the walk: the provider and its error.
pub(crate) struct Failure {
    pub provider: ProviderId,
    pub error: ProviderError,
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
            let class = classify(&error);
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
                    message: sanitize(&error.to_string()),
                },
                decision,
                retry_after: None,
            });
            let failure = Failure {
                provider: id,
                error,
            };
            if matches!(class, Class::FastReturn | Class::Fatal) {
                return Err(failure);
            }
            if rounds.last_error_decides {
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

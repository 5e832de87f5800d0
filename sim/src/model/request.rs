//! The model of one client request: selection (R15–R18), rounds, backoff and
//! health (R19–R21 as SPEC-parity R35–R38 refine them), the status the
//! client sees (R22, SPEC-parity R28–R30) and how a stream ends (R23/R24),
//! read against what each simulated host served.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tiersim_engine::retry::Decision;
use tiersim_engine::Tier;

use super::chutes::Choice;
use super::latency;
use super::registry::{Kind, Prov, Registry, DEMOTED_AT};
use super::Facts;
use crate::fault::{Fault, HostEvent, RequestKind};
use crate::record::RequestRecord;
use crate::scenario::format::RequestSpec;

/// The world's upstream deadline (`world::TIMEOUTS`): a host that holds its
/// answer this long is a timeout.
pub const DEADLINE_MS: u64 = 30_000;
/// SPEC-parity R43: a tokenize answer that takes this long is no count.
const TOKENIZE_DEADLINE_MS: f64 = 2_000.0;

/// An outcome the world's timing bounds cannot decide: the model stops
/// judging the run rather than risk a false violation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Undecidable;

/// Whether a call whose host held its answer `held_ms` misses a deadline
/// of `deadline_ms`: the call also crosses the network (at least a tick,
/// at most [`latency::hops`] crossings of the slowest link and a tick
/// each), so near the deadline the answer is `Undecidable`.
fn past_deadline(facts: &Facts, held_ms: u64, deadline_ms: f64) -> Result<bool, Undecidable> {
    let (lo, hi) = time_bounds(facts, held_ms as f64, false);
    if lo >= deadline_ms {
        Ok(true)
    } else if hi < deadline_ms {
        Ok(false)
    } else {
        Err(Undecidable)
    }
}

/// The bounds (ms) of a call's time when faults on its way held it
/// `delay_ms` ([`latency::sample_bounds`] in this world): a script that
/// holds links makes the upper bound infinite. One reading of the world's
/// timing for R43's deadline, the upstream deadline and R46's samples.
fn time_bounds(facts: &Facts, delay_ms: f64, chutes: bool) -> (f64, f64) {
    let holds = holds_links(facts);
    // turmoil's default step unless the scenario sets one.
    let tick = facts
        .scenario
        .tick
        .as_ref()
        .map_or(Duration::from_millis(1), |t| t.get_ref().0);
    let hi = if holds { f64::INFINITY } else { delay_ms };
    latency::sample_bounds(delay_ms, hi, tick, chutes)
}

/// Whether the script holds links: a held call may arrive at any later
/// time, even after the request that sent it ended.
fn holds_links(facts: &Facts) -> bool {
    facts
        .scenario
        .steps
        .iter()
        .any(|s| s.get_ref().hold.is_some())
}

/// R43: whether a tokenize answer held `held_ms` misses its 2 s deadline.
fn tokenize_late(facts: &Facts, held_ms: u64) -> Result<bool, Undecidable> {
    past_deadline(facts, held_ms, TOKENIZE_DEADLINE_MS)
}

/// Whether `fault` holds a chat or Chutes call's answer (or its first
/// token) near the world's upstream deadline ([`DEADLINE_MS`]): under it,
/// yet maybe not once the network's crossings are added. The upshot
/// functions read a hold under the deadline as in time and one at or past
/// it as a timeout, so the whole band under it is undecided.
fn near_deadline(facts: &Facts, fault: Option<&Fault>) -> bool {
    match fault {
        Some(Fault::LatencyMs { ms } | Fault::SlowFirstTokenMs { ms }) => {
            *ms < DEADLINE_MS && past_deadline(facts, *ms, DEADLINE_MS as f64) != Ok(false)
        }
        _ => false,
    }
}

/// At most this many rounds (R20: 3 retries).
pub(super) const ROUNDS: u32 = 4;

/// R19: what one failed attempt means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Counted, next provider, round re-run after this backoff schedule.
    Retry { rate_limited: bool },
    /// Next provider; the round is neither made nor unmade retryable.
    Next,
    /// Returned at once.
    Stop,
    /// Encryption/attestation failed: fail closed at once.
    Closed,
}

/// What kind of failure an attempt was, for the client's reply
/// (SPEC-parity R29/R30).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cause {
    /// The upstream answered with this HTTP status.
    Http(u16),
    /// R36: a 5xx caused by the client's media.
    Media,
    /// The per-call deadline passed.
    Timeout,
    /// Anything else that is not HTTP: a reset, a broken or unparseable
    /// body, a refusal, an authentication failure.
    Other,
}

/// One failed attempt as the model sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Failure {
    cause: Cause,
    verdict: Verdict,
    /// R22: how much this error tells the client (higher is better).
    weight: u8,
    /// SPEC-parity R45.1: a 400 saying the request exceeds the context
    /// window.
    context_overflow: bool,
}

impl Failure {
    /// An HTTP error with the text of its body (R35's order: R38's
    /// model-not-found and R36's client media are read from the text).
    fn http(status: u16, text: &str) -> Failure {
        let (cause, verdict, weight) = match status {
            429 => (Cause::Http(429), Verdict::Retry { rate_limited: true }, 5),
            408 => (Cause::Http(408), Verdict::Next, 2),
            400 | 404 if says_model_missing(text) => (Cause::Http(status), Verdict::Next, 2),
            400..=499 => (Cause::Http(status), Verdict::Stop, 7),
            500.. if client_media(text) => (Cause::Media, Verdict::Stop, 7),
            500.. => (
                Cause::Http(status),
                Verdict::Retry {
                    rate_limited: false,
                },
                5,
            ),
            _ => (Cause::Http(status), Verdict::Next, 2),
        };
        Failure {
            cause,
            verdict,
            weight,
            context_overflow: status == 400 && says_context_exceeded(text),
        }
    }
    /// What a simulated host's "model not served here" answer says.
    fn model_missing() -> Failure {
        Failure::http(404, "The model does not exist")
    }
    /// Connection reset, a body broken in transit: retryable (R37).
    fn transport() -> Failure {
        Failure {
            cause: Cause::Other,
            verdict: Verdict::Retry {
                rate_limited: false,
            },
            weight: 4,
            context_overflow: false,
        }
    }
    /// R37: a complete 2xx body that does not parse: not retryable.
    fn unparseable() -> Failure {
        Failure {
            cause: Cause::Other,
            verdict: Verdict::Next,
            weight: 2,
            context_overflow: false,
        }
    }
    fn timeout() -> Failure {
        Failure {
            cause: Cause::Timeout,
            verdict: Verdict::Next,
            weight: 3,
            context_overflow: false,
        }
    }
    /// R24: a capability refusal, the least informative error of all.
    fn refusal() -> Failure {
        Failure {
            cause: Cause::Other,
            verdict: Verdict::Next,
            weight: 1,
            context_overflow: false,
        }
    }
    /// SPEC-parity R39: Chutes unreachable, timed out, drained or handed a
    /// stale target: an external 503 (retryable; the client gets 429).
    fn chutes_unavailable() -> Failure {
        Failure::http(503, "")
    }
    /// R39: a Chutes HTTP failure. `invoke`: the invocation (where a 400
    /// about the nonce or instance is a stale target), else a discovery or
    /// evidence stage. 408, 429 and 5xx keep their status without their
    /// text; any other status is masked: not HTTP, judged by its words.
    fn chutes_status(status: u16, text: &str, invoke: bool) -> Failure {
        match status {
            400 if invoke && stale_target(text) => Failure::chutes_unavailable(),
            408 | 429 | 500.. => Failure::http(status, ""),
            _ => Failure {
                cause: Cause::Other,
                verdict: words(text),
                weight: 2,
                context_overflow: false,
            },
        }
    }
    /// R23/§7b: authentication failed.
    fn closed() -> Failure {
        Failure {
            cause: Cause::Other,
            verdict: Verdict::Closed,
            weight: 7,
            context_overflow: false,
        }
    }

    /// SPEC-parity R29 (HTTP) and R30 (the rest): the status the client
    /// gets when this failure ends the request. `external`: it came from a
    /// provider other than NEAR's fleet.
    fn client_status(self, external: bool) -> u16 {
        match self.cause {
            Cause::Media => 400,
            Cause::Timeout => 504,
            Cause::Other => 502,
            Cause::Http(s) => match s {
                400 | 413 | 422 => 400,
                404 if !external => 400,
                408 => 504,
                429 | 503 => 429,
                401 | 403 => 500,
                504 if !external => 504,
                _ if s >= 500 || external => 502,
                _ => s,
            },
        }
    }
}

/// SPEC-parity R45.1: the engine's wording for a request longer than its
/// window.
fn says_context_exceeded(text: &str) -> bool {
    let t = text.to_lowercase();
    t.contains("maximum context length")
        || (t.contains("context length") && ["exceed", "longer than"].iter().any(|w| t.contains(w)))
        || (t.contains("input length") && t.contains("exceed"))
}

/// R35.6: what the words of an error that is not HTTP say.
fn words(text: &str) -> Verdict {
    let t = text.to_lowercase();
    if (t.contains("operation timed out") || t.contains("timed out after"))
        && !t.contains("connect")
    {
        return Verdict::Next;
    }
    let transient = [
        "connection",
        "connect",
        "reset",
        "broken pipe",
        "decoding response body",
        "body error",
    ];
    if transient.iter().any(|w| t.contains(w)) {
        Verdict::Retry {
            rate_limited: false,
        }
    } else {
        Verdict::Next
    }
}

/// R39: an invocation 400 saying its nonce or instance is no longer good.
fn stale_target(text: &str) -> bool {
    let t = text.to_lowercase();
    (t.contains("nonce") || t.contains("instance"))
        && [
            "expired",
            "stale",
            "already used",
            "consumed",
            "not found",
            "invalid",
        ]
        .iter()
        .any(|w| t.contains(w))
}

/// R38: the text says the model is not served there.
fn says_model_missing(text: &str) -> bool {
    let t = text.to_lowercase();
    t.contains("model_not_found")
        || (t.contains("model")
            && ["does not exist", "not found"]
                .iter()
                .any(|w| t.contains(w)))
}

/// R36: the upstream could not decode the client's media, or fetched it and
/// got a 4xx (the status written in one of four phrasings).
fn client_media(text: &str) -> bool {
    let t = text.to_lowercase();
    if t.contains("cannot identify image file") || t.contains("failed to open input buffer") {
        return true;
    }
    let marked = [
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
    ]
    .iter()
    .any(|m| t.contains(m));
    marked && fetch_status(&t).is_some_and(|s| (400..500).contains(&s))
}

/// The first fetch status (400–599) a media error's text carries, in text
/// order: after `http error 500:`, after `status=`, before ` client error:`,
/// before `, message=`.
fn fetch_status(t: &str) -> Option<u16> {
    let three = |s: &str| -> Option<u16> {
        (s.len() >= 3 && s.is_char_boundary(3))
            .then(|| &s[..3])
            .filter(|d| d.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|d| d.parse().ok())
    };
    let mut found: Vec<(usize, u16)> = Vec::new();
    for (at, _) in t.match_indices("http error 500:") {
        let rest = t[at + 15..].trim_start();
        found.extend(three(rest).map(|s| (at, s)));
    }
    for (at, _) in t.match_indices("status=") {
        found.extend(three(&t[at + 7..]).map(|s| (at, s)));
    }
    for marker in [" client error:", ", message="] {
        for (at, _) in t.match_indices(marker) {
            if at >= 3 && t.is_char_boundary(at - 3) {
                let starts_word = at == 3 || !t.as_bytes()[at - 4].is_ascii_alphanumeric();
                if starts_word {
                    found.extend(three(&t[at - 3..at]).map(|s| (at - 3, s)));
                }
            }
        }
    }
    found.sort();
    found
        .into_iter()
        .map(|(_, s)| s)
        .find(|s| (400..600).contains(s))
}

/// How a stream the client was handed ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StreamEnd {
    /// The authenticated end: `[DONE]`, and R21 success.
    Done,
    /// The authenticated end of a v1 stream that lost, repeated or
    /// reordered frames unnoticed (R25): `[DONE]` and R21 success, but the
    /// frame lost may be the one whose content gives R46's TTFT sample.
    DoneAltered,
    /// Cut, reset or truncated: no `[DONE]`, counted as a retryable failure.
    Broken,
    /// Failed authentication mid-stream: no `[DONE]`, not counted.
    Rejected,
    /// Silent past the stream's idle limit before any content: no
    /// `[DONE]`, not counted (R19: an inference timeout is not
    /// retryable), and no TTFT sample.
    TimedOut,
}

/// What an attempt did, as the model reads the host's record.
enum Upshot {
    Served(StreamEnd),
    Failed(Failure),
    /// The host held its answer so close to the upstream deadline that the
    /// network's bounds cannot tell whether it beat it.
    Undecided,
}

/// One predicted attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub provider: String,
    pub round: u32,
    pub decision: Decision,
    pub backoff: Option<Duration>,
}

/// A request's candidates in attempt order, before any attempt.
pub(super) struct Ordered {
    pub cands: Vec<Prov>,
    /// The leading group (R17: equal sort keys), rotated, before R18's
    /// capability filters.
    pub group: Vec<Prov>,
}

/// Which NEAR host SPEC-parity R43 may ask for a request's exact count.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Asks {
    /// Not judged: the request ended before its estimate, or a held link
    /// may bring an earlier request's call into this one's window.
    #[default]
    Unjudged,
    /// No tokenize call (no window near, encrypted, one window, no NEAR).
    Nobody,
    /// At most this host: the first NEAR with the smallest window, else
    /// the first NEAR (a free permit decides whether it is asked at all).
    Only(String),
}

/// What the model predicts for one request.
#[derive(Debug, Clone, Default)]
pub struct Prediction {
    pub attempts: Vec<Step>,
    pub status: u16,
    /// For a served stream: whether the client gets `[DONE]`.
    pub done: Option<bool>,
    /// The world's timing bounds could not decide the request (whether a
    /// provider is latency-demoted, R47, see `latency.rs`; whether a
    /// tokenize answer beat its deadline, R43), so the model predicts
    /// nothing from here on.
    pub undecided: bool,
    /// R43: the host a tokenize call may go to.
    pub tokenize: Asks,
}

impl Prediction {
    /// The timing bounds leave the request open: no attempts predicted.
    fn undecided() -> Prediction {
        Prediction {
            undecided: true,
            ..Prediction::default()
        }
    }

    /// The differences from what the client got and the router logged.
    pub fn diff(&self, got: &RequestRecord) -> Vec<String> {
        let mut out = Vec::new();
        let engine: Vec<Step> = got
            .attempts
            .iter()
            .map(|a| Step {
                provider: a.provider.to_string(),
                round: a.round,
                decision: a.decision,
                backoff: a.retry_after,
            })
            .collect();
        if engine != self.attempts {
            out.push(format!(
                "request {}{}: attempts differ\n    model:  {}\n    engine: {}",
                got.model,
                if got.stream { " (stream)" } else { "" },
                render(&self.attempts),
                render(&engine)
            ));
        }
        if got.status != self.status {
            out.push(format!(
                "request {}: status: model {}, engine {}",
                got.model, self.status, got.status
            ));
        }
        let asked_elsewhere: BTreeSet<&str> = match &self.tokenize {
            Asks::Unjudged => BTreeSet::new(),
            Asks::Nobody => got.tokenized.iter().map(String::as_str).collect(),
            Asks::Only(host) => got
                .tokenized
                .iter()
                .map(String::as_str)
                .filter(|h| h != host)
                .collect(),
        };
        // A concurrent step is never judged where a window exists, so
        // each record's calls are its own request's.
        if self.tokenize != Asks::Unjudged && got.tokenized.len() > 1 {
            out.push(format!(
                "request {}: the router asked for a token count {} times; R43 asks at most once",
                got.model,
                got.tokenized.len()
            ));
        }
        for h in asked_elsewhere {
            out.push(format!(
                "request {}: the router asked {h} for a token count; R43 asks {}",
                got.model,
                match &self.tokenize {
                    Asks::Only(host) => host.as_str(),
                    _ => "none",
                }
            ));
        }
        if let (Some(done), true) = (self.done, got.status == 200) {
            let body = String::from_utf8_lossy(&got.body);
            let has_done = body.lines().any(|l| l == "data: [DONE]");
            if has_done != done {
                out.push(format!(
                    "request {} (stream): the upstream {} but the client {} [DONE]",
                    got.model,
                    if done {
                        "ended it properly"
                    } else {
                        "never ended it properly"
                    },
                    if has_done { "got" } else { "did not get" }
                ));
            }
        }
        out
    }
}

fn render(steps: &[Step]) -> String {
    if steps.is_empty() {
        return "(none)".into();
    }
    steps
        .iter()
        .map(|s| {
            let mut t = format!("{}#{} {:?}", s.provider, s.round, s.decision);
            if let Some(b) = s.backoff {
                t += &format!(" +{}ms", b.as_millis());
            }
            t
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The window's host requests, consumed host by host.
pub(super) struct Seen<'a> {
    events: &'a [HostEvent],
    /// Per host (or per host and kinds, `by_kind`), the first event not
    /// yet consumed.
    next: BTreeMap<String, usize>,
    /// Each kind of a host's requests is read on its own: for requests in
    /// flight together whose events interleave (`concurrent.rs`), where
    /// every event of the host is a normal answer.
    by_kind: bool,
    /// The delays faults scripted on the current attempt's way (ms), for
    /// its TTFT sample (R46).
    delay_ms: f64,
    /// R43: where the request being predicted may ask for its count.
    asks: Asks,
}

impl<'a> Seen<'a> {
    /// Nothing of `window` consumed yet.
    pub(super) fn over(events: &'a [HostEvent]) -> Seen<'a> {
        Seen {
            events,
            next: BTreeMap::new(),
            by_kind: false,
            delay_ms: 0.0,
            asks: Asks::Unjudged,
        }
    }

    /// Nothing of `window` consumed yet, each kind of a host's requests
    /// read on its own cursor.
    pub(super) fn by_kind(events: &'a [HostEvent]) -> Seen<'a> {
        Seen {
            by_kind: true,
            ..Seen::over(events)
        }
    }

    /// The next request `host` served (of the kinds `kinds`), consumed.
    fn take(&mut self, host: &str, kinds: &[RequestKind]) -> Option<(RequestKind, Option<Fault>)> {
        let cursor = if self.by_kind {
            format!("{host}/{kinds:?}")
        } else {
            host.to_string()
        };
        let from = self.next.get(&cursor).copied().unwrap_or(0);
        for (i, e) in self.events.iter().enumerate().skip(from) {
            if let HostEvent::Request {
                host: h,
                kind,
                fault,
            } = e
            {
                if h == host && kinds.contains(kind) {
                    self.next.insert(cursor, i + 1);
                    if let Some(Fault::LatencyMs { ms } | Fault::SlowFirstTokenMs { ms }) = fault {
                        self.delay_ms += *ms as f64;
                    }
                    return Some((*kind, fault.clone()));
                }
            }
        }
        self.next.insert(cursor, self.events.len());
        None
    }

    /// R43: where the request just ordered may ask for its count.
    pub(super) fn asks(&self) -> &Asks {
        &self.asks
    }

    /// Whether the next request `host` served is of `kinds` (on that
    /// kinds' own cursor under `by_kind`), without consuming it.
    fn next_is(&self, host: &str, kinds: &[RequestKind]) -> bool {
        if !self.by_kind {
            return self.peek(host).is_some_and(|k| kinds.contains(&k));
        }
        let from = self
            .next
            .get(&format!("{host}/{kinds:?}"))
            .copied()
            .unwrap_or(0);
        self.events.iter().skip(from).any(|e| {
            matches!(e, HostEvent::Request { host: h, kind, .. } if h == host && kinds.contains(kind))
        })
    }

    /// The next request `host` served, without consuming it.
    fn peek(&self, host: &str) -> Option<RequestKind> {
        let from = self.next.get(host).copied().unwrap_or(0);
        self.events.iter().skip(from).find_map(|e| match e {
            HostEvent::Request { host: h, kind, .. } if h == host => Some(*kind),
            _ => None,
        })
    }
}

/// The `x-model-pub-key` a request carries.
fn pubkey_of(facts: &Facts, spec: &RequestSpec) -> Option<String> {
    spec.pub_key_of
        .as_ref()
        .and_then(|h| facts.near_keys.get(h.get_ref()).cloned())
        .or_else(|| spec.model_pub_key.clone())
}

impl Registry {
    /// R15 and R16: the providers of `model` a request may use at all.
    fn candidates(&self, model: &str, pubkey: Option<&str>) -> Vec<Prov> {
        let list = self.list(model);
        // R15: a verifiable model never selects plaintext.
        let verifiable = list.iter().any(|p| p.tier != Tier::NonAttested);
        list.into_iter()
            .filter(|p| !verifiable || p.tier != Tier::NonAttested)
            // R16: only providers holding the key; Chutes holds none.
            .filter(|p| match pubkey {
                None => true,
                Some(key) => matches!(&p.kind, Kind::Near { key: k, .. } if k == key),
            })
            .collect()
    }

    /// Whether a request can be served at all: an active catalog row and a
    /// provider it may use, none of them a Chutes provider that cannot
    /// attest now: one whose vendor the router does not trust (§7b fails
    /// every request to it closed) or that still holds a listing of
    /// substituted keys (its next request fails closed once, whatever else
    /// has healed). Whichever provider leads, the liveness check is
    /// skipped then.
    pub fn servable(&self, facts: &Facts, spec: &RequestSpec) -> bool {
        let cands = self.candidates(&spec.model, pubkey_of(facts, spec).as_deref());
        let trusted = facts.scenario.config.trust_chutes_vendor;
        matches!(self.catalog.get(&spec.model), Some((true, _)))
            && !cands.is_empty()
            && !cands.iter().any(|p| {
                matches!(p.kind, Kind::Chutes { .. })
                    && (!trusted
                        || self
                            .pools
                            .get(&p.id)
                            .is_some_and(|pool| pool.holds_unprovable_listing()))
            })
    }

    /// What the request's eligible providers can do: `(id, streams,
    /// client_e2ee)`, for the capability-filter oracles.
    pub fn eligible(&self, facts: &Facts, spec: &RequestSpec) -> Vec<(String, bool, bool)> {
        self.candidates(&spec.model, pubkey_of(facts, spec).as_deref())
            .into_iter()
            .map(|p| {
                let (streams, e2ee) = (p.streams(self.chutes_streaming), p.client_e2ee());
                (p.id, streams, e2ee)
            })
            .collect()
    }

    /// Predicts one request and applies its effect on health and the
    /// round-robin counters.
    /// R15–R18, R44, R47, R65 for one request, before any attempt: its
    /// candidates in attempt order (the leading group rotated, the turn
    /// taken), or the prediction that ends it first (a refusal, a decision
    /// the timing bounds leave open). Reads a tokenize answer from `seen`.
    pub(super) fn order(
        &mut self,
        facts: &Facts,
        spec: &RequestSpec,
        seen: &mut Seen,
    ) -> Result<Ordered, Prediction> {
        let fail = |status| Prediction {
            status,
            ..Prediction::default()
        };
        // SPEC-parity R28: unknown or inactive ids are 400 before any
        // provider.
        match self.catalog.get(&spec.model) {
            Some((true, _)) => {}
            _ => return Err(fail(400)),
        }
        // R30: a pubkey nobody holds is 421, a model without providers
        // included; R28: without a pubkey, no provider is 400.
        let pubkey = pubkey_of(facts, spec);
        let none = if pubkey.is_some() { 421 } else { 400 };
        if self.list(&spec.model).is_empty() {
            return Err(fail(none));
        }
        let mut cands = self.candidates(&spec.model, pubkey.as_deref());
        if cands.is_empty() {
            return Err(fail(none));
        }
        // R47 among the request's providers (after R15/R16, before R18).
        let ids: Vec<&str> = cands.iter().map(|p| p.id.as_str()).collect();
        let judged = latency::demoted(&ids, &self.ttft);
        if judged.iter().any(Option::is_none) {
            return Err(Prediction::undecided());
        }
        let slow: BTreeMap<String, bool> = ids
            .iter()
            .zip(&judged)
            .map(|(id, d)| (id.to_string(), d.unwrap_or(false)))
            .collect();
        // SPEC-parity R42/R43: the context requirement, read from the body
        // the client sent and, near a window, the tokenize call its host
        // served.
        let Ok(estimate) = self.estimate(facts, spec, pubkey.is_some(), seen) else {
            return Err(Prediction::undecided());
        };
        // R17/R44/R47: (overflow, demoted, latency-demoted, tier, capacity
        // rank), stable; then the leading group (equal keys) is rotated:
        // streamed chat by its prefix hash (R48, no turn taken), the rest by
        // round-robin.
        let demoted = |p: &Prov| self.failures(&p.id) >= DEMOTED_AT;
        let key = |p: &Prov| {
            let overflow = matches!((estimate, p.window), (Some(e), Some(w)) if e > w);
            let rank = match (overflow, p.window) {
                (true, Some(w)) => (1u64 << 32) - u64::from(w),
                _ => p.capacity_rank(),
            };
            (overflow, demoted(p), slow[&p.id], p.tier, rank)
        };
        cands.sort_by_key(key);
        let lead = cands
            .iter()
            .take_while(|p| key(p) == key(&cands[0]))
            .count();
        if lead > 1 && spec.stream {
            let hash = latency::prefix_hash(&crate::runner::request_body(spec));
            cands[..lead].rotate_left((hash % lead as u64) as usize);
        } else if lead > 1 {
            let turns = self.turns.entry(spec.model.clone()).or_default();
            let turn = if pubkey.is_some() {
                &mut turns.1
            } else {
                &mut turns.0
            };
            // SPEC-parity R65: value mod size, then (value + 1) mod size.
            let k = *turn % lead as u64;
            *turn = (k + 1) % lead as u64;
            cands[..lead].rotate_left(k as usize);
        }
        let group = cands[..lead].to_vec();
        // R18 (R65: after the rotation): capability filters, unless nobody
        // is capable.
        if spec.stream && cands.iter().any(|p| p.streams(self.chutes_streaming)) {
            cands.retain(|p| p.streams(self.chutes_streaming));
        }
        if spec.client_pub_key.is_some() && cands.iter().any(|p| p.client_e2ee()) {
            cands.retain(|p| p.client_e2ee());
        }
        Ok(Ordered { cands, group })
    }

    pub fn request(
        &mut self,
        facts: &Facts,
        spec: &RequestSpec,
        window: &[HostEvent],
    ) -> Prediction {
        self.request_seen(facts, spec, &mut Seen::over(window))
    }

    /// [`Registry::request`], reading host events from `seen` (shared by
    /// requests whose events interleave in one window).
    pub(super) fn request_seen(
        &mut self,
        facts: &Facts,
        spec: &RequestSpec,
        seen: &mut Seen,
    ) -> Prediction {
        seen.asks = Asks::Unjudged;
        let p = self.predict(facts, spec, seen);
        Prediction {
            tokenize: std::mem::take(&mut seen.asks),
            ..p
        }
    }

    /// The attempts and the client's status of one request.
    fn predict(&mut self, facts: &Facts, spec: &RequestSpec, seen: &mut Seen) -> Prediction {
        let cands = match self.order(facts, spec, seen) {
            Ok(ordered) => ordered.cands,
            Err(ends) => return ends,
        };
        // R45: the largest window a candidate declares.
        let largest = cands.iter().filter_map(|p| p.window).max();

        let mut attempts: Vec<Step> = Vec::new();
        for round in 1..=ROUNDS {
            let mut retry: Option<bool> = None;
            let mut best: Option<(Failure, bool)> = None;
            for p in &cands {
                seen.delay_ms = 0.0;
                let upshot = self.attempt(facts, p, spec, seen);
                let failure = match upshot {
                    Upshot::Served(end) => {
                        attempts.push(Step {
                            provider: p.id.clone(),
                            round,
                            decision: Decision::Served,
                            backoff: None,
                        });
                        // R21: success resets; a stream succeeds only at its
                        // authenticated end (R23).
                        match end {
                            StreamEnd::Done | StreamEnd::DoneAltered => {
                                self.health.insert(p.id.clone(), 0);
                            }
                            StreamEnd::Broken => *self.health.entry(p.id.clone()).or_default() += 1,
                            StreamEnd::Rejected | StreamEnd::TimedOut => {}
                        }
                        // R46: a served stream's TTFT sample, taken at close
                        // when content arrived (surely when it ended
                        // properly; a broken or rejected one may have
                        // delivered its first content or not).
                        // The simulated Chutes instance sends usage in its
                        // chunks only for `reply = ["usage"]` (otherwise as
                        // the plaintext billing event after the inner
                        // [DONE], which the router never reads: no sample).
                        let (chutes, samples) = match &p.kind {
                            Kind::Chutes { slug } => (
                                true,
                                facts.scenario.chutes.iter().any(|c| {
                                    c.slug == *slug
                                        && c.reply
                                            .contains(&crate::scenario::format::ReplyWord::Usage)
                                }),
                            ),
                            _ => (false, true),
                        };
                        if spec.stream && samples && end != StreamEnd::TimedOut {
                            let (lo, hi) = time_bounds(facts, seen.delay_ms, chutes);
                            self.ttft.entry(p.id.clone()).or_default().sample(
                                lo,
                                hi,
                                end == StreamEnd::Done,
                            );
                        }
                        return Prediction {
                            attempts,
                            status: 200,
                            done: spec
                                .stream
                                .then_some(matches!(end, StreamEnd::Done | StreamEnd::DoneAltered)),
                            ..Prediction::default()
                        };
                    }
                    Upshot::Failed(f) => f,
                    Upshot::Undecided => return Prediction::undecided(),
                };
                // R45: a context-length 400 from a provider with a window,
                // when a candidate's window is strictly larger: next
                // provider, not counted (and, by its weight, never the
                // error over a retryable one).
                let failure = if failure.context_overflow
                    && p.window.zip(largest).is_some_and(|(w, l)| l > w)
                {
                    Failure {
                        verdict: Verdict::Next,
                        weight: 2,
                        ..failure
                    }
                } else {
                    failure
                };
                let decision = match failure.verdict {
                    Verdict::Retry { rate_limited } => {
                        *self.health.entry(p.id.clone()).or_default() += 1;
                        retry = Some(rate_limited);
                        Decision::Retryable
                    }
                    Verdict::Next => Decision::FallThrough,
                    Verdict::Stop => Decision::FastReturn,
                    Verdict::Closed => Decision::FailClosed,
                };
                attempts.push(Step {
                    provider: p.id.clone(),
                    round,
                    decision,
                    backoff: None,
                });
                let external = !matches!(p.kind, Kind::Near { .. });
                if matches!(failure.verdict, Verdict::Stop | Verdict::Closed) {
                    return Prediction {
                        attempts,
                        status: failure.client_status(external),
                        ..Prediction::default()
                    };
                }
                if best.is_none_or(|(b, _)| failure.weight > b.weight) {
                    best = Some((failure, external));
                }
            }
            let (best, external) = best.expect("a failed round has a failure");
            match retry {
                Some(rate_limited) if round < ROUNDS => {
                    // R20: 500 ms, 1 s, 2 s; after a 429: 1 s, 2 s, 4 s.
                    let base = if rate_limited { 1000 } else { 500 };
                    let delay = Duration::from_millis(base << (round - 1));
                    if let Some(last) = attempts.last_mut() {
                        last.backoff = Some(delay);
                    }
                }
                _ => {
                    return Prediction {
                        attempts,
                        status: best.client_status(external),
                        ..Prediction::default()
                    }
                }
            }
        }
        unreachable!("the last round returns")
    }

    /// SPEC-parity R42/R43: the request's requirement in tokens, `None`
    /// when no provider of the model declares a window.
    fn estimate(
        &self,
        facts: &Facts,
        spec: &RequestSpec,
        pinned_key: bool,
        seen: &mut Seen,
    ) -> Result<Option<u32>, Undecidable> {
        if !holds_links(facts) {
            seen.asks = Asks::Nobody;
        }
        let all = self.list(&spec.model);
        let windows: Vec<u32> = all.iter().filter_map(|p| p.window).collect();
        let Some(&first) = windows.first() else {
            return Ok(None);
        };
        let body = crate::runner::request_body(spec);
        let c = super::context::counts(&body);
        if windows.iter().all(|w| *w == first) {
            return Ok(spec.stream.then(|| super::context::hint(&c)));
        }
        let knobs = super::context::Knobs::of(facts.scenario.config.context_route.as_ref());
        let encrypted = pinned_key || spec.client_pub_key.is_some();
        if encrypted || !knobs.near_a_window(&c, &windows) {
            return Ok(Some(knobs.required(&c, None)));
        }
        // R43: the first NEAR with the smallest window, else the first NEAR.
        let smallest = windows.iter().min().copied();
        let near = || all.iter().filter(|p| p.tier == Tier::Near);
        let counter = near()
            .find(|p| p.window.is_some() && p.window == smallest)
            .or_else(|| near().next());
        let Some(Kind::Near { host, .. }) = counter.map(|p| &p.kind) else {
            return Ok(Some(knobs.required(&c, None)));
        };
        if seen.asks == Asks::Nobody {
            seen.asks = Asks::Only(host.clone());
        }
        // The call it served (none: no permit, or it never arrived); a
        // fault that breaks the answer, or an answer that arrives after the
        // 2 s deadline, leaves no count.
        let exact = match seen.take(host, &[RequestKind::Tokenize]) {
            Some((_, fault)) => {
                let broken = match &fault {
                    Some(Fault::LatencyMs { ms }) => tokenize_late(facts, *ms)?,
                    Some(
                        Fault::HttpStatus { .. }
                        | Fault::ModelNotFound
                        | Fault::ResetBeforeBody
                        | Fault::ResetAfterChunks { .. }
                        | Fault::CutStreamAfter { .. },
                    ) => true,
                    _ => tokenize_late(facts, 0)?,
                };
                (!broken && facts.serves(host, &spec.model))
                    .then(|| super::context::tokenizer_count(&body))
            }
            None => None,
        };
        Ok(Some(knobs.required(&c, exact)))
    }

    /// What one attempt to `p` did, from the record of the host it reached.
    fn attempt(&mut self, facts: &Facts, p: &Prov, spec: &RequestSpec, seen: &mut Seen) -> Upshot {
        let chat = [RequestKind::Chat, RequestKind::ChatStream];
        match &p.kind {
            Kind::Near { host, .. } | Kind::External { host } => {
                let Some((_, fault)) = seen.take(host, &chat) else {
                    return Upshot::Failed(Failure::transport());
                };
                if near_deadline(facts, fault.as_ref()) {
                    return Upshot::Undecided;
                }
                near_upshot(fault.as_ref(), spec.stream, facts.serves(host, &spec.model))
            }
            Kind::Chutes { slug } => {
                // R24: refused before anything is sent.
                if spec.stream && !self.chutes_streaming {
                    return Upshot::Failed(Failure::refusal());
                }
                if spec.client_pub_key.is_some() {
                    return Upshot::Failed(Failure::refusal());
                }
                let host = crate::world::CHUTES;
                let mut relisted = false;
                loop {
                    let pool = self.pools.entry(p.id.clone()).or_default();
                    // R60: discovery (`/v1/models`, `/e2e/instances`) when the
                    // router's snapshot could not serve; a listing is not trust.
                    let stages = [RequestKind::Models, RequestKind::Instances];
                    while seen.next_is(host, &stages) {
                        let Some((kind, fault)) = seen.take(host, &stages) else {
                            break;
                        };
                        if near_deadline(facts, fault.as_ref()) {
                            return Upshot::Undecided;
                        }
                        if let Some(f) = stage_failure(fault.as_ref()) {
                            return Upshot::Failed(f);
                        }
                        if kind == RequestKind::Instances {
                            let instances = facts
                                .scenario
                                .chutes
                                .iter()
                                .find(|c| &c.slug == slug)
                                .map_or(1, |c| c.instances.max(1) as usize);
                            let own_keys = fault != Some(Fault::WrongKey);
                            pool.list(instances, crate::hosts::DEFAULT_NONCES, own_keys);
                        }
                    }
                    // §7b / R61: one evidence fetch per request, then the first
                    // candidate whose evidence binds its key. Evidence signed by
                    // a vendor the router does not trust binds nothing.
                    let Some((_, evidence)) = seen.take(host, &[RequestKind::Evidence]) else {
                        return Upshot::Failed(Failure::chutes_unavailable());
                    };
                    if near_deadline(facts, evidence.as_ref()) {
                        return Upshot::Undecided;
                    }
                    if let Some(f) = stage_failure(evidence.as_ref()) {
                        return Upshot::Failed(f);
                    }
                    let trusted = facts.scenario.config.trust_chutes_vendor;
                    match pool.choose(evidence.as_ref(), trusted) {
                        Choice::Instance(_) => {}
                        // R39: no instance with a key and a nonce.
                        Choice::NoneListed => return Upshot::Failed(Failure::chutes_unavailable()),
                        // §7b: fail closed, nothing sent, not retryable, no
                        // health count (the issue-15 design extends this to an
                        // instance absent from the evidence, where R39 says 503).
                        Choice::AllFailed => return Upshot::Failed(Failure::closed()),
                    }
                    let Some((_, fault)) = seen.take(host, &chat) else {
                        return Upshot::Failed(Failure::chutes_unavailable());
                    };
                    if near_deadline(facts, fault.as_ref()) {
                        return Upshot::Undecided;
                    }
                    // The gateway refused the nonce (a stale target, R39):
                    // by a `400` fault naming it, or because it restarted and
                    // forgot the listing (unless a fault it acts out before
                    // looking at the nonce decides the answer).
                    let answered_first = matches!(
                        &fault,
                        Some(Fault::HttpStatus { .. } | Fault::ModelNotFound)
                    ) || matches!(&fault, Some(Fault::LatencyMs { ms }) if *ms >= DEADLINE_MS)
                        || matches!(&fault, Some(Fault::SlowFirstTokenMs { ms })
                            if !spec.stream && *ms >= DEADLINE_MS);
                    let stale = match &fault {
                        Some(Fault::HttpStatus {
                            status: 400,
                            message,
                            ..
                        }) => stale_target(message.as_deref().unwrap_or("")),
                        _ => pool.is_stale() && !answered_first,
                    };
                    // The chute or instance is gone, or the nonce was
                    // refused: the listing is dropped.
                    if stale
                        || matches!(
                            &fault,
                            Some(Fault::ModelNotFound | Fault::HttpStatus { status: 404, .. })
                        )
                    {
                        pool.forget();
                    }
                    // A refused nonce: the attempt lists afresh once; a
                    // second refusal is R39's retryable 503.
                    if stale {
                        if relisted {
                            return Upshot::Failed(Failure::chutes_unavailable());
                        }
                        relisted = true;
                        continue;
                    }
                    // §7b: evidence that binds a substituted listing key
                    // lets the request be sealed to the gateway's key, which
                    // the instance cannot open: its 400 (not a stale
                    // target) is an ordinary Chutes failure.
                    if !pool.listed_own_keys() && !answered_first {
                        return Upshot::Failed(Failure::chutes_status(
                            400,
                            "could not open the request",
                            true,
                        ));
                    }
                    return chutes_upshot(fault.as_ref(), spec.stream, Shape::of(facts, slug));
                }
            }
        }
    }
}

/// Whether the upstream that answered a streamed chat call with `fault`
/// really ended its stream: what the host sent, per SPEC R23/R25.
pub fn upstream_ended(
    facts: &Facts,
    reg: &Registry,
    host: &str,
    fault: Option<&Fault>,
    model: &str,
) -> bool {
    let upshot = if host == crate::world::CHUTES {
        let shape = reg
            .list(model)
            .iter()
            .find_map(|p| match &p.kind {
                Kind::Chutes { slug } => Some(Shape::of(facts, slug)),
                _ => None,
            })
            .unwrap_or_default();
        chutes_upshot(fault, true, shape)
    } else {
        near_upshot(fault, true, facts.serves(host, model))
    };
    matches!(
        upshot,
        Upshot::Served(StreamEnd::Done | StreamEnd::DoneAltered)
    )
}

/// A Chutes discovery stage (`/v1/models`, `/e2e/instances`) that failed.
/// R39: every failure of it is a Chutes failure.
fn stage_failure(fault: Option<&Fault>) -> Option<Failure> {
    match fault? {
        Fault::HttpStatus {
            status, message, ..
        } => Some(Failure::chutes_status(
            *status,
            message.as_deref().unwrap_or(""),
            false,
        )),
        Fault::ModelNotFound => Some(Failure::chutes_status(404, "", false)),
        Fault::ResetBeforeBody | Fault::ResetAfterChunks { .. } => {
            Some(Failure::chutes_unavailable())
        }
        // Half a JSON body that ends cleanly: a decode error, broken in
        // transit by R35.6's words.
        Fault::CutStreamAfter { .. } => Some(Failure::transport()),
        Fault::LatencyMs { ms } if *ms >= DEADLINE_MS => Some(Failure::chutes_unavailable()),
        _ => None,
    }
}

/// A NEAR or external chat attempt, from the fault its host acted out.
fn near_upshot(fault: Option<&Fault>, stream: bool, serves: bool) -> Upshot {
    use Upshot::{Failed, Served};
    let ok = if serves {
        Served(StreamEnd::Done)
    } else {
        Failed(Failure::model_missing())
    };
    let Some(fault) = fault else { return ok };
    match fault {
        Fault::HttpStatus {
            status, message, ..
        } => Failed(Failure::http(*status, message.as_deref().unwrap_or(""))),
        Fault::ModelNotFound => Failed(Failure::model_missing()),
        Fault::LatencyMs { ms } if *ms >= DEADLINE_MS => Failed(Failure::timeout()),
        Fault::ResetBeforeBody => Failed(Failure::transport()),
        Fault::ResetAfterChunks { .. } if !stream => Failed(Failure::transport()),
        // R37: half a JSON body that ends cleanly is complete but unparseable.
        Fault::CutStreamAfter { .. } if !stream => Failed(Failure::unparseable()),
        _ if !serves => ok,
        Fault::ResetAfterChunks { .. }
        | Fault::CutStreamAfter { .. }
        | Fault::StreamErrorAfter { .. } => Served(StreamEnd::Broken),
        Fault::SlowFirstTokenMs { ms } if stream && *ms >= DEADLINE_MS => {
            Served(StreamEnd::TimedOut)
        }
        _ => ok,
    }
}

/// Encrypted frames of a plain Chutes stream: five content frames, then
/// the inner `[DONE]` (the gateway's script).
const CHUTES_FRAMES: u32 = 6;

/// What the model needs to know of a chute's stream.
#[derive(Debug, Clone, Copy)]
struct Shape {
    /// Protocol v2 (R25).
    v2: bool,
    /// Encrypted frames, the inner `[DONE]` last.
    frames: u32,
}

impl Default for Shape {
    fn default() -> Self {
        Shape {
            v2: false,
            frames: CHUTES_FRAMES,
        }
    }
}

impl Shape {
    fn of(facts: &Facts, slug: &str) -> Shape {
        let Some(c) = facts.scenario.chutes.iter().find(|c| c.slug == slug) else {
            return Shape::default();
        };
        // `reply = ["usage"]` adds a final usage chunk, which the instance
        // sends because the router always asks for it (R56).
        let usage = c.reply.contains(&crate::scenario::format::ReplyWord::Usage);
        Shape {
            v2: c.stream_protocol == 2,
            frames: CHUTES_FRAMES + u32::from(usage),
        }
    }

    /// The index of the inner `[DONE]` frame.
    fn inner_done(self) -> u32 {
        self.frames - 1
    }
}

/// A stream whose upstream stopped after `n` frames (`n` > 0): it ended
/// properly only if the inner `[DONE]` was among them, else it is broken.
fn ended_after(n: u32, shape: Shape) -> Upshot {
    if n >= shape.frames {
        Upshot::Served(StreamEnd::Done)
    } else {
        Upshot::Served(StreamEnd::Broken)
    }
}

/// A Chutes invocation, from the fault the gateway acted out.
fn chutes_upshot(fault: Option<&Fault>, stream: bool, shape: Shape) -> Upshot {
    let v2 = shape.v2;
    use Upshot::{Failed, Served};
    let Some(fault) = fault else {
        return Served(StreamEnd::Done);
    };
    // R25: v1 frames carry no sequence number, so tampering that leaves the
    // inner [DONE] in place goes unnoticed; v2 detects it.
    let tampered = if v2 {
        StreamEnd::Rejected
    } else {
        StreamEnd::DoneAltered
    };
    match fault {
        // R39: statuses, resets and deadlines as Chutes failures.
        Fault::HttpStatus {
            status, message, ..
        } => Failed(Failure::chutes_status(
            *status,
            message.as_deref().unwrap_or(""),
            true,
        )),
        Fault::ModelNotFound => Failed(Failure::chutes_status(404, "", true)),
        Fault::LatencyMs { ms } if *ms >= DEADLINE_MS => Failed(Failure::chutes_unavailable()),
        Fault::ResetBeforeBody => Failed(Failure::chutes_unavailable()),
        Fault::ResetAfterChunks { .. } if !stream => Failed(Failure::chutes_unavailable()),
        // Half a sealed body that ends cleanly does not open: fail closed.
        Fault::CutStreamAfter { .. } if !stream => Failed(Failure::closed()),
        // A JSON answer has no first token: the whole answer is late.
        Fault::SlowFirstTokenMs { ms } if !stream && *ms >= DEADLINE_MS => {
            Failed(Failure::chutes_unavailable())
        }
        // The authenticated gzip inflates past the cap: fail closed.
        Fault::GzipBomb if !stream => Failed(Failure::closed()),
        _ if !stream => Served(StreamEnd::Done),
        // From here a stream. R23 with first-item priming (SPEC-parity
        // R34.7/R39): until the first authenticated item nothing has reached
        // the client, so a failure before it is the attempt's own (retried
        // or fallen back from like any other); after it, the stream is the
        // client's and a failure ends it without `[DONE]`.
        //
        // The instance reports an error (before or after `e2e_init`, before
        // any frame): an upstream 502, retryable.
        // (The gateway's texts name neither a missing model nor the
        // client's media, so R35 leaves them an ordinary 5xx.)
        Fault::E2eError => Failed(Failure::http(502, "instance failed to process the request")),
        Fault::E2eErrorAfter { frames: 0 } => Failed(Failure::http(
            502,
            "instance failed while generating the response",
        )),
        // After `n` frames: content was forwarded unless the inner [DONE]
        // was among them; counted like any upstream failure.
        Fault::E2eErrorAfter { frames: n } => ended_after(*n, shape),
        // Nothing authenticates before the first frame: fatal, fail closed.
        Fault::FrameBeforeInit | Fault::StreamWrongKey => Failed(Failure::closed()),
        Fault::CorruptFrame { index: 0 } | Fault::BadBase64Frame { index: 0 } => {
            Failed(Failure::closed())
        }
        // v2 binds the sequence number: frame 1 in frame 0's place fails
        // authentication before any content. v1 cannot tell (R25).
        Fault::DropFrame { index: 0 } | Fault::ReorderFrame { index: 0 } if v2 => {
            Failed(Failure::closed())
        }
        // R23: only the inner [DONE] ends a stream. Cut, reset or a forged
        // outer [DONE] before frame 0: a failed open, retryable (a reset is
        // R39's transport failure, a clean end a truncation); after `n`
        // frames, a broken stream unless the inner [DONE] was sent.
        Fault::ResetAfterChunks { after_chunks: 0 } => Failed(Failure::chutes_unavailable()),
        Fault::CutStreamAfter { after_chunks: 0 } | Fault::ForgedOuterDone { after_frames: 0 } => {
            Failed(Failure::transport())
        }
        Fault::ResetAfterChunks { after_chunks: n }
        | Fault::CutStreamAfter { after_chunks: n }
        | Fault::ForgedOuterDone { after_frames: n } => ended_after(*n, shape),
        // The first frame never comes within the idle limit: R39's
        // transport failure of the open.
        Fault::SlowFirstTokenMs { ms } if *ms >= DEADLINE_MS => {
            Failed(Failure::chutes_unavailable())
        }
        Fault::DropFrame { index } if *index == shape.inner_done() => Served(StreamEnd::Broken),
        Fault::DropFrame { index } | Fault::ReplayFrame { index }
            if *index < shape.inner_done() =>
        {
            Served(tampered)
        }
        Fault::ReorderFrame { index } if *index < shape.inner_done() => Served(tampered),
        Fault::CorruptFrame { index } | Fault::BadBase64Frame { index }
            if *index < shape.frames =>
        {
            Served(StreamEnd::Rejected)
        }
        // After `e2e_init` and frame 0: an in-stream failure.
        Fault::OversizedLine => Served(StreamEnd::Rejected),
        _ => Served(StreamEnd::Done),
    }
}

#[cfg(test)]
mod parity_tests {
    use super::*;

    fn facts(tick: Option<&str>) -> Facts {
        facts_with(tick, "")
    }

    /// The R43 scenario at `tick`, with `more` appended to its script.
    fn facts_with(tick: Option<&str>, more: &str) -> Facts {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../scenarios/context_exact_count_tokenize.toml");
        let mut text = std::fs::read_to_string(&path).expect("readable") + more;
        if let Some(tick) = tick {
            text = text.replacen("seed = ", &format!("tick = \"{tick}\"\nseed = "), 1);
        }
        let scenario = crate::scenario::parse(&path, &text).unwrap_or_else(|e| panic!("{e}"));
        Facts {
            scenario,
            near_keys: Default::default(),
        }
    }

    #[test]
    fn r43_a_tokenize_answer_is_late_on_time_or_undecidable_by_the_network_bounds() {
        // 1 ms tick: in transit at least the hold rounded up to whole ticks
        // (and more: the call went out before the tick it landed on), at
        // most four crossings of a 100 ms link plus a tick each and four
        // ticks (408 ms).
        let f = facts(None);
        assert!(matches!(tokenize_late(&f, 0), Ok(false)));
        assert!(matches!(tokenize_late(&f, 1591), Ok(false)));
        assert!(tokenize_late(&f, 1592).is_err(), "1592 + 408 reaches 2 s");
        assert!(tokenize_late(&f, 1900).is_err());
        assert!(
            tokenize_late(&f, 1999).is_err(),
            "an answer sent on a tick boundary can land the same instant"
        );
        assert!(matches!(tokenize_late(&f, 2000), Ok(true)));
        assert!(matches!(tokenize_late(&f, 3000), Ok(true)));
        // A coarser tick widens the band on both sides: a hold ending
        // mid-tick leaves at that tick's end.
        let f = facts(Some("10ms"));
        assert!(matches!(tokenize_late(&f, 1519), Ok(false)));
        assert!(tokenize_late(&f, 1520).is_err());
        assert!(tokenize_late(&f, 1990).is_err());
        assert!(
            matches!(tokenize_late(&f, 1991), Ok(true)),
            "1991 leaves at 2000"
        );
    }

    #[test]
    fn r43_r46_a_script_that_holds_links_leaves_a_calls_time_unbounded() {
        // Without holds a call takes at most its scripted delay plus the
        // network's crossings; a held link may deliver it at any later
        // time (even into a later request's window, so R43's host is not
        // judged there).
        let free = facts(None);
        assert!(!holds_links(&free));
        assert!(time_bounds(&free, 0.0, false).1.is_finite());
        let held = facts_with(None, "\n[[step]]\nhold = [\"router\", \"near-1\"]\n");
        assert!(holds_links(&held));
        assert_eq!(time_bounds(&held, 0.0, false).1, f64::INFINITY);
    }

    #[test]
    fn r36_r38_text_rules_from_the_spec_examples() {
        assert!(says_model_missing(
            "The model `z-ai/glm-5.1` does not exist."
        ));
        assert!(!says_model_missing("bad request"));
        assert!(client_media(
            "Error loading IMAGE data: 403 Client Error: Forbidden for url"
        ));
        assert!(!client_media(
            "Error loading IMAGE data: 503 Client Error: Service Unavailable"
        ));
        assert!(client_media("HTTP error 500: 404, message='Not Found'"));
        assert!(client_media("cannot identify image file"));
        assert!(!client_media("queue full"));
    }

    #[test]
    fn r29_r30_client_status_table() {
        let http = |s, ext| Failure::http(s, "x").client_status(ext);
        assert_eq!(http(503, false), 429);
        assert_eq!(http(503, true), 429);
        assert_eq!(http(500, false), 502);
        assert_eq!(http(404, true), 502);
        assert_eq!(Failure::model_missing().client_status(false), 400);
        assert_eq!(http(403, false), 500);
        assert_eq!(http(422, true), 400);
        assert_eq!(http(504, false), 504);
        assert_eq!(http(504, true), 502);
        assert_eq!(http(409, false), 409);
        assert_eq!(Failure::timeout().client_status(false), 504);
        assert_eq!(Failure::refusal().client_status(true), 502);
        assert_eq!(Failure::unparseable().verdict, Verdict::Next);
        assert_eq!(
            Failure::http(500, "loading image data: 403 Client Error:").client_status(false),
            400
        );
    }
}

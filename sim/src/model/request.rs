//! The model of one client request: selection (R15–R18), rounds, backoff and
//! health (R19–R21), the error the client sees (R22) and how a stream ends
//! (R23/R24), read against what each simulated host served.

use std::collections::BTreeMap;
use std::time::Duration;

use tiersim_engine::retry::Decision;
use tiersim_engine::Tier;

use super::registry::{Kind, Prov, Registry, DEMOTED_AT};
use super::Facts;
use crate::fault::{Fault, HostEvent, RequestKind};
use crate::record::RequestRecord;
use crate::scenario::format::RequestSpec;

/// The world's upstream deadline (`world::TIMEOUTS`): a host that holds its
/// answer this long is a timeout.
pub const DEADLINE_MS: u64 = 30_000;
/// At most this many rounds (R20: 3 retries).
const ROUNDS: u32 = 4;

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

/// One failed attempt as the model sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Failure {
    status: u16,
    verdict: Verdict,
    /// R22: how much this error tells the client (higher is better).
    weight: u8,
}

impl Failure {
    fn http(status: u16, code: Option<&str>) -> Failure {
        let (verdict, weight) = match status {
            429 => (Verdict::Retry { rate_limited: true }, 5),
            500..=599 if code == Some("client_media_fetch_failed") => (Verdict::Next, 6),
            500..=599 => (
                Verdict::Retry {
                    rate_limited: false,
                },
                5,
            ),
            408 => (Verdict::Next, 2),
            404 if code == Some("model_not_found") => (Verdict::Next, 2),
            400..=499 => (Verdict::Stop, 7),
            _ => (Verdict::Next, 2),
        };
        Failure {
            status,
            verdict,
            weight,
        }
    }
    /// Connection reset, broken or unreadable body: retryable, 502.
    fn transport() -> Failure {
        Failure {
            status: 502,
            verdict: Verdict::Retry {
                rate_limited: false,
            },
            weight: 4,
        }
    }
    fn timeout() -> Failure {
        Failure {
            status: 504,
            verdict: Verdict::Next,
            weight: 3,
        }
    }
    /// R24: a capability refusal, the least informative error of all.
    fn refusal() -> Failure {
        Failure {
            status: 400,
            verdict: Verdict::Next,
            weight: 1,
        }
    }
    /// R23/§7b: authentication failed.
    fn closed() -> Failure {
        Failure {
            status: 502,
            verdict: Verdict::Closed,
            weight: 7,
        }
    }
}

/// How a stream the client was handed ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StreamEnd {
    /// The authenticated end: `[DONE]`, and R21 success.
    Done,
    /// Cut, reset or truncated: no `[DONE]`, counted as a retryable failure.
    Broken,
    /// Failed authentication mid-stream: no `[DONE]`, not counted.
    Rejected,
}

/// What an attempt did, as the model reads the host's record.
enum Upshot {
    Served(StreamEnd),
    Failed(Failure),
}

/// One predicted attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub provider: String,
    pub round: u32,
    pub decision: Decision,
    pub backoff: Option<Duration>,
}

/// What the model predicts for one request.
#[derive(Debug, Clone)]
pub struct Prediction {
    pub attempts: Vec<Step>,
    pub status: u16,
    /// For a served stream: whether the client gets `[DONE]`.
    pub done: Option<bool>,
}

impl Prediction {
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
struct Seen<'a> {
    events: &'a [HostEvent],
    next: BTreeMap<String, usize>,
}

impl<'a> Seen<'a> {
    /// The next request `host` served (of the kinds `kinds`), consumed.
    fn take(&mut self, host: &str, kinds: &[RequestKind]) -> Option<(RequestKind, Option<Fault>)> {
        let from = self.next.get(host).copied().unwrap_or(0);
        for (i, e) in self.events.iter().enumerate().skip(from) {
            if let HostEvent::Request {
                host: h,
                kind,
                fault,
            } = e
            {
                if h == host && kinds.contains(kind) {
                    self.next.insert(host.to_string(), i + 1);
                    return Some((*kind, fault.clone()));
                }
            }
        }
        self.next.insert(host.to_string(), self.events.len());
        None
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
    /// provider it may use.
    pub fn servable(&self, facts: &Facts, spec: &RequestSpec) -> bool {
        matches!(self.catalog.get(&spec.model), Some((true, _)))
            && !self
                .candidates(&spec.model, pubkey_of(facts, spec).as_deref())
                .is_empty()
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
    pub fn request(
        &mut self,
        facts: &Facts,
        spec: &RequestSpec,
        window: &[HostEvent],
    ) -> Prediction {
        let fail = |status| Prediction {
            attempts: Vec::new(),
            status,
            done: None,
        };
        // R6/R13: unknown or inactive ids are 404 before any provider.
        match self.catalog.get(&spec.model) {
            Some((true, _)) => {}
            _ => return fail(404),
        }
        let list = self.list(&spec.model);
        if list.is_empty() {
            return fail(404);
        }
        let pubkey = pubkey_of(facts, spec);
        let mut cands = self.candidates(&spec.model, pubkey.as_deref());
        if cands.is_empty() && pubkey.is_some() {
            return fail(404);
        }
        if cands.is_empty() {
            return fail(503);
        }
        // R18: capability filters, unless nobody is capable.
        if spec.stream && cands.iter().any(|p| p.streams(self.chutes_streaming)) {
            cands.retain(|p| p.streams(self.chutes_streaming));
        }
        if spec.client_pub_key.is_some() && cands.iter().any(|p| p.client_e2ee()) {
            cands.retain(|p| p.client_e2ee());
        }
        // R17: (demoted, tier), stable; round-robin in the leading group.
        let demoted = |p: &Prov| self.failures(&p.id) >= DEMOTED_AT;
        cands.sort_by_key(|p| (demoted(p), p.tier));
        let key = |p: &Prov| (demoted(p), p.tier);
        let lead = cands
            .iter()
            .take_while(|p| key(p) == key(&cands[0]))
            .count();
        if lead > 1 {
            let turns = self.turns.entry(spec.model.clone()).or_default();
            let turn = if pubkey.is_some() {
                &mut turns.1
            } else {
                &mut turns.0
            };
            let k = (*turn % lead as u64) as usize;
            *turn += 1;
            cands[..lead].rotate_left(k);
        }

        let mut seen = Seen {
            events: window,
            next: BTreeMap::new(),
        };
        let mut attempts: Vec<Step> = Vec::new();
        for round in 1..=ROUNDS {
            let mut retry: Option<bool> = None;
            let mut best: Option<Failure> = None;
            for p in &cands {
                let upshot = self.attempt(facts, p, spec, &mut seen);
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
                            StreamEnd::Done => {
                                self.health.insert(p.id.clone(), 0);
                            }
                            StreamEnd::Broken => *self.health.entry(p.id.clone()).or_default() += 1,
                            StreamEnd::Rejected => {}
                        }
                        return Prediction {
                            attempts,
                            status: 200,
                            done: spec.stream.then_some(end == StreamEnd::Done),
                        };
                    }
                    Upshot::Failed(f) => f,
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
                if matches!(failure.verdict, Verdict::Stop | Verdict::Closed) {
                    return Prediction {
                        attempts,
                        status: failure.status,
                        done: None,
                    };
                }
                if best.is_none_or(|b| failure.weight > b.weight) {
                    best = Some(failure);
                }
            }
            let best = best.expect("a failed round has a failure");
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
                        status: best.status,
                        done: None,
                    }
                }
            }
        }
        unreachable!("the last round returns")
    }

    /// What one attempt to `p` did, from the record of the host it reached.
    fn attempt(&mut self, facts: &Facts, p: &Prov, spec: &RequestSpec, seen: &mut Seen) -> Upshot {
        let chat = [RequestKind::Chat, RequestKind::ChatStream];
        match &p.kind {
            Kind::Near { host, .. } | Kind::External { host } => {
                let Some((_, fault)) = seen.take(host, &chat) else {
                    return Upshot::Failed(Failure::transport());
                };
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
                // The instance listing (keys, nonces, evidence) fetched in
                // this attempt, if any: one whose key the evidence does not
                // bind (§7b) is never used, and not kept.
                let stages = [RequestKind::Models, RequestKind::Instances];
                let mut listed: Option<bool> = None;
                while seen.peek(host).is_some_and(|k| stages.contains(&k)) {
                    let Some((kind, fault)) = seen.take(host, &stages) else {
                        break;
                    };
                    if kind == RequestKind::Instances {
                        listed = Some(fault == Some(Fault::WrongKey));
                    }
                    if let Some(f) = stage_failure(fault.as_ref()) {
                        return Upshot::Failed(f);
                    }
                }
                // §7b: evidence signed by a vendor the router does not trust
                // binds nothing either.
                let untrusted = !facts.scenario.config.trust_chutes_vendor;
                if listed.is_some_and(|wrong_key| wrong_key || untrusted) {
                    return Upshot::Failed(Failure::closed());
                }
                let Some((_, fault)) = seen.take(host, &chat) else {
                    return Upshot::Failed(Failure::transport());
                };
                let v2 = facts
                    .scenario
                    .chutes
                    .iter()
                    .any(|c| &c.slug == slug && c.stream_protocol == 2);
                chutes_upshot(fault.as_ref(), spec.stream, v2)
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
        let v2 = reg.list(model).iter().any(|p| match &p.kind {
            Kind::Chutes { slug } => facts
                .scenario
                .chutes
                .iter()
                .any(|c| &c.slug == slug && c.stream_protocol == 2),
            _ => false,
        });
        chutes_upshot(fault, true, v2)
    } else {
        near_upshot(fault, true, facts.serves(host, model))
    };
    matches!(upshot, Upshot::Served(StreamEnd::Done))
}

/// A Chutes discovery stage (`/v1/models`, `/e2e/instances`) that failed.
fn stage_failure(fault: Option<&Fault>) -> Option<Failure> {
    match fault? {
        Fault::HttpStatus { status, code, .. } => Some(Failure::http(*status, code.as_deref())),
        Fault::ModelNotFound => Some(Failure::http(404, Some("model_not_found"))),
        Fault::ResetBeforeBody | Fault::ResetAfterChunks { .. } | Fault::CutStreamAfter { .. } => {
            Some(Failure::transport())
        }
        Fault::LatencyMs { ms } if *ms >= DEADLINE_MS => Some(Failure::timeout()),
        _ => None,
    }
}

/// A NEAR or external chat attempt, from the fault its host acted out.
fn near_upshot(fault: Option<&Fault>, stream: bool, serves: bool) -> Upshot {
    use Upshot::{Failed, Served};
    let ok = if serves {
        Served(StreamEnd::Done)
    } else {
        Failed(Failure::http(404, Some("model_not_found")))
    };
    let Some(fault) = fault else { return ok };
    match fault {
        Fault::HttpStatus { status, code, .. } => Failed(Failure::http(*status, code.as_deref())),
        Fault::ModelNotFound => Failed(Failure::http(404, Some("model_not_found"))),
        Fault::LatencyMs { ms } if *ms >= DEADLINE_MS => Failed(Failure::timeout()),
        Fault::ResetBeforeBody => Failed(Failure::transport()),
        Fault::ResetAfterChunks { .. } | Fault::CutStreamAfter { .. } if !stream => {
            Failed(Failure::transport())
        }
        _ if !serves => ok,
        Fault::ResetAfterChunks { .. } | Fault::CutStreamAfter { .. } => Served(StreamEnd::Broken),
        Fault::SlowFirstTokenMs { ms } if stream && *ms >= DEADLINE_MS => Served(StreamEnd::Broken),
        _ => ok,
    }
}

/// Encrypted frames of a Chutes stream: five content frames, then the inner
/// `[DONE]` (the gateway's script).
const CHUTES_FRAMES: u32 = 6;
/// The index of the inner `[DONE]` frame.
const INNER_DONE: u32 = CHUTES_FRAMES - 1;

/// A Chutes invocation, from the fault the gateway acted out.
fn chutes_upshot(fault: Option<&Fault>, stream: bool, v2: bool) -> Upshot {
    use Upshot::{Failed, Served};
    let Some(fault) = fault else {
        return Served(StreamEnd::Done);
    };
    // R25: v1 frames carry no sequence number, so tampering that leaves the
    // inner [DONE] in place goes unnoticed; v2 detects it.
    let tampered = if v2 {
        StreamEnd::Rejected
    } else {
        StreamEnd::Done
    };
    match fault {
        Fault::HttpStatus { status, code, .. } => Failed(Failure::http(*status, code.as_deref())),
        Fault::ModelNotFound => Failed(Failure::http(404, Some("model_not_found"))),
        Fault::LatencyMs { ms } if *ms >= DEADLINE_MS => Failed(Failure::timeout()),
        Fault::ResetBeforeBody => Failed(Failure::transport()),
        Fault::ResetAfterChunks { .. } | Fault::CutStreamAfter { .. } if !stream => {
            Failed(Failure::transport())
        }
        // The authenticated gzip inflates past the cap: fail closed.
        Fault::GzipBomb if !stream => Failed(Failure::closed()),
        _ if !stream => Served(StreamEnd::Done),
        // Before the stream is keyed: the open fails.
        Fault::E2eError => Failed(Failure::transport()),
        Fault::FrameBeforeInit => Failed(Failure::closed()),
        // R23: only the inner [DONE] ends a stream; n frames then a cut,
        // reset or forged outer [DONE] end it only when it was among them.
        Fault::ResetAfterChunks { after_chunks: n }
        | Fault::CutStreamAfter { after_chunks: n }
        | Fault::ForgedOuterDone { after_frames: n } => {
            if *n >= CHUTES_FRAMES {
                Served(StreamEnd::Done)
            } else {
                Served(StreamEnd::Broken)
            }
        }
        Fault::SlowFirstTokenMs { ms } if *ms >= DEADLINE_MS => Served(StreamEnd::Broken),
        Fault::DropFrame { index } if *index == INNER_DONE => Served(StreamEnd::Broken),
        Fault::DropFrame { index } | Fault::ReplayFrame { index } if *index < INNER_DONE => {
            Served(tampered)
        }
        Fault::ReorderFrame { index } if *index < INNER_DONE => Served(tampered),
        Fault::CorruptFrame { index } | Fault::BadBase64Frame { index }
            if *index < CHUTES_FRAMES =>
        {
            Served(StreamEnd::Rejected)
        }
        Fault::OversizedLine => Served(StreamEnd::Rejected),
        _ => Served(StreamEnd::Done),
    }
}

//! A `concurrent` step (R17 under load), judged where the interleaving of
//! its requests cannot change what they do.
//!
//! The model predicts requests one at a time; requests in flight together
//! are ordered by the network, which the model does not know. Two facts
//! hold whatever that order, under conditions the model can check before
//! the step from its own state and the world's record:
//!
//! - **Turns.** Requests that route alike (one model, not streamed, the same
//!   headers) each take the next round-robin turn of one leading group as
//!   they arrive (R17, R65; a group of one takes none, so all lead on it;
//!   a group smaller than the step wraps). Nothing that happens during the
//!   step can change that group if its members are NEAR or external
//!   providers, or it is one Chutes provider that serves the whole step
//!   from one listing (`chutes_settled`: its pool and nonces are
//!   per-request state, R60/R61, but with a nonce for every request on
//!   every instance and no Chutes fault in the step, which request used
//!   which instance changes nothing after it), none of the model's is demoted (a success would
//!   promote it), none can reach the demotion threshold from the failures
//!   the step's other requests can add before a first attempt (`k - 1`
//!   requests, four rounds each) unless the step's answers rule it out
//!   (`nothing_failed`, or `AnswersAlike::keep_under_threshold`: from four
//!   requests on the bound always reaches it), no declared window makes the body's
//!   size matter (R44: with windows, every request sends the same body and
//!   none may ask for an exact count, R43), the
//!   router is neither refreshing nor restarted, and the per-model cap
//!   (SPEC-parity R28) admits them all. Then their first attempts go to the
//!   providers of the next `k` turns, one each: as a multiset, whichever
//!   request arrived first. A difference is a violation.
//! - **Quiet steps.** If, besides, every request predicted in turn order is
//!   served at its first attempt (its provider's host answered it; a
//!   scripted delay is still an answer), what the step changes (turns, the
//!   served providers' counts reset) is the serial order's, whichever
//!   request met which answer: each request is judged against a prediction
//!   with its lead, and the model goes on from the serial state.
//! - **Hosts that answered alike.** The same holds when requests failed,
//!   provided every host answered all the chat requests it saw alike (one
//!   fault, or none; a silent host fails every attempt), nothing reached
//!   the Chutes gateway, and the predictions account for every answer:
//!   then requests with one lead do the same thing wherever they fell in
//!   the order, and each count moves by the same amount (`AnswersAlike`).
//!
//! - **No provider.** When no provider serves the model, the router
//!   answers each request alone (R28's 400), whatever the order.
//!
//! Anything else (a host that answered requests differently, a 429 from
//! the cap, streams, a Chutes step that meets a fault or could drain an
//! instance) is left to the interleaving: the model stops predicting the
//! run there.

use std::collections::BTreeMap;

use super::registry::{Kind, Prov, Registry, DEMOTED_AT};
use super::request::{Asks, Prediction, Seen, ROUNDS};
use super::Facts;
use crate::fault::{Fault, HostEvent, RequestKind};
use crate::record::RequestRecord;
use crate::scenario::format::RequestSpec;
use tiersim_engine::retry::Decision;

/// What the model can say about one `concurrent` step.
pub(super) enum Verdict {
    /// Every request judged: the differences, and the registry after it.
    Judged(Vec<String>, Box<Registry>),
    /// The interleaving decides the rest: the differences found before
    /// that (the turns), if any.
    Undecided(Vec<String>),
}

/// Judges the `concurrent` step of `specs`, whose records (in the same
/// order) are `got`, from `reg` (the registry before it) and `window` (the
/// host events during it).
pub(super) fn judge(
    facts: &Facts,
    reg: &Registry,
    specs: &[RequestSpec],
    got: &[RequestRecord],
    window: &[HostEvent],
) -> Verdict {
    let undecided = || Verdict::Undecided(Vec::new());
    let Some(first) = specs.first() else {
        return undecided();
    };
    let k = specs.len();
    let cap_admits = facts
        .scenario
        .config
        .model_concurrency
        .unwrap_or(tiersim_engine::config::DEFAULT_MODEL_CONCURRENCY)
        >= k;
    let registry_still = !window
        .iter()
        .any(|e| matches!(e, HostEvent::RouterBoot | HostEvent::Listing { .. }));
    let list = reg.list(&first.model);
    // A provider the step's failures could demote, or one demoted that a
    // success would promote, could change the group mid-step. Before a
    // request's first attempt only the other `k - 1` requests can have
    // failed, each at most once per round on any one provider (R20).
    // A declared window makes each body's size matter (R44): the requests
    // are judged together only when they send the same body, so that one
    // estimate orders them all, and when none may ask for a count (R43's
    // call and permits are the interleaving's).
    let windowed = list.iter().any(|p| p.window.is_some());
    let demoted_now = list
        .iter()
        .any(|p| plain(&p.kind) && reg.failures(&p.id) >= DEMOTED_AT);
    // Failures the step's other requests could add might reach R21's
    // threshold mid-step and change the group later arrivals turn: then
    // the turns hold only where the step's answers rule that out (below).
    let counts_may_reach = list
        .iter()
        .any(|p| reg.failures(&p.id) + (k as u32 - 1) * ROUNDS >= DEMOTED_AT);
    if k < 2
        || got.len() != k
        || first.stream
        || !specs.iter().all(|s| routes_alike(first, s))
        || specs.iter().any(|s| super::admission::refusal(s).is_some())
        || !cap_admits
        || !registry_still
        || demoted_now
        || (windowed && !specs.iter().all(|s| same_body(first, s)))
    {
        return undecided();
    }

    // No provider serves the model: the router answers each request alone
    // (R28), the same whatever their order.
    if list.is_empty() {
        let mut after = reg.clone();
        let mut seen = Seen::over(window);
        let mut out = Vec::new();
        for (spec, r) in specs.iter().zip(got) {
            let p = after.request_seen(facts, spec, &mut seen);
            if p.undecided || !p.attempts.is_empty() {
                return undecided();
            }
            out.extend(p.diff(r));
        }
        return Verdict::Judged(out, Box::new(after));
    }

    // The turns, taken one per request on a copy of the registry.
    let mut turns = reg.clone();
    let mut leads: Vec<String> = Vec::with_capacity(k);
    let mut on_chutes = false;
    for spec in specs {
        let mut seen = Seen::over(&[]);
        let Ok(ordered) = turns.order(facts, spec, &mut seen) else {
            return undecided();
        };
        if windowed && *seen.asks() != Asks::Nobody {
            return undecided();
        }
        let settled = chutes_settled(reg, &list, &ordered.group, k, window);
        on_chutes |= settled;
        let stable = (ordered.group.iter().all(|p| plain(&p.kind)) || settled)
            && ordered.cands.first().map(|p| &p.id) == ordered.group.first().map(|p| &p.id);
        if !stable {
            return undecided();
        }
        leads.push(ordered.group[0].id.clone());
    }
    // The counts could reach the threshold mid-step: the turns hold if
    // nothing failed, or if every host answered alike and the failures
    // its answers (or its silence) can add keep each of the leading
    // NEAR or external group's providers under it.
    let alike = if on_chutes {
        None
    } else {
        answers_alike(window)
    };
    if counts_may_reach
        && !nothing_failed(got, window)
        && !alike
            .as_ref()
            .is_some_and(|a| a.keep_under_threshold(reg, &list, k))
    {
        return undecided();
    }

    // Whatever the order of arrival, one request per turn.
    let mut engine: Vec<&str> = Vec::with_capacity(k);
    for r in got {
        match r.attempts.first() {
            Some(a) => engine.push(a.provider.as_str()),
            // Never reached the router's providers (a refused connection):
            // the turns say nothing.
            None => return undecided(),
        }
    }
    let mut want: Vec<&str> = leads.iter().map(String::as_str).collect();
    want.sort_unstable();
    engine.sort_unstable();
    if want != engine {
        return Verdict::Undecided(vec![format!(
            "concurrent requests for {}: each takes its own round-robin turn (R17), so their first \
             attempts go to {} (in some order); engine: {}",
            first.model,
            want.join(", "),
            engine.join(", ")
        )]);
    }

    // Quiet: each served at its first attempt, as predicted in turn order.
    // Requests on one provider (a group smaller than the step) read its
    // host's answers in turn order; any answer that breaks one makes the
    // step not quiet, so which request met which answer cannot matter.
    let mut after = reg.clone();
    // The Chutes gateway's events interleave across the step's requests
    // (each discovers, fetches evidence and invokes in turn); all are
    // normal answers (`chutes_settled`), so each kind is read on its own.
    let mut seen = if on_chutes {
        Seen::by_kind(window)
    } else {
        Seen::over(window)
    };
    let mut predictions = Vec::with_capacity(k);
    let mut quiet = true;
    for (spec, lead) in specs.iter().zip(&leads) {
        let p = after.request_seen(facts, spec, &mut seen);
        if p.undecided || p.attempts.first().is_none_or(|a| a.provider != *lead) {
            return undecided();
        }
        quiet &=
            p.status == 200 && p.attempts.len() == 1 && p.attempts[0].decision == Decision::Served;
        predictions.push(p);
    }
    // Not quiet: still the serial order's when every host answered all
    // its requests alike and the predictions, NEAR and external providers
    // only, account for every answer (`AnswersAlike::accounted`).
    if !quiet
        && !alike
            .as_ref()
            .is_some_and(|a| a.accounted(&list, &predictions))
    {
        return undecided();
    }
    let mut out = Vec::new();
    let mut unmatched: Vec<&Prediction> = predictions.iter().collect();
    for r in got {
        let lead = r.attempts[0].provider.as_str();
        if let Some(i) = unmatched
            .iter()
            .position(|p| p.attempts[0].provider == lead)
        {
            out.extend(unmatched.swap_remove(i).diff(r));
        }
    }
    Verdict::Judged(out, Box::new(after))
}

/// Whether a leading group of one Chutes provider serves the whole step
/// from its listing, so that the interleaving cannot change what the step
/// does. Each request takes the next value of R61's counter as it arrives:
/// which instance each used depends on the order, but the instances used,
/// the nonces spent and the counter after the step do not, provided every
/// instance has a nonce for every request (`serves_each_of`) or none is
/// listed yet (one discovery serves them all), the step meets no Chutes
/// fault and discovers only then (its host events say so), and
/// no provider of the model is demoted or could be by the step's other
/// requests (a Chutes failure would end the quiet step anyway).
fn chutes_settled(
    reg: &Registry,
    list: &[Prov],
    group: &[Prov],
    k: usize,
    window: &[HostEvent],
) -> bool {
    let [lead] = group else {
        return false;
    };
    if !matches!(lead.kind, Kind::Chutes { .. }) {
        return false;
    }
    // Listed with a nonce for every request, or not listed at all: then
    // the first request to arrive discovers while the others wait for its
    // listing (the pool's lock is held across discovery), whichever it is.
    let pool = reg.pools.get(&lead.id);
    let unlisted = pool.is_none_or(|p| p.unlisted());
    let listed = pool.is_some_and(|p| p.serves_each_of(k))
        || (unlisted && crate::hosts::DEFAULT_NONCES >= k);
    let quiet_gateway = !window.iter().any(|e| {
        matches!(e, HostEvent::Request { host, kind, fault }
            if host == crate::world::CHUTES
                && (fault.is_some()
                    || (!unlisted && matches!(kind, RequestKind::Models | RequestKind::Instances))))
    });
    // A demoted provider that served would be promoted mid-step; counts the
    // step could raise to the threshold are `judge`'s (`counts_may_reach`).
    let none_demoted = list.iter().all(|p| reg.failures(&p.id) < DEMOTED_AT);
    listed && quiet_gateway && none_demoted
}

/// Whether nothing failed during the step, by both accounts: the world's
/// (no host acted out a fault, and hosts answered exactly one chat request
/// per request of the step) and the records' (each request served at its
/// only attempt). Then no R21 count rose, so none reached the threshold,
/// whatever the step's size and whichever order its requests arrived in.
fn nothing_failed(got: &[RequestRecord], window: &[HostEvent]) -> bool {
    let mut chats = 0;
    for e in window {
        if let HostEvent::Request { kind, fault, .. } = e {
            if fault.is_some() {
                return false;
            }
            chats += usize::from(*kind == RequestKind::Chat);
        }
    }
    chats == got.len()
        && got.iter().all(|r| {
            r.status == 200
                && matches!(r.attempts.as_slice(), [a] if a.decision == Decision::Served)
        })
}

/// The step's chat answers when every host answered all the chat requests
/// it saw alike (the same fault, or none), no other request met a fault
/// and the Chutes gateway saw none: then which request met which answer
/// cannot matter, and each provider's count moves by the same amount
/// whatever the order (R21: a host that fails fails every attempt it
/// sees, one that serves resets).
struct AnswersAlike<'w> {
    /// Per host: how many requests it answered, and how.
    hosts: BTreeMap<&'w str, (u32, Option<&'w Fault>)>,
}

fn answers_alike(window: &[HostEvent]) -> Option<AnswersAlike<'_>> {
    let mut hosts: BTreeMap<&str, (u32, Option<&Fault>)> = BTreeMap::new();
    for e in window {
        let HostEvent::Request { host, kind, fault } = e else {
            continue;
        };
        if host == crate::world::CHUTES {
            return None;
        }
        // Only chat answers are attempts; any other request a fault
        // touched (an attestation fetch) could move what follows.
        if !matches!(kind, RequestKind::Chat | RequestKind::ChatStream) {
            if fault.is_some() {
                return None;
            }
            continue;
        }
        let (n, how) = hosts.entry(host.as_str()).or_insert((0, fault.as_ref()));
        if *how != fault.as_ref() {
            return None;
        }
        *n += 1;
    }
    Some(AnswersAlike { hosts })
}

impl AnswersAlike<'_> {
    /// Whether no plain provider of `list` can reach R21's threshold in the
    /// step: a host that answered can fail at most the requests it
    /// answered with a fault; a silent one (down, cut off, or not tried)
    /// every attempt of every request, once per round.
    fn keep_under_threshold(&self, reg: &Registry, list: &[Prov], k: usize) -> bool {
        list.iter().all(|p| {
            let Some(host) = host_of(p) else {
                return true;
            };
            let most = match self.hosts.get(host) {
                Some((n, Some(_))) => *n,
                Some((_, None)) => 0,
                None => k as u32 * ROUNDS,
            };
            reg.failures(&p.id) + most < DEMOTED_AT
        })
    }

    /// Whether `predictions` (in turn order) try NEAR and external
    /// providers only and, at each host that answered, make exactly as
    /// many attempts as it answered.
    fn accounted(&self, list: &[Prov], predictions: &[Prediction]) -> bool {
        let mut tried: BTreeMap<&str, u32> = BTreeMap::new();
        for a in predictions.iter().flat_map(|p| &p.attempts) {
            let Some(host) = list.iter().find(|p| p.id == a.provider).and_then(host_of) else {
                return false;
            };
            *tried.entry(host).or_default() += 1;
        }
        self.hosts
            .iter()
            .all(|(host, (n, _))| tried.get(host) == Some(n))
    }
}

/// The host of a NEAR or external provider.
fn host_of(p: &Prov) -> Option<&str> {
    match &p.kind {
        Kind::Near { host, .. } | Kind::External { host } => Some(host),
        Kind::Chutes { .. } => None,
    }
}

/// Whether two requests send the same body (so the same estimate).
fn same_body(a: &RequestSpec, b: &RequestSpec) -> bool {
    crate::runner::request_body(a) == crate::runner::request_body(b)
}

/// Whether two requests route alike: everything but the message text (no
/// window makes its size matter, and unstreamed chat is not placed by it).
fn routes_alike(a: &RequestSpec, b: &RequestSpec) -> bool {
    a.model == b.model
        && a.stream == b.stream
        && a.max_tokens == b.max_tokens
        && a.extra == b.extra
        && a.pub_key_of.as_ref().map(|k| k.get_ref()) == b.pub_key_of.as_ref().map(|k| k.get_ref())
        && a.model_pub_key == b.model_pub_key
        && a.client_pub_key == b.client_pub_key
}

/// Whether a provider keeps no per-request state of its own: a NEAR or
/// external (plaintext) backend, whose only state is R21's count. A Chutes
/// provider's pool and nonces are per-request state (R60, R61).
fn plain(kind: &Kind) -> bool {
    matches!(kind, Kind::Near { .. } | Kind::External { .. })
}

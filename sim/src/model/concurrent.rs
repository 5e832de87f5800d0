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
//!   requests, four rounds each), no declared window makes the body's
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
//!
//! - **No provider.** When no provider serves the model, the router
//!   answers each request alone (R28's 400), whatever the order.
//!
//! Anything else (a failure, a retry, a 429 from the cap, streams, a
//! Chutes step that meets a fault or could drain an instance) is left to
//! the interleaving: the model stops predicting the run there.

use super::registry::{Kind, Registry, DEMOTED_AT};
use super::request::{Asks, Prediction, Seen, ROUNDS};
use super::Facts;
use crate::fault::{HostEvent, RequestKind};
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
    // success would promote, could change the group mid-step; a declared
    // window makes each body's size matter (R44). Before a request's first
    // attempt only the other `k - 1` requests can have failed, each at most
    // once per round on any one provider (R20); a quiet step fails nowhere.
    // A declared window makes each body's size matter (R44): the requests
    // are judged together only when they send the same body, so that one
    // estimate orders them all, and when none may ask for a count (R43's
    // call and permits are the interleaving's).
    let windowed = list.iter().any(|p| p.window.is_some());
    let group_may_change = list
        .iter()
        .any(|p| plain(&p.kind) && reg.failures(&p.id) + (k as u32 - 1) * ROUNDS >= DEMOTED_AT);
    if k < 2
        || got.len() != k
        || first.stream
        || !specs.iter().all(|s| routes_alike(first, s))
        || specs.iter().any(|s| super::admission::refusal(s).is_some())
        || !cap_admits
        || !registry_still
        || group_may_change
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
    for (spec, lead) in specs.iter().zip(&leads) {
        let p = after.request_seen(facts, spec, &mut seen);
        let quiet = !p.undecided
            && p.status == 200
            && p.attempts.len() == 1
            && p.attempts[0].decision == Decision::Served
            && p.attempts[0].provider == *lead;
        if !quiet {
            return undecided();
        }
        predictions.push(p);
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
    list: &[super::registry::Prov],
    group: &[super::registry::Prov],
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
    let counts_hold = list
        .iter()
        .all(|p| reg.failures(&p.id) + (k as u32 - 1) * ROUNDS < DEMOTED_AT);
    listed && quiet_gateway && counts_hold
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

//! Selection (R15–R18), including the seed PR's review findings on it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::registry::{Discovered, External, SourceRead};
use crate::testing::{rows, FakeProvider};
use crate::tier::Capabilities;

const M: &str = "zai-org/GLM-5.1-FP8";
const PLAIN: Operation = Operation::ChatCompletion;
const STREAM: Operation = Operation::ChatCompletionStream;

fn near(id: &str, key: &str) -> Arc<FakeProvider> {
    FakeProvider::near(id).with_keys([key]).arc()
}

/// `model` served by the NEAR providers `near`, then the secondaries, plus
/// external rows if given (the id is not reserved).
fn registry(
    near: &[&Arc<FakeProvider>],
    secondary: &[&Arc<FakeProvider>],
    external: &[&Arc<FakeProvider>],
) -> Registry {
    let reg = Registry::new();
    for c in secondary {
        reg.register_secondary(M, Arc::clone(c) as Arc<dyn Provider>);
    }
    let ext = if external.is_empty() {
        vec![]
    } else {
        vec![(M, external)]
    };
    reg.refresh(
        SourceRead::Ok(Discovered(if near.is_empty() {
            BTreeMap::new()
        } else {
            rows(&[(M, near)])
        })),
        SourceRead::Ok(External(rows(&ext))),
    );
    reg
}

fn order(reg: &Registry, op: Operation, key: Option<&str>, e2ee: bool) -> Vec<String> {
    reg.select(M, op, key, e2ee)
        .unwrap()
        .ids()
        .map(|p| p.to_string())
        .collect()
}

fn req(op: Operation, model_pub_key: Option<&str>) -> Request<'_> {
    Request {
        op,
        model_pub_key,
        client_e2ee: false,
        estimate: None,
        prefix: None,
    }
}

fn demote(reg: &Registry, provider: &str, failures: u32) {
    let t = reg.load();
    for _ in 0..failures {
        t.health[&ProviderId::new(provider)].record_failure();
    }
}

// ---- R15 ----

#[test]
fn r15_verifiable_model_never_selects_plaintext() {
    let (n1, e1) = (near("n1", "k1"), FakeProvider::external("e1").arc());
    let reg = registry(&[&n1], &[], &[&e1]);
    assert_eq!(reg.view().provider_ids(M), ["n1", "e1"], "registered, but…");
    assert_eq!(order(&reg, PLAIN, None, false), ["n1"]);
    // …not even when the only attested provider is demoted or incapable.
    demote(&reg, "n1", 50);
    assert_eq!(order(&reg, PLAIN, None, false), ["n1"]);
    assert_eq!(order(&reg, STREAM, None, true), ["n1"]);
}

#[test]
fn r15_chutes_only_id_with_a_stray_external_row_fails_closed() {
    let (c1, e1) = (
        FakeProvider::chutes("c1").arc(),
        FakeProvider::external("e1").arc(),
    );
    let reg = Registry::new();
    // Pinned ids never take external rows (R12); an attested id that is
    // neither reserved nor pinned can still hold one, and R15 drops it.
    reg.refresh(
        SourceRead::Ok(Discovered::default()),
        SourceRead::Ok(External(rows(&[(M, &[&e1])]))),
    );
    reg.merge_discovered(Discovered(rows(&[(M, &[&c1])])));
    assert_eq!(reg.view().provider_ids(M), ["c1", "e1"]);
    assert_eq!(order(&reg, PLAIN, None, false), ["c1"]);
    assert_eq!(order(&reg, STREAM, None, true), ["c1"]);
}

#[test]
fn r15_non_attested_only_model_is_served() {
    let (e1, e2) = (
        FakeProvider::external("e1").arc(),
        FakeProvider::external("e2").arc(),
    );
    let reg = registry(&[], &[], &[&e1, &e2]);
    let mut leaders = vec![];
    for _ in 0..2 {
        let o = order(&reg, PLAIN, None, false);
        assert_eq!(o.len(), 2);
        leaders.push(o[0].clone());
    }
    assert_eq!(leaders, ["e1", "e2"]);
}

// ---- R16 ----

#[test]
fn r16_pubkey_restricts_to_providers_holding_the_key() {
    let (n1, n2, n3) = (near("n1", "k1"), near("n2", "k2"), near("n3", "k1"));
    let c1 = FakeProvider::chutes("c1").arc();
    let reg = registry(&[&n1, &n2, &n3], &[&c1], &[]);
    let mut seen = vec![];
    for _ in 0..2 {
        let o = order(&reg, PLAIN, Some("k1"), false);
        assert_eq!(o.len(), 2, "{o:?}");
        assert!(o.iter().all(|p| p == "n1" || p == "n3"), "{o:?}");
        seen.push(o[0].clone());
    }
    assert_eq!(seen, ["n1", "n3"]);
    assert_eq!(order(&reg, PLAIN, Some("k2"), false), ["n2"]);
}

#[test]
fn r16_no_matching_key_is_an_error_not_a_fallback() {
    let n1 = near("n1", "k1");
    let c1 = FakeProvider::chutes("c1").arc();
    let reg = registry(&[&n1], &[&c1], &[]);
    assert_eq!(
        reg.select(M, PLAIN, Some("unknown"), false).unwrap_err(),
        SelectError::NoProviderForPubKey
    );
}

#[test]
fn r16_chutes_is_never_on_the_pubkey_path() {
    let n1 = near("n1", "k1");
    let c1 = FakeProvider::chutes("c1").arc();
    let reg = registry(&[&n1], &[&c1], &[]);
    // Even with the NEAR provider demoted, Chutes does not join the set.
    demote(&reg, "n1", 10);
    assert_eq!(order(&reg, PLAIN, Some("k1"), false), ["n1"]);
    let only_chutes = registry(&[], &[&c1], &[]);
    assert_eq!(
        only_chutes.select(M, PLAIN, Some("k1"), false).unwrap_err(),
        SelectError::NoProviderForPubKey
    );
}

// ---- R17 ----

#[test]
fn r17_three_near_each_lead_a_third_chutes_last() {
    let (n1, n2, n3) = (near("n1", "k"), near("n2", "k"), near("n3", "k"));
    let c1 = FakeProvider::chutes("c1").arc();
    let reg = registry(&[&n1, &n2, &n3], &[&c1], &[]);
    let mut lead: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..300 {
        let o = order(&reg, PLAIN, None, false);
        assert_eq!(o.len(), 4);
        assert_eq!(o[3], "c1");
        *lead.entry(o[0].clone()).or_default() += 1;
    }
    assert_eq!(
        lead,
        BTreeMap::from([("n1".into(), 100), ("n2".into(), 100), ("n3".into(), 100)])
    );
}

#[test]
fn r17_order_is_by_tier_whatever_the_registration_order() {
    // An unprotected id whose sources list Chutes and plaintext before NEAR.
    let (n1, c1, e1) = (
        near("n1", "k"),
        FakeProvider::chutes("c1").arc(),
        FakeProvider::external("e1").arc(),
    );
    let reg = Registry::new();
    reg.merge_discovered(Discovered(rows(&[(M, &[&e1, &c1, &n1])])));
    assert_eq!(order(&reg, PLAIN, None, false), ["n1", "c1"]);
}

#[test]
fn r17_up_to_five_leaders_each_lead_in_turn() {
    for k in 2..=5 {
        let nears: Vec<_> = (0..k).map(|i| near(&format!("n{i}"), "k")).collect();
        let refs: Vec<_> = nears.iter().collect();
        let c1 = FakeProvider::chutes("c1").arc();
        let reg = registry(&refs, &[&c1], &[]);
        for round in 0..2 * k {
            let o = order(&reg, PLAIN, None, false);
            let want: Vec<String> = (0..k).map(|i| format!("n{}", (round + i) % k)).collect();
            assert_eq!(o[..k], want[..], "k={k} round={round}");
            assert_eq!(o[k], "c1");
        }
    }
}

#[test]
fn r17_round_robin_rotates_only_the_leading_group() {
    // Review round 1, non-blocking: rotating the whole list before the tier
    // sort made one of two NEAR providers lead two requests out of three.
    let (n1, n2) = (near("n1", "k"), near("n2", "k"));
    let c1 = FakeProvider::chutes("c1").arc();
    let reg = registry(&[&n1, &n2], &[&c1], &[]);
    let got: Vec<Vec<String>> = (0..4).map(|_| order(&reg, PLAIN, None, false)).collect();
    assert_eq!(
        got,
        [
            ["n1", "n2", "c1"],
            ["n2", "n1", "c1"],
            ["n1", "n2", "c1"],
            ["n2", "n1", "c1"]
        ]
    );
}

#[test]
fn r17_demoted_provider_sorts_after_every_healthy_one() {
    let (n1, n2) = (near("n1", "k"), near("n2", "k"));
    let c1 = FakeProvider::chutes("c1").arc();
    let reg = registry(&[&n1, &n2], &[&c1], &[]);
    demote(&reg, "n1", 9);
    assert_eq!(
        order(&reg, PLAIN, None, false),
        ["n1", "n2", "c1"],
        "9 is not demoted"
    );
    demote(&reg, "n1", 1);
    for _ in 0..3 {
        assert_eq!(order(&reg, PLAIN, None, false), ["n2", "c1", "n1"]);
    }
    // Everyone demoted: back to tier order, round-robin among the NEARs.
    demote(&reg, "n2", 10);
    demote(&reg, "c1", 10);
    let o = order(&reg, PLAIN, None, false);
    assert_eq!(o[2], "c1");
}

/// R17 with two demoted providers ahead of a healthy one (a sort that moves
/// each demoted provider back one place only would leave n1 first): the
/// healthy providers lead in tier order, the demoted follow in theirs.
#[test]
fn r17_two_demoted_ahead_of_a_healthy_one_sort_behind_it() {
    let (n1, n2, n3) = (near("n1", "k1"), near("n2", "k2"), near("n3", "k3"));
    let c1 = FakeProvider::chutes("c1").arc();
    let reg = registry(&[&n1, &n2, &n3], &[&c1], &[]);
    demote(&reg, "n1", 10);
    demote(&reg, "n2", 12);
    for _ in 0..3 {
        assert_eq!(order(&reg, PLAIN, None, false), ["n3", "c1", "n1", "n2"]);
    }
    // Three demoted ahead of the healthy Chutes: Chutes alone leads.
    demote(&reg, "n3", 10);
    assert_eq!(order(&reg, PLAIN, None, false), ["c1", "n1", "n2", "n3"]);
}

/// `Registry::round_robin` reads R17's position without moving it: the
/// order it reports is the one the next plain request gets, and reading it
/// any number of times takes no turn (pubkey requests do not count).
#[test]
fn r17_round_robin_position_is_read_without_taking_a_turn() {
    let (n1, n2, n3) = (near("n1", "k"), near("n2", "k"), near("n3", "k"));
    let c1 = FakeProvider::chutes("c1").arc();
    let reg = registry(&[&n1, &n2, &n3], &[&c1], &[]);
    let ids = |v: &RoundRobinView| v.next.iter().map(|p| p.to_string()).collect::<Vec<_>>();
    for turn in 0..5 {
        let seen = reg.round_robin(M).unwrap();
        // R65: the counter wraps at the leading group's size (3).
        assert_eq!(seen.counter, turn % 3);
        assert_eq!(reg.round_robin(M).unwrap(), seen, "a read takes no turn");
        assert_eq!(ids(&seen), order(&reg, PLAIN, None, false));
    }
    order(&reg, PLAIN, Some("k"), false);
    assert_eq!(
        reg.round_robin(M).unwrap().counter,
        2,
        "pubkey turns are apart"
    );
    demote(&reg, "n1", 10);
    let seen = reg.round_robin(M).unwrap();
    assert_eq!(ids(&seen).last().map(String::as_str), Some("n1"));
    assert_eq!(ids(&seen), order(&reg, PLAIN, None, false));
    assert_eq!(reg.round_robin("unknown"), None);
}

#[test]
fn r17_pubkey_routed_requests_use_their_own_counter() {
    let (n1, n2) = (near("n1", "k"), near("n2", "k"));
    let reg = registry(&[&n1, &n2], &[], &[]);
    let lead = |key| order(&reg, PLAIN, key, false)[0].clone();
    assert_eq!(lead(None), "n1");
    assert_eq!(lead(Some("k")), "n1", "its own counter starts fresh");
    assert_eq!(lead(Some("k")), "n2");
    assert_eq!(lead(None), "n2");
    assert_eq!(lead(None), "n1");
}

#[test]
fn r65_rotation_happens_before_the_capability_filters() {
    // n2 cannot stream: a streamed request's candidates are [n1] whoever
    // leads, but the turn it took is spent all the same.
    let n1 = near("n1", "k");
    let n2 = FakeProvider::near("n2")
        .with_keys(["k"])
        .with_streaming(false)
        .arc();
    let reg = registry(&[&n1, &n2], &[], &[]);
    assert_eq!(order(&reg, STREAM, None, false), ["n1"], "turn 0");
    assert_eq!(order(&reg, PLAIN, None, false), ["n2", "n1"], "turn 1");
    assert_eq!(
        order(&reg, STREAM, None, false),
        ["n1"],
        "turn 0: n2 filtered"
    );
    assert_eq!(order(&reg, PLAIN, None, false), ["n2", "n1"], "turn 1");
}

#[test]
fn r65_counter_stores_value_plus_one_mod_the_group_size() {
    // Two leaders (n3 demoted): turns 0, 1, 0 store 1, 0, 1. When n3 is
    // healthy again the group has three: the stored 1 picks n2 (a counter
    // that only counted up, at 3, would pick n1).
    let (n1, n2, n3) = (near("n1", "k1"), near("n2", "k2"), near("n3", "k3"));
    let reg = registry(&[&n1, &n2, &n3], &[], &[]);
    demote(&reg, "n3", 10);
    let leads: Vec<String> = (0..3)
        .map(|_| order(&reg, PLAIN, None, false)[0].clone())
        .collect();
    assert_eq!(leads, ["n1", "n2", "n1"]);
    reg.load().health[&ProviderId::new("n3")].record_success();
    assert_eq!(order(&reg, PLAIN, None, false), ["n2", "n3", "n1"]);
    assert_eq!(order(&reg, PLAIN, None, false), ["n3", "n1", "n2"]);
    assert_eq!(order(&reg, PLAIN, None, false), ["n1", "n2", "n3"]);
}

#[test]
fn r65_one_candidate_leaves_the_counter_alone() {
    // n2 demoted: n1 leads alone, and takes no turn.
    let (n1, n2) = (near("n1", "k1"), near("n2", "k2"));
    let reg = registry(&[&n1, &n2], &[], &[]);
    demote(&reg, "n2", 10);
    for _ in 0..3 {
        assert_eq!(order(&reg, PLAIN, None, false), ["n1", "n2"]);
    }
    reg.load().health[&ProviderId::new("n2")].record_success();
    assert_eq!(order(&reg, PLAIN, None, false), ["n1", "n2"], "turn 0");
    assert_eq!(order(&reg, PLAIN, None, false), ["n2", "n1"], "turn 1");
}

#[test]
fn r17_selection_never_waits_for_a_writer() {
    let n1 = near("n1", "k");
    let reg = Arc::new(registry(&[&n1], &[], &[]));
    let _writer = reg.writer_lock();
    let (tx, rx) = std::sync::mpsc::channel();
    let r = reg.clone();
    std::thread::spawn(move || {
        let ok = r.select(M, PLAIN, None, false).is_ok();
        let _ = tx.send(ok);
    });
    assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok(true));
}

fn lent(reg: &Registry, op: Operation, key: Option<&str>) -> Vec<String> {
    reg.with_selection(M, op, key, false, Shape::default(), |sel| {
        sel.ids().map(|p| p.to_string()).collect()
    })
    .unwrap()
}

#[test]
fn r17_lent_and_owned_selections_are_one_selection_on_one_counter() {
    // `with_selection` and `select` take turns from the same counter: the
    // rotation goes on whichever is called.
    let (n1, n2, n3) = (near("n1", "k"), near("n2", "k"), near("n3", "k"));
    let c1 = FakeProvider::chutes("c1").arc();
    let reg = registry(&[&n1, &n2, &n3], &[&c1], &[]);
    let got: Vec<Vec<String>> = (0..6)
        .map(|i| {
            if i % 2 == 0 {
                lent(&reg, PLAIN, None)
            } else {
                order(&reg, PLAIN, None, false)
            }
        })
        .collect();
    let want: Vec<Vec<String>> = (0..6)
        .map(|t| {
            let mut o: Vec<String> = (0..3).map(|i| format!("n{}", (t + i) % 3 + 1)).collect();
            o.push("c1".into());
            o
        })
        .collect();
    assert_eq!(got, want);
    let err = reg
        .with_selection(M, PLAIN, Some("nobody"), false, Shape::default(), |_| ())
        .unwrap_err();
    assert_eq!(err, SelectError::NoProviderForPubKey);
    let unknown = reg
        .with_selection(
            "no/such-model",
            PLAIN,
            None,
            false,
            Shape::default(),
            |_| (),
        )
        .unwrap_err();
    assert_eq!(unknown, SelectError::UnknownModel);
}

#[test]
fn r17_lent_selection_sees_every_write_at_once_through_the_thread_cache() {
    // The thread's cached snapshot is revalidated on every call: a write
    // (here a refresh dropping n2 and a demotion) shows in the very next
    // selection on the same thread.
    let (n1, n2) = (near("n1", "k"), near("n2", "k"));
    let c1 = FakeProvider::chutes("c1").arc();
    let reg = registry(&[&n1, &n2], &[&c1], &[]);
    assert_eq!(lent(&reg, PLAIN, None), ["n1", "n2", "c1"]);
    reg.refresh(
        SourceRead::Ok(Discovered(rows(&[(M, &[&n1])]))),
        SourceRead::Ok(External::default()),
    );
    assert_eq!(lent(&reg, PLAIN, None), ["n1", "c1"]);
    demote(&reg, "n1", 10);
    assert_eq!(lent(&reg, PLAIN, None), ["c1", "n1"]);
}

#[test]
fn r17_lent_selections_of_two_registries_on_one_thread_stay_apart() {
    // One thread alternating between registries (and nesting one selection
    // inside another's closure) always reads the registry it asked.
    let (a1, b1) = (near("a1", "k"), near("b1", "k"));
    let a = registry(&[&a1], &[], &[]);
    let b = registry(&[&b1], &[], &[]);
    for _ in 0..3 {
        assert_eq!(lent(&a, PLAIN, None), ["a1"]);
        assert_eq!(lent(&b, PLAIN, None), ["b1"]);
    }
    let nested = a
        .with_selection(M, PLAIN, None, false, Shape::default(), |outer| {
            let inner = lent(&b, PLAIN, None);
            let again = lent(&a, PLAIN, None);
            (outer.provider(0).id().to_string(), inner, again)
        })
        .unwrap();
    assert_eq!(
        nested,
        (
            "a1".to_string(),
            vec!["b1".to_string()],
            vec!["a1".to_string()]
        )
    );
    assert_eq!(lent(&a, PLAIN, None), ["a1"]);
    assert_eq!(lent(&b, PLAIN, None), ["b1"]);
}

#[test]
fn r17_every_order_buffer_rotates_the_leading_group_alike() {
    // 4 (small stack buffer), 5 and 64 (the larger stack buffer) and 65
    // (heap) providers: each NEAR leads in turn, Chutes last, lent or owned.
    for k in [3, 4, 63, 64] {
        let nears: Vec<_> = (0..k).map(|i| near(&format!("n{i}"), "k")).collect();
        let refs: Vec<_> = nears.iter().collect();
        let c1 = FakeProvider::chutes("c1").arc();
        let reg = registry(&refs, &[&c1], &[]);
        for turn in 0..k + 2 {
            let o = if turn % 2 == 0 {
                lent(&reg, PLAIN, None)
            } else {
                order(&reg, PLAIN, None, false)
            };
            let want: Vec<String> = (0..k)
                .map(|i| format!("n{}", (turn + i) % k))
                .chain(["c1".to_string()])
                .collect();
            assert_eq!(o, want, "k={k} turn={turn}");
        }
    }
}

#[test]
fn r17_r47_health_is_weighed_whenever_any_provider_fails_or_is_warmed() {
    // Selection skips reading health only while the registry's `Notable`
    // count is zero; it follows failures, samples, rebuilds and removals.
    let (n1, n2) = (near("n1", "k"), near("n2", "k"));
    let c1 = FakeProvider::chutes("c1").arc();
    let reg = registry(&[&n1, &n2], &[&c1], &[]);
    let none = |reg: &Registry| reg.load().notable.none();
    assert!(none(&reg));
    demote(&reg, "n1", 10);
    assert!(!none(&reg));
    for _ in 0..3 {
        assert_eq!(lent(&reg, PLAIN, None), ["n2", "c1", "n1"]);
    }
    // A rebuild carries the count with the health.
    reg.refresh(
        SourceRead::Ok(Discovered(rows(&[(M, &[&n1, &n2])]))),
        SourceRead::Ok(External::default()),
    );
    assert_eq!(lent(&reg, PLAIN, None), ["n2", "c1", "n1"]);
    reg.load().health[&ProviderId::new("n1")].record_success();
    assert!(none(&reg));
    // R47: warmed providers are weighed too (n2 slow against n1).
    samples(&reg, "n1", 50, 8);
    samples(&reg, "n2", 3_000, 8);
    assert!(!none(&reg));
    assert_eq!(lent(&reg, PLAIN, None), ["n1", "c1", "n2"]);
    // A provider dropped from every model takes its terms back once no
    // snapshot holds it.
    reg.refresh(
        SourceRead::Ok(Discovered(BTreeMap::new())),
        SourceRead::Ok(External::default()),
    );
    assert_eq!(lent(&reg, PLAIN, None), ["c1"]);
    assert!(none(&reg));
}

// ---- R18 ----

#[test]
fn r18_streaming_operations_are_listed() {
    assert_eq!(Operation::STREAMING, &[Operation::ChatCompletionStream]);
    assert!(Operation::ChatCompletionStream.is_streaming());
    assert!(!Operation::ChatCompletion.is_streaming());
}

#[test]
fn r18_stream_drops_non_streaming_providers_when_one_can_stream() {
    let n1 = near("n1", "k");
    let c1 = FakeProvider::chutes("c1").arc();
    let reg = registry(&[&n1], &[&c1], &[]);
    assert_eq!(order(&reg, STREAM, None, false), ["n1"]);
    assert_eq!(order(&reg, PLAIN, None, false), ["n1", "c1"]);
    // Demotion does not bring the incapable provider back.
    demote(&reg, "n1", 10);
    assert_eq!(order(&reg, STREAM, None, false), ["n1"]);
}

#[test]
fn r18_stream_keeps_the_list_when_nothing_can_stream() {
    let c1 = FakeProvider::chutes("c1").arc();
    let reg = registry(&[], &[&c1], &[]);
    assert_eq!(order(&reg, STREAM, None, false), ["c1"]);
    let on = FakeProvider::chutes("c2").with_streaming(true).arc();
    let reg = registry(&[], &[&c1, &on], &[]);
    assert_eq!(order(&reg, STREAM, None, false), ["c2"]);
}

#[test]
fn r18_client_e2ee_drops_incapable_providers_when_one_is_capable() {
    // Review round 3, blocking: the client-E2EE twin of the streaming filter.
    let n1 = near("n1", "k");
    let c1 = FakeProvider::chutes("c1").with_streaming(true).arc();
    let reg = registry(&[&n1], &[&c1], &[]);
    assert_eq!(order(&reg, PLAIN, None, true), ["n1"]);
    assert_eq!(order(&reg, STREAM, None, true), ["n1"]);
    assert_eq!(order(&reg, STREAM, None, false), ["n1", "c1"]);
    let only = registry(&[], &[&c1], &[]);
    assert_eq!(
        order(&only, PLAIN, None, true),
        ["c1"],
        "kept: its refusal surfaces"
    );
}

#[test]
fn r18_filters_only_count_capability_within_the_remaining_set() {
    // A NEAR provider that cannot stream, pubkey-routed: the stream filter
    // looks at the key's providers only, so the list is kept.
    let n1 = FakeProvider::new(
        "n1",
        Tier::Near,
        Capabilities {
            streaming: false,
            client_e2ee: true,
        },
    )
    .with_keys(["k1"])
    .arc();
    let n2 = near("n2", "k2");
    let reg = registry(&[&n1, &n2], &[], &[]);
    assert_eq!(order(&reg, STREAM, Some("k1"), false), ["n1"]);
    assert_eq!(order(&reg, STREAM, None, false), ["n2"]);
}

#[test]
fn r15_r16_r18_the_trace_names_why_each_provider_was_dropped() {
    let n1 = near("n1", "k1");
    let n2 = FakeProvider::near("n2")
        .with_keys(["k2"])
        .with_streaming(false)
        .arc();
    let c1 = FakeProvider::chutes("c1").with_streaming(false).arc();
    let e1 = FakeProvider::external("e1").arc();
    let reg = Registry::new();
    reg.register_secondary(M, Arc::clone(&c1) as Arc<dyn Provider>);
    reg.refresh(
        SourceRead::Ok(Discovered(rows(&[(M, &[&n1, &n2])]))),
        SourceRead::Ok(External(BTreeMap::new())),
    );
    // The external row cannot be loaded for a pinned id (R12), so plant the
    // R15 case on an unprotected id instead.
    let why = |op, key: Option<&str>| {
        let mut trace = SelectTrace::default();
        let sel = select_observed(reg.load(), M, req(op, key), &mut trace).unwrap();
        let table = reg.load();
        let names: Vec<(String, Dropped)> = trace
            .dropped
            .iter()
            .map(|(slot, why)| (table.slots[*slot as usize].provider.id().to_string(), *why))
            .collect();
        (sel.ids().map(|p| p.to_string()).collect::<Vec<_>>(), names)
    };
    let (order, dropped) = why(STREAM, None);
    assert_eq!(order, ["n1"]);
    assert_eq!(
        dropped,
        [
            ("n2".to_string(), Dropped::CannotStream),
            ("c1".to_string(), Dropped::CannotStream)
        ]
    );
    let (order, dropped) = why(PLAIN, Some("k2"));
    assert_eq!(order, ["n2"]);
    assert_eq!(
        dropped,
        [
            ("n1".to_string(), Dropped::NoMatchingKey),
            ("c1".to_string(), Dropped::NoMatchingKey)
        ]
    );

    const P: &str = "openai/gpt-oss-120b";
    let reg2 = Registry::new();
    reg2.refresh(
        SourceRead::Ok(Discovered(rows(&[(P, &[&n1])]))),
        SourceRead::Ok(External(rows(&[(P, &[&e1])]))),
    );
    let mut trace = SelectTrace::default();
    let sel = select_observed(reg2.load(), P, req(PLAIN, None), &mut trace).unwrap();
    assert_eq!(sel.ids().map(|p| p.to_string()).collect::<Vec<_>>(), ["n1"]);
    let t = reg2.load();
    let dropped: Vec<_> = trace
        .dropped
        .iter()
        .map(|(s, w)| (t.slots[*s as usize].provider.id().to_string(), *w))
        .collect();
    assert_eq!(
        dropped,
        [("e1".to_string(), Dropped::PlaintextForVerifiableModel)]
    );
}

/// R17 in the trace: the leading group's size and the turn it took, the
/// same turn the untraced selection would have taken; a lone leader takes
/// no turn. A selection is never empty (no provider is an error).
#[test]
fn r17_the_trace_records_the_leading_group_and_its_turn() {
    let (n1, n2) = (near("n1", "k1"), near("n2", "k2"));
    let c1 = FakeProvider::chutes("c1").arc();
    let reg = registry(&[&n1, &n2], &[&c1], &[]);
    let traced = |reg: &Registry| {
        let mut trace = SelectTrace::default();
        let sel = select_observed(reg.load(), M, req(PLAIN, None), &mut trace).unwrap();
        assert!(!sel.is_empty());
        assert_eq!(sel.len(), 3);
        let first = sel.ids().next().unwrap().to_string();
        (trace.lead, first)
    };
    assert_eq!(
        traced(&reg),
        (
            Some((2, Placement::RoundRobin { turn: 0 })),
            "n1".to_string()
        )
    );
    let sel = reg.select(M, PLAIN, None, false).unwrap();
    // Its Debug is the order, for the log.
    let shown = format!("{sel:?}");
    assert!(shown.starts_with('[') && shown.ends_with(']'), "{shown}");
    let at = |id: &str| shown.find(id).unwrap_or_else(|| panic!("{id} in {shown}"));
    assert!(at("n2") < at("n1") && at("n1") < at("c1"), "{shown}");
    drop(sel);
    // The untraced selection took turn 1; the counter holds (1 + 1) mod 2
    // (R65), so the traced one takes turn 0 again.
    assert_eq!(
        traced(&reg),
        (
            Some((2, Placement::RoundRobin { turn: 0 })),
            "n1".to_string()
        )
    );
    let mut trace = SelectTrace::default();
    select_observed(reg.load(), M, req(PLAIN, Some("k2")), &mut trace).unwrap();
    assert_eq!(trace.lead, None, "one provider holds k2: no rotation");
}

// ---- R47 latency demotion, R48 prefix placement ----

/// Gives `provider` `n` TTFT samples of `ms` each (the average is then `ms`).
fn samples(reg: &Registry, provider: &str, ms: u64, n: u32) {
    let t = reg.load();
    for _ in 0..n {
        t.health[&ProviderId::new(provider)].record_ttft(Duration::from_millis(ms));
    }
}

fn three_near_and_chutes() -> (Registry, [Arc<FakeProvider>; 4]) {
    let (n1, n2, n3) = (near("n1", "k1"), near("n2", "k2"), near("n3", "k3"));
    let c1 = FakeProvider::chutes("c1").with_streaming(true).arc();
    let reg = registry(&[&n1, &n2], &[&c1], &[]);
    (reg, [n1, n2, n3, c1])
}

#[test]
fn r47_slow_warmed_near_sorts_behind_chutes() {
    let (reg, _keep) = three_near_and_chutes();
    samples(&reg, "n1", 2000, 8);
    samples(&reg, "n2", 100, 8);
    for _ in 0..4 {
        // n2 leads alone (no rotation), Chutes next, the slow NEAR last.
        assert_eq!(order(&reg, PLAIN, None, false), ["n2", "c1", "n1"]);
        assert_eq!(order(&reg, STREAM, None, false), ["n2", "c1", "n1"]);
    }
    let view = reg.view();
    let slow: Vec<bool> = view.models[M].iter().map(|p| p.latency_demoted).collect();
    assert_eq!(slow, [true, false, false], "the view shows the same flag");
}

#[test]
fn r47_no_demotion_under_twice_the_fastest_or_under_500_ms() {
    let (reg, _keep) = three_near_and_chutes();
    samples(&reg, "n1", 900, 8);
    samples(&reg, "n2", 600, 8);
    let firsts: Vec<String> = (0..4)
        .map(|_| order(&reg, PLAIN, None, false)[0].clone())
        .collect();
    assert_eq!(firsts, ["n1", "n2", "n1", "n2"], "900 < 2 × 600: both lead");

    let (reg, _keep) = three_near_and_chutes();
    samples(&reg, "n1", 400, 8);
    samples(&reg, "n2", 100, 8);
    assert_eq!(order(&reg, PLAIN, None, false), ["n1", "n2", "c1"]);
    assert_eq!(order(&reg, PLAIN, None, false), ["n2", "n1", "c1"]);
}

#[test]
fn r47_unwarmed_providers_are_never_demoted_and_never_set_the_floor() {
    let (reg, _keep) = three_near_and_chutes();
    // Seven samples: not warmed, so not demoted however slow.
    samples(&reg, "n1", 5000, 7);
    samples(&reg, "n2", 100, 8);
    assert_eq!(order(&reg, PLAIN, None, false), ["n1", "n2", "c1"]);
    // Eight: warmed, demoted.
    samples(&reg, "n1", 5000, 1);
    assert_eq!(order(&reg, PLAIN, None, false), ["n2", "c1", "n1"]);

    // A lone warmed provider is its own floor: never demoted; a fast but
    // unwarmed peer does not set the floor.
    let (reg, _keep) = three_near_and_chutes();
    samples(&reg, "n1", 5000, 20);
    samples(&reg, "n2", 10, 7);
    assert_eq!(order(&reg, PLAIN, None, false), ["n1", "n2", "c1"]);
}

#[test]
fn r47_hard_demotion_outranks_latency_demotion() {
    let (reg, _keep) = three_near_and_chutes();
    samples(&reg, "n1", 100, 8);
    samples(&reg, "n2", 3000, 8);
    samples(&reg, "c1", 100, 8);
    demote(&reg, "n1", 10);
    // Keys: c1 (healthy, fast), n2 (latency-demoted), n1 (hard-demoted).
    assert_eq!(order(&reg, PLAIN, None, false), ["c1", "n2", "n1"]);
}

#[test]
fn r47_the_leading_group_leaves_a_latency_demoted_provider_out() {
    let (n1, n2, n3) = (near("n1", "k1"), near("n2", "k2"), near("n3", "k3"));
    let reg = registry(&[&n1, &n2, &n3], &[], &[]);
    samples(&reg, "n1", 100, 8);
    samples(&reg, "n2", 4000, 8);
    samples(&reg, "n3", 120, 8);
    let orders: Vec<Vec<String>> = (0..3).map(|_| order(&reg, PLAIN, None, false)).collect();
    assert_eq!(
        orders,
        [["n1", "n3", "n2"], ["n3", "n1", "n2"], ["n1", "n3", "n2"]]
    );
}

#[test]
fn r47_recovery_comes_only_from_new_samples() {
    let (reg, _keep) = three_near_and_chutes();
    samples(&reg, "n1", 2000, 8);
    samples(&reg, "n2", 100, 8);
    assert_eq!(order(&reg, PLAIN, None, false)[2], "n1");
    // Successes and failures do not touch the average (no decay, no reset).
    let t = reg.load();
    t.health[&ProviderId::new("n1")].record_success();
    t.health[&ProviderId::new("n1")].record_failure();
    t.health[&ProviderId::new("n1")].record_success();
    assert_eq!(order(&reg, PLAIN, None, false)[2], "n1");
    // Fast samples at α = 0.1 bring it back to 500 ms (no longer over the
    // floor) before twice the fastest: 100 + 1900 × 0.9^k ≤ 500.
    let mut n = 0;
    while order(&reg, PLAIN, None, false).last().unwrap() == "n1" {
        samples(&reg, "n1", 100, 1);
        n += 1;
        assert!(n < 100, "never recovered");
    }
    // First at k = 15.
    assert_eq!(n, 15);
}

fn stream_req(prefix: u64) -> Request<'static> {
    Request {
        op: STREAM,
        model_pub_key: None,
        client_e2ee: false,
        estimate: None,
        prefix: Some(prefix),
    }
}

#[test]
fn r48_streamed_chat_is_placed_by_its_prefix_and_leaves_the_counter_alone() {
    let (n1, n2, n3) = (near("n1", "k1"), near("n2", "k2"), near("n3", "k3"));
    let reg = registry(&[&n1, &n2, &n3], &[], &[]);
    let first = |r: Request<'_>| {
        let sel = reg
            .select_shaped(
                M,
                r.op,
                None,
                false,
                Shape {
                    estimate: None,
                    prefix: r.prefix,
                },
            )
            .unwrap();
        let first = sel.ids().next().unwrap().to_string();
        first
    };
    // The same prefix: the same leader, every time (hash 7 % 3 = 1).
    for _ in 0..30 {
        assert_eq!(first(stream_req(7)), "n2");
    }
    assert_eq!(first(stream_req(9)), "n1");
    assert_eq!(first(stream_req(11)), "n3");
    // The counter never moved: non-streamed traffic starts at turn 0 and
    // splits exactly one third each.
    let plain: Vec<String> = (0..30)
        .map(|_| order(&reg, PLAIN, None, false)[0].clone())
        .collect();
    assert_eq!(&plain[..3], ["n1", "n2", "n3"]);
    for n in ["n1", "n2", "n3"] {
        assert_eq!(plain.iter().filter(|p| *p == n).count(), 10, "{n}");
    }
    // A prefix on a non-streamed operation is ignored: round-robin.
    let sel = reg
        .select_shaped(
            M,
            PLAIN,
            None,
            false,
            Shape {
                estimate: None,
                prefix: Some(7),
            },
        )
        .unwrap();
    assert_eq!(sel.ids().next().unwrap().as_str(), "n1", "turn 30");
}

#[test]
fn r48_the_trace_names_the_placement() {
    let (n1, n2) = (near("n1", "k1"), near("n2", "k2"));
    let reg = registry(&[&n1, &n2], &[], &[]);
    let mut trace = SelectTrace::default();
    select_observed(reg.load(), M, stream_req(5), &mut trace).unwrap();
    assert_eq!(trace.lead, Some((2, Placement::Prefix { hash: 5 })));
    assert_eq!(trace.kept.len(), 2);
    assert!(trace.kept.iter().all(|p| !p.key.latency_demoted));
}

// ---- SPEC-parity R44: capacity-aware ordering ----

const BASE: u32 = 262_144;
const LONG: u32 = 1_048_576;

/// Base NEAR (262 144), long NEAR (1 048 576), Chutes (1 048 576).
fn tiers() -> Registry {
    let base = FakeProvider::near("base").with_context_window(BASE).arc();
    let long = FakeProvider::near("long").with_context_window(LONG).arc();
    let chutes = FakeProvider::chutes("chutes")
        .with_context_window(LONG)
        .arc();
    // Registered long first: the order must come from the windows.
    registry(&[&long, &base], &[&chutes], &[])
}

fn sized(reg: &Registry, estimate: Option<u32>) -> Vec<String> {
    reg.select_shaped(
        M,
        PLAIN,
        None,
        false,
        Shape {
            estimate,
            prefix: None,
        },
    )
    .unwrap()
    .ids()
    .map(|p| p.to_string())
    .collect()
}

#[test]
fn r44_capacity_orders_best_fit_within_tier() {
    let reg = tiers();
    for (estimate, want) in [
        (Some(10_000), ["base", "long", "chutes"]),
        (Some(300_000), ["long", "chutes", "base"]),
        (None, ["base", "long", "chutes"]),
        (Some(2_000_000), ["long", "base", "chutes"]),
    ] {
        assert_eq!(sized(&reg, estimate), want, "estimate {estimate:?}");
    }
    // Exactly the window fits (overflow is strict).
    assert_eq!(sized(&reg, Some(BASE)), ["base", "long", "chutes"]);
    assert_eq!(sized(&reg, Some(BASE + 1))[0], "long");
}

#[test]
fn r44_two_capacity_tiers_never_share_traffic_but_equal_windows_rotate() {
    let reg = tiers();
    for _ in 0..6 {
        assert_eq!(
            sized(&reg, Some(10))[0],
            "base",
            "the smaller tier always leads"
        );
    }
    let a = FakeProvider::near("a").with_context_window(BASE).arc();
    let b = FakeProvider::near("b").with_context_window(BASE).arc();
    let c = FakeProvider::near("c").with_context_window(LONG).arc();
    let reg = registry(&[&a, &b, &c], &[], &[]);
    let leads: Vec<String> = (0..4).map(|_| sized(&reg, None)[0].clone()).collect();
    assert_eq!(leads, ["a", "b", "a", "b"], "equal keys share the lead");
    assert!((0..4).all(|_| sized(&reg, Some(LONG))[0] == "c"));
}

#[test]
fn r44_every_window_exceeded_puts_undeclared_first_and_tier_outranks_capacity() {
    let base = FakeProvider::near("base").with_context_window(1_000).arc();
    let long = FakeProvider::near("long").with_context_window(10_000).arc();
    let chutes = FakeProvider::chutes("chutes").arc();
    let reg = registry(&[&base, &long], &[&chutes], &[]);
    assert_eq!(sized(&reg, Some(50_000)), ["chutes", "long", "base"]);
    // Undeclared never overflows and sorts after every declared window of
    // its tier; tier comes before capacity when nothing overflows.
    assert_eq!(sized(&reg, Some(500)), ["base", "long", "chutes"]);
}

#[test]
fn r44_demotion_sorts_after_overflow_and_before_tier() {
    let reg = tiers();
    demote(&reg, "base", 10);
    // Base fits but is demoted: behind every non-demoted fitting provider.
    assert_eq!(sized(&reg, Some(10_000)), ["long", "chutes", "base"]);
    // Overflow still outranks demotion: a fitting demoted provider leads
    // an overflowing one.
    let small = FakeProvider::near("small").with_context_window(100).arc();
    let big = FakeProvider::near("big").with_context_window(1_000).arc();
    let reg = registry(&[&small, &big], &[], &[]);
    demote(&reg, "big", 10);
    assert_eq!(sized(&reg, Some(500)), ["big", "small"]);
}

/// The routing trace says why each provider sorted where it did: its
/// failures, TTFT state and latency demotion, and the floor it was judged by.
#[test]
fn r47_the_trace_shows_each_providers_latency_state() {
    let (reg, _keep) = three_near_and_chutes();
    samples(&reg, "n1", 2000, 8);
    samples(&reg, "n2", 100, 3);
    samples(&reg, "n2", 100, 5);
    let mut trace = SelectTrace::default();
    select_observed(reg.load(), M, req(PLAIN, None), &mut trace).unwrap();
    assert_eq!(trace.floor.min_ms(), Some(100.0));
    let shown: Vec<String> = trace.kept.iter().map(describe).collect();
    assert_eq!(
        shown,
        [
            "n2 [near, 0 failures, TTFT 100.0 ms over 8 samples]",
            "c1 [attested3p, 0 failures, no TTFT sample]",
            "n1 [near, 0 failures, TTFT 2000.0 ms over 8 samples, latency-demoted]",
        ]
    );
    samples(&reg, "c1", 50, 2);
    let mut trace = SelectTrace::default();
    select_observed(reg.load(), M, req(PLAIN, None), &mut trace).unwrap();
    assert!(describe(&trace.kept[1]).contains("TTFT 50.0 ms over 2 samples (warming)"));
}

// ---- Gaps found by cargo mutants (README's "cargo-mutants") ----

/// A lent selection has at least one provider: no provider is an error,
/// and the capability filters never empty it (R18 keeps a lone incapable
/// provider for its refusal).
#[test]
fn r17_a_lent_selection_is_never_empty() {
    let n1 = FakeProvider::near("n1")
        .with_keys(["k"])
        .with_streaming(false)
        .arc();
    let reg = registry(&[&n1], &[], &[]);
    for op in [PLAIN, STREAM] {
        let (empty, len) = reg
            .with_selection(M, op, None, false, Shape::default(), |sel| {
                (sel.is_empty(), sel.len())
            })
            .unwrap();
        assert!(!empty, "{op:?}");
        assert_eq!(len, 1, "{op:?}");
    }
}

/// R65: a counter holding a value at or above the size of a leading group
/// that has since shrunk picks the turn value mod the new size, and stores
/// (value + 1) mod the new size, not value + 1.
#[test]
fn r65_a_counter_above_a_shrunken_group_wraps_into_it() {
    // Four leaders; three turns leave the counter at 3. Two demoted: the
    // group is [n1, n2], turn 3 mod 2 = 1 (n2 leads), stored (3 + 1) mod 2.
    let nears: Vec<_> = (1..=4).map(|i| near(&format!("n{i}"), "k")).collect();
    let refs: Vec<_> = nears.iter().collect();
    let reg = registry(&refs, &[], &[]);
    for _ in 0..3 {
        order(&reg, PLAIN, None, false);
    }
    assert_eq!(reg.round_robin(M).unwrap().counter, 3);
    demote(&reg, "n3", 10);
    demote(&reg, "n4", 10);
    assert_eq!(order(&reg, PLAIN, None, false), ["n2", "n1", "n3", "n4"]);
    assert_eq!(reg.round_robin(M).unwrap().counter, 0, "(3 + 1) mod 2");
    assert_eq!(order(&reg, PLAIN, None, false), ["n1", "n2", "n3", "n4"]);

    // Value equal to the new size: three leaders leave the counter at 2;
    // with one demoted, turn 2 mod 2 = 0 (n1 leads), stored (2 + 1) mod 2.
    let (n1, n2, n3) = (near("n1", "k"), near("n2", "k"), near("n3", "k"));
    let reg = registry(&[&n1, &n2, &n3], &[], &[]);
    for _ in 0..2 {
        order(&reg, PLAIN, None, false);
    }
    assert_eq!(reg.round_robin(M).unwrap().counter, 2);
    demote(&reg, "n3", 10);
    let next = reg.round_robin(M).unwrap().next;
    assert_eq!(
        next.iter().map(ProviderId::as_str).collect::<Vec<_>>(),
        ["n1", "n2", "n3"]
    );
    assert_eq!(order(&reg, PLAIN, None, false), ["n1", "n2", "n3"]);
    assert_eq!(reg.round_robin(M).unwrap().counter, 1, "(2 + 1) mod 2");
    assert_eq!(order(&reg, PLAIN, None, false), ["n2", "n1", "n3"]);
}

/// R48: the leading group is rotated left by hash mod its size for every
/// 64-bit hash, the largest included.
#[test]
fn r48_every_prefix_hash_places_by_hash_mod_the_group_size() {
    let (n1, n2, n3) = (near("n1", "k1"), near("n2", "k2"), near("n3", "k3"));
    let reg = registry(&[&n1, &n2, &n3], &[], &[]);
    let group = ["n1", "n2", "n3"];
    for hash in [0, 1, 2, u64::MAX - 2, u64::MAX - 1, u64::MAX] {
        let sel = select_observed(reg.load(), M, stream_req(hash), &mut ()).unwrap();
        let want = group[usize::try_from(hash % 3).unwrap()];
        assert_eq!(sel.ids().next().unwrap().as_str(), want, "hash {hash}");
    }
}

/// R44: with every window exceeded the biggest window leads, alone, even
/// when two windows are close (their ranks must stay distinct).
#[test]
fn r44_every_window_exceeded_the_bigger_of_two_close_windows_leads_alone() {
    let small = FakeProvider::near("small")
        .with_context_window(2_000_000)
        .arc();
    let big = FakeProvider::near("big")
        .with_context_window(2_000_400)
        .arc();
    let reg = registry(&[&small, &big], &[], &[]);
    for _ in 0..4 {
        assert_eq!(sized(&reg, Some(3_000_000)), ["big", "small"]);
    }
    let mut trace = SelectTrace::default();
    let mut r = req(PLAIN, None);
    r.estimate = Some(3_000_000);
    select_observed(reg.load(), M, r, &mut trace).unwrap();
    assert_eq!(trace.lead, None, "one leader: no rotation");
}

/// R44 in the routing trace: a provider's declared window, and whether the
/// request's estimate overflowed it.
#[test]
fn r44_the_trace_names_each_window_and_whether_it_overflowed() {
    let reg = tiers();
    let mut trace = SelectTrace::default();
    let mut r = req(PLAIN, None);
    r.estimate = Some(BASE + 1);
    select_observed(reg.load(), M, r, &mut trace).unwrap();
    let shown: Vec<String> = trace.kept.iter().map(describe).collect();
    assert_eq!(
        shown,
        [
            format!("long [near, window {LONG}, 0 failures, no TTFT sample]"),
            format!("chutes [attested3p, window {LONG}, 0 failures, no TTFT sample]"),
            format!("base [near, window {BASE} overflowed, 0 failures, no TTFT sample]"),
        ]
    );
}

//! Registration, discovery and refresh (R3–R14), including every review
//! finding of the seed PR that lands here.

use std::sync::Arc;

use super::*;
use crate::provider::{Operation, ProviderId};
use crate::select::SelectError;
use crate::testing::{rows, FakeProvider};
use crate::tier::Tier;

const M: &str = "zai-org/GLM-5.1-FP8";
const N: &str = "other/model";

fn near(id: &str, key: &str) -> Arc<FakeProvider> {
    FakeProvider::near(id).with_keys([key]).arc()
}

fn chutes(id: &str) -> Arc<FakeProvider> {
    FakeProvider::chutes(id).arc()
}

fn disc(r: &[(&str, &[&Arc<FakeProvider>])]) -> SourceRead<Discovered> {
    SourceRead::Ok(Discovered(rows(r)))
}

fn ext(r: &[(&str, &[&Arc<FakeProvider>])]) -> SourceRead<External> {
    SourceRead::Ok(External(rows(r)))
}

fn no_ext() -> SourceRead<External> {
    ext(&[])
}

fn ids(reg: &Registry, model: &str) -> Vec<String> {
    reg.view()
        .provider_ids(model)
        .into_iter()
        .map(str::to_string)
        .collect()
}

fn keyed(reg: &Registry, key: &str) -> Vec<String> {
    reg.view()
        .pubkeys
        .get(key)
        .map(|ps| ps.iter().map(|p| p.to_string()).collect())
        .unwrap_or_default()
}

fn fail(reg: &Registry, provider: &str, times: u32) {
    let t = reg.load();
    let h = &t.health[&ProviderId::new(provider)];
    for _ in 0..times {
        h.record_failure();
    }
}

fn leader(reg: &Registry, model: &str) -> String {
    let s = reg
        .select(model, Operation::ChatCompletion, None, false)
        .unwrap();
    s.provider(0).id().to_string()
}

/// M = [n1, c1] (pinned), N = [n2] (NEAR only).
fn two_models() -> (
    Registry,
    Arc<FakeProvider>,
    Arc<FakeProvider>,
    Arc<FakeProvider>,
) {
    let reg = Registry::new();
    let (n1, n2, c1) = (near("n1", "k1"), near("n2", "k2"), chutes("c1"));
    reg.reserve([M]);
    reg.register_secondary(M, c1.clone());
    reg.refresh(disc(&[(M, &[&n1]), (N, &[&n2])]), no_ext());
    assert_eq!(ids(&reg, M), ["n1", "c1"]);
    assert_eq!(ids(&reg, N), ["n2"]);
    (reg, n1, n2, c1)
}

// ---- R3 ----

#[test]
fn r3_secondary_is_registered_under_the_canonical_id_not_the_slug() {
    let reg = Registry::new();
    let c = FakeProvider::chutes("chutes:zai-org/GLM-5.1-TEE")
        .with_upstream_model("zai-org/GLM-5.1-TEE")
        .arc();
    reg.register_secondary(M, c);
    let v = reg.view();
    assert_eq!(v.provider_ids(M), ["chutes:zai-org/GLM-5.1-TEE"]);
    assert!(!v.models.contains_key("zai-org/GLM-5.1-TEE"));
    assert_eq!(
        reg.select(
            "zai-org/GLM-5.1-TEE",
            Operation::ChatCompletion,
            None,
            false
        )
        .unwrap_err(),
        SelectError::UnknownModel
    );
}

// ---- R4 ----

#[test]
fn r4_secondary_is_appended_after_near_and_recorded_pinned() {
    let reg = Registry::new();
    let (n1, c1) = (near("n1", "k1"), chutes("c1"));
    // Registered before discovery ran: still NEAR first once it does.
    reg.register_secondary(M, c1.clone());
    assert_eq!(ids(&reg, M), ["c1"]);
    reg.merge_discovered(Discovered(rows(&[(M, &[&n1])])));
    assert_eq!(ids(&reg, M), ["n1", "c1"]);
    // Registered after: pushed, never replacing NEAR.
    let c2 = chutes("c2");
    reg.register_secondary(M, c2);
    let v = reg.view();
    assert_eq!(v.provider_ids(M), ["n1", "c1", "c2"]);
    assert_eq!(v.pinned[M], [ProviderId::new("c1"), ProviderId::new("c2")]);
}

#[test]
fn r4_same_provider_is_not_stacked() {
    let reg = Registry::new();
    // A repeated canonical id builds a second provider object with the same id.
    reg.register_secondary(M, chutes("c1"));
    reg.register_secondary(M, chutes("c1"));
    let v = reg.view();
    assert_eq!(v.provider_ids(M), ["c1"]);
    assert_eq!(v.pinned[M].len(), 1);
}

#[test]
fn r4_chutes_gets_no_pubkey_entries() {
    let reg = Registry::new();
    // Even a secondary that reports a key must not become pubkey-routable.
    let c = FakeProvider::chutes("c1").with_keys(["k1"]).arc();
    reg.register_secondary(M, c);
    assert!(reg.view().pubkeys.is_empty());
    assert_eq!(
        reg.select(M, Operation::ChatCompletion, Some("k1"), false)
            .unwrap_err(),
        SelectError::NoProviderForPubKey
    );
}

// ---- R5 ----

#[test]
fn r5_reserved_id_never_receives_a_non_attested_provider() {
    let reg = Registry::new();
    reg.reserve([M]);
    let (e1, e2, e3) = (
        FakeProvider::external("e1").arc(),
        FakeProvider::external("e2").arc(),
        FakeProvider::external("e3").arc(),
    );
    // Through the external load, the admin merge and discovery alike.
    reg.refresh(disc(&[(M, &[&e3])]), ext(&[(M, &[&e1]), (N, &[&e2])]));
    reg.merge_discovered(Discovered(rows(&[(M, &[&e2])])));
    let v = reg.view();
    assert!(!v.models.contains_key(M), "{v:?}");
    assert_eq!(v.provider_ids(N), ["e2"], "an unreserved id still loads");
}

#[test]
fn r5_reservation_holds_when_the_chutes_provider_failed_to_build() {
    // Review round 1, blocking 1: CHUTES_API_KEY missing → no secondary, but
    // the colliding plaintext row must still not serve the verifiable id.
    let reg = Registry::new();
    reg.reserve([M]);
    let e1 = FakeProvider::external("openrouter").arc();
    reg.refresh(disc(&[]), ext(&[(M, &[&e1])]));
    assert_eq!(
        reg.select(M, Operation::ChatCompletion, None, false)
            .unwrap_err(),
        SelectError::UnknownModel
    );
    // Reserving later also evicts a row loaded earlier.
    reg.refresh(disc(&[]), ext(&[(N, &[&e1])]));
    assert_eq!(ids(&reg, N), ["openrouter"]);
    reg.reserve([N]);
    assert!(ids(&reg, N).is_empty());
}

// ---- R6 ----

#[test]
fn r6_chutes_only_id_is_seeded_inactive_at_zero_price() {
    let reg = Registry::new();
    assert!(reg.seed_catalog_row_if_absent(M));
    assert_eq!(
        reg.catalog_row(M),
        Some(CatalogRow {
            active: false,
            price: 0,
            ..Default::default()
        })
    );
    // Seeding again (every start) never touches an activated row.
    assert!(reg.set_active(M, true));
    assert!(!reg.seed_catalog_row_if_absent(M));
    assert_eq!(reg.catalog_row(M).map(|r| r.active), Some(true));
}

#[test]
fn r6_near_served_id_keeps_its_row_and_gains_chutes() {
    let (reg, ..) = two_models();
    let row = CatalogRow {
        active: true,
        price: 1_250_000,
        ..Default::default()
    };
    reg.set_catalog_rows([(M, row)]);
    assert!(!reg.seed_catalog_row_if_absent(M));
    assert_eq!(reg.catalog_row(M), Some(row));
    assert_eq!(ids(&reg, M), ["n1", "c1"]);
}

// ---- R7 ----

#[test]
fn r7_merge_rebuilds_batch_models_as_fresh_near_then_pinned() {
    let (reg, _n1, _n2, _c1) = two_models();
    let n3 = near("n3", "k3");
    reg.merge_discovered(Discovered(rows(&[(M, &[&n3])])));
    assert_eq!(ids(&reg, M), ["n3", "c1"]);
}

#[test]
fn r7_r13_partial_admin_batch_leaves_other_models_untouched() {
    // Review round 2, blocking: an admin PATCH for one model reset every other
    // NEAR+Chutes model to Chutes-only. A partial batch merges, never prunes.
    let (reg, ..) = two_models();
    let other = chutes("c9");
    reg.register_secondary(N, other);
    let before = reg.view();
    let z = near("nz", "kz");
    reg.merge_discovered(Discovered(rows(&[("z/model", &[&z])])));
    let after = reg.view();
    assert_eq!(after.models[M], before.models[M]);
    assert_eq!(after.models[N], before.models[N]);
    assert_eq!(after.provider_ids(M), ["n1", "c1"]);
    assert_eq!(after.provider_ids("z/model"), ["nz"]);
    assert_eq!(keyed(&reg, "k1"), ["n1"]);
}

/// The planted round-2 bug is off unless planted, and when planted it is
/// exactly the review's regression (the simulation's sweep test relies on it).
#[cfg(feature = "planted-bugs")]
#[test]
fn planted_partial_batch_prune_is_off_by_default_and_is_the_round2_bug() {
    let (reg, ..) = two_models();
    reg.register_secondary(N, chutes("c9"));
    let z = near("nz", "kz");
    reg.merge_discovered(Discovered(rows(&[("z/model", &[&z])])));
    assert_eq!(ids(&reg, M), ["n1", "c1"]);

    reg.plant(PlantedBug::PartialBatchPrune);
    reg.merge_discovered(Discovered::default());
    assert_eq!(ids(&reg, M), ["n1", "c1"], "an empty batch prunes nothing");
    reg.merge_discovered(Discovered(rows(&[("z/model", &[&z])])));
    assert_eq!(ids(&reg, M), ["c1"], "pinned M reset to Chutes-only");
    assert_eq!(ids(&reg, N), ["c9"]);
    assert_eq!(
        PlantedBug::from_name("partial-batch-prune"),
        Some(PlantedBug::PartialBatchPrune)
    );
}

#[test]
fn r7_merge_dedups_by_provider_id() {
    let reg = Registry::new();
    let c1 = chutes("c1");
    reg.register_secondary(M, c1.clone());
    let n1 = near("n1", "k1");
    let n1_again = near("n1", "k1");
    reg.merge_discovered(Discovered(rows(&[(M, &[&n1, &n1_again, &n1])])));
    assert_eq!(ids(&reg, M), ["n1", "c1"]);
}

#[test]
fn r7_discovery_never_drops_or_overwrites_the_pinned_provider() {
    // Review round 1, blocking 3: a same-name discovery row overwrote a pinned
    // provider.
    let (reg, n1, n2, _c1) = two_models();
    for set in [
        vec![(M, vec![&n2])],
        vec![(M, vec![&n1, &n2])],
        vec![],
        vec![(M, vec![&n1])],
    ] {
        let r: Vec<(&str, &[&Arc<FakeProvider>])> =
            set.iter().map(|(m, ps)| (*m, ps.as_slice())).collect();
        reg.refresh(disc(&r), no_ext());
        assert_eq!(ids(&reg, M).last().map(String::as_str), Some("c1"));
        assert_eq!(reg.view().pinned[M], [ProviderId::new("c1")]);
    }
}

// ---- SPEC-parity R62, R63 ----

#[test]
fn r62_demotion_survives_refresh_for_reused_and_pinned_providers() {
    // n1 (NEAR, reused by the refresh: same id) and c1 (pinned) keep their
    // counts; only a success resets one: there is no recovery probe.
    let (reg, n1, n2, _c1) = two_models();
    fail(&reg, "n1", 10);
    fail(&reg, "c1", 3);
    assert_eq!(leader(&reg, M), "c1", "demoted n1 sorts behind Chutes");
    reg.refresh(disc(&[(M, &[&n1]), (N, &[&n2])]), no_ext());
    let v = reg.view();
    assert_eq!(v.failures("n1"), Some(10));
    assert_eq!(v.failures("c1"), Some(3));
    for _ in 0..3 {
        assert_eq!(leader(&reg, M), "c1", "still demoted after the refresh");
    }
    reg.load().health[&ProviderId::new("n1")].record_success();
    assert_eq!(leader(&reg, M), "n1", "a success is the only way back");
}

#[test]
fn r63_admin_batch_keeps_untouched_providers_and_a_new_url_starts_fresh() {
    let (reg, n1, _n2, _c1) = two_models();
    fail(&reg, "n1", 5);
    fail(&reg, "n2", 2);
    // A batch naming only N's new provider leaves M's n1 and its count.
    let n3 = near("n3", "k3");
    reg.merge_discovered(Discovered(rows(&[(N, &[&n3])])));
    let v = reg.view();
    assert_eq!(v.provider_ids(M), ["n1", "c1"]);
    assert_eq!(v.failures("n1"), Some(5));
    assert_eq!(v.provider_ids(N), ["n3"]);
    assert_eq!(v.failures("n3"), Some(0), "a new URL is a fresh provider");
    assert_eq!(
        v.failures("n2"),
        None,
        "replaced and backing nothing: dropped"
    );
    // Listing n1 again reuses it, count and all.
    reg.merge_discovered(Discovered(rows(&[(M, &[&n1])])));
    assert_eq!(reg.view().failures("n1"), Some(5));
}

// ---- R8 ----

#[test]
fn r8_prune_rebuilds_absent_pinned_only() {
    let (reg, _n1, n2, _c1) = two_models();
    reg.refresh(disc(&[(N, &[&n2])]), no_ext());
    let v = reg.view();
    assert_eq!(v.provider_ids(M), ["c1"]);
    assert_eq!(v.models[M][0].tier, Tier::Attested3p);
    assert_eq!(leader(&reg, M), "c1");
}

#[test]
fn r8_dropped_provider_leaves_pubkey_map_and_failure_counters() {
    let (reg, _n1, n2, _c1) = two_models();
    fail(&reg, "n1", 4);
    assert_eq!(reg.view().failures("n1"), Some(4));
    reg.refresh(disc(&[(N, &[&n2])]), no_ext());
    let v = reg.view();
    assert!(keyed(&reg, "k1").is_empty(), "{:?}", v.pubkeys);
    assert_eq!(v.failures("n1"), None);
    assert!(!reg.load().health.contains_key(&ProviderId::new("n1")));
    assert_eq!(
        reg.select(M, Operation::ChatCompletion, Some("k1"), false)
            .unwrap_err(),
        SelectError::NoProviderForPubKey
    );
    // Coming back starts from a clean counter.
    let n1 = near("n1", "k1");
    reg.refresh(disc(&[(M, &[&n1]), (N, &[&n2])]), no_ext());
    assert_eq!(reg.view().failures("n1"), Some(0));
}

#[test]
fn r8_shared_provider_keeps_its_pubkey_and_counter_while_it_backs_another_model() {
    // Review rounds 3–4: the prune removed pubkey entries by provider even
    // though the same NEAR provider (one per inference URL) still served a
    // sibling model.
    let (reg, n1, n2, _c1) = two_models();
    reg.refresh(disc(&[(M, &[&n1]), (N, &[&n1, &n2])]), no_ext());
    fail(&reg, "n1", 3);
    reg.refresh(disc(&[(N, &[&n1, &n2])]), no_ext());
    let v = reg.view();
    assert_eq!(v.provider_ids(M), ["c1"]);
    assert_eq!(v.provider_ids(N), ["n1", "n2"]);
    assert_eq!(keyed(&reg, "k1"), ["n1"]);
    assert_eq!(v.failures("n1"), Some(3));
    let s = reg
        .select(N, Operation::ChatCompletion, Some("k1"), false)
        .unwrap();
    assert_eq!(s.ids().map(|p| p.as_str()).collect::<Vec<_>>(), ["n1"]);
}

#[test]
fn r8_membership_is_compared_as_sets_not_lengths() {
    // Review round 4: `cur.len() != pinned.len()` stood in for set equality.
    // Here the NEAR side has exactly as many providers as the pinned side.
    let reg = Registry::new();
    let (n1, n2, c1, c2) = (
        near("n1", "k1"),
        near("n2", "k2"),
        chutes("c1"),
        chutes("c2"),
    );
    reg.register_secondary(M, c1);
    reg.register_secondary(M, c2);
    reg.refresh(disc(&[(M, &[&n1, &n2])]), no_ext());
    assert_eq!(ids(&reg, M), ["n1", "n2", "c1", "c2"]);
    reg.refresh(disc(&[]), no_ext());
    assert_eq!(ids(&reg, M), ["c1", "c2"]);
    assert!(reg.view().pubkeys.is_empty());
}

// ---- R9 ----

#[test]
fn r9_stale_model_is_removed_with_full_cleanup() {
    let reg = Registry::new();
    let (n3, n4) = (near("n3", "k3"), near("n4", "k4"));
    reg.refresh(disc(&[(N, &[&n3, &n4])]), no_ext());
    fail(&reg, "n3", 2);
    assert_eq!(leader(&reg, N), "n3"); // advances N's round-robin counter
    reg.refresh(disc(&[]), no_ext());
    let v = reg.view();
    assert!(!v.models.contains_key(N));
    assert!(v.pubkeys.is_empty());
    assert!(reg.load().health.is_empty());
    assert!(reg.load().models.is_empty());
    // Re-discovered: fresh counters; round-robin starts over at n3.
    reg.refresh(disc(&[(N, &[&n3, &n4])]), no_ext());
    assert_eq!(reg.view().failures("n3"), Some(0));
    assert_eq!(leader(&reg, N), "n3");
    assert_eq!(leader(&reg, N), "n4");
}

#[test]
fn r9_reserved_only_id_is_removed_when_near_stops_serving_it() {
    // Review round 3, important: a reserved id with no pinned provider kept a
    // dead NEAR mapping forever.
    let reg = Registry::new();
    reg.reserve([M]);
    let n1 = near("n1", "k1");
    reg.refresh(disc(&[(M, &[&n1])]), no_ext());
    assert_eq!(ids(&reg, M), ["n1"]);
    reg.refresh(disc(&[]), no_ext());
    let v = reg.view();
    assert!(!v.models.contains_key(M));
    assert!(v.pubkeys.is_empty());
    assert!(
        v.reserved.contains(M),
        "still reserved: plaintext stays out"
    );
    assert_eq!(
        reg.select(M, Operation::ChatCompletion, None, false)
            .unwrap_err(),
        SelectError::UnknownModel
    );
}

// ---- R10 ----

#[test]
fn r10_failed_discovery_keeps_existing_near_mappings() {
    let (reg, ..) = two_models();
    let before = reg.view();
    let e = FakeProvider::external("e1").arc();
    reg.refresh(
        SourceRead::Failed("catalog unreachable".into()),
        ext(&[("x/ext", &[&e])]),
    );
    let after = reg.view();
    assert_eq!(after.models[M], before.models[M]);
    assert_eq!(after.models[N], before.models[N]);
    assert_eq!(after.pubkeys, before.pubkeys);
    assert_eq!(
        after.provider_ids("x/ext"),
        ["e1"],
        "the other source still applies"
    );
}

#[test]
fn r10_failed_external_read_keeps_existing_external_mappings() {
    let reg = Registry::new();
    let e = FakeProvider::external("e1").arc();
    reg.refresh(disc(&[]), ext(&[("x/ext", &[&e])]));
    let n2 = near("n2", "k2");
    reg.refresh(disc(&[(N, &[&n2])]), SourceRead::Failed("timeout".into()));
    assert_eq!(ids(&reg, "x/ext"), ["e1"]);
    assert_eq!(ids(&reg, N), ["n2"]);
    // A successful empty read is a real answer and removes it.
    reg.refresh(disc(&[(N, &[&n2])]), no_ext());
    assert!(ids(&reg, "x/ext").is_empty());
}

// ---- R11 ----

#[test]
fn r11_empty_discovery_is_a_complete_empty_set() {
    // Review round 2, important: an empty fetch returned early and skipped the
    // prune, so the last NEAR backend lingered in front of Chutes.
    let (reg, ..) = two_models();
    reg.refresh(disc(&[]), no_ext());
    let v = reg.view();
    assert_eq!(v.provider_ids(M), ["c1"]);
    assert!(!v.models.contains_key(N));
    assert!(v.pubkeys.is_empty());
}

// ---- R12 ----

#[test]
fn r12_external_load_skips_reserved_and_pinned_ids() {
    let reg = Registry::new();
    reg.reserve(["r/reserved"]);
    reg.register_secondary("p/pinned", chutes("c1"));
    let (e1, e2, e3) = (
        FakeProvider::external("e1").arc(),
        FakeProvider::external("e2").arc(),
        FakeProvider::external("e3").arc(),
    );
    reg.refresh(
        disc(&[]),
        ext(&[
            ("r/reserved", &[&e1]),
            ("p/pinned", &[&e2]),
            ("x/free", &[&e3]),
        ]),
    );
    let v = reg.view();
    assert!(!v.models.contains_key("r/reserved"));
    assert_eq!(v.provider_ids("p/pinned"), ["c1"]);
    assert_eq!(v.provider_ids("x/free"), ["e3"]);
}

// ---- R13 ----

#[test]
fn r13_inference_url_change_of_a_pinned_id_takes_effect_immediately() {
    let (reg, ..) = two_models();
    let moved = near("n1-new-url", "k1b");
    reg.merge_discovered(Discovered(rows(&[(M, &[&moved])])));
    assert_eq!(ids(&reg, M), ["n1-new-url", "c1"]);
    assert!(keyed(&reg, "k1").is_empty(), "old provider out");
    assert_eq!(keyed(&reg, "k1b"), ["n1-new-url"]);
    // Clearing the URL leaves the pinned provider.
    reg.merge_discovered(Discovered(rows(&[(M, &[])])));
    assert_eq!(ids(&reg, M), ["c1"]);
}

#[test]
fn r13_deactivation_only_flips_the_catalog_row() {
    let (reg, ..) = two_models();
    reg.set_catalog_rows([(
        M,
        CatalogRow {
            active: true,
            price: 7,
            ..Default::default()
        },
    )]);
    let before = reg.view();
    assert!(reg.set_active(M, false));
    let after = reg.view();
    assert!(!after.catalog[M].active);
    assert_eq!(after.catalog[M].price, 7);
    assert_eq!(after.models, before.models);
    assert_eq!(after.pinned, before.pinned);
    assert!(!reg.set_active("no/row", false));
}

// ---- R14 ----

#[test]
fn r14_unregister_clears_pinned_and_reserved_so_sources_can_register_again() {
    let (reg, n1, ..) = two_models();
    reg.unregister(M);
    let v = reg.view();
    assert!(!v.models.contains_key(M));
    assert!(!v.pinned.contains_key(M));
    assert!(!v.reserved.contains(M));
    // Discovery registers it again, without the old secondary.
    reg.refresh(disc(&[(M, &[&n1])]), no_ext());
    assert_eq!(ids(&reg, M), ["n1"]);
    // And it is no longer protected from an external row.
    reg.unregister(M);
    let e = FakeProvider::external("e1").arc();
    reg.refresh(disc(&[]), ext(&[(M, &[&e])]));
    assert_eq!(ids(&reg, M), ["e1"]);
}

#[test]
fn r4_r14_writers_swap_whole_snapshots() {
    // A reader holding a snapshot keeps seeing it, whole, across writes.
    let (reg, ..) = two_models();
    let old = reg.load();
    reg.unregister(M);
    assert!(old.models.contains_key(M));
    assert!(!reg.load().models.contains_key(M));
}

#[test]
fn r9_a_catalog_row_deleted_upstream_goes_in_the_same_swap_as_its_providers() {
    let n1 = near("n1", "k1");
    let reg = Registry::new();
    let active = CatalogRow {
        active: true,
        price: 0,
        ..Default::default()
    };
    let catalog = |ids: &[&str]| Some(ids.iter().map(|m| (m.to_string(), active)).collect());
    reg.refresh_with_catalog(
        disc(&[(M, &[&n1]), (N, &[&n1])]),
        no_ext(),
        catalog(&[M, N]),
    );
    assert!(reg.catalog_row(N).is_some());
    let before = reg.load();
    reg.refresh_with_catalog(disc(&[(M, &[&n1])]), no_ext(), catalog(&[M]));
    let after = reg.load();
    assert!(before.catalog_row(N).is_some() && before.models.get(N).is_some());
    assert!(
        after.catalog_row(N).is_none() && after.models.get(N).is_none(),
        "row and mapping leave together"
    );
    // A failed read keeps both (R10): no catalog given, nothing replaced.
    reg.refresh_with_catalog(SourceRead::Failed("down".into()), no_ext(), None);
    assert!(reg.catalog_row(M).is_some());
    assert_eq!(ids(&reg, M), ["n1"]);
}

/// R4: the registry's `Debug` (what a log line shows) is its view: each
/// model with its providers, the pins and the reservations.
#[test]
fn r4_debug_of_the_registry_shows_its_view() {
    let reg = Registry::new();
    reg.reserve([M]);
    reg.register_secondary(M, chutes("chutes:glm"));
    reg.refresh(disc(&[(M, &[&near("near-1", "k1")])]), no_ext());
    let text = format!("{reg:?}");
    assert!(text.starts_with("Registry("), "{text}");
    for part in [M, "near-1", "chutes:glm", "k1", "reserved"] {
        assert!(text.contains(part), "{part} missing from {text}");
    }
}

/// R54.3: the registry remembers a model only once a snapshot published it
/// with a NEAR and an attested third-party provider at the same time; a
/// NEAR-only model, a Chutes-only one, and one that had each but never both
/// at once are not remembered.
#[test]
fn r54_only_near_and_attested_published_together_are_remembered() {
    let reg = Registry::new();
    let (n1, n2) = (near("n1", "k1"), near("n2", "k2"));
    reg.refresh(disc(&[(M, &[&n1]), (N, &[&n2])]), no_ext());
    assert!(!reg.ever_near_and_attested(M), "NEAR only");
    assert!(!reg.ever_near_and_attested(N), "NEAR only");
    // M's NEAR leaves, then Chutes arrives: each alone, never both.
    reg.refresh(disc(&[(N, &[&n2])]), no_ext());
    reg.register_secondary(M, chutes("c1"));
    assert_eq!(ids(&reg, M), ["c1"]);
    assert!(!reg.ever_near_and_attested(M), "never both at once");
    // N gains Chutes beside its NEAR: remembered, and kept after NEAR leaves.
    reg.register_secondary(N, chutes("c2"));
    assert!(reg.ever_near_and_attested(N));
    reg.refresh(disc(&[]), no_ext());
    assert_eq!(ids(&reg, N), ["c2"]);
    assert!(reg.ever_near_and_attested(N));
    assert!(!reg.ever_near_and_attested(M));
}

/// R46's test hook: `record_ttft` gives the sample to the provider's shared
/// health and says so; a provider no model has gets nothing and is told.
#[test]
fn r46_record_ttft_reaches_only_a_provider_the_registry_has() {
    let reg = Registry::new();
    reg.refresh(disc(&[(M, &[&near("n1", "k1")])]), no_ext());
    assert!(reg.record_ttft("n1", std::time::Duration::from_millis(40)));
    let t = reg.load();
    assert_eq!(t.health[&ProviderId::new("n1")].ttft().samples, 1);
    assert!(!reg.record_ttft("nobody", std::time::Duration::from_millis(40)));
    assert!(!t.health.contains_key(&ProviderId::new("nobody")));
}

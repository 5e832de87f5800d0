//! Properties of the scenario suite as a whole.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Every rule of the spec is pinned by at least one scenario.
#[test]
fn every_rule_has_a_scenario() {
    let mut pinned = BTreeSet::new();
    for f in tiersim::scenario::files(&root().join("scenarios")).unwrap() {
        let s = tiersim::scenario::load(&f).unwrap_or_else(|e| panic!("{e}"));
        pinned.extend(s.pins.iter().map(|p| p.get_ref().clone()));
    }
    let missing: Vec<&str> = tiersim::rules::RULES
        .iter()
        .map(|r| r.id)
        .filter(|id| !pinned.contains(*id))
        .collect();
    assert!(missing.is_empty(), "rules without a scenario: {missing:?}");
}

/// The committed JSON Schema is the one the types generate.
#[test]
fn schema_file_is_current() {
    let path = root().join("scenarios/scenario.schema.json");
    let want = tiersim::scenario::json_schema();
    let got = std::fs::read_to_string(&path).unwrap_or_default();
    if got != want && std::env::var_os("TIERSIM_UPDATE_SCHEMA").is_some() {
        std::fs::write(&path, &want).unwrap();
        return;
    }
    assert!(
        got == want,
        "{} is stale: run `TIERSIM_UPDATE_SCHEMA=1 cargo test -p tiersim --test suite`",
        path.display()
    );
}

/// Under the `upstream` profile a scenario declares the oracles production
/// breaks (SPEC-parity, Decisions): a declared one is expected, an
/// undeclared one fails the run, and a declared one that never fires fails
/// it too.
#[test]
fn r33_r34_upstream_profile_expect_violations_are_exact() {
    use tiersim::runner::{run, RunOptions};
    let file = root().join("scenarios/parity_upstream_profile.toml");
    let declared = tiersim::scenario::load(&file).unwrap();
    assert_eq!(
        declared.expect_violations,
        [
            "no_fake_success_stream",
            "stream_done_only_if_upstream_ended",
            "reference_model"
        ]
    );
    let opts = RunOptions {
        seed: None,
        plant: None,
        planted_panic: false,
        step_every_tick: false,
    };
    let report = run(&declared, &file, &opts);
    assert!(report.passed(), "{:?}", report.violations);
    assert!(report
        .expected
        .iter()
        .any(|v| v.check == "oracle:no_fake_success_stream"));

    let mut undeclared = declared.clone();
    undeclared.expect_violations.clear();
    let report = run(&undeclared, &file, &opts);
    for oracle in [
        "oracle:no_fake_success_stream",
        "oracle:stream_done_only_if_upstream_ended",
        "oracle:reference_model",
    ] {
        assert!(
            report.violations.iter().any(|v| v.check == oracle),
            "{oracle}: {:?}",
            report.violations
        );
    }

    let mut wrong = declared.clone();
    wrong.expect_violations.push("canonical_model".into());
    let report = run(&wrong, &file, &opts);
    assert_eq!(
        report
            .violations
            .iter()
            .map(|v| v.check.as_str())
            .collect::<Vec<_>>(),
        ["expect_violations"],
        "{:?}",
        report.violations
    );

    // The same scenario under the default profile: the cut stream gets no
    // [DONE], so the oracle holds and the declaration is what fails.
    let mut tiersim_profile = declared.clone();
    tiersim_profile.config.profile = tiersim_engine::config::Profile::Tiersim;
    let report = run(&tiersim_profile, &file, &opts);
    assert!(report
        .violations
        .iter()
        .any(|v| v.check == "expect_violations"));
}

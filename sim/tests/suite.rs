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

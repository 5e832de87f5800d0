//! Writing a scenario back as a TOML file (the sweep's shrunk reproducers).
//!
//! The format types are read-only (spans, defaults); these writer structs
//! mirror them for `toml` serialization, leaving out what the reader would
//! default anyway. Expectations are never written: a written scenario is
//! checked by the oracles alone.

use serde::Serialize;

use super::format::{
    CatalogEdit, CatalogRow, ChuteSpec, Dur, Empty, ExternalSpec, NearSpec, PatchRow, RequestSpec,
    Scenario, Step,
};
use crate::fault::FaultInjection;
use crate::hosts::Chunking;

#[derive(Serialize)]
struct FileOut<'a> {
    name: &'a str,
    description: &'a str,
    seed: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    tick: Option<Dur>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pins: Vec<&'a str>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    findings: &'a [String],
    config: ConfigOut<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    world: Option<WorldOut>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    near: &'a [NearSpec],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    chutes: &'a [ChuteSpec],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    external: &'a [ExternalSpec],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    catalog: &'a [CatalogRow],
    #[serde(rename = "step", skip_serializing_if = "Vec::is_empty")]
    steps: Vec<StepOut<'a>>,
}

#[derive(Serialize)]
struct WorldOut {
    chunking: Chunking,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_chunk: Option<u32>,
    chunk_seed: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    chutes_nonce_expires_in: Option<Dur>,
}

#[derive(Serialize)]
struct ConfigOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    chutes_models: Option<&'a str>,
    chutes_api_key: bool,
    chutes_streaming: bool,
    refresh_interval: Dur,
    trust_chutes_vendor: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    expect_startup_error: Option<&'a str>,
    profile: tiersim_engine::config::Profile,
    #[serde(skip_serializing_if = "Option::is_none")]
    model_concurrency: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    context_route: Option<&'a crate::scenario::format::ContextRoute>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    chutes_build_fails: Vec<&'a str>,
}

#[derive(Serialize)]
struct StepOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    at: Option<Dur>,
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    refresh: Option<&'a Empty>,
    #[serde(skip_serializing_if = "Option::is_none")]
    admin_patch: Option<&'a [PatchRow]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    catalog: Option<&'a CatalogEdit>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fault: Option<&'a FaultInjection>,
    #[serde(skip_serializing_if = "Option::is_none")]
    clear_faults: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    partition: Option<&'a [String; 2]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    repair: Option<&'a [String; 2]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hold: Option<&'a [String; 2]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    release: Option<&'a [String; 2]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    crash: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    restart: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    shutdown: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    request: Option<&'a RequestSpec>,
    #[serde(skip_serializing_if = "Option::is_none")]
    concurrent: Option<&'a [RequestSpec]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    unregister: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    advance: Option<Dur>,
}

impl<'a> StepOut<'a> {
    fn of(st: &'a Step) -> Self {
        // Destructured whole: a new wire key of `Step` does not compile
        // until the writer writes it (expectations are never written).
        let Step {
            at,
            note,
            expect: _,
            refresh,
            admin_patch,
            catalog,
            fault,
            clear_faults,
            partition,
            repair,
            hold,
            release,
            crash,
            restart,
            shutdown,
            request,
            concurrent,
            unregister,
            advance,
        } = st;
        StepOut {
            at: at.as_ref().map(|a| *a.get_ref()),
            note: note.as_deref(),
            refresh: refresh.as_ref(),
            admin_patch: admin_patch.as_deref(),
            catalog: catalog.as_ref(),
            fault: fault.as_ref().map(|f| f.get_ref()),
            clear_faults: clear_faults.as_ref().map(|h| h.get_ref().as_str()),
            partition: partition.as_ref().map(|p| p.get_ref()),
            repair: repair.as_ref().map(|p| p.get_ref()),
            hold: hold.as_ref().map(|p| p.get_ref()),
            release: release.as_ref().map(|p| p.get_ref()),
            crash: crash.as_ref().map(|h| h.get_ref().as_str()),
            restart: restart.as_ref().map(|h| h.get_ref().as_str()),
            shutdown: shutdown.as_ref().map(|h| h.get_ref().as_str()),
            request: request.as_ref(),
            concurrent: concurrent.as_deref(),
            unregister: unregister.as_deref(),
            advance: *advance,
        }
    }
}

/// `s` as a scenario file that [`super::parse`] reads back to the same run.
/// Expectations and the `[sweep]` table are left out. Each step's action is
/// written inline (`fault = { host = "near-1", http_status = 503 }`), as
/// scenarios are written by hand.
pub fn to_toml(s: &Scenario) -> Result<String, toml_edit::ser::Error> {
    let c = &s.config;
    let file = FileOut {
        name: &s.name,
        description: &s.description,
        seed: s.seed,
        tick: s.tick.as_ref().map(|t| *t.get_ref()),
        pins: s.pins.iter().map(|p| p.get_ref().as_str()).collect(),
        findings: &s.findings,
        config: ConfigOut {
            chutes_models: c.chutes_models.as_deref(),
            chutes_api_key: c.chutes_api_key,
            chutes_streaming: c.chutes_streaming,
            refresh_interval: c.refresh_interval,
            trust_chutes_vendor: c.trust_chutes_vendor,
            expect_startup_error: c.expect_startup_error.as_deref(),
            profile: c.profile,
            model_concurrency: c.model_concurrency,
            context_route: c.context_route.as_ref(),
            chutes_build_fails: c
                .chutes_build_fails
                .iter()
                .map(|id| id.get_ref().as_str())
                .collect(),
        },
        world: (s.world != Default::default()).then(|| WorldOut {
            chunking: s.world.chunking,
            max_chunk: s.world.max_chunk.as_ref().map(|m| *m.get_ref()),
            chunk_seed: s.world.chunk_seed,
            chutes_nonce_expires_in: s.world.chutes_nonce_expires_in,
        }),
        near: &s.near,
        chutes: &s.chutes,
        external: &s.external,
        catalog: &s.catalog,
        steps: s.steps.iter().map(|st| StepOut::of(st.get_ref())).collect(),
    };
    // Serialized as one inline value, then laid out as a hand-written file:
    // `[config]`, `[[near]]`… `[[step]]` tables whose values stay inline.
    let mut doc = toml_edit::ser::to_document(&file)?;
    let root = doc.as_table_mut();
    let keys: Vec<String> = root.iter().map(|(k, _)| k.to_string()).collect();
    for key in keys {
        let Some(item) = root.get_mut(&key) else {
            continue;
        };
        let taken = std::mem::take(item);
        *item = match taken {
            toml_edit::Item::Value(toml_edit::Value::InlineTable(t)) => {
                toml_edit::Item::Table(t.into_table())
            }
            toml_edit::Item::Value(toml_edit::Value::Array(a))
                if !a.is_empty() && a.iter().all(toml_edit::Value::is_inline_table) =>
            {
                toml_edit::Item::Value(toml_edit::Value::Array(a))
                    .into_array_of_tables()
                    .map(toml_edit::Item::ArrayOfTables)
                    .unwrap_or_else(|i| i)
            }
            other => other,
        };
    }
    Ok(doc.to_string())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn a_scenario_round_trips_through_the_writer() {
        let text = r#"
name = "t"
description = """
two
lines"""
seed = 5
tick = "10ms"
pins = ["R7"]

[config]
chutes_models = "a=b,c=d"
chutes_build_fails = ["c"]
refresh_interval = "10m"

[[near]]
host = "near-1"
models = ["a"]

[[chutes]]
slug = "b"

[[external]]
host = "openrouter"
models = ["x"]

[[external]]
host = "claude"
models = ["y"]
api_key = false
kind = "anthropic"

[[catalog]]
id = "a"
inference_url = "near-1"
price = 3

[[catalog]]
id = "x"
provider_type = "external"

[[step]]
refresh = {}
expect = { providers = { "a" = ["near-1", "chutes"] } }

[[step]]
at = "1s 500ms"
note = "sweep fault 1"
fault = { host = "near-1", http_status = 503, times = 2 }

[[step]]
admin_patch = [{ id = "a", inference_url = "near-1", active = true }]

[[step]]
catalog = { upsert = [{ id = "x" }], external_upsert = [{ model = "x", host = "openrouter" }] }

[[step]]
request = { model = "a", stream = true, pub_key_of = "near-1" }

[[step]]
partition = ["router", "near-1"]

[[step]]
repair = ["router", "near-1"]

[[step]]
crash = "chutes"

[[step]]
restart = "chutes"

[[step]]
shutdown = "router"

[[step]]
restart = "router"

[[step]]
clear_faults = "near-1"

[[step]]
unregister = "a"

[[step]]
advance = "2m"
"#;
        let s = super::super::parse(Path::new("t.toml"), text).unwrap();
        let out = to_toml(&s).unwrap();
        let back = super::super::parse(Path::new("out.toml"), &out)
            .unwrap_or_else(|e| panic!("{e}\n{out}"));
        assert_eq!(to_toml(&back).unwrap(), out);
        assert_eq!(back.steps.len(), s.steps.len());
        assert!(back.steps.iter().all(|st| st.get_ref().expect.is_none()));
        assert_eq!(back.description, s.description);
        assert!(out.contains("[[step]]"), "{out}");
        for written in [
            "chutes_build_fails = [\"c\"]",
            "api_key = false",
            "kind = \"anthropic\"",
            "provider_type = \"external\"",
            "shutdown = \"router\"",
        ] {
            assert!(out.contains(written), "{written} not in {out}");
        }
    }
}

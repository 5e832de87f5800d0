//! Issue 15: the client-visible outcome of a run does not depend on how the
//! simulated hosts' bytes are cut into writes (`[world] chunking`), and the
//! metamorphic check that says so finds the old read-boundary-dependent
//! outcome when it is planted back.

use std::path::Path;

use tiersim::hosts::Chunking;
use tiersim::metamorphic::{self, variants};
use tiersim::runner::RunOptions;
use tiersim::scenario::{self, format::WorldSpec};
use tiersim_engine::registry::PlantedBug;

fn load(file: &str) -> (scenario::format::Scenario, std::path::PathBuf) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../scenarios")
        .join(file);
    (scenario::load(&path).unwrap(), path)
}

fn written_and_whole() -> Vec<WorldSpec> {
    vec![
        WorldSpec::default(),
        WorldSpec {
            chunking: Chunking::Whole,
            ..WorldSpec::default()
        },
    ]
}

#[test]
fn issue15_chunking_check_finds_the_planted_keyed_priming_bug() {
    let (s, path) = load("chutes_stream_wrong_key_chunking.toml");
    let planted = RunOptions {
        plant: Some(PlantedBug::KeyedPriming),
        ..RunOptions::default()
    };
    // The old engine: e2e_init and frame 0 in two writes give a 200 stream
    // with an error event; in one write, a 502.
    let err = metamorphic::check(&s, &path, &planted, &written_and_whole())
        .expect_err("the planted bug makes the outcome depend on chunking");
    assert_eq!(err.step, 4, "{err}");
    assert!(err.what.contains("status 200 vs 502"), "{err}");

    // The engine as it is: the same outcome under every chunking.
    let runs = metamorphic::check(&s, &path, &RunOptions::default(), &variants(6))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(runs, 8);
}

#[test]
fn issue15_chutes_and_near_scenarios_do_not_depend_on_chunking() {
    for file in [
        "chutes_stream_corrupt_frame.toml",
        "chutes_stream_e2e_error.toml",
        "chutes_stream_e2e_error_orders.toml",
        "chutes_stream_forged_outer_done.toml",
        "chutes_stream_frame_before_init.toml",
        "chutes_stream_truncation.toml",
        "chutes_evidence_fail_closed.toml",
        "v2_frame_drop_detected.toml",
        "v1_frame_replay_undetected.toml",
        "interop_near_primary_chutes_fallback.toml",
        "near_5xx_streaming_off.toml",
    ] {
        let (s, path) = load(file);
        metamorphic::check(&s, &path, &RunOptions::default(), &variants(2))
            .unwrap_or_else(|e| panic!("{file}: {e}"));
    }
}

#[test]
fn issue15_chunking_is_a_sweep_dimension_written_into_reproducers() {
    use tiersim::sweep::{MenuFlags, Plan};
    let (s, path) = load("sweep_mixed_traffic.toml");
    let flags = MenuFlags {
        chunking: Some(vec![Chunking::Whole, Chunking::Random]),
        ..MenuFlags::default()
    };
    let plan = Plan::new(&s, &path, &flags, None).unwrap();
    for seed in [4u64, 5] {
        let composed = plan.compose(seed, &plan.schedule(seed));
        let want = if seed % 2 == 0 {
            Chunking::Whole
        } else {
            Chunking::Random
        };
        assert_eq!(composed.scenario.world.chunking, want);
        assert_eq!(composed.scenario.world.chunk_seed, seed);
        // The reproducer file carries the world it ran in.
        let text = scenario::write::to_toml(&composed.scenario).unwrap();
        assert!(
            text.contains(&format!("chunking = \"{}\"", want.name())),
            "{text}"
        );
        let back = scenario::parse(&path, &text).unwrap();
        assert_eq!(back.world, composed.scenario.world);
        let report = plan.run(&composed);
        assert!(report.passed(), "seed {seed}: {:?}", report.violations);
    }
}

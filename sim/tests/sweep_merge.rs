//! Distributed sweeps (issue 14): shards write per-seed outcomes as JSON
//! lines, and `sweep merge` concludes from them exactly as one machine's
//! sweep does; bad input to a merge is an error naming the file and line,
//! with nothing written.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tiersim::hosts::Chunking;
use tiersim::model::{Abstain, Abstention};
use tiersim::record::Violation;
use tiersim::scenario::format::FaultKind;
use tiersim::sweep::{self, outcomes, Divergence, MenuFlags, Outputs, SeedOutcome, Shard, Sweep};
use tiersim_engine::config::Profile;
use tiersim_engine::registry::PlantedBug;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A fresh scratch folder for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Every file under `dir` (one level) by name, with its bytes.
fn files_in(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return BTreeMap::new();
    };
    entries
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

fn sweep_of(file: &str, seeds: std::ops::RangeInclusive<u64>) -> Sweep {
    Sweep {
        file: root().join("scenarios").join(file),
        seeds,
        shard: Shard::WHOLE,
        check_determinism: false,
        flags: MenuFlags::default(),
        plant: None,
    }
}

/// Runs `sweep` (one shard of it) as a machine would: its own plan.
fn run(sweep: &Sweep) -> (sweep::Plan, Vec<SeedOutcome>) {
    let plan = sweep.plan().unwrap();
    let seeds = sweep.shard_seeds().unwrap();
    let outcomes = sweep.run(&plan, &seeds, 2, &|_| {});
    (plan, outcomes)
}

/// What a concluded sweep left on disk: the report, the JUnit XML and every
/// reproducer, byte for byte.
fn written(dir: &Path) -> (Vec<u8>, Vec<u8>, BTreeMap<String, Vec<u8>>) {
    let out = (
        std::fs::read(dir.join("report.txt")).unwrap(),
        std::fs::read(dir.join("junit.xml")).unwrap(),
        files_in(&dir.join("repro")),
    );
    std::fs::remove_dir_all(dir).unwrap();
    out
}

fn outputs(dir: &Path) -> Outputs {
    Outputs {
        reproducers: Some(dir.join("repro")),
        junit: Some(dir.join("junit.xml")),
        report: Some(dir.join("report.txt")),
    }
}

#[test]
fn four_shards_merged_equal_one_run_byte_for_byte() {
    // A planted bug that some seeds of the range find and others do not, so
    // the merge has passes, failures and a shrink to reproduce.
    let whole = Sweep {
        check_determinism: true,
        plant: Some(PlantedBug::StreamOpenIsSuccess),
        ..sweep_of("sweep_shared_near.toml", 0..=9)
    };
    let dir = scratch("merge-equals-one-run");
    let out = dir.join("out");

    let (plan, all) = run(&whole);
    let one = sweep::conclude(&whole, &plan, all, &outputs(&out));
    assert!(
        one.failed() > 0 && one.failed() < one.outcomes.len(),
        "{}",
        one.report
    );
    let (report_one, junit_one, repro_one) = written(&out);
    assert!(!repro_one.is_empty(), "{}", one.report);

    // Four machines, one shard each; the files are given out of order.
    let mut files = Vec::new();
    for k in [3, 1, 4, 2] {
        let shard = Sweep {
            shard: Shard::new(k, 4).unwrap(),
            ..whole.clone()
        };
        let (_, outcomes) = run(&shard);
        let path = dir.join(format!("shard-{k}.jsonl"));
        outcomes::write(&shard, &outcomes, &path).unwrap();
        files.push(path);
    }
    let (merged, all) = outcomes::merge(&files).unwrap();
    assert_eq!(merged, whole);
    let plan = merged.plan().unwrap();
    let two = sweep::conclude(&merged, &plan, all, &outputs(&out));
    let (report_two, junit_two, repro_two) = written(&out);

    assert_eq!(two.report, one.report);
    assert_eq!(
        String::from_utf8(report_two).unwrap(),
        String::from_utf8(report_one).unwrap()
    );
    assert_eq!(
        String::from_utf8(junit_two).unwrap(),
        String::from_utf8(junit_one).unwrap()
    );
    assert_eq!(repro_two, repro_one);
}

fn outcome(seed: u64, fail: bool) -> SeedOutcome {
    SeedOutcome {
        seed,
        faults: (seed % 3) as usize + 1,
        requests: 4,
        violations: if fail {
            vec![Violation {
                step: 2,
                check: "oracle:reference_model".into(),
                message: format!("seed {seed}: \"quoted\"\nsecond line"),
            }]
        } else {
            Vec::new()
        },
        sim_time: Duration::from_nanos(1_234_567_891 + seed),
        hash: [seed as u8; 32],
        divergence: seed.is_multiple_of(5).then(|| Divergence {
            step: 3,
            line: 41,
            first: "- near-1 503".into(),
            second: "<end>".into(),
        }),
        abstained: match seed % 3 {
            0 => Some(Abstention {
                step: 4,
                why: Abstain::Concurrent,
            }),
            1 => Some(Abstention {
                step: 7,
                why: Abstain::Timing,
            }),
            _ => None,
        },
    }
}

/// Shard `k` of `n` of `sweep`, as text, with made-up outcomes.
fn shard_text(sweep: &Sweep, k: u64, n: u64) -> String {
    let shard = Sweep {
        shard: Shard::new(k, n).unwrap(),
        ..sweep.clone()
    };
    let seeds = shard.shard_seeds().unwrap();
    let scenario = std::fs::read(&sweep.file).unwrap();
    let outcomes: Vec<SeedOutcome> = seeds.iter().map(|s| outcome(*s, s % 4 == 1)).collect();
    outcomes::to_jsonl(&shard, &scenario, &outcomes).unwrap()
}

/// Writes `texts` as `name-<i>.jsonl` files and merges them.
fn merge_texts(dir: &Path, texts: &[String]) -> Result<(Sweep, Vec<SeedOutcome>), String> {
    let files: Vec<PathBuf> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let p = dir.join(format!("f{i}.jsonl"));
            std::fs::write(&p, t).unwrap();
            p
        })
        .collect();
    outcomes::merge(&files)
}

#[test]
fn outcome_lines_round_trip_every_setting_and_field() {
    let sweep = Sweep {
        check_determinism: true,
        plant: Some(PlantedBug::DemoteAtNine),
        flags: MenuFlags {
            hosts: Some(vec!["near-1".into(), "chutes".into()]),
            kinds: Some(vec![FaultKind::Crash, FaultKind::HttpStatus]),
            min_faults: Some(1),
            max_faults: Some(5),
            until: Some(Duration::from_nanos(20_000_000_001)),
            tick: Some(Duration::from_millis(10)),
            chunking: Some(vec![Chunking::Random, Chunking::Writes]),
            profile: Some(Profile::Upstream),
            concurrent: Some(3),
            step_every_tick: false,
        },
        ..sweep_of("sweep_mixed_traffic.toml", 5..=16)
    };
    let dir = scratch("merge-round-trip");
    let texts: Vec<String> = (1..=3).map(|k| shard_text(&sweep, k, 3)).collect();
    // Stable field order, one line per seed after the header.
    assert!(texts[0].starts_with("{\"format\":\"tiersim-sweep-outcomes/2\",\"scenario\":"));
    assert!(texts[0].lines().nth(1).unwrap().starts_with(
        "{\"seed\":5,\"faults\":3,\"requests\":4,\"sim_time_ns\":1234567896,\"hash\":\"0505"
    ));
    assert_eq!(texts[0].lines().count(), 1 + 4);
    let (merged, all) = merge_texts(&dir, &texts).unwrap();
    assert_eq!(merged, sweep);
    let want: Vec<SeedOutcome> = (5..=16).map(|s| outcome(s, s % 4 == 1)).collect();
    assert_eq!(format!("{all:?}"), format!("{want:?}"));
}

#[test]
fn merge_refuses_bad_input_naming_the_file_and_line() {
    let dir = scratch("merge-bad-input");
    let sweep = sweep_of("sweep_streaming_off.toml", 0..=11);
    let shards: Vec<String> = (1..=4).map(|k| shard_text(&sweep, k, 4)).collect();
    let err = |texts: &[String]| merge_texts(&dir, texts).unwrap_err();

    // A missing shard.
    let e = err(&[shards[0].clone(), shards[1].clone(), shards[3].clone()]);
    assert!(e.contains("3/4") && e.contains("missing"), "{e}");
    // One shard twice.
    let e = err(&[
        shards[0].clone(),
        shards[1].clone(),
        shards[1].clone(),
        shards[3].clone(),
    ]);
    assert!(
        e.contains("f1.jsonl and") && e.contains("both shard 2/4"),
        "{e}"
    );
    // A duplicated seed line (shard 2 holds seeds 1, 5, 9).
    let mut lines: Vec<&str> = shards[1].lines().collect();
    lines.insert(2, lines[1]);
    let dup = lines.join("\n") + "\n";
    let e = err(&[shards[0].clone(), dup, shards[2].clone(), shards[3].clone()]);
    assert!(
        e.contains("f1.jsonl:3: seed 1 again (first at line 2)"),
        "{e}"
    );
    // A seed left out, and a seed of another shard.
    let skipped = [lines[0], lines[3]].join("\n") + "\n";
    let e = err(&[skipped]);
    assert!(
        e.contains("f0.jsonl:2: seed 5, but seed 1 is missing before it"),
        "{e}"
    );
    let foreign = shards[1].replacen("{\"seed\":1,", "{\"seed\":2,", 1);
    let e = err(&[foreign]);
    assert!(e.contains("f0.jsonl:2: seed 2 is not in shard 2/4"), "{e}");
    // A truncated line, and a file cut at a line boundary.
    let cut = &shards[2][..shards[2].len() - 10];
    let e = err(&[
        shards[0].clone(),
        shards[1].clone(),
        cut.to_string(),
        shards[3].clone(),
    ]);
    assert!(e.contains("f2.jsonl:4: truncated"), "{e}");
    let short: String = shards[2]
        .lines()
        .take(3)
        .map(|l| format!("{l}\n"))
        .collect();
    let e = err(&[short]);
    assert!(
        e.contains("f0.jsonl:4: the file ends after 2 of shard 3/4's 3 seeds"),
        "{e}"
    );
    // Shards of different settings, or of another scenario.
    let other = Sweep {
        check_determinism: true,
        ..sweep.clone()
    };
    let e = err(&[shards[0].clone(), shard_text(&other, 2, 4)]);
    assert!(
        e.contains("f1.jsonl:1: not a shard of the same sweep as")
            && e.contains("`check_determinism`"),
        "{e}"
    );
    let elsewhere = sweep_of("sweep_demotion.toml", 0..=11);
    let e = err(&[shards[0].clone(), shard_text(&elsewhere, 2, 4)]);
    assert!(e.contains("f1.jsonl:1:") && e.contains("`scenario`"), "{e}");
    let wider = sweep_of("sweep_streaming_off.toml", 0..=12);
    let e = err(&[shards[0].clone(), shard_text(&wider, 2, 4)]);
    assert!(e.contains("`seeds`"), "{e}");
    // Not an outcomes file at all; an unknown field; no files.
    let e = err(&["name = \"x\"\n".to_string()]);
    assert!(
        e.contains("f0.jsonl:1: not a tiersim sweep outcomes header"),
        "{e}"
    );
    let extra = shards[0].replacen("{\"seed\":0,", "{\"host\":\"ci-7\",\"seed\":0,", 1);
    let e = err(&[extra]);
    assert!(
        e.contains("f0.jsonl:2: not a seed outcome") && e.contains("host"),
        "{e}"
    );
    assert!(outcomes::merge(&[]).is_err());
    // Every shard, once: merged.
    let (merged, all) = merge_texts(&dir, &shards).unwrap();
    assert_eq!(merged, sweep);
    assert_eq!(
        all.iter().map(|o| o.seed).collect::<Vec<_>>(),
        (0..=11).collect::<Vec<_>>()
    );
}

fn tiersim(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_tiersim"))
        .args(args)
        .current_dir(root())
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("the tiersim binary runs")
}

#[test]
fn cli_shards_write_outcomes_and_a_bad_merge_writes_nothing() {
    let dir = scratch("merge-cli");
    let p = |name: &str| dir.join(name).display().to_string();
    let scenario = "scenarios/sweep_streaming_off.toml";
    // Two shards on the command line: each exits 0 once its file is written.
    for k in 1..=2 {
        let shard = format!("{k}/2");
        let file = p(&format!("shards/s{k}.jsonl"));
        let o = tiersim(&[
            "sweep",
            scenario,
            "--seeds",
            "0..4",
            "--shard",
            &shard,
            "--outcomes",
            &file,
        ]);
        assert_eq!(
            o.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert_eq!(
            std::fs::read_to_string(&file).unwrap().lines().count(),
            1 + 2
        );
    }
    let outputs = [
        "--out",
        &p("repro"),
        "--junit",
        &p("j.xml"),
        "--report",
        &p("r.txt"),
    ];
    let merge = |files: &[String]| {
        let mut args = vec!["sweep", "merge"];
        args.extend(files.iter().map(String::as_str));
        args.extend(outputs);
        tiersim(&args)
    };
    // A truncated shard: exit 1, the file and line named, nothing written.
    let whole = std::fs::read_to_string(p("shards/s2.jsonl")).unwrap();
    std::fs::write(p("cut.jsonl"), &whole[..whole.len() - 7]).unwrap();
    let o = merge(&[p("shards/s1.jsonl"), p("cut.jsonl")]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("cut.jsonl:3: truncated"), "{err}");
    for f in ["repro", "j.xml", "r.txt"] {
        assert!(!dir.join(f).exists(), "{f} written by a refused merge");
    }
    // A missing shard: the same.
    let o = merge(&[p("shards/s2.jsonl")]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("shard(s) 1/2 missing"));
    assert!(!dir.join("r.txt").exists());
    // Both shards: merged, judged, the report written as printed.
    let o = merge(&[p("shards/s2.jsonl"), p("shards/s1.jsonl")]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{out}");
    let report = std::fs::read_to_string(p("r.txt")).unwrap();
    assert!(out.ends_with(&report), "{out}");
    assert!(
        report.starts_with(&format!("sweep {scenario}: seeds 0..=3 (4 seeds)\n")),
        "{report}"
    );
    assert!(report.ends_with("\n4 passed, 0 failed\n"), "{report}");
    assert!(std::fs::read_to_string(p("j.xml"))
        .unwrap()
        .contains("seed 3"));
    // No files is a usage error.
    assert_eq!(tiersim(&["sweep", "merge"]).status.code(), Some(2));
}

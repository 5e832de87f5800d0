//! Seed-sweep throughput: seeds per second for the representative
//! ~10-request scenario (`scenarios/sweep_mixed_traffic.toml`: NEAR with
//! Chutes fallback, Chutes end-to-end encryption on, its `[sweep]` fault
//! menu), on one thread and on two. Each iteration runs a batch of seeds
//! (each a whole turmoil world with a random fault schedule and every oracle
//! checked after every step); criterion reports the throughput in seeds/s,
//! and the bench prints the simulated/wall time ratio. The same on one
//! thread at a 1 ms tick (`mixed_traffic_seeds_1ms`), and the cost of idle
//! simulated time (`idle_minute/<tick>`: a world that waits out one idle
//! simulated minute between two requests; the bench prints what an idle
//! hour costs at that rate). It ends by printing the mean number of Chutes
//! attempts a seed makes (the exchanges `benches/chutes_exchange.rs` times).
//! Built by the `tiersim` package (`cargo bench -p tiersim --bench sweep`),
//! the only bench that needs the simulation. Issue 14's targets are ≥ 500 seeds per
//! CPU-second at 10 ms, ≥ 10× today's at 1 ms, and an idle hour under 0.5 s.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use criterion::{
    criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use tiersim::runner::{self, RunOptions};
use tiersim::sweep::{self, MenuFlags, Plan};

/// Seeds per iteration: the same batch every iteration, so samples compare.
const BATCH: u64 = 40;

fn scenario() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/sweep_mixed_traffic.toml")
}

fn bench(c: &mut Criterion) {
    let file = scenario();
    let s = tiersim::scenario::load(&file).unwrap_or_else(|e| panic!("{e}"));
    let plan = Plan::new(&s, &file, &MenuFlags::default(), None).expect("sweepable");
    let mut group = c.benchmark_group("sweep");
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(15))
        .throughput(Throughput::Elements(BATCH));
    for jobs in [1usize, 2] {
        // (simulated, wall) over every measured iteration, for the ratio.
        let totals = Mutex::new((Duration::ZERO, Duration::ZERO, 0u64));
        let seeds: Vec<u64> = (0..BATCH).collect();
        group.bench_function(BenchmarkId::new("mixed_traffic_seeds", jobs), |b| {
            b.iter_custom(|iters| {
                let mut wall = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    let out = sweep::run_seeds(&plan, &seeds, jobs, false, &|_| {});
                    let took = start.elapsed();
                    wall += took;
                    assert!(
                        out.iter().all(|o| o.passed()),
                        "a violation in the bench's sweep: {:?}",
                        out.iter().find(|o| !o.passed())
                    );
                    let sim: Duration = out.iter().map(|o| o.sim_time).sum();
                    let mut t = totals.lock().unwrap();
                    t.0 += sim;
                    t.1 += took;
                    t.2 += BATCH;
                }
                wall
            });
        });
        let (sim, wall, seeds) = *totals.lock().unwrap();
        let secs = wall.as_secs_f64().max(1e-9);
        println!(
            "sweep/mixed_traffic_seeds/{jobs}: {seeds} seeds, {:.1} seeds/s, simulated {:.0}s in {:.1}s wall ({:.0}x)",
            seeds as f64 / secs,
            sim.as_secs_f64(),
            secs,
            sim.as_secs_f64() / secs
        );
    }
    group.finish();
}

/// The mixed-traffic sweep at a 1 ms tick, one thread.
fn bench_fine_tick(c: &mut Criterion) {
    let file = scenario();
    let s = tiersim::scenario::load(&file).unwrap_or_else(|e| panic!("{e}"));
    let flags = MenuFlags {
        tick: Some(Duration::from_millis(1)),
        ..MenuFlags::default()
    };
    let plan = Plan::new(&s, &file, &flags, None).expect("sweepable");
    const FINE_BATCH: u64 = 10;
    let seeds: Vec<u64> = (0..FINE_BATCH).collect();
    let mut group = c.benchmark_group("sweep");
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(15))
        .throughput(Throughput::Elements(FINE_BATCH));
    group.bench_function("mixed_traffic_seeds_1ms", |b| {
        b.iter(|| {
            let out = sweep::run_seeds(&plan, &seeds, 1, false, &|_| {});
            assert!(out.iter().all(|o| o.passed()), "a violation at 1 ms");
            out
        });
    });
    group.finish();
}

/// One request, an idle simulated minute (no request, no timer due, no
/// message in flight), one request: what idle simulated time costs.
const IDLE_MINUTE: &str = r#"
name = "Idle minute"
description = "One request, an idle simulated minute, one request."
seed = 5
[config]
chutes_models = "zai-org/GLM-5.1-FP8=zai-org/GLM-5.1-TEE"
refresh_interval = "2h"
[[near]]
host = "near-1"
models = ["zai-org/GLM-5.1-FP8"]
[[chutes]]
slug = "zai-org/GLM-5.1-TEE"
[[catalog]]
id = "zai-org/GLM-5.1-FP8"
inference_url = "near-1"
[[step]]
request = { model = "zai-org/GLM-5.1-FP8" }
expect = { status = 200 }
[[step]]
advance = "60s"
[[step]]
request = { model = "zai-org/GLM-5.1-FP8" }
expect = { status = 200 }
"#;

fn bench_idle(c: &mut Criterion) {
    let file = Path::new("benches/idle_minute.toml");
    let mut group = c.benchmark_group("idle_minute");
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(10));
    for tick_ms in [1u64, 10] {
        let text = format!("tick = \"{tick_ms}ms\"\n{IDLE_MINUTE}");
        let s = tiersim::scenario::parse(file, &text).unwrap_or_else(|e| panic!("{e}"));
        let took = Mutex::new((Duration::ZERO, 0u32));
        group.bench_function(BenchmarkId::from_parameter(format!("{tick_ms}ms")), |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    let report = runner::run(&s, file, &RunOptions::default());
                    assert!(report.passed(), "{:?}", report.violations);
                }
                let wall = start.elapsed();
                let mut t = took.lock().unwrap();
                t.0 += wall;
                t.1 += iters as u32;
                wall
            });
        });
        let (wall, runs) = *took.lock().unwrap();
        println!(
            "idle_minute/{tick_ms}ms: {:.3}s wall per run: an idle simulated hour costs about {:.1}s",
            wall.as_secs_f64() / f64::from(runs.max(1)),
            60.0 * wall.as_secs_f64() / f64::from(runs.max(1)),
        );
    }
    group.finish();
}

/// Seeds whose Chutes attempts are counted for `exchanges_per_seed`.
const SEEDS: u64 = 100;

/// Prints the mean number of Chutes attempts per seed of the representative
/// sweep (each pays one exchange's key generation and encapsulation; most
/// the whole round).
fn exchanges_per_seed(_: &mut Criterion) {
    let file = scenario();
    let s = tiersim::scenario::load(&file).unwrap_or_else(|e| panic!("{e}"));
    let plan = Plan::new(&s, &file, &MenuFlags::default(), None).expect("sweepable");
    let mut attempts = 0usize;
    for seed in 0..SEEDS {
        let report = plan.run(&plan.compose(seed, &plan.schedule(seed)));
        attempts += report
            .steps
            .iter()
            .filter_map(|step| step.request.as_ref())
            .flat_map(|r| r.attempts.iter())
            .filter(|a| a.provider.to_string().starts_with("chutes:"))
            .count();
    }
    println!(
        "chutes/exchanges_per_seed: {:.2} Chutes attempts per seed of sweep_mixed_traffic \
         (seeds 0..{SEEDS})",
        attempts as f64 / SEEDS as f64
    );
}

criterion_group!(
    benches,
    bench,
    bench_fine_tick,
    bench_idle,
    exchanges_per_seed
);
criterion_main!(benches);

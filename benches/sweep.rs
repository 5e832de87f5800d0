//! Seed-sweep throughput: seeds per second for the representative
//! ~10-request scenario (`scenarios/sweep_mixed_traffic.toml`: NEAR with
//! Chutes fallback, Chutes end-to-end encryption on, its `[sweep]` fault
//! menu), on one thread and on two. Each iteration runs a batch of seeds
//! (each a whole turmoil world with a random fault schedule and every oracle
//! checked after every step); criterion reports the throughput in seeds/s,
//! and the bench prints the simulated/wall time ratio.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use criterion::{
    criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use tiersim::sweep::{self, MenuFlags, Plan};

/// Seeds per iteration: the same batch every iteration, so samples compare.
const BATCH: u64 = 40;

fn scenario() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/sweep_mixed_traffic.toml")
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

criterion_group!(benches, bench);
criterion_main!(benches);

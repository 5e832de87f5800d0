//! Selection latency: the engine's lock-free `Registry::select` against a
//! faithful re-implementation of the seed PR's hot path (`baseline`).
//!
//! Both sides run in the same harness: one current-thread tokio `block_on`
//! around the whole timed loop (the baseline's `RwLock::read().await` is real),
//! with the same `black_box`ed inputs and result.
//!
//! Time is the benchmark thread's CPU time, not wall time: the bench runs on
//! a small machine shared with concurrent builds, and wall time would charge
//! whatever else was scheduled to whichever side happened to be measured.
//! Both sides are measured the same way; on an idle machine the two agree.

mod baseline;

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use tiersim_engine::registry::{Discovered, External, SourceRead};
use tiersim_engine::testing::FakeProvider;
use tiersim_engine::{Operation, Provider, Registry};

const MODEL: &str = "zai-org/GLM-5.1-FP8";
const KEY: &str = "4f1c2a9e7b3d5f60a8e2c4b6d8f0a1c3e5b7d9f1a3c5e7b9d1f3a5c7e9b1d3f5";

struct Case {
    id: &'static str,
    near: usize,
    other_models: usize,
    /// Providers beyond the model's own that also hold `KEY`.
    key_sharers: usize,
    pubkey: bool,
}

const CASES: &[Case] = &[
    Case {
        id: "2p",
        near: 1,
        other_models: 1_000,
        key_sharers: 0,
        pubkey: false,
    },
    Case {
        id: "4p",
        near: 3,
        other_models: 1_000,
        key_sharers: 0,
        pubkey: false,
    },
    Case {
        id: "4p_pubkey",
        near: 3,
        other_models: 1_000,
        key_sharers: 0,
        pubkey: true,
    },
    Case {
        id: "4p_pubkey_shared2000",
        near: 3,
        other_models: 1_000,
        key_sharers: 2_000 - 3,
        pubkey: true,
    },
    Case {
        id: "2p_models_100000",
        near: 1,
        other_models: 100_000,
        key_sharers: 0,
        pubkey: false,
    },
];

/// The same world for both sides: `MODEL` = `near` NEAR providers holding
/// `KEY` + one Chutes; `other_models` models on their own NEAR providers, of
/// which `key_sharers` also hold `KEY` (spread over the other models).
fn world(c: &Case) -> (Registry, baseline::Pool) {
    let p = |f: FakeProvider| -> Arc<dyn Provider> { Arc::new(f) };
    let chutes = p(FakeProvider::chutes("chutes:zai-org/GLM-5.1-TEE"));
    let mut model: Vec<_> = (0..c.near)
        .map(|i| p(FakeProvider::near(&format!("near-{i}")).with_keys([KEY])))
        .collect();
    let mut set = Discovered::default();
    let mut pool = baseline::Pool::default();
    let mut others: Vec<Vec<Arc<dyn Provider>>> = vec![Vec::new(); c.other_models];
    for i in 0..c.other_models.max(c.key_sharers) {
        let key = if i < c.key_sharers {
            KEY.to_string()
        } else {
            format!("key-{i}")
        };
        others[i % c.other_models]
            .push(p(FakeProvider::near(&format!("other-{i}")).with_keys([key])));
    }
    for (i, providers) in others.into_iter().enumerate() {
        let name = format!("org-{}/model-{i}", i % 97);
        pool.insert(&name, providers.clone());
        set.0.insert(name, providers);
    }
    set.0.insert(MODEL.to_string(), model.clone());
    model.push(chutes.clone());
    pool.insert(MODEL, model);

    let reg = Registry::new();
    reg.reserve([MODEL]);
    reg.register_secondary(MODEL, chutes);
    reg.refresh(SourceRead::Ok(set), SourceRead::Ok(External::default()));
    (reg, pool)
}

/// CPU time consumed by the calling thread.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call's duration.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("select");
    for case in CASES {
        let (reg, pool) = world(case);
        let key = case.pubkey.then_some(KEY);
        let want = if case.pubkey {
            case.near
        } else {
            case.near + 1
        };
        let got = reg
            .select(MODEL, Operation::ChatCompletion, key, false)
            .unwrap();
        assert_eq!(got.len(), want, "{}", case.id);
        let base = rt
            .block_on(pool.get_providers_with_fallback(
                MODEL,
                Operation::ChatCompletion,
                key,
                false,
            ))
            .unwrap();
        assert_eq!(base.len(), want, "{}", case.id);

        group.bench_function(BenchmarkId::new("engine", case.id), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = thread_cpu_time();
                    for _ in 0..iters {
                        let _ = black_box(reg.select(
                            black_box(MODEL),
                            black_box(Operation::ChatCompletion),
                            black_box(key),
                            black_box(false),
                        ));
                    }
                    thread_cpu_time() - start
                })
            })
        });
        group.bench_function(BenchmarkId::new("baseline", case.id), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = thread_cpu_time();
                    for _ in 0..iters {
                        let _ = black_box(
                            pool.get_providers_with_fallback(
                                black_box(MODEL),
                                black_box(Operation::ChatCompletion),
                                black_box(key),
                                black_box(false),
                            )
                            .await,
                        );
                    }
                    thread_cpu_time() - start
                })
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);

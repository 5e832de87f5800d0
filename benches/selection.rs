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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use tiersim_benches::thread_cpu_time;
use tiersim_engine::registry::{Discovered, External, SourceRead};
use tiersim_engine::testing::FakeProvider;
use tiersim_engine::{Operation, Provider, Registry, Shape};

const MODEL: &str = "zai-org/GLM-5.1-FP8";
const KEY: &str = "4f1c2a9e7b3d5f60a8e2c4b6d8f0a1c3e5b7d9f1a3c5e7b9d1f3a5c7e9b1d3f5";

struct Case {
    id: &'static str,
    near: usize,
    other_models: usize,
    /// Providers beyond the model's own that also hold `KEY`.
    key_sharers: usize,
    pubkey: bool,
    /// The model's providers' R46 TTFT state (R47 orders by it).
    latency: Latency,
    /// Declared context windows and the request's estimate (R42/R44), the
    /// other per-provider input of the sort key.
    capacity: Capacity,
}

/// Context windows given to the model's providers, and the estimate each
/// timed request carries (`Registry::select_shaped`).
#[derive(Clone, Copy, PartialEq)]
enum Capacity {
    /// No window declared, no estimate: `Registry::select`.
    None,
    /// near-0 and near-1 declare 262 144, the rest and Chutes 1 048 576;
    /// a 10 000-token request fits the smaller tier, which leads alone
    /// (two capacity tiers never share traffic).
    Fits,
    /// The same windows and a 300 000-token request: the smaller tier
    /// overflows and sorts last, so the whole key is computed and compared.
    Overflows,
}

impl Capacity {
    const SMALL: u32 = 262_144;
    const LARGE: u32 = 1_048_576;

    fn window(self, near: usize) -> Option<u32> {
        match self {
            Capacity::None => None,
            _ if near < 2 => Some(Self::SMALL),
            _ => Some(Self::LARGE),
        }
    }

    fn estimate(self) -> Option<u32> {
        match self {
            Capacity::None => None,
            Capacity::Fits => Some(10_000),
            Capacity::Overflows => Some(300_000),
        }
    }
}

/// TTFT state given to the model's NEAR providers before timing (Chutes
/// stays unwarmed, as it is in the simulation).
#[derive(Clone, Copy, PartialEq)]
enum Latency {
    /// No samples: the order's fast path (no key computed).
    None,
    /// Every NEAR warmed at 40–60 ms: a latency floor exists, so the whole
    /// key is computed and compared, but nobody is demoted.
    Warm,
    /// As `Warm`, but near-0 at 3 s: latency-demoted behind Chutes.
    SlowFirst,
}

const CASES: &[Case] = &[
    Case {
        id: "2p",
        near: 1,
        other_models: 1_000,
        key_sharers: 0,
        pubkey: false,
        latency: Latency::None,
        capacity: Capacity::None,
    },
    Case {
        id: "4p",
        near: 3,
        other_models: 1_000,
        key_sharers: 0,
        pubkey: false,
        latency: Latency::None,
        capacity: Capacity::None,
    },
    Case {
        id: "4p_pubkey",
        near: 3,
        other_models: 1_000,
        key_sharers: 0,
        pubkey: true,
        latency: Latency::None,
        capacity: Capacity::None,
    },
    Case {
        id: "4p_pubkey_shared2000",
        near: 3,
        other_models: 1_000,
        key_sharers: 2_000 - 3,
        pubkey: true,
        latency: Latency::None,
        capacity: Capacity::None,
    },
    Case {
        id: "2p_models_100000",
        near: 1,
        other_models: 100_000,
        key_sharers: 0,
        pubkey: false,
        latency: Latency::None,
        capacity: Capacity::None,
    },
    Case {
        id: "16p",
        near: 15,
        other_models: 1_000,
        key_sharers: 0,
        pubkey: false,
        latency: Latency::None,
        capacity: Capacity::None,
    },
    Case {
        id: "4p_latency",
        near: 3,
        other_models: 1_000,
        key_sharers: 0,
        pubkey: false,
        latency: Latency::Warm,
        capacity: Capacity::None,
    },
    Case {
        id: "4p_latency_demoted",
        near: 3,
        other_models: 1_000,
        key_sharers: 0,
        pubkey: false,
        latency: Latency::SlowFirst,
        capacity: Capacity::None,
    },
    Case {
        id: "4p_capacity",
        near: 3,
        other_models: 1_000,
        key_sharers: 0,
        pubkey: false,
        latency: Latency::None,
        capacity: Capacity::Fits,
    },
    Case {
        id: "4p_capacity_latency",
        near: 3,
        other_models: 1_000,
        key_sharers: 0,
        pubkey: false,
        latency: Latency::Warm,
        capacity: Capacity::Fits,
    },
    Case {
        id: "4p_capacity_overflow_latency",
        near: 3,
        other_models: 1_000,
        key_sharers: 0,
        pubkey: false,
        latency: Latency::Warm,
        capacity: Capacity::Overflows,
    },
    Case {
        id: "64p",
        near: 63,
        other_models: 1_000,
        key_sharers: 0,
        pubkey: false,
        latency: Latency::None,
        capacity: Capacity::None,
    },
];

/// Cases also measured as `engine_owned`: selection plus the owned candidate
/// list `router.rs` builds from it (what a request really pays).
const OWNED: &[&str] = &["2p", "4p", "64p"];

/// Cases also measured as `engine_select`: `Registry::select_shaped`, the
/// owned `Selection` (a snapshot `Guard` and the order copied out), for
/// callers that keep the selection rather than borrow it.
const GUARDED: &[&str] = &["2p", "4p", "64p"];

/// Cases also measured with a second thread selecting the same model at once
/// (`<id>_2threads`): the seed's global round-robin write lock against the
/// engine's atomics. Only the measuring thread's CPU time counts.
const CONTENDED: &[&str] = &["4p"];

/// The same world for both sides: `MODEL` = `near` NEAR providers holding
/// `KEY` + one Chutes; `other_models` models on their own NEAR providers, of
/// which `key_sharers` also hold `KEY` (spread over the other models).
fn world(c: &Case) -> (Registry, baseline::Pool) {
    let p = |f: FakeProvider| -> Arc<dyn Provider> { Arc::new(f) };
    let windowed = |f: FakeProvider, w: Option<u32>| match w {
        Some(w) => f.with_context_window(w),
        None => f,
    };
    let chutes = p(windowed(
        FakeProvider::chutes("chutes:zai-org/GLM-5.1-TEE"),
        c.capacity.window(usize::MAX),
    ));
    let mut model: Vec<_> = (0..c.near)
        .map(|i| {
            let near = FakeProvider::near(&format!("near-{i}")).with_keys([KEY]);
            p(windowed(near, c.capacity.window(i)))
        })
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
    if c.latency != Latency::None {
        for i in 0..c.near {
            let ms = match (c.latency, i) {
                (Latency::SlowFirst, 0) => 3_000,
                _ => 40 + 10 * (i as u64 % 3),
            };
            for _ in 0..8 {
                assert!(reg.record_ttft(&format!("near-{i}"), Duration::from_millis(ms)));
            }
        }
    }
    (reg, pool)
}

/// Runs `measure` (which returns the CPU time it spent on this thread),
/// optionally while another thread runs `rival` until `measure` is done.
fn with_rival(
    rival: Option<&(dyn Fn(&AtomicBool) + Sync)>,
    measure: impl FnOnce() -> Duration,
) -> Duration {
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        if let Some(rival) = rival {
            let stop = &stop;
            s.spawn(move || rival(stop));
        }
        let spent = measure();
        stop.store(true, Ordering::Relaxed);
        spent
    })
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
        let shape = Shape {
            estimate: case.capacity.estimate(),
            prefix: None,
        };
        let got = reg
            .select_shaped(MODEL, Operation::ChatCompletion, key, false, shape)
            .unwrap();
        assert_eq!(got.len(), want, "{}", case.id);
        let lent = reg
            .with_selection(MODEL, Operation::ChatCompletion, key, false, shape, |sel| {
                sel.len()
            })
            .unwrap();
        assert_eq!(lent, want, "{}", case.id);
        drop(got);
        let base = rt
            .block_on(pool.get_providers_with_fallback(
                MODEL,
                Operation::ChatCompletion,
                key,
                false,
            ))
            .unwrap();
        assert_eq!(base.len(), want, "{}", case.id);

        // `Registry::with_selection`: the snapshot through the thread's
        // cached handle, the order lent to the closure. With no estimate it
        // is `select`'s path, so every case times the one selection.
        let engine = |iters: u64| {
            let start = thread_cpu_time();
            for _ in 0..iters {
                let s = reg.with_selection(
                    black_box(MODEL),
                    black_box(Operation::ChatCompletion),
                    black_box(key),
                    black_box(false),
                    black_box(shape),
                    |sel| {
                        black_box(sel);
                    },
                );
                let _ = black_box(s);
            }
            thread_cpu_time() - start
        };
        // `engine` plus the owned candidate list the router builds from the
        // order (`to_candidates`).
        let engine_owned = |iters: u64| {
            let start = thread_cpu_time();
            for _ in 0..iters {
                let s = reg.with_selection(
                    black_box(MODEL),
                    black_box(Operation::ChatCompletion),
                    black_box(key),
                    black_box(false),
                    black_box(shape),
                    |sel| sel.to_owned_candidates(),
                );
                let _ = black_box(s);
            }
            thread_cpu_time() - start
        };
        let engine_rival = |stop: &AtomicBool| {
            while !stop.load(Ordering::Relaxed) {
                let _ = black_box(reg.with_selection(
                    MODEL,
                    Operation::ChatCompletion,
                    key,
                    false,
                    shape,
                    |sel| {
                        black_box(sel);
                    },
                ));
            }
        };
        // The baseline's lock is async: one current-thread `block_on` around
        // the whole timed loop, on each thread.
        let baseline = |rt: &tokio::runtime::Runtime, iters: u64| {
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
        };
        let baseline_rival = |stop: &AtomicBool| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("runtime");
            rt.block_on(async {
                while !stop.load(Ordering::Relaxed) {
                    let _ = black_box(
                        pool.get_providers_with_fallback(
                            MODEL,
                            Operation::ChatCompletion,
                            key,
                            false,
                        )
                        .await,
                    );
                }
            })
        };

        group.bench_function(BenchmarkId::new("engine", case.id), |b| {
            b.iter_custom(engine)
        });
        group.bench_function(BenchmarkId::new("baseline", case.id), |b| {
            b.iter_custom(|iters| baseline(&rt, iters))
        });
        if OWNED.contains(&case.id) {
            group.bench_function(BenchmarkId::new("engine_owned", case.id), |b| {
                b.iter_custom(engine_owned)
            });
        }
        if GUARDED.contains(&case.id) {
            group.bench_function(BenchmarkId::new("engine_select", case.id), |b| {
                b.iter_custom(|iters| {
                    let start = thread_cpu_time();
                    for _ in 0..iters {
                        let _ = black_box(reg.select_shaped(
                            black_box(MODEL),
                            black_box(Operation::ChatCompletion),
                            black_box(key),
                            black_box(false),
                            black_box(shape),
                        ));
                    }
                    thread_cpu_time() - start
                })
            });
        }
        if CONTENDED.contains(&case.id) {
            let id = format!("{}_2threads", case.id);
            group.bench_function(BenchmarkId::new("engine", &id), |b| {
                b.iter_custom(|iters| with_rival(Some(&engine_rival), || engine(iters)))
            });
            group.bench_function(BenchmarkId::new("baseline", &id), |b| {
                b.iter_custom(|iters| with_rival(Some(&baseline_rival), || baseline(&rt, iters)))
            });
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);

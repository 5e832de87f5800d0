//! `Registry::select` and `Registry::with_selection` allocate nothing for up
//! to four providers, on the plain, pubkey and capability-filtered paths
//! alike.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;
use std::time::Duration;

use tiersim_engine::registry::{Discovered, External, SourceRead};
use tiersim_engine::testing::{rows, FakeProvider};
use tiersim_engine::{Operation, Registry, Shape};

/// Counts allocations made by the current thread while counting is on, so
/// the test harness's other threads do not interfere.
struct Counting;

thread_local! {
    static ON: Cell<bool> = const { Cell::new(false) };
    static COUNT: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if ON.with(Cell::get) {
            COUNT.with(|c| c.set(c.get() + 1));
        }
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if ON.with(Cell::get) {
            COUNT.with(|c| c.set(c.get() + 1));
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn allocations(f: impl FnOnce()) -> usize {
    COUNT.with(|c| c.set(0));
    ON.with(|o| o.set(true));
    f();
    ON.with(|o| o.set(false));
    COUNT.with(Cell::get)
}

const M: &str = "zai-org/GLM-5.1-FP8";

/// `n` providers: `n - 1` NEAR sharing key `k` (so several can lead) and one
/// Chutes, or a single NEAR when `n == 1`; plus 1,000 other models.
fn registry(n: usize) -> Registry {
    let reg = Registry::new();
    let nears: Vec<_> = (0..n.max(2) - 1)
        .map(|i| {
            FakeProvider::near(&format!("near-{i}"))
                .with_keys(["k"])
                .arc()
        })
        .collect();
    if n > 1 {
        reg.register_secondary(M, FakeProvider::chutes("chutes").arc());
    }
    let other = FakeProvider::near("other").with_keys(["k-other"]).arc();
    let near_refs: Vec<_> = nears.iter().collect();
    let names: Vec<String> = (0..1000).map(|i| format!("other/model-{i}")).collect();
    let mut set: Vec<(&str, &[&Arc<FakeProvider>])> = vec![(M, &near_refs)];
    let other_ref = [&other];
    set.extend(names.iter().map(|m| (m.as_str(), &other_ref[..])));
    reg.refresh(
        SourceRead::Ok(Discovered(rows(&set))),
        SourceRead::Ok(External::default()),
    );
    assert_eq!(reg.view().provider_ids(M).len(), n);
    reg
}

#[test]
fn r17_select_allocates_nothing_for_up_to_four_providers() {
    let cases = [
        (Operation::ChatCompletion, None, false),
        (Operation::ChatCompletion, Some("k"), false),
        (Operation::ChatCompletionStream, None, false),
        (Operation::ChatCompletion, None, true),
        (Operation::ChatCompletionStream, Some("k"), true),
    ];
    for n in 1..=4 {
        let reg = registry(n);
        for (op, key, e2ee) in cases {
            // Warm up: arc-swap registers this thread's debt slots once.
            drop(reg.select(M, op, key, e2ee).unwrap());
            let mut len = 0;
            let count = allocations(|| {
                for _ in 0..100 {
                    let s = std::hint::black_box(reg.select(M, op, key, e2ee)).unwrap();
                    len = s.len();
                }
            });
            assert!(len >= 1);
            assert_eq!(count, 0, "n={n} op={op:?} key={key:?} e2ee={e2ee}");
        }
    }
}

#[test]
fn r17_lent_selection_allocates_nothing_for_up_to_four_providers() {
    // `with_selection`: the thread's snapshot cache and the order on the
    // stack; only the cache's first fill (per thread) may allocate.
    let cases = [
        (Operation::ChatCompletion, None, false),
        (Operation::ChatCompletion, Some("k"), false),
        (Operation::ChatCompletionStream, None, true),
    ];
    for n in 1..=4 {
        let reg = registry(n);
        for (op, key, e2ee) in cases {
            let select = || {
                reg.with_selection(M, op, key, e2ee, Shape::default(), |sel| sel.len())
                    .unwrap()
            };
            select();
            let mut len = 0;
            let count = allocations(|| {
                for _ in 0..100 {
                    len = std::hint::black_box(select());
                }
            });
            assert!(len >= 1);
            assert_eq!(count, 0, "n={n} op={op:?} key={key:?} e2ee={e2ee}");
        }
    }
}

/// R47's keyed path (a latency floor, a latency-demoted leader, the sort by
/// the whole key and the leading group by key) and R48's prefix placement
/// allocate nothing either.
#[test]
fn r47_r48_latency_state_and_placement_allocate_nothing() {
    for n in 2..=4 {
        let reg = registry(n);
        for i in 0..n - 1 {
            // near-0 slow, the rest fast: near-0 is latency-demoted when a
            // fast peer is warmed too.
            let ms = if i == 0 { 3000 } else { 40 + i as u64 };
            for _ in 0..8 {
                assert!(reg.record_ttft(&format!("near-{i}"), Duration::from_millis(ms)));
            }
        }
        for (op, prefix) in [
            (Operation::ChatCompletion, None),
            (Operation::ChatCompletionStream, Some(0x9e37_79b9_7f4a_7c15)),
        ] {
            let shape = Shape {
                estimate: None,
                prefix,
            };
            drop(reg.select_shaped(M, op, None, false, shape).unwrap());
            let mut first = String::new();
            let count = allocations(|| {
                for _ in 0..100 {
                    let s =
                        std::hint::black_box(reg.select_shaped(M, op, None, false, shape)).unwrap();
                    assert!(!s.is_empty());
                }
            });
            assert_eq!(count, 0, "n={n} op={op:?}");
            let s = reg.select_shaped(M, op, None, false, shape).unwrap();
            first.push_str(s.ids().next().unwrap().as_str());
            if n > 2 {
                assert_ne!(first, "near-0", "the slow NEAR never leads (n={n})");
            }
        }
    }
}

#[test]
fn r17_the_counter_sees_allocations() {
    // Guards the guard: a Vec allocates, so a broken counter fails here.
    let count = allocations(|| {
        std::hint::black_box(vec![1u8; 16]);
    });
    assert_eq!(count, 1);
}

#[test]
fn r44_sized_selection_allocates_nothing_for_up_to_four_providers() {
    // Two capacity tiers of NEAR and a Chutes with its own window: the
    // overflow path reorders by the whole sort key.
    let reg = Registry::new();
    let base = FakeProvider::near("base")
        .with_keys(["k"])
        .with_context_window(1_000)
        .arc();
    let mid = FakeProvider::near("mid")
        .with_keys(["k"])
        .with_context_window(1_000)
        .arc();
    let long = FakeProvider::near("long")
        .with_keys(["k"])
        .with_context_window(10_000)
        .arc();
    reg.register_secondary(
        M,
        FakeProvider::chutes("chutes")
            .with_context_window(100_000)
            .arc(),
    );
    reg.refresh(
        SourceRead::Ok(Discovered(rows(&[(M, &[&base, &mid, &long])]))),
        SourceRead::Ok(External::default()),
    );
    for estimate in [None, Some(10), Some(5_000), Some(50_000), Some(500_000)] {
        for key in [None, Some("k")] {
            let op = Operation::ChatCompletion;
            let shape = Shape {
                estimate,
                prefix: None,
            };
            drop(reg.select_shaped(M, op, key, false, shape).unwrap());
            let count = allocations(|| {
                for _ in 0..100 {
                    let s = reg.select_shaped(M, op, key, false, shape);
                    std::hint::black_box(s).unwrap();
                }
            });
            assert_eq!(count, 0, "estimate={estimate:?} key={key:?}");
        }
    }
}

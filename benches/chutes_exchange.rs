//! The cryptography one Chutes exchange cannot skip, and what it sets as a
//! floor under a seed sweep's cost (issue 14).
//!
//! A request the router sends to Chutes is end-to-end encrypted (SPEC
//! R23–R25) after its instance's evidence is checked (§7b, SPEC-parity R61):
//! the router draws a fresh ML-KEM-768 response key, encapsulates to the
//! instance's key, gzips and seals the body; the instance decapsulates,
//! opens and gunzips it, encapsulates to the response key and seals its
//! answer; the router decapsulates and opens that; and the quote the
//! gateway signs for the fetch is checked against the trusted vendor key.
//! `exchange/json` times that whole round with the engine's own functions
//! (the simulated instance calls the same ones); the `op/*` cases split it
//! by primitive.
//!
//! Time is the bench thread's CPU time (the machine is small and shared).
//! The sweep bench (`cargo bench -p tiersim --bench sweep`) prints how many
//! Chutes attempts a seed of `scenarios/sweep_mixed_traffic.toml` makes on
//! average: that count times the exchange is the CPU a seed spends in
//! cryptography the rules pin, whatever the simulator costs around it.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use ml_kem::kem::{Decapsulate, Encapsulate, Generate, KeyExport};
use ml_kem::ml_kem_768::DecapsulationKey;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use serde_json::json;
use tiersim_benches::thread_cpu_time;
use tiersim_engine::chutes::attest::{SimulatedVendor, VendorKey, Verifier};
use tiersim_engine::chutes::e2ee::{seal_request_to, seal_response, InstanceKeypair, SealingKey};

/// Times `round` with the thread's CPU clock.
fn cpu_iter(iters: u64, mut round: impl FnMut()) -> Duration {
    let start = thread_cpu_time();
    for _ in 0..iters {
        round();
    }
    thread_cpu_time() - start
}

fn bench(c: &mut Criterion) {
    let mut rng = ChaCha20Rng::seed_from_u64(14);
    let instance = InstanceKeypair::from_seed([7; 64]);
    let sealing = SealingKey::new(instance.public_key_bytes());
    let vendor = VendorKey::from_seed([3; 32]);
    let verifier = SimulatedVendor::new(vendor.public_key());
    let report = [5u8; 64];
    let request = json!({
        "model": "moonshotai/Kimi-K2.6-TEE",
        "messages": [{"role": "user", "content": "hello from the sweep"}],
        "max_tokens": 64,
    });
    let answer = serde_json::to_vec(&json!({
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "moonshotai/Kimi-K2.6-TEE",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello back"},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6},
    }))
    .expect("serialisable");

    let mut group = c.benchmark_group("chutes");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));

    group.bench_function("exchange/json", |b| {
        b.iter_custom(|iters| {
            cpu_iter(iters, || {
                let quote = vendor.quote(black_box(&report));
                let attested = verifier.verify_quote(&quote).expect("a good quote");
                assert_eq!(attested, report);
                let (blob, key) =
                    seal_request_to(&mut rng, &sealing, request.clone()).expect("seals");
                let (opened, response_pk) = instance.open_request(&blob).expect("opens");
                black_box(&opened);
                let reply = seal_response(&mut rng, &response_pk, &answer).expect("seals");
                let plain = key.open_response(&reply).expect("opens");
                assert_eq!(plain.len(), answer.len());
            })
        });
    });

    let dk = DecapsulationKey::generate_from_rng(&mut rng);
    let ek = dk.encapsulation_key().clone();
    let (ct, _) = ek.encapsulate_with_rng(&mut rng);
    group.bench_function("op/mlkem768_keygen", |b| {
        b.iter_custom(|iters| {
            cpu_iter(iters, || {
                black_box(
                    DecapsulationKey::generate_from_rng(&mut rng)
                        .encapsulation_key()
                        .to_bytes(),
                );
            })
        });
    });
    group.bench_function("op/mlkem768_encapsulate", |b| {
        b.iter_custom(|iters| {
            cpu_iter(iters, || {
                black_box(ek.encapsulate_with_rng(&mut rng));
            })
        });
    });
    group.bench_function("op/mlkem768_decapsulate", |b| {
        b.iter_custom(|iters| {
            cpu_iter(iters, || {
                black_box(dk.decapsulate(black_box(&ct)));
            })
        });
    });
    group.bench_function("op/ed25519_quote_sign", |b| {
        b.iter_custom(|iters| {
            cpu_iter(iters, || {
                black_box(vendor.quote(black_box(&report)));
            })
        });
    });
    let quote = vendor.quote(&report);
    group.bench_function("op/ed25519_quote_verify", |b| {
        b.iter_custom(|iters| {
            cpu_iter(iters, || {
                black_box(verifier.verify_quote(black_box(&quote)).expect("good"));
            })
        });
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

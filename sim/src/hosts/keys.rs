//! Key material derived from a world's seed, derived once per identity.
//!
//! Every key of a simulated world (a NEAR backend's ed25519 signing key, the
//! Chutes vendor key, each instance's ML-KEM-768 keypair and the evidence
//! binding it) is a pure function of seed bytes derived from the world's
//! seed ([`derive_seed`](super::derive_seed)). Deriving one costs tens of
//! microseconds, and the same world is built again and again: the suite runs
//! each scenario twice, `sweep --check-determinism` runs each seed twice,
//! shrinking reruns one seed dozens of times, and a builder may ask for the
//! same public key more than once. So each derivation is memoised
//! process-wide, keyed by exactly the seed bytes it derives from: a hit
//! returns what a miss computes, so no result can depend on the memo (which
//! run came first, which thread). Each memo is a bounded LRU, so a sweep of
//! a million seeds keeps a flat memory footprint.

use std::num::NonZeroUsize;
use std::sync::{Arc, LazyLock, Mutex};

use lru::LruCache;
use tiersim_engine::chutes::attest::{Evidence, VendorKey};
use tiersim_engine::chutes::e2ee::InstanceKeypair;

/// Entries per memo: several worlds' worth (a world has a handful of keys
/// of each kind), so a seed's second run and a shrink's reruns hit.
const WORLDS_REMEMBERED: usize = 16;

/// One process-wide, bounded memo of a pure derivation `K → V`.
struct Memo<K, V>(LazyLock<Mutex<LruCache<K, V>>>);

impl<K: std::hash::Hash + Eq, V: Clone> Memo<K, V> {
    const fn new() -> Self {
        Memo(LazyLock::new(|| {
            Mutex::new(LruCache::new(
                NonZeroUsize::new(WORLDS_REMEMBERED * 8).expect("non-zero"),
            ))
        }))
    }

    /// `derive(&key)`, computed at most once while `key` stays remembered.
    /// The lock is not held while deriving: two threads missing on the same
    /// key both derive it, and get the same value.
    fn get(&self, key: K, derive: impl FnOnce(&K) -> V) -> V {
        if let Some(v) = self.lock().get(&key) {
            return v.clone();
        }
        let v = derive(&key);
        self.lock().put(key, v.clone());
        v
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LruCache<K, V>> {
        // A panic while holding the lock cannot leave a half-written entry
        // (`put` is the only write), so a poisoned memo is still sound.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

static ED25519_PUBLIC: Memo<[u8; 32], [u8; 32]> = Memo::new();
static INSTANCE_KEYPAIRS: Memo<[u8; 64], Arc<InstanceKeypair>> = Memo::new();
static BINDINGS: Memo<([u8; 32], [u8; 64]), Evidence> = Memo::new();

/// The ed25519 verifying key of the signing key with secret seed `seed`.
pub fn ed25519_public(seed: [u8; 32]) -> [u8; 32] {
    ED25519_PUBLIC.get(seed, |s| VendorKey::from_seed(*s).public_key())
}

/// The ML-KEM-768 keypair with 64-byte seed `seed` (`d ‖ z`).
pub fn instance_keypair(seed: [u8; 64]) -> Arc<InstanceKeypair> {
    INSTANCE_KEYPAIRS.get(seed, |s| Arc::new(InstanceKeypair::from_seed(*s)))
}

/// The evidence in which the vendor key with seed `vendor_seed` binds the
/// public key of the instance keypair with seed `instance_seed` (§7b).
pub fn binding_evidence(vendor_seed: [u8; 32], instance_seed: [u8; 64]) -> Evidence {
    BINDINGS.get((vendor_seed, instance_seed), |(vendor, instance)| {
        VendorKey::from_seed(*vendor).sign_binding(instance_keypair(*instance).public_key_bytes())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tiersim_engine::chutes::attest::verify_binding;

    #[test]
    fn r7b_memoised_keys_equal_fresh_derivations() {
        let vendor_seed = [7u8; 32];
        let instance_seed = [9u8; 64];
        for _ in 0..2 {
            assert_eq!(
                ed25519_public(vendor_seed),
                VendorKey::from_seed(vendor_seed).public_key()
            );
            let fresh = InstanceKeypair::from_seed(instance_seed);
            assert_eq!(
                instance_keypair(instance_seed).public_key_bytes(),
                fresh.public_key_bytes()
            );
            let evidence = binding_evidence(vendor_seed, instance_seed);
            assert_eq!(
                evidence,
                VendorKey::from_seed(vendor_seed).sign_binding(fresh.public_key_bytes())
            );
            assert!(verify_binding(
                &ed25519_public(vendor_seed),
                fresh.public_key_bytes(),
                &evidence
            )
            .is_ok());
        }
    }

    #[test]
    fn r7b_memo_tells_seeds_apart() {
        assert_ne!(ed25519_public([1; 32]), ed25519_public([2; 32]));
        assert_ne!(
            instance_keypair([1; 64]).public_key_bytes(),
            instance_keypair([2; 64]).public_key_bytes()
        );
        assert_ne!(
            binding_evidence([1; 32], [3; 64]),
            binding_evidence([2; 32], [3; 64])
        );
    }
}

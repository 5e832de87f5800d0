//! A simulated world's key material, derived once per identity.
//!
//! Every key of a simulated world (a NEAR backend's ed25519 signing key, the
//! Chutes vendor key, each instance's ML-KEM-768 keypair) is a pure function
//! of seed bytes ([`derive_seed`](super::derive_seed)). The Chutes side's
//! keys derive from [`IDENTITY_SEED`] and their label, the same in every
//! world, so a sweep's thousands of seeds share them; a NEAR backend's key
//! derives from the world seed (its public key is observable: the
//! registry's pubkey map shows and orders by it). Deriving one costs tens
//! of microseconds (an ML-KEM-768 key generation, an ed25519 base-point
//! multiplication), and worlds are built again and again: every seed of a
//! sweep, the suite's double run, `sweep --check-determinism`, shrinking.
//! So each derivation is memoised process-wide, keyed by exactly the seed
//! bytes it derives from: a hit returns what a miss computes, so no result
//! can depend on the memo (which run came first, which thread). Each memo
//! is a bounded LRU, so a sweep of a million seeds keeps a flat memory
//! footprint.

use std::num::NonZeroUsize;
use std::sync::{Arc, LazyLock, Mutex};

use lru::LruCache;
use tiersim_engine::chutes::attest::VendorKey;
use tiersim_engine::chutes::e2ee::InstanceKeypair;

/// The seed the simulated Chutes' identity keys derive from, with each
/// one's label (`chutes/vendor`, `chutes/{slug}/instance-{i}` and its
/// certificate key, the gateway's own key): the same in every world,
/// whatever its seed (`world::chutes_service` sets it as the gateway's
/// `key_seed`).
///
/// These keys never reach anything a run records: the router sees them only
/// through equality (a substituted listing) and hashes (§7b evidence binds
/// the listed key and the certificate), and no decision depends on their
/// value, only on which key is which. The world seed still drives every
/// random byte of the protocol (the per-request ML-KEM response keys and
/// encapsulations, AEAD and evidence nonces) and every id, so real
/// encryption runs unchanged; a sweep just derives each Chutes key once per
/// process instead of once per seed.
pub const IDENTITY_SEED: u64 = 0;

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
static VENDOR_KEYS: Memo<[u8; 32], Arc<VendorKey>> = Memo::new();

/// The ed25519 verifying key of the signing key with secret seed `seed`.
pub fn ed25519_public(seed: [u8; 32]) -> [u8; 32] {
    ED25519_PUBLIC.get(seed, |s| VendorKey::from_seed(*s).public_key())
}

/// The ML-KEM-768 keypair with 64-byte seed `seed` (`d ‖ z`).
pub fn instance_keypair(seed: [u8; 64]) -> Arc<InstanceKeypair> {
    INSTANCE_KEYPAIRS.get(seed, |s| Arc::new(InstanceKeypair::from_seed(*s)))
}

/// The Chutes vendor's signing key with secret seed `seed` (it signs each
/// evidence fetch's quotes, §7b).
pub fn vendor_key(seed: [u8; 32]) -> Arc<VendorKey> {
    VENDOR_KEYS.get(seed, |s| Arc::new(VendorKey::from_seed(*s)))
}

#[cfg(test)]
mod tests {
    use super::*;

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
            let report = [5u8; 64];
            assert_eq!(
                vendor_key(vendor_seed).quote(&report),
                VendorKey::from_seed(vendor_seed).quote(&report)
            );
        }
    }

    /// The simulated Chutes' identity keys follow the key seed, not the
    /// world seed; its ids still follow the world seed.
    #[test]
    fn r7b_chutes_identity_keys_are_the_same_in_every_world() {
        use crate::hosts::ChutesGateway;
        let gateway = |world| {
            ChutesGateway::new("chutes")
                .world_seed(world)
                .key_seed(IDENTITY_SEED)
        };
        assert_eq!(
            gateway(1).vendor_public_key(),
            gateway(2).vendor_public_key()
        );
        assert_ne!(gateway(1).chute_id("s"), gateway(2).chute_id("s"));
        // Without a key seed, the keys follow the world seed.
        assert_ne!(
            ChutesGateway::new("chutes")
                .world_seed(1)
                .vendor_public_key(),
            ChutesGateway::new("chutes")
                .world_seed(2)
                .vendor_public_key()
        );
    }

    #[test]
    fn r7b_memo_tells_seeds_apart() {
        assert_ne!(ed25519_public([1; 32]), ed25519_public([2; 32]));
        assert_ne!(
            instance_keypair([1; 64]).public_key_bytes(),
            instance_keypair([2; 64]).public_key_bytes()
        );
        assert_ne!(
            vendor_key([1; 32]).public_key(),
            vendor_key([2; 32]).public_key()
        );
    }
}

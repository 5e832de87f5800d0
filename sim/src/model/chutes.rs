//! The model of one Chutes provider's instance pool and its per-request
//! attestation (SPEC §7b, SPEC-parity R60/R61), read against what the
//! gateway listed and which evidence flaw it acted out.
//!
//! Written from the spec: a listing gives every instance a few single-use
//! nonces; each request fetches evidence once, then tries the candidates
//! (instances with a nonce left) in order from a counter, skipping any whose
//! evidence does not bind its key; when none verifies the attempt fails
//! closed and the listing is dropped (its keys proved nothing).

use crate::fault::{EvidenceFlaw, Fault};

/// One Chutes provider's pool, as the router should hold it.
#[derive(Debug, Clone, Default)]
pub struct Pool {
    /// Nonces left per listed instance, in listing order; empty when
    /// nothing is listed (never listed, or dropped).
    nonces: Vec<usize>,
    /// The listing carried the instances' own keys (a `wrong_key` listing
    /// names the gateway's, which only evidence spoilt to bind the
    /// gateway's key, `other_key`, binds).
    own_keys: bool,
    /// R61's counter: advanced once per request whose evidence arrived.
    /// R61 says one process-wide counter across all chutes; issue 15 keeps
    /// one per provider (per chute), and the model follows that design.
    turn: u64,
    /// The gateway restarted since this listing: it forgot the listing's
    /// nonces, so the next invocation is refused as a stale target (R39).
    stale: bool,
}

/// How the instance choice of one request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// This instance (listing index) verified and gave a nonce.
    Instance(usize),
    /// The pool had no instance with a nonce (R39: 503).
    NoneListed,
    /// Every candidate failed attestation: fail closed (§7b).
    AllFailed,
}

impl Pool {
    /// A fresh listing (R60): `instances` instances with `nonces` each.
    pub fn list(&mut self, instances: usize, nonces: usize, own_keys: bool) {
        self.nonces = vec![nonces; instances];
        self.own_keys = own_keys;
        self.stale = false;
    }

    /// Drops the listing (an instance gone, a nonce refused, or no listed
    /// key proven).
    pub fn forget(&mut self) {
        self.nonces.clear();
        self.stale = false;
    }

    /// The gateway restarted: a listing with nonces left now names
    /// forgotten ones (a drained one is listed afresh anyway).
    pub fn gateway_restarted(&mut self) {
        self.stale = self.nonces.iter().any(|&n| n > 0);
    }

    /// Whether the listing names nonces the gateway forgot.
    pub fn is_stale(&self) -> bool {
        self.stale
    }

    /// Whether the pool holds a listing of substituted keys with nonces
    /// left: once the evidence is honest again nothing binds them, so the
    /// next request fails closed (§7b) and drops the listing.
    pub fn holds_unprovable_listing(&self) -> bool {
        !self.own_keys && self.nonces.iter().any(|&n| n > 0)
    }

    /// Whether the listing carried the instances' own keys: a request
    /// sealed to a substituted (gateway's) key is one the chosen instance
    /// cannot open.
    pub fn listed_own_keys(&self) -> bool {
        self.own_keys
    }

    /// Whether `k` requests can each take a nonce of whichever listed
    /// instance their turn lands on: a listing of the instances' own keys,
    /// not stale, every instance with `k` nonces or more.
    pub fn serves_each_of(&self, k: usize) -> bool {
        self.own_keys
            && !self.stale
            && !self.nonces.is_empty()
            && self.nonces.iter().all(|&n| n >= k)
    }

    /// Whether nothing is listed: the next request discovers.
    pub fn unlisted(&self) -> bool {
        self.nonces.is_empty()
    }

    /// §7b / R61: the instance one request uses, given the evidence fault
    /// the gateway acted out and whether the router trusts its vendor key.
    pub fn choose(&mut self, evidence: Option<&Fault>, trusted: bool) -> Choice {
        let candidates: Vec<usize> = (0..self.nonces.len())
            .filter(|&i| self.nonces[i] > 0)
            .collect();
        if candidates.is_empty() {
            return Choice::NoneListed;
        }
        let n = candidates.len();
        let start = (self.turn % n as u64) as usize;
        self.turn += 1;
        for k in 0..n {
            let i = candidates[(start + k) % n];
            if trusted && binds_listed_key(evidence, i, self.own_keys) {
                self.nonces[i] -= 1;
                return Choice::Instance(i);
            }
        }
        self.forget();
        Choice::AllFailed
    }
}

/// Whether instance `i`'s evidence binds this fetch's nonce and the key
/// the listing gave it (its own, or with `own_keys` false the gateway's),
/// under the vendor's signature. Honest evidence binds the instance's own
/// key; `other_key` binds the gateway's instead; every other flaw (absent,
/// another nonce, a bad signature, listed as failed) binds nothing, and
/// `null` lists read as no evidence at all.
fn binds_listed_key(evidence: Option<&Fault>, i: usize, own_keys: bool) -> bool {
    match evidence {
        Some(Fault::Evidence {
            flaw: EvidenceFlaw::NullLists,
            ..
        }) => false,
        Some(Fault::Evidence { flaw, instance }) if *instance as usize == i => {
            !own_keys && *flaw == EvidenceFlaw::OtherKey
        }
        _ => own_keys,
    }
}

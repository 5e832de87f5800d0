use super::{FastRand, RngSeed};

use std::sync::Mutex;

/// A deterministic generator for seeds (and other generators).
///
/// Given the same initial seed, the generator will output the same sequence of seeds.
///
/// Since the seed generator will be kept in a runtime handle, we need to wrap `FastRand`
/// in a Mutex to make it thread safe. Different to the `FastRand` that we keep in a
/// thread local store, the expectation is that seed generation will not need to happen
/// very frequently, so the cost of the mutex should be minimal.
#[derive(Debug)]
pub(crate) struct RngSeedGenerator {
    /// Internal state for the seed generator. We keep it in a Mutex so that we can safely
    /// use it across multiple threads.
    state: Mutex<FastRand>,
}

impl RngSeedGenerator {
    /// Returns a new generator from the provided seed.
    pub(crate) fn new(seed: RngSeed) -> Self {
        Self {
            state: Mutex::new(FastRand::from_seed(seed)),
        }
    }

    /// Returns the next seed in the sequence.
    pub(crate) fn next_seed(&self) -> RngSeed {
        let mut rng = self
            .state
            .lock()
            .expect("RNG seed generator is internally corrupt");

        let s = rng.fastrand();
        let r = rng.fastrand();

        RngSeed::from_pair(s, r)
    }

    /// tiersim patch (see `vendor/README.md`): advances the generator as `n` calls
    /// of `next_seed` would, in O(log n) (the generator is linear over GF(2)).
    #[cfg(feature = "test-util")]
    pub(crate) fn skip_seeds(&self, n: u64) {
        let mut rng = self
            .state
            .lock()
            .expect("RNG seed generator is internally corrupt");
        rng.jump(n, 2);
    }

    /// tiersim patch (see `vendor/README.md`): the generator's state.
    #[cfg(feature = "test-util")]
    pub(crate) fn sim_state(&self) -> u64 {
        let rng = self
            .state
            .lock()
            .expect("RNG seed generator is internally corrupt");
        u64::from(rng.one) | (u64::from(rng.two) << 32)
    }

    /// Directly creates a generator using the next seed.
    pub(crate) fn next_generator(&self) -> Self {
        RngSeedGenerator::new(self.next_seed())
    }
}

impl FastRand {
    /// tiersim patch (see `vendor/README.md`): the state after `n * per_call` calls
    /// of `fastrand`. One step is a linear map of the 64-bit state over
    /// GF(2), so `n` steps are its matrix power, taken by squaring.
    #[cfg(feature = "test-util")]
    pub(crate) fn jump(&mut self, n: u64, per_call: u64) {
        // A short jump is cheaper stepped than through the matrices.
        const STEP_BELOW: u64 = 64;
        if let Some(steps) = n.checked_mul(per_call).filter(|&s| s < STEP_BELOW) {
            for _ in 0..steps {
                self.fastrand();
            }
            return;
        }
        // `per_call` steps per call, then `n` calls: (M^n)^per_call, each
        // M^n the product of the precomputed M^(2^i) for the bits of `n`.
        let powers = step_powers();
        let mut state = u64::from(self.one) | (u64::from(self.two) << 32);
        for _ in 0..per_call {
            let mut bits = n;
            while bits != 0 {
                let i = bits.trailing_zeros() as usize;
                state = apply(&powers[i], state);
                bits &= bits - 1;
            }
        }
        self.one = state as u32;
        self.two = (state >> 32) as u32;
    }

    /// Replaces the state of the random number generator with the provided seed, returning
    /// the seed that represents the previous state of the random number generator.
    ///
    /// The random number generator will become equivalent to one created with
    /// the same seed.
    pub(crate) fn replace_seed(&mut self, seed: RngSeed) -> RngSeed {
        let old_seed = RngSeed::from_pair(self.one, self.two);

        self.one = seed.s;
        self.two = seed.r;

        old_seed
    }
}

/// tiersim patch (see `vendor/README.md`): a linear map of the 64-bit
/// `FastRand` state over GF(2); column `i` is the image of basis vector `i`.
#[cfg(feature = "test-util")]
type StepMatrix = [u64; 64];

/// tiersim patch: the map applied to a state.
#[cfg(feature = "test-util")]
fn apply(m: &StepMatrix, v: u64) -> u64 {
    let mut out = 0;
    let mut bits = v;
    while bits != 0 {
        let i = bits.trailing_zeros() as usize;
        out ^= m[i];
        bits &= bits - 1;
    }
    out
}

/// tiersim patch (see `vendor/README.md`): `M^(2^i)` for `i` in 0..64,
/// `M` one `fastrand` step, built once per process (64 squarings), so a
/// jump is at most 64 matrix-vector products per call stepped over.
#[cfg(feature = "test-util")]
fn step_powers() -> &'static [StepMatrix; 64] {
    static POWERS: std::sync::OnceLock<Box<[StepMatrix; 64]>> = std::sync::OnceLock::new();
    POWERS.get_or_init(|| {
        fn step(v: u64) -> u64 {
            let mut r = FastRand {
                one: v as u32,
                two: (v >> 32) as u32,
            };
            r.fastrand();
            u64::from(r.one) | (u64::from(r.two) << 32)
        }
        let mut powers = Box::new([[0u64; 64]; 64]);
        for (i, col) in powers[0].iter_mut().enumerate() {
            *col = step(1u64 << i);
        }
        for k in 1..64 {
            let prev = powers[k - 1];
            for i in 0..64 {
                powers[k][i] = apply(&prev, prev[i]);
            }
        }
        powers
    })
}

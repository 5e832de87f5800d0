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
        // A short jump is cheaper stepped than squared: building the matrix
        // alone costs thousands of XORs, one step a few instructions.
        const STEP_BELOW: u64 = 4096;
        if let Some(steps) = n.checked_mul(per_call).filter(|&s| s < STEP_BELOW) {
            for _ in 0..steps {
                self.fastrand();
            }
            return;
        }
        type Matrix = [u64; 64]; // column i: the image of basis vector i
        fn apply(m: &Matrix, v: u64) -> u64 {
            let mut out = 0;
            let mut bits = v;
            while bits != 0 {
                let i = bits.trailing_zeros() as usize;
                out ^= m[i];
                bits &= bits - 1;
            }
            out
        }
        fn compose(a: &Matrix, b: &Matrix) -> Matrix {
            let mut out = [0u64; 64];
            for (i, col) in b.iter().enumerate() {
                out[i] = apply(a, *col);
            }
            out
        }
        fn step(v: u64) -> u64 {
            let mut r = FastRand {
                one: v as u32,
                two: (v >> 32) as u32,
            };
            r.fastrand();
            u64::from(r.one) | (u64::from(r.two) << 32)
        }
        let mut one_step = [0u64; 64];
        for (i, col) in one_step.iter_mut().enumerate() {
            *col = step(1u64 << i);
        }
        // `per_call` steps per call, then `n` calls: (M^per_call)^n.
        let mut base = one_step;
        for _ in 1..per_call {
            base = compose(&one_step, &base);
        }
        let mut state = u64::from(self.one) | (u64::from(self.two) << 32);
        let mut e = n;
        while e != 0 {
            if e & 1 == 1 {
                state = apply(&base, state);
            }
            base = compose(&base, &base);
            e >>= 1;
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

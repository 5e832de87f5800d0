use crate::runtime::time::TimeSource;
use std::fmt;

/// Handle to time driver instance.
pub(crate) struct Handle {
    pub(super) time_source: TimeSource,
    pub(super) inner: super::Inner,
}

impl Handle {
    /// tiersim patch (see `vendor/README.md`): the earliest instant at which the
    /// timer wheel has work (a timer or a wheel cascade; never later than
    /// the earliest timer). `None` for the alternative timer. Reads only.
    #[cfg(feature = "test-util")]
    pub(crate) fn sim_next_work(&self) -> Option<Option<crate::time::Instant>> {
        match &self.inner {
            super::Inner::Traditional {
                state,
                sim_next_work,
                ..
            } => {
                // The answer cached since the wheel last changed, else
                // computed (and cached) under the lock.
                let next = match sim_next_work.load(std::sync::atomic::Ordering::Acquire) {
                    super::SIM_UNKNOWN => {
                        let lock = state.lock();
                        let next = lock.wheel.next_expiration_time();
                        // A deadline that would read as a marker (none
                        // can: the wheel spans 2^36 ms) is not cached.
                        let code = match next {
                            None => Some(super::SIM_NO_TIMER),
                            Some(ms) if ms < super::SIM_NO_TIMER => Some(ms),
                            Some(_) => None,
                        };
                        if let Some(code) = code {
                            sim_next_work.store(code, std::sync::atomic::Ordering::Release);
                        }
                        drop(lock);
                        next
                    }
                    super::SIM_NO_TIMER => None,
                    ms => Some(ms),
                };
                Some(next.map(|ms| {
                    self.time_source.start_instant() + std::time::Duration::from_millis(ms)
                }))
            }
            #[cfg(all(tokio_unstable, feature = "rt-multi-thread"))]
            super::Inner::Alternative { .. } => None,
        }
    }

    /// tiersim patch (see `vendor/README.md`): how many times the scheduler
    /// loop turns (its tick advancing each time) over `ticks` consecutive
    /// idle `block_on(sleep(tick))` calls starting at `from`, each started
    /// with the driver's wake flag set (as a `block_on` that ended on its
    /// sleep leaves it). Each call turns once for the park that only clears
    /// that flag, once per wheel cascade its sleep passes through before
    /// its deadline, and once for the park that reaches the deadline. The
    /// sleep, inserted at `e` for `w = e + tick` (in wheel milliseconds),
    /// sits at the level where `e` and `w` first differ and cascades at each
    /// distinct slot start `w & !(64^L - 1)` strictly between `e` and `w`.
    #[cfg(feature = "test-util")]
    pub(crate) fn sim_idle_turns(
        &self,
        from: crate::time::Instant,
        tick_ms: u64,
        ticks: u64,
    ) -> u64 {
        const LEVELS: u32 = 6;
        if tick_ms == 1 {
            // No slot start lies strictly between `e` and `e + 1`.
            return ticks.saturating_mul(2);
        }
        let e0 = self.time_source.instant_to_tick(from);
        if tick_ms < 64 && ticks > 0 {
            // A tick shorter than a level-1 slot holds at most one multiple
            // of 64 inside it, and then every higher level's slot start
            // inside it is that same point: it turns once more exactly when
            // a multiple of 64 lies strictly inside it. Those are the
            // multiples of 64 strictly inside the whole span that are not
            // tick boundaries `e0 + j * tick_ms` (0 < j < ticks).
            let end = e0 + ticks * tick_ms;
            let inside = (end - 1) / 64 - e0 / 64;
            // Boundaries on a multiple of 64: j * tick_ms = -e0 (mod 64).
            let g = 64 / (64 >> tick_ms.trailing_zeros().min(6));
            let want = (64 - e0 % 64) % 64;
            let on_boundaries = if want % g != 0 || ticks < 2 {
                0
            } else {
                let n = 64 / g;
                let step = (tick_ms / g) % n;
                let target = (want / g) % n;
                // `step` is odd (or `n` is 1), so it has an inverse mod `n`.
                let first = (0..n).find(|j| (j * step) % n == target).unwrap_or(0);
                let first = if first == 0 { n } else { first };
                if first > ticks - 1 {
                    0
                } else {
                    (ticks - 1 - first) / n + 1
                }
            };
            return 2 * ticks + inside - on_boundaries;
        }
        let mut e = e0;
        let mut turns = 0u64;
        for _ in 0..ticks {
            let w = e + tick_ms;
            turns += 2;
            let mut last = None;
            for level in (1..LEVELS).rev() {
                let slot_start = w & !(64u64.pow(level) - 1);
                if slot_start > e && slot_start < w && last != Some(slot_start) {
                    turns += 1;
                    last = Some(slot_start);
                }
            }
            e = w;
        }
        turns
    }

    /// Returns the time source associated with this handle.
    pub(crate) fn time_source(&self) -> &TimeSource {
        &self.time_source
    }

    /// Checks whether the driver has been shutdown.
    pub(super) fn is_shutdown(&self) -> bool {
        self.inner.is_shutdown()
    }

    /// Track that the driver is being unparked
    pub(crate) fn unpark(&self) {
        #[cfg(feature = "test-util")]
        match self.inner {
            super::Inner::Traditional { ref did_wake, .. } => {
                did_wake.store(true, std::sync::atomic::Ordering::SeqCst);
            }
            #[cfg(all(tokio_unstable, feature = "rt-multi-thread"))]
            super::Inner::Alternative { ref did_wake, .. } => {
                did_wake.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
    }
}

cfg_not_rt! {
    impl Handle {
        /// Tries to get a handle to the current timer.
        ///
        /// # Panics
        ///
        /// This function panics if there is no current timer set.
        ///
        /// It can be triggered when [`Builder::enable_time`] or
        /// [`Builder::enable_all`] are not included in the builder.
        ///
        /// It can also panic whenever a timer is created outside of a
        /// Tokio runtime. That is why `rt.block_on(sleep(...))` will panic,
        /// since the function is executed outside of the runtime.
        /// Whereas `rt.block_on(async {sleep(...).await})` doesn't panic.
        /// And this is because wrapping the function on an async makes it lazy,
        /// and so gets executed inside the runtime successfully without
        /// panicking.
        ///
        /// [`Builder::enable_time`]: crate::runtime::Builder::enable_time
        /// [`Builder::enable_all`]: crate::runtime::Builder::enable_all
        #[track_caller]
        pub(crate) fn current() -> Self {
            panic!("{}", crate::util::error::CONTEXT_MISSING_ERROR)
        }
    }
}

impl fmt::Debug for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Handle")
    }
}

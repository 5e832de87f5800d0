//! Provider health: what a provider's past attempts say about it, shared by
//! every model it backs and carried across registry snapshots by
//! [`ProviderId`](crate::provider::ProviderId).
//!
//! - R21: consecutive retryable failures; at [`DEMOTE_AFTER`] the provider is
//!   hard-demoted (R17).
//! - R46: a moving average of time-to-first-token over streamed chat it
//!   served, with its sample count.
//! - R47: whether that average makes it latency-demoted among a request's
//!   providers ([`LatencyFloor`]).
//!
//! Writers are the retry loop (failures) and the router's stream wrapper
//! (successes, TTFT samples); the selection hot path only reads atomics.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Consecutive retryable failures after which a provider is demoted (R21, R17).
pub const DEMOTE_AFTER: u32 = 10;

/// R47: a provider's TTFT average counts (is "warmed") from this many samples.
pub const TTFT_WARM_SAMPLES: u32 = 8;
/// R47: an average at or below this (ms) is never latency-demoted.
pub const TTFT_DEMOTE_FLOOR_MS: f64 = 500.0;
/// R47: demoted only when slower than this many times the fastest warmed one.
pub const TTFT_DEMOTE_RATIO: f64 = 2.0;

/// What of one registry's provider health selection must weigh: how many
/// providers have a consecutive failure (any, so whatever the demotion
/// threshold) plus how many have at least [`TTFT_WARM_SAMPLES`] TTFT
/// samples. Each term moves only where one atomic read-modify-write of the
/// provider's own state decides the crossing (the failure count leaving or
/// returning to zero, the sample count reaching the threshold), and a
/// dropped [`Health`] takes its terms back, so the sum is exact. At zero no
/// provider is demoted (R17/R21) and none is warmed (R47: no latency
/// floor), and selection reads no provider's health at all.
#[derive(Debug, Default)]
pub(crate) struct Notable(AtomicUsize);

impl Notable {
    /// Whether no provider has a failure or a warmed TTFT.
    #[inline]
    pub fn none(&self) -> bool {
        self.0.load(Ordering::Relaxed) == 0
    }
}

#[derive(Debug)]
pub(crate) struct Health {
    failures: AtomicU32,
    /// The registry's count this provider is in while it has a failure or
    /// a warmed TTFT.
    notable: Arc<Notable>,
    /// The demotion threshold: [`DEMOTE_AFTER`] unless a planted bug moved
    /// it (a field only in builds with planted bugs compiled in).
    #[cfg(feature = "planted-bugs")]
    pub(crate) demote_after: AtomicU32,
    /// R46: the TTFT moving average in ms, as `f64` bits.
    ttft_ema_bits: AtomicU64,
    /// R46: TTFT samples taken (saturating).
    ttft_samples: AtomicU32,
}

impl Default for Health {
    /// A provider counted in a [`Notable`] of its own.
    fn default() -> Self {
        Health::counted_in(Arc::default())
    }
}

impl Drop for Health {
    fn drop(&mut self) {
        let failing = usize::from(self.consecutive_failures() > 0);
        let warmed = usize::from(*self.ttft_samples.get_mut() >= TTFT_WARM_SAMPLES);
        if failing + warmed > 0 {
            self.notable
                .0
                .fetch_sub(failing + warmed, Ordering::Relaxed);
        }
    }
}

impl Health {
    /// A fresh provider's health, counted in `notable` (its registry's).
    pub(crate) fn counted_in(notable: Arc<Notable>) -> Self {
        Health {
            failures: AtomicU32::new(0),
            notable,
            #[cfg(feature = "planted-bugs")]
            demote_after: AtomicU32::new(DEMOTE_AFTER),
            ttft_ema_bits: AtomicU64::new(0f64.to_bits()),
            ttft_samples: AtomicU32::new(0),
        }
    }

    #[inline]
    pub fn consecutive_failures(&self) -> u32 {
        self.failures.load(Ordering::Relaxed)
    }
    /// R17: demoted below every healthy provider.
    #[inline]
    pub fn is_demoted(&self) -> bool {
        #[cfg(feature = "planted-bugs")]
        let threshold = self.demote_after.load(Ordering::Relaxed);
        #[cfg(not(feature = "planted-bugs"))]
        let threshold = DEMOTE_AFTER;
        self.consecutive_failures() >= threshold
    }
    pub(crate) fn record_failure(&self) {
        if self.failures.fetch_add(1, Ordering::Relaxed) == 0 {
            self.notable.0.fetch_add(1, Ordering::Relaxed);
        }
    }
    pub(crate) fn record_success(&self) {
        // The swap decides the crossing; the plain read first keeps the
        // usual success (nothing to reset) free of a locked instruction.
        if self.failures.load(Ordering::Relaxed) > 0 && self.failures.swap(0, Ordering::Relaxed) > 0
        {
            self.notable.0.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// R46: the TTFT average (ms) and how many samples made it.
    #[inline]
    pub fn ttft(&self) -> Ttft {
        Ttft {
            samples: self.ttft_samples.load(Ordering::Relaxed),
            ema_ms: f64::from_bits(self.ttft_ema_bits.load(Ordering::Relaxed)),
        }
    }

    /// R47: the TTFT average when it is warmed (as [`Ttft::warmed`] says of
    /// [`Health::ttft`]), reading the average only then: the latency floor's
    /// pass over every provider of a request.
    #[inline]
    pub fn warmed_ttft_ms(&self) -> Option<f64> {
        if self.ttft_samples.load(Ordering::Relaxed) < TTFT_WARM_SAMPLES {
            return None;
        }
        let ms = f64::from_bits(self.ttft_ema_bits.load(Ordering::Relaxed));
        (ms > 0.0).then_some(ms)
    }

    /// R46: takes one TTFT sample. Samples under 1 ms are not taken (the
    /// caller has already checked the stream qualifies).
    pub(crate) fn record_ttft(&self, ttft: Duration) {
        let ms = ttft.as_secs_f64() * 1000.0;
        if ms < 1.0 {
            return;
        }
        let n = self
            .ttft_samples
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_add(1))
            })
            .unwrap_or_else(|n| n)
            .saturating_add(1);
        if n == TTFT_WARM_SAMPLES {
            self.notable.0.fetch_add(1, Ordering::Relaxed);
        }
        let _ = self
            .ttft_ema_bits
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some(ema_step(f64::from_bits(bits), n, ms).to_bits())
            });
    }
}

/// R46's update for sample number `n` (1-based) of `ms`: the first sets the
/// average, samples 2–8 move it halfway, later ones by a tenth.
pub fn ema_step(ema: f64, n: u32, ms: f64) -> f64 {
    let alpha = match n {
        0 | 1 => return ms,
        2..=TTFT_WARM_SAMPLES => 0.5,
        _ => 0.1,
    };
    ema + alpha * (ms - ema)
}

/// One provider's TTFT state (R46).
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
pub struct Ttft {
    pub samples: u32,
    pub ema_ms: f64,
}

impl Ttft {
    /// R47: warmed means enough samples and a positive average.
    #[inline]
    pub fn warmed(self) -> bool {
        self.samples >= TTFT_WARM_SAMPLES && self.ema_ms > 0.0
    }
}

/// R47: the fastest warmed TTFT among one request's providers, against which
/// each is judged. `None` when no provider is warmed.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LatencyFloor {
    min: Option<f64>,
    /// A planted bug (`registry/planted.rs`): R47's absolute floor is
    /// dropped, so twice the fastest alone demotes.
    #[cfg(feature = "planted-bugs")]
    pub(crate) no_absolute_floor: bool,
}

impl LatencyFloor {
    /// The floor over `states` (one request's providers).
    #[inline]
    pub fn of(states: impl IntoIterator<Item = Ttft>) -> LatencyFloor {
        states
            .into_iter()
            .fold(LatencyFloor::default(), LatencyFloor::with)
    }

    /// The floor with one more provider's state taken into account.
    #[inline]
    pub fn with(self, t: Ttft) -> LatencyFloor {
        self.with_warmed(t.warmed().then_some(t.ema_ms))
    }

    /// The floor with one more provider's warmed average (if it has one,
    /// [`Health::warmed_ttft_ms`]) taken into account.
    #[inline]
    pub(crate) fn with_warmed(self, warmed_ms: Option<f64>) -> LatencyFloor {
        let min = match (self.min, warmed_ms) {
            (_, None) => return self,
            (None, Some(ms)) => ms,
            (Some(m), Some(ms)) => m.min(ms),
        };
        LatencyFloor {
            min: Some(min),
            ..self
        }
    }

    /// The fastest warmed average, if any provider is warmed.
    pub fn min_ms(self) -> Option<f64> {
        self.min
    }

    /// The average at or under which nobody is demoted.
    #[inline]
    fn absolute_ms(self) -> f64 {
        #[cfg(feature = "planted-bugs")]
        if self.no_absolute_floor {
            return 0.0;
        }
        TTFT_DEMOTE_FLOOR_MS
    }

    /// R47: warmed, slower than the absolute floor, and slower than twice
    /// the fastest warmed provider. A lone warmed provider is its own
    /// minimum and so never demoted; an unwarmed one never is.
    #[inline]
    pub fn demotes(self, t: Ttft) -> bool {
        match self.min {
            Some(min) => {
                t.warmed() && t.ema_ms > self.absolute_ms() && t.ema_ms > TTFT_DEMOTE_RATIO * min
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn r46_first_sample_sets_then_half_up_to_the_eighth_then_a_tenth() {
        let h = Health::default();
        let ms = |n: u64| Duration::from_millis(n);
        h.record_ttft(ms(100));
        assert_eq!(
            h.ttft(),
            Ttft {
                samples: 1,
                ema_ms: 100.0
            }
        );
        h.record_ttft(ms(200));
        assert_eq!(h.ttft().ema_ms, 150.0, "sample 2: α = 0.5");
        let mut want = 150.0;
        for (i, x) in (3..=8).map(|i| (i, 100.0 * i as f64)) {
            h.record_ttft(ms(x as u64));
            want += 0.5 * (x - want);
            assert_eq!(h.ttft().ema_ms, want, "sample {i}: α = 0.5");
        }
        assert!(!Ttft {
            samples: 7,
            ema_ms: 1.0
        }
        .warmed());
        assert!(h.ttft().warmed(), "8 samples: warmed");
        h.record_ttft(ms(900));
        assert_eq!(
            h.ttft().ema_ms,
            want + 0.1 * (900.0 - want),
            "sample 9: α = 0.1"
        );
        assert_eq!(h.ttft().samples, 9);
    }

    #[test]
    fn r46_samples_under_a_millisecond_are_not_taken_and_health_is_separate() {
        let h = Health::default();
        h.record_ttft(Duration::from_micros(999));
        assert_eq!(h.ttft(), Ttft::default());
        h.record_ttft(Duration::from_millis(1));
        assert_eq!(
            h.ttft(),
            Ttft {
                samples: 1,
                ema_ms: 1.0
            }
        );
        // Failures and successes never touch the average (no reset).
        h.record_failure();
        h.record_success();
        assert_eq!(
            h.ttft(),
            Ttft {
                samples: 1,
                ema_ms: 1.0
            }
        );
    }

    #[test]
    fn r21_r47_notable_counts_failing_and_warmed_providers_exactly() {
        let notable = Arc::new(Notable::default());
        let count = || notable.0.load(Ordering::Relaxed);
        let a = Health::counted_in(notable.clone());
        let b = Health::counted_in(notable.clone());
        assert!(notable.none());
        a.record_success();
        assert_eq!(count(), 0, "a success with nothing to reset moves nothing");
        a.record_failure();
        a.record_failure();
        assert_eq!(count(), 1, "a failing provider counts once");
        a.record_success();
        assert_eq!(count(), 0, "a success takes it back");
        for i in 1..=TTFT_WARM_SAMPLES + 2 {
            b.record_ttft(Duration::from_millis(50));
            let want = usize::from(i >= TTFT_WARM_SAMPLES);
            assert_eq!(count(), want, "sample {i}");
        }
        b.record_failure();
        assert_eq!(count(), 2, "warmed and failing: two terms");
        a.record_failure();
        assert_eq!(count(), 3);
        drop(b);
        assert_eq!(count(), 1, "a dropped provider takes its terms back");
        drop(a);
        assert!(notable.none());
    }

    #[test]
    fn r47_floor_and_demotion_thresholds() {
        let t = |ms: f64, samples| Ttft {
            samples,
            ema_ms: ms,
        };
        let floor = LatencyFloor::of([t(2000.0, 8), t(100.0, 8), t(10.0, 7)]);
        assert_eq!(
            floor.min_ms(),
            Some(100.0),
            "the unwarmed 10 ms is no floor"
        );
        assert!(floor.demotes(t(2000.0, 8)));
        assert!(!floor.demotes(t(200.0, 8)), "not over twice the floor");
        assert!(!floor.demotes(t(2000.0, 7)), "unwarmed");
        let floor = LatencyFloor::of([t(400.0, 8), t(100.0, 8)]);
        assert!(!floor.demotes(t(400.0, 8)), "not over 500 ms");
        assert!(!LatencyFloor::default().demotes(t(9000.0, 50)));
    }

    #[test]
    fn r47_exactly_at_the_floor_or_the_ratio_is_not_demoted() {
        let t = |ms: f64| Ttft {
            samples: TTFT_WARM_SAMPLES,
            ema_ms: ms,
        };
        // "Slower than" both: equal to either bound keeps the provider.
        let floor = LatencyFloor::of([t(200.0)]);
        assert!(!floor.demotes(t(TTFT_DEMOTE_FLOOR_MS)), "exactly 500 ms");
        assert!(floor.demotes(t(TTFT_DEMOTE_FLOOR_MS + 0.5)));
        let floor = LatencyFloor::of([t(300.0)]);
        assert!(!floor.demotes(t(600.0)), "exactly twice the fastest");
        assert!(floor.demotes(t(600.5)));
    }

    #[test]
    fn r46_r47_a_zero_average_is_never_warmed() {
        let zero = Ttft {
            samples: TTFT_WARM_SAMPLES,
            ema_ms: 0.0,
        };
        assert!(!zero.warmed());
        let h = Health::default();
        assert_eq!(h.warmed_ttft_ms(), None);
        // Enough samples but a zero average (not reachable through
        // `record_ttft`, which drops sub-millisecond samples): still cold.
        h.ttft_samples.store(TTFT_WARM_SAMPLES, Ordering::Relaxed);
        assert_eq!(h.warmed_ttft_ms(), None);
        h.ttft_samples.store(0, Ordering::Relaxed);
        for _ in 0..TTFT_WARM_SAMPLES {
            h.record_ttft(Duration::from_millis(40));
        }
        assert_eq!(h.warmed_ttft_ms(), Some(40.0));
    }
}

//! Helpers shared by the criterion benches under `benches/`; each bench's
//! own cases live in its file.

use std::time::Duration;

/// CPU time consumed by the calling thread. The benches time with it, not
/// with wall time: the machine they run on is small and shared, and wall
/// time would charge whatever else was scheduled to the case being measured.
pub fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call's duration.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

//! Seed sweeps: each seed runs the scenario under a random fault schedule
//! drawn from that seed, with every oracle checked after every step.
//!
//! ```text
//! Plan::new ─ strip expectations, resolve the [sweep] menu (+ flags),
//!             one fault-free reference run: each step's start time
//! Plan::schedule(seed) ─ ChaCha20 seeded from the seed ─▶ Vec<FaultEvent>
//! Plan::compose(seed, events) ─ events as [[step]]s (inject at `at`, clear /
//!             repair / restart at `end`), merged into the base steps by time
//! run_seeds ─ N threads, one turmoil sim per seed, sorted by seed
//! shrink::shrink ─ on a violation: greedy removal while the same check fails
//!             ─▶ scenario::write::to_toml ─▶ a standalone reproducer file
//! Sweep::run, conclude ─ the whole sweep as library calls (campaign.rs);
//! outcomes ─ a shard's per-seed outcomes as JSON lines, and their merge
//! ```
//!
//! A schedule is ordinary scenario steps, so a (shrunk) schedule is written
//! back as an ordinary scenario file that `tiersim run` replays without any
//! of this machinery.

mod campaign;
mod compose;
mod determinism;
mod menu;
pub mod outcomes;
mod plan;
mod schedule;
mod seeds;
pub mod shrink;

pub use campaign::{conclude, plant_flag, Outputs, Shrink, Sweep, Verdict};
pub use compose::{Composed, Origin, LIVENESS_NOTE};
pub use determinism::{canonical, first_divergence, Divergence};
pub use menu::{Menu, MenuFlags};
pub use plan::{by_check, run_seeds, strip_expectations, Plan, SeedOutcome};
pub use schedule::{EventAction, FaultEvent, Swarm};
pub use seeds::{parse_seeds, shard, shard_len, Shard, MAX_SEEDS};

//! tiersim: the deterministic simulated world around the routing engine, the
//! scenario runner, oracles and the `tiersim` CLI.

pub mod rules;
pub mod scenario;

//! tiersim: the deterministic simulated world around the routing engine
//! (turmoil network, hosts, faults), the scenario runner, oracles and the
//! `tiersim` CLI.

pub mod fault;
pub mod hosts;
pub mod net;
pub mod rules;
pub mod scenario;

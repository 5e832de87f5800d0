//! tiersim: the deterministic simulated world around the routing engine
//! (turmoil network, hosts, faults), the scenario runner, oracles and the
//! `tiersim` CLI.

pub mod expect;
pub mod fault;
pub mod hosts;
pub mod junit;
pub mod mermaid;
pub mod model;
pub mod net;
pub mod oracle;
pub mod record;
pub mod render;
pub mod rules;
pub mod runner;
pub mod scenario;
pub mod script;
pub mod serve;
pub mod sweep;
pub mod world;

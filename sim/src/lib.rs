//! tiersim: the simulated world the engine runs in (turmoil network, hosts,
//! faults).

pub mod fault;
pub mod hosts;
pub mod net;

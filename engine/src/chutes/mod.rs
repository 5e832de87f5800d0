//! Chutes: the end-to-end encryption protocol (SPEC §7, §7b, R23–R25), pure
//! with no networking and randomness injected, and the HTTP provider built
//! on it.

pub mod attest;
pub mod e2ee;
pub mod normalize;
pub mod provider;
pub mod stream;
pub mod wire;

pub use provider::{shared_rng, BuildError, ChutesConfig, ChutesProvider, SharedRng};

//! Chutes' end-to-end encryption protocol (SPEC §7, §7b, R23–R25), pure: no
//! networking, randomness injected. The HTTP provider builds on these.

pub mod attest;
pub mod e2ee;
pub mod stream;

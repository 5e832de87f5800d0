//! tiersim-engine: a tiered LLM-provider router.
//!
//! The engine knows nothing of simulation: its network, randomness and time are
//! injected (see `ARCHITECTURE.md`).

pub mod catalog;
pub mod chutes;
pub mod config;
pub mod external;
pub mod http;
pub mod near;
pub mod net;
pub mod openai;
pub mod provider;
pub mod tier;

pub use provider::{
    ChatRequest, ChatResponse, ChatStream, Operation, Provider, ProviderError, ProviderId, Refusal,
    StatusDetail, StreamItem,
};
pub use tier::{Capabilities, Tier};

//! tiersim-engine: a tiered LLM-provider router.
//!
//! The engine knows nothing of simulation: its network, randomness and time are
//! injected (see `ARCHITECTURE.md`).

pub mod admin;
pub mod api;
pub mod app;
pub mod catalog;
pub mod chutes;
pub mod client_error;
pub mod config;
pub mod context;
pub mod echo;
pub mod external;
pub mod health;
pub mod http;
pub mod near;
pub mod net;
pub mod openai;
pub mod placement;
pub mod provider;
pub mod registry;
pub mod retry;
pub mod router;
pub mod select;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod tier;

pub use provider::{
    ChatRequest, ChatResponse, ChatStream, Operation, Provider, ProviderError, ProviderId, Refusal,
    StreamItem,
};
pub use registry::{CatalogRow, Discovered, External, Registry, RegistryView, SourceRead};
pub use retry::{Attempt, Class, Decision, Outcome};
pub use router::{Attribution, RouteError, Routed, Router, Served};
pub use select::{RoundRobinView, SelectError, Selected, Selection, Shape};
pub use tier::{Capabilities, Tier};

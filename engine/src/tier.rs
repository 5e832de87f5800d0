//! R1: trust tiers and provider capabilities.

use serde::Serialize;

/// Trust tier of a provider. The derived order is the routing preference
/// (R1): the operator's own attested fleet first, an attested third party next,
/// a plaintext provider last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Tier {
    /// The operator's own attested NEAR fleet.
    Near,
    /// An attested third party reached over end-to-end encryption (Chutes).
    Attested3p,
    /// A plaintext OpenAI-compatible provider (e.g. an OpenRouter row).
    NonAttested,
}

impl Tier {
    /// Near and Attested3p are verifiable; a model served by either never
    /// downgrades to plaintext (R15).
    #[inline]
    pub fn is_attested(self) -> bool {
        !matches!(self, Tier::NonAttested)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Near => "near",
            Tier::Attested3p => "attested3p",
            Tier::NonAttested => "non_attested",
        }
    }
}

impl std::fmt::Display for Tier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a provider can serve beyond a plain JSON chat completion (R1, R18).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Capabilities {
    /// Can serve a streamed (SSE) completion. Chutes: only when
    /// `CHUTES_ENABLE_STREAMING` is on.
    pub streaming: bool,
    /// Accepts a request carrying `x-client-pub-key` (client-facing E2EE).
    /// Chutes: never.
    pub client_e2ee: bool,
}

impl Capabilities {
    pub const ALL: Capabilities = Capabilities {
        streaming: true,
        client_e2ee: true,
    };
}

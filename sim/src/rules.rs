//! The rules of `SPEC.md`, by id, for pins, the rule matrix and coverage.

pub struct Rule {
    pub id: &'static str,
    pub title: &'static str,
}

macro_rules! rules {
    ($($id:literal => $title:literal),* $(,)?) => {
        pub const RULES: &[Rule] = &[$(Rule { id: $id, title: $title }),*];
    };
}

rules! {
    "R1" => "tiers Near < Attested3p < NonAttested, capabilities",
    "R2" => "CHUTES_MODELS parsing",
    "R3" => "canonical id vs chute slug",
    "R4" => "secondary (pinned) registration",
    "R5" => "fail-closed reservation",
    "R6" => "catalog seeding and activity",
    "R7" => "partial-batch-safe merge",
    "R8" => "prune on a complete set only",
    "R9" => "stale removal",
    "R10" => "source failure keeps mappings",
    "R11" => "empty discovery is a complete empty set",
    "R12" => "external load skips reserved and pinned ids",
    "R13" => "admin PATCH",
    "R14" => "unregister clears pinned and reserved",
    "R15" => "verifiable never plaintext",
    "R16" => "pubkey routing",
    "R17" => "order and round-robin within the leading group",
    "R18" => "capability filters",
    "R19" => "failure classification",
    "R20" => "retry rounds and delays",
    "R21" => "health and demotion",
    "R22" => "honest errors",
    "R23" => "encrypted stream decoder",
    "R24" => "Chutes refusals",
    "R25" => "protocol v1 residual and v2 stream",
}

//! The rules of `SPEC.md` (R1–R25) and of `SPEC-parity.md` that tiersim
//! implements, by id, for pins, the rule matrix and coverage.

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
    "R26" => "error envelope on every reply",
    "R27" => "the router's own request validation",
    "R28" => "model resolution (400 param model) and the per-model in-flight cap",
    "R29" => "provider HTTP failure to client reply",
    "R30" => "non-HTTP failure to client reply (client media 400, pubkey 421, timeout 504, 502)",
    "R31" => "pass-through text: extraction, wrapping, redaction",
    "R32" => "Retry-After on every 429, x-should-retry",
    "R33" => "upstream profile: the last recorded error decides",
    "R34" => "errors on streamed requests: the in-stream error frame",
    "R35" => "per-attempt classification order",
    "R36" => "client-media short-circuit",
    "R37" => "unparseable complete body vs broken body",
    "R38" => "model-not-found fall-through on 400 and 404",
    "R39" => "Chutes failure mapping (stale target, transport, outage: retryable 503; others masked)",
    "R53" => "x-serving-provider on every success",
    "R54" => "usage attribution: served_via_fallback",
    "R56" => "request body sent to Chutes (slug, internal keys and cache_control stripped, include_usage)",
    "R57" => "Chutes response field allowlist",
    "R58" => "<think> moved to reasoning_content (JSON and streamed)",
    "R59" => "streamed usage gating (Chutes)",
    "R60" => "Chutes instance and nonce cache (snapshot TTL, single-use nonces)",
    "R61" => "per-request Chutes instance choice and attestation",
    "R62" => "hard demotion has no recovery probe",
    "R63" => "provider identity across refresh and PATCH",
    "R64" => "timeouts and intervals",
    "R65" => "leading-group rotation details",
}

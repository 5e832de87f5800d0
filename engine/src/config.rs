//! R2: the engine's environment-style configuration.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// One `CHUTES_MODELS` entry: the public (routing, catalog) id and the chute
/// slug the provider names upstream (R3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChutesModelEntry {
    pub canonical_id: String,
    pub chute_slug: String,
    /// SPEC-parity R41: the context window the slug's `@<n>` suffix declares
    /// (R40); `None`: undeclared (unlimited).
    pub context_window: Option<u32>,
}

/// R41: splits a slug's `@<n>` capacity suffix at the last `@`. The tail
/// (trimmed) must parse as a `u32` and the head must be non-empty; anything
/// else leaves the whole text as the slug, with no window. `@0` is accepted
/// as a window of 0 (every request overflows), as upstream does.
pub fn split_capacity_suffix(slug: &str) -> (&str, Option<u32>) {
    match slug.rsplit_once('@') {
        Some((head, tail)) if !head.trim().is_empty() => match tail.trim().parse::<u32>() {
            Ok(n) => (head.trim(), Some(n)),
            Err(_) => (slug, None),
        },
        _ => (slug, None),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("CHUTES_MODELS entry {entry:?} is malformed: {why} (expected `canonical_id=chute_slug` or a bare id)")]
    MalformedChutesEntry { entry: String, why: &'static str },
    #[error("{name} is not a valid number of seconds: {value:?}")]
    BadInterval { name: &'static str, value: String },
    #[error("{name} must be {expected}, got {value:?}")]
    BadValue {
        name: &'static str,
        expected: &'static str,
        value: String,
    },
    #[error("ADMIN_API_KEY must be printable ASCII without spaces (it is sent as `Authorization: Bearer <key>`)")]
    BadAdminKey,
    /// The entry is named by position: its text may hold a key.
    #[error("EXTERNAL_API_KEYS entry {index} is malformed: {why} (expected `provider=key` entries separated by commas; the entry is not shown, it may hold a key)")]
    MalformedExternalKey { index: usize, why: &'static str },
}

/// `EXTERNAL_API_KEYS`: each external provider's API key by provider name,
/// as `name=key` entries separated by commas. An external row whose
/// provider has no key here is refused at load (the other rows still
/// load). `Debug` shows the provider names, never a key.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ExternalKeys(BTreeMap<String, String>);

impl ExternalKeys {
    /// Parses the variable (unset or blank: no keys). A key must be
    /// printable ASCII without spaces: it is sent as `Authorization: Bearer
    /// <key>`. A provider named twice is an error, never a silent choice.
    pub fn parse(raw: Option<&str>) -> Result<ExternalKeys, ConfigError> {
        let mut keys = BTreeMap::new();
        let entries = raw.unwrap_or_default().split(',').map(str::trim);
        for (i, entry) in entries.filter(|e| !e.is_empty()).enumerate() {
            let bad = |why| ConfigError::MalformedExternalKey { index: i + 1, why };
            let (name, key) = entry.split_once('=').ok_or(bad("no `=`"))?;
            let (name, key) = (name.trim(), key.trim());
            if name.is_empty() || key.is_empty() {
                return Err(bad("an empty side"));
            }
            if !key.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(bad("the key is not printable ASCII without spaces"));
            }
            if keys.insert(name.to_string(), key.to_string()).is_some() {
                return Err(bad("a provider named twice"));
            }
        }
        Ok(ExternalKeys(keys))
    }

    /// The API key of the external provider `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }
}

impl std::fmt::Debug for ExternalKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

/// The admin API's bearer key (R13). Its `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminKey(String);

impl AdminKey {
    /// A key usable in an `Authorization: Bearer` header: non-empty
    /// printable ASCII without spaces.
    pub fn new(key: impl Into<String>) -> Result<AdminKey, ConfigError> {
        let key = key.into();
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ConfigError::BadAdminKey);
        }
        Ok(AdminKey(key))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for AdminKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminKey(<redacted>)")
    }
}

/// Parses `CHUTES_MODELS` (R2). Unset or blank means no entries. Entries are
/// comma-separated `canonical_id=chute_slug`; a bare entry means
/// canonical == slug; whitespace is trimmed and empty entries are dropped. A
/// repeated canonical id keeps the first entry and logs a warning naming it.
/// An entry with an empty side or more than one `=` refuses the whole value,
/// so nothing is half-configured (tiersim's hardening; upstream drops or
/// re-splits such entries). The slug side may end in R41's `@<n>` capacity
/// suffix; a bare entry strips it before canonical = slug.
pub fn parse_chutes_models(raw: Option<&str>) -> Result<Vec<ChutesModelEntry>, ConfigError> {
    let Some(raw) = raw else {
        return Ok(Vec::new());
    };
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for entry in raw.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let malformed = |why| ConfigError::MalformedChutesEntry {
            entry: entry.to_string(),
            why,
        };
        let (canonical, slug, context_window) = match entry.split_once('=') {
            None => {
                let (slug, window) = split_capacity_suffix(entry);
                (slug, slug, window)
            }
            Some((_, rest)) if rest.contains('=') => return Err(malformed("more than one `=`")),
            Some((c, s)) => {
                let (slug, window) = split_capacity_suffix(s.trim());
                (c.trim(), slug, window)
            }
        };
        if canonical.is_empty() {
            return Err(malformed("empty canonical id"));
        }
        if slug.is_empty() {
            return Err(malformed("empty chute slug"));
        }
        if !seen.insert(canonical.to_string()) {
            tracing::warn!(
                canonical_id = canonical,
                "CHUTES_MODELS repeats a canonical id; keeping the first entry"
            );
            continue;
        }
        out.push(ChutesModelEntry {
            canonical_id: canonical.to_string(),
            chute_slug: slug.to_string(),
            context_window,
        });
    }
    Ok(out)
}

/// The semantics profile (SPEC-parity, Decisions): `Tiersim` is the spec
/// with tiersim's corrections; `Upstream` reproduces the production router
/// on exactly the contested points (R33 last error wins, R34.4 raw in-stream
/// error text, R34.5 a minted `[DONE]` after an error frame). Nothing else
/// may branch on it.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    #[default]
    Tiersim,
    Upstream,
}

impl Profile {
    pub const ALL: [Profile; 2] = [Profile::Tiersim, Profile::Upstream];

    pub fn as_str(self) -> &'static str {
        match self {
            Profile::Tiersim => "tiersim",
            Profile::Upstream => "upstream",
        }
    }

    pub fn parse(s: &str) -> Option<Profile> {
        Profile::ALL.into_iter().find(|p| p.as_str() == s.trim())
    }
}

impl std::fmt::Display for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// R28: requests in flight per model before a new one is refused with 429.
pub const DEFAULT_MODEL_CONCURRENCY: usize = 64;

/// Everything the engine reads from its environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineConfig {
    /// `CHUTES_MODELS`.
    pub chutes_models: Vec<ChutesModelEntry>,
    /// `CHUTES_API_KEY`. Missing leaves the canonical ids reserved with no
    /// Chutes provider (R5).
    pub chutes_api_key: Option<String>,
    /// `CHUTES_ENABLE_STREAMING` (default off).
    pub chutes_streaming: bool,
    /// `MODEL_REFRESH_INTERVAL_SECS`: how often discovery is polled.
    pub refresh_interval: Duration,
    /// `ADMIN_API_KEY`: the admin API's bearer key (R13). Unset means the
    /// admin API refuses every request (fail closed).
    pub admin_api_key: Option<AdminKey>,
    /// `TIERSIM_PROFILE`: `tiersim` (default) or `upstream`.
    pub profile: Profile,
    /// `MODEL_CONCURRENCY_LIMIT`: the in-flight cap per model (R28; the
    /// world has no organisations, so the cap is per model only).
    pub model_concurrency: usize,
    /// `CONTEXT_ROUTE_*`: SPEC-parity R42's estimate knobs.
    pub context: crate::context::ContextRouting,
    /// `EXTERNAL_API_KEYS`: each external provider's API key.
    pub external_api_keys: ExternalKeys,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            chutes_models: Vec::new(),
            chutes_api_key: None,
            chutes_streaming: false,
            refresh_interval: Duration::from_secs(900),
            admin_api_key: None,
            profile: Profile::Tiersim,
            model_concurrency: DEFAULT_MODEL_CONCURRENCY,
            context: crate::context::ContextRouting::default(),
            external_api_keys: ExternalKeys::default(),
        }
    }
}

impl EngineConfig {
    /// Reads the configuration through `get` (e.g. `|k| std::env::var(k).ok()`),
    /// so tests and the simulation supply their own environment.
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let chutes_models = parse_chutes_models(get("CHUTES_MODELS").as_deref())?;
        let chutes_api_key = get("CHUTES_API_KEY").filter(|k| !k.trim().is_empty());
        let chutes_streaming = get("CHUTES_ENABLE_STREAMING")
            .map(|v| {
                matches!(
                    v.trim().to_ascii_lowercase().as_str(),
                    "1" | "true" | "yes" | "on"
                )
            })
            .unwrap_or(false);
        let refresh_interval = match get("MODEL_REFRESH_INTERVAL_SECS") {
            None => EngineConfig::default().refresh_interval,
            Some(v) => v
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|s| *s > 0)
                .map(Duration::from_secs)
                .ok_or(ConfigError::BadInterval {
                    name: "MODEL_REFRESH_INTERVAL_SECS",
                    value: v,
                })?,
        };
        let admin_api_key = get("ADMIN_API_KEY")
            .filter(|k| !k.trim().is_empty())
            .map(AdminKey::new)
            .transpose()?;
        let profile = match get("TIERSIM_PROFILE") {
            None => Profile::default(),
            Some(v) => Profile::parse(&v).ok_or(ConfigError::BadValue {
                name: "TIERSIM_PROFILE",
                expected: "`tiersim` or `upstream`",
                value: v,
            })?,
        };
        let model_concurrency =
            match get("MODEL_CONCURRENCY_LIMIT") {
                None => DEFAULT_MODEL_CONCURRENCY,
                Some(v) => v.trim().parse::<usize>().ok().filter(|n| *n > 0).ok_or(
                    ConfigError::BadValue {
                        name: "MODEL_CONCURRENCY_LIMIT",
                        expected: "a positive integer",
                        value: v,
                    },
                )?,
            };
        let context = crate::context::ContextRouting::from_env(&get)?;
        let external_api_keys = ExternalKeys::parse(get("EXTERNAL_API_KEYS").as_deref())?;
        Ok(EngineConfig {
            context,
            external_api_keys,
            chutes_models,
            chutes_api_key,
            chutes_streaming,
            refresh_interval,
            admin_api_key,
            profile,
            model_concurrency,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(c: &str, s: &str) -> ChutesModelEntry {
        ChutesModelEntry {
            canonical_id: c.into(),
            chute_slug: s.into(),
            context_window: None,
        }
    }

    /// External API keys: one per provider; a malformed entry is refused
    /// by position without echoing it (it may hold a key), and `Debug`
    /// shows names only.
    #[test]
    fn external_api_keys_parse_and_never_show_a_key() {
        let keys = ExternalKeys::parse(Some(" openrouter = sk-1 ,, together=tk-2 ")).unwrap();
        assert_eq!(keys.get("openrouter"), Some("sk-1"));
        assert_eq!(keys.get("together"), Some("tk-2"));
        assert_eq!(keys.get("other"), None);
        assert_eq!(format!("{keys:?}"), r#"{"openrouter", "together"}"#);
        assert_eq!(ExternalKeys::parse(None).unwrap(), ExternalKeys::default());
        for (raw, why) in [
            ("a=k,secret-without-equals", "no `=`"),
            ("a=", "an empty side"),
            ("a=k k", "not printable ASCII"),
            ("a=k,a=j", "named twice"),
        ] {
            let e = ExternalKeys::parse(Some(raw)).unwrap_err().to_string();
            assert!(e.contains(why), "{raw}: {e}");
            assert!(
                !e.contains("secret") && !e.contains("a=") && !e.contains("k k"),
                "{e}"
            );
        }
    }

    #[test]
    fn r41_capacity_suffix_parsing() {
        let got = parse_chutes_models(Some(
            "z-ai/glm-5.2=zai-org/GLM-5.2-TEE@1048576, bare/model@131072, w=weird/slug@x, z=s@0, e=@5, t=s @ 7",
        ))
        .unwrap();
        let with = |c: &str, s: &str, n: Option<u32>| ChutesModelEntry {
            canonical_id: c.into(),
            chute_slug: s.into(),
            context_window: n,
        };
        assert_eq!(
            got,
            vec![
                with("z-ai/glm-5.2", "zai-org/GLM-5.2-TEE", Some(1_048_576)),
                with("bare/model", "bare/model", Some(131_072)),
                with("w", "weird/slug@x", None),
                with("z", "s", Some(0)),
                with("e", "@5", None),
                with("t", "s", Some(7)),
            ]
        );
        // The hardenings of R2 stay.
        assert!(parse_chutes_models(Some("a=b=c@3")).is_err());
        assert!(parse_chutes_models(Some("a=@")).is_ok_and(|v| v[0].chute_slug == "@"));
        assert_eq!(
            split_capacity_suffix("s@4294967296"),
            ("s@4294967296", None)
        );
    }

    #[test]
    fn r2_pairs_bare_entries_whitespace_and_empties() {
        let got = parse_chutes_models(Some(
            " zai-org/GLM-5.1-FP8 = zai-org/GLM-5.1-TEE ,, moonshotai/Kimi-K2.6-TEE ,",
        ))
        .unwrap();
        assert_eq!(
            got,
            vec![
                entry("zai-org/GLM-5.1-FP8", "zai-org/GLM-5.1-TEE"),
                entry("moonshotai/Kimi-K2.6-TEE", "moonshotai/Kimi-K2.6-TEE"),
            ]
        );
    }

    #[test]
    fn r2_unset_or_blank_means_none() {
        assert!(parse_chutes_models(None).unwrap().is_empty());
        assert!(parse_chutes_models(Some("  , ,")).unwrap().is_empty());
    }

    #[test]
    fn r2_repeated_canonical_id_first_wins() {
        let got = parse_chutes_models(Some("a=slugA,a=slugB,b")).unwrap();
        assert_eq!(got, vec![entry("a", "slugA"), entry("b", "b")]);
    }

    #[test]
    fn r2_malformed_entries_name_the_entry() {
        for (raw, bad, why) in [
            ("ok,a=b=c", "a=b=c", "more than one `=`"),
            ("=slug", "=slug", "empty canonical id"),
            ("id= ", "id=", "empty chute slug"),
        ] {
            let err = parse_chutes_models(Some(raw)).unwrap_err();
            assert_eq!(
                err,
                ConfigError::MalformedChutesEntry {
                    entry: bad.into(),
                    why
                }
            );
            assert!(err.to_string().contains(bad), "{err}");
        }
    }

    #[test]
    fn r2_env_defaults_and_flags() {
        let env = |k: &str| match k {
            "CHUTES_MODELS" => Some("x=y".to_string()),
            "CHUTES_API_KEY" => Some("  ".to_string()),
            "CHUTES_ENABLE_STREAMING" => Some("true".to_string()),
            "MODEL_REFRESH_INTERVAL_SECS" => Some("30".to_string()),
            _ => None,
        };
        let cfg = EngineConfig::from_env(env).unwrap();
        assert_eq!(cfg.chutes_models, vec![entry("x", "y")]);
        assert_eq!(cfg.chutes_api_key, None, "a blank key counts as missing");
        assert!(cfg.chutes_streaming);
        assert_eq!(cfg.refresh_interval, Duration::from_secs(30));
        let def = EngineConfig::from_env(|_| None).unwrap();
        assert!(!def.chutes_streaming, "streaming is off by default");
        let bad =
            EngineConfig::from_env(|k| (k == "MODEL_REFRESH_INTERVAL_SECS").then(|| "0s".into()));
        assert!(matches!(bad, Err(ConfigError::BadInterval { .. })));
    }

    #[test]
    fn r13_admin_key_is_read_checked_and_never_printed() {
        let cfg = EngineConfig::from_env(|k| (k == "ADMIN_API_KEY").then(|| "k3y".into())).unwrap();
        assert_eq!(
            cfg.admin_api_key.as_ref().map(AdminKey::as_str),
            Some("k3y")
        );
        assert!(!format!("{cfg:?}").contains("k3y"), "Debug redacts the key");
        let unset = EngineConfig::from_env(|_| None).unwrap();
        assert_eq!(unset.admin_api_key, None, "unset: the admin API is closed");
        for bad in ["two words", "tab\there", "é"] {
            let got = EngineConfig::from_env(|k| (k == "ADMIN_API_KEY").then(|| bad.into()));
            assert_eq!(got, Err(ConfigError::BadAdminKey), "{bad:?}");
        }
    }
}

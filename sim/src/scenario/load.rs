//! Reading a scenario file: TOML errors and semantic errors alike come back
//! with file, line, column and a hint; a scenario that fails here never runs.

use std::collections::BTreeSet;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::Spanned;

use super::action::Action;
use super::format::{Expect, FaultKind, RequestSpec, Scenario, Step, SweepSpec, MAX_SIM_TIME};
use crate::hosts::Chunking;
use crate::rules::RULES;
use tiersim_engine::Tier;

/// Where a scenario went wrong, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScenarioError {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub message: String,
    pub hint: Option<String>,
}

impl ScenarioError {
    /// An error about the file as a whole (it cannot be read), with no
    /// position in it.
    fn whole(file: &Path, message: String) -> Self {
        ScenarioError {
            file: file.to_path_buf(),
            line: 0,
            column: 0,
            message,
            hint: None,
        }
    }
}

impl fmt::Display for ScenarioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file.display(), self.message)?;
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file.display(),
                self.line,
                self.column,
                self.message
            )?;
        }
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ScenarioError {}

/// Largest scenario file read: far above any hand-written scenario, and a
/// bound on what a stray path (a log, a device) can make the loader read.
pub const MAX_FILE_BYTES: u64 = 4 << 20;

/// Reads and validates a scenario file.
pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes))
        .map_err(|e| ScenarioError::whole(path, format!("cannot read the scenario file: {e}")))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(ScenarioError::whole(
            path,
            format!("the file is larger than {} MiB", MAX_FILE_BYTES >> 20),
        ));
    }
    parse_bytes(path, bytes)
}

/// Parses and validates a scenario file's bytes: text that is not UTF-8 is
/// an error at its first bad byte. `path` is only used in errors.
pub fn parse_bytes(path: &Path, bytes: Vec<u8>) -> Result<Scenario, ScenarioError> {
    let text = match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => {
            let good = e.utf8_error().valid_up_to();
            let prefix = String::from_utf8_lossy(&e.as_bytes()[..good]);
            let (line, column) = line_col(&prefix, good);
            return Err(ScenarioError {
                file: path.to_path_buf(),
                line,
                column,
                message: "the file is not UTF-8 text: an invalid byte here".into(),
                hint: Some("TOML is UTF-8; save the file as UTF-8".into()),
            });
        }
    };
    parse(path, &text)
}

/// Parses and validates scenario text; `path` is only used in errors.
pub fn parse(path: &Path, text: &str) -> Result<Scenario, ScenarioError> {
    let at = |span: Option<Range<usize>>, message: String, hint: Option<String>| {
        let (line, column) = line_col(text, span.map_or(0, |s| s.start));
        ScenarioError {
            file: path.to_path_buf(),
            line,
            column,
            message,
            hint,
        }
    };
    let scenario: Scenario = toml::from_str(text).map_err(|e| {
        let message = e.message().trim().to_string();
        let hint = hint_for_toml_error(&message);
        at(e.span(), message, hint)
    })?;
    Validator {
        scenario: &scenario,
        hosts: host_names(&scenario),
        locate: Locator {
            doc: toml::de::DeTable::parse(text).ok(),
        },
    }
    .check()
    .map_err(|(span, message, hint)| at(Some(span), message, hint))?;
    Ok(scenario)
}

fn hint_for_toml_error(message: &str) -> Option<String> {
    if message.contains("unknown field") {
        Some("check the spelling; `tiersim schema` prints every key the format accepts".into())
    } else if message.contains("missing field") {
        Some("this table needs the field named above".into())
    } else {
        None
    }
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Every host of the world the scenario describes, by name.
pub fn host_names(s: &Scenario) -> BTreeSet<String> {
    let mut hosts: BTreeSet<String> = ["router", "catalog", "client"]
        .into_iter()
        .map(String::from)
        .collect();
    if !s.chutes.is_empty() {
        hosts.insert("chutes".into());
    }
    hosts.extend(s.near.iter().map(|n| n.host.clone()));
    hosts.extend(s.external.iter().map(|e| e.host.clone()));
    hosts
}

type Problem = (Range<usize>, String, Option<String>);

/// Most faults a `[sweep]` may draw per seed.
pub const MAX_SWEEP_FAULTS: u32 = 64;

/// Most instances behind one chute: each holds an ML-KEM key pair and is
/// listed in every discovery answer.
pub const MAX_CHUTE_INSTANCES: u32 = 64;

/// Most requests one `concurrent` step sends at once.
pub const MAX_CONCURRENT: usize = 64;

/// The longest prompt a request's `repeat` may build (the router reads at
/// most 4 MiB of body).
pub const MAX_REPEATED_PROMPT: u64 = 2 << 20;

/// Faults per seed when neither the `[sweep]` table nor a flag says.
pub const DEFAULT_MIN_FAULTS: u32 = 1;
pub const DEFAULT_MAX_FAULTS: u32 = 3;

/// The fewest and most faults a sweep draws per seed from what was given,
/// checked the same way whether the numbers come from a `[sweep]` table or
/// from the command line (`--min-faults`, `--max-faults`). A missing most is
/// the default, raised to the fewest; a given most below the fewest is an
/// error, never silently raised.
pub fn fault_counts(min: Option<u32>, max: Option<u32>) -> Result<(u32, u32), String> {
    let lo = min.unwrap_or(DEFAULT_MIN_FAULTS);
    let hi = max.unwrap_or(DEFAULT_MAX_FAULTS.max(lo));
    if lo > hi {
        return Err(format!("min_faults = {lo} is above max_faults = {hi}"));
    }
    if hi > MAX_SWEEP_FAULTS {
        return Err(format!(
            "{hi} faults per seed is too many to shrink (use at most {MAX_SWEEP_FAULTS})"
        ));
    }
    Ok((lo, hi))
}

/// Whether `name` can name a backend host: a DNS-style label (lowercase
/// letters, digits, inner `-`), since it becomes a turmoil host, a URL
/// authority, a provider id and a file-name part of reproducers.
fn is_host_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// Whether `value` can go out as an HTTP header value unchanged: no spaces,
/// control characters or DEL. Bytes above ASCII (obs-text) are legal header
/// bytes and stay allowed: a scenario sends them to prove the router refuses
/// a non-ASCII key (R16).
fn is_header_token(value: &str) -> bool {
    (1..=1024).contains(&value.len()) && value.bytes().all(|b| b > 0x20 && b != 0x7f)
}

/// One step of a path into the TOML document.
#[derive(Clone, Copy)]
enum Seg<'p> {
    Key(&'p str),
    At(usize),
}
use Seg::{At, Key};

/// Finds where a value sits in the file, for errors about values the typed
/// format keeps no span for.
struct Locator<'i> {
    doc: Option<Spanned<toml::de::DeTable<'i>>>,
}

impl Locator<'_> {
    /// The span of the value at `path`, or of the deepest part of it that
    /// exists (the document start if none does).
    fn span(&self, path: &[Seg]) -> Range<usize> {
        use toml::de::DeValue;
        let Some(doc) = &self.doc else { return 0..0 };
        let mut table = Some(doc.get_ref());
        let mut array: Option<&toml::de::DeArray> = None;
        let mut best = 0..0;
        for seg in path {
            let next = match (*seg, table, array) {
                (Key(k), Some(t), _) => {
                    t.iter().find(|(key, _)| key.get_ref() == k).map(|(_, v)| v)
                }
                (At(i), _, Some(a)) => a.get(i),
                _ => None,
            };
            let Some(v) = next else { break };
            best = v.span();
            (table, array) = match v.get_ref() {
                DeValue::Table(t) => (Some(t), None),
                DeValue::Array(a) => (None, Some(a)),
                _ => (None, None),
            };
        }
        best
    }
}

struct Validator<'a, 'i> {
    scenario: &'a Scenario,
    hosts: BTreeSet<String>,
    locate: Locator<'i>,
}

/// What the script has done so far, for checks that depend on order.
#[derive(Default)]
struct ScriptState<'a> {
    /// The earliest simulated time the script can be at: the last `at`
    /// plus every `advance` since.
    now: std::time::Duration,
    /// Hosts a step crashed or shut down and none restarted yet.
    down: BTreeSet<&'a str>,
}

impl<'a> Validator<'a, '_> {
    fn check(&self) -> Result<(), Problem> {
        let s = self.scenario;
        if let Some(tick) = &s.tick {
            let t = tick.get_ref().0;
            if t < std::time::Duration::from_millis(1) || t > std::time::Duration::from_millis(100)
            {
                return Err((
                    tick.span(),
                    format!(
                        "tick = {:?} is out of range",
                        humantime::format_duration(t).to_string()
                    ),
                    Some("use a step between \"1ms\" and \"100ms\"".into()),
                ));
            }
        }
        for pin in &s.pins {
            if !RULES.iter().any(|r| r.id == pin.get_ref().as_str()) {
                return Err((
                    pin.span(),
                    format!("unknown rule {:?}", pin.get_ref()),
                    Some(format!("rules are R1…R{}", RULES.len())),
                ));
            }
        }
        if let Some(max) = &s.world.max_chunk {
            if *max.get_ref() == 0 {
                return Err((
                    max.span(),
                    "max_chunk = 0 would cut nothing".into(),
                    Some("use a piece size of at least 1 byte".into()),
                ));
            }
            if s.world.chunking != Chunking::Random {
                return Err((
                    max.span(),
                    format!(
                        "max_chunk only applies to chunking = \"random\" (chunking is {:?})",
                        s.world.chunking.name()
                    ),
                    Some("set `chunking = \"random\"` or leave `max_chunk` out".into()),
                ));
            }
        }
        if let Some(ttl) = &s.world.chutes_nonce_expires_in {
            let d = ttl.0;
            if d < std::time::Duration::from_secs(1) || d.subsec_nanos() != 0 {
                return Err((
                    self.locate
                        .span(&[Key("world"), Key("chutes_nonce_expires_in")]),
                    format!(
                        "chutes_nonce_expires_in = {:?} is not a whole number of seconds",
                        humantime::format_duration(d).to_string()
                    ),
                    Some(
                        "Chutes announces nonce lifetimes in whole seconds: use \"1s\" or more"
                            .into(),
                    ),
                ));
            }
        }
        self.config()?;
        let near: BTreeSet<&str> = s.near.iter().map(|n| n.host.as_str()).collect();
        let mut seen = BTreeSet::new();
        let named = (s
            .near
            .iter()
            .map(|n| &n.host)
            .enumerate()
            .map(|(i, h)| ("near", i, h)))
        .chain(
            s.external
                .iter()
                .map(|e| &e.host)
                .enumerate()
                .map(|(i, h)| ("external", i, h)),
        );
        for (table, i, name) in named {
            let span = self.locate.span(&[Key(table), At(i), Key("host")]);
            if !is_host_name(name) {
                return Err((
                    span,
                    format!("host name {name:?} is not a plain host name"),
                    Some(
                        "use lowercase letters, digits and `-` (e.g. \"near-1\"), at most 63"
                            .into(),
                    ),
                ));
            }
            if ["router", "catalog", "client", "chutes"].contains(&name.as_str()) {
                return Err((
                    span,
                    format!("host name {name:?} is reserved"),
                    Some("hosts router, catalog, client and chutes are built in; give each backend its own name".into()),
                ));
            }
            if !seen.insert(name.as_str()) {
                return Err((
                    span,
                    format!("host name {name:?} is used twice"),
                    Some("give each backend its own name".into()),
                ));
            }
        }
        for (i, c) in s.chutes.iter().enumerate() {
            if !(1..=MAX_CHUTE_INSTANCES).contains(&c.instances) {
                return Err((
                    self.locate.span(&[Key("chutes"), At(i), Key("instances")]),
                    format!("instances = {} is out of range", c.instances),
                    Some(format!("a chute has 1 to {MAX_CHUTE_INSTANCES} instances")),
                ));
            }
            if !(1..=2).contains(&c.stream_protocol) {
                return Err((
                    self.locate
                        .span(&[Key("chutes"), At(i), Key("stream_protocol")]),
                    format!("stream_protocol = {} does not exist", c.stream_protocol),
                    Some("1 is Chutes' v1 stream, 2 the hardened one".into()),
                ));
            }
        }
        for row in &s.catalog {
            self.near_hosts(row.inference_url.as_ref(), &near)?;
            let long = row.long_context.as_ref().map(|l| &l.inference_url);
            self.near_host(long, &near)?;
        }
        let mut state = ScriptState::default();
        for (i, step) in s.steps.iter().enumerate() {
            self.step(i, step, &near, &mut state)?;
        }
        if let Some(sweep) = &s.sweep {
            self.sweep(sweep)?;
        }
        Ok(())
    }

    /// The engine's configuration: what the engine itself would refuse is a
    /// load error at its key, unless the scenario pins that refusal.
    fn config(&self) -> Result<(), Problem> {
        let c = &self.scenario.config;
        let every = c.refresh_interval.0;
        if every < std::time::Duration::from_secs(1) || every.subsec_nanos() != 0 {
            return Err((
                self.locate.span(&[Key("config"), Key("refresh_interval")]),
                format!(
                    "refresh_interval = {:?} is not a whole number of seconds",
                    humantime::format_duration(every).to_string()
                ),
                Some("the router polls every N seconds, N >= 1 (e.g. \"30s\", \"10m\")".into()),
            ));
        }
        if c.expect_startup_error.is_none() {
            if let Err(e) = crate::world::engine_config(self.scenario) {
                let key = match &e {
                    tiersim_engine::config::ConfigError::BadValue { name, .. }
                        if name.starts_with("CONTEXT_ROUTE_") =>
                    {
                        "context_route"
                    }
                    _ => "chutes_models",
                };
                let hint = if key == "context_route" {
                    "each knob is a positive finite number (SPEC-parity R42)"
                } else {
                    "write `canonical_id=chute_slug` entries separated by commas, or set `expect_startup_error` to pin the refusal"
                };
                return Err((
                    self.locate.span(&[Key("config"), Key(key)]),
                    format!("the engine refuses this configuration: {e}"),
                    Some(hint.into()),
                ));
            }
        }
        if !c.chutes_build_fails.is_empty() {
            let ids: Vec<String> = match crate::world::engine_config(self.scenario) {
                Ok(config) => config
                    .chutes_models
                    .iter()
                    .map(|e| e.canonical_id.clone())
                    .collect(),
                Err(_) => Vec::new(),
            };
            for (k, id) in c.chutes_build_fails.iter().enumerate() {
                if !ids.contains(id.get_ref()) {
                    return Err((
                        self.locate
                            .span(&[Key("config"), Key("chutes_build_fails"), At(k)]),
                        format!("{:?} is not a canonical id of chutes_models", id.get_ref()),
                        Some(self.listing("canonical ids", ids.iter().map(String::as_str))),
                    ));
                }
                if c.chutes_build_fails[..k]
                    .iter()
                    .any(|o| o.get_ref() == id.get_ref())
                {
                    return Err((
                        self.locate
                            .span(&[Key("config"), Key("chutes_build_fails"), At(k)]),
                        format!("{:?} is listed twice", id.get_ref()),
                        None,
                    ));
                }
            }
        }
        Ok(())
    }

    /// The `[sweep]` fault menu: hosts that exist, kinds that can hit one of
    /// them, sane bounds.
    fn sweep(&self, sweep: &Spanned<SweepSpec>) -> Result<(), Problem> {
        let sw = sweep.get_ref();
        let hosts: Vec<&str> = match &sw.hosts {
            Some(hs) => {
                if hs.is_empty() {
                    return Err((
                        sweep.span(),
                        "`hosts = []` leaves the sweep nothing to fault".into(),
                        Some("leave `hosts` out to fault every backend host".into()),
                    ));
                }
                for h in hs {
                    self.host(h)?;
                    if h.get_ref() == "client" {
                        return Err((
                            h.span(),
                            "the client drives the scenario and cannot be faulted".into(),
                            None,
                        ));
                    }
                }
                hs.iter().map(|h| h.get_ref().as_str()).collect()
            }
            None => self
                .hosts
                .iter()
                .map(String::as_str)
                .filter(|h| *h != "client")
                .collect(),
        };
        for kind in sw.kinds.iter().flatten() {
            let k = *kind.get_ref();
            if !hosts.iter().any(|h| k.hits(h)) {
                return Err((
                    kind.span(),
                    format!(
                        "fault kind {:?} can hit none of the sweep's hosts",
                        k.name()
                    ),
                    Some(format!(
                        "{}; sweep hosts: {}",
                        if k.chutes_only() {
                            "Chutes kinds only hit `chutes`"
                        } else if k == FaultKind::Partition {
                            "a partition cuts the router from another host"
                        } else {
                            "the router only takes `crash` and `partition`"
                        },
                        hosts.join(", ")
                    )),
                ));
            }
        }
        if let Some(chunkings) = &sw.chunking {
            if chunkings.get_ref().is_empty() {
                return Err((
                    chunkings.span(),
                    "`chunking = []` leaves the sweep no chunking to draw".into(),
                    Some("leave `chunking` out to keep the scenario's own".into()),
                ));
            }
        }
        if let Some(kinds) = &sw.kinds {
            if kinds.is_empty() {
                return Err((
                    sweep.span(),
                    "`kinds = []` leaves the sweep nothing to draw".into(),
                    Some("leave `kinds` out to draw every cheap kind".into()),
                ));
            }
        }
        let min = sw.min_faults.as_ref();
        let max = sw.max_faults.as_ref();
        if let Err(message) = fault_counts(min.map(|n| *n.get_ref()), max.map(|n| *n.get_ref())) {
            let too_many = message.contains("too many");
            let span = if too_many { max.or(min) } else { min.or(max) };
            let span = span.map_or(sweep.span(), |n| n.span());
            return Err((span, message, None));
        }
        if let (Some(from), Some(until)) = (&sw.from, &sw.until) {
            if from.get_ref().0 > until.get_ref().0 {
                return Err((
                    until.span(),
                    "`until` is before `from`".into(),
                    Some("faults start in the window from..=until".into()),
                ));
            }
        }
        if let Some(h) = &sw.max_hold {
            if h.get_ref().0.is_zero() {
                return Err((h.span(), "max_hold must be above 0s".into(), None));
            }
        }
        if let Some(t) = &sw.max_times {
            if *t.get_ref() == 0 {
                return Err((
                    t.span(),
                    "max_times = 0 would never fire: use 1 or more".into(),
                    None,
                ));
            }
        }
        if let Some(m) = &sw.messages {
            if m.get_ref().is_empty() || m.get_ref().iter().any(|t| t.trim().is_empty()) {
                return Err((
                    m.span(),
                    "messages must be a non-empty list of non-blank error texts".into(),
                    None,
                ));
            }
        }
        if let Some(m) = &sw.max_tokens {
            if m.get_ref().is_empty() {
                return Err((
                    m.span(),
                    "max_tokens must be a non-empty list of output reserves".into(),
                    None,
                ));
            }
        }
        if let Some(st) = &sw.statuses {
            if st.get_ref().is_empty() || st.get_ref().iter().any(|s| !(400..=599).contains(s)) {
                return Err((
                    st.span(),
                    "statuses must be a non-empty list of 4xx/5xx codes".into(),
                    None,
                ));
            }
        }
        Ok(())
    }

    fn step(
        &self,
        i: usize,
        step: &'a Spanned<Step>,
        near: &BTreeSet<&str>,
        state: &mut ScriptState<'a>,
    ) -> Result<(), Problem> {
        let st = step.get_ref();
        let actions = st.actions().len();
        let kinds = Action::KEYS.join(", ");
        if actions > 1 {
            return Err((
                step.span(),
                "a step holds at most one action".into(),
                Some(format!(
                    "split it into several [[step]] tables; actions are: {kinds}"
                )),
            ));
        }
        if actions == 0 && st.expect.is_none() {
            return Err((
                step.span(),
                "a step needs an action or an expect".into(),
                Some(format!("actions are: {kinds}")),
            ));
        }
        let at_step = |key: &str| self.locate.span(&[Key("step"), At(i), Key(key)]);
        if let Some(at) = &st.at {
            let at_time = at.get_ref().0;
            if at_time < state.now {
                return Err((
                    at.span(),
                    format!(
                        "`at = {:?}` goes back in time: the steps before already reach {}",
                        humantime::format_duration(at_time).to_string(),
                        humantime::format_duration(state.now)
                    ),
                    Some("steps run in order; each `at` is at or after the previous `at` plus the `advance`s since".into()),
                ));
            }
            state.now = at_time;
        }
        if let Some(d) = st.advance {
            state.now += d.0;
            if state.now > MAX_SIM_TIME {
                return Err((
                    at_step("advance"),
                    format!(
                        "the script reaches {}, beyond the simulated-time bound of 24h",
                        humantime::format_duration(state.now)
                    ),
                    None,
                ));
            }
        }
        if let Some(h) = &st.crash {
            let name = h.get_ref().as_str();
            self.host(h)?;
            if name == "client" {
                return Err((
                    h.span(),
                    "the client plays the script and cannot crash".into(),
                    None,
                ));
            }
            if !state.down.insert(name) {
                return Err((
                    h.span(),
                    format!("{name:?} is already down: an earlier step stopped it"),
                    Some("restart it first".into()),
                ));
            }
        }
        if let Some(h) = &st.restart {
            let name = h.get_ref().as_str();
            self.host(h)?;
            if name == "client" {
                return Err((
                    h.span(),
                    "the client plays the script and cannot restart".into(),
                    None,
                ));
            }
            if !state.down.remove(name) {
                return Err((
                    h.span(),
                    format!("{name:?} is running: only a host an earlier step crashed or shut down can restart"),
                    Some("add a `crash` or `shutdown` step before it".into()),
                ));
            }
        }
        if let Some(h) = &st.shutdown {
            let name = h.get_ref().as_str();
            self.host(h)?;
            if name != crate::world::ROUTER {
                return Err((
                    h.span(),
                    format!("only the router shuts down gracefully, not {name:?}"),
                    Some(format!(
                        "write `shutdown = \"router\"`, or `crash = {name:?}`"
                    )),
                ));
            }
            if !state.down.insert(name) {
                return Err((
                    h.span(),
                    format!("{name:?} is already down: an earlier step stopped it"),
                    Some("restart it first".into()),
                ));
            }
        }
        for pair in [&st.partition, &st.repair, &st.hold, &st.release]
            .into_iter()
            .flatten()
        {
            let [a, b] = pair.get_ref();
            if a == b {
                return Err((
                    pair.span(),
                    format!("a link joins two different hosts; both are {a:?}"),
                    Some("e.g. partition = [\"router\", \"near-1\"]".into()),
                ));
            }
        }
        let requests: Vec<(Vec<Seg>, &RequestSpec)> = st
            .request
            .iter()
            .map(|r| (vec![Key("step"), At(i), Key("request")], r))
            .chain(
                st.concurrent
                    .iter()
                    .flatten()
                    .enumerate()
                    .map(|(k, r)| (vec![Key("step"), At(i), Key("concurrent"), At(k)], r)),
            )
            .collect();
        if let Some(c) = &st.concurrent {
            if !(1..=MAX_CONCURRENT).contains(&c.len()) {
                return Err((
                    at_step("concurrent"),
                    format!("{} concurrent requests", c.len()),
                    Some(format!("send 1 to {MAX_CONCURRENT} at once")),
                ));
            }
        }
        for (path, req) in requests {
            self.request(&path, req, near)?;
        }
        if let Some(e) = &st.expect {
            self.expect(&[Key("step"), At(i), Key("expect")], e)?;
        }
        if let Some(f) = &st.fault {
            if !self.hosts.contains(&f.get_ref().host) {
                return Err(self.unknown_host(f.span(), &f.get_ref().host));
            }
        }
        if let Some(h) = &st.clear_faults {
            self.host(h)?;
        }
        for pair in [&st.partition, &st.repair, &st.hold, &st.release]
            .into_iter()
            .flatten()
        {
            for h in pair.get_ref() {
                if !self.hosts.contains(h) {
                    return Err(self.unknown_host(pair.span(), h));
                }
            }
        }
        if let Some(rows) = &st.admin_patch {
            for row in rows {
                if row
                    .inference_url
                    .as_ref()
                    .is_some_and(|u| !u.get_ref().is_empty())
                {
                    self.near_host(row.inference_url.as_ref(), near)?;
                }
                let long = row.long_context.as_ref().map(|l| &l.inference_url);
                self.near_host(long, near)?;
            }
        }
        if let Some(edit) = &st.catalog {
            for row in &edit.upsert {
                self.near_hosts(row.inference_url.as_ref(), near)?;
                let long = row.long_context.as_ref().map(|l| &l.inference_url);
                self.near_host(long, near)?;
            }
            for row in &edit.external_upsert {
                if !self
                    .scenario
                    .external
                    .iter()
                    .any(|e| &e.host == row.host.get_ref())
                {
                    return Err((
                        row.host.span(),
                        format!("{:?} is not an external provider host", row.host.get_ref()),
                        Some(self.listing(
                            "external hosts",
                            self.scenario.external.iter().map(|e| e.host.as_str()),
                        )),
                    ));
                }
            }
        }

        Ok(())
    }

    /// One client request of a step (`request`, or one of `concurrent`).
    fn request(
        &self,
        path: &[Seg],
        req: &RequestSpec,
        near: &BTreeSet<&str>,
    ) -> Result<(), Problem> {
        let at_request = |key: &str| {
            let mut full = path.to_vec();
            full.push(Key(key));
            self.locate.span(&full)
        };
        if req.prompt.is_some() && req.messages.is_some() {
            return Err((
                at_request("messages"),
                "`prompt` and `messages` both say what to send".into(),
                Some("`prompt` is one user message; `messages` the whole list: keep one".into()),
            ));
        }
        if let Some(n) = req.repeat {
            let bytes = req.prompt.as_ref().map_or(0, String::len) as u64 * u64::from(n);
            if req.prompt.is_none() || n == 0 || bytes > MAX_REPEATED_PROMPT {
                return Err((
                    at_request("repeat"),
                    format!("repeat = {n} needs a `prompt` and at most {MAX_REPEATED_PROMPT} bytes in all (this is {bytes})"),
                    Some("repeat a non-empty `prompt` 1 or more times".into()),
                ));
            }
        }
        if req.messages.as_ref().is_some_and(Vec::is_empty) {
            return Err((
                at_request("messages"),
                "`messages = []` sends no message".into(),
                None,
            ));
        }
        for key in req.extra.iter().flat_map(|e| e.keys()) {
            if ["model", "messages", "stream", "max_tokens"].contains(&key.as_str()) {
                return Err((
                    at_request("extra"),
                    format!("`extra` repeats {key:?}, which the request sets itself"),
                    Some(format!("set `{key}` on the request, not in `extra`")),
                ));
            }
        }
        for (key, value) in [
            ("model_pub_key", &req.model_pub_key),
            ("client_pub_key", &req.client_pub_key),
        ] {
            if value.as_deref().is_some_and(|v| !is_header_token(v)) {
                return Err((
                    at_request(key),
                    format!("{key} cannot be sent as a header value"),
                    Some("use no spaces or control characters, at most 1024 bytes".into()),
                ));
            }
        }
        self.near_host(req.pub_key_of.as_ref(), near)?;
        Ok(())
    }

    /// Expectations that could never hold: an unknown tier, a provider no
    /// host of the world can be, one both required and forbidden.
    fn expect(&self, prefix: &[Seg], e: &Expect) -> Result<(), Problem> {
        let at = |path: &[Seg]| {
            let mut full = prefix.to_vec();
            full.extend_from_slice(path);
            self.locate.span(&full)
        };
        for (k, one) in e.each.iter().enumerate() {
            if one.upstream.is_some() {
                return Err((
                    at(&[Key("each"), At(k), Key("upstream")]),
                    "`upstream` cannot tell concurrent requests apart".into(),
                    Some("check what upstream hosts received on a single `request` step".into()),
                ));
            }
            if !one.round_robin.is_empty() {
                return Err((
                    at(&[Key("each"), At(k), Key("round_robin")]),
                    "`round_robin` is the model's, not one request's".into(),
                    Some("put it in the step's own `expect`".into()),
                ));
            }
            let mut path = prefix.to_vec();
            path.extend([Key("each"), At(k)]);
            self.expect(&path, one)?;
        }
        if let Some(tier) = &e.tier {
            let tiers = [Tier::Near, Tier::Attested3p, Tier::NonAttested].map(Tier::as_str);
            if !tiers.contains(&tier.as_str()) {
                return Err((
                    at(&[Key("tier")]),
                    format!("{tier:?} is not a tier"),
                    Some(format!("tiers are: {}", tiers.join(", "))),
                ));
            }
        }
        if let Some(p) = &e.served_by {
            if !self.provider_name(p) {
                return Err((
                    at(&[Key("served_by")]),
                    format!("{p:?} names no provider of this scenario"),
                    Some(self.provider_listing()),
                ));
            }
            if e.never
                .iter()
                .any(|n| crate::expect::names(n, p) || crate::expect::names(p, n))
            {
                return Err((
                    at(&[Key("never")]),
                    format!("{p:?} is both `served_by` and in `never`"),
                    None,
                ));
            }
        }
        for (j, u) in e.upstream.iter().flatten().enumerate() {
            if !self.hosts.contains(&u.host)
                || ["router", "catalog", "client"].contains(&u.host.as_str())
            {
                return Err((
                    at(&[Key("upstream"), At(j), Key("host")]),
                    format!("{:?} is no upstream host of this scenario", u.host),
                    Some(
                        self.listing(
                            "upstream hosts",
                            self.hosts
                                .iter()
                                .map(String::as_str)
                                .filter(|h| !["router", "catalog", "client"].contains(h)),
                        ),
                    ),
                ));
            }
        }
        for (j, h) in e.tokenized.iter().flatten().enumerate() {
            if !self.scenario.near.iter().any(|n| &n.host == h) {
                return Err((
                    at(&[Key("tokenized"), At(j)]),
                    format!("{h:?} names no NEAR backend (only NEAR counts tokens)"),
                    Some(self.listing(
                        "NEAR hosts",
                        self.scenario.near.iter().map(|n| n.host.as_str()),
                    )),
                ));
            }
        }
        for (j, h) in e.health.iter().enumerate() {
            if !self.provider_name(&h.provider) {
                return Err((
                    at(&[Key("health"), At(j), Key("provider")]),
                    format!("{:?} names no provider of this scenario", h.provider),
                    Some(self.provider_listing()),
                ));
            }
        }
        for (j, rr) in e.round_robin.iter().enumerate() {
            if let Some(p) = rr.next.as_ref().filter(|p| !self.provider_name(p)) {
                return Err((
                    at(&[Key("round_robin"), At(j), Key("next")]),
                    format!("{p:?} names no provider of this scenario"),
                    Some(self.provider_listing()),
                ));
            }
        }
        for (j, p) in e.tried.iter().flatten().enumerate() {
            if !self.provider_name(p) {
                return Err((
                    at(&[Key("tried"), At(j)]),
                    format!("{p:?} names no provider of this scenario"),
                    Some(self.provider_listing()),
                ));
            }
        }
        Ok(())
    }

    /// Whether `name` is a provider (or family) some host of the world can
    /// be: a NEAR host, `chutes[:slug]`, `external[:host]`.
    fn provider_name(&self, name: &str) -> bool {
        let s = self.scenario;
        match name.split_once(':') {
            None => {
                s.near.iter().any(|n| n.host == name)
                    || (name == "chutes" && !s.chutes.is_empty())
                    || (name == "external" && !s.external.is_empty())
            }
            Some(("chutes", id)) => !s.chutes.is_empty() && !id.is_empty(),
            Some(("external", host)) => s.external.iter().any(|e| e.host == host),
            Some(_) => false,
        }
    }

    fn provider_listing(&self) -> String {
        let s = self.scenario;
        let mut names: Vec<String> = s.near.iter().map(|n| n.host.clone()).collect();
        if !s.chutes.is_empty() {
            names.push("chutes (or chutes:<id>)".into());
        }
        names.extend(s.external.iter().map(|e| format!("external:{}", e.host)));
        if names.is_empty() {
            "this scenario declares no provider".into()
        } else {
            format!("providers in this scenario: {}", names.join(", "))
        }
    }

    fn host(&self, h: &Spanned<String>) -> Result<(), Problem> {
        if self.hosts.contains(h.get_ref()) {
            Ok(())
        } else {
            Err(self.unknown_host(h.span(), h.get_ref()))
        }
    }

    fn near_host(&self, h: Option<&Spanned<String>>, near: &BTreeSet<&str>) -> Result<(), Problem> {
        match h {
            Some(h) if !near.contains(h.get_ref().as_str()) => Err((
                h.span(),
                format!("{:?} names no NEAR backend", h.get_ref()),
                Some(self.listing("NEAR hosts", near.iter().copied())),
            )),
            _ => Ok(()),
        }
    }

    fn near_hosts(
        &self,
        hosts: Option<&Spanned<super::format::Hosts>>,
        near: &BTreeSet<&str>,
    ) -> Result<(), Problem> {
        let Some(hosts) = hosts else { return Ok(()) };
        let names = hosts.get_ref().names();
        if names.is_empty() {
            return Err((
                hosts.span(),
                "an empty list of NEAR hosts".into(),
                Some("leave `inference_url` out for a row no NEAR backend serves".into()),
            ));
        }
        for (i, h) in names.iter().enumerate() {
            if names[..i].contains(h) {
                return Err((hosts.span(), format!("{h:?} is listed twice"), None));
            }
            if !near.contains(h.as_str()) {
                return Err((
                    hosts.span(),
                    format!("{h:?} names no NEAR backend"),
                    Some(self.listing("NEAR hosts", near.iter().copied())),
                ));
            }
        }
        Ok(())
    }

    fn unknown_host(&self, span: Range<usize>, h: &str) -> Problem {
        (
            span,
            format!("{h:?} names no host of this scenario"),
            Some(self.listing("hosts", self.hosts.iter().map(String::as_str))),
        )
    }

    fn listing<'s>(&self, what: &str, names: impl Iterator<Item = &'s str>) -> String {
        let names: Vec<&str> = names.collect();
        if names.is_empty() {
            format!("this scenario declares no {what}")
        } else {
            format!("{what} in this scenario: {}", names.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> ScenarioError {
        parse(Path::new("s.toml"), text).unwrap_err()
    }

    const HEAD: &str =
        "name = \"t\"\ndescription = \"d\"\n[[near]]\nhost = \"near-1\"\nmodels = [\"m\"]\n";

    #[test]
    fn unknown_key_points_at_line_and_column() {
        let e = err(&format!("{HEAD}[[step]]\nrefresh = {{}}\nbogus = 1\n"));
        assert_eq!((e.line, e.column), (8, 1), "{e}");
        assert!(e.message.contains("unknown field `bogus`"), "{e}");
        assert!(e.hint.is_some());
        assert!(e.to_string().starts_with("s.toml:8:1: "), "{e}");
    }

    #[test]
    fn unknown_step_kind_is_an_error() {
        let e = err(&format!("{HEAD}[[step]]\nexplode = {{}}\n"));
        assert_eq!(e.line, 7);
        assert!(e.message.contains("explode"), "{e}");
    }

    #[test]
    fn bad_duration_says_how_to_write_one() {
        let e = err(&format!("{HEAD}[[step]]\nadvance = \"ten seconds\"\n"));
        assert_eq!(e.line, 7);
        assert!(e.message.contains("bad duration"), "{e}");
    }

    #[test]
    fn host_that_names_nothing_lists_the_hosts() {
        let e = err(&format!(
            "{HEAD}[[step]]\nfault = {{ host = \"near-9\", http_status = 503 }}\n"
        ));
        assert_eq!((e.line, e.column), (7, 9), "{e}");
        assert!(e.message.contains("near-9"));
        assert!(e.hint.unwrap().contains("near-1"));
    }

    #[test]
    fn two_actions_in_one_step_is_an_error() {
        let e = err(&format!(
            "{HEAD}[[step]]\nrefresh = {{}}\nadvance = \"1s\"\n"
        ));
        assert!(e.message.contains("at most one action"), "{e}");
    }

    #[test]
    fn unknown_rule_pin_is_an_error() {
        let e = err("name = \"t\"\ndescription = \"d\"\npins = [\"R99\"]\n");
        assert_eq!((e.line, e.column), (3, 9), "{e}");
    }

    /// Where `marker`'s `nth` occurrence (0-based) starts in `text`.
    fn position_of(text: &str, marker: &str, nth: usize) -> (usize, usize) {
        let offset = text
            .match_indices(marker)
            .nth(nth)
            .unwrap_or_else(|| panic!("{marker:?} #{nth} not in {text}"))
            .0;
        line_col(text, offset)
    }

    const CHUTES: &str = "[[chutes]]\nslug = \"s\"\n";

    /// Every hostile or impossible input of issue 9 is a load error pointing
    /// at the value to change, with a message saying why.
    #[test]
    fn bad_scenarios_are_load_errors_at_the_value_to_change() {
        // (scenario after HEAD, marker the error points at, its occurrence,
        // words the message holds)
        let cases: &[(&str, &str, usize, &str)] = &[
            ("[[step]]\ncrash = \"client\"\n", "\"client\"", 0, "cannot crash"),
            ("[[step]]\nrestart = \"client\"\n", "\"client\"", 0, "cannot restart"),
            (
                "[[step]]\nrequest = { model = \"m\", model_pub_key = \"ab\\ncd\" }\n",
                "\"ab",
                0,
                "model_pub_key cannot be sent as a header",
            ),
            (
                "[[step]]\nrequest = { model = \"m\", client_pub_key = \"a\\u0001\" }\n",
                "\"a\\u",
                0,
                "client_pub_key cannot be sent as a header",
            ),
            (
                "[[step]]\nrequest = { model = \"m\", model_pub_key = \"\" }\n",
                "\"\"",
                0,
                "cannot be sent as a header",
            ),
            ("[[step]]\nat = \"99999999999999999999999s\"\nrefresh = {}\n", "\"999", 0, "bad duration"),
            ("[[step]]\nadvance = \"10years\"\n", "\"10years\"", 0, "simulated-time bound of 24h"),
            (
                "[[step]]\nadvance = \"20h\"\n[[step]]\nadvance = \"5h\"\n",
                "\"5h\"",
                0,
                "beyond the simulated-time bound",
            ),
            (
                "[[step]]\nadvance = \"30s\"\n[[step]]\nat = \"10s\"\nrefresh = {}\n",
                "\"10s\"",
                0,
                "goes back in time: the steps before already reach 30s",
            ),
            (
                "[[step]]\npartition = [\"near-1\", \"near-1\"]\n",
                "[\"near-1\", \"near-1\"]",
                0,
                "two different hosts",
            ),
            ("[[step]]\nrestart = \"near-1\"\n", "\"near-1\"", 1, "is running"),
            (
                "[[step]]\ncrash = \"near-1\"\n[[step]]\ncrash = \"near-1\"\n",
                "\"near-1\"",
                2,
                "already down",
            ),
            ("[[near]]\nhost = \"\"\nmodels = []\n", "\"\"", 0, "not a plain host name"),
            ("[[near]]\nhost = \"../etc\"\nmodels = []\n", "\"../etc\"", 0, "not a plain host name"),
            ("[[external]]\nhost = \"a/b\"\nmodels = []\n", "\"a/b\"", 0, "not a plain host name"),
            ("[[near]]\nhost = \"near-1\"\nmodels = []\n", "\"near-1\"", 1, "used twice"),
            ("[[external]]\nhost = \"chutes\"\nmodels = []\n", "\"chutes\"", 0, "reserved"),
            (
                "[[chutes]]\nslug = \"s\"\ninstances = 4294967295\n",
                "4294967295",
                0,
                "instances = 4294967295 is out of range",
            ),
            ("[[chutes]]\nslug = \"s\"\ninstances = 0\n", "0\n", 0, "out of range"),
            ("[[chutes]]\nslug = \"s\"\nstream_protocol = 3\n", "3\n", 0, "stream_protocol = 3 does not exist"),
            ("[config]\nrefresh_interval = \"0s\"\n", "\"0s\"", 0, "whole number of seconds"),
            ("[config]\nrefresh_interval = \"1500ms\"\n", "\"1500ms\"", 0, "whole number of seconds"),
            ("[world]\nchutes_nonce_expires_in = \"500ms\"\n", "\"500ms\"", 0, "whole number of seconds"),
            (
                "[config]\nchutes_models = \"m=\"\n",
                "\"m=\"",
                0,
                "the engine refuses this configuration",
            ),
            (
                "[[step]]\nrequest = { model = \"m\" }\nexpect = { tier = \"platinum\" }\n",
                "\"platinum\"",
                0,
                "\"platinum\" is not a tier",
            ),
            (
                "[[step]]\nrequest = { model = \"m\" }\nexpect = { served_by = \"near-9\" }\n",
                "\"near-9\"",
                0,
                "names no provider",
            ),
            (
                "[[step]]\nrequest = { model = \"m\" }\nexpect = { served_by = \"chutes\" }\n",
                "\"chutes\"",
                0,
                "names no provider",
            ),
            (
                "[[step]]\nrequest = { model = \"m\" }\nexpect = { served_by = \"near-1\", never = [\"near-1\"] }\n",
                "[\"near-1\"]",
                0,
                "both `served_by` and in `never`",
            ),
            (
                "[[step]]\nrequest = { model = \"m\" }\nexpect = { tried = [\"near-1\", \"nope\"] }\n",
                "\"nope\"",
                0,
                "names no provider",
            ),
            (
                "[[step]]\nrequest = { model = \"m\", prompt = \"p\", messages = [] }\n",
                "[]",
                0,
                "`prompt` and `messages` both",
            ),
            (
                "[[step]]\nrequest = { model = \"m\", messages = [] }\n",
                "[]",
                0,
                "sends no message",
            ),
            (
                "[[step]]\nrequest = { model = \"m\", extra = { stream = true } }\n",
                "{ stream",
                0,
                "`extra` repeats \"stream\"",
            ),
            (
                "[[step]]\nrequest = { model = \"m\" }\nexpect = { upstream = [{ host = \"router\" }] }\n",
                "\"router\"",
                0,
                "no upstream host",
            ),
            (
                "[[step]]\nexpect = { health = [{ model = \"m\", provider = \"near-7\" }] }\n",
                "\"near-7\"",
                0,
                "names no provider",
            ),
            (
                "[[step]]\nconcurrent = []\n",
                "[]",
                0,
                "0 concurrent requests",
            ),
            (
                "[[step]]\nconcurrent = [{ model = \"m\" }]\nexpect = { each = [{ upstream = [] }] }\n",
                "[]",
                0,
                "cannot tell concurrent requests apart",
            ),
            (
                "[[step]]\nconcurrent = [{ model = \"m\", model_pub_key = \"a b\" }]\n",
                "\"a b\"",
                0,
                "model_pub_key cannot be sent as a header",
            ),
            (
                "[config]\nchutes_models = \"a=s\"\nchutes_build_fails = [\"s\"]\n",
                "\"s\"]",
                0,
                "\"s\" is not a canonical id of chutes_models",
            ),
            (
                "[config]\nchutes_models = \"a=s\"\nchutes_build_fails = [\"a\", \"a\"]\n",
                "\"a\"]",
                0,
                "\"a\" is listed twice",
            ),
            (
                "[[catalog]]\nid = \"m\"\nprovider_type = \"chutes\"\n",
                "\"chutes\"",
                0,
                "unknown variant `chutes`, expected `vllm` or `external`",
            ),
            (
                "[[step]]\nconcurrent = [{ model = \"m\" }]\nexpect = { each = [{ round_robin = [{ model = \"m\" }] }] }\n",
                "[{ model = \"m\" }] }",
                0,
                "`round_robin` is the model's, not one request's",
            ),
            ("[[step]]\nshutdown = \"near-1\"\n", "\"near-1\"", 1, "only the router shuts down"),
            ("[[step]]\nshutdown = \"nowhere\"\n", "\"nowhere\"", 0, "names no host"),
            (
                "[[step]]\nshutdown = \"router\"\n[[step]]\ncrash = \"router\"\n",
                "\"router\"",
                1,
                "already down",
            ),
            (
                "[[step]]\nshutdown = \"router\"\n[[step]]\nrestart = \"router\"\n[[step]]\nrestart = \"router\"\n",
                "\"router\"",
                2,
                "is running",
            ),
            (
                "[[step]]\nexpect = { round_robin = [{ model = \"m\", next = \"near-4\" }] }\n",
                "\"near-4\"",
                0,
                "\"near-4\" names no provider",
            ),
            (
                "[[step]]\nexpect = { round_robin = [{ model = \"m\", turn = 1 }] }\n",
                "turn",
                0,
                "unknown field `turn`",
            ),
            (
                "[[step]]\nhold = [\"router\", \"router\"]\n",
                "[\"router\", \"router\"]",
                0,
                "two different hosts",
            ),
            // SPEC-parity R40–R43's keys.
            (
                "[[step]]\nrequest = { model = \"m\", repeat = 12345 }\n",
                "12345",
                0,
                "needs a `prompt`",
            ),
            (
                "[[step]]\nrequest = { model = \"m\", prompt = \"ab\", repeat = 3000000 }\n",
                "3000000",
                0,
                "at most 2097152 bytes",
            ),
            (
                "[[step]]\nrequest = { model = \"m\" }\nexpect = { tokenized = [\"chutes\"] }\n",
                "\"chutes\"",
                0,
                "names no NEAR backend",
            ),
            (
                "[[catalog]]\nid = \"m\"\ninference_url = \"near-1\"\nlong_context = { inference_url = \"near-9\" }\n",
                "\"near-9\"",
                0,
                "names no NEAR backend",
            ),
            (
                "[config]\ncontext_route = { safety_factor = -1.0 }\n",
                "{ safety_factor",
                0,
                "CONTEXT_ROUTE_SAFETY_FACTOR must be a positive finite number",
            ),
        ];
        for (body, marker, nth, words) in cases {
            let text = format!("{HEAD}{body}");
            let e = err(&text);
            assert_eq!(
                (e.line, e.column),
                position_of(&text, marker, *nth),
                "{body}: {e}"
            );
            assert!(e.message.contains(words), "{body}: {e}");
        }
        // A Chutes family in a world with chutes is a provider; a crash then
        // restart is fine; `at` after an advance at or past its end is fine.
        let ok = format!(
            "{HEAD}{CHUTES}[[step]]\ncrash = \"near-1\"\n[[step]]\nrestart = \"near-1\"\n[[step]]\nadvance = \"30s\"\n[[step]]\nat = \"30s\"\nrequest = {{ model = \"m\", model_pub_key = \"zz\" }}\nexpect = {{ served_by = \"chutes:s\", never = [\"near-1\"], tier = \"attested3p\" }}\n"
        );
        parse(Path::new("ok.toml"), &ok).unwrap();
    }

    #[test]
    fn unreadable_and_non_utf8_files_say_why_and_where() {
        let dir = std::env::temp_dir().join(format!("tiersim-load-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = load(&dir.join("missing.toml")).unwrap_err();
        assert!(
            missing.message.contains("cannot read the scenario file"),
            "{missing}"
        );
        assert!(!missing.to_string().contains(":0:0"), "{missing}");
        let bad = dir.join("latin1.toml");
        std::fs::write(&bad, b"name = \"t\"\ndescription = \"caf\xe9\"\n").unwrap();
        let e = load(&bad).unwrap_err();
        assert_eq!((e.line, e.column), (2, 19), "{e}");
        assert!(e.message.contains("not UTF-8"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn sweep_fault_counts_are_checked_one_way() {
        assert_eq!(fault_counts(None, None), Ok((1, 3)));
        assert_eq!(fault_counts(Some(5), None), Ok((5, 5)));
        assert!(fault_counts(Some(5), Some(1))
            .unwrap_err()
            .contains("above"));
        assert!(fault_counts(None, Some(65))
            .unwrap_err()
            .contains("too many"));
    }

    #[test]
    fn time_going_backwards_is_an_error() {
        let e = err(&format!(
            "{HEAD}[[step]]\nat = \"10s\"\nrefresh = {{}}\n[[step]]\nat = \"5s\"\nrefresh = {{}}\n"
        ));
        assert_eq!(e.line, 10, "{e}");
    }

    #[test]
    fn several_near_hosts_per_row_are_each_checked() {
        let row = |urls: &str| format!("{HEAD}[[catalog]]\nid = \"m\"\ninference_url = {urls}\n");
        assert!(parse(Path::new("ok.toml"), &row("[\"near-1\"]")).is_ok());
        for (urls, what) in [
            ("[]", "empty list"),
            ("[\"near-1\", \"near-1\"]", "listed twice"),
            ("[\"near-1\", \"near-7\"]", "names no NEAR backend"),
        ] {
            let e = err(&row(urls));
            assert_eq!(e.line, 8, "{e}");
            assert!(e.message.contains(what), "{urls}: {e}");
        }
    }

    #[test]
    fn world_table_is_validated_with_positions() {
        let ok = parse(
            Path::new("x.toml"),
            &format!("{HEAD}[world]\nchunking = \"random\"\nmax_chunk = 7\nchunk_seed = 2\n"),
        )
        .unwrap();
        assert_eq!(ok.world.chunking, Chunking::Random);
        assert_eq!(ok.world.plan().max_chunk, Some(7));
        let e = err(&format!(
            "{HEAD}[world]\nchunking = \"random\"\nmax_chunk = 0\n"
        ));
        assert!(e.message.contains("max_chunk = 0"), "{e}");
        let e = err(&format!("{HEAD}[world]\nmax_chunk = 4\n"));
        assert!(e.message.contains("only applies"), "{e}");
        let e = err(&format!("{HEAD}[world]\nchunking = \"bytes\"\n"));
        assert!(e.message.contains("unknown variant"), "{e}");
        let e = err(&format!("{HEAD}[sweep]\nchunking = []\n"));
        assert!(e.message.contains("no chunking"), "{e}");
    }

    #[test]
    fn sweep_table_is_validated_with_positions() {
        let e = err(&format!("{HEAD}[sweep]\nhosts = [\"near-9\"]\n"));
        assert_eq!((e.line, e.column), (7, 10), "{e}");
        assert!(e.hint.unwrap().contains("near-1"));
        let e = err(&format!("{HEAD}[sweep]\nkinds = [\"drop_frame\"]\n"));
        assert_eq!((e.line, e.column), (7, 10), "{e}");
        assert!(e.message.contains("drop_frame"), "{e}");
        let e = err(&format!("{HEAD}[sweep]\nkinds = [\"explode\"]\n"));
        assert_eq!(e.line, 7, "{e}");
        assert!(e.message.contains("unknown variant"), "{e}");
        let e = err(&format!("{HEAD}[sweep]\nmin_faults = 4\nmax_faults = 2\n"));
        assert_eq!((e.line, e.column), (7, 14), "{e}");
        let e = err(&format!("{HEAD}[sweep]\nmax_fault = 2\n"));
        assert!(e.message.contains("unknown field `max_fault`"), "{e}");
        let e = err(&format!("{HEAD}[sweep]\nstatuses = [200]\n"));
        assert_eq!(e.line, 7, "{e}");
        let e = err(&format!(
            "{HEAD}[sweep]\nmessages = [\"too long\", \" \"]\n"
        ));
        assert_eq!((e.line, e.column), (7, 12), "{e}");
        assert!(e.message.contains("non-blank"), "{e}");
        let e = err(&format!("{HEAD}[sweep]\nmessages = []\n"));
        assert!(e.message.contains("non-empty"), "{e}");
        let e = err(&format!("{HEAD}[sweep]\nmax_tokens = []\n"));
        assert_eq!((e.line, e.column), (7, 14), "{e}");
        assert!(e.message.contains("output reserves"), "{e}");
        let e = err(&format!("{HEAD}[sweep]\nhosts = [\"client\"]\n"));
        assert!(e.message.contains("client"), "{e}");
        let ok = parse(
            Path::new("ok.toml"),
            &format!("{HEAD}[sweep]\nhosts = [\"near-1\", \"router\"]\nkinds = [\"crash\", \"latency_ms\"]\nweights = {{ crash = 2 }}\nuntil = \"10s\"\n"),
        )
        .unwrap();
        assert_eq!(ok.sweep.unwrap().get_ref().weights[&FaultKind::Crash], 2);
    }

    #[test]
    fn fault_kind_names_match_their_serde_names() {
        for k in FaultKind::ALL {
            let json = serde_json::to_string(k).unwrap();
            assert_eq!(json, format!("\"{}\"", k.name()));
            assert_eq!(FaultKind::from_name(k.name()), Some(*k));
        }
    }

    #[test]
    fn a_valid_scenario_parses() {
        let s = parse(
            Path::new("ok.toml"),
            &format!("{HEAD}[[step]]\nrefresh = {{}}\n[[step]]\nrequest = {{ model = \"m\" }}\nexpect = {{ status = 200 }}\n"),
        )
        .unwrap();
        assert_eq!(s.steps.len(), 2);
    }
}

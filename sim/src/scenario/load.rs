//! Reading a scenario file: TOML errors and semantic errors alike come back
//! with file, line, column and a hint; a scenario that fails here never runs.

use std::collections::BTreeSet;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::Spanned;

use super::format::{FaultKind, Scenario, Step, SweepSpec};
use crate::rules::RULES;

/// Where a scenario went wrong, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScenarioError {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub message: String,
    pub hint: Option<String>,
}

impl fmt::Display for ScenarioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.column,
            self.message
        )?;
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ScenarioError {}

/// Reads and validates a scenario file.
pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
    let text = std::fs::read_to_string(path).map_err(|e| ScenarioError {
        file: path.to_path_buf(),
        line: 0,
        column: 0,
        message: format!("cannot read scenario: {e}"),
        hint: None,
    })?;
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

struct Validator<'a> {
    scenario: &'a Scenario,
    hosts: BTreeSet<String>,
}

impl Validator<'_> {
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
                    Some(format!(
                        "known rules: {}",
                        RULES.iter().map(|r| r.id).collect::<Vec<_>>().join(", ")
                    )),
                ));
            }
        }
        let near: BTreeSet<&str> = s.near.iter().map(|n| n.host.as_str()).collect();
        let mut seen = BTreeSet::new();
        for name in s
            .near
            .iter()
            .map(|n| &n.host)
            .chain(s.external.iter().map(|e| &e.host))
        {
            if !seen.insert(name.as_str())
                || ["router", "catalog", "client", "chutes"].contains(&name.as_str())
            {
                return Err((0..0, format!("host name {name:?} is used twice or reserved"), Some("hosts router, catalog, client and chutes are built in; give each backend its own name".into())));
            }
        }
        for row in &s.catalog {
            self.near_hosts(row.inference_url.as_ref(), &near)?;
        }
        let mut last_at = None;
        for step in &s.steps {
            self.step(step, &near, &mut last_at)?;
        }
        if let Some(sweep) = &s.sweep {
            self.sweep(sweep)?;
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
        if let (Some(lo), Some(hi)) = (min, max) {
            if lo.get_ref() > hi.get_ref() {
                return Err((
                    lo.span(),
                    format!(
                        "min_faults = {} is above max_faults = {}",
                        lo.get_ref(),
                        hi.get_ref()
                    ),
                    None,
                ));
            }
        }
        for n in [min, max].into_iter().flatten() {
            if *n.get_ref() > MAX_SWEEP_FAULTS {
                return Err((
                    n.span(),
                    format!("{} faults per seed is too many to shrink", n.get_ref()),
                    Some(format!("use at most {MAX_SWEEP_FAULTS}")),
                ));
            }
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
        step: &Spanned<Step>,
        near: &BTreeSet<&str>,
        last_at: &mut Option<std::time::Duration>,
    ) -> Result<(), Problem> {
        let st = step.get_ref();
        let actions = [
            st.refresh.is_some(),
            st.admin_patch.is_some(),
            st.catalog.is_some(),
            st.fault.is_some(),
            st.clear_faults.is_some(),
            st.partition.is_some(),
            st.repair.is_some(),
            st.crash.is_some(),
            st.restart.is_some(),
            st.request.is_some(),
            st.unregister.is_some(),
            st.advance.is_some(),
        ]
        .iter()
        .filter(|a| **a)
        .count();
        const KINDS: &str = "refresh, admin_patch, catalog, fault, clear_faults, partition, repair, crash, restart, request, unregister, advance";
        if actions > 1 {
            return Err((
                step.span(),
                "a step holds at most one action".into(),
                Some(format!(
                    "split it into several [[step]] tables; actions are: {KINDS}"
                )),
            ));
        }
        if actions == 0 && st.expect.is_none() {
            return Err((
                step.span(),
                "a step needs an action or an expect".into(),
                Some(format!("actions are: {KINDS}")),
            ));
        }
        if let Some(at) = &st.at {
            if last_at.is_some_and(|l| at.get_ref().0 < l) {
                return Err((
                    at.span(),
                    "`at` goes back in time".into(),
                    Some(
                        "steps run in order; each `at` must be at or after the previous one".into(),
                    ),
                ));
            }
            *last_at = Some(at.get_ref().0);
        }
        if let Some(f) = &st.fault {
            if !self.hosts.contains(&f.get_ref().host) {
                return Err(self.unknown_host(f.span(), &f.get_ref().host));
            }
        }
        for h in [&st.clear_faults, &st.crash, &st.restart]
            .into_iter()
            .flatten()
        {
            self.host(h)?;
        }
        for pair in [&st.partition, &st.repair].into_iter().flatten() {
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
            }
        }
        if let Some(edit) = &st.catalog {
            for row in &edit.upsert {
                self.near_hosts(row.inference_url.as_ref(), near)?;
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
        if let Some(req) = &st.request {
            self.near_host(req.pub_key_of.as_ref(), near)?;
        }
        Ok(())
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
        let e = err(&format!("{HEAD}[sweep]\nhosts = [\"client\"]\n"));
        assert!(e.message.contains("client"), "{e}");
        let ok = parse(
            Path::new("ok.toml"),
            &format!("{HEAD}[sweep]\nhosts = [\"near-1\", \"router\"]\nkinds = [\"crash\", \"latency\"]\nweights = {{ crash = 2 }}\nuntil = \"10s\"\n"),
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

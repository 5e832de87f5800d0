//! A step's action as one typed value: [`Action`], converted from the flat
//! wire form of [`Step`] (one optional key per action), described by its
//! `Display`, and played by a [`Dispatcher`] (the simulated runner and
//! `tiersim serve` each implement one).
//!
//! Adding a step kind: a wire key on [`Step`], then the compiler points at
//! the rest (the destructuring in [`Step::actions`], a variant here, its
//! `key` and `Display`, a [`Dispatcher`] method, [`Step::of`], the writer).

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;

use super::format::{CatalogEdit, Dur, PatchRow, RequestSpec, Step};
use crate::fault::FaultInjection;

/// What one step does.
#[derive(Debug, Clone, Copy)]
pub enum Action<'a> {
    /// A complete discovery refresh now.
    Refresh,
    /// `PATCH /v1/admin/models` on the router.
    AdminPatch(&'a [PatchRow]),
    /// An operator's direct edit of the catalog.
    Catalog(&'a CatalogEdit),
    /// A fault injected on a host's fault board.
    Fault(&'a FaultInjection),
    /// Every fault of a host cleared.
    ClearFaults(&'a str),
    /// The link between two hosts cut.
    Partition(&'a str, &'a str),
    /// The link between two hosts restored.
    Repair(&'a str, &'a str),
    /// The link between two hosts held (packets wait).
    Hold(&'a str, &'a str),
    /// A held link released.
    Release(&'a str, &'a str),
    Crash(&'a str),
    Restart(&'a str),
    /// A graceful shutdown of a host (the router).
    Shutdown(&'a str),
    /// A client request to the router.
    Request(&'a RequestSpec),
    /// Client requests sent at once.
    Concurrent(&'a [RequestSpec]),
    /// A model id unregistered on the router.
    Unregister(&'a str),
    /// Simulated time passes.
    Advance(Duration),
    /// No action: the step only checks expectations.
    Check,
}

impl Action<'_> {
    /// Every action's wire key, in the format's order.
    pub const KEYS: &'static [&'static str] = &[
        "refresh",
        "admin_patch",
        "catalog",
        "fault",
        "clear_faults",
        "partition",
        "repair",
        "hold",
        "release",
        "crash",
        "restart",
        "shutdown",
        "request",
        "concurrent",
        "unregister",
        "advance",
    ];

    /// The action's key in a `[[step]]` table (`check` for none).
    pub fn key(&self) -> &'static str {
        match self {
            Action::Refresh => "refresh",
            Action::AdminPatch(_) => "admin_patch",
            Action::Catalog(_) => "catalog",
            Action::Fault(_) => "fault",
            Action::ClearFaults(_) => "clear_faults",
            Action::Partition(..) => "partition",
            Action::Repair(..) => "repair",
            Action::Hold(..) => "hold",
            Action::Release(..) => "release",
            Action::Crash(_) => "crash",
            Action::Restart(_) => "restart",
            Action::Shutdown(_) => "shutdown",
            Action::Request(_) => "request",
            Action::Concurrent(_) => "concurrent",
            Action::Unregister(_) => "unregister",
            Action::Advance(_) => "advance",
            Action::Check => "check",
        }
    }
}

/// The one-line description of the action in snapshots, traces, diagrams
/// and `serve`'s log.
impl fmt::Display for Action<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Refresh | Action::Check => f.write_str(self.key()),
            Action::AdminPatch(rows) => write!(
                f,
                "admin_patch {}",
                serde_json::to_string(rows).unwrap_or_default()
            ),
            Action::Catalog(e) => {
                let mut parts = Vec::new();
                parts.extend(e.upsert.iter().map(|r| format!("upsert {}", r.id)));
                parts.extend(e.remove.iter().map(|r| format!("remove {r}")));
                parts.extend(
                    e.external_upsert
                        .iter()
                        .map(|r| format!("external+ {}@{}", r.model, r.host.get_ref())),
                );
                parts.extend(e.external_remove.iter().map(|r| format!("external- {r}")));
                write!(f, "catalog {}", parts.join(", "))
            }
            Action::Fault(fault) => write!(f, "fault {fault}"),
            Action::ClearFaults(h) => write!(f, "clear_faults {h}"),
            Action::Partition(a, b) => write!(f, "partition {a} | {b}"),
            Action::Repair(a, b) => write!(f, "repair {a} | {b}"),
            Action::Hold(a, b) => write!(f, "hold {a} | {b}"),
            Action::Release(a, b) => write!(f, "release {a} | {b}"),
            Action::Crash(h) => write!(f, "crash {h}"),
            Action::Restart(h) => write!(f, "restart {h}"),
            Action::Shutdown(h) => write!(f, "shutdown {h}"),
            Action::Request(r) => {
                write!(
                    f,
                    "request {}{}",
                    r.model,
                    if r.stream { " (stream)" } else { "" }
                )?;
                if let Some(h) = &r.pub_key_of {
                    write!(f, " x-model-pub-key=<{}>", h.get_ref())?;
                }
                if let Some(k) = &r.model_pub_key {
                    write!(f, " x-model-pub-key={k}")?;
                }
                if let Some(k) = &r.client_pub_key {
                    write!(f, " x-client-pub-key={k}")?;
                }
                if let Some(m) = &r.messages {
                    write!(f, " messages={}", m.len())?;
                }
                if let (Some(p), Some(n)) = (&r.prompt, r.repeat) {
                    write!(f, " prompt={} bytes", p.len() as u64 * u64::from(n))?;
                }
                if let Some(n) = r.max_tokens {
                    write!(f, " max_tokens={n}")?;
                }
                if let Some(extra) = &r.extra {
                    let keys: Vec<&str> = extra.keys().map(String::as_str).collect();
                    write!(f, " +{}", keys.join(","))?;
                }
                Ok(())
            }
            Action::Concurrent(requests) => {
                f.write_str("concurrent [")?;
                for (i, r) in requests.iter().enumerate() {
                    if i > 0 {
                        f.write_str(" | ")?;
                    }
                    write!(f, "{}", Action::Request(r))?;
                }
                f.write_str("]")
            }
            Action::Unregister(m) => write!(f, "unregister {m}"),
            Action::Advance(d) => write!(f, "advance {}", humantime::format_duration(*d)),
        }
    }
}

impl Step {
    /// Every action the wire form holds (the loader accepts at most one).
    pub fn actions(&self) -> Vec<Action<'_>> {
        // Destructured whole: a new wire key does not compile until it is
        // mapped to an action here (or named as not one).
        let Step {
            at: _,
            note: _,
            expect: _,
            refresh,
            admin_patch,
            catalog,
            fault,
            clear_faults,
            partition,
            repair,
            hold,
            release,
            crash,
            restart,
            shutdown,
            request,
            concurrent,
            unregister,
            advance,
        } = self;
        fn pair(p: &toml::Spanned<[String; 2]>) -> (&str, &str) {
            let [a, b] = p.get_ref();
            (a.as_str(), b.as_str())
        }
        [
            refresh.as_ref().map(|_| Action::Refresh),
            admin_patch.as_deref().map(Action::AdminPatch),
            catalog.as_ref().map(Action::Catalog),
            fault.as_ref().map(|f| Action::Fault(f.get_ref())),
            clear_faults
                .as_ref()
                .map(|h| Action::ClearFaults(h.get_ref())),
            partition
                .as_ref()
                .map(pair)
                .map(|(a, b)| Action::Partition(a, b)),
            repair.as_ref().map(pair).map(|(a, b)| Action::Repair(a, b)),
            hold.as_ref().map(pair).map(|(a, b)| Action::Hold(a, b)),
            release
                .as_ref()
                .map(pair)
                .map(|(a, b)| Action::Release(a, b)),
            crash.as_ref().map(|h| Action::Crash(h.get_ref())),
            restart.as_ref().map(|h| Action::Restart(h.get_ref())),
            shutdown.as_ref().map(|h| Action::Shutdown(h.get_ref())),
            request.as_ref().map(Action::Request),
            concurrent.as_deref().map(Action::Concurrent),
            unregister.as_deref().map(Action::Unregister),
            advance.map(|d| Action::Advance(d.0)),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    /// The step's action ([`Action::Check`] when it only checks).
    pub fn action(&self) -> Action<'_> {
        self.actions().into_iter().next().unwrap_or(Action::Check)
    }

    /// The wire form of a step doing `action` (no `at`, note or expect).
    pub fn of(action: Action<'_>) -> Step {
        let spanned = |v| toml::Spanned::new(0..0, v);
        let mut st = Step::default();
        match action {
            Action::Refresh => st.refresh = Some(Default::default()),
            Action::AdminPatch(rows) => st.admin_patch = Some(rows.to_vec()),
            Action::Catalog(e) => st.catalog = Some(e.clone()),
            Action::Fault(f) => st.fault = Some(toml::Spanned::new(0..0, f.clone())),
            Action::ClearFaults(h) => st.clear_faults = Some(spanned(h.to_string())),
            Action::Partition(a, b) => {
                st.partition = Some(toml::Spanned::new(0..0, [a.into(), b.into()]))
            }
            Action::Repair(a, b) => {
                st.repair = Some(toml::Spanned::new(0..0, [a.into(), b.into()]))
            }
            Action::Hold(a, b) => st.hold = Some(toml::Spanned::new(0..0, [a.into(), b.into()])),
            Action::Release(a, b) => {
                st.release = Some(toml::Spanned::new(0..0, [a.into(), b.into()]))
            }
            Action::Crash(h) => st.crash = Some(spanned(h.to_string())),
            Action::Restart(h) => st.restart = Some(spanned(h.to_string())),
            Action::Shutdown(h) => st.shutdown = Some(spanned(h.to_string())),
            Action::Request(r) => st.request = Some(r.clone()),
            Action::Concurrent(rs) => st.concurrent = Some(rs.to_vec()),
            Action::Unregister(m) => st.unregister = Some(m.to_string()),
            Action::Advance(d) => st.advance = Some(Dur(d)),
            Action::Check => {}
        }
        st
    }
}

/// Plays actions in one world. The simulated runner and `tiersim serve`
/// each implement it; [`Dispatcher::dispatch`] is the one match over
/// [`Action`], so a new action is a new method every world must implement.
#[async_trait(?Send)]
pub trait Dispatcher {
    async fn refresh(&mut self);
    async fn admin_patch(&mut self, rows: &[PatchRow]);
    async fn catalog(&mut self, edit: &CatalogEdit);
    async fn fault(&mut self, fault: &FaultInjection);
    async fn clear_faults(&mut self, host: &str);
    async fn partition(&mut self, a: &str, b: &str);
    async fn repair(&mut self, a: &str, b: &str);
    async fn hold(&mut self, a: &str, b: &str);
    async fn release(&mut self, a: &str, b: &str);
    async fn crash(&mut self, host: &str);
    async fn restart(&mut self, host: &str);
    async fn shutdown(&mut self, host: &str);
    async fn request(&mut self, spec: &RequestSpec);
    async fn concurrent(&mut self, specs: &[RequestSpec]);
    async fn unregister(&mut self, model: &str);
    async fn advance(&mut self, by: Duration);

    /// Plays `action`.
    async fn dispatch(&mut self, action: Action<'_>) {
        match action {
            Action::Refresh => self.refresh().await,
            Action::AdminPatch(rows) => self.admin_patch(rows).await,
            Action::Catalog(e) => self.catalog(e).await,
            Action::Fault(f) => self.fault(f).await,
            Action::ClearFaults(h) => self.clear_faults(h).await,
            Action::Partition(a, b) => self.partition(a, b).await,
            Action::Repair(a, b) => self.repair(a, b).await,
            Action::Hold(a, b) => self.hold(a, b).await,
            Action::Release(a, b) => self.release(a, b).await,
            Action::Crash(h) => self.crash(h).await,
            Action::Restart(h) => self.restart(h).await,
            Action::Shutdown(h) => self.shutdown(h).await,
            Action::Request(r) => self.request(r).await,
            Action::Concurrent(rs) => self.concurrent(rs).await,
            Action::Unregister(m) => self.unregister(m).await,
            Action::Advance(d) => self.advance(d).await,
            Action::Check => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Action::KEYS` is exactly the wire form's action keys (every key of
    /// `[[step]]` but `at`, `note` and `expect`), in order.
    #[test]
    fn action_keys_are_the_wire_forms_keys() {
        let schema = serde_json::to_value(schemars::schema_for!(Step)).unwrap();
        let keys: Vec<&str> = schema["properties"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .filter(|k| !["at", "note", "expect"].contains(k))
            .collect();
        let mut want = Action::KEYS.to_vec();
        want.sort_unstable();
        let mut got = keys.clone();
        got.sort_unstable();
        assert_eq!(got, want);
    }

    /// A step built from an action reads back as that action, described
    /// the same.
    #[test]
    fn step_of_an_action_round_trips() {
        let text = r#"
            [[step]]
            partition = ["router", "near-1"]
            [[step]]
            shutdown = "router"
            [[step]]
            advance = "1m 30s"
            [[step]]
            request = { model = "m", stream = true, client_pub_key = "k" }
            [[step]]
            expect = { status = 200 }
        "#;
        #[derive(serde::Deserialize)]
        struct Steps {
            step: Vec<Step>,
        }
        let steps: Steps = toml::from_str(text).unwrap();
        let described: Vec<String> = steps.step.iter().map(|s| s.action().to_string()).collect();
        assert_eq!(
            described,
            [
                "partition router | near-1",
                "shutdown router",
                "advance 1m 30s",
                "request m (stream) x-client-pub-key=k",
                "check"
            ]
        );
        for st in &steps.step {
            assert_eq!(
                Step::of(st.action()).action().to_string(),
                st.action().to_string()
            );
        }
    }
}

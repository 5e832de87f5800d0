//! Runs one scenario in its turmoil world: a driver host plays the steps,
//! records the state after each, and checks expectations and oracles.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use bytes::Bytes;
use http::{Method, Request};
use serde_json::{json, Value};
use tiersim_engine::registry::{PlantedBug, RegistryView};

use crate::fault::{FaultInjection, HostEvent, RequestKind};
use crate::net;
use crate::oracle;
use crate::record::{PatchBefore, Report, RequestRecord, StepRecord, Violation};
use crate::scenario::format::{CatalogEdit, ExternalSpec, PatchRow, RequestSpec, Scenario};
use crate::scenario::Dispatcher;
use crate::world::{self, WorldHandles};

/// The longest a single client request may take, in simulated time.
const CLIENT_DEADLINE: Duration = Duration::from_secs(600);
/// Largest response the client keeps.
const CLIENT_BODY_LIMIT: usize = 64 << 20;

#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Replaces the scenario's seed.
    pub seed: Option<u64>,
    /// A review bug of the seed PR to plant in the router (tests and the
    /// hidden `--plant` flag only; `None` in every ordinary run).
    pub plant: Option<PlantedBug>,
    /// Make the world panic as its script starts (the CLI's hidden
    /// `--panic-in`: testing the runner's isolation only).
    pub planted_panic: bool,
    /// Drive every host through every tick, even one in which it can do
    /// nothing (`--step-every-tick`). Off by default: such ticks are elided
    /// per host, and for the whole world when no host can do anything (the
    /// patched turmoil's `skip_idle_time`); the run's bytes are the same
    /// either way (`sim/tests/scenarios.rs`, `sim/tests/idle_skip.rs`).
    pub step_every_tick: bool,
}

enum Control {
    Crash(String),
    Restart(String),
}

#[derive(Default)]
struct Shared {
    steps: Vec<StepRecord>,
    violations: Vec<Violation>,
    control: Vec<Control>,
    /// Notified when the stepping loop has applied `control`.
    applied: Arc<Notify>,
    /// The reference model's abstention, as the driver last saw it.
    model_abstained: Option<crate::model::Abstention>,
}

/// Simulated time long enough for every step: scripted times, waits, and a
/// full retry budget per request.
fn simulation_duration(s: &Scenario) -> Duration {
    // Saturating: a scenario built in memory (a sweep's) skips the loader's
    // bound on scripted time; turmoil then stops the run at its limit.
    let mut total = Duration::from_secs(60);
    for st in &s.steps {
        let st = st.get_ref();
        if let Some(at) = &st.at {
            total = total.max(at.get_ref().0.saturating_add(Duration::from_secs(60)));
        }
        total = total.saturating_add(st.advance.map_or(Duration::ZERO, |d| d.0));
        total = total.saturating_add(Duration::from_secs(if st.request.is_some() {
            700
        } else {
            60
        }));
    }
    total
}

/// Runs `scenario` (read from `file`) and reports what happened.
pub fn run(scenario: &Scenario, file: &Path, opts: &RunOptions) -> Report {
    let seed = opts.seed.unwrap_or(scenario.seed);
    let mut report = Report {
        name: scenario.name.clone(),
        file: file.to_path_buf(),
        seed,
        steps: Vec::new(),
        violations: Vec::new(),
        expected: Vec::new(),
        sim_time: Duration::ZERO,
        startup_error: None,
        fired: Vec::new(),
        model_abstained: None,
    };
    let expected_startup = scenario.config.expect_startup_error.as_deref();
    let config = match world::engine_config(scenario) {
        Ok(c) => c,
        Err(e) => {
            let msg = e.to_string();
            match expected_startup {
                Some(want) if msg.contains(want) => {}
                _ => report.violations.push(Violation {
                    step: 0,
                    check: "startup".into(),
                    message: format!("the engine refused to start: {msg}"),
                }),
            }
            report.startup_error = Some(msg);
            return report;
        }
    };
    if let Some(want) = expected_startup {
        report.violations.push(Violation {
            step: 0,
            check: "startup".into(),
            message: format!(
                "expected the engine to refuse to start with {want:?}, but it started"
            ),
        });
        return report;
    }
    let mut scenario = scenario.clone();
    scenario.seed = seed;
    let scenario = Arc::new(scenario);

    let mut builder = turmoil::Builder::new();
    builder
        .rng_seed(seed)
        .simulation_duration(simulation_duration(&scenario))
        .skip_idle_time(!opts.step_every_tick);
    if let Some(tick) = &scenario.tick {
        builder.tick_duration(tick.get_ref().0);
    }
    let mut sim = builder.build();
    let handles = world::build_with(&mut sim, &scenario, config, opts.plant);
    let shared = Arc::new(Mutex::new(Shared::default()));
    {
        let shared = shared.clone();
        let handles = handles.clone();
        let scenario = scenario.clone();
        let planted_panic = opts.planted_panic;
        sim.client("client", async move {
            assert!(!planted_panic, "planted panic (--panic-in)");
            drive(&scenario, &handles, &shared).await;
            Ok(())
        });
    }
    loop {
        match sim.step() {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => {
                let step = shared.lock().unwrap().steps.len() + 1;
                report.violations.push(Violation {
                    step,
                    check: "simulation".into(),
                    message: e.to_string(),
                });
                break;
            }
        }
        let (control, applied) = {
            let mut shared = shared.lock().unwrap();
            (std::mem::take(&mut shared.control), shared.applied.clone())
        };
        if control.is_empty() {
            continue;
        }
        for c in control {
            match c {
                Control::Crash(h) => {
                    if h == "router" {
                        *handles.router.lock().unwrap() = Default::default();
                    }
                    sim.crash(h.as_str());
                }
                Control::Restart(h) => sim.bounce(h.as_str()),
            }
        }
        applied.notify_waiters();
    }
    report.sim_time = sim.elapsed();
    report.fired = handles.board.fired();
    let mut shared = shared.lock().unwrap();
    report.steps = std::mem::take(&mut shared.steps);
    report.model_abstained = shared.model_abstained;
    report
        .violations
        .extend(std::mem::take(&mut shared.violations));
    expected_violations(&scenario.expect_violations, &mut report);
    report
}

/// `expect_violations`: each listed oracle must fire, and its violations
/// are then expected (kept in `Report::expected`, shown in the snapshot);
/// a listed one that never fires is a violation itself.
fn expected_violations(listed: &[String], report: &mut Report) {
    if listed.is_empty() {
        return;
    }
    let oracle = |v: &Violation| v.check.strip_prefix("oracle:").map(str::to_string);
    let (expected, rest): (Vec<Violation>, Vec<Violation>) = std::mem::take(&mut report.violations)
        .into_iter()
        .partition(|v| oracle(v).is_some_and(|name| listed.contains(&name)));
    report.violations = rest;
    for name in listed {
        if !expected.iter().any(|v| oracle(v).as_deref() == Some(name)) {
            report.violations.push(Violation {
                step: 0,
                check: "expect_violations".into(),
                message: format!("oracle {name} was expected to fire and did not"),
            });
        }
    }
    report.expected = expected;
}

/// Runs `scenario` on a thread of its own, named after its file, so that a
/// panic in its world is this scenario's failure (check `panic`, with the
/// panic's message) and leaves no state behind for the next world.
pub fn run_isolated(scenario: &Scenario, file: &Path, opts: &RunOptions) -> Report {
    remember_first_panics();
    let outcome = std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name(file.display().to_string())
            .spawn_scoped(scope, || run(scenario, file, opts))
            .map(|world| world.join())
    });
    let message = match outcome {
        Ok(Ok(report)) => return report,
        Ok(Err(panic)) => format!(
            "the world panicked: {}",
            FIRST_PANIC
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&file.display().to_string())
                .unwrap_or_else(|| panic_message(&*panic))
        ),
        Err(e) => format!("cannot start the world's thread: {e}"),
    };
    Report {
        name: scenario.name.clone(),
        file: file.to_path_buf(),
        seed: opts.seed.unwrap_or(scenario.seed),
        steps: Vec::new(),
        violations: vec![Violation {
            step: 0,
            check: "panic".into(),
            message,
        }],
        expected: Vec::new(),
        sim_time: Duration::ZERO,
        startup_error: None,
        fired: Vec::new(),
        model_abstained: None,
    }
}

/// The first panic of each world thread (by thread name = scenario file),
/// with where it happened: the payload that reaches `join` is often a
/// runtime's secondary panic ("a spawned task panicked") instead.
static FIRST_PANIC: std::sync::Mutex<std::collections::BTreeMap<String, String>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

/// Installs (once) a panic hook that records a named thread's first panic
/// in [`FIRST_PANIC`], then runs the previous hook (which prints it).
fn remember_first_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if let Some(name) = std::thread::current().name() {
                let at = info
                    .location()
                    .map(|l| format!(" (at {}:{})", l.file(), l.line()))
                    .unwrap_or_default();
                let message = format!("{}{at}", panic_message(info.payload()));
                FIRST_PANIC
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(name.to_string())
                    .or_insert(message);
            }
            previous(info);
        }));
    });
}

/// The text of a panic's payload.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

async fn drive(s: &Scenario, w: &WorldHandles, shared: &Arc<Mutex<Shared>>) {
    let start = tokio::time::Instant::now();
    wait_for_router(w).await;
    let mut model = crate::model::Model::new(crate::model::Facts {
        scenario: s.clone(),
        near_keys: w.near_keys.clone(),
    });
    for (i, step) in s.steps.iter().enumerate() {
        let index = i + 1;
        let st = step.get_ref();
        if let Some(at) = &st.at {
            tokio::time::sleep_until(start + at.get_ref().0).await;
        }
        let mut rec = StepRecord {
            note: st.note.clone(),
            ..StepRecord::new(index, start.elapsed(), st.action().to_string())
        };
        let quiet = match &st.admin_patch {
            Some(rows) => quiet_view(w).await.map(|(view, listings)| {
                let ids = rows.iter().map(|r| r.id.clone()).collect();
                (PatchBefore { ids, view }, listings)
            }),
            None => None,
        };
        tracing::info!(step = index, at = ?rec.at, "{}", rec.action);
        let before = w.board.events_len();
        SimWorld {
            w,
            shared,
            rec: &mut rec,
            external: &s.external,
        }
        .dispatch(st.action())
        .await;
        if st.expect.as_ref().is_some_and(|e| e.listed.is_some()) {
            rec.listed = Some(list_models().await);
        }
        let app = w.router.lock().unwrap().app.clone();
        rec.state = app.as_ref().map(|a| a.registry().view());
        rec.refused = app.as_ref().map(|a| a.refused_rows()).unwrap_or_default();
        for want in st.expect.iter().flat_map(|e| &e.round_robin) {
            let seen = app
                .as_ref()
                .and_then(|a| a.registry().round_robin(&want.model));
            rec.round_robin.push((want.model.clone(), seen));
        }
        if let Some((before, listings)) = quiet {
            if w.catalog.listings() == listings && rec.state.is_some() {
                rec.patch_before = Some(before);
            }
        }
        let mut found: Vec<Violation> = Vec::new();
        if let Some(expect) = &st.expect {
            for message in crate::expect::check(expect, &rec) {
                found.push(Violation {
                    step: index,
                    check: "expect".into(),
                    message,
                });
            }
        }
        // The oracles judge each request of a `concurrent` step as if it
        // were the step's own.
        let each = rec.concurrent.iter().map(|r| StepRecord {
            request: Some(r.clone()),
            concurrent: Vec::new(),
            ..rec.clone()
        });
        for one in std::iter::once(rec.clone()).chain(each) {
            for (name, message) in oracle::check(&one) {
                let v = Violation {
                    step: index,
                    check: format!("oracle:{name}"),
                    message,
                };
                // An oracle on the registry alone sees the same state for
                // every request of the step: reported once.
                if !found.contains(&v) {
                    found.push(v);
                }
            }
        }
        // The reference model last: a named oracle is the sharper report.
        let writing = w
            .router
            .lock()
            .unwrap()
            .app
            .as_ref()
            .is_some_and(|a| a.is_writing());
        for (name, message) in model.step(st, &rec, &w.board, before, writing) {
            found.push(Violation {
                step: index,
                check: format!("oracle:{name}"),
                message,
            });
        }
        let mut sh = shared.lock().unwrap();
        sh.violations.extend(found);
        sh.steps.push(rec);
        sh.model_abstained = model.abstained();
    }
}

/// The registry once no refresh or admin batch is being applied, with the
/// catalog's listing count then (`None` while the router is down).
async fn quiet_view(w: &WorldHandles) -> Option<(RegistryView, u64)> {
    for _ in 0..600_000 {
        let app = w.router.lock().unwrap().app.clone()?;
        if !app.is_writing() {
            return Some((app.registry().view(), w.catalog.listings()));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    None
}

/// The longest the driver waits for the router to boot before playing its
/// steps anyway (they then find it down).
const ROUTER_BOOT_WAIT: Duration = Duration::from_secs(600);

async fn wait_for_router(w: &WorldHandles) {
    let booted = async {
        loop {
            // Registered before the slot is read, so a boot between the
            // read and the wait is not missed.
            let notified = w.router_booted.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if w.router.lock().unwrap().app.is_some() {
                return;
            }
            notified.await;
        }
    };
    // A router that never boots is the steps' finding, not a hung run.
    let _ = tokio::time::timeout(ROUTER_BOOT_WAIT, booted).await;
}

/// The simulated world as a [`Dispatcher`]: what a step does here, and
/// what it records in the step's record.
struct SimWorld<'a> {
    w: &'a WorldHandles,
    shared: &'a Arc<Mutex<Shared>>,
    rec: &'a mut StepRecord,
    /// The scenario's external providers (for catalog edits).
    external: &'a [ExternalSpec],
}

impl SimWorld<'_> {
    /// Asks the stepping loop to crash or restart a host (turmoil does both
    /// between steps of the simulation) and waits until it has: the next
    /// step of the script sees the host down or booting, whatever the tick
    /// (a fixed 1 ms wait let a coarser tick's script run on first).
    async fn control(&mut self, c: Control) {
        let applied = {
            let mut shared = self.shared.lock().unwrap();
            shared.control.push(c);
            shared.applied.clone()
        };
        let notified = applied.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        notified.await;
    }
}

#[async_trait::async_trait(?Send)]
impl Dispatcher for SimWorld<'_> {
    async fn refresh(&mut self) {
        crate::script::refresh(&self.w.router).await;
    }

    async fn admin_patch(&mut self, rows: &[PatchRow]) {
        let body = crate::script::admin_patch_body(rows, &net::url);
        let auth = crate::script::admin_authorization(world::SIM_ADMIN_KEY);
        let (status, _, bytes) = call(
            Method::PATCH,
            "/v1/admin/models",
            body,
            &[("authorization", auth)],
        )
        .await;
        self.rec.admin = Some((status, String::from_utf8_lossy(&bytes).into_owned()));
    }

    async fn catalog(&mut self, edit: &CatalogEdit) {
        crate::script::edit_catalog(edit, &self.w.catalog, self.external, &net::url);
    }

    async fn fault(&mut self, fault: &FaultInjection) {
        self.w.board.apply(fault.clone());
    }

    async fn clear_faults(&mut self, host: &str) {
        self.w.board.clear(host);
    }

    async fn partition(&mut self, a: &str, b: &str) {
        turmoil::partition(a, b);
    }

    async fn repair(&mut self, a: &str, b: &str) {
        turmoil::repair(a, b);
    }

    async fn hold(&mut self, a: &str, b: &str) {
        turmoil::hold(a, b);
    }

    async fn release(&mut self, a: &str, b: &str) {
        turmoil::release(a, b);
    }

    async fn crash(&mut self, host: &str) {
        self.control(Control::Crash(host.to_string())).await;
    }

    async fn restart(&mut self, host: &str) {
        self.control(Control::Restart(host.to_string())).await;
        if host == "router" {
            wait_for_router(self.w).await;
        }
    }

    async fn shutdown(&mut self, host: &str) {
        if host != world::ROUTER {
            return;
        }
        // Taking the slot drops the refresh trigger (the refresh loop ends)
        // and the app handle (the router reads as down).
        let slot = std::mem::take(&mut *self.w.router.lock().unwrap());
        if let Some(stop) = slot.shutdown {
            let _ = stop.send(());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }

    async fn request(&mut self, spec: &RequestSpec) {
        let id = format!("step{}", self.rec.index);
        self.rec.request = Some(request(spec, self.w, id).await);
    }

    async fn concurrent(&mut self, specs: &[RequestSpec]) {
        let index = self.rec.index;
        let calls = specs
            .iter()
            .enumerate()
            .map(|(k, spec)| request(spec, self.w, format!("step{index}.{}", k + 1)));
        self.rec.concurrent = futures_util::future::join_all(calls).await;
    }

    async fn unregister(&mut self, model: &str) {
        let app = self.w.router.lock().unwrap().app.clone();
        if let Some(app) = app {
            app.registry().unregister(model);
        }
    }

    async fn advance(&mut self, by: Duration) {
        tokio::time::sleep(by).await;
    }
}

/// One client request, sent with `x-request-id: id`; its attempts are the
/// router's journal entry with that id (several may be in flight).
async fn request(spec: &RequestSpec, w: &WorldHandles, id: String) -> RequestRecord {
    let body = request_body(spec).to_string();
    let mut headers: Vec<(&str, String)> = Vec::new();
    if let Some(h) = &spec.pub_key_of {
        headers.push(("x-model-pub-key", w.near_keys[h.get_ref()].clone()));
    }
    if let Some(k) = &spec.model_pub_key {
        headers.push(("x-model-pub-key", k.clone()));
    }
    if let Some(k) = &spec.client_pub_key {
        headers.push(("x-client-pub-key", k.clone()));
    }
    headers.push(("x-request-id", id.clone()));
    let received_before = w.board.received_count();
    let events_before = w.board.event_count();
    let (status, response_headers, body) =
        call(Method::POST, "/v1/chat/completions", body, &headers).await;
    let entry = w
        .journal
        .0
        .lock()
        .unwrap()
        .iter()
        .rev()
        .find(|e| e.request_id.as_deref() == Some(id.as_str()))
        .cloned();
    let served = entry.as_ref().and_then(|e| e.outcome.clone().ok());
    RequestRecord {
        id,
        model: spec.model.clone(),
        stream: spec.stream,
        client_e2ee: spec.client_pub_key.is_some(),
        status,
        headers: response_headers,
        body,
        upstream: w.board.received_since(received_before),
        tokenized: w
            .board
            .events_from(events_before)
            .into_iter()
            .filter_map(|e| match e {
                HostEvent::Request {
                    host,
                    kind: RequestKind::Tokenize,
                    ..
                } => Some(host),
                _ => None,
            })
            .collect(),
        attempts: entry
            .as_ref()
            .map(|e| e.attempts.clone())
            .unwrap_or_default(),
        error: entry.and_then(|e| e.outcome.err()),
        via_fallback: served.as_ref().map(|s| s.2),
        served: served.map(|(p, t, _)| (p, t)),
    }
}

/// The JSON body of a scenario's chat request: the model, the messages (one
/// user `prompt` unless `messages` is given), `stream`, `max_tokens`, then
/// every `extra` field as given.
pub fn request_body(spec: &RequestSpec) -> Value {
    let messages = spec.messages.clone().unwrap_or_else(|| {
        let prompt = spec.prompt.clone().unwrap_or_else(|| "hello".into());
        let prompt = prompt.repeat(spec.repeat.unwrap_or(1) as usize);
        vec![json!({ "role": "user", "content": prompt })]
    });
    let mut body = json!({
        "model": spec.model,
        "messages": messages,
        "stream": spec.stream,
    });
    if let Some(n) = spec.max_tokens {
        body["max_tokens"] = n.into();
    }
    for (k, v) in spec.extra.iter().flatten() {
        body[k] = v.clone();
    }
    body
}

/// One client call to the router: status, response headers (lowercase
/// names, in order) and body; a transport failure is status 0 with the
/// error as body.
async fn call(
    method: Method,
    path: &str,
    body: String,
    headers: &[(&str, String)],
) -> (u16, Vec<(String, String)>, Bytes) {
    let mut req = Request::builder()
        .method(method)
        .uri(format!("{}{path}", net::url("router")))
        .header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, v.as_str());
    }
    let req = req.body(Bytes::from(body)).expect("valid request");
    match net::http_client()
        .fetch(req, CLIENT_DEADLINE, CLIENT_BODY_LIMIT)
        .await
    {
        Ok((status, head, body)) => {
            let head = head
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect();
            (status.as_u16(), head, body)
        }
        Err(e) => (
            0,
            Vec::new(),
            Bytes::from(format!("client transport error: {e}")),
        ),
    }
}

async fn list_models() -> Vec<String> {
    let (_, _, body) = call(Method::GET, "/v1/models", String::new(), &[]).await;
    serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| {
            v["data"].as_array().map(|a| {
                a.iter()
                    .filter_map(|m| {
                        let id = m["id"].as_str()?;
                        // SPEC-parity R40: the listed context length.
                        Some(match m["context_length"].as_u64() {
                            Some(n) => format!("{id} (context {n})"),
                            None => id.to_string(),
                        })
                    })
                    .collect()
            })
        })
        .unwrap_or_default()
}

/// Loads and runs a scenario file.
pub fn run_file(path: &Path, opts: &RunOptions) -> Result<Report, crate::scenario::ScenarioError> {
    let s = crate::scenario::load(path)?;
    Ok(run(&s, path, opts))
}

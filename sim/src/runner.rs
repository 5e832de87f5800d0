//! Runs one scenario in its turmoil world: a driver host plays the steps,
//! records the state after each, and checks expectations and oracles.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use serde_json::{json, Value};
use tiersim_engine::registry::{PlantedBug, RegistryView};
use tiersim_engine::retry::Attempt;
use tiersim_engine::Tier;

use crate::fault::Fired;
use crate::net;
use crate::oracle;
use crate::scenario::format::{RequestSpec, Scenario, Step};
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
}

/// One request as the client saw it, with the router's attempt log.
#[derive(Debug, Clone)]
pub struct RequestRecord {
    pub model: String,
    pub stream: bool,
    /// The request carried `x-client-pub-key`.
    pub client_e2ee: bool,
    pub status: u16,
    pub body: Bytes,
    pub attempts: Vec<Attempt>,
    pub served: Option<(String, Tier)>,
}

/// The state after one step.
#[derive(Debug, Clone)]
pub struct StepRecord {
    pub index: usize,
    pub at: Duration,
    pub action: String,
    pub note: Option<String>,
    pub request: Option<RequestRecord>,
    /// `GET /v1/models`, when the step's expectations ask for it.
    pub listed: Option<Vec<String>>,
    /// Status and body of an admin PATCH.
    pub admin: Option<(u16, String)>,
    /// `None` while the router is down.
    pub state: Option<RegistryView>,
    /// For an admin PATCH: the batch and the registry just before it, when
    /// nothing else wrote the registry around it (no refresh interleaved).
    pub patch_before: Option<PatchBefore>,
}

/// The registry right before an admin PATCH, for the oracle that the batch
/// leaves every other model alone.
#[derive(Debug, Clone)]
pub struct PatchBefore {
    /// The ids the batch names.
    pub ids: Vec<String>,
    pub view: RegistryView,
}

/// A failed expectation or oracle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// 1-based step, 0 for the run as a whole.
    pub step: usize,
    /// `expect` or `oracle:<name>`.
    pub check: String,
    pub message: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "step {}: {}: {}", self.step, self.check, self.message)
    }
}

#[derive(Debug, Clone)]
pub struct Report {
    pub name: String,
    pub file: PathBuf,
    pub seed: u64,
    pub steps: Vec<StepRecord>,
    pub violations: Vec<Violation>,
    pub sim_time: Duration,
    pub startup_error: Option<String>,
    /// Every fault that fired, in order (part of the determinism hash).
    pub fired: Vec<Fired>,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }
    pub fn requests(&self) -> usize {
        self.steps.iter().filter(|s| s.request.is_some()).count()
    }
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
}

/// Simulated time long enough for every step: scripted times, waits, and a
/// full retry budget per request.
fn simulation_duration(s: &Scenario) -> Duration {
    let mut total = Duration::from_secs(60);
    for st in &s.steps {
        let st = st.get_ref();
        if let Some(at) = &st.at {
            total = total.max(at.get_ref().0 + Duration::from_secs(60));
        }
        total += st.advance.map_or(Duration::ZERO, |d| d.0);
        total += Duration::from_secs(if st.request.is_some() { 700 } else { 60 });
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
        sim_time: Duration::ZERO,
        startup_error: None,
        fired: Vec::new(),
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
        .simulation_duration(simulation_duration(&scenario));
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
        sim.client("client", async move {
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
        let control: Vec<Control> = std::mem::take(&mut shared.lock().unwrap().control);
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
    }
    report.sim_time = sim.elapsed();
    report.fired = handles.board.fired();
    let mut shared = shared.lock().unwrap();
    report.steps = std::mem::take(&mut shared.steps);
    report
        .violations
        .extend(std::mem::take(&mut shared.violations));
    report
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
            index,
            at: start.elapsed(),
            action: describe(st),
            note: st.note.clone(),
            request: None,
            listed: None,
            admin: None,
            state: None,
            patch_before: None,
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
        act(st, w, shared, &mut rec).await;
        if st.expect.as_ref().is_some_and(|e| e.listed.is_some()) {
            rec.listed = Some(list_models().await);
        }
        rec.state = w
            .router
            .lock()
            .unwrap()
            .app
            .as_ref()
            .map(|a| a.registry().view());
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
        for (name, message) in oracle::check(&rec) {
            found.push(Violation {
                step: index,
                check: format!("oracle:{name}"),
                message,
            });
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

async fn wait_for_router(w: &WorldHandles) {
    for _ in 0..600_000 {
        if w.router.lock().unwrap().app.is_some() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn act(st: &Step, w: &WorldHandles, shared: &Arc<Mutex<Shared>>, rec: &mut StepRecord) {
    if st.refresh.is_some() {
        crate::script::refresh(&w.router).await;
    } else if let Some(rows) = &st.admin_patch {
        let body = crate::script::admin_patch_body(rows, &net::url);
        let (status, bytes) = call(Method::PATCH, "/v1/admin/models", body, &[]).await;
        rec.admin = Some((status, String::from_utf8_lossy(&bytes).into_owned()));
    } else if let Some(edit) = &st.catalog {
        crate::script::edit_catalog(edit, &w.catalog, &net::url);
    } else if let Some(f) = &st.fault {
        w.board.apply(f.get_ref().clone());
    } else if let Some(h) = &st.clear_faults {
        w.board.clear(h.get_ref());
    } else if let Some(p) = &st.partition {
        let [a, b] = p.get_ref();
        turmoil::partition(a.as_str(), b.as_str());
    } else if let Some(p) = &st.repair {
        let [a, b] = p.get_ref();
        turmoil::repair(a.as_str(), b.as_str());
    } else if let Some(h) = &st.crash {
        shared
            .lock()
            .unwrap()
            .control
            .push(Control::Crash(h.get_ref().clone()));
        tokio::time::sleep(Duration::from_millis(1)).await;
    } else if let Some(h) = &st.restart {
        shared
            .lock()
            .unwrap()
            .control
            .push(Control::Restart(h.get_ref().clone()));
        tokio::time::sleep(Duration::from_millis(1)).await;
        if h.get_ref() == "router" {
            wait_for_router(w).await;
        }
    } else if let Some(req) = &st.request {
        rec.request = Some(request(req, w).await);
    } else if let Some(model) = &st.unregister {
        let app = w.router.lock().unwrap().app.clone();
        if let Some(app) = app {
            app.registry().unregister(model);
        }
    } else if let Some(d) = st.advance {
        tokio::time::sleep(d.0).await;
    }
}

async fn request(spec: &RequestSpec, w: &WorldHandles) -> RequestRecord {
    let prompt = spec.prompt.clone().unwrap_or_else(|| "hello".into());
    let body = json!({
        "model": spec.model,
        "messages": [{ "role": "user", "content": prompt }],
        "stream": spec.stream,
    })
    .to_string();
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
    let before = w.journal.0.lock().unwrap().len();
    let (status, body) = call(Method::POST, "/v1/chat/completions", body, &headers).await;
    let entry = w.journal.0.lock().unwrap().get(before).cloned();
    RequestRecord {
        model: spec.model.clone(),
        stream: spec.stream,
        client_e2ee: spec.client_pub_key.is_some(),
        status,
        body,
        attempts: entry
            .as_ref()
            .map(|e| e.attempts.clone())
            .unwrap_or_default(),
        served: entry.and_then(|e| e.outcome.ok()),
    }
}

/// One client call to the router; a transport failure is status 0 with the
/// error as body.
async fn call(
    method: Method,
    path: &str,
    body: String,
    headers: &[(&str, String)],
) -> (u16, Bytes) {
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
        Ok((status, _, body)) => (status.as_u16(), body),
        Err(e) => (0, Bytes::from(format!("client transport error: {e}"))),
    }
}

async fn list_models() -> Vec<String> {
    let (_, body) = call(Method::GET, "/v1/models", String::new(), &[]).await;
    serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| {
            v["data"].as_array().map(|a| {
                a.iter()
                    .filter_map(|m| m["id"].as_str().map(String::from))
                    .collect()
            })
        })
        .unwrap_or_default()
}

/// A one-line summary of a step's action, for snapshots and diagrams.
pub fn describe(st: &Step) -> String {
    if st.refresh.is_some() {
        "refresh".into()
    } else if let Some(rows) = &st.admin_patch {
        format!(
            "admin_patch {}",
            serde_json::to_string(rows).unwrap_or_default()
        )
    } else if let Some(e) = &st.catalog {
        let mut parts = Vec::new();
        parts.extend(e.upsert.iter().map(|r| format!("upsert {}", r.id)));
        parts.extend(e.remove.iter().map(|r| format!("remove {r}")));
        parts.extend(
            e.external_upsert
                .iter()
                .map(|r| format!("external+ {}@{}", r.model, r.host.get_ref())),
        );
        parts.extend(e.external_remove.iter().map(|r| format!("external- {r}")));
        format!("catalog {}", parts.join(", "))
    } else if let Some(f) = &st.fault {
        format!("fault {}", f.get_ref())
    } else if let Some(h) = &st.clear_faults {
        format!("clear_faults {}", h.get_ref())
    } else if let Some(p) = &st.partition {
        format!("partition {} | {}", p.get_ref()[0], p.get_ref()[1])
    } else if let Some(p) = &st.repair {
        format!("repair {} | {}", p.get_ref()[0], p.get_ref()[1])
    } else if let Some(h) = &st.crash {
        format!("crash {}", h.get_ref())
    } else if let Some(h) = &st.restart {
        format!("restart {}", h.get_ref())
    } else if let Some(r) = &st.request {
        let mut s = format!(
            "request {}{}",
            r.model,
            if r.stream { " (stream)" } else { "" }
        );
        if let Some(h) = &r.pub_key_of {
            s += &format!(" x-model-pub-key=<{}>", h.get_ref());
        }
        if let Some(k) = &r.model_pub_key {
            s += &format!(" x-model-pub-key={k}");
        }
        if let Some(k) = &r.client_pub_key {
            s += &format!(" x-client-pub-key={k}");
        }
        s
    } else if let Some(m) = &st.unregister {
        format!("unregister {m}")
    } else if let Some(d) = st.advance {
        format!("advance {}", humantime::format_duration(d.0))
    } else {
        "check".into()
    }
}

/// Loads and runs a scenario file.
pub fn run_file(path: &Path, opts: &RunOptions) -> Result<Report, crate::scenario::ScenarioError> {
    let s = crate::scenario::load(path)?;
    Ok(run(&s, path, opts))
}

//! `tiersim serve`: a scenario's world on real loopback sockets.
//!
//! The same hosts as the simulation ([`crate::world::services`]) and the same
//! engine (`App`, `api::router`, providers over a tokio connector), each host
//! on its own TCP port (`port-base + i`, in [`world::host_names`] order), so
//! any real client can talk to the router, the NEAR backends or the
//! simulated Chutes gateway. The scenario's script is played on the real
//! clock: faults, catalog edits, refreshes, admin batches, unregisters,
//! crashes and restarts, partitions, `at` and `advance` timing. Scripted
//! requests and expectations are *not* played: the clients are yours (and a
//! scripted request would spend faults meant for them).
//!
//! Wall clock and OS randomness are fine here (this is the real world): the
//! router's Chutes provider draws from the OS RNG. None of this module is
//! reachable from the simulation paths.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::{Method, Request};
use tiersim_engine::api::{self, RouteObserver};
use tiersim_engine::app::{App, AppSettings};
use tiersim_engine::chutes::e2ee::os_rng;
use tiersim_engine::chutes::shared_rng;
use tiersim_engine::config::{AdminKey, EngineConfig};
use tiersim_engine::echo::{echo, escape};
use tiersim_engine::http::HttpClient;
use tiersim_engine::net::{Connector, Io, TokioConnector, TokioListener};
use tiersim_engine::retry::{Attempt, Outcome};
use tiersim_engine::{Attribution, RouteError};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::fault::FaultInjection;
use crate::hosts::Service;
use crate::scenario::format::{CatalogEdit, PatchRow, RequestSpec};
use crate::scenario::format::{Scenario, Step};
use crate::scenario::Dispatcher;
use crate::world::{self, RouterSlot, Services, CATALOG, CHUTES, ROUTER};

/// `tiersim serve` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// The scenario whose world to serve.
    pub scenario: PathBuf,
    /// Address every host binds (loopback unless --allow-non-loopback).
    #[arg(long, default_value = "127.0.0.1")]
    pub bind: String,
    /// First port: the router gets it, each other host the next one
    /// (router, catalog, NEAR backends, external providers, chutes).
    /// 0 lets the OS pick every port.
    #[arg(long, default_value_t = DEFAULT_PORT_BASE)]
    pub port_base: u16,
    /// Allow a --bind address that is not loopback. The simulated hosts
    /// have no authentication worth the name: expose them knowingly.
    #[arg(long)]
    pub allow_non_loopback: bool,
    /// The router's admin key (R13: `Authorization: Bearer <key>` on
    /// `PATCH /v1/admin/models`). Default: `ADMIN_API_KEY` from the
    /// environment, else a random key generated and printed at start.
    #[arg(long, value_name = "KEY")]
    pub admin_key: Option<String>,
}

pub const DEFAULT_PORT_BASE: u16 = 18080;

/// Why `tiersim serve` could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("--bind {0:?} is not an IP address (e.g. 127.0.0.1 or ::1)")]
    BadBind(String),
    #[error(
        "refusing to bind {0}: it is not a loopback address, and the simulated hosts \
         (router admin API, catalog, fault-injected backends) would be reachable from \
         other machines; pass --allow-non-loopback to do it anyway"
    )]
    NonLoopback(IpAddr),
    #[error("--port-base {base} leaves no room for {hosts} hosts (ports above 65535)")]
    PortRange { base: u16, hosts: usize },
    #[error("cannot bind {host} on {addr}: {error}")]
    Bind {
        host: String,
        addr: SocketAddr,
        error: io::Error,
    },
    #[error("{0}")]
    Scenario(String),
    #[error("the engine refused to start: {0}")]
    Config(String),
}

/// Checks `--bind`: an IP address, loopback unless explicitly allowed.
pub fn check_bind(bind: &str, allow_non_loopback: bool) -> Result<IpAddr, ServeError> {
    let ip: IpAddr = match bind {
        "localhost" => IpAddr::from([127, 0, 0, 1]),
        other => other
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .map_err(|_| ServeError::BadBind(bind.to_string()))?,
    };
    if !ip.is_loopback() && !allow_non_loopback {
        return Err(ServeError::NonLoopback(ip));
    }
    Ok(ip)
}

/// The port of the `i`-th host (`0`: the OS picks).
fn port(base: u16, i: usize, hosts: usize) -> Result<u16, ServeError> {
    if base == 0 {
        return Ok(0);
    }
    u16::try_from(usize::from(base) + i).map_err(|_| ServeError::PortRange { base, hosts })
}

/// The CLI entry point: a multi-thread runtime until Ctrl-C.
pub fn run_cli(args: ServeArgs) -> ExitCode {
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_writer(io::stderr)
        .with_target(false)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let mut world = start(&args).await?;
        world.play_until(shutdown_signal()).await;
        world.stop().await;
        Ok::<(), ServeError>(())
    });
    match result {
        Ok(()) => {
            println!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Ctrl-C (SIGINT), or SIGTERM on Unix.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                biased;
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

// ----------------------------------------------------------------- network

/// Which pairs of hosts are partitioned (by name, unordered).
#[derive(Debug, Clone, Default)]
struct Partitions(Arc<Mutex<BTreeSet<(String, String)>>>);

impl Partitions {
    fn key(a: &str, b: &str) -> (String, String) {
        if a <= b {
            (a.to_string(), b.to_string())
        } else {
            (b.to_string(), a.to_string())
        }
    }
    fn set(&self, a: &str, b: &str, cut: bool) {
        let mut set = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if cut {
            set.insert(Self::key(a, b));
        } else {
            set.remove(&Self::key(a, b));
        }
    }
    fn cut(&self, a: &str, b: &str) -> bool {
        let set = self.0.lock().unwrap_or_else(|p| p.into_inner());
        set.contains(&Self::key(a, b))
    }
}

/// The router's connector: real tokio TCP, except that a connection to a
/// host partitioned from the router never completes (like a black-holed
/// SYN: the client's connect deadline fires), as on turmoil.
struct ServeConnector {
    from: String,
    /// `ip:port` → host name.
    hosts: BTreeMap<String, String>,
    partitions: Partitions,
}

#[async_trait]
impl Connector for ServeConnector {
    async fn connect(&self, authority: &str) -> io::Result<Box<dyn Io>> {
        if let Some(host) = self.hosts.get(authority) {
            if self.partitions.cut(&self.from, host) {
                std::future::pending::<()>().await;
            }
        }
        TokioConnector.connect(authority).await
    }
}

// ------------------------------------------------------------------- world

/// Prints one line per routed request.
struct Printer;

impl RouteObserver for Printer {
    fn routed(
        &self,
        model: &str,
        attempts: &[Attempt],
        outcome: Result<&Attribution, &RouteError>,
    ) {
        let tried: Vec<String> = attempts
            .iter()
            .map(|a| match &a.outcome {
                Outcome::Ok => format!("{} ok", a.provider),
                Outcome::Error { status, .. } => format!("{} {status}", a.provider),
            })
            .collect();
        let result = match outcome {
            Ok(by) => format!(
                "served by {} ({:?}{})",
                by.provider,
                by.tier,
                if by.via_fallback {
                    ", via fallback"
                } else {
                    ""
                }
            ),
            Err(e) => format!("failed: {}", e.echoed()),
        };
        // The model id is the client's: bounded and escaped, so no request
        // can forge or hide a log line.
        println!("{}", log_line(model, &result, &tried));
    }
}

/// The per-request log line: the client's model id echoed bounded and
/// with control characters escaped.
pub fn log_line(model: &str, result: &str, tried: &[String]) -> String {
    format!(
        "[router] {}: {}; attempts: [{}]",
        echo(model),
        escape(result),
        tried.join(", ")
    )
}

/// One simulated host on its socket.
struct Host {
    service: Service,
    addr: SocketAddr,
    task: Option<JoinHandle<()>>,
}

impl Host {
    fn spawn(&mut self, listener: TokioListener) {
        let service = self.service.clone();
        self.task = Some(tokio::spawn(async move {
            if let Err(e) = service.serve(listener).await {
                eprintln!("[{}] stopped accepting: {e}", service.host());
            }
        }));
    }

    fn crash(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A scenario's world on real sockets.
pub struct ServeWorld {
    scenario: Scenario,
    config: EngineConfig,
    urls: BTreeMap<String, String>,
    addrs: BTreeMap<String, SocketAddr>,
    services: Services,
    hosts: BTreeMap<String, Host>,
    router_addr: SocketAddr,
    router: Arc<Mutex<RouterSlot>>,
    router_task: Option<JoinHandle<()>>,
    partitions: Partitions,
    client: HttpClient,
    /// When the router was first ready: the script's time zero.
    started: tokio::time::Instant,
}

/// Binds every host, prints the endpoints and boots the router.
pub async fn start(args: &ServeArgs) -> Result<ServeWorld, ServeError> {
    let ip = check_bind(&args.bind, args.allow_non_loopback)?;
    let scenario =
        crate::scenario::load(&args.scenario).map_err(|e| ServeError::Scenario(e.to_string()))?;
    let mut config =
        world::engine_config(&scenario).map_err(|e| ServeError::Config(e.to_string()))?;
    let given = args
        .admin_key
        .clone()
        .or_else(|| std::env::var("ADMIN_API_KEY").ok())
        .filter(|k| !k.trim().is_empty());
    config.admin_api_key = Some(match given {
        Some(key) => AdminKey::new(key).map_err(|e| ServeError::Config(e.to_string()))?,
        None => {
            let key = random_admin_key();
            println!(
                "admin key (generated; --admin-key or ADMIN_API_KEY sets one): {}",
                key.as_str()
            );
            key
        }
    });
    start_world(scenario, config, ip, args.port_base, &args.scenario).await
}

/// 32 bytes from the OS RNG, in hex: the admin key when none is given.
fn random_admin_key() -> AdminKey {
    use rand_core::Rng;
    let mut raw = [0u8; 32];
    os_rng().fill_bytes(&mut raw);
    let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    AdminKey::new(hex).expect("hex is a valid admin key")
}

async fn start_world(
    scenario: Scenario,
    config: EngineConfig,
    ip: IpAddr,
    port_base: u16,
    file: &Path,
) -> Result<ServeWorld, ServeError> {
    let names = world::host_names(&scenario);
    // Bind everything first: a port in use fails before anything starts,
    // and every URL is known before the catalog rows are written.
    let mut listeners = BTreeMap::new();
    let mut addrs = BTreeMap::new();
    for (i, host) in names.iter().enumerate() {
        let addr = SocketAddr::new(ip, port(port_base, i, names.len())?);
        let listener = TokioListener::bind(&addr.to_string())
            .await
            .map_err(|error| ServeError::Bind {
                host: host.clone(),
                addr,
                error,
            })?;
        let addr = listener.local_addr().map_err(|error| ServeError::Bind {
            host: host.clone(),
            addr,
            error,
        })?;
        addrs.insert(host.clone(), addr);
        listeners.insert(host.clone(), listener);
    }
    let urls: BTreeMap<String, String> = addrs
        .iter()
        .map(|(h, a)| (h.clone(), format!("http://{a}")))
        .collect();
    let services = world::services(&scenario, &|h: &str| urls[h].clone());
    // Nothing here reads the hosts' records, and they would grow with
    // every request: a served world keeps none.
    services.board.stop_recording();
    if let Some(chutes) = &services.chutes.handle {
        chutes.stop_recording();
    }

    let mut hosts = BTreeMap::new();
    for service in &services.hosts {
        let name = service.host().to_string();
        let mut host = Host {
            service: service.clone(),
            addr: addrs[&name],
            task: None,
        };
        host.spawn(listeners.remove(&name).expect("every host was bound"));
        hosts.insert(name, host);
    }
    let router_listener = listeners.remove(ROUTER).expect("the router was bound");

    let mut world = ServeWorld {
        router_addr: addrs[ROUTER],
        scenario,
        config,
        urls,
        addrs,
        services,
        hosts,
        router: Arc::default(),
        router_task: None,
        partitions: Partitions::default(),
        client: HttpClient::new(Arc::new(TokioConnector)),
        started: tokio::time::Instant::now(),
    };
    world.print_endpoints(file);
    world.boot_router(router_listener);
    world.wait_for_router().await;
    world.started = tokio::time::Instant::now();
    println!("ready");
    Ok(world)
}

impl ServeWorld {
    /// Host name → base URL.
    pub fn urls(&self) -> &BTreeMap<String, String> {
        &self.urls
    }

    fn print_endpoints(&self, file: &Path) {
        let s = &self.scenario;
        println!("tiersim serve {} — {}", file.display(), s.name);
        println!("endpoints:");
        for host in world::host_names(s) {
            let url = &self.urls[&host];
            let what = match host.as_str() {
                ROUTER => "router: POST /v1/chat/completions, GET /v1/models, PATCH /v1/admin/models".to_string(),
                CATALOG => "catalog: GET|PATCH /v1/catalog, GET /v1/external".to_string(),
                CHUTES => "chutes gateway: GET /v1/models (also /llm/v1/models, the router's model-listing URL), GET /e2e/instances/{chute_id}, GET /chutes/{chute_id}/evidence?nonce=, POST /e2e/invoke".to_string(),
                h if s.near.iter().any(|n| n.host == h) => {
                    // NEAR providers are named by their URL's authority.
                    let authority = url.trim_start_matches("http://");
                    format!("NEAR backend (provider id {authority}): POST /v1/chat/completions, GET /v1/attestation/report")
                }
                h => format!("external provider (provider id external:{h}): POST /v1/chat/completions"),
            };
            println!("  {host:<12} {url:<24} {what}");
        }
        for (slug, id) in &self.services.chutes.chute_ids {
            println!("  chute {slug}: chute_id {id}");
        }
        let entries: Vec<String> = self
            .config
            .chutes_models
            .iter()
            .map(|e| format!("{}={}", e.canonical_id, e.chute_slug))
            .collect();
        if !entries.is_empty() {
            println!(
                "  CHUTES_MODELS={} (streaming {})",
                entries.join(","),
                if self.config.chutes_streaming {
                    "on"
                } else {
                    "off"
                }
            );
        }
    }

    fn router_http(&self) -> HttpClient {
        let hosts = self
            .addrs
            .iter()
            .map(|(h, a)| (a.to_string(), h.clone()))
            .collect();
        HttpClient::new(Arc::new(ServeConnector {
            from: ROUTER.to_string(),
            hosts,
            partitions: self.partitions.clone(),
        }))
    }

    /// Boots the router on `listener`: the real `App` (bootstrap and first
    /// refresh), its refresh loop and its HTTP API, all owned by one task
    /// so a crash stops them together.
    fn boot_router(&mut self, listener: TokioListener) {
        let http = self.router_http();
        let chutes_url = self
            .urls
            .get(CHUTES)
            .cloned()
            .unwrap_or_else(|| "http://127.0.0.1:9".to_string());
        let factory = world::chutes_factory(
            &self.services.chutes,
            chutes_url,
            http.clone(),
            Box::new(|_| shared_rng(os_rng())),
        );
        let settings = AppSettings {
            config: self.config.clone(),
            catalog_url: self.urls[CATALOG].clone(),
            timeouts: world::TIMEOUTS,
        };
        let slot = self.router.clone();
        self.router_task = Some(tokio::spawn(async move {
            let app = App::start(settings, http, factory).await;
            let (tx, rx) = mpsc::channel(4);
            let api = api::router(app.clone(), Arc::new(Printer));
            let (stop, stopped) = oneshot::channel();
            {
                let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
                slot.app = Some(app.clone());
                slot.trigger = Some(tx);
                slot.shutdown = Some(stop);
            }
            let asked = async {
                // A dropped sender (a crash clearing the slot) is no stop.
                if stopped.await.is_err() {
                    std::future::pending::<()>().await;
                }
            };
            // The refresh loop ends when a shutdown drops its trigger; the
            // server still finishes the requests in flight.
            let refresh = app.run_refresh_loop(rx);
            let serving = tiersim_engine::http::serve_until(listener, api, asked);
            tokio::pin!(refresh, serving);
            let mut refreshing = true;
            loop {
                tokio::select! {
                    biased;
                    _ = &mut refresh, if refreshing => refreshing = false,
                    r = &mut serving => {
                        if let Err(e) = r {
                            eprintln!("[router] stopped accepting: {e}");
                        }
                        return;
                    }
                }
            }
        }));
    }

    async fn wait_for_router(&self) {
        while self
            .router
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .app
            .is_none()
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn crash_router(&mut self) {
        if let Some(task) = self.router_task.take() {
            task.abort();
        }
        *self.router.lock().unwrap_or_else(|p| p.into_inner()) = RouterSlot::default();
    }

    /// Plays the script, then serves until `shutdown` resolves.
    pub async fn play_until(&mut self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        tokio::select! {
            biased;
            _ = &mut shutdown => return,
            _ = self.play() => {}
        }
        println!("script done; serving until Ctrl-C");
        shutdown.await;
    }

    /// Plays the scenario's steps on the real clock (`at` counts from the
    /// moment the router was ready).
    pub async fn play(&mut self) {
        self.play_steps(0..self.scenario.steps.len()).await;
    }

    /// Plays the steps in `range` (0-based), e.g. one at a time between
    /// requests of a test.
    pub async fn play_steps(&mut self, range: std::ops::Range<usize>) {
        let steps: Vec<Step> = self.scenario.steps[range.clone()]
            .iter()
            .map(|s| s.get_ref().clone())
            .collect();
        for (i, st) in range.zip(&steps) {
            if let Some(at) = &st.at {
                tokio::time::sleep_until(self.started + at.get_ref().0).await;
            }
            let mut player = StepPlayer {
                world: self,
                note: None,
            };
            player.dispatch(st.action()).await;
            let note = player.note;
            println!(
                "[{:>8.3}s] step {}: {}{}",
                self.started.elapsed().as_secs_f64(),
                i + 1,
                st.action(),
                note.map(|n| format!(" — {n}")).unwrap_or_default()
            );
        }
    }

    fn url(&self, host: &str) -> String {
        self.urls
            .get(host)
            .cloned()
            .unwrap_or_else(|| format!("http://{host}"))
    }

    /// Stops every host and the router.
    pub async fn stop(mut self) {
        self.crash_router();
        for host in self.hosts.values_mut() {
            host.crash();
        }
        // Let the aborted tasks unwind (their sockets close) before exit.
        tokio::task::yield_now().await;
    }
}

/// A step played on real sockets; `note` says what happened when there is
/// something to tell.
struct StepPlayer<'a> {
    world: &'a mut ServeWorld,
    note: Option<String>,
}

#[async_trait(?Send)]
impl Dispatcher for StepPlayer<'_> {
    async fn refresh(&mut self) {
        self.note = match crate::script::refresh(&self.world.router).await {
            None => Some("router is down".into()),
            Some(r) if r == Default::default() => None,
            Some(r) => Some(format!("{r:?}")),
        };
    }

    async fn admin_patch(&mut self, rows: &[PatchRow]) {
        let w = &*self.world;
        let body = crate::script::admin_patch_body(rows, &|h| w.url(h));
        let key = w.config.admin_api_key.as_ref().map_or("", AdminKey::as_str);
        let req = Request::builder()
            .method(Method::PATCH)
            .uri(format!("{}/v1/admin/models", w.urls[ROUTER]))
            .header("content-type", "application/json")
            .header("authorization", crate::script::admin_authorization(key))
            .body(Bytes::from(body))
            .expect("valid request");
        self.note = Some(
            match w
                .client
                .fetch(req, Duration::from_secs(120), 16 << 20)
                .await
            {
                Ok((status, _, _)) => format!("router answered {status}"),
                Err(e) => format!("router unreachable: {e}"),
            },
        );
    }

    async fn catalog(&mut self, edit: &CatalogEdit) {
        let w = &*self.world;
        crate::script::edit_catalog(edit, &w.services.catalog, &w.scenario.external, &|h| {
            w.url(h)
        });
    }

    async fn fault(&mut self, fault: &FaultInjection) {
        self.world.services.board.apply(fault.clone());
    }

    async fn clear_faults(&mut self, host: &str) {
        self.world.services.board.clear(host);
    }

    async fn partition(&mut self, a: &str, b: &str) {
        self.world.partitions.set(a, b, true);
        if a != ROUTER && b != ROUTER {
            self.note = Some("only the router dials out here: no effect".into());
        }
    }

    async fn repair(&mut self, a: &str, b: &str) {
        self.world.partitions.set(a, b, false);
    }

    /// On real sockets a partition already never completes a connection,
    /// which is what a held link does.
    async fn hold(&mut self, a: &str, b: &str) {
        self.partition(a, b).await;
    }

    async fn release(&mut self, a: &str, b: &str) {
        self.repair(a, b).await;
    }

    async fn crash(&mut self, host: &str) {
        if host == ROUTER {
            self.world.crash_router();
        } else if let Some(h) = self.world.hosts.get_mut(host) {
            h.crash();
        }
        self.note = Some("port closed".into());
    }

    async fn restart(&mut self, host: &str) {
        let w = &mut *self.world;
        let addr = if host == ROUTER {
            w.router_addr
        } else {
            match w.hosts.get(host) {
                Some(h) => h.addr,
                None => {
                    self.note = Some("no such host".into());
                    return;
                }
            }
        };
        let listener = match TokioListener::bind(&addr.to_string()).await {
            Ok(l) => l,
            Err(e) => {
                self.note = Some(format!("cannot rebind {addr}: {e}"));
                return;
            }
        };
        if host == ROUTER {
            w.crash_router();
            w.boot_router(listener);
            w.wait_for_router().await;
        } else if let Some(h) = w.hosts.get_mut(host) {
            h.crash();
            h.spawn(listener);
        }
    }

    /// The router stops accepting (its port closes), finishes the requests
    /// in flight, and its task ends; `restart` rebinds the port. The other
    /// hosts keep serving.
    async fn shutdown(&mut self, host: &str) {
        if host != ROUTER {
            self.note = Some("only the router shuts down gracefully: no effect".into());
            return;
        }
        let slot =
            std::mem::take(&mut *self.world.router.lock().unwrap_or_else(|p| p.into_inner()));
        if let Some(stop) = slot.shutdown {
            let _ = stop.send(());
        }
        if let Some(task) = self.world.router_task.take() {
            let _ = task.await;
        }
        self.note = Some("port closed; requests in flight finished".into());
    }

    async fn request(&mut self, _spec: &RequestSpec) {
        self.note = Some("skipped: serve sends no scripted requests (send your own)".into());
    }

    async fn concurrent(&mut self, _specs: &[RequestSpec]) {
        self.note = Some("skipped: serve sends no scripted requests (send your own)".into());
    }

    async fn unregister(&mut self, model: &str) {
        let app = self
            .world
            .router
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .app
            .clone();
        match app {
            Some(app) => app.registry().unregister(model),
            None => self.note = Some("router is down".into()),
        }
    }

    async fn advance(&mut self, by: Duration) {
        tokio::time::sleep(by).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 9: the client's model id cannot forge or hide a log line.
    #[test]
    fn log_line_escapes_and_bounds_the_client_model() {
        let model = format!(
            "m\n[router] forged: served by near-1\x1b[2K\r{}",
            "x".repeat(100_000)
        );
        let line = log_line(&model, "failed: x", &["near-1 503".into()]);
        assert!(!line.chars().any(char::is_control), "{line:?}");
        assert!(line.len() < 2048, "bounded: {} bytes", line.len());
        assert!(
            line.starts_with("[router] m\\u{a}[router] forged"),
            "{line:?}"
        );
        assert!(
            line.ends_with("…: failed: x; attempts: [near-1 503]"),
            "{line:?}"
        );
    }

    #[test]
    fn r13_random_admin_keys_are_fresh_hex() {
        let (a, b) = (random_admin_key(), random_admin_key());
        assert_eq!(a.as_str().len(), 64);
        assert!(a.as_str().bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn bind_is_loopback_unless_allowed() {
        assert_eq!(
            check_bind("127.0.0.1", false).unwrap(),
            IpAddr::from([127, 0, 0, 1])
        );
        assert!(check_bind("::1", false).unwrap().is_loopback());
        assert!(check_bind("[::1]", false).unwrap().is_loopback());
        assert!(check_bind("localhost", false).unwrap().is_loopback());
        let err = check_bind("0.0.0.0", false).unwrap_err();
        assert!(matches!(err, ServeError::NonLoopback(_)));
        assert!(err.to_string().contains("--allow-non-loopback"), "{err}");
        assert!(check_bind("0.0.0.0", true).is_ok());
        assert!(matches!(
            check_bind("example.com", true),
            Err(ServeError::BadBind(_))
        ));
    }

    #[test]
    fn ports_count_up_from_the_base() {
        assert_eq!(port(18080, 3, 5).unwrap(), 18083);
        assert_eq!(port(0, 3, 5).unwrap(), 0);
        assert!(matches!(
            port(65534, 2, 5),
            Err(ServeError::PortRange { .. })
        ));
    }
}

//! The `tiersim` command line: a thin layer over the `tiersim` library.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use tiersim::hosts::Chunking;
use tiersim::runner::{self, RunOptions};
use tiersim::scenario::format::{FaultKind, MAX_SIM_TIME};
use tiersim::sweep::{self, plant_flag, MenuFlags, Outputs, Shard, Sweep};
use tiersim::{junit, mermaid, record, render, rules, scenario};

/// The binary's allocator (issue 14): a simulated run allocates and frees
/// small buffers at a high rate (tasks, HTTP frames, TCP segments), where
/// mimalloc costs less than the system allocator. Nothing observable
/// depends on addresses, so the output bytes are the same with either.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use tiersim_engine::registry::PlantedBug;

#[derive(Parser)]
#[command(
    name = "tiersim",
    version,
    about = "Deterministic simulation testbed for a tiered LLM-provider router"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Overrides of the scenario's `[sweep]` fault menu.
#[derive(Args, Clone, Default)]
struct MenuArgs {
    /// Hosts the faults may hit (comma-separated).
    #[arg(long, value_delimiter = ',')]
    hosts: Option<Vec<String>>,
    /// Fault kinds to draw (comma-separated, e.g. `http_status,crash`).
    #[arg(long, value_delimiter = ',', value_parser = parse_kind)]
    kinds: Option<Vec<FaultKind>>,
    #[arg(long)]
    min_faults: Option<u32>,
    #[arg(long)]
    max_faults: Option<u32>,
    /// Latest simulated time a fault starts (e.g. `20s`).
    #[arg(long, value_parser = parse_sim_duration)]
    until: Option<Duration>,
    /// turmoil's time step for this sweep (e.g. `10ms`: faster, times rounded).
    #[arg(long, value_parser = parse_sim_duration)]
    tick: Option<Duration>,
    /// Chunkings each seed draws from (comma-separated: writes, whole, random).
    #[arg(long, value_delimiter = ',', value_parser = parse_chunking)]
    chunking: Option<Vec<Chunking>>,
    /// Semantics profile: `tiersim` (default) or `upstream` (production's
    /// behaviour; violations are then findings about production).
    #[arg(long, value_parser = parse_profile)]
    profile: Option<tiersim_engine::config::Profile>,
    /// Send a seed-drawn half of the script's unstreamed requests as N
    /// requests at once (a `concurrent` step; 2 to 64).
    #[arg(long, value_name = "N")]
    concurrent: Option<usize>,
    /// Plant a review bug of the seed PR (testing the testbed only).
    #[arg(long, hide = true, value_parser = parse_plant)]
    plant: Option<PlantedBug>,
    /// Step every tick, idle or not (measuring the idle skip only; the
    /// outcomes are the same).
    #[arg(long, hide = true)]
    step_every_tick: bool,
}

impl MenuArgs {
    fn flags(&self) -> MenuFlags {
        MenuFlags {
            hosts: self.hosts.clone(),
            kinds: self.kinds.clone(),
            min_faults: self.min_faults,
            max_faults: self.max_faults,
            until: self.until,
            tick: self.tick,
            chunking: self.chunking.clone(),
            profile: self.profile,
            concurrent: self.concurrent,
            step_every_tick: self.step_every_tick,
        }
    }

    /// The sweep of `file` over `seeds` with these overrides (every shard).
    fn sweep(&self, file: PathBuf, seeds: std::ops::RangeInclusive<u64>) -> Sweep {
        Sweep {
            file,
            seeds,
            shard: Shard::WHOLE,
            check_determinism: false,
            flags: self.flags(),
            plant: self.plant,
        }
    }
}

fn parse_chunking(s: &str) -> Result<Chunking, String> {
    Chunking::from_name(s).ok_or_else(|| format!("{s:?}: chunking is writes, whole or random"))
}

fn parse_profile(s: &str) -> Result<tiersim_engine::config::Profile, String> {
    tiersim_engine::config::Profile::parse(s)
        .ok_or_else(|| format!("{s:?}: the profile is `tiersim` or `upstream`"))
}

/// `--jobs`: at least one thread (0 is a mistake, not "auto": leave the
/// flag out for every core).
fn parse_jobs(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("--jobs must be at least 1 (leave it out for the default)".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("{s:?} is not a number of threads")),
    }
}

/// A duration flag, within the simulated-time bound scenario files have.
fn parse_sim_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e}"))?;
    if d > MAX_SIM_TIME {
        return Err(format!("{s:?} is beyond the simulated-time bound of 24h"));
    }
    Ok(d)
}

fn parse_kind(s: &str) -> Result<FaultKind, String> {
    FaultKind::from_name(s).ok_or_else(|| {
        let names: Vec<&str> = FaultKind::ALL.iter().map(|k| k.name()).collect();
        format!("unknown fault kind {s:?}; kinds: {}", names.join(", "))
    })
}

fn parse_plant(s: &str) -> Result<PlantedBug, String> {
    PlantedBug::from_name(s).ok_or_else(|| {
        let names: Vec<&str> = PlantedBug::ALL.iter().map(|b| b.name()).collect();
        format!("unknown planted bug {s:?}; bugs: {}", names.join(", "))
    })
}

#[derive(Subcommand)]
enum Command {
    /// Run scenarios (files, or folders of *.toml files).
    Run {
        #[arg(default_value = "scenarios")]
        paths: Vec<PathBuf>,
        /// Run with this seed instead of each scenario's own.
        #[arg(long)]
        seed: Option<u64>,
        /// Print the routing trace (tracing) and each run's snapshot.
        #[arg(long)]
        trace: bool,
        /// Write a Mermaid sequence diagram of the (single) scenario to FILE.
        #[arg(long, value_name = "FILE")]
        mermaid: Option<PathBuf>,
        /// Write a JUnit XML report to FILE.
        #[arg(long, value_name = "FILE")]
        junit: Option<PathBuf>,
        /// Run scenarios on N OS threads (N >= 1; default: every core; 1
        /// with --trace). Each world is independent; the output is in file
        /// order.
        #[arg(long, value_parser = parse_jobs)]
        jobs: Option<usize>,
        /// Plant a review bug of the seed PR (testing the testbed only).
        #[arg(long, hide = true, value_parser = parse_plant)]
        plant: Option<PlantedBug>,
        /// Make the world of the scenario with this file name panic
        /// (testing the runner's isolation only).
        #[arg(long, hide = true, value_name = "STEM")]
        panic_in: Option<String>,
        /// Drive every host through every tick, even one in which it can do
        /// nothing (by default those are elided; the results are the same
        /// bytes).
        #[arg(long)]
        step_every_tick: bool,
    },
    /// Run each scenario under several chunkings of its hosts' bytes (whole,
    /// as written, seeded random cuts) and require the same client outcome
    /// for every request: status, bytes and attempts (issue 15).
    CheckChunking {
        #[arg(default_value = "scenarios")]
        paths: Vec<PathBuf>,
        /// Random cuts per scenario (each with its own chunk seed), at most
        /// 256.
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(0..=256))]
        cuts: u64,
        /// Plant a bug (testing the testbed only).
        #[arg(long, hide = true, value_parser = parse_plant)]
        plant: Option<PlantedBug>,
    },
    /// Run a scenario under random fault schedules, one per seed, checking
    /// every oracle after every step; shrink each failure to a reproducer
    /// file. `tiersim sweep merge FILES…` joins shards' outcome files.
    Sweep(Box<SweepCmd>),
    /// Re-run one seed of a sweep (the same random fault schedule) with the
    /// trace and the snapshot printed.
    Replay {
        scenario: PathBuf,
        #[arg(long)]
        seed: u64,
        /// Also write the seed's composed scenario (unshrunk) to FILE.
        #[arg(long, value_name = "FILE")]
        write: Option<PathBuf>,
        #[command(flatten)]
        menu: MenuArgs,
    },
    /// Print the rule → scenarios matrix.
    Rules {
        #[arg(default_value = "scenarios")]
        path: PathBuf,
    },
    /// Print the JSON Schema of the scenario format.
    Schema,
    /// Serve a scenario's world on real loopback sockets until Ctrl-C.
    Serve(tiersim::serve::ServeArgs),
}

/// Exit status: 0 success, 1 a failure, a violation or bad input, 2 a usage
/// error (clap). A panic anywhere is caught here and is a 1 too, so no other
/// status is reachable.
fn main() -> ExitCode {
    let cli = Cli::parse();
    // A closed stdout (`tiersim run | head`) ends the output, quietly: not
    // a bug to report.
    let report_panic = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !is_broken_pipe(info.payload()) {
            report_panic(info);
        }
    }));
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| dispatch(cli))) {
        Ok(code) => code,
        Err(panic) if is_broken_pipe(&*panic) => ExitCode::FAILURE,
        Err(panic) => {
            eprintln!(
                "error: tiersim panicked: {} (a bug in tiersim)",
                runner::panic_message(&*panic)
            );
            ExitCode::FAILURE
        }
    }
}

fn is_broken_pipe(payload: &(dyn std::any::Any + Send)) -> bool {
    runner::panic_message(payload).contains("Broken pipe")
}

fn dispatch(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Run {
            paths,
            seed,
            trace,
            mermaid,
            junit,
            jobs,
            plant,
            panic_in,
            step_every_tick,
        } => {
            let jobs = if trace {
                1
            } else {
                jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            };
            run(
                paths,
                RunOptions {
                    seed,
                    plant,
                    step_every_tick,
                    ..RunOptions::default()
                },
                panic_in,
                trace,
                mermaid,
                junit,
                jobs,
            )
        }
        Command::Sweep(cmd) => sweep_cmd(*cmd),
        Command::Replay {
            scenario,
            seed,
            write,
            menu,
        } => replay(scenario, seed, write, menu),
        Command::CheckChunking { paths, cuts, plant } => check_chunking(paths, cuts, plant),
        Command::Rules { path } => rules_matrix(path),
        Command::Schema => {
            print!("{}", scenario::json_schema());
            ExitCode::SUCCESS
        }
        Command::Serve(args) => tiersim::serve::run_cli(args),
    }
}

/// Every scenario file under `paths`, loaded. Every malformed file is
/// reported before anything runs; any error is exit 1.
fn load_all(paths: &[PathBuf]) -> Result<Vec<(PathBuf, scenario::Scenario)>, ExitCode> {
    let mut files = Vec::new();
    for p in paths {
        match scenario::files(p) {
            Ok(f) => files.extend(f),
            Err(e) => {
                eprintln!("error: {}: {e}", p.display());
                return Err(ExitCode::FAILURE);
            }
        }
    }
    if files.is_empty() {
        eprintln!("error: no scenario files in {paths:?}");
        return Err(ExitCode::FAILURE);
    }
    let mut loaded = Vec::new();
    let mut bad = false;
    for f in &files {
        match scenario::load(f) {
            Ok(s) => loaded.push((f.clone(), s)),
            Err(e) => {
                eprintln!("error: {e}");
                bad = true;
            }
        }
    }
    if bad {
        Err(ExitCode::FAILURE)
    } else {
        Ok(loaded)
    }
}

/// `tiersim check-chunking`: the metamorphic chunking check per scenario.
/// Exits as `run` does: 1 on a divergence or bad input (every malformed
/// file is reported before anything runs).
fn check_chunking(paths: Vec<PathBuf>, cuts: u64, plant: Option<PlantedBug>) -> ExitCode {
    let loaded = match load_all(&paths) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    let opts = RunOptions {
        plant,
        ..RunOptions::default()
    };
    let worlds = tiersim::metamorphic::variants(cuts);
    let mut diverged = 0;
    for (file, s) in &loaded {
        match tiersim::metamorphic::check(s, file, &opts, &worlds) {
            Ok(n) => println!("same  {:<48} {n} chunkings", file.display()),
            Err(d) => {
                diverged += 1;
                println!("DIFF  {:<48} {d}", file.display());
            }
        }
    }
    println!(
        "\n{} scenarios, {diverged} whose client outcome depends on chunking",
        loaded.len()
    );
    if diverged == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn init_trace() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    // The engine's routing trace and the runner's steps; turmoil's own host
    // bookkeeping stays quiet.
    let filter = tracing_subscriber::filter::Targets::new()
        .with_target("tiersim_engine", tracing::Level::DEBUG)
        .with_target("tiersim", tracing::Level::DEBUG);
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .without_time()
                .with_target(false),
        )
        .with(filter)
        .init();
}

/// Runs every scenario on `jobs` threads (each turmoil world is
/// single-threaded and independent), each world isolated on its own thread
/// so a panic is that scenario's failure. `done` is called on this thread
/// with each result as soon as it and every result before it are in, so the
/// output streams in file order whatever finishes first.
fn run_all(
    loaded: &[(PathBuf, scenario::Scenario)],
    opts: &RunOptions,
    panic_in: Option<&str>,
    jobs: usize,
    mut done: impl FnMut(usize, record::Report, Duration),
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let next = &AtomicUsize::new(0);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::scope(|scope| {
        for _ in 0..jobs.clamp(1, loaded.len().max(1)) {
            let tx = tx.clone();
            scope.spawn(move || loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((file, s)) = loaded.get(i) else {
                    break;
                };
                let stem = file.file_stem().map(|n| n.to_string_lossy());
                let opts = RunOptions {
                    planted_panic: panic_in.is_some() && stem.as_deref() == panic_in,
                    ..opts.clone()
                };
                let wall = Instant::now();
                let report = runner::run_isolated(s, file, &opts);
                if tx.send((i, report, wall.elapsed())).is_err() {
                    break;
                }
            });
        }
        drop(tx);
        let mut pending = std::collections::BTreeMap::new();
        let mut next_out = 0;
        for (i, report, wall) in rx {
            pending.insert(i, (report, wall));
            while let Some((report, wall)) = pending.remove(&next_out) {
                done(next_out, report, wall);
                next_out += 1;
            }
        }
    });
}

fn run(
    paths: Vec<PathBuf>,
    opts: RunOptions,
    panic_in: Option<String>,
    trace: bool,
    mermaid_out: Option<PathBuf>,
    junit_out: Option<PathBuf>,
    jobs: usize,
) -> ExitCode {
    if trace {
        init_trace();
    }
    let loaded = match load_all(&paths) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    if mermaid_out.is_some() && loaded.len() != 1 {
        eprintln!("error: --mermaid draws one scenario; got {}", loaded.len());
        return ExitCode::FAILURE;
    }
    let (mut passed, mut failed, mut requests) = (0, 0, 0);
    let mut sim_total = Duration::ZERO;
    let mut write_errors = Vec::new();
    let wall_all = Instant::now();
    let mut reports = Vec::new();
    // The progress line goes to a terminal only; results go to stdout.
    let bar = if std::io::stderr().is_terminal() && !trace {
        indicatif::ProgressBar::new(loaded.len() as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} scenarios {msg}",
        )
        .expect("valid progress template"),
    );
    run_all(
        &loaded,
        &opts,
        panic_in.as_deref(),
        jobs,
        |i, report, wall| {
            let (file, s) = &loaded[i];
            requests += report.requests();
            sim_total += report.sim_time;
            let verdict = if report.passed() { "pass" } else { "FAIL" };
            let mut out = format!(
                "{verdict}  {:<48} requests {:>3}  sim {:>9.3}s  wall {:>7.3}s\n",
                file.display(),
                report.requests(),
                report.sim_time.as_secs_f64(),
                wall.as_secs_f64()
            );
            if let Some(a) = report.model_abstained {
                out += &format!(
                    "      reference model: stopped predicting at step {} ({}); \
                     the expectations and world-side oracles judged the rest\n",
                    a.step,
                    a.why.describe()
                );
            }
            if trace {
                out += &format!("{}\n", render::render(&report));
            }
            if report.passed() {
                passed += 1;
            } else {
                failed += 1;
                for v in &report.violations {
                    out += &format!("      {v}\n");
                }
                out += &format!(
                    "      replay: cargo run --release -p tiersim -- run {} --seed {} --trace{}\n",
                    file.display(),
                    report.seed,
                    plant_flag(opts.plant)
                );
                bar.set_message(format!("{failed} failing"));
            }
            bar.suspend(|| print!("{out}"));
            bar.inc(1);
            if let Some(path) = &mermaid_out {
                if let Err(e) = std::fs::write(path, mermaid::diagram(s, &report)) {
                    write_errors.push(format!("cannot write {}: {e}", path.display()));
                }
            }
            if junit_out.is_some() {
                reports.push((report, Some(wall)));
            }
        },
    );
    bar.finish_and_clear();
    let wall = wall_all.elapsed();
    if let Some(path) = &junit_out {
        if let Err(e) = junit::write(&junit::run_report(&reports), path) {
            write_errors.push(format!("cannot write {}: {e}", path.display()));
        }
    }
    println!(
        "\n{passed} passed, {failed} failed; {requests} requests; simulated {:.1}s in {:.2}s wall ({:.0}x)",
        sim_total.as_secs_f64(),
        wall.as_secs_f64(),
        sim_total.as_secs_f64() / wall.as_secs_f64().max(1e-9)
    );
    for e in &write_errors {
        eprintln!("error: {e}");
    }
    if failed == 0 && write_errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn rules_matrix(path: PathBuf) -> ExitCode {
    let files = match scenario::files(&path) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    };
    let mut matrix = std::collections::BTreeMap::<&str, Vec<String>>::new();
    for f in &files {
        match scenario::load(f) {
            Ok(s) => {
                for pin in &s.pins {
                    if let Some(r) = rules::RULES.iter().find(|r| r.id == pin.get_ref().as_str()) {
                        let name = f
                            .file_stem()
                            .map(|n| n.to_string_lossy().into_owned())
                            .unwrap_or_default();
                        matrix.entry(r.id).or_default().push(name);
                    }
                }
            }
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let mut uncovered = 0;
    for r in rules::RULES {
        let list = matrix.get(r.id).map(|v| v.join(", ")).unwrap_or_else(|| {
            uncovered += 1;
            "(no scenario)".into()
        });
        println!("{:<4} {:<48} {list}", r.id, r.title);
    }
    if uncovered == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `tiersim sweep FILE …` or `tiersim sweep merge FILES…`.
#[derive(Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
struct SweepCmd {
    #[command(subcommand)]
    merge: Option<SweepSub>,
    #[command(flatten)]
    run: SweepArgs,
}

#[derive(Subcommand)]
enum SweepSub {
    /// Join shards' outcome files (`--outcomes`) into the report, JUnit XML
    /// and shrunk reproducers one machine's sweep would write; every shard
    /// must be there once, of the same scenario and settings.
    Merge {
        /// The shards' outcome files, one per shard, in any order.
        #[arg(required = true, value_name = "FILES")]
        files: Vec<PathBuf>,
        #[command(flatten)]
        outputs: OutputArgs,
    },
}

/// Where a concluded sweep writes.
#[derive(Args)]
struct OutputArgs {
    /// Write a JUnit XML report (one test case per seed) to FILE.
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
    /// Also write the report (as printed, without timings) to FILE.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// Folder for the shrunk reproducer files.
    #[arg(long, value_name = "DIR", default_value = "target/tiersim-sweep")]
    out: PathBuf,
    /// Report failures without shrinking them.
    #[arg(long)]
    no_shrink: bool,
}

impl OutputArgs {
    fn outputs(&self) -> Outputs {
        Outputs {
            reproducers: (!self.no_shrink).then(|| self.out.clone()),
            junit: self.junit.clone(),
            report: self.report.clone(),
        }
    }
}

#[derive(Args)]
struct SweepArgs {
    /// The scenario file. Shards and their merge name it alike (it is
    /// quoted in the report, JUnit and reproducers): run them from one
    /// folder.
    #[arg(required = true)]
    scenario: Option<PathBuf>,
    /// Seeds to run: `A..B` (B excluded) or `A..=B`; never empty.
    #[arg(long, default_value = "0..100", value_parser = sweep::parse_seeds)]
    seeds: std::ops::RangeInclusive<u64>,
    /// Run seeds on N OS threads, N >= 1 (the output does not depend on N).
    #[arg(long, default_value = "1", value_parser = parse_jobs)]
    jobs: usize,
    /// Run only shard K of N (1-based) of the seed range.
    #[arg(long, value_name = "K/N", value_parser = Shard::parse)]
    shard: Option<Shard>,
    /// Run each seed twice and compare a hash of the whole run.
    #[arg(long)]
    check_determinism: bool,
    /// Write this shard's per-seed outcomes to FILE as JSON lines for
    /// `tiersim sweep merge`, which shrinks and judges: the exit status then
    /// only says whether the file was written.
    #[arg(long, value_name = "FILE")]
    outcomes: Option<PathBuf>,
    #[command(flatten)]
    outputs: OutputArgs,
    #[command(flatten)]
    menu: MenuArgs,
}

fn sweep_cmd(cmd: SweepCmd) -> ExitCode {
    match cmd.merge {
        Some(SweepSub::Merge { files, outputs }) => merge_cmd(&files, &outputs),
        None => sweep_run(cmd.run),
    }
}

/// Prints a concluded sweep's report and any write error; `judged`: exit 1
/// unless it passed, else only if something could not be written.
fn print_verdict(verdict: &sweep::Verdict, judged: bool) -> ExitCode {
    print!("{}", verdict.report);
    for e in &verdict.write_errors {
        eprintln!("error: {e}");
    }
    let ok = if judged {
        verdict.passed()
    } else {
        verdict.write_errors.is_empty()
    };
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn sweep_run(a: SweepArgs) -> ExitCode {
    let file = a.scenario.expect("clap requires the scenario");
    let sweep = Sweep {
        shard: a.shard.unwrap_or(Shard::WHOLE),
        check_determinism: a.check_determinism,
        ..a.menu.sweep(file, a.seeds)
    };
    let prepared = sweep
        .shard_seeds()
        .and_then(|seeds| Ok((seeds, sweep.plan()?)));
    let (seeds, plan) = match prepared {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "sweep {}: {} seeds of {}..={} (shard {}) on {} job(s)",
        sweep.file.display(),
        seeds.len(),
        sweep.seeds.start(),
        sweep.seeds.end(),
        sweep.shard,
        a.jobs
    );
    let bar = if std::io::stderr().is_terminal() {
        indicatif::ProgressBar::new(seeds.len() as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} seeds ({per_sec}) {msg}",
        )
        .expect("valid progress template"),
    );
    let failing = std::sync::atomic::AtomicUsize::new(0);
    let wall = Instant::now();
    let outcomes = sweep.run(&plan, &seeds, a.jobs, &|o| {
        if !o.passed() {
            let f = failing.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            bar.set_message(format!("{f} failing"));
        }
        bar.inc(1);
    });
    let wall = wall.elapsed();
    bar.finish_and_clear();
    // Timings are this machine's: printed, never part of the report.
    let runs = if a.check_determinism { 2 } else { 1 };
    let sim: Duration = outcomes.iter().map(|o| o.sim_time).sum::<Duration>() * runs;
    let secs = wall.as_secs_f64().max(1e-9);
    println!(
        "{} seeds in {:.2}s wall: {:.1} seeds/s; simulated {:.1}s ({:.0}x wall)",
        outcomes.len(),
        wall.as_secs_f64(),
        outcomes.len() as f64 / secs,
        sim.as_secs_f64(),
        sim.as_secs_f64() / secs
    );
    let mut outputs = a.outputs.outputs();
    if let Some(path) = &a.outcomes {
        if let Err(e) = sweep::outcomes::write(&sweep, &outcomes, path) {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
        println!(
            "outcomes: {} ({} seeds); `tiersim sweep merge` shrinks and judges",
            path.display(),
            outcomes.len()
        );
        outputs.reproducers = None;
        return print_verdict(&sweep::conclude(&sweep, &plan, outcomes, &outputs), false);
    }
    announce_shrinking(&outcomes, &outputs);
    print_verdict(&sweep::conclude(&sweep, &plan, outcomes, &outputs), true)
}

/// Shrinking can take a while: say so before it starts.
fn announce_shrinking(outcomes: &[sweep::SeedOutcome], outputs: &Outputs) {
    let checks = sweep::by_check(outcomes).len();
    if checks > 0 && outputs.reproducers.is_some() {
        println!("shrinking the lowest failing seed of {checks} check(s)…");
    }
}

fn merge_cmd(files: &[PathBuf], outputs: &OutputArgs) -> ExitCode {
    let merged = sweep::outcomes::merge(files).and_then(|(sweep, outcomes)| {
        let plan = sweep.plan()?;
        Ok((sweep, outcomes, plan))
    });
    let (sweep, outcomes, plan) = match merged {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "merge: {} shard file(s), {} seeds of {}",
        files.len(),
        outcomes.len(),
        sweep.file.display()
    );
    let outputs = outputs.outputs();
    announce_shrinking(&outcomes, &outputs);
    print_verdict(&sweep::conclude(&sweep, &plan, outcomes, &outputs), true)
}

fn replay(file: PathBuf, seed: u64, write: Option<PathBuf>, menu: MenuArgs) -> ExitCode {
    let plan = match menu.sweep(file.clone(), seed..=seed).plan() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let events = plan.schedule(seed);
    let composed = plan.compose(seed, &events);
    println!(
        "replay {} seed {seed}: {} fault(s){}",
        file.display(),
        events.len(),
        plant_flag(plan.plant)
    );
    println!("  {}", plan.swarm(seed));
    for e in &events {
        println!("  {e}");
    }
    if let Some(path) = &write {
        let text = match scenario::write::to_toml(&composed.scenario) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: cannot serialise the scenario: {e}");
                return ExitCode::FAILURE;
            }
        };
        if let Err(e) = std::fs::write(path, text) {
            eprintln!("error: cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
        println!("  written: {}", path.display());
    }
    init_trace();
    let report = plan.run(&composed);
    println!("{}", render::render(&report));
    if report.passed() {
        println!("pass: no oracle violated");
        ExitCode::SUCCESS
    } else {
        for v in &report.violations {
            println!("FAIL {v}");
        }
        ExitCode::FAILURE
    }
}

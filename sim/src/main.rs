//! The `tiersim` command line: a thin layer over the `tiersim` library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};
use tiersim::runner::{self, RunOptions};
use tiersim::{mermaid, record, rules, scenario};

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
    },
    /// Print the rule → scenarios matrix.
    Rules {
        #[arg(default_value = "scenarios")]
        path: PathBuf,
    },
    /// Print the JSON Schema of the scenario format.
    Schema,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run {
            paths,
            seed,
            trace,
            mermaid,
        } => run(paths, seed, trace, mermaid),
        Command::Rules { path } => rules_matrix(path),
        Command::Schema => {
            print!("{}", scenario::json_schema());
            ExitCode::SUCCESS
        }
    }
}

fn run(
    paths: Vec<PathBuf>,
    seed: Option<u64>,
    trace: bool,
    mermaid_out: Option<PathBuf>,
) -> ExitCode {
    if trace {
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .without_time()
            .with_target(false)
            .init();
    }
    let mut files = Vec::new();
    for p in &paths {
        match scenario::files(p) {
            Ok(f) => files.extend(f),
            Err(e) => {
                eprintln!("error: {}: {e}", p.display());
                return ExitCode::FAILURE;
            }
        }
    }
    if files.is_empty() {
        eprintln!("error: no scenario files in {paths:?}");
        return ExitCode::FAILURE;
    }
    // Load everything first: a malformed file fails the run before anything runs.
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
        return ExitCode::FAILURE;
    }
    if mermaid_out.is_some() && loaded.len() != 1 {
        eprintln!("error: --mermaid draws one scenario; got {}", loaded.len());
        return ExitCode::FAILURE;
    }
    let opts = RunOptions { seed, plant: None };
    let (mut passed, mut failed, mut requests) = (0, 0, 0);
    let mut sim_total = std::time::Duration::ZERO;
    let wall_all = Instant::now();
    for (file, s) in &loaded {
        let wall = Instant::now();
        let report = runner::run(s, file, &opts);
        let wall = wall.elapsed();
        requests += report.requests();
        sim_total += report.sim_time;
        let verdict = if report.passed() { "pass" } else { "FAIL" };
        println!(
            "{verdict}  {:<48} requests {:>3}  sim {:>9.3}s  wall {:>7.3}s",
            file.display(),
            report.requests(),
            report.sim_time.as_secs_f64(),
            wall.as_secs_f64()
        );
        if trace {
            println!("{}", record::render(&report));
        }
        if report.passed() {
            passed += 1;
        } else {
            failed += 1;
            for v in &report.violations {
                println!("      {v}");
            }
            println!(
                "      replay: cargo run --release -p tiersim -- run {} --seed {} --trace",
                file.display(),
                report.seed
            );
        }
        if let Some(out) = &mermaid_out {
            if let Err(e) = std::fs::write(out, mermaid::diagram(s, &report)) {
                eprintln!("error: cannot write {}: {e}", out.display());
                return ExitCode::FAILURE;
            }
        }
    }
    let wall = wall_all.elapsed();
    println!(
        "\n{passed} passed, {failed} failed; {requests} requests; simulated {:.1}s in {:.2}s wall ({:.0}x)",
        sim_total.as_secs_f64(),
        wall.as_secs_f64(),
        sim_total.as_secs_f64() / wall.as_secs_f64().max(1e-9)
    );
    if failed == 0 {
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

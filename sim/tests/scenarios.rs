//! One test per scenario file in `scenarios/`, discovered at run time, so
//! adding a file adds a test. Each runs its world from its seed, fails on any
//! violated expectation or oracle, compares its snapshot (`snapshots/`), and
//! runs a second time, stepping every tick instead of eliding idle ones, to
//! prove the bytes are identical (same seed, same bytes; and the idle skip
//! changes nothing a scenario can observe).

use std::path::{Path, PathBuf};

use libtest_mimic::{Arguments, Failed, Trial};
use tiersim::render;
use tiersim::runner::{self, RunOptions};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn run_one(file: &Path) -> Result<(), Failed> {
    let s = tiersim::scenario::load(file).map_err(|e| e.to_string())?;
    let report = runner::run(&s, file, &RunOptions::default());
    let text = render::render(&report);
    let stepped = RunOptions {
        step_every_tick: true,
        ..RunOptions::default()
    };
    let again = render::render(&runner::run(&s, file, &stepped));
    if text != again {
        return Err(format!(
            "same seed, different bytes (idle ticks elided, then every tick stepped):\n--- first\n{text}\n--- second\n{again}"
        )
        .into());
    }
    let name = file.file_stem().unwrap().to_string_lossy().into_owned();
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path(root().join("snapshots"));
    settings.set_prepend_module_to_snapshot(false);
    settings.set_omit_expression(true);
    settings.set_description(s.description.trim());
    let snap = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        settings.bind(|| insta::assert_snapshot!(name, text));
    }));
    if !report.passed() {
        let v: Vec<String> = report.violations.iter().map(|v| v.to_string()).collect();
        return Err(format!("{}\n\n{text}", v.join("\n")).into());
    }
    snap.map_err(|_| Failed::from("snapshot differs (cargo insta review)"))
}

fn main() {
    let args = Arguments::from_args();
    let files =
        tiersim::scenario::files(&root().join("scenarios")).expect("scenarios/ is readable");
    let tests = files
        .into_iter()
        .map(|f| {
            let name = f.file_stem().unwrap().to_string_lossy().into_owned();
            Trial::test(name, move || run_one(&f))
        })
        .collect();
    libtest_mimic::run(&args, tests).exit();
}

//! The `tiersim` binary's contract (issue 9): exit 0 on success, 1 on a
//! failure, a violation or bad input, 2 on a usage error, and no other
//! status; a panicking world is its scenario's FAIL while the others still
//! run and are reported; scenario discovery walks a folder once.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn tiersim(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tiersim"))
        .args(args)
        .current_dir(root())
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("the tiersim binary runs")
}

fn code(o: &Output) -> i32 {
    o.status.code().expect("exited, not killed")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A fresh scratch folder for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

const SMALL: &str = "scenarios/empty_discovery.toml";
const SWEEP: &str = "scenarios/sweep_streaming_off.toml";

#[test]
fn exit_codes_are_0_1_2_and_nothing_else() {
    let ok = tiersim(&["run", SMALL]);
    assert_eq!(code(&ok), 0, "{}", stderr(&ok));

    let dir = scratch("exit-codes");
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "name = \"t\"\ndescription = \"d\"\n[[step]]\ncrash = \"client\"\n",
    )
    .unwrap();
    let o = tiersim(&["run", bad.to_str().unwrap()]);
    assert_eq!(code(&o), 1);
    assert!(
        stderr(&o).contains("bad.toml:4:9: the client plays the script and cannot crash"),
        "{}",
        stderr(&o)
    );
    assert!(stdout(&o).is_empty(), "nothing runs: {}", stdout(&o));

    let missing = tiersim(&["run", "no/such/dir"]);
    assert_eq!(code(&missing), 1, "{}", stderr(&missing));

    for usage in [
        vec!["run", "--bogus"],
        vec!["frobnicate"],
        vec!["run", SMALL, "--jobs", "0"],
        vec!["sweep", SWEEP, "--jobs", "0"],
        vec!["sweep", SWEEP, "--seeds", "5..5"],
        vec!["sweep", SWEEP, "--seeds", "9..=3"],
        vec!["sweep", SWEEP, "--seeds", "0..18446744073709551616"],
        vec!["sweep", SWEEP, "--until", "10years"],
    ] {
        let o = tiersim(&usage);
        assert_eq!(code(&o), 2, "{usage:?}: {}", stderr(&o));
    }

    // The same min/max pair a `[sweep]` table may not hold is refused on
    // the command line too, by the same check.
    let o = tiersim(&["sweep", SWEEP, "--min-faults", "5", "--max-faults", "1"]);
    assert_eq!(code(&o), 1);
    assert!(
        stderr(&o).contains("min_faults = 5 is above max_faults = 1"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn sweep_seed_range_end_does_not_wrap() {
    let o = tiersim(&[
        "sweep",
        SWEEP,
        "--seeds",
        "18446744073709551615..=18446744073709551615",
        "--no-shrink",
    ]);
    assert_eq!(code(&o), 0, "{}\n{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("1 seeds in"), "{}", stdout(&o));
    assert!(stdout(&o).contains("1 passed, 0 failed"), "{}", stdout(&o));
}

#[test]
fn a_panicking_world_is_its_scenarios_fail_and_the_rest_still_run() {
    let dir = scratch("panic");
    for name in ["a_first", "b_panics", "c_last"] {
        std::fs::copy(root().join(SMALL), dir.join(format!("{name}.toml"))).unwrap();
    }
    let junit = dir.join("run.xml");
    let o = tiersim(&[
        "run",
        dir.to_str().unwrap(),
        "--jobs",
        "2",
        "--panic-in",
        "b_panics",
        "--junit",
        junit.to_str().unwrap(),
    ]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("pass") && lines[0].contains("a_first.toml"),
        "{out}"
    );
    assert!(
        lines[1].starts_with("FAIL") && lines[1].contains("b_panics.toml"),
        "{out}"
    );
    assert!(
        lines[2].contains("panic: the world panicked: planted panic (--panic-in)"),
        "{out}"
    );
    assert!(
        lines[3].contains("replay: cargo run --release -p tiersim -- run"),
        "{out}"
    );
    assert!(
        lines[3].contains("b_panics.toml --seed 10 --trace"),
        "{out}"
    );
    assert!(
        lines[4].starts_with("pass") && lines[4].contains("c_last.toml"),
        "{out}"
    );
    assert!(out.contains("2 passed, 1 failed"), "{out}");
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert_eq!(xml.matches("<testcase").count(), 3, "{xml}");
    assert!(xml.contains("planted panic"), "{xml}");
}

#[cfg(unix)]
#[test]
fn discovery_walks_once_through_symlink_loops_and_links() {
    use std::os::unix::fs::symlink;
    let dir = scratch("walk");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::copy(root().join(SMALL), dir.join("sub/one.toml")).unwrap();
    symlink(&dir, dir.join("sub/loop")).unwrap();
    symlink(dir.join("sub/one.toml"), dir.join("again.toml")).unwrap();
    let files = tiersim::scenario::files(&dir).unwrap();
    assert_eq!(files, vec![dir.join("again.toml")], "one file, found once");

    // Two files with one name in different folders would share a test name
    // and a snapshot: an error naming both.
    let dir = scratch("same-stem");
    for sub in ["a", "b"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
        std::fs::copy(root().join(SMALL), dir.join(sub).join("x.toml")).unwrap();
    }
    let e = tiersim::scenario::files(&dir).unwrap_err().to_string();
    assert!(e.contains("a/x.toml") && e.contains("b/x.toml"), "{e}");
    let o = tiersim(&["run", dir.to_str().unwrap()]);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("same name"), "{}", stderr(&o));
}

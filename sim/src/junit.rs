//! JUnit XML for `tiersim run` and `tiersim sweep --junit FILE` (quick-junit
//! does the XML and its escaping). Times are the CLI's wall-clock
//! measurements, passed in; nothing here reads a clock.

use std::path::{Path, PathBuf};
use std::time::Duration;

use quick_junit::{NonSuccessKind, Report as JReport, TestCase, TestCaseStatus, TestSuite};

use crate::record::Report;
use crate::sweep::SeedOutcome;

fn stem(file: &Path) -> String {
    file.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| file.display().to_string())
}

/// One test case per scenario run: a failure lists every violation.
pub fn run_report(runs: &[(Report, Option<Duration>)]) -> JReport {
    let mut suite = TestSuite::new("tiersim run");
    for (r, wall) in runs {
        let status = if r.passed() {
            TestCaseStatus::success()
        } else {
            let mut st = TestCaseStatus::non_success(NonSuccessKind::Failure);
            let first = r.violations.first().map(|v| v.to_string());
            st.set_message(first.unwrap_or_default());
            st.set_type(
                r.violations
                    .first()
                    .map(|v| v.check.clone())
                    .unwrap_or_default(),
            );
            let all: Vec<String> = r.violations.iter().map(|v| v.to_string()).collect();
            st.set_description(format!(
                "{}\nreplay: cargo run --release -p tiersim -- run {} --seed {} --trace",
                all.join("\n"),
                r.file.display(),
                r.seed
            ));
            st
        };
        let mut case = TestCase::new(stem(&r.file), status);
        case.set_classname("scenarios");
        if let Some(a) = r.model_abstained {
            case.add_property(quick_junit::Property::new(
                "reference_model_stopped",
                format!("step {}: {}", a.step, a.why.describe()),
            ));
        }
        if let Some(w) = wall {
            case.set_time(*w);
        }
        suite.add_test_case(case);
    }
    let mut report = JReport::new("tiersim");
    report.add_test_suite(suite);
    report
}

/// One test case per seed of a sweep: a failure names the first violation
/// (or the divergence) and, for a shrunk seed, its reproducer file.
pub fn sweep_report(
    scenario: &Path,
    outcomes: &[SeedOutcome],
    reproducers: &[(u64, String, PathBuf)],
) -> JReport {
    let mut suite = TestSuite::new(format!("tiersim sweep {}", scenario.display()));
    for o in outcomes {
        let status = if o.passed() {
            TestCaseStatus::success()
        } else {
            let mut st = TestCaseStatus::non_success(NonSuccessKind::Failure);
            let mut lines: Vec<String> = o.violations.iter().map(|v| v.to_string()).collect();
            if let Some(d) = &o.divergence {
                lines.push(format!("nondeterminism: {d}"));
            }
            st.set_message(lines.first().cloned().unwrap_or_default());
            st.set_type(
                o.violations
                    .first()
                    .map_or_else(|| "divergence".to_string(), |v| v.check.clone()),
            );
            for (seed, check, path) in reproducers {
                if *seed == o.seed {
                    lines.push(format!(
                        "reproducer ({check}): {} — cargo run --release -p tiersim -- run {} --trace",
                        path.display(),
                        path.display()
                    ));
                }
            }
            st.set_description(lines.join("\n"));
            st
        };
        let mut case = TestCase::new(format!("seed {}", o.seed), status);
        case.set_classname(stem(scenario));
        case.add_property(quick_junit::Property::new("faults", o.faults.to_string()));
        if let Some(a) = o.abstained {
            case.add_property(quick_junit::Property::new(
                "reference_model_stopped",
                format!("step {}: {}", a.step, a.why.describe()),
            ));
        }
        suite.add_test_case(case);
    }
    let mut report = JReport::new("tiersim");
    report.add_test_suite(suite);
    report
}

/// Writes `report` to `path`.
pub fn write(report: &JReport, path: &Path) -> std::io::Result<()> {
    let xml = report
        .to_string()
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, xml)
}

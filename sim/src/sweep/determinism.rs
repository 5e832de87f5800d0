//! The determinism check: the canonical text of a run that is hashed, and
//! where two runs of the same seed first differ.

use std::fmt;

use crate::record::Report;
use crate::render;

/// Where two runs of the same seed first differ.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Divergence {
    /// The step whose record differs (0: before the first step, or in the
    /// fired-fault log after the steps).
    pub step: usize,
    /// 1-based line of the canonical text.
    pub line: usize,
    pub first: String,
    pub second: String,
}

impl fmt::Display for Divergence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "first divergence at step {} (line {}): {:?} vs {:?}",
            self.step, self.line, self.first, self.second
        )
    }
}

/// A run as hashed for the determinism check: the snapshot text (registry,
/// attempts, served bytes) and every fault that fired.
pub fn canonical(r: &Report) -> String {
    let mut text = render::render(r);
    text.push_str("\n## fired\n");
    for f in &r.fired {
        text.push_str(&format!("- {} {:?}: {}\n", f.host, f.kind, f.fault));
    }
    text
}

/// The first line where two canonical texts differ, and its step.
pub fn first_divergence(a: &str, b: &str) -> Divergence {
    let mut step = 0;
    let (mut la, mut lb) = (a.lines(), b.lines());
    let mut line = 0;
    loop {
        line += 1;
        let (x, y) = (la.next(), lb.next());
        if let Some(rest) = x.and_then(|x| x.strip_prefix("## step ")) {
            step = rest
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(step);
        }
        if x == Some("## fired") {
            step = 0;
        }
        if x != y {
            return Divergence {
                step,
                line,
                first: x.unwrap_or("<end>").to_string(),
                second: y.unwrap_or("<end>").to_string(),
            };
        }
        if x.is_none() {
            return Divergence {
                step,
                line,
                first: "<end>".into(),
                second: "<end>".into(),
            };
        }
    }
}

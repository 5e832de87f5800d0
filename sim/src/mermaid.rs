//! A Mermaid sequence diagram of one run: client, router, providers, faults.
//!
//! Every piece of text (scenario name, step actions, notes, model and
//! provider ids) comes from a scenario file or a client and is drawn through
//! [`text`]: one line, no statement separator, no markup, so no id can add
//! lines or elements to the diagram.

use std::fmt::Write;

#[cfg(test)]
use tiersim_engine::echo::is_forging;
use tiersim_engine::echo::push_escaped;
use tiersim_engine::retry::Outcome;

use crate::record::{Report, RequestRecord};
use crate::scenario::Scenario;

/// Mermaid participant ids cannot hold `:`, `/` or `.`.
fn ident(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// `s` as Mermaid label text: newlines and other control or bidi characters
/// written as `\u{…}`; `#` `;` `<` `>` `%` as Mermaid entity codes (a `;`
/// would end the statement, `<…>` is HTML, `%%` starts a comment or a
/// directive).
pub fn text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '#' => out.push_str("#35;"),
            ';' => out.push_str("#59;"),
            '<' => out.push_str("#lt;"),
            '>' => out.push_str("#gt;"),
            '%' => out.push_str("#37;"),
            c => push_escaped(&mut out, c),
        }
    }
    out
}

pub fn diagram(s: &Scenario, r: &Report) -> String {
    let mut out = String::from("sequenceDiagram\n    participant client\n    participant router\n");
    let mut seen = std::collections::BTreeSet::new();
    for step in &r.steps {
        for a in step
            .request
            .iter()
            .chain(&step.concurrent)
            .flat_map(|q| &q.attempts)
        {
            if seen.insert(a.provider.as_str().to_string()) {
                let _ = writeln!(
                    out,
                    "    participant {} as {}",
                    ident(a.provider.as_str()),
                    text(a.provider.as_str())
                );
            }
        }
    }
    let _ = writeln!(
        out,
        "    Note over client,router: {} (seed {})",
        text(&s.name),
        r.seed
    );
    for step in &r.steps {
        if let Some(note) = &step.note {
            let _ = writeln!(
                out,
                "    Note over client,router: step {}: {}",
                step.index,
                text(note)
            );
        }
        let requests: Vec<&RequestRecord> = step.request.iter().chain(&step.concurrent).collect();
        if requests.is_empty() {
            let _ = writeln!(
                out,
                "    Note over router: step {}: {}",
                step.index,
                text(&step.action)
            );
        }
        for req in requests {
            // A concurrent step draws each request under its own id.
            let label = if step.concurrent.is_empty() {
                text(&step.action)
            } else {
                text(&format!("{} {}", req.id, req.model))
            };
            let _ = writeln!(out, "    client->>router: {label}");
            for a in &req.attempts {
                let p = ident(a.provider.as_str());
                let _ = writeln!(out, "    router->>{p}: round {}", a.round);
                match &a.outcome {
                    Outcome::Ok => {
                        let _ = writeln!(out, "    {p}-->>router: ok");
                    }
                    Outcome::Error { status, .. } => {
                        let _ = writeln!(out, "    {p}--x router: {status} ({:?})", a.decision);
                    }
                }
            }
            let _ = writeln!(out, "    router-->>client: {}", req.status);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_one_line_without_separators_or_markup() {
        let hostile = "m\n    client->>router: forged; x\r%%{init: {}}%% <b>#35;\u{2028}";
        let got = text(hostile);
        assert!(
            !got.chars().any(|c| c.is_control() || is_forging(c)),
            "{got:?}"
        );
        assert!(!got.contains('<') && !got.contains('>') && !got.contains('%'));
        assert_eq!(
            got,
            "m\\u{a}    client-#gt;#gt;router: forged#59; x\\u{d}#37;#37;{init: {}}#37;#37; #lt;b#gt;#35;35#59;\\u{2028}"
        );
        assert_eq!(text("zai-org/GLM-5.1-FP8"), "zai-org/GLM-5.1-FP8");
    }

    /// A run whose model id and note try to inject diagram lines: every
    /// statement stays on its line, and the step's note is drawn.
    #[test]
    fn diagram_draws_notes_and_no_id_injects_lines() {
        let toml = r#"
name = "mermaid; injection\n    router->>client: forged"
description = "x"
seed = 1
pins = ["R6"]

[[near]]
host = "near-1"
models = ["m"]

[[catalog]]
id = "m"
inference_url = "near-1"

[[step]]
refresh = {}
note = "first note; with <b>markup</b>"

[[step]]
note = "unknown id\n    client->>router: injected"
request = { model = "m\n    near_1-->>router: fake ok" }

[[step]]
request = { model = "m" }
"#;
        let path = std::path::Path::new("mermaid_test.toml");
        let s = crate::scenario::parse(path, toml).unwrap();
        let report = crate::runner::run(&s, path, &Default::default());
        let d = diagram(&s, &report);
        let lines: Vec<&str> = d.lines().collect();
        assert!(
            d.contains(
                "Note over client,router: step 1: first note#59; with #lt;b#gt;markup#lt;/b#gt;"
            ),
            "{d}"
        );
        assert!(d.contains("Note over client,router: step 2: unknown id\\u{a}    client-#gt;#gt;router: injected"), "{d}");
        assert!(
            !lines
                .iter()
                .any(|l| l.trim_start().starts_with("router->>client: forged")),
            "{d}"
        );
        assert!(
            !lines
                .iter()
                .any(|l| l.trim_start().starts_with("client->>router: injected")),
            "{d}"
        );
        assert!(
            !lines
                .iter()
                .any(|l| l.trim_start().starts_with("near_1-->>router: fake")),
            "{d}"
        );
        // Each statement starts with a known keyword or an arrow from a participant.
        for l in &lines[1..] {
            let l = l.trim_start();
            assert!(
                [
                    "participant ",
                    "Note over ",
                    "client->>",
                    "router->>",
                    "router-->>",
                    "near_1-->>",
                    "near_1--x"
                ]
                .iter()
                .any(|k| l.starts_with(k)),
                "unexpected statement {l:?} in\n{d}"
            );
        }
    }
}

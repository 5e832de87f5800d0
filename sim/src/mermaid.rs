//! A Mermaid sequence diagram of one run: client, router, providers, faults.

use std::fmt::Write;

use tiersim_engine::retry::Outcome;

use crate::record::{Report, RequestRecord};
use crate::scenario::Scenario;

/// Mermaid participant ids cannot hold `:`, `/` or `.`.
fn ident(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
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
                    a.provider
                );
            }
        }
    }
    let _ = writeln!(
        out,
        "    Note over client,router: {} (seed {})",
        s.name, r.seed
    );
    for step in &r.steps {
        let requests: Vec<&RequestRecord> = step.request.iter().chain(&step.concurrent).collect();
        if requests.is_empty() {
            let _ = writeln!(
                out,
                "    Note over router: step {}: {}",
                step.index,
                step.action.replace(';', ",")
            );
        }
        for req in requests {
            // A concurrent step draws each request under its own id.
            let label = if step.concurrent.is_empty() {
                step.action.replace(';', ",")
            } else {
                format!("{} {}", req.id, req.model)
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

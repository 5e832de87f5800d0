//! Renders a run as the text snapshot reviewers read: the registry after each
//! step (only when it changed), and per request every attempt, the status and
//! the exact bytes the client received.

use std::fmt::Write;
use std::time::Duration;

use tiersim_engine::registry::RegistryView;
use tiersim_engine::retry::Outcome;

use crate::record::{Report, RequestRecord, CONTRACT_HEADERS};

fn ms(d: Duration) -> String {
    humantime::format_duration(Duration::from_millis(d.as_millis() as u64)).to_string()
}

/// The whole snapshot of a run.
pub fn render(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "scenario: {}\nseed: {}", r.name, r.seed);
    if let Some(e) = &r.startup_error {
        let _ = writeln!(out, "startup refused: {e}");
    }
    let mut last: Option<String> = None;
    for s in &r.steps {
        let _ = writeln!(out, "\n## step {} @ {}: {}", s.index, ms(s.at), s.action);
        if let Some(n) = &s.note {
            let _ = writeln!(out, "note: {n}");
        }
        if let Some((status, body)) = &s.admin {
            let _ = writeln!(out, "admin -> {status} {body}");
        }
        if let Some(req) = &s.request {
            let _ = writeln!(
                out,
                "request (x-request-id {}): {}{}",
                req.id,
                req.model,
                if req.stream { " (stream)" } else { "" }
            );
            request(&mut out, req);
        }
        for (k, req) in s.concurrent.iter().enumerate() {
            let _ = writeln!(
                out,
                "request {} of {} (x-request-id {}): {}{}",
                k + 1,
                s.concurrent.len(),
                req.id,
                req.model,
                if req.stream { " (stream)" } else { "" }
            );
            request(&mut out, req);
        }
        if s.concurrent.len() > 1 {
            timeline(&mut out, &s.concurrent);
        }
        if let Some(l) = &s.listed {
            let _ = writeln!(out, "listed: {}", l.join(", "));
        }
        for (model, rr) in &s.round_robin {
            let _ = match rr {
                None => writeln!(out, "round robin {model}: not mapped"),
                Some(rr) => {
                    let next: Vec<&str> = rr.next.iter().map(|p| p.as_str()).collect();
                    writeln!(
                        out,
                        "round robin {model}: counter {}, next {}",
                        rr.counter,
                        next.join(" > ")
                    )
                }
            };
        }
        let mut state = match &s.state {
            None => "router: down\n".to_string(),
            Some(v) => registry(v),
        };
        for why in &s.refused {
            let _ = writeln!(state, "  refused: {why}");
        }
        if last.as_deref() == Some(state.as_str()) {
            let _ = writeln!(out, "registry: unchanged");
        } else {
            out.push_str(&state);
            last = Some(state);
        }
    }
    if !r.expected.is_empty() {
        let _ = writeln!(
            out,
            "\n## expected violations (the upstream profile's departures)"
        );
        for v in &r.expected {
            let _ = writeln!(out, "- {v}");
        }
    }
    if !r.violations.is_empty() {
        let _ = writeln!(out, "\n## violations");
        for v in &r.violations {
            let _ = writeln!(out, "- {v}");
        }
    }
    out
}

/// The attempts of a `concurrent` step's requests interleaved by simulated
/// time (ties in script order), each with its request's `x-request-id`: how
/// the requests overlapped, which their own lists above cannot show.
fn timeline(out: &mut String, requests: &[RequestRecord]) {
    let mut all: Vec<(Duration, usize, &str, &tiersim_engine::retry::Attempt)> = requests
        .iter()
        .enumerate()
        .flat_map(|(k, r)| r.attempts.iter().map(move |a| (a.at, k, r.id.as_str(), a)))
        .collect();
    all.sort_by_key(|(at, k, _, _)| (*at, *k));
    let _ = writeln!(out, "timeline:");
    for (at, _, id, a) in all {
        let _ = writeln!(
            out,
            "  - {} {id} round {} {}: {}",
            ms(at),
            a.round,
            a.provider,
            outcome(&a.outcome)
        );
    }
}

fn outcome(o: &Outcome) -> String {
    match o {
        Outcome::Ok => "ok".to_string(),
        Outcome::Error { status, message } => format!("error {status}: {message}"),
    }
}

fn request(out: &mut String, req: &RequestRecord) {
    let _ = writeln!(out, "attempts:");
    for a in &req.attempts {
        let outcome = outcome(&a.outcome);
        let retry = a
            .retry_after
            .map(|d| format!(", retry after {}", ms(d)))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "  - round {} @ {} {}: {} -> {:?}{}",
            a.round,
            ms(a.at),
            a.provider,
            outcome,
            a.decision,
            retry
        );
    }
    if !req.tokenized.is_empty() {
        let _ = writeln!(out, "tokenized on: {}", req.tokenized.join(", "));
    }
    if let Some((p, t)) = &req.served {
        let fallback = if req.via_fallback == Some(true) {
            ", via fallback"
        } else {
            ""
        };
        let _ = writeln!(out, "served by: {p} ({t}{fallback})");
    }
    let _ = writeln!(out, "status: {}", req.status);
    for (name, value) in &req.headers {
        if CONTRACT_HEADERS.contains(&name.as_str()) {
            let _ = writeln!(out, "header: {name}: {value}");
        }
    }
    let _ = writeln!(out, "bytes:");
    for line in String::from_utf8_lossy(&req.body).lines() {
        let _ = writeln!(out, "  | {line}");
    }
}

/// The registry part of a step: models with their providers (tier,
/// failures), pinned and reserved ids, the pubkey map and the catalog.
pub fn registry(v: &RegistryView) -> String {
    let mut out = String::from("registry:\n");
    for (model, list) in &v.models {
        let ps: Vec<String> = list
            .iter()
            .map(|p| {
                let mut s = format!("{} [{}", p.id, p.tier);
                if let Some(w) = p.context_window {
                    let _ = write!(s, ", window {w}");
                }
                if p.consecutive_failures > 0 {
                    let n = p.consecutive_failures;
                    let _ = write!(s, ", {n} failure{}", if n == 1 { "" } else { "s" });
                }
                if p.demoted {
                    s.push_str(", demoted");
                }
                if p.ttft.samples > 0 {
                    let (ms, n) = (p.ttft.ema_ms, p.ttft.samples);
                    let _ = write!(s, ", ttft {ms:.1} ms/{n}");
                }
                if p.latency_demoted {
                    s.push_str(", latency-demoted");
                }
                s + "]"
            })
            .collect();
        let _ = writeln!(out, "  {model}: {}", ps.join(", "));
    }
    let pinned: Vec<String> = v
        .pinned
        .iter()
        .map(|(m, ps)| {
            format!(
                "{m} -> {}",
                ps.iter().map(|p| p.as_str()).collect::<Vec<_>>().join(" ")
            )
        })
        .collect();
    let _ = writeln!(out, "  pinned: [{}]", pinned.join("; "));
    let reserved: Vec<&str> = v.reserved.iter().map(String::as_str).collect();
    let _ = writeln!(out, "  reserved: [{}]", reserved.join(", "));
    for (key, ids) in &v.pubkeys {
        let short = &key[..key.len().min(12)];
        let ids: Vec<&str> = ids.iter().map(|p| p.as_str()).collect();
        let _ = writeln!(out, "  pubkey {short}…: {}", ids.join(", "));
    }
    let rows: Vec<String> = v
        .catalog
        .iter()
        .map(|(m, r)| {
            let context = r
                .context_length
                .map(|n| format!(" (context {n})"))
                .unwrap_or_default();
            format!("{m}{context}{}", if r.active { "" } else { " (inactive)" })
        })
        .collect();
    let _ = writeln!(out, "  catalog: [{}]", rows.join(", "));
    out
}

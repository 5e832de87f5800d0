//! A step's expectations, checked against what the step recorded.

use crate::runner::StepRecord;
use crate::scenario::format::Expect;

/// Whether provider id `id` is what a scenario calls `name`: the exact id, or
/// its family (`chutes` for `chutes:<slug>`, `external` for `external:<host>`).
pub fn names(name: &str, id: &str) -> bool {
    id == name || id.split_once(':').is_some_and(|(family, _)| family == name)
}

/// Every expectation of `e` that `rec` does not meet, as messages.
pub fn check(e: &Expect, rec: &StepRecord) -> Vec<String> {
    let mut out = Vec::new();
    let req = rec.request.as_ref();
    let needs_request = e.status.is_some()
        || e.served_by.is_some()
        || e.tier.is_some()
        || e.tried.is_some()
        || !e.never.is_empty()
        || e.backoff.is_some()
        || !e.contains.is_empty()
        || !e.not_contains.is_empty()
        || e.done.is_some()
        || !e.headers.is_empty()
        || !e.no_headers.is_empty()
        || e.via_fallback.is_some();
    if needs_request && req.is_none() {
        out.push("request expectations on a step without a request".into());
        return out;
    }
    if let Some(req) = req {
        let body = String::from_utf8_lossy(&req.body);
        if let Some(want) = e.status {
            if req.status != want {
                out.push(format!(
                    "status: expected {want}, got {} (body: {})",
                    req.status,
                    clip(&body)
                ));
            }
        }
        let served = req.served.as_ref();
        if let Some(want) = &e.served_by {
            match served {
                Some((id, _)) if names(want, id) => {}
                other => out.push(format!(
                    "served_by: expected {want}, got {:?}",
                    other.map(|s| &s.0)
                )),
            }
        }
        if let Some(want) = &e.tier {
            match served {
                Some((_, t)) if t.as_str() == want => {}
                other => out.push(format!(
                    "tier: expected {want}, got {:?}",
                    other.map(|s| s.1.as_str())
                )),
            }
        }
        let tried: Vec<&str> = req.attempts.iter().map(|a| a.provider.as_str()).collect();
        if let Some(want) = &e.tried {
            let ok = want.len() == tried.len() && want.iter().zip(&tried).all(|(w, t)| names(w, t));
            if !ok {
                out.push(format!("tried: expected {want:?}, got {tried:?}"));
            }
        }
        for never in &e.never {
            if tried.iter().any(|t| names(never, t)) {
                out.push(format!("never: {never} was tried ({tried:?})"));
            }
        }
        if let Some(want) = &e.backoff {
            let got: Vec<std::time::Duration> =
                req.attempts.iter().filter_map(|a| a.retry_after).collect();
            let want: Vec<std::time::Duration> = want.iter().map(|d| d.0).collect();
            if got != want {
                out.push(format!("backoff: expected {want:?}, got {got:?}"));
            }
        }
        for c in &e.contains {
            if !body.contains(c.as_str()) {
                out.push(format!(
                    "contains: {c:?} not in the bytes received ({})",
                    clip(&body)
                ));
            }
        }
        for c in &e.not_contains {
            if body.contains(c.as_str()) {
                out.push(format!("not_contains: {c:?} is in the bytes received"));
            }
        }
        let header = |name: &str| {
            req.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        };
        for (name, want) in &e.headers {
            if header(name) != Some(want.as_str()) {
                out.push(format!(
                    "headers: expected {name}: {want}, got {:?}",
                    header(name)
                ));
            }
        }
        for name in &e.no_headers {
            if let Some(v) = header(name) {
                out.push(format!("no_headers: {name} is present ({v})"));
            }
        }
        if let Some(want) = e.via_fallback {
            if req.via_fallback != Some(want) {
                out.push(format!(
                    "via_fallback: expected {want}, got {:?}",
                    req.via_fallback
                ));
            }
        }
        if let Some(want) = e.done {
            let got = body.contains("data: [DONE]");
            if got != want {
                out.push(format!("done: expected {want}, got {got}"));
            }
        }
    }
    let state = rec.state.as_ref();
    for (model, want) in &e.providers {
        let got: Vec<&str> = state.map(|v| v.provider_ids(model)).unwrap_or_default();
        let ok = want.len() == got.len() && want.iter().zip(&got).all(|(w, g)| names(w, g));
        if !ok {
            out.push(format!(
                "providers of {model}: expected {want:?}, got {got:?}"
            ));
        }
    }
    for model in &e.absent {
        if state.is_some_and(|v| v.models.contains_key(model)) {
            out.push(format!("absent: {model} is still mapped"));
        }
    }
    if let Some(want) = &e.pinned {
        let got: Vec<&String> = state.map(|v| v.pinned.keys().collect()).unwrap_or_default();
        if !same_set(want, &got) {
            out.push(format!("pinned: expected {want:?}, got {got:?}"));
        }
    }
    if let Some(want) = &e.reserved {
        let got: Vec<&String> = state
            .map(|v| v.reserved.iter().collect())
            .unwrap_or_default();
        if !same_set(want, &got) {
            out.push(format!("reserved: expected {want:?}, got {got:?}"));
        }
    }
    if let Some(want) = &e.listed {
        let got = rec.listed.clone().unwrap_or_default();
        if !same_set(want, &got.iter().collect::<Vec<_>>()) {
            out.push(format!("listed: expected {want:?}, got {got:?}"));
        }
    }
    out
}

fn same_set(want: &[String], got: &[&String]) -> bool {
    let mut w: Vec<&String> = want.iter().collect();
    let mut g = got.to_vec();
    w.sort();
    g.sort();
    w == g
}

fn clip(s: &str) -> String {
    if s.chars().count() > 200 {
        format!("{}…", s.chars().take(200).collect::<String>())
    } else {
        s.to_string()
    }
}

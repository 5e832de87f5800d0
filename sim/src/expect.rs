//! A step's expectations, checked against what the step recorded.

use crate::fault::Received;
use crate::record::StepRecord;
use crate::scenario::format::{ErrorExpect, Expect, UpstreamExpect};

/// Whether provider id `id` is what a scenario calls `name`: the exact id, or
/// its family (`chutes` for `chutes:<slug>`, `external` for `external:<host>`).
pub fn names(name: &str, id: &str) -> bool {
    id == name || id.split_once(':').is_some_and(|(family, _)| family == name)
}

/// Every expectation of `e` that `rec` does not meet, as messages.
pub fn check(e: &Expect, rec: &StepRecord) -> Vec<String> {
    let mut out = Vec::new();
    if !e.each.is_empty() {
        if e.each.len() != rec.concurrent.len() {
            out.push(format!(
                "each: {} expectations for {} concurrent requests",
                e.each.len(),
                rec.concurrent.len()
            ));
        }
        for (k, (want, req)) in e.each.iter().zip(&rec.concurrent).enumerate() {
            let one = StepRecord {
                request: Some(req.clone()),
                concurrent: Vec::new(),
                ..rec.clone()
            };
            out.extend(
                check(want, &one)
                    .into_iter()
                    .map(|m| format!("request {} ({}): {m}", k + 1, req.id)),
            );
        }
    }
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
        || e.error.is_some()
        || !e.headers.is_empty()
        || !e.headers_absent.is_empty()
        || e.upstream.is_some()
        || e.tokenized.is_some()
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
        if let Some(want) = e.done {
            let got = body.contains("data: [DONE]");
            if got != want {
                out.push(format!("done: expected {want}, got {got}"));
            }
        }
        if let Some(want) = &e.error {
            error_body(want, &req.body, &mut out);
        }
        for (name, want) in &e.headers {
            let got: Vec<&str> = req
                .headers
                .iter()
                .filter(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
                .collect();
            if got != [want.as_str()] {
                out.push(format!("headers: {name}: expected {want:?}, got {got:?}"));
            }
        }
        if let Some(want) = &e.upstream {
            upstream(want, &req.upstream, &mut out);
        }
        if let Some(want) = &e.tokenized {
            if *want != req.tokenized {
                out.push(format!(
                    "tokenized: expected {want:?}, got {:?}",
                    req.tokenized
                ));
            }
        }
        for name in &e.headers_absent {
            if let Some((_, v)) = req.headers.iter().find(|(k, _)| k == name) {
                out.push(format!("headers_absent: {name} is present ({v:?})"));
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
    }
    for h in &e.health {
        let got = rec.state.as_ref().and_then(|v| {
            v.models
                .get(&h.model)?
                .iter()
                .find(|p| names(&h.provider, p.id.as_str()))
        });
        match got {
            None => out.push(format!(
                "health: {} has no provider {} (or the router is down)",
                h.model, h.provider
            )),
            Some(p) => {
                if h.failures.is_some_and(|f| f != p.consecutive_failures) {
                    out.push(format!(
                        "health: {} of {}: expected {} failures, got {}",
                        h.provider,
                        h.model,
                        h.failures.unwrap_or_default(),
                        p.consecutive_failures
                    ));
                }
                if h.demoted.is_some_and(|d| d != p.demoted) {
                    out.push(format!(
                        "health: {} of {}: expected demoted = {}, got {}",
                        h.provider, h.model, !p.demoted, p.demoted
                    ));
                }
                if h.ttft_samples.is_some_and(|n| n != p.ttft.samples) {
                    out.push(format!(
                        "health: {} of {}: expected {} TTFT samples, got {}",
                        h.provider,
                        h.model,
                        h.ttft_samples.unwrap_or_default(),
                        p.ttft.samples
                    ));
                }
                if let Some(b) = h.ttft_ema_ms.filter(|b| !b.holds(p.ttft.ema_ms)) {
                    out.push(format!(
                        "health: {} of {}: expected a TTFT average in [{}, {}] ms, got {:.1}",
                        h.provider,
                        h.model,
                        b.at_least.map_or("-".into(), |x| x.to_string()),
                        b.at_most.map_or("-".into(), |x| x.to_string()),
                        p.ttft.ema_ms
                    ));
                }
                if h.latency_demoted.is_some_and(|d| d != p.latency_demoted) {
                    out.push(format!(
                        "health: {} of {}: expected latency_demoted = {}, got {}",
                        h.provider, h.model, !p.latency_demoted, p.latency_demoted
                    ));
                }
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
    for want in &e.round_robin {
        let got = rec
            .round_robin
            .iter()
            .find(|(m, _)| *m == want.model)
            .and_then(|(_, rr)| rr.as_ref());
        let Some(got) = got else {
            out.push(format!(
                "round_robin: {} is not mapped (or the router is down)",
                want.model
            ));
            continue;
        };
        if want.counter.is_some_and(|t| t != got.counter) {
            out.push(format!(
                "round_robin of {}: expected counter {}, got {}",
                want.model,
                want.counter.unwrap_or_default(),
                got.counter
            ));
        }
        if let Some(next) = &want.next {
            let lead = got.next.first().map(|p| p.as_str());
            if !lead.is_some_and(|p| names(next, p)) {
                out.push(format!(
                    "round_robin of {}: expected the next request to lead on {next}, got {lead:?}",
                    want.model
                ));
            }
        }
    }
    if let Some(want) = &e.refused {
        let ok = want.len() == rec.refused.len()
            && want
                .iter()
                .zip(&rec.refused)
                .all(|(w, g)| g.contains(w.as_str()));
        if !ok {
            out.push(format!("refused: expected {want:?}, got {:?}", rec.refused));
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

/// Checks the client's error body (`{"error": {…}}`) against `want`.
fn error_body(want: &ErrorExpect, body: &[u8], out: &mut Vec<String>) {
    let parsed: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let Some(error) = parsed.as_ref().and_then(|v| v.get("error")) else {
        out.push(format!(
            "error: the body is not an error object ({})",
            clip(&String::from_utf8_lossy(body))
        ));
        return;
    };
    let field = |k: &str| error.get(k).and_then(|v| v.as_str());
    for (key, want) in [
        ("type", &want.kind),
        ("code", &want.code),
        ("param", &want.param),
    ] {
        if let Some(w) = want {
            if field(key) != Some(w.as_str()) {
                out.push(format!("error.{key}: expected {w:?}, got {:?}", field(key)));
            }
        }
    }
    let message = field("message").unwrap_or_default();
    for c in &want.message_contains {
        if !message.contains(c.as_str()) {
            out.push(format!("error.message: {c:?} not in {message:?}"));
        }
    }
    for c in &want.message_not_contains {
        if message.contains(c.as_str()) {
            out.push(format!("error.message: {c:?} is in {message:?}"));
        }
    }
}

/// Checks what upstream hosts received against `want`, one for one.
fn upstream(want: &[UpstreamExpect], got: &[Received], out: &mut Vec<String>) {
    let hosts: Vec<&str> = got.iter().map(|r| r.host.as_str()).collect();
    if want.len() != got.len() {
        out.push(format!(
            "upstream: expected {} request(s), got {} ({hosts:?})",
            want.len(),
            got.len()
        ));
        return;
    }
    for (i, (w, g)) in want.iter().zip(got).enumerate() {
        if w.host != g.host {
            out.push(format!(
                "upstream[{i}]: expected host {}, got {}",
                w.host, g.host
            ));
        }
        if let Some(model) = &w.model {
            if g.body["model"].as_str() != Some(model.as_str()) {
                out.push(format!(
                    "upstream[{i}] ({}): expected model {model:?}, got {}",
                    g.host, g.body["model"]
                ));
            }
        }
        for (k, v) in &w.fields {
            if g.body.get(k) != Some(v) {
                out.push(format!(
                    "upstream[{i}] ({}): expected {k} = {v}, got {:?}",
                    g.host,
                    g.body.get(k)
                ));
            }
        }
        for k in &w.absent {
            if g.body.get(k).is_some() {
                out.push(format!("upstream[{i}] ({}): {k} is present", g.host));
            }
        }
    }
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

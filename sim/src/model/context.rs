//! The model's own reading of SPEC-parity R42/R43: a request's context
//! requirement from the body the client sent, written from the spec (no
//! code shared with `engine/src/context.rs`).

use serde_json::Value;

use crate::scenario::format::ContextRoute;

/// R42's knobs, the spec's defaults unless the scenario sets them.
#[derive(Debug, Clone, Copy)]
pub struct Knobs {
    safety: f64,
    exact: f64,
    low: f64,
    high: f64,
    media: f64,
}

impl Knobs {
    pub fn of(route: Option<&ContextRoute>) -> Knobs {
        let get = |f: fn(&ContextRoute) -> Option<f64>, d: f64| route.and_then(f).unwrap_or(d);
        let (low, high) = (
            get(|r| r.tokenize_band_low, 0.7),
            get(|r| r.tokenize_band_high, 1.3),
        );
        // R42: the band is ignored unless low < high.
        let (low, high) = if low < high { (low, high) } else { (0.7, 1.3) };
        Knobs {
            safety: get(|r| r.safety_factor, 1.2),
            exact: get(|r| r.exact_factor, 1.05),
            low,
            high,
            media: get(|r| r.media_part_tokens, 1024.0),
        }
    }
}

/// What R42 counts in a chat body.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counts {
    /// Bytes of message text (string contents, parts' `text`).
    text: u64,
    /// Text plus serialized `tool_calls` and `tools`.
    countable: u64,
    media: u64,
    messages: u64,
    reserve: u64,
}

pub fn counts(body: &Value) -> Counts {
    let mut c = Counts::default();
    for m in body["messages"].as_array().into_iter().flatten() {
        c.messages += 1;
        match &m["content"] {
            Value::String(s) => c.text += s.len() as u64,
            Value::Array(parts) => {
                for p in parts {
                    match p["text"].as_str() {
                        Some(t) => c.text += t.len() as u64,
                        None => c.media += 1,
                    }
                }
            }
            _ => {}
        }
        if let Some(calls) = m.get("tool_calls") {
            c.countable += calls.to_string().len() as u64;
        }
    }
    c.countable += c.text;
    if let Some(tools) = body.get("tools") {
        c.countable += tools.to_string().len() as u64;
    }
    let int = |k: &str| {
        body.get(k)
            .and_then(|v| v.as_i64().or(v.as_f64().map(|f| f as i64)))
    };
    c.reserve = int("max_completion_tokens")
        .or_else(|| int("max_tokens"))
        .unwrap_or(0)
        .max(0) as u64;
    c
}

fn cap(x: f64) -> u32 {
    if x >= f64::from(u32::MAX) {
        u32::MAX
    } else {
        x as u32
    }
}

/// R42.1: streamed chat's hint.
pub fn hint(c: &Counts) -> u32 {
    cap((c.text / 4).max(1) as f64)
}

impl Knobs {
    fn uncounted(&self, c: &Counts) -> f64 {
        self.media * c.media as f64 + 4.0 * c.messages as f64
    }

    /// R43: within the band of some window.
    pub fn near_a_window(&self, c: &Counts, windows: &[u32]) -> bool {
        let raw = (c.countable / 4) as f64 + self.uncounted(c) + c.reserve as f64;
        windows
            .iter()
            .any(|&w| raw >= self.low * f64::from(w) && raw <= self.high * f64::from(w))
    }

    /// R42.2, with R43's exact count when there is one.
    pub fn required(&self, c: &Counts, exact: Option<u64>) -> u32 {
        let tokens = match exact {
            Some(n) => (n as f64 * self.exact).ceil(),
            None => ((c.countable / 4) as f64 * self.safety).ceil(),
        };
        cap(tokens + self.uncounted(c) + c.reserve as f64)
    }
}

/// The count the simulated tokenizer gives for the text R43 sends: per
/// message its text, its `tool_calls` JSON, a newline; then `tools`.
pub fn tokenizer_count(body: &Value) -> u64 {
    let mut text = String::new();
    for m in body["messages"].as_array().into_iter().flatten() {
        match &m["content"] {
            Value::String(s) => text.push_str(s),
            Value::Array(parts) => parts
                .iter()
                .filter_map(|p| p["text"].as_str())
                .for_each(|t| text.push_str(t)),
            _ => {}
        }
        if let Some(calls) = m.get("tool_calls") {
            text.push_str(&calls.to_string());
        }
        text.push('\n');
    }
    if let Some(tools) = body.get("tools") {
        text.push_str(&tools.to_string());
    }
    crate::hosts::count_tokens(&text)
}

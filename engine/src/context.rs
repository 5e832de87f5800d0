//! Context-length tiers (SPEC-parity R40–R45): the long-context catalog
//! block, the requirement estimate, the exact count near a boundary and the
//! context-length 400 a larger sibling may still serve.
//!
//! The ordering these feed (R44's sort key) lives in `select.rs`; a
//! provider's declared window is `Provider::context_window`.

use std::time::Duration;

use serde_json::{Map, Value};

use crate::config::ConfigError;

/// R43: where a NEAR backend counts a prompt's tokens.
pub const TOKENIZE_PATH: &str = "/v1/tokenize";
/// R43/R64: a tokenize call that takes longer is abandoned (heuristic used).
pub const TOKENIZE_TIMEOUT: Duration = Duration::from_secs(2);
/// R43: tokenize calls in flight at once per router; a request that finds
/// none free uses the heuristic and never waits.
pub const TOKENIZE_PERMITS: usize = 4;

/// R42's knobs (`CONTEXT_ROUTE_*`). Every factor is positive and finite.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ContextRouting {
    /// `CONTEXT_ROUTE_SAFETY_FACTOR`: applied to the byte heuristic.
    pub safety_factor: f64,
    /// `CONTEXT_ROUTE_EXACT_FACTOR`: applied to an exact count (R43).
    pub exact_factor: f64,
    /// `CONTEXT_ROUTE_TOKENIZE_BAND_LOW` / `_HIGH`: R43's band around a window.
    pub band_low: f64,
    pub band_high: f64,
    /// `CONTEXT_ROUTE_MEDIA_PART_TOKENS`: tokens charged per non-text part.
    pub media_part_tokens: f64,
}

/// The factors are finite (checked at parse), so equality is total.
impl Eq for ContextRouting {}

impl Default for ContextRouting {
    fn default() -> Self {
        ContextRouting {
            safety_factor: 1.2,
            exact_factor: 1.05,
            band_low: 0.7,
            band_high: 1.3,
            media_part_tokens: 1024.0,
        }
    }
}

impl ContextRouting {
    /// Reads the knobs through `get`. A value that is not a positive finite
    /// number is a configuration error naming the variable (tiersim fails
    /// closed where upstream falls back silently); a band with low ≥ high is
    /// ignored with a warning, as R42 says.
    pub fn from_env(get: &impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let d = ContextRouting::default();
        let knob = |name: &'static str, default: f64| -> Result<f64, ConfigError> {
            match get(name) {
                None => Ok(default),
                Some(v) => v
                    .trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|x| x.is_finite() && *x > 0.0)
                    .ok_or(ConfigError::BadValue {
                        name,
                        expected: "a positive finite number",
                        value: v,
                    }),
            }
        };
        let mut out = ContextRouting {
            safety_factor: knob("CONTEXT_ROUTE_SAFETY_FACTOR", d.safety_factor)?,
            exact_factor: knob("CONTEXT_ROUTE_EXACT_FACTOR", d.exact_factor)?,
            band_low: knob("CONTEXT_ROUTE_TOKENIZE_BAND_LOW", d.band_low)?,
            band_high: knob("CONTEXT_ROUTE_TOKENIZE_BAND_HIGH", d.band_high)?,
            media_part_tokens: knob("CONTEXT_ROUTE_MEDIA_PART_TOKENS", d.media_part_tokens)?,
        };
        if out.band_low >= out.band_high {
            tracing::warn!(
                low = out.band_low,
                high = out.band_high,
                "CONTEXT_ROUTE_TOKENIZE_BAND_LOW must be below _HIGH; using the default band"
            );
            (out.band_low, out.band_high) = (d.band_low, d.band_high);
        }
        Ok(out)
    }
}

/// What R42 reads from a chat body, in bytes and counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Measure {
    /// UTF-8 bytes of message text: string contents and every part's `text`.
    pub text_bytes: u64,
    /// `text_bytes` plus each message's serialized `tool_calls` and the
    /// serialized `tools`.
    pub countable_bytes: u64,
    /// Array parts without a `text` string (images, audio, …).
    pub media_parts: u64,
    pub messages: u64,
    /// `max_completion_tokens`, else `max_tokens`, else 0 (negatives 0).
    pub reserve: u64,
}

fn json_len(v: &Value) -> u64 {
    serde_json::to_vec(v).map_or(0, |b| b.len() as u64)
}

/// Reads `body`'s messages, tools and output reserve (R42).
pub fn measure(body: &Map<String, Value>) -> Measure {
    let mut m = Measure::default();
    let messages = body.get("messages").and_then(Value::as_array);
    for msg in messages.into_iter().flatten() {
        m.messages += 1;
        match msg.get("content") {
            Some(Value::String(s)) => m.text_bytes += s.len() as u64,
            Some(Value::Array(parts)) => {
                for part in parts {
                    match part.get("text").and_then(Value::as_str) {
                        Some(t) => m.text_bytes += t.len() as u64,
                        None => m.media_parts += 1,
                    }
                }
            }
            _ => {}
        }
        if let Some(calls) = msg.get("tool_calls") {
            m.countable_bytes += json_len(calls);
        }
    }
    m.countable_bytes += m.text_bytes;
    if let Some(tools) = body.get("tools") {
        m.countable_bytes += json_len(tools);
    }
    let reserve = |k: &str| {
        body.get(k)
            .and_then(|v| v.as_i64().or(v.as_f64().map(|f| f as i64)))
    };
    m.reserve = reserve("max_completion_tokens")
        .or_else(|| reserve("max_tokens"))
        .unwrap_or(0)
        .max(0) as u64;
    m
}

fn saturate(x: f64) -> u32 {
    if x >= u32::MAX as f64 {
        u32::MAX
    } else {
        x as u32
    }
}

/// R42.1: the service's hint for streamed chat: floor(text bytes / 4), at
/// least 1. No factor, no reserve, no tools.
pub fn service_hint(m: &Measure) -> u32 {
    saturate((m.text_bytes / 4).max(1) as f64)
}

impl ContextRouting {
    fn uncounted(&self, m: &Measure) -> f64 {
        self.media_part_tokens * m.media_parts as f64 + 4.0 * m.messages as f64
    }

    /// R43's first condition: the unscaled requirement lies within the band
    /// around some declared window.
    pub fn near_boundary(&self, m: &Measure, windows: &[u32]) -> bool {
        let raw = (m.countable_bytes / 4) as f64 + self.uncounted(m) + m.reserve as f64;
        windows.iter().any(|&w| {
            let w = w as f64;
            raw >= self.band_low * w && raw <= self.band_high * w
        })
    }

    /// R42.2: the pool's refinement, from the byte heuristic or from an
    /// exact count (R43); saturates at 2³²−1.
    pub fn required(&self, m: &Measure, exact: Option<u64>) -> u32 {
        let scaled = match exact {
            Some(n) => (n as f64 * self.exact_factor).ceil(),
            None => ((m.countable_bytes / 4) as f64 * self.safety_factor).ceil(),
        };
        saturate(scaled + self.uncounted(m) + m.reserve as f64)
    }
}

/// R43: the text sent to `/v1/tokenize`: per message its text, its
/// `tool_calls` JSON, a newline; after the last message the `tools` JSON.
pub fn tokenize_prompt(body: &Map<String, Value>) -> String {
    let mut out = String::new();
    let messages = body.get("messages").and_then(Value::as_array);
    for msg in messages.into_iter().flatten() {
        match msg.get("content") {
            Some(Value::String(s)) => out.push_str(s),
            Some(Value::Array(parts)) => parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .for_each(|t| out.push_str(t)),
            _ => {}
        }
        if let Some(calls) = msg.get("tool_calls") {
            out.push_str(&calls.to_string());
        }
        out.push('\n');
    }
    if let Some(tools) = body.get("tools") {
        out.push_str(&tools.to_string());
    }
    out
}

/// R43: the count in a tokenize reply: `count`, else the length of
/// `tokens`; any other shape is no count.
pub fn tokenize_count(reply: &Value) -> Option<u64> {
    reply.get("count").and_then(Value::as_u64).or_else(|| {
        reply
            .get("tokens")
            .and_then(Value::as_array)
            .map(|t| t.len() as u64)
    })
}

/// R45.1: the engine's wording for a request longer than its window.
pub fn is_context_length_exceeded(status: u16, message: &str) -> bool {
    if status != 400 {
        return false;
    }
    let t = message.to_lowercase();
    t.contains("maximum context length")
        || (t.contains("context length") && (t.contains("exceed") || t.contains("longer than")))
        || (t.contains("input length") && t.contains("exceed"))
}

/// R40: a valid `provider_config.long_context` block: a second NEAR
/// provider at `inference_url` declaring `long_window`, the base provider
/// declaring `base_window`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LongContext {
    pub inference_url: String,
    pub base_window: u32,
    pub long_window: u32,
}

/// R40: reads a row's long-context block. `Ok(None)`: no block; `Err`: a
/// block that is present but invalid (the caller ignores it with a
/// warning, and the base keeps `context_length`).
pub fn long_context(
    base_url: Option<&str>,
    context_length: Option<u32>,
    provider_config: Option<&Value>,
) -> Result<Option<LongContext>, &'static str> {
    let Some(block) = provider_config.and_then(|c| c.get("long_context")) else {
        return Ok(None);
    };
    if block.is_null() {
        return Ok(None);
    }
    let url = block
        .get("inference_url")
        .and_then(Value::as_str)
        .map(str::trim)
        .unwrap_or("");
    if url.is_empty() {
        return Err("long_context.inference_url is empty");
    }
    if base_url.is_some_and(|b| b.trim() == url) {
        return Err("long_context.inference_url is the base URL");
    }
    let positive = |k: &str| {
        block
            .get(k)
            .and_then(Value::as_u64)
            .filter(|n| *n > 0)
            .map(|n| u32::try_from(n).unwrap_or(u32::MAX))
    };
    let Some(base) = positive("base_max_context_tokens") else {
        return Err("long_context.base_max_context_tokens is not a positive integer");
    };
    let Some(long) = positive("max_context_tokens").or(context_length.filter(|n| *n > 0)) else {
        return Err("long_context has no long window (max_context_tokens or context_length)");
    };
    if base >= long {
        return Err("long_context.base_max_context_tokens is not below the long window");
    }
    Ok(Some(LongContext {
        inference_url: url.to_string(),
        base_window: base,
        long_window: long,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn r42_requirement_formula_and_hint() {
        let cfg = ContextRouting::default();
        let b = body(
            json!({"messages":[{"role":"user","content":"a".repeat(20_000)}],"max_tokens":10}),
        );
        let m = measure(&b);
        assert_eq!(cfg.required(&m, None), 6_014);
        assert_eq!(service_hint(&m), 5_000);
        let b = body(
            json!({"messages":[{"role":"user","content":"a".repeat(400_000)}],"max_tokens":8000}),
        );
        assert_eq!(cfg.required(&measure(&b), None), 128_004);
        // The hint is at least 1; the reserve prefers max_completion_tokens
        // and treats negatives as 0.
        let b = body(
            json!({"messages":[{"role":"user","content":"ab"}],"max_completion_tokens":-5,"max_tokens":9}),
        );
        let m = measure(&b);
        assert_eq!((service_hint(&m), m.reserve), (1, 0));
        // Media parts and tool calls: 1024 per part without text, tools
        // and tool_calls counted as serialized bytes.
        let b = body(json!({
            "messages":[{"role":"user","content":[{"type":"text","text":"abcd"},{"type":"image_url","image_url":{"url":"x"}}]},
                        {"role":"assistant","tool_calls":[{"id":"1"}]}],
            "tools":[{"t":1}]}));
        let m = measure(&b);
        assert_eq!(m.media_parts, 1);
        assert_eq!(m.text_bytes, 4);
        assert_eq!(m.countable_bytes, 4 + 12 + 9);
        assert_eq!(
            cfg.required(&m, None),
            (6.0f64 * 1.2).ceil() as u32 + 1024 + 8
        );
        // Exact counts use the exact factor; saturation at 2^32 - 1.
        assert_eq!(cfg.required(&m, Some(100)), 105 + 1024 + 8);
        assert_eq!(cfg.required(&m, Some(u64::MAX)), u32::MAX);
    }

    #[test]
    fn r42_knobs_are_checked_and_band_needs_low_below_high() {
        let read = |pairs: &[(&str, &str)]| {
            let pairs: Vec<(String, String)> = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            ContextRouting::from_env(&move |k: &str| {
                pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
            })
        };
        let got = read(&[("CONTEXT_ROUTE_SAFETY_FACTOR", "1.5")]).unwrap();
        assert_eq!(got.safety_factor, 1.5);
        assert_eq!(read(&[]).unwrap(), ContextRouting::default());
        for bad in ["0", "-1", "NaN", "inf", "x"] {
            let got = read(&[("CONTEXT_ROUTE_EXACT_FACTOR", bad)]);
            assert!(
                matches!(
                    got,
                    Err(ConfigError::BadValue {
                        name: "CONTEXT_ROUTE_EXACT_FACTOR",
                        ..
                    })
                ),
                "{bad}: {got:?}"
            );
        }
        let got = read(&[
            ("CONTEXT_ROUTE_TOKENIZE_BAND_LOW", "1.5"),
            ("CONTEXT_ROUTE_TOKENIZE_BAND_HIGH", "1.2"),
        ])
        .unwrap();
        assert_eq!((got.band_low, got.band_high), (0.7, 1.3));
    }

    #[test]
    fn r43_band_prompt_and_reply_shapes() {
        let cfg = ContextRouting::default();
        let b =
            body(json!({"messages":[{"role":"user","content":"a".repeat(4_000)}],"max_tokens":10}));
        let m = measure(&b);
        assert!(cfg.near_boundary(&m, &[1_000, 10_000]));
        assert!(!cfg.near_boundary(&m, &[10_000]));
        assert_eq!(cfg.required(&m, None), 1_214);
        assert_eq!(cfg.required(&m, Some(100)), 119);
        let b = body(json!({"messages":[{"role":"system","content":"s"},
            {"role":"assistant","content":[{"type":"text","text":"t"}],"tool_calls":[1]}],"tools":[2]}));
        assert_eq!(tokenize_prompt(&b), "s\nt[1]\n[2]");
        assert_eq!(tokenize_count(&json!({"count": 7})), Some(7));
        assert_eq!(tokenize_count(&json!({"tokens": [1, 2, 3]})), Some(3));
        assert_eq!(tokenize_count(&json!({"count": "7"})), None);
        assert_eq!(tokenize_count(&json!([1])), None);
    }

    #[test]
    fn r45_context_length_matcher() {
        for yes in [
            "This model's maximum context length is 1000 tokens. However, you requested 1200",
            "Context length exceeded",
            "prompt is longer than the model's context length",
            "Input length 5000 exceeds the limit",
        ] {
            assert!(is_context_length_exceeded(400, yes), "{yes}");
        }
        for no in ["context length", "input length too big", "bad temperature"] {
            assert!(!is_context_length_exceeded(400, no), "{no}");
        }
        assert!(!is_context_length_exceeded(
            413,
            "maximum context length is 1000"
        ));
    }

    #[test]
    fn r40_long_context_block_validity() {
        let cfg = |v: Value| Some(json!({ "long_context": v }));
        let ok = long_context(
            Some("http://near-1"),
            Some(10_000),
            cfg(json!({"inference_url":" http://near-long ","base_max_context_tokens":1000}))
                .as_ref(),
        );
        assert_eq!(
            ok,
            Ok(Some(LongContext {
                inference_url: "http://near-long".into(),
                base_window: 1_000,
                long_window: 10_000
            }))
        );
        let explicit = long_context(
            Some("http://near-1"),
            Some(10_000),
            cfg(json!({"inference_url":"http://near-long","base_max_context_tokens":1000,"max_context_tokens":20000})).as_ref(),
        );
        assert_eq!(explicit.unwrap().unwrap().long_window, 20_000);
        for bad in [
            json!({"inference_url":"","base_max_context_tokens":1000}),
            json!({"inference_url":"http://near-1","base_max_context_tokens":1000}),
            json!({"inference_url":"http://near-long"}),
            json!({"inference_url":"http://near-long","base_max_context_tokens":0}),
            json!({"inference_url":"http://near-long","base_max_context_tokens":"1000"}),
            json!({"inference_url":"http://near-long","base_max_context_tokens":10000}),
            json!({"inference_url":"http://near-long","base_max_context_tokens":20000}),
        ] {
            assert!(
                long_context(
                    Some("http://near-1"),
                    Some(10_000),
                    cfg(bad.clone()).as_ref()
                )
                .is_err(),
                "{bad}"
            );
        }
        assert_eq!(
            long_context(Some("http://near-1"), Some(10_000), None),
            Ok(None)
        );
        assert_eq!(
            long_context(Some("u"), None, Some(&json!({"other": 1}))),
            Ok(None)
        );
    }

    #[test]
    fn r43_band_edge_counts_the_uncounted_parts_and_the_reserve() {
        // 2,760 bytes → 690, one message → +4, reserve +10: 704, just above
        // 0.7 × 1,000 = 700 and just below 0.7 × 1,006 = 704.2.
        let cfg = ContextRouting::default();
        let b =
            body(json!({"messages":[{"role":"user","content":"a".repeat(2_760)}],"max_tokens":10}));
        let m = measure(&b);
        assert!(cfg.near_boundary(&m, &[1_000]));
        assert!(!cfg.near_boundary(&m, &[1_006]));
    }

    #[test]
    fn r40_a_zero_context_length_is_no_long_window() {
        let block = json!({"long_context": {"inference_url": "http://near-long",
                                            "base_max_context_tokens": 1000}});
        // The warning names the missing long window, not a comparison
        // with a window of 0.
        for context_length in [Some(0), None] {
            assert_eq!(
                long_context(Some("http://near-1"), context_length, Some(&block)),
                Err("long_context has no long window (max_context_tokens or context_length)"),
                "{context_length:?}"
            );
        }
    }
}

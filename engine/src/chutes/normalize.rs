//! What the router changes in a Chutes request and answer (SPEC-parity
//! G): the request body the instance receives (R56), the response field
//! allowlist (R57), a leading `<think>` block moved to `reasoning_content`
//! (R58) and the gating of streamed usage (R59). Pure: bytes and JSON in,
//! bytes and JSON out, so each rule is tested without a network.

use bytes::Bytes;
use serde_json::{Map, Value};

use crate::provider::ProviderError;

/// R56: body keys the router uses internally; never sent to Chutes.
const INTERNAL_KEYS: [&str; 8] = [
    "x_request_id",
    "x_org_id",
    "x_workspace_id",
    "x_signing_algo",
    "x_client_pub_key",
    "x_model_pub_key",
    "x_encryption_version",
    "x_encrypt_all_fields",
];

/// R56: Anthropic's prompt-caching marker, meaningless to a chute.
const CACHE_CONTROL: &str = "cache_control";

/// R57: the keys a Chutes answer may carry, at the top level...
const TOP_KEYS: [&str; 10] = [
    "id",
    "object",
    "created",
    "model",
    "choices",
    "usage",
    "system_fingerprint",
    "service_tier",
    "chutes_verification",
    "hidden_states",
];
/// ...in each choice...
const CHOICE_KEYS: [&str; 5] = ["index", "delta", "message", "finish_reason", "logprobs"];
/// ...and inside a choice's `message` or `delta`.
const MESSAGE_KEYS: [&str; 10] = [
    "role",
    "content",
    "reasoning_content",
    "reasoning",
    "tool_calls",
    "function_call",
    "refusal",
    "annotations",
    "name",
    "tool_call_id",
];

const THINK_OPEN: &str = "<think>";
const THINK_CLOSE: &str = "</think>";

/// R56: whether the client itself asked for streamed usage
/// (`stream_options.include_usage` or `continuous_usage_stats`), which R59
/// honours; read before [`request_body`] forces it on.
pub fn wants_usage(body: &Map<String, Value>) -> bool {
    let options = body.get("stream_options");
    let asked = |key| options.and_then(|o| o.get(key)) == Some(&Value::Bool(true));
    asked("include_usage") || asked("continuous_usage_stats")
}

/// R56: the client's body as Chutes receives it, in place: internal keys
/// and `cache_control` markers removed; for a stream,
/// `stream_options.include_usage` forced on (merged into the client's
/// `stream_options`).
pub fn request_body(body: &mut Map<String, Value>, stream: bool) {
    for key in INTERNAL_KEYS {
        body.remove(key);
    }
    for list in ["messages", "tools"] {
        if let Some(Value::Array(items)) = body.get_mut(list) {
            for item in items {
                strip_cache_control(item);
            }
        }
    }
    if stream {
        let options = body
            .entry("stream_options")
            .or_insert_with(|| Value::Object(Map::new()));
        if !options.is_object() {
            *options = Value::Object(Map::new());
        }
        if let Value::Object(o) = options {
            o.insert("include_usage".into(), Value::Bool(true));
        }
    }
}

/// Removes the marker from a message or tool and from each of its content
/// parts (where Anthropic-style clients put it).
fn strip_cache_control(item: &mut Value) {
    let Value::Object(obj) = item else { return };
    obj.remove(CACHE_CONTROL);
    if let Some(Value::Array(parts)) = obj.get_mut("content") {
        for part in parts {
            if let Value::Object(p) = part {
                p.remove(CACHE_CONTROL);
            }
        }
    }
}

/// R57 on one parsed answer or chunk: everything not allowlisted goes.
fn allowlist(obj: &mut Map<String, Value>) {
    obj.retain(|k, _| TOP_KEYS.contains(&k.as_str()));
    if let Some(Value::Array(choices)) = obj.get_mut("choices") {
        for choice in choices {
            let Value::Object(c) = choice else { continue };
            c.retain(|k, _| CHOICE_KEYS.contains(&k.as_str()));
            for inner in ["message", "delta"] {
                if let Some(Value::Object(m)) = c.get_mut(inner) {
                    m.retain(|k, _| MESSAGE_KEYS.contains(&k.as_str()));
                }
            }
        }
    }
}

/// R3 with R57: `model` becomes the canonical id when it differs.
fn rewrite_model(obj: &mut Map<String, Value>, canonical: &str) {
    if obj.contains_key("model") && obj.get("model").and_then(Value::as_str) != Some(canonical) {
        obj.insert("model".into(), Value::String(canonical.into()));
    }
}

fn has_text(v: Option<&Value>) -> bool {
    v.and_then(Value::as_str)
        .is_some_and(|s| !s.trim().is_empty())
}

/// R57 + R58 + R3 on a non-streamed Chutes answer. A body that is not a
/// JSON object is R37's unparseable answer (502 generic).
pub fn json_answer(body: &[u8], canonical: &str) -> Result<Bytes, ProviderError> {
    let mut value: Value =
        serde_json::from_slice(body).map_err(|e| ProviderError::Parse(e.to_string()))?;
    let obj = value
        .as_object_mut()
        .ok_or_else(|| ProviderError::Parse("expected a JSON object".into()))?;
    allowlist(obj);
    rewrite_model(obj, canonical);
    if let Some(Value::Array(choices)) = obj.get_mut("choices") {
        for choice in choices {
            if let Some(Value::Object(m)) = choice.get_mut("message") {
                split_think(m);
            }
        }
    }
    serde_json::to_vec(&value)
        .map(Bytes::from)
        .map_err(|e| ProviderError::Parse(e.to_string()))
}

/// R58, non-streamed: a `content` that (after leading whitespace) opens
/// with `<think>` and closes it, with no reasoning of its own, is split:
/// the inner text becomes `reasoning_content` (dropped if blank), the text
/// after the first `</think>`, leading whitespace trimmed, the content.
fn split_think(message: &mut Map<String, Value>) {
    if has_text(message.get("reasoning_content")) {
        return;
    }
    let Some(Value::String(content)) = message.get("content") else {
        return;
    };
    let Some(rest) = content.trim_start().strip_prefix(THINK_OPEN) else {
        return;
    };
    let Some((inner, after)) = rest.split_once(THINK_CLOSE) else {
        return;
    };
    let (inner, after) = (inner.to_string(), after.trim_start().to_string());
    message.insert("content".into(), Value::String(after));
    if inner.trim().is_empty() {
        message.remove("reasoning_content");
    } else {
        message.insert("reasoning_content".into(), Value::String(inner));
    }
}

/// Where a stream's `<think>` transform stands (R58).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Think {
    /// Leading whitespace and a partial `<think>` held back.
    Opening(String),
    /// Inside the block: a tail that may begin `</think>` held back.
    Inside(String),
    /// Just after `</think>`: leading whitespace of the answer is dropped.
    Closed,
    /// Passing content through untouched.
    Off,
}

/// R57–R59 over one Chutes stream's authenticated chunks.
#[derive(Debug)]
pub struct StreamNormalizer {
    canonical: String,
    /// R59: the client asked for usage itself (R56).
    wants_usage: bool,
    think: Think,
    /// `id`, `created`, `model` of the last chunk, for the flush (R58).
    last: Map<String, Value>,
}

/// What the transform makes of one piece of `delta.content`.
#[derive(Default)]
struct Pieces {
    content: String,
    reasoning: String,
}

impl StreamNormalizer {
    pub fn new(canonical: &str, wants_usage: bool) -> Self {
        StreamNormalizer {
            canonical: canonical.into(),
            wants_usage,
            think: Think::Opening(String::new()),
            last: Map::new(),
        }
    }

    /// One authenticated chunk in, what the client gets out: the chunk
    /// rewritten, or nothing (R59's withheld usage chunk). A payload that
    /// is not a JSON object is passed on unchanged (R57).
    pub fn chunk(&mut self, payload: Bytes) -> Option<Bytes> {
        let Ok(Value::Object(mut obj)) = serde_json::from_slice::<Value>(&payload) else {
            return Some(payload);
        };
        allowlist(&mut obj);
        rewrite_model(&mut obj, &self.canonical);
        for key in ["id", "created", "model"] {
            if let Some(v) = obj.get(key) {
                self.last.insert(key.into(), v.clone());
            }
        }
        // R59: usage rides only on the final, choice-less chunk, and
        // reaches the client only if it asked for it.
        let choiceless = match obj.get("choices") {
            None => true,
            Some(Value::Array(c)) => c.is_empty(),
            Some(_) => false,
        };
        if choiceless {
            if obj.contains_key("usage") && !self.wants_usage {
                return None;
            }
        } else {
            obj.remove("usage");
        }
        self.think_chunk(&mut obj);
        Some(Bytes::from(Value::Object(obj).to_string()))
    }

    /// R58 on one chunk's choices.
    fn think_chunk(&mut self, obj: &mut Map<String, Value>) {
        if self.think == Think::Off {
            return;
        }
        let Some(Value::Array(choices)) = obj.get_mut("choices") else {
            return;
        };
        let single = choices.len() == 1 && choices[0].get("index") == Some(&Value::from(0));
        let native = choices.iter().any(|c| {
            let d = c.get("delta");
            has_text(d.and_then(|d| d.get("reasoning_content")))
                || has_text(d.and_then(|d| d.get("reasoning")))
        });
        if choices.is_empty() {
            return;
        }
        if !single || native {
            // Turned off: whatever was held goes out as content, here.
            let held = self.turn_off();
            if !held.is_empty() {
                if let Some(Value::Object(d)) = choices[0].get_mut("delta") {
                    let now = d.get("content").and_then(Value::as_str).unwrap_or("");
                    d.insert("content".into(), Value::String(format!("{held}{now}")));
                }
            }
            return;
        }
        let Some(Value::Object(delta)) = choices[0].get_mut("delta") else {
            return;
        };
        let Some(Value::String(text)) = delta.get("content") else {
            return;
        };
        let out = self.feed(text.clone());
        delta.insert("content".into(), Value::String(out.content));
        if !out.reasoning.is_empty() {
            delta.insert("reasoning_content".into(), Value::String(out.reasoning));
        }
    }

    /// Ends the transform; returns what was held as plain content.
    fn turn_off(&mut self) -> String {
        match std::mem::replace(&mut self.think, Think::Off) {
            Think::Opening(held) => held,
            Think::Inside(tail) => tail,
            Think::Closed | Think::Off => String::new(),
        }
    }

    /// One piece of content through the state machine.
    fn feed(&mut self, text: String) -> Pieces {
        let mut out = Pieces::default();
        let mut input = text;
        loop {
            match &mut self.think {
                Think::Off => {
                    out.content.push_str(&input);
                    return out;
                }
                Think::Closed => {
                    let rest = input.trim_start();
                    if !rest.is_empty() {
                        out.content.push_str(rest);
                        self.think = Think::Off;
                    }
                    return out;
                }
                Think::Opening(held) => {
                    held.push_str(&input);
                    let t = held.trim_start();
                    if t.is_empty() || (t.len() < THINK_OPEN.len() && THINK_OPEN.starts_with(t)) {
                        return out;
                    }
                    match t.strip_prefix(THINK_OPEN) {
                        Some(rest) => {
                            input = rest.to_string();
                            self.think = Think::Inside(String::new());
                        }
                        None => {
                            out.content.push_str(&std::mem::take(held));
                            self.think = Think::Off;
                            return out;
                        }
                    }
                }
                Think::Inside(tail) => {
                    tail.push_str(&input);
                    if let Some((inner, after)) = tail.split_once(THINK_CLOSE) {
                        out.reasoning.push_str(inner);
                        input = after.to_string();
                        self.think = Think::Closed;
                        continue;
                    }
                    // Hold the longest suffix that could begin `</think>`.
                    let keep = (1..THINK_CLOSE.len())
                        .rev()
                        .find(|&n| tail.ends_with(&THINK_CLOSE[..n]))
                        .unwrap_or(0);
                    let cut = tail.len() - keep;
                    out.reasoning.push_str(&tail[..cut]);
                    tail.drain(..cut);
                    return out;
                }
            }
        }
    }

    /// R58's flush at the authenticated inner `[DONE]`: held bytes in one
    /// synthetic chunk (an unclosed block's tail as reasoning), or nothing.
    pub fn finish(&mut self) -> Option<Bytes> {
        let (key, text) = match std::mem::replace(&mut self.think, Think::Off) {
            Think::Opening(held) if !held.is_empty() => ("content", held),
            Think::Inside(tail) if !tail.is_empty() => ("reasoning_content", tail),
            _ => return None,
        };
        let mut chunk = self.last.clone();
        chunk.insert("object".into(), Value::from("chat.completion.chunk"));
        let mut delta = Map::new();
        delta.insert(key.into(), Value::String(text));
        let mut choice = Map::new();
        choice.insert("index".into(), Value::from(0));
        choice.insert("delta".into(), Value::Object(delta));
        choice.insert("finish_reason".into(), Value::Null);
        chunk.insert("choices".into(), Value::Array(vec![Value::Object(choice)]));
        Some(Bytes::from(Value::Object(chunk).to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn r56_request_body_strips_internal_keys_and_cache_control_and_forces_usage() {
        let mut body = obj(json!({
            "model": "canon", "x_request_id": "r", "x_org_id": "o", "x_workspace_id": "w",
            "x_signing_algo": "ed25519", "x_client_pub_key": "k", "x_model_pub_key": "k",
            "x_encryption_version": "2", "x_encrypt_all_fields": true, "x_other": 1,
            "messages": [
                {"role": "system", "content": [{"type": "text", "text": "s", "cache_control": {"type": "ephemeral"}}]},
                {"role": "user", "content": "hi", "cache_control": {"type": "ephemeral"}}
            ],
            "tools": [{"type": "function", "function": {"name": "f"}, "cache_control": {"type": "ephemeral"}}],
            "stream_options": {"continuous_usage_stats": false}
        }));
        assert!(!wants_usage(&body), "the client did not ask for usage");
        request_body(&mut body, true);
        for k in INTERNAL_KEYS {
            assert!(!body.contains_key(k), "{k}");
        }
        assert_eq!(body["x_other"], 1, "only the listed internal keys go");
        let text = Value::Object(body.clone()).to_string();
        assert!(!text.contains("cache_control"), "{text}");
        assert_eq!(
            body["stream_options"],
            json!({"continuous_usage_stats": false, "include_usage": true}),
            "merged into the client's options"
        );
        assert_eq!(body["messages"][0]["content"][0]["text"], "s");
    }

    #[test]
    fn r56_usage_request_is_remembered_and_json_requests_get_no_stream_options() {
        assert!(wants_usage(&obj(
            json!({"stream_options": {"include_usage": true}})
        )));
        assert!(wants_usage(&obj(
            json!({"stream_options": {"continuous_usage_stats": true}})
        )));
        let mut b = obj(json!({"messages": []}));
        assert!(!wants_usage(&b));
        request_body(&mut b, false);
        assert!(!b.contains_key("stream_options"));
        let mut b = obj(json!({"stream_options": "junk"}));
        request_body(&mut b, true);
        assert_eq!(b["stream_options"], json!({"include_usage": true}));
    }

    #[test]
    fn r57_json_answer_keeps_only_allowlisted_fields_and_rewrites_model() {
        let body = json!({
            "id": "x", "object": "chat.completion", "created": 1, "model": "slug",
            "prompt_sha256": "abc", "metadata": {"k": 1}, "chutes_verification": {"v": 1},
            "choices": [{"index": 0, "matched_stop": 7, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "hi", "prompt_token_ids": [1]}}],
            "usage": {"total_tokens": 2}
        });
        let out: Value =
            serde_json::from_slice(&json_answer(body.to_string().as_bytes(), "canon").unwrap())
                .unwrap();
        assert_eq!(
            out,
            json!({
                "id": "x", "object": "chat.completion", "created": 1, "model": "canon",
                "chutes_verification": {"v": 1},
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": "hi"}}],
                "usage": {"total_tokens": 2}
            })
        );
        // Canonical = slug: still cut, model untouched.
        let out = json_answer(body.to_string().as_bytes(), "slug").unwrap();
        assert!(!String::from_utf8_lossy(&out).contains("prompt_sha256"));
        // Not an object: R37's unparseable answer.
        assert!(matches!(
            json_answer(b"[1]", "canon"),
            Err(ProviderError::Parse(_))
        ));
    }

    fn message_after(content: Value, reasoning: Option<&str>) -> Value {
        let mut m = json!({"role": "assistant", "content": content});
        if let Some(r) = reasoning {
            m["reasoning_content"] = json!(r);
        }
        let body = json!({"model": "slug", "choices": [{"index": 0, "message": m}]});
        let out: Value =
            serde_json::from_slice(&json_answer(body.to_string().as_bytes(), "canon").unwrap())
                .unwrap();
        out["choices"][0]["message"].clone()
    }

    #[test]
    fn r58_json_think_block_moves_to_reasoning_content() {
        assert_eq!(
            message_after(json!("\n<think>plan</think>\n\nanswer"), None),
            json!({"role": "assistant", "content": "answer", "reasoning_content": "plan"})
        );
        // Blank inner text: no reasoning_content at all.
        assert_eq!(
            message_after(json!("<think>  </think>answer"), None),
            json!({"role": "assistant", "content": "answer"})
        );
        // Left alone: unclosed, text before the tag, not a string, native reasoning.
        for (content, reasoning) in [
            (json!("<think>plan"), None),
            (json!("so <think>plan</think>x"), None),
            (json!([{"type": "text", "text": "<think>a</think>b"}]), None),
            (json!("<think>plan</think>answer"), Some("native")),
        ] {
            let m = message_after(content.clone(), reasoning);
            assert_eq!(m["content"], content);
        }
    }

    /// Streams `pieces` as single-choice chunks; returns (content,
    /// reasoning) per output chunk, then the flushed chunk if any.
    fn stream(pieces: &[&str]) -> (Vec<(String, Option<String>)>, Option<Value>) {
        let mut n = StreamNormalizer::new("canon", false);
        let mut out = Vec::new();
        for p in pieces {
            let chunk = json!({"id": "c1", "created": 5, "model": "slug", "object": "chat.completion.chunk",
                               "choices": [{"index": 0, "delta": {"content": p}}]});
            let got: Value =
                serde_json::from_slice(&n.chunk(Bytes::from(chunk.to_string())).unwrap()).unwrap();
            let d = &got["choices"][0]["delta"];
            out.push((
                d["content"].as_str().unwrap().to_string(),
                d["reasoning_content"].as_str().map(str::to_string),
            ));
        }
        let flushed = n.finish().map(|b| serde_json::from_slice(&b).unwrap());
        (out, flushed)
    }

    #[test]
    fn r58_streamed_think_split_across_chunks() {
        let (out, flushed) = stream(&["<thi", "nk>pl", "an</think>ans"]);
        assert_eq!(
            out,
            [
                ("".into(), None),
                ("".into(), Some("pl".into())),
                ("ans".into(), Some("an".into())),
            ]
        );
        assert_eq!(flushed, None);
        // The closing tag split too, and whitespace after it dropped.
        let (out, _) = stream(&["\n<think>plan</th", "ink>\n\n", "answer"]);
        assert_eq!(
            out,
            [
                ("".into(), Some("plan".into())),
                ("".into(), None),
                ("answer".into(), None),
            ]
        );
    }

    #[test]
    fn r58_streamed_without_a_leading_tag_passes_through_and_held_bytes_return() {
        let (out, _) = stream(&["  ", "<th", "is is not it"]);
        assert_eq!(
            out,
            [
                ("".into(), None),
                ("".into(), None),
                ("  <this is not it".into(), None),
            ]
        );
    }

    #[test]
    fn r58_flush_at_done_held_content_or_unclosed_reasoning() {
        let (_, flushed) = stream(&["\n", "<thi"]);
        let f = flushed.unwrap();
        assert_eq!(f["choices"][0]["delta"], json!({"content": "\n<thi"}));
        assert_eq!(
            (&f["id"], &f["created"], &f["model"], &f["object"]),
            (
                &json!("c1"),
                &json!(5),
                &json!("canon"),
                &json!("chat.completion.chunk")
            )
        );
        let (out, flushed) = stream(&["<think>unfinished</thi"]);
        assert_eq!(out, [("".into(), Some("unfinished".into()))]);
        assert_eq!(
            flushed.unwrap()["choices"][0]["delta"],
            json!({"reasoning_content": "</thi"})
        );
    }

    #[test]
    fn r58_native_reasoning_or_several_choices_turn_it_off() {
        let mut n = StreamNormalizer::new("canon", false);
        let first = json!({"choices": [{"index": 0, "delta": {"content": "<thi"}}]});
        let got = n.chunk(Bytes::from(first.to_string())).unwrap();
        assert!(String::from_utf8_lossy(&got).contains(r#""content":"""#));
        let native = json!({"choices": [{"index": 0, "delta": {"content": "nk>x", "reasoning_content": "r"}}]});
        let got: Value =
            serde_json::from_slice(&n.chunk(Bytes::from(native.to_string())).unwrap()).unwrap();
        assert_eq!(got["choices"][0]["delta"]["content"], "<think>x");
        assert_eq!(got["choices"][0]["delta"]["reasoning_content"], "r");
        assert_eq!(n.finish(), None);

        // Turned off inside a block: only the held tail comes back.
        let mut n = StreamNormalizer::new("canon", false);
        let first = json!({"choices": [{"index": 0, "delta": {"content": "<think>ab</th"}}]});
        let got: Value =
            serde_json::from_slice(&n.chunk(Bytes::from(first.to_string())).unwrap()).unwrap();
        assert_eq!(got["choices"][0]["delta"]["reasoning_content"], "ab");
        let native =
            json!({"choices": [{"index": 0, "delta": {"content": "x", "reasoning": "r"}}]});
        let got: Value =
            serde_json::from_slice(&n.chunk(Bytes::from(native.to_string())).unwrap()).unwrap();
        assert_eq!(got["choices"][0]["delta"]["content"], "</thx");

        let mut n = StreamNormalizer::new("canon", false);
        let two = json!({"choices": [{"index": 0, "delta": {"content": "<think>a"}},
                                     {"index": 1, "delta": {"content": "<think>b"}}]});
        let got = n.chunk(Bytes::from(two.to_string())).unwrap();
        assert!(String::from_utf8_lossy(&got).contains("<think>a"));
    }

    #[test]
    fn r57_streamed_chunk_allowlist_and_non_json_passes_unchanged() {
        let mut n = StreamNormalizer::new("canon", false);
        let chunk = json!({"model": "slug", "prompt_token_ids": [1, 2],
                           "choices": [{"index": 0, "delta": {"content": "hi", "token_ids": [3]}}]});
        let got = n.chunk(Bytes::from(chunk.to_string())).unwrap();
        let v: Value = serde_json::from_slice(&got).unwrap();
        assert_eq!(
            v,
            json!({"model": "canon", "choices": [{"index": 0, "delta": {"content": "hi"}}]})
        );
        let raw = Bytes::from_static(b"not json");
        assert_eq!(n.chunk(raw.clone()), Some(raw));
    }

    #[test]
    fn r59_usage_only_on_the_final_chunk_and_only_if_asked() {
        let mid = json!({"choices": [{"index": 0, "delta": {"content": "x"}}], "usage": {"total_tokens": 1}});
        let last = json!({"choices": [], "usage": {"total_tokens": 3}});
        let bare = json!({"usage": {"total_tokens": 3}});
        for wants in [false, true] {
            let mut n = StreamNormalizer::new("canon", wants);
            let got = n.chunk(Bytes::from(mid.to_string())).unwrap();
            assert!(!String::from_utf8_lossy(&got).contains("usage"), "{wants}");
            let kept = n.chunk(Bytes::from(last.to_string()));
            assert_eq!(kept.is_some(), wants);
            if let Some(k) = kept {
                assert!(String::from_utf8_lossy(&k).contains(r#""total_tokens":3"#));
            }
            assert_eq!(n.chunk(Bytes::from(bare.to_string())).is_some(), wants);
        }
    }

    #[test]
    fn r57_model_is_rewritten_never_added() {
        // A chunk or answer without `model` gets none: R3 rewrites the
        // slug the chute sent, it does not invent the field.
        let mut n = StreamNormalizer::new("canon", false);
        let chunk = json!({"id": "c1", "choices": [{"index": 0, "delta": {"role": "assistant"}}]});
        let got: Value =
            serde_json::from_slice(&n.chunk(Bytes::from(chunk.to_string())).unwrap()).unwrap();
        assert_eq!(got, chunk);
        let body = json!({"id": "x", "choices": []});
        let out: Value =
            serde_json::from_slice(&json_answer(body.to_string().as_bytes(), "canon").unwrap())
                .unwrap();
        assert_eq!(out, body);
    }

    #[test]
    fn r58_flush_sends_nothing_when_nothing_is_held() {
        // No content at all (a tool-call stream): the transform never
        // started, so no synthetic chunk.
        let mut n = StreamNormalizer::new("canon", false);
        let call = json!({"id": "c1", "choices": [{"index": 0,
            "delta": {"tool_calls": [{"index": 0, "function": {"name": "f"}}]}}]});
        let got: Value =
            serde_json::from_slice(&n.chunk(Bytes::from(call.to_string())).unwrap()).unwrap();
        assert_eq!(got, call);
        assert_eq!(n.finish(), None);
        // An unclosed block whose reasoning all went out already: no tail.
        let (out, flushed) = stream(&["<think>plan"]);
        assert_eq!(out, [("".into(), Some("plan".into()))]);
        assert_eq!(flushed, None);
        // A chunk that is exactly the opening tag: the tag is consumed, not
        // held, so it is neither re-sent as content nor flushed.
        let (out, flushed) = stream(&["<think>"]);
        assert_eq!(out, [("".into(), None)]);
        assert_eq!(flushed, None);
    }
}

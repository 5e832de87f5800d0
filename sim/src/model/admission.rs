//! What the router refuses before it routes (SPEC R16's header rule and
//! SPEC-parity R27's field checks): such a request is a 400 with no
//! provider attempt and no change to any provider's health. Written from
//! the spec, not from `engine/src/api.rs`.

use serde_json::Value;

use crate::scenario::format::RequestSpec;

/// An `x-model-pub-key` is an ed25519 signing key: 32 bytes in hex.
const MODEL_KEY_HEX: &[usize] = &[64];
/// An `x-client-pub-key` is an ed25519 or secp256k1 key in hex.
const CLIENT_KEY_HEX: &[usize] = &[64, 128];
const ROLES: &[&str] = &["system", "developer", "user", "assistant", "tool"];

/// Why the router must refuse `spec` before routing it, if it must.
pub fn refusal(spec: &RequestSpec) -> Option<String> {
    if spec.model.is_empty() {
        return Some("model is required".into());
    }
    if let Some(messages) = &spec.messages {
        if messages.is_empty() {
            return Some("messages cannot be empty".into());
        }
        for m in messages {
            match m.get("role") {
                None | Some(Value::Null) => return Some("message role is required".into()),
                Some(Value::String(r)) if r.is_empty() => {
                    return Some("message role is required".into())
                }
                Some(Value::String(r)) if !ROLES.contains(&r.as_str()) => {
                    return Some(format!("invalid message role: {r}"))
                }
                Some(Value::String(_)) => {}
                // Not a string: the body does not deserialize (R27.1).
                Some(_) => return Some("message role is not a string".into()),
            }
        }
    }
    if let Some(reason) = spec.extra.as_ref().and_then(type_refusal) {
        return Some(reason);
    }
    if spec.max_tokens.is_some_and(|m| i64::try_from(m).is_err()) {
        return Some("max_tokens does not deserialize as an integer (R27.1)".into());
    }
    if let Some(reason) = spec.extra.as_ref().and_then(field_refusal) {
        return Some(reason);
    }
    if spec.max_tokens == Some(0) {
        return Some("max_tokens must be at least 1".into());
    }
    let bad_key = |v: &Option<String>, lens: &[usize]| {
        v.as_deref()
            .is_some_and(|k| !lens.contains(&k.len()) || !k.bytes().all(|b| b.is_ascii_hexdigit()))
    };
    if bad_key(&spec.model_pub_key, MODEL_KEY_HEX) {
        return Some("x-model-pub-key cannot be read (R16)".into());
    }
    if bad_key(&spec.client_pub_key, CLIENT_KEY_HEX) {
        return Some("x-client-pub-key cannot be read (R16)".into());
    }
    None
}

/// R27.1: a field of the wrong JSON type makes the body fail to
/// deserialize. The typed fields are OpenAI's: `temperature` and `top_p`
/// numbers, `stop` a string or a list of strings, `n` a 64-bit integer;
/// `null` is the same as leaving a field out.
fn type_refusal(extra: &serde_json::Map<String, Value>) -> Option<String> {
    let present = |k: &str| extra.get(k).filter(|v| !v.is_null());
    for k in ["temperature", "top_p"] {
        if present(k).is_some_and(|v| !v.is_number()) {
            return Some(format!("{k} does not deserialize as a number (R27.1)"));
        }
    }
    let stop_ok = |v: &Value| match v {
        Value::String(_) => true,
        Value::Array(items) => items.iter().all(Value::is_string),
        _ => false,
    };
    if present("stop").is_some_and(|v| !stop_ok(v)) {
        return Some("stop does not deserialize as a string or list of strings (R27.1)".into());
    }
    if present("n").is_some_and(|v| v.as_i64().is_none()) {
        return Some("n does not deserialize as an integer (R27.1)".into());
    }
    None
}

/// R27.2's numeric and shape checks on the extra fields a scenario sends.
fn field_refusal(extra: &serde_json::Map<String, Value>) -> Option<String> {
    // `null` is an absent field (R27.1 read it as `None`).
    let number = |k: &str| {
        extra
            .get(k)
            .filter(|v| !v.is_null())
            .map(|v| (v.as_f64(), v))
    };
    if let Some((n, _)) = number("temperature") {
        if !n.is_some_and(|t| (0.0..=2.0).contains(&t)) {
            return Some("temperature must be between 0 and 2".into());
        }
    }
    if let Some((n, _)) = number("top_p") {
        if !n.is_some_and(|t| (0.0..=1.0).contains(&t)) {
            return Some("top_p must be between 0 and 1".into());
        }
    }
    if let Some(Value::Array(stops)) = extra.get("stop") {
        if stops.len() > 4 {
            return Some("stop array may contain at most 4 sequences".into());
        }
    }
    let logprobs = match extra.get("logprobs") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Some("logprobs must be a boolean".into()),
    };
    match extra.get("top_logprobs") {
        None | Some(Value::Null) => {}
        Some(v) => match v.as_i64() {
            None => return Some("top_logprobs must be an integer".into()),
            Some(n) if !(0..=20).contains(&n) => {
                return Some("top_logprobs must be in the range 0..=20".into())
            }
            Some(_) if !logprobs => {
                return Some("top_logprobs requires logprobs to be true".into())
            }
            Some(_) => {}
        },
    }
    if extra
        .get("n")
        .and_then(Value::as_i64)
        .is_some_and(|n| n < 1)
    {
        return Some("n must be at least 1".into());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(extra: Value, max_tokens: Option<u64>) -> RequestSpec {
        let mut s: RequestSpec =
            serde_json::from_value(json!({ "model": "m" })).expect("a minimal spec");
        s.extra = extra.as_object().cloned();
        s.max_tokens = max_tokens;
        s
    }

    /// R27.1: a body whose typed fields do not deserialize is refused
    /// before routing, as R27.2's checks are; `null` counts as absent.
    #[test]
    fn r27_fields_of_the_wrong_type_are_refused_before_routing() {
        let refused = |extra: Value, max: Option<u64>| refusal(&spec(extra, max));
        assert_eq!(refused(json!({}), Some(1 << 40)), None);
        assert!(
            refused(json!({}), Some(i64::MAX as u64 + 1)).is_some_and(|r| r.contains("max_tokens"))
        );
        assert_eq!(refused(json!({}), Some(i64::MAX as u64)), None);
        for bad in [
            json!({ "temperature": "hot" }),
            json!({ "top_p": [1] }),
            json!({ "stop": 5 }),
            json!({ "stop": ["a", 1] }),
            json!({ "n": 1.5 }),
            json!({ "n": 18446744073709551615u64 }),
            json!({ "n": "2" }),
        ] {
            assert!(refused(bad.clone(), None).is_some(), "{bad}");
        }
        for good in [
            json!({ "temperature": null, "top_p": 1, "stop": null, "n": null }),
            json!({ "stop": "x", "n": 2 }),
            json!({ "stop": ["a", "b"], "temperature": 1.5 }),
        ] {
            assert_eq!(refused(good.clone(), None), None, "{good}");
        }
    }
}

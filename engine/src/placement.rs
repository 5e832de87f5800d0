//! R48: the prefix hash that places streamed chat in a model's leading group.
//!
//! Upstream hashes with Rust's `DefaultHasher`, which is not a documented
//! constant across Rust releases; tiersim uses 64-bit FNV-1a (offset basis
//! `0xcbf29ce484222325`, prime `0x100000001b3`), which is, so a scenario's
//! placement is the same on every build.
//!
//! What is hashed, for each of the first two messages in order: the role
//! name, then each text of its content (a string content as it is; for an
//! array content, the `text` of every part whose `type` is `"text"`). Every
//! piece is preceded by its length as 8 little-endian bytes, so `("ab","c")`
//! and `("a","bc")` differ. Nothing else of the request is hashed.

use serde_json::Value;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// 64-bit FNV-1a.
struct Fnv(u64);

impl Fnv {
    fn bytes(&mut self, b: &[u8]) {
        for &x in b {
            self.0 ^= u64::from(x);
            self.0 = self.0.wrapping_mul(FNV_PRIME);
        }
    }

    /// One length-prefixed piece.
    fn piece(&mut self, s: &str) {
        self.bytes(&(s.len() as u64).to_le_bytes());
        self.bytes(s.as_bytes());
    }
}

/// R48's hash of a chat body's first two messages (see the module doc).
pub fn prefix_hash(body: &serde_json::Map<String, Value>) -> u64 {
    let mut h = Fnv(FNV_OFFSET);
    let messages = body.get("messages").and_then(Value::as_array);
    for m in messages.into_iter().flatten().take(2) {
        h.piece(m.get("role").and_then(Value::as_str).unwrap_or_default());
        match m.get("content") {
            Some(Value::String(s)) => h.piece(s),
            Some(Value::Array(parts)) => {
                for p in parts {
                    if p.get("type").and_then(Value::as_str) == Some("text") {
                        if let Some(t) = p.get("text").and_then(Value::as_str) {
                            h.piece(t);
                        }
                    }
                }
            }
            _ => {}
        }
    }
    h.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn hash(v: Value) -> u64 {
        prefix_hash(v.as_object().unwrap())
    }

    #[test]
    fn r48_fnv1a_matches_its_published_test_vectors() {
        let mut h = Fnv(FNV_OFFSET);
        h.bytes(b"");
        assert_eq!(h.0, 0xcbf2_9ce4_8422_2325);
        let mut h = Fnv(FNV_OFFSET);
        h.bytes(b"a");
        assert_eq!(h.0, 0xaf63_dc4c_8601_ec8c);
        let mut h = Fnv(FNV_OFFSET);
        h.bytes(b"foobar");
        assert_eq!(h.0, 0x8594_4171_f739_67e8);
    }

    #[test]
    fn r48_hash_reads_the_first_two_messages_only() {
        let sys = json!({"role": "system", "content": "S"});
        let a = json!({"messages": [sys, {"role": "user", "content": "a"}]});
        let a_later = json!({"messages": [sys, {"role": "user", "content": "a"},
            {"role": "assistant", "content": "x"}], "temperature": 0.3, "max_tokens": 9});
        let b = json!({"messages": [sys, {"role": "user", "content": "b"}]});
        assert_eq!(hash(a.clone()), hash(a_later));
        assert_ne!(hash(a.clone()), hash(b));
        // The role is hashed, and pieces are length-delimited.
        let as_assistant = json!({"messages": [sys, {"role": "assistant", "content": "a"}]});
        assert_ne!(hash(a), hash(as_assistant));
        let ab_c = json!({"messages": [{"role": "user", "content": "ab"}, {"role": "user", "content": "c"}]});
        let a_bc = json!({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "bc"}]});
        assert_ne!(hash(ab_c), hash(a_bc));
    }

    #[test]
    fn r48_array_content_hashes_its_text_parts_only() {
        let parts = json!({"messages": [{"role": "user", "content": [
            {"type": "text", "text": "hi"},
            {"type": "image_url", "image_url": {"url": "http://x/a.png"}}]}]});
        let other_image = json!({"messages": [{"role": "user", "content": [
            {"type": "text", "text": "hi"},
            {"type": "image_url", "image_url": {"url": "http://x/b.png"}}]}]});
        let string = json!({"messages": [{"role": "user", "content": "hi"}]});
        assert_eq!(hash(parts.clone()), hash(other_image));
        assert_eq!(hash(parts), hash(string));
    }
}

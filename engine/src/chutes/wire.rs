//! Chutes' HTTP wire (SPEC §7, §7b): paths, headers and JSON shapes, shared
//! by the engine's provider and the simulated gateway so neither restates
//! the other. Pure data: no networking, no verification (that is
//! [`super::attest`]).

use serde::{Deserialize, Deserializer, Serialize};

/// Chutes' model list: `data[] {id, chute_id}` (on the model-listing base URL).
pub const MODELS_PATH: &str = "/v1/models";
/// Instance discovery, followed by `/{chute_id}`.
pub const INSTANCES_PATH: &str = "/e2e/instances";
/// The encrypted invocation endpoint.
pub const INVOKE_PATH: &str = "/e2e/invoke";
/// The path the instance serves the decrypted request on (`X-E2E-Path`).
pub const CHAT_PATH: &str = "/v1/chat/completions";
/// Evidence: `GET {api_base}/chutes/{chute_id}/evidence?nonce=<64 hex>`.
pub const EVIDENCE_PREFIX: &str = "/chutes";
pub const EVIDENCE_SUFFIX: &str = "/evidence";
/// Bytes of the boot nonce an evidence fetch carries (64 hex digits).
pub const EVIDENCE_NONCE_LEN: usize = 32;

pub const HEADER_CHUTE_ID: &str = "x-chute-id";
pub const HEADER_INSTANCE_ID: &str = "x-instance-id";
pub const HEADER_NONCE: &str = "x-e2e-nonce";
pub const HEADER_STREAM: &str = "x-e2e-stream";
pub const HEADER_PATH: &str = "x-e2e-path";

/// `nonce_expires_in` of a listing that does not say (Chutes' published
/// client, `chutes-e2ee` 0.1.0, assumes 55 s).
pub const DEFAULT_NONCE_EXPIRES_IN: f64 = 55.0;

/// The evidence path for `chute_id` (already percent-encoded) and a boot
/// nonce in hex.
pub fn evidence_path(chute_id_segment: &str, nonce_hex: &str) -> String {
    format!("{EVIDENCE_PREFIX}/{chute_id_segment}{EVIDENCE_SUFFIX}?nonce={nonce_hex}")
}

/// Whether `s` is a boot nonce as the evidence endpoint takes it.
pub fn is_evidence_nonce(s: &str) -> bool {
    s.len() == 2 * EVIDENCE_NONCE_LEN && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// An absent or `null` list reads as empty (Chutes sends `null`).
fn null_as_empty<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

fn default_nonce_expires_in() -> f64 {
    DEFAULT_NONCE_EXPIRES_IN
}

/// `GET /v1/models` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelList {
    #[serde(default, deserialize_with = "null_as_empty")]
    pub data: Vec<ModelEntry>,
}

/// One chute of the model list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelEntry {
    /// The chute slug, e.g. `zai-org/GLM-5.1-TEE`.
    pub id: String,
    #[serde(default)]
    pub chute_id: Option<String>,
}

/// `GET /e2e/instances/{chute_id}` answer. It carries no evidence: that
/// comes from the evidence endpoint, per fetch nonce (§7b).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceList {
    #[serde(default, deserialize_with = "null_as_empty")]
    pub instances: Vec<InstanceInfo>,
    /// Seconds the listed nonces stay valid; absent means
    /// [`DEFAULT_NONCE_EXPIRES_IN`], as Chutes' published client reads it.
    #[serde(default = "default_nonce_expires_in")]
    pub nonce_expires_in: f64,
}

/// One instance: its ML-KEM key and single-use nonces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceInfo {
    pub instance_id: String,
    /// base64 of the 1184-byte ML-KEM-768 encapsulation key.
    pub e2e_pubkey: String,
    /// Single-use invocation nonces.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub nonces: Vec<String>,
}

/// `GET /chutes/{chute_id}/evidence?nonce=…` answer (§7b).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct EvidenceList {
    #[serde(default, deserialize_with = "null_as_empty")]
    pub evidence: Vec<EvidenceEntry>,
    /// Instances the gateway itself says failed attestation: never used.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub failed_instance_ids: Vec<String>,
}

/// One instance's evidence. Every field but the id may be missing on the
/// wire; a missing one fails that instance's attestation, not the parse.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvidenceEntry {
    pub instance_id: String,
    /// base64 of the TEE quote (real: Intel TDX; simulated: see `attest`).
    #[serde(default)]
    pub quote: Option<String>,
    /// GPU attestation; not checked by this verifier (kept for shape).
    #[serde(default)]
    pub gpu_evidence: Option<serde_json::Value>,
    /// base64 of the instance's certificate.
    #[serde(default)]
    pub certificate: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn r7b_absent_or_null_lists_read_as_empty() {
        for body in [
            "{}",
            r#"{"evidence":null,"failed_instance_ids":null}"#,
            r#"{"evidence":[]}"#,
        ] {
            let list: EvidenceList = serde_json::from_str(body).unwrap();
            assert_eq!(list, EvidenceList::default(), "{body}");
        }
        let list: InstanceList = serde_json::from_str(r#"{"instances":null}"#).unwrap();
        assert!(list.instances.is_empty());
        let info: InstanceInfo =
            serde_json::from_str(r#"{"instance_id":"i","e2e_pubkey":"k","nonces":null}"#).unwrap();
        assert!(info.nonces.is_empty());
    }

    #[test]
    fn listing_without_nonce_expires_in_gets_the_published_default() {
        let list: InstanceList = serde_json::from_str(r#"{"instances":[]}"#).unwrap();
        assert_eq!(list.nonce_expires_in, 55.0);
        let list: InstanceList =
            serde_json::from_str(r#"{"instances":[],"nonce_expires_in":60}"#).unwrap();
        assert_eq!(list.nonce_expires_in, 60.0);
    }

    #[test]
    fn r7b_evidence_path_and_nonce_shape() {
        let n = "ab".repeat(32);
        assert!(is_evidence_nonce(&n));
        assert!(!is_evidence_nonce(&n[1..]));
        assert!(!is_evidence_nonce(&"zz".repeat(32)));
        assert_eq!(
            evidence_path("c-1", &n),
            format!("/chutes/c-1/evidence?nonce={n}")
        );
    }
}

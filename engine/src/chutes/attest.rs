//! §7b attestation binding: an Attested3p instance key is trusted only when
//! evidence binds it to a vendor key the engine is configured to trust.
//!
//! The simulated evidence mirrors a TEE quote reduced to what the binding
//! needs: `report_data` commits to the instance's ML-KEM public key
//! (`hex(sha256(e2e_pubkey))`), and the vendor signs
//! `ATTEST_CONTEXT ‖ sha256(e2e_pubkey)` with ed25519. The verifier recomputes
//! the digest from the key it is about to encrypt to, so evidence for another
//! key, or signed by another vendor, is rejected: fail closed.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use super::e2ee::{AttestFailure, E2eeError};

/// Domain separation for the vendor's signature.
pub const ATTEST_CONTEXT: &[u8] = b"tiersim/chutes-attestation/v1\0";

/// Evidence returned per instance alongside its `e2e_pubkey`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Evidence {
    /// `hex(sha256(e2e_pubkey))`, lower case.
    pub report_data: String,
    /// base64 of the vendor's ed25519 signature.
    pub signature: String,
}

/// The simulated hardware vendor's signing key.
pub struct VendorKey {
    signing: SigningKey,
}

impl std::fmt::Debug for VendorKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VendorKey({})", hex(&self.public_key()))
    }
}

impl VendorKey {
    /// Deterministic from a 32-byte seed (the ed25519 secret key).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        VendorKey {
            signing: SigningKey::from_bytes(&seed),
        }
    }

    /// The public key the engine is configured to trust.
    pub fn public_key(&self) -> [u8; 32] {
        self.signing.verifying_key().to_bytes()
    }

    /// Evidence binding `instance_pubkey` to this vendor.
    pub fn sign_binding(&self, instance_pubkey: &[u8]) -> Evidence {
        let digest = Sha256::digest(instance_pubkey);
        let sig = self.signing.sign(&signed_message(&digest));
        Evidence {
            report_data: hex(&digest),
            signature: B64.encode(sig.to_bytes()),
        }
    }
}

fn signed_message(digest: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(ATTEST_CONTEXT.len() + digest.len());
    msg.extend_from_slice(ATTEST_CONTEXT);
    msg.extend_from_slice(digest);
    msg
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    s
}

/// Verifies that `evidence` binds `instance_pubkey` under the trusted vendor
/// key. Any mismatch is an [`E2eeError::Attestation`].
pub fn verify_binding(
    trusted_vendor_pubkey: &[u8; 32],
    instance_pubkey: &[u8],
    evidence: &Evidence,
) -> Result<(), E2eeError> {
    let vendor = VerifyingKey::from_bytes(trusted_vendor_pubkey)
        .map_err(|_| AttestFailure::InvalidVendorKey)?;
    let digest = Sha256::digest(instance_pubkey);
    if !evidence.report_data.eq_ignore_ascii_case(&hex(&digest)) {
        return Err(AttestFailure::ReportDataMismatch.into());
    }
    let sig_bytes = B64
        .decode(&evidence.signature)
        .map_err(|_| AttestFailure::MalformedSignature)?;
    let sig = Signature::from_slice(&sig_bytes).map_err(|_| AttestFailure::MalformedSignature)?;
    vendor
        .verify_strict(&signed_message(&digest), &sig)
        .map_err(|_| AttestFailure::BadSignature)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chutes::e2ee::InstanceKeypair;
    use crate::provider::ProviderError;

    fn vendor(tag: u8) -> VendorKey {
        VendorKey::from_seed([tag; 32])
    }

    #[test]
    fn attest_binding_round_trip() {
        let v = vendor(1);
        let inst = InstanceKeypair::from_seed([3; 64]);
        let ev = v.sign_binding(inst.public_key_bytes());
        assert_eq!(ev.report_data.len(), 64);
        verify_binding(&v.public_key(), inst.public_key_bytes(), &ev).unwrap();
        // Deterministic (ed25519 is), and serde round-trips.
        assert_eq!(ev, vendor(1).sign_binding(inst.public_key_bytes()));
        let json = serde_json::to_string(&ev).unwrap();
        assert!(json.contains("\"report_data\"") && json.contains("\"signature\""));
        assert_eq!(serde_json::from_str::<Evidence>(&json).unwrap(), ev);
    }

    #[test]
    fn r7b_substituted_key_rejected() {
        let trusted = vendor(1);
        let real = InstanceKeypair::from_seed([3; 64]);
        let evil = InstanceKeypair::from_seed([4; 64]);
        let real_ev = trusted.sign_binding(real.public_key_bytes());

        // A gateway swaps in its own key but replays the real evidence.
        let err =
            verify_binding(&trusted.public_key(), evil.public_key_bytes(), &real_ev).unwrap_err();
        assert_eq!(
            err,
            E2eeError::Attestation(AttestFailure::ReportDataMismatch)
        );
        assert!(matches!(
            ProviderError::from(err),
            ProviderError::Integrity(_)
        ));

        // …or rewrites report_data to match its key (signature no longer verifies).
        let forged = Evidence {
            report_data: hex(&Sha256::digest(evil.public_key_bytes())),
            signature: real_ev.signature.clone(),
        };
        assert_eq!(
            verify_binding(&trusted.public_key(), evil.public_key_bytes(), &forged).unwrap_err(),
            E2eeError::Attestation(AttestFailure::BadSignature)
        );

        // …or has its key signed by a vendor the engine does not trust.
        let rogue_ev = vendor(2).sign_binding(evil.public_key_bytes());
        assert_eq!(
            verify_binding(&trusted.public_key(), evil.public_key_bytes(), &rogue_ev).unwrap_err(),
            E2eeError::Attestation(AttestFailure::BadSignature)
        );

        // Garbage signatures are malformed, not panics.
        for sig in ["", "!!", "AAAA"] {
            let ev = Evidence {
                signature: sig.into(),
                ..real_ev.clone()
            };
            assert_eq!(
                verify_binding(&trusted.public_key(), real.public_key_bytes(), &ev).unwrap_err(),
                E2eeError::Attestation(AttestFailure::MalformedSignature)
            );
        }
    }
}

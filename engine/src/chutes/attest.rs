//! §7b attestation binding: an Attested3p instance key is trusted only when
//! fresh evidence binds it, through a quote a trusted verifier accepts.
//!
//! Per request the provider draws a boot nonce, fetches
//! `/chutes/{chute_id}/evidence?nonce=…` and checks each candidate instance
//! with [`check_instance`]: the quote must verify under the configured
//! [`Verifier`] and its 64 bytes of report data must be
//! `SHA256(nonce ‖ e2e_pubkey) ‖ SHA256(SPKI(certificate))`, where `nonce`
//! is the 64-hex text sent and `e2e_pubkey` the base64 text the instance
//! listing gave (both as ASCII, as on the wire). Evidence for another nonce
//! (a replay) or another key (a substituted key) changes the first half;
//! another certificate the second.
//!
//! The [`Verifier`] trait is the seam where a real Intel TDX quote verifier
//! (DCAP collateral, TCB status, measurements) replaces the simulated vendor
//! of this testbed. [`SimulatedVendor`] accepts a quote of
//! `QUOTE_MAGIC ‖ report_data ‖ ed25519(ATTEST_CONTEXT ‖ report_data)` signed
//! by the vendor key the engine is configured to trust, and a certificate
//! that is an ed25519 SubjectPublicKeyInfo in DER (a real verifier parses
//! X.509 and takes its SPKI).

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use super::e2ee::AttestFailure;
use super::wire::{EvidenceEntry, EvidenceList};

/// Domain separation for the simulated vendor's signature.
pub const ATTEST_CONTEXT: &[u8] = b"tiersim/chutes-attestation/v2\0";
/// First bytes of a simulated quote.
pub const QUOTE_MAGIC: &[u8; 4] = b"TSQ1";
/// Bytes of a quote's report data (as in a TDX quote).
pub const REPORT_DATA_LEN: usize = 64;
const SIG_LEN: usize = 64;
/// DER prefix of an ed25519 SubjectPublicKeyInfo (RFC 8410), before the
/// 32 key bytes.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// Verifies TEE evidence. `Send + Sync`: one is shared by every request.
pub trait Verifier: Send + Sync {
    /// Checks the quote's signature chain up to a trusted root and returns
    /// the report data it attests.
    fn verify_quote(&self, quote: &[u8]) -> Result<[u8; REPORT_DATA_LEN], AttestFailure>;

    /// The DER SubjectPublicKeyInfo of `certificate`.
    fn certificate_spki(&self, certificate: &[u8]) -> Result<Vec<u8>, AttestFailure>;
}

/// The report data evidence must carry for this fetch's `nonce_hex`, the
/// instance's listed `e2e_pubkey_b64` and its certificate's `spki`.
pub fn expected_report_data(
    nonce_hex: &str,
    e2e_pubkey_b64: &str,
    spki: &[u8],
) -> [u8; REPORT_DATA_LEN] {
    let mut out = [0u8; REPORT_DATA_LEN];
    let mut h = Sha256::new();
    h.update(nonce_hex.as_bytes());
    h.update(e2e_pubkey_b64.as_bytes());
    out[..32].copy_from_slice(&h.finalize());
    out[32..].copy_from_slice(&Sha256::digest(spki));
    out
}

/// Why `instance_id` may not be used under `evidence` fetched with
/// `nonce_hex`, or `Ok` when its evidence binds `e2e_pubkey_b64`.
pub fn check_instance(
    verifier: &dyn Verifier,
    evidence: &EvidenceList,
    nonce_hex: &str,
    instance_id: &str,
    e2e_pubkey_b64: &str,
) -> Result<(), AttestFailure> {
    if evidence
        .failed_instance_ids
        .iter()
        .any(|i| i == instance_id)
    {
        return Err(AttestFailure::ListedAsFailed);
    }
    let entry = evidence
        .evidence
        .iter()
        .find(|e| e.instance_id == instance_id)
        .ok_or(AttestFailure::NoEvidence)?;
    check_entry(verifier, entry, nonce_hex, e2e_pubkey_b64)
}

fn check_entry(
    verifier: &dyn Verifier,
    entry: &EvidenceEntry,
    nonce_hex: &str,
    e2e_pubkey_b64: &str,
) -> Result<(), AttestFailure> {
    let quote = entry.quote.as_deref().ok_or(AttestFailure::MissingQuote)?;
    let quote = B64
        .decode(quote)
        .map_err(|_| AttestFailure::MalformedQuote)?;
    let report = verifier.verify_quote(&quote)?;
    let cert = entry
        .certificate
        .as_deref()
        .ok_or(AttestFailure::MissingCertificate)?;
    let cert = B64
        .decode(cert)
        .map_err(|_| AttestFailure::MalformedCertificate)?;
    let spki = verifier.certificate_spki(&cert)?;
    let expected = expected_report_data(nonce_hex, e2e_pubkey_b64, &spki);
    if report[..32] != expected[..32] {
        return Err(AttestFailure::ReportDataMismatch);
    }
    if report[32..] != expected[32..] {
        return Err(AttestFailure::CertificateMismatch);
    }
    Ok(())
}

/// The verifier for the simulated vendor's quotes (see the module docs).
#[derive(Debug, Clone)]
pub struct SimulatedVendor {
    /// The trusted key, decompressed once (a point decompression costs as
    /// much as half a signature check); an invalid one fails every quote.
    trusted: Result<VerifyingKey, AttestFailure>,
}

impl SimulatedVendor {
    /// Trusts quotes signed by the ed25519 key `trusted_vendor_pubkey`.
    pub fn new(trusted_vendor_pubkey: [u8; 32]) -> Self {
        SimulatedVendor {
            trusted: VerifyingKey::from_bytes(&trusted_vendor_pubkey)
                .map_err(|_| AttestFailure::InvalidVendorKey),
        }
    }
}

impl Verifier for SimulatedVendor {
    fn verify_quote(&self, quote: &[u8]) -> Result<[u8; REPORT_DATA_LEN], AttestFailure> {
        let vendor = self.trusted?;
        let body = quote
            .strip_prefix(QUOTE_MAGIC)
            .filter(|b| b.len() == REPORT_DATA_LEN + SIG_LEN)
            .ok_or(AttestFailure::MalformedQuote)?;
        let (report, sig) = body.split_at(REPORT_DATA_LEN);
        let sig = Signature::from_slice(sig).map_err(|_| AttestFailure::MalformedQuote)?;
        vendor
            .verify_strict(&signed_message(report), &sig)
            .map_err(|_| AttestFailure::BadSignature)?;
        let mut out = [0u8; REPORT_DATA_LEN];
        out.copy_from_slice(report);
        Ok(out)
    }

    fn certificate_spki(&self, certificate: &[u8]) -> Result<Vec<u8>, AttestFailure> {
        match certificate.strip_prefix(&ED25519_SPKI_PREFIX) {
            Some(key) if key.len() == 32 => Ok(certificate.to_vec()),
            _ => Err(AttestFailure::MalformedCertificate),
        }
    }
}

/// The simulated hardware vendor's signing key (the gateway's side).
pub struct VendorKey {
    signing: SigningKey,
}

impl std::fmt::Debug for VendorKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VendorKey({:02x?})", &self.public_key()[..4])
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

    /// A simulated quote attesting `report_data`.
    pub fn quote(&self, report_data: &[u8; REPORT_DATA_LEN]) -> Vec<u8> {
        let sig = self.signing.sign(&signed_message(report_data));
        let mut q = Vec::with_capacity(QUOTE_MAGIC.len() + REPORT_DATA_LEN + SIG_LEN);
        q.extend_from_slice(QUOTE_MAGIC);
        q.extend_from_slice(report_data);
        q.extend_from_slice(&sig.to_bytes());
        q
    }
}

/// A simulated instance certificate: the DER SubjectPublicKeyInfo of the
/// ed25519 key `key` (what [`SimulatedVendor::certificate_spki`] accepts).
pub fn simulated_certificate(key: &[u8; 32]) -> Vec<u8> {
    let mut der = ED25519_SPKI_PREFIX.to_vec();
    der.extend_from_slice(key);
    der
}

fn signed_message(report_data: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(ATTEST_CONTEXT.len() + report_data.len());
    msg.extend_from_slice(ATTEST_CONTEXT);
    msg.extend_from_slice(report_data);
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONCE: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const KEY: &str = "a2V5LW9mLWluc3RhbmNlLTA=";

    fn entry(vendor: &VendorKey, nonce: &str, key: &str, cert_key: u8) -> EvidenceEntry {
        let cert = simulated_certificate(&[cert_key; 32]);
        let report = expected_report_data(nonce, key, &cert);
        EvidenceEntry {
            instance_id: "i-0".into(),
            quote: Some(B64.encode(vendor.quote(&report))),
            gpu_evidence: None,
            certificate: Some(B64.encode(cert)),
        }
    }

    fn list(entries: Vec<EvidenceEntry>, failed: &[&str]) -> EvidenceList {
        EvidenceList {
            evidence: entries,
            failed_instance_ids: failed.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn check(v: &VendorKey, ev: &EvidenceList) -> Result<(), AttestFailure> {
        check_instance(&SimulatedVendor::new(v.public_key()), ev, NONCE, "i-0", KEY)
    }

    #[test]
    fn r7b_fresh_evidence_for_this_key_verifies() {
        let v = VendorKey::from_seed([1; 32]);
        check(&v, &list(vec![entry(&v, NONCE, KEY, 9)], &[])).unwrap();
    }

    #[test]
    fn r7b_each_way_evidence_is_missing_or_wrong_is_refused() {
        let v = VendorKey::from_seed([1; 32]);
        let good = entry(&v, NONCE, KEY, 9);
        let other_nonce = "f".repeat(64);
        let cases: Vec<(EvidenceList, AttestFailure)> = vec![
            (list(vec![], &[]), AttestFailure::NoEvidence),
            (
                list(vec![good.clone()], &["i-0"]),
                AttestFailure::ListedAsFailed,
            ),
            (
                list(vec![entry(&v, &other_nonce, KEY, 9)], &[]),
                AttestFailure::ReportDataMismatch,
            ),
            (
                list(vec![entry(&v, NONCE, "b3RoZXIta2V5", 9)], &[]),
                AttestFailure::ReportDataMismatch,
            ),
            (
                list(
                    vec![entry(&VendorKey::from_seed([2; 32]), NONCE, KEY, 9)],
                    &[],
                ),
                AttestFailure::BadSignature,
            ),
            (
                list(
                    vec![EvidenceEntry {
                        certificate: Some(B64.encode(simulated_certificate(&[8; 32]))),
                        ..good.clone()
                    }],
                    &[],
                ),
                AttestFailure::CertificateMismatch,
            ),
            (
                list(
                    vec![EvidenceEntry {
                        quote: None,
                        ..good.clone()
                    }],
                    &[],
                ),
                AttestFailure::MissingQuote,
            ),
            (
                list(
                    vec![EvidenceEntry {
                        quote: Some("!!".into()),
                        ..good.clone()
                    }],
                    &[],
                ),
                AttestFailure::MalformedQuote,
            ),
            (
                list(
                    vec![EvidenceEntry {
                        certificate: Some(B64.encode(b"not der")),
                        ..good.clone()
                    }],
                    &[],
                ),
                AttestFailure::MalformedCertificate,
            ),
        ];
        for (ev, want) in cases {
            assert_eq!(check(&v, &ev), Err(want));
        }
        // A flipped signature bit.
        let mut quote = B64.decode(good.quote.as_ref().unwrap()).unwrap();
        *quote.last_mut().unwrap() ^= 1;
        let flipped = EvidenceEntry {
            quote: Some(B64.encode(quote)),
            ..good
        };
        assert_eq!(
            check(&v, &list(vec![flipped], &[])),
            Err(AttestFailure::BadSignature)
        );
    }
}

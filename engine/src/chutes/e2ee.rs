//! Both sides of Chutes' E2EE blob protocol (SPEC §7), pure and with the RNG
//! injected: the simulation passes a seeded `ChaCha20Rng`, production
//! [`os_rng`].
//!
//! ```text
//! request blob  = mlkem_ct(1088) ‖ nonce(12) ‖ ciphertext ‖ tag(16)
//!                 key = HKDF-SHA256(ikm = ML-KEM shared secret,
//!                                   salt = mlkem_ct[0..16], info = "e2e-req-v1")
//!                 ChaCha20-Poly1305, empty AAD
//!                 plaintext = gzip(JSON request ∪ {"e2e_response_pk": b64(fresh ML-KEM-768 pk)})
//! response blob = same framing, encapsulated to e2e_response_pk, info "e2e-resp-v1",
//!                 gzip-compressed JSON
//! stream        = {"e2e_init": b64(mlkem_ct)} keys the stream (info "e2e-stream-v1"),
//!                 then {"e2e": b64(nonce ‖ ct ‖ tag)} per raw OpenAI SSE line, not gzipped
//! ```
//!
//! The hardened stream protocol **v2** (opt-in, R25) is described on
//! [`StreamVersion::V2`].

use std::io::{Read, Write};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use chacha20poly1305::aead::AeadInOut;
use chacha20poly1305::{ChaCha20Poly1305, KeyInit};
use flate2::read::MultiGzDecoder;
use flate2::Compression;
use hkdf::Hkdf;
use ml_kem::kem::{Decapsulate, Encapsulate, Generate, KeyExport, TryKeyInit};
use ml_kem::ml_kem_768::{DecapsulationKey, EncapsulationKey};
use rand_core::CryptoRng;
use sha2::Sha256;

use crate::provider::ProviderError;

/// ML-KEM-768 encapsulation (public) key size.
pub const MLKEM_PK_LEN: usize = 1184;
/// ML-KEM-768 ciphertext size.
pub const MLKEM_CT_LEN: usize = 1088;
/// ChaCha20-Poly1305 nonce size.
pub const NONCE_LEN: usize = 12;
/// Poly1305 tag size.
pub const TAG_LEN: usize = 16;
/// HKDF salt: the first bytes of the ML-KEM ciphertext.
const SALT_LEN: usize = 16;
/// Smallest well-formed blob: header plus an empty ciphertext and its tag.
pub const MIN_BLOB_LEN: usize = MLKEM_CT_LEN + NONCE_LEN + TAG_LEN;
/// Cap on a decompressed body (R23): a gzip bomb is an error, not an OOM.
pub const MAX_DECOMPRESSED: usize = 64 * 1024 * 1024;

/// The request JSON field carrying the client's per-request response key.
pub const RESPONSE_PK_FIELD: &str = "e2e_response_pk";
/// The request JSON field a client adds to opt into stream protocol v2. It
/// travels inside the encrypted request, so an on-path gateway can neither
/// strip it nor add it (no downgrade); v1 requests omit it and stay
/// byte-for-byte what Chutes' published client sends.
pub const STREAM_VERSION_FIELD: &str = "e2e_stream_version";

const INFO_REQ: &[u8] = b"e2e-req-v1";
const INFO_RESP: &[u8] = b"e2e-resp-v1";
const INFO_STREAM_V1: &[u8] = b"e2e-stream-v1";
const INFO_STREAM_V2: &[u8] = b"e2e-stream-v2";
/// v2 frame AAD prefix; the frame's sequence number (u64, big endian) follows.
pub const V2_AAD_PREFIX: &[u8] = b"e2e-stream-v2";

/// Why a blob, key or attestation was refused. Every variant is a fail-closed
/// integrity failure from the router's point of view.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum E2eeError {
    /// A public key or KEM ciphertext of the wrong size, or not a valid ML-KEM-768 key.
    #[error("invalid ML-KEM-768 {what}")]
    InvalidKey { what: &'static str },
    /// A blob too short to hold `mlkem_ct ‖ nonce ‖ tag`.
    #[error("E2EE blob too short: {len} bytes (minimum {MIN_BLOB_LEN})")]
    BlobTooShort { len: usize },
    /// The AEAD tag did not verify: wrong key or tampered bytes.
    #[error("authentication failed (wrong key or tampered ciphertext)")]
    Decrypt,
    /// The authenticated plaintext is not valid gzip.
    #[error("could not gunzip the decrypted payload: {0}")]
    Decompress(String),
    /// The decompressed payload exceeds the cap (gzip bomb).
    #[error("decompressed payload exceeds {limit} bytes")]
    TooLarge { limit: usize },
    /// The payload is not the JSON the protocol requires.
    #[error("invalid JSON payload: {0}")]
    Json(String),
    /// Base64 that does not decode.
    #[error("invalid base64 in {what}")]
    Base64 { what: &'static str },
    /// The request JSON asks for a stream protocol version this side does not speak.
    #[error("unsupported e2e stream version {0}")]
    UnsupportedVersion(String),
    /// Attestation evidence does not bind the instance key to a trusted vendor (§7b).
    #[error("attestation rejected: {0}")]
    Attestation(#[from] AttestFailure),
}

/// Why an instance's attestation evidence was rejected (§7b). Fail closed
/// on each: the instance is never sent anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AttestFailure {
    #[error("no evidence for this instance")]
    NoEvidence,
    #[error("the gateway lists it in failed_instance_ids")]
    ListedAsFailed,
    #[error("evidence has no quote")]
    MissingQuote,
    #[error("evidence quote is malformed")]
    MalformedQuote,
    #[error("evidence has no certificate")]
    MissingCertificate,
    #[error("evidence certificate is malformed")]
    MalformedCertificate,
    #[error("report data does not bind this fetch's nonce and this instance's key")]
    ReportDataMismatch,
    #[error("report data does not bind the instance's certificate")]
    CertificateMismatch,
    #[error("quote is not signed by the trusted vendor key")]
    BadSignature,
    #[error("the configured vendor key is not a valid ed25519 public key")]
    InvalidVendorKey,
}

impl From<E2eeError> for ProviderError {
    /// Every E2EE failure is an integrity failure: tampering, a wrong or
    /// substituted key, or a broken peer. The router fails closed on it.
    fn from(e: E2eeError) -> Self {
        ProviderError::Integrity(e.to_string())
    }
}

/// The OS random generator, for production. It is `getrandom`'s `SysRng`,
/// which the AEAD crate already builds (its default `getrandom` feature), so
/// this costs no extra dependency. It panics only if the OS RNG fails.
pub fn os_rng() -> impl CryptoRng {
    rand_core::UnwrapErr(chacha20poly1305::aead::common::getrandom::SysRng)
}

/// Which stream protocol a streaming reply uses.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
pub enum StreamVersion {
    /// Chutes' published protocol (the default, for fidelity): key info
    /// `e2e-stream-v1`, empty AAD, inner terminator `data: [DONE]`. Frames
    /// carry no sequence numbers, so an on-path gateway can drop, reorder or
    /// replay frames undetected (residual R25).
    #[default]
    V1,
    /// Hardened protocol (opt-in; the client asks for it with
    /// `"e2e_stream_version": 2` inside the encrypted request):
    ///
    /// * stream key: HKDF-SHA256(ikm = shared secret, salt = mlkem_ct[0..16],
    ///   info = `e2e-stream-v2`) — a v1 frame never opens under a v2 key;
    /// * frame `i` (0-based, counting every `e2e` frame including the
    ///   terminator) is sealed with AAD = `b"e2e-stream-v2" ‖ i as u64 BE`;
    ///   the wire framing is unchanged (`{"e2e": b64(nonce ‖ ct ‖ tag)}`);
    /// * the inner terminator is the frame whose plaintext is
    ///   `data: [DONE] <n>`, where `<n>` (decimal) is the number of frames
    ///   sealed before it, i.e. its own sequence number.
    ///
    /// The decoder opens frame `i` with its own expected counter, so a
    /// dropped, reordered or replayed frame fails authentication, and a
    /// stream cut before the committed terminator is a truncation.
    V2,
}

impl StreamVersion {
    fn info(self) -> &'static [u8] {
        match self {
            StreamVersion::V1 => INFO_STREAM_V1,
            StreamVersion::V2 => INFO_STREAM_V2,
        }
    }

    /// Client side: marks a request JSON object as asking for this version.
    /// v1 adds nothing (the request stays exactly what Chutes expects).
    pub fn tag_request(self, request: &mut serde_json::Map<String, serde_json::Value>) {
        if self == StreamVersion::V2 {
            request.insert(
                STREAM_VERSION_FIELD.to_owned(),
                serde_json::Value::from(2u8),
            );
        }
    }

    /// Server side: the version a decrypted request asks for (absent → v1).
    pub fn from_request(request: &serde_json::Value) -> Result<Self, E2eeError> {
        match request.get(STREAM_VERSION_FIELD) {
            None => Ok(StreamVersion::V1),
            Some(v) => match v.as_u64() {
                Some(1) => Ok(StreamVersion::V1),
                Some(2) => Ok(StreamVersion::V2),
                _ => Err(E2eeError::UnsupportedVersion(v.to_string())),
            },
        }
    }
}

// ---------------------------------------------------------------- primitives

fn derive_cipher(shared_secret: &[u8], mlkem_ct: &[u8], info: &[u8]) -> ChaCha20Poly1305 {
    let hk = Hkdf::<Sha256>::new(Some(&mlkem_ct[..SALT_LEN]), shared_secret);
    let mut okm = [0u8; 32];
    hk.expand(info, &mut okm)
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    let cipher = ChaCha20Poly1305::new(&okm.into());
    okm.fill(0);
    cipher
}

fn parse_encapsulation_key(pk: &[u8]) -> Result<EncapsulationKey, E2eeError> {
    if pk.len() != MLKEM_PK_LEN {
        return Err(E2eeError::InvalidKey {
            what: "public key (expected 1184 bytes)",
        });
    }
    EncapsulationKey::new_from_slice(pk).map_err(|_| E2eeError::InvalidKey { what: "public key" })
}

fn random_nonce<R: CryptoRng + ?Sized>(rng: &mut R) -> [u8; NONCE_LEN] {
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill_bytes(&mut nonce);
    nonce
}

/// Encrypts `buf[start..]` in place under `nonce` and appends the tag.
fn seal_tail(
    cipher: &ChaCha20Poly1305,
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    buf: &mut Vec<u8>,
    start: usize,
) {
    let tag = cipher
        .encrypt_inout_detached(&(*nonce).into(), aad, (&mut buf[start..]).into())
        .expect("ChaCha20-Poly1305 encrypts any message below 256 GiB");
    buf.extend_from_slice(&tag);
}

/// Opens `nonce ‖ ct ‖ tag` in place; on success `buf` holds the plaintext
/// at `buf[NONCE_LEN..]` (its length is returned).
fn open_in_place(
    cipher: &ChaCha20Poly1305,
    aad: &[u8],
    buf: &mut [u8],
) -> Result<usize, E2eeError> {
    if buf.len() < NONCE_LEN + TAG_LEN {
        return Err(E2eeError::Decrypt);
    }
    let ct_end = buf.len() - TAG_LEN;
    let (head, tag) = buf.split_at_mut(ct_end);
    let (nonce, ct) = head.split_at_mut(NONCE_LEN);
    let nonce = chacha20poly1305::Nonce::try_from(&*nonce).map_err(|_| E2eeError::Decrypt)?;
    let tag = chacha20poly1305::Tag::try_from(&*tag).map_err(|_| E2eeError::Decrypt)?;
    cipher
        .decrypt_inout_detached(&nonce, aad, ct.into(), &tag)
        .map_err(|_| E2eeError::Decrypt)?;
    Ok(ct.len())
}

/// gzip-compresses `data` (helper for callers building payloads, e.g. a
/// simulated instance's responses or a fault's gzip bomb).
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() / 2 + 64);
    gzip_into(&mut out, |w| w.write_all(data)).expect("writing to a Vec cannot fail");
    out
}

/// Gunzips with a decompressed-size cap: reading stops one byte past the cap,
/// so at most `cap + 1` bytes are ever allocated.
pub fn gunzip_capped(data: &[u8], cap: usize) -> Result<Vec<u8>, E2eeError> {
    let mut out = Vec::with_capacity(data.len().saturating_mul(4).min(cap));
    let limit = u64::try_from(cap).unwrap_or(u64::MAX).saturating_add(1);
    MultiGzDecoder::new(data)
        .take(limit)
        .read_to_end(&mut out)
        .map_err(|e| E2eeError::Decompress(e.to_string()))?;
    if out.len() > cap {
        return Err(E2eeError::TooLarge { limit: cap });
    }
    Ok(out)
}

/// Seals `payload` to `recipient`: `mlkem_ct ‖ nonce ‖ ct ‖ tag`, the payload
/// produced by `write` straight into the blob (one allocation).
fn seal_blob<R: CryptoRng + ?Sized>(
    rng: &mut R,
    recipient: &EncapsulationKey,
    info: &[u8],
    size_hint: usize,
    write: impl FnOnce(&mut Vec<u8>) -> Result<(), E2eeError>,
) -> Result<Vec<u8>, E2eeError> {
    let (ct, shared) = recipient.encapsulate_with_rng(rng);
    let nonce = random_nonce(rng);
    let cipher = derive_cipher(&shared, &ct, info);
    let mut blob = Vec::with_capacity(MIN_BLOB_LEN + size_hint);
    blob.extend_from_slice(&ct);
    blob.extend_from_slice(&nonce);
    write(&mut blob)?;
    seal_tail(&cipher, &nonce, &[], &mut blob, MLKEM_CT_LEN + NONCE_LEN);
    Ok(blob)
}

/// The gzip member header `flate2::write::GzEncoder` writes at
/// `Compression::default()`: magic, deflate, no flags, no mtime, XFL 0, OS
/// "unknown" (so a payload is byte-for-byte what `GzEncoder` would make).
const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];

thread_local! {
    /// One deflate compressor per thread, reset between payloads: building
    /// one allocates and zeroes ~300 KiB of tables, more than compressing a
    /// chat request costs. A reset compressor produces the same bytes as a
    /// new one.
    static DEFLATE: std::cell::RefCell<Option<flate2::write::DeflateEncoder<Vec<u8>>>> =
        const { std::cell::RefCell::new(None) };
}

/// Appends one gzip member holding what `write` writes to `blob`.
fn gzip_into(
    blob: &mut Vec<u8>,
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<(), E2eeError> {
    DEFLATE.with(|slot| {
        let mut slot = slot.borrow_mut();
        let enc = slot.get_or_insert_with(|| {
            flate2::write::DeflateEncoder::new(Vec::new(), Compression::default())
        });
        blob.extend_from_slice(&GZIP_HEADER);
        // `reset` ends the (empty) stream into the spare Vec, resets the
        // compressor and writes into `blob` from here on.
        enc.reset(std::mem::take(blob))
            .expect("writing to a Vec cannot fail");
        let mut crc = flate2::CrcWriter::new(&mut *enc);
        let written = write(&mut crc);
        let (sum, amount) = (crc.crc().sum(), crc.crc().amount());
        enc.try_finish().expect("writing to a Vec cannot fail");
        *blob = enc.reset(Vec::new()).expect("writing to a Vec cannot fail");
        written.map_err(|e| E2eeError::Json(e.to_string()))?;
        blob.extend_from_slice(&sum.to_le_bytes());
        blob.extend_from_slice(&amount.to_le_bytes());
        Ok(())
    })
}

/// Opens a blob addressed to `dk`; returns the decrypted (still compressed) payload.
fn open_blob(dk: &DecapsulationKey, info: &[u8], blob: &[u8]) -> Result<Vec<u8>, E2eeError> {
    if blob.len() < MIN_BLOB_LEN {
        return Err(E2eeError::BlobTooShort { len: blob.len() });
    }
    let (ct, rest) = blob.split_at(MLKEM_CT_LEN);
    let (nonce, rest) = rest.split_at(NONCE_LEN);
    let (body, tag) = rest.split_at(rest.len() - TAG_LEN);
    let shared = dk
        .decapsulate_slice(ct)
        .map_err(|_| E2eeError::InvalidKey { what: "ciphertext" })?;
    let cipher = derive_cipher(&shared, ct, info);
    let nonce = chacha20poly1305::Nonce::try_from(nonce).map_err(|_| E2eeError::Decrypt)?;
    let tag = chacha20poly1305::Tag::try_from(tag).map_err(|_| E2eeError::Decrypt)?;
    let mut buf = body.to_vec();
    cipher
        .decrypt_inout_detached(&nonce, &[], buf.as_mut_slice().into(), &tag)
        .map_err(|_| E2eeError::Decrypt)?;
    Ok(buf)
}

// -------------------------------------------------------------------- client

/// The client's per-request ML-KEM-768 decapsulation key: opens the reply
/// (non-streaming via [`ResponseKey::open_response`], streaming via
/// [`crate::chutes::stream::StreamDecoder`]).
pub struct ResponseKey {
    dk: DecapsulationKey,
}

impl std::fmt::Debug for ResponseKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResponseKey(..)")
    }
}

impl ResponseKey {
    /// A fresh response key (normally made by [`seal_request`]).
    pub fn generate<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
        ResponseKey {
            dk: DecapsulationKey::generate_from_rng(rng),
        }
    }

    /// The encapsulation key sent as `e2e_response_pk` (1184 bytes).
    pub fn public_key_bytes(&self) -> [u8; MLKEM_PK_LEN] {
        let mut out = [0u8; MLKEM_PK_LEN];
        out.copy_from_slice(&self.dk.encapsulation_key().to_bytes());
        out
    }

    /// Opens a non-streaming reply blob (info `e2e-resp-v1`) and gunzips it
    /// with the 64 MiB cap. Returns the JSON bytes.
    pub fn open_response(&self, blob: &[u8]) -> Result<Vec<u8>, E2eeError> {
        let gz = open_blob(&self.dk, INFO_RESP, blob)?;
        gunzip_capped(&gz, MAX_DECOMPRESSED)
    }

    /// Keys a stream from the `e2e_init` ciphertext.
    pub(crate) fn stream_cipher(
        &self,
        mlkem_ct: &[u8],
        version: StreamVersion,
    ) -> Result<ChaCha20Poly1305, E2eeError> {
        if mlkem_ct.len() != MLKEM_CT_LEN {
            return Err(E2eeError::InvalidKey {
                what: "stream init ciphertext (expected 1088 bytes)",
            });
        }
        let shared = self
            .dk
            .decapsulate_slice(mlkem_ct)
            .map_err(|_| E2eeError::InvalidKey { what: "ciphertext" })?;
        Ok(derive_cipher(&shared, mlkem_ct, version.info()))
    }
}

/// An instance's listed ML-KEM-768 encapsulation key, parsed once: FIPS
/// 203's input check (decode, re-encode, compare) and the key's hash are done
/// when it is listed, not again for every request sealed to it. A key that
/// fails the check keeps its error, reported when a request is sealed to it.
pub struct SealingKey(Result<EncapsulationKey, E2eeError>);

impl std::fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_ok() {
            "SealingKey(..)"
        } else {
            "SealingKey(invalid)"
        })
    }
}

impl SealingKey {
    /// Parses `instance_pubkey` (1184 bytes).
    pub fn new(instance_pubkey: &[u8]) -> Self {
        SealingKey(parse_encapsulation_key(instance_pubkey))
    }
}

/// Client: seals a request to an instance (1184-byte ML-KEM-768 key). Adds
/// `e2e_response_pk` (base64 of a fresh per-request ML-KEM-768 key) to the
/// JSON object, gzips it, and returns the blob and the key that opens the reply.
pub fn seal_request<R: CryptoRng + ?Sized>(
    rng: &mut R,
    instance_pubkey: &[u8],
    request_json: serde_json::Value,
) -> Result<(Vec<u8>, ResponseKey), E2eeError> {
    seal_request_to(rng, &SealingKey::new(instance_pubkey), request_json)
}

/// [`seal_request`] to an already parsed instance key.
pub fn seal_request_to<R: CryptoRng + ?Sized>(
    rng: &mut R,
    instance: &SealingKey,
    mut request_json: serde_json::Value,
) -> Result<(Vec<u8>, ResponseKey), E2eeError> {
    let instance = instance.0.as_ref().map_err(Clone::clone)?;
    let obj = request_json
        .as_object_mut()
        .ok_or_else(|| E2eeError::Json("request must be a JSON object".into()))?;
    let response_key = ResponseKey::generate(rng);
    obj.insert(
        RESPONSE_PK_FIELD.to_owned(),
        serde_json::Value::String(B64.encode(response_key.public_key_bytes())),
    );
    let blob = seal_blob(rng, instance, INFO_REQ, 2048, |blob| {
        gzip_into(blob, |enc| {
            serde_json::to_writer(enc, &request_json).map_err(std::io::Error::other)
        })
    })?;
    Ok((blob, response_key))
}

// -------------------------------------------------------------------- server

/// A (simulated) Chutes instance's ML-KEM-768 keypair.
pub struct InstanceKeypair {
    dk: DecapsulationKey,
    pk: [u8; MLKEM_PK_LEN],
}

impl std::fmt::Debug for InstanceKeypair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InstanceKeypair(..)")
    }
}

impl InstanceKeypair {
    /// Deterministic keypair from a 64-byte ML-KEM seed (`d ‖ z`).
    pub fn from_seed(seed: [u8; 64]) -> Self {
        Self::from_dk(DecapsulationKey::from_seed(seed.into()))
    }

    /// A keypair drawn from `rng` (deterministic for a seeded RNG).
    pub fn generate<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let mut seed = [0u8; 64];
        rng.fill_bytes(&mut seed);
        let kp = Self::from_seed(seed);
        seed.fill(0);
        kp
    }

    fn from_dk(dk: DecapsulationKey) -> Self {
        let mut pk = [0u8; MLKEM_PK_LEN];
        pk.copy_from_slice(&dk.encapsulation_key().to_bytes());
        InstanceKeypair { dk, pk }
    }

    /// The `e2e_pubkey` the instance publishes (1184 bytes).
    pub fn public_key_bytes(&self) -> &[u8; MLKEM_PK_LEN] {
        &self.pk
    }

    /// Opens a request blob. Returns the request JSON with `e2e_response_pk`
    /// removed (what the instance forwards to its model) and that key's bytes.
    pub fn open_request(&self, blob: &[u8]) -> Result<(serde_json::Value, Vec<u8>), E2eeError> {
        let gz = open_blob(&self.dk, INFO_REQ, blob)?;
        let json = gunzip_capped(&gz, MAX_DECOMPRESSED)?;
        let mut value: serde_json::Value =
            serde_json::from_slice(&json).map_err(|e| E2eeError::Json(e.to_string()))?;
        let obj = value
            .as_object_mut()
            .ok_or_else(|| E2eeError::Json("request is not a JSON object".into()))?;
        let pk_b64 = match obj.remove(RESPONSE_PK_FIELD) {
            Some(serde_json::Value::String(s)) => s,
            _ => {
                return Err(E2eeError::Json(format!(
                    "missing string field {RESPONSE_PK_FIELD}"
                )))
            }
        };
        let pk = B64.decode(pk_b64).map_err(|_| E2eeError::Base64 {
            what: RESPONSE_PK_FIELD,
        })?;
        if pk.len() != MLKEM_PK_LEN {
            return Err(E2eeError::InvalidKey {
                what: "response public key (expected 1184 bytes)",
            });
        }
        Ok((value, pk))
    }
}

/// Server: seals a non-streaming reply (JSON bytes) to the client's
/// `e2e_response_pk` (info `e2e-resp-v1`, gzip inside).
pub fn seal_response<R: CryptoRng + ?Sized>(
    rng: &mut R,
    response_pk: &[u8],
    json: &[u8],
) -> Result<Vec<u8>, E2eeError> {
    let recipient = parse_encapsulation_key(response_pk)?;
    seal_blob(rng, &recipient, INFO_RESP, json.len() / 2 + 64, |blob| {
        gzip_into(blob, |enc| enc.write_all(json))
    })
}

/// Server, for fault injection: seals an already-compressed payload as a
/// reply (e.g. a gzip bomb, or bytes that are not gzip at all).
pub fn seal_response_raw<R: CryptoRng + ?Sized>(
    rng: &mut R,
    response_pk: &[u8],
    payload: &[u8],
) -> Result<Vec<u8>, E2eeError> {
    let recipient = parse_encapsulation_key(response_pk)?;
    seal_blob(rng, &recipient, INFO_RESP, payload.len(), |blob| {
        blob.extend_from_slice(payload);
        Ok(())
    })
}

/// Server side of a streaming reply: one ML-KEM encapsulation keys the
/// stream, then each raw OpenAI SSE line is sealed as one frame.
pub struct StreamSealer {
    cipher: ChaCha20Poly1305,
    version: StreamVersion,
    seq: u64,
    scratch: Vec<u8>,
}

impl std::fmt::Debug for StreamSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamSealer")
            .field("version", &self.version)
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

impl StreamSealer {
    /// Returns the `e2e_init` payload (base64 of the ML-KEM ciphertext) and the sealer.
    pub fn new<R: CryptoRng + ?Sized>(
        rng: &mut R,
        response_pk: &[u8],
        version: StreamVersion,
    ) -> Result<(String, StreamSealer), E2eeError> {
        let recipient = parse_encapsulation_key(response_pk)?;
        let (ct, shared) = recipient.encapsulate_with_rng(rng);
        let sealer = StreamSealer {
            cipher: derive_cipher(&shared, &ct, version.info()),
            version,
            seq: 0,
            scratch: Vec::new(),
        };
        Ok((B64.encode(ct), sealer))
    }

    pub fn version(&self) -> StreamVersion {
        self.version
    }

    /// Frames sealed so far (the next frame's sequence number).
    pub fn frames_sealed(&self) -> u64 {
        self.seq
    }

    /// Seals one raw SSE line (e.g. `data: {...}`); returns the `e2e` payload
    /// `base64(nonce ‖ ct ‖ tag)`.
    pub fn seal_frame<R: CryptoRng + ?Sized>(
        &mut self,
        rng: &mut R,
        raw_sse_line: &[u8],
    ) -> String {
        let nonce = random_nonce(rng);
        let aad = v2_aad(self.seq);
        let aad: &[u8] = match self.version {
            StreamVersion::V1 => &[],
            StreamVersion::V2 => &aad,
        };
        self.scratch.clear();
        self.scratch.extend_from_slice(&nonce);
        self.scratch.extend_from_slice(raw_sse_line);
        seal_tail(&self.cipher, &nonce, aad, &mut self.scratch, NONCE_LEN);
        self.seq += 1;
        B64.encode(&self.scratch)
    }

    /// The inner terminator line for the next frame: `data: [DONE]` under v1,
    /// `data: [DONE] <n>` (n = frames sealed before it) under v2.
    pub fn done_line(&self) -> String {
        match self.version {
            StreamVersion::V1 => "data: [DONE]".to_owned(),
            StreamVersion::V2 => format!("data: [DONE] {}", self.seq),
        }
    }

    /// Seals the inner (authenticated) `[DONE]` terminator.
    pub fn seal_done<R: CryptoRng + ?Sized>(&mut self, rng: &mut R) -> String {
        let line = self.done_line();
        self.seal_frame(rng, line.as_bytes())
    }
}

/// The v2 AAD for frame `seq`.
pub(crate) fn v2_aad(seq: u64) -> [u8; V2_AAD_PREFIX.len() + 8] {
    let mut aad = [0u8; V2_AAD_PREFIX.len() + 8];
    aad[..V2_AAD_PREFIX.len()].copy_from_slice(V2_AAD_PREFIX);
    aad[V2_AAD_PREFIX.len()..].copy_from_slice(&seq.to_be_bytes());
    aad
}

/// Opens one `e2e` frame's decoded bytes in place (client side, used by the
/// stream decoder); the plaintext is `frame[NONCE_LEN..NONCE_LEN + n]`.
pub(crate) fn open_frame_in_place(
    cipher: &ChaCha20Poly1305,
    version: StreamVersion,
    seq: u64,
    frame: &mut [u8],
) -> Result<usize, E2eeError> {
    match version {
        StreamVersion::V1 => open_in_place(cipher, &[], frame),
        StreamVersion::V2 => open_in_place(cipher, &v2_aad(seq), frame),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::GzEncoder;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;
    use serde_json::json;

    fn rng(seed: u64) -> ChaCha20Rng {
        ChaCha20Rng::seed_from_u64(seed)
    }

    fn instance(tag: u8) -> InstanceKeypair {
        InstanceKeypair::from_seed([tag; 64])
    }

    #[test]
    fn sizes_match_the_wire() {
        let inst = instance(1);
        assert_eq!(inst.public_key_bytes().len(), MLKEM_PK_LEN);
        let (blob, key) =
            seal_request(&mut rng(1), inst.public_key_bytes(), json!({"model": "m"})).unwrap();
        assert_eq!(key.public_key_bytes().len(), 1184);
        // The KEM ciphertext is the first 1088 bytes; nonce 12; tag 16.
        let (_req, pk) = inst.open_request(&blob).unwrap();
        let reply = seal_response(&mut rng(2), &pk, b"{}").unwrap();
        let (init_b64, _) = StreamSealer::new(&mut rng(3), &pk, StreamVersion::V1).unwrap();
        assert_eq!(B64.decode(init_b64).unwrap().len(), MLKEM_CT_LEN);
        assert_eq!(
            reply.len(),
            MLKEM_CT_LEN + NONCE_LEN + gzip(b"{}").len() + TAG_LEN
        );
    }

    #[test]
    fn request_response_round_trip() {
        let inst = instance(7);
        let req = json!({"model": "zai-org/GLM-5.1-TEE", "messages": [{"role": "user", "content": "hi"}]});
        let (blob, key) = seal_request(&mut rng(1), inst.public_key_bytes(), req.clone()).unwrap();
        let (opened, pk) = inst.open_request(&blob).unwrap();
        assert_eq!(
            opened, req,
            "e2e_response_pk is stripped, the rest is intact"
        );
        assert_eq!(pk, key.public_key_bytes());

        let body = br#"{"id":"x","choices":[{"message":{"content":"hello"}}]}"#;
        let reply = seal_response(&mut rng(2), &pk, body).unwrap();
        assert_eq!(key.open_response(&reply).unwrap(), body);
    }

    #[test]
    fn request_plaintext_is_gzipped_json_with_response_pk() {
        // Open the blob by hand, following §7 literally, without InstanceKeypair::open_request.
        let inst = instance(9);
        let (blob, key) =
            seal_request(&mut rng(5), inst.public_key_bytes(), json!({"a": 1})).unwrap();
        let gz = open_blob(&inst.dk, b"e2e-req-v1", &blob).unwrap();
        let v: serde_json::Value =
            serde_json::from_slice(&gunzip_capped(&gz, 1 << 20).unwrap()).unwrap();
        assert_eq!(v["a"], 1);
        assert_eq!(
            B64.decode(v["e2e_response_pk"].as_str().unwrap()).unwrap(),
            key.public_key_bytes()
        );
        // The wrong info string does not open it.
        assert_eq!(
            open_blob(&inst.dk, b"e2e-resp-v1", &blob).unwrap_err(),
            E2eeError::Decrypt
        );
    }

    #[test]
    fn same_seed_gives_identical_blobs() {
        let inst = instance(3);
        let req = json!({"model": "m", "stream": false});
        let (a, ka) = seal_request(&mut rng(42), inst.public_key_bytes(), req.clone()).unwrap();
        let (b, kb) = seal_request(&mut rng(42), inst.public_key_bytes(), req.clone()).unwrap();
        let (c, _) = seal_request(&mut rng(43), inst.public_key_bytes(), req).unwrap();
        assert_eq!(a, b);
        assert_eq!(ka.public_key_bytes(), kb.public_key_bytes());
        assert_ne!(a, c);
        let pk = ka.public_key_bytes();
        assert_eq!(
            seal_response(&mut rng(1), &pk, b"{}").unwrap(),
            seal_response(&mut rng(1), &pk, b"{}").unwrap()
        );
        let (ia, mut sa) = StreamSealer::new(&mut rng(9), &pk, StreamVersion::V2).unwrap();
        let (ib, mut sb) = StreamSealer::new(&mut rng(9), &pk, StreamVersion::V2).unwrap();
        assert_eq!(ia, ib);
        assert_eq!(
            sa.seal_frame(&mut rng(1), b"data: {}"),
            sb.seal_frame(&mut rng(1), b"data: {}")
        );
        // Instance keys are deterministic too.
        assert_eq!(
            InstanceKeypair::generate(&mut rng(5)).public_key_bytes(),
            InstanceKeypair::generate(&mut rng(5)).public_key_bytes()
        );
    }

    #[test]
    fn r23_wrong_instance_key_fails() {
        let right = instance(1);
        let wrong = instance(2);
        let (blob, _) =
            seal_request(&mut rng(1), wrong.public_key_bytes(), json!({"m": 1})).unwrap();
        assert_eq!(right.open_request(&blob).unwrap_err(), E2eeError::Decrypt);

        // A reply sealed to someone else's response key does not open either.
        let (blob, key) =
            seal_request(&mut rng(1), right.public_key_bytes(), json!({"m": 1})).unwrap();
        right.open_request(&blob).unwrap();
        let other = ResponseKey::generate(&mut rng(99));
        let reply = seal_response(&mut rng(2), &other.public_key_bytes(), b"{}").unwrap();
        let err = key.open_response(&reply).unwrap_err();
        assert_eq!(err, E2eeError::Decrypt);
        assert!(matches!(
            ProviderError::from(err),
            ProviderError::Integrity(_)
        ));

        // Malformed keys are refused up front.
        assert!(matches!(
            seal_request(&mut rng(1), &[0u8; 100], json!({})),
            Err(E2eeError::InvalidKey { .. })
        ));
    }

    #[test]
    fn tampered_blobs_are_rejected() {
        let inst = instance(4);
        let (blob, _) =
            seal_request(&mut rng(1), inst.public_key_bytes(), json!({"m": 1})).unwrap();
        for i in [0, MLKEM_CT_LEN, MLKEM_CT_LEN + NONCE_LEN, blob.len() - 1] {
            let mut t = blob.clone();
            t[i] ^= 1;
            assert!(inst.open_request(&t).is_err(), "flip at {i}");
        }
        assert_eq!(
            inst.open_request(&blob[..MIN_BLOB_LEN - 1]).unwrap_err(),
            E2eeError::BlobTooShort {
                len: MIN_BLOB_LEN - 1
            }
        );
    }

    #[test]
    fn r23_reused_compressor_writes_what_gz_encoder_writes() {
        let payloads: [&[u8]; 4] = [
            b"",
            b"{}",
            br#"{"model":"m","messages":[{"role":"user","content":"hello"}]}"#,
            &[7u8; 100_000],
        ];
        // Twice over, so every payload is also compressed by a reset compressor.
        for data in payloads.iter().chain(payloads.iter()) {
            let mut reference = GzEncoder::new(Vec::new(), Compression::default());
            reference.write_all(data).unwrap();
            let reference = reference.finish().unwrap();
            assert_eq!(gzip(data), reference, "{} bytes", data.len());
            assert_eq!(gunzip_capped(&gzip(data), data.len()).unwrap(), *data);
        }
        // Appended after what the blob already holds, as `seal_blob` does.
        let mut blob = b"prefix".to_vec();
        gzip_into(&mut blob, |w| w.write_all(b"{}")).unwrap();
        assert_eq!(&blob[..6], b"prefix");
        assert_eq!(blob[6..], gzip(b"{}"));
    }

    #[test]
    fn r23_gzip_bomb_is_rejected() {
        // ~64 MiB + 1 KiB of zeros compresses to ~64 KiB: authenticated, but over the cap.
        let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..64 {
            enc.write_all(&zeros).unwrap();
        }
        enc.write_all(&zeros[..1024]).unwrap();
        let bomb = enc.finish().unwrap();
        assert!(bomb.len() < 1 << 20);

        let key = ResponseKey::generate(&mut rng(1));
        let reply = seal_response_raw(&mut rng(2), &key.public_key_bytes(), &bomb).unwrap();
        let err = key.open_response(&reply).unwrap_err();
        assert_eq!(
            err,
            E2eeError::TooLarge {
                limit: MAX_DECOMPRESSED
            }
        );
        assert!(matches!(
            ProviderError::from(err),
            ProviderError::Integrity(_)
        ));

        // Exactly at the cap is fine (tested with a small cap to stay fast).
        assert_eq!(
            gunzip_capped(&gzip(&[7u8; 1000]), 1000).unwrap().len(),
            1000
        );
        assert!(matches!(
            gunzip_capped(&gzip(&[7u8; 1001]), 1000),
            Err(E2eeError::TooLarge { .. })
        ));
        // Not gzip at all.
        let reply = seal_response_raw(&mut rng(3), &key.public_key_bytes(), b"not gzip").unwrap();
        assert!(matches!(
            key.open_response(&reply),
            Err(E2eeError::Decompress(_))
        ));
    }

    #[test]
    fn stream_versions_are_tagged_inside_the_request() {
        let mut obj = serde_json::Map::new();
        StreamVersion::V1.tag_request(&mut obj);
        assert!(obj.is_empty(), "v1 requests are exactly Chutes'");
        StreamVersion::V2.tag_request(&mut obj);
        let v = serde_json::Value::Object(obj);
        assert_eq!(StreamVersion::from_request(&v).unwrap(), StreamVersion::V2);
        assert_eq!(
            StreamVersion::from_request(&json!({})).unwrap(),
            StreamVersion::V1
        );
        assert!(StreamVersion::from_request(&json!({"e2e_stream_version": 3})).is_err());

        let inst = instance(5);
        let (blob, _) = seal_request(&mut rng(1), inst.public_key_bytes(), v).unwrap();
        let (req, _) = inst.open_request(&blob).unwrap();
        assert_eq!(
            StreamVersion::from_request(&req).unwrap(),
            StreamVersion::V2
        );
    }

    #[test]
    fn os_rng_works() {
        let mut r = os_rng();
        let a = ResponseKey::generate(&mut r).public_key_bytes();
        let b = ResponseKey::generate(&mut r).public_key_bytes();
        assert_ne!(a, b);
    }
}

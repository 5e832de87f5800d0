//! The instance side of an invocation: check and spend the nonce, open the
//! request, answer like a NEAR backend would and seal the reply; and the
//! evidence an honest instance produces for a fetch nonce (§7b).

use std::io::Write;
use std::sync::OnceLock;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use bytes::Bytes;
use flate2::write::GzEncoder;
use flate2::Compression;
use http::StatusCode;
use serde_json::{json, Value};
use tiersim_engine::chutes::attest::expected_report_data;
use tiersim_engine::chutes::e2ee::{
    seal_response, seal_response_raw, StreamSealer, StreamVersion, MAX_DECOMPRESSED,
};
use tiersim_engine::chutes::stream::error_event;
use tiersim_engine::chutes::stream::{frame_event, init_event, usage_event, OUTER_DONE_EVENT};
use tiersim_engine::chutes::wire::{EvidenceEntry, EvidenceList};

use super::gateway::Gateway;
use super::tamper::{self, Event};
use super::{Chute, Instance, Invocation, World};
use crate::fault::Fault;
use crate::hosts::{echo_of, last_user_message, words, Step, CREATED_BASE};

/// What every instance of `chute` attests for `nonce`: a quote over
/// `SHA256(nonce ‖ e2e_pubkey) ‖ SHA256(SPKI(certificate))` signed by the
/// simulated vendor.
pub(super) fn evidence(world: &World, chute: &Chute, nonce: &str) -> EvidenceList {
    EvidenceList {
        evidence: chute
            .instances
            .iter()
            .map(|inst| entry(world, inst, nonce, inst.key.public_key_b64()))
            .collect(),
        failed_instance_ids: Vec::new(),
    }
}

/// `inst`'s evidence binding `nonce` and the key `pubkey_b64`.
pub(super) fn entry(
    world: &World,
    inst: &Instance,
    nonce: &str,
    pubkey_b64: &str,
) -> EvidenceEntry {
    let report = expected_report_data(nonce, pubkey_b64, &inst.certificate);
    EvidenceEntry {
        instance_id: inst.id.clone(),
        quote: Some(B64.encode(world.vendor().quote(&report))),
        gpu_evidence: Some(json!({ "simulated": true })),
        certificate: Some(B64.encode(&inst.certificate)),
    }
}

/// An instance-side rejection: status, `error.code`, message.
pub(super) type Rejection = (StatusCode, &'static str, String);

impl Gateway {
    /// The instance's side: check and spend the nonce, open the request,
    /// build the reply (`(content type, body steps)`). Synchronous: the boot
    /// lock is never held across an await.
    pub(super) fn answer(
        &self,
        fault: Option<&Fault>,
        chute: &Chute,
        instance: &Instance,
        record: &mut Invocation,
        blob: &[u8],
    ) -> Result<(&'static str, Vec<Step>), Rejection> {
        let mut boot = self.boot();
        boot.nonces.prune(tokio::time::Instant::now());
        let live = boot.nonces.len();
        self.record_nonces(live);
        // A refused nonce is a 400 whose text names the nonce and why, as
        // Chutes answers it: the router reads it as a stale target (R39).
        match boot.nonces.get_mut(&record.nonce) {
            // Never issued, or expired (and so forgotten).
            None => {
                return Err((
                    StatusCode::BAD_REQUEST,
                    "invalid_nonce",
                    "nonce expired or never issued".into(),
                ))
            }
            Some(n) if n.used => {
                return Err((
                    StatusCode::BAD_REQUEST,
                    "nonce_reused",
                    "nonce already used".into(),
                ))
            }
            Some(n) if n.chute_id != record.chute_id || n.instance_id != record.instance_id => {
                return Err((
                    StatusCode::BAD_REQUEST,
                    "invalid_nonce",
                    "invalid nonce: issued for another instance".into(),
                ))
            }
            Some(n) => n.used = true,
        }

        let (request, response_pk) = instance.key.keypair().open_request(blob).map_err(|e| {
            (
                StatusCode::BAD_REQUEST,
                "e2e_decrypt_failed",
                format!("could not open the request: {e}"),
            )
        })?;
        self.faults.note_received(&self.host, &request);
        let model = request["model"].as_str().unwrap_or_default().to_string();
        record.model = Some(model.clone());
        if model != chute.slug {
            return Err((
                StatusCode::BAD_REQUEST,
                "model_mismatch",
                format!("model `{model}` is not this chute's"),
            ));
        }

        boot.served += 1;
        let n = boot.served;
        let id = format!("chatcmpl-{}-{n}", self.host);
        let created = CREATED_BASE + n;
        let prompt = last_user_message(&request);
        let content = format!("chutes says: {}", echo_of(&prompt));
        let reply = chute.reply;
        let usage = json!({
            "prompt_tokens": words(&prompt),
            "completion_tokens": words(&content),
            "total_tokens": words(&prompt) + words(&content),
        });
        let rng = &mut boot.rng;

        if !record.stream {
            let text = if reply.think {
                format!("\n<think>{THOUGHT}</think>\n\n{content}")
            } else {
                content.clone()
            };
            let mut body = json!({
                "id": id,
                "object": "chat.completion",
                "created": created,
                "model": chute.slug,
                "choices": [{
                    "index": 0,
                    "message": { "role": "assistant", "content": text },
                    "finish_reason": "stop",
                }],
                "usage": usage,
            });
            if reply.extra_fields {
                add_extra_fields(&mut body, "message");
            }
            let sealed = match fault {
                Some(Fault::GzipBomb) => seal_response_raw(rng, &response_pk, gzip_bomb()),
                _ => seal_response(rng, &response_pk, body.to_string().as_bytes()),
            };
            let sealed = sealed.map_err(|e| {
                (
                    StatusCode::BAD_REQUEST,
                    "e2e_encrypt_failed",
                    format!("could not seal the reply: {e}"),
                )
            })?;
            return Ok((
                "application/octet-stream",
                vec![Step::Data(Bytes::from(sealed))],
            ));
        }

        // A v1 chute speaks v1 whatever is asked; a v2 chute honours the ask.
        let version = match chute.version {
            StreamVersion::V1 => StreamVersion::V1,
            StreamVersion::V2 => StreamVersion::from_request(&request).map_err(|e| {
                (
                    StatusCode::BAD_REQUEST,
                    "unsupported_stream_version",
                    e.to_string(),
                )
            })?,
        };
        record.stream_version = Some(version);

        if matches!(fault, Some(Fault::E2eError)) {
            // The instance fails before keying the stream.
            let events = [
                error_event("instance failed to process the request"),
                OUTER_DONE_EVENT.to_string(),
            ];
            return Ok(("text/event-stream", events.map(tamper::data).into()));
        }

        // Role, three content pieces, the finish: five raw SSE lines (and
        // a final usage chunk under `reply = ["usage"]`, when asked).
        let chunk = |delta: Value, finish: Value| {
            json!({
                "id": id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": chute.slug,
                "choices": [{ "index": 0, "delta": delta, "finish_reason": finish }],
            })
        };
        let mut chunks = vec![chunk(
            json!({ "role": "assistant", "content": "" }),
            Value::Null,
        )];
        let pieces = if reply.think {
            // Both tags split across chunks (R58).
            [
                "<thi".to_string(),
                format!("nk>{THOUGHT}</thi"),
                format!("nk>\n\n{content}"),
            ]
        } else {
            [
                "chutes".to_string(),
                " says:".into(),
                format!(" {}", echo_of(&prompt)),
            ]
        };
        for piece in pieces {
            let mut c = chunk(json!({ "content": piece }), Value::Null);
            if reply.usage {
                c["usage"] = usage.clone();
            }
            if reply.extra_fields {
                add_extra_fields(&mut c, "delta");
            }
            chunks.push(c);
        }
        chunks.push(chunk(json!({}), json!("stop")));
        let asks_usage = request["stream_options"]["include_usage"] == json!(true);
        if reply.usage && asks_usage {
            let mut last = chunk(Value::Null, Value::Null);
            last["choices"] = json!([]);
            last["usage"] = usage.clone();
            chunks.push(last);
        }
        let lines: Vec<String> = chunks.iter().map(|c| format!("data: {c}")).collect();

        // stream_wrong_key: the stream is keyed to a key the client does
        // not hold (its first frame cannot authenticate).
        let stream_pk = match fault {
            Some(Fault::StreamWrongKey) => self.world.mitm.public_key(),
            _ => &response_pk[..],
        };
        let (init, mut sealer) = StreamSealer::new(rng, stream_pk, version).map_err(|e| {
            (
                StatusCode::BAD_REQUEST,
                "e2e_encrypt_failed",
                format!("could not key the stream: {e}"),
            )
        })?;
        let mut events = vec![Event::Init(init_event(&init))];
        for l in &lines {
            events.push(Event::Frame(frame_event(
                &sealer.seal_frame(rng, l.as_bytes()),
            )));
        }
        events.push(Event::Frame(frame_event(&sealer.seal_done(rng))));
        // The plaintext billing event follows the inner [DONE]: Chutes'
        // published client passes it through to the OpenAI SDK as a chunk
        // without `choices`, and the SDK stops yielding at the first
        // [DONE], so this is the one place where the client, used as its
        // README shows (`chunk.choices[0]` on every chunk), does not break.
        events.push(Event::Plain(usage_event(&usage)));
        events.push(Event::Plain(OUTER_DONE_EVENT.into()));

        Ok(("text/event-stream", tamper::stream(fault, events)))
    }
}

/// The reasoning a `reply = ["think"]` chute's answer opens with.
const THOUGHT: &str = "chutes plans";

/// `reply = ["extra_fields"]`: fields outside R57's allowlist at the top,
/// in the choice and in its `message`/`delta` (`inner`), and the allowed
/// `chutes_verification`.
fn add_extra_fields(body: &mut Value, inner: &str) {
    body["prompt_sha256"] = json!("0f".repeat(32));
    body["metadata"] = json!({ "instance": "simulated" });
    body["prompt_token_ids"] = json!([1, 2, 3]);
    body["chutes_verification"] = json!({ "simulated": true });
    let choice = &mut body["choices"][0];
    choice["matched_stop"] = json!(7);
    choice[inner]["token_ids"] = json!([4]);
}

/// An authenticated gzip stream that inflates to 64 MiB + 1 KiB of zeros
/// (about 64 KiB compressed). Built once: it is the same bytes every time.
pub(super) fn gzip_bomb() -> &'static [u8] {
    static BOMB: OnceLock<Vec<u8>> = OnceLock::new();
    BOMB.get_or_init(|| {
        let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..MAX_DECOMPRESSED >> 20 {
            enc.write_all(&zeros).expect("writing to a Vec cannot fail");
        }
        enc.write_all(&zeros[..1024])
            .expect("writing to a Vec cannot fail");
        enc.finish().expect("writing to a Vec cannot fail")
    })
}

//! What an on-path gateway does under a fault: reorder, drop, replay,
//! corrupt or cut an encrypted stream's events, and spoil evidence (§7b).
//! The engine must detect each (or, for v1's residual, show it does not).

use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use bytes::Bytes;
use serde_json::{json, Value};
use tiersim_engine::chutes::e2ee::NONCE_LEN;
use tiersim_engine::chutes::stream::{error_event, frame_event, OUTER_DONE_EVENT};
use tiersim_engine::chutes::wire::EvidenceList;
use tiersim_engine::openai::MAX_SSE_LINE;

use super::instance::entry;
use super::{Chute, World};
use crate::fault::{EvidenceFlaw, Fault};
use crate::hosts::Step;

/// The evidence answer: `honest`, spoilt for instance number `flaw.1` as
/// `flaw.0` says.
pub(super) fn evidence(
    world: &World,
    chute: &Chute,
    nonce: &str,
    mut honest: EvidenceList,
    flaw: Option<(EvidenceFlaw, u32)>,
) -> Value {
    let Some((flaw, index)) = flaw else {
        return json!(honest);
    };
    if flaw == EvidenceFlaw::NullLists {
        // Every instance at once, whichever `instance` the fault names.
        return json!({ "evidence": null, "failed_instance_ids": null });
    }
    let Some(inst) = chute.instances.get(index as usize) else {
        return json!(honest);
    };
    let at = honest
        .evidence
        .iter()
        .position(|e| e.instance_id == inst.id)
        .expect("honest evidence lists every instance");
    match flaw {
        EvidenceFlaw::Missing => {
            honest.evidence.remove(at);
        }
        EvidenceFlaw::OtherNonce => {
            // A quote from another fetch, replayed.
            let stale = if nonce.starts_with('0') { "1" } else { "0" }.repeat(nonce.len());
            honest.evidence[at] = entry(world, inst, &stale, inst.key.public_key_b64());
        }
        EvidenceFlaw::OtherKey => {
            honest.evidence[at] = entry(world, inst, nonce, world.mitm.public_key_b64());
        }
        EvidenceFlaw::BadSignature => {
            let e = &mut honest.evidence[at];
            let mut quote = B64
                .decode(e.quote.as_deref().expect("honest evidence has a quote"))
                .expect("our own base64");
            *quote.last_mut().expect("a quote is not empty") ^= 0x01;
            e.quote = Some(B64.encode(quote));
        }
        EvidenceFlaw::ListedFailed => honest.failed_instance_ids.push(inst.id.clone()),
        // Acted out above, for every instance.
        EvidenceFlaw::NullLists => {}
    }
    json!(honest)
}

/// One SSE event of an encrypted stream, as the gateway relays it.
pub(super) enum Event {
    Init(String),
    /// An `e2e` frame: what frame faults count and move.
    Frame(String),
    /// Plaintext: usage, outer `[DONE]`.
    Plain(String),
}

impl Event {
    fn text(self) -> String {
        match self {
            Event::Init(s) | Event::Frame(s) | Event::Plain(s) => s,
        }
    }
}

pub(super) fn data(event: String) -> Step {
    Step::Data(Bytes::from(event))
}

/// Position in `events` of frame number `index`.
fn frame_pos(events: &[Event], index: u32) -> Option<usize> {
    events
        .iter()
        .enumerate()
        .filter(|(_, e)| matches!(e, Event::Frame(_)))
        .nth(index as usize)
        .map(|(i, _)| i)
}

/// Position in `events` right after `n` frames (and anything before the next).
fn after_frames(events: &[Event], n: u32) -> usize {
    if n == 0 {
        return events
            .iter()
            .position(|e| !matches!(e, Event::Init(_)))
            .unwrap_or(events.len());
    }
    frame_pos(events, n - 1).map_or(events.len(), |i| i + 1)
}

/// The frame event with one ciphertext bit flipped (valid base64 still).
fn corrupt(event: &Event) -> String {
    let Event::Frame(text) = event else {
        unreachable!("only frames are corrupted")
    };
    let b64 = text
        .trim_end()
        .strip_prefix("data: {\"e2e\": \"")
        .and_then(|t| t.strip_suffix("\"}"))
        .expect("frame events are built by frame_event");
    let mut raw = B64.decode(b64).expect("the sealer's base64");
    // Past the AEAD nonce: the ciphertext (or tag) itself.
    let at = NONCE_LEN.min(raw.len() - 1);
    raw[at] ^= 0x01;
    frame_event(&B64.encode(raw))
}

/// The gateway relays the instance's events, tampered with as the fault says.
pub(super) fn stream(fault: Option<&Fault>, mut events: Vec<Event>) -> Vec<Step> {
    match fault {
        // The instance fails after keying the stream and `frames` frames
        // (0: before any content).
        Some(Fault::E2eErrorAfter { frames }) => {
            events.truncate(after_frames(&events, *frames));
            events.push(Event::Plain(error_event(
                "instance failed while generating the response",
            )));
            events.push(Event::Plain(OUTER_DONE_EVENT.into()));
        }
        Some(Fault::DropFrame { index }) => {
            if let Some(i) = frame_pos(&events, *index) {
                events.remove(i);
            }
        }
        Some(Fault::ReorderFrame { index }) => {
            if let (Some(a), Some(b)) = (frame_pos(&events, *index), frame_pos(&events, index + 1))
            {
                events.swap(a, b);
            }
        }
        Some(Fault::ReplayFrame { index }) => {
            if let Some(i) = frame_pos(&events, *index) {
                let Event::Frame(copy) = &events[i] else {
                    unreachable!("frame_pos finds frames")
                };
                let copy = Event::Frame(copy.clone());
                events.insert(i + 1, copy);
            }
        }
        Some(Fault::FrameBeforeInit) => {
            if let Some(i) = frame_pos(&events, 0) {
                let frame = events.remove(i);
                events.insert(0, frame);
            }
        }
        Some(Fault::CorruptFrame { index }) => {
            if let Some(i) = frame_pos(&events, *index) {
                events[i] = Event::Frame(corrupt(&events[i]));
            }
        }
        Some(Fault::BadBase64Frame { index }) => {
            if let Some(i) = frame_pos(&events, *index) {
                events[i] = Event::Frame(frame_event("!!not base64!!"));
            }
        }
        Some(Fault::ForgedOuterDone { after_frames: n }) => {
            events.truncate(after_frames(&events, *n));
            events.push(Event::Plain(OUTER_DONE_EVENT.into()));
        }
        // A clean end after n frames: no inner, no outer [DONE].
        Some(Fault::CutStreamAfter { after_chunks }) => {
            events.truncate(after_frames(&events, *after_chunks));
        }
        _ => {}
    }
    let mut steps: Vec<Step> = events.into_iter().map(|e| data(e.text())).collect();
    match fault {
        Some(Fault::ResetBeforeBody) => steps = vec![Step::Reset],
        Some(Fault::ResetAfterChunks { after_chunks }) => {
            // The init event plus `after_chunks` frames, then the reset.
            steps.truncate(1 + *after_chunks as usize);
            steps.extend([Step::Flush, Step::Reset]);
        }
        Some(Fault::SlowFirstTokenMs { ms }) => {
            steps.insert(1, Step::Sleep(Duration::from_millis(*ms)));
        }
        Some(Fault::OversizedLine) => {
            // After the init and one frame: an `e2e` line past the cap.
            let mut line = Vec::with_capacity(MAX_SSE_LINE + 32);
            line.extend_from_slice(b"data: {\"e2e\": \"");
            line.resize(MAX_SSE_LINE + 16, b'A');
            line.extend_from_slice(b"\"}\n\n");
            steps.insert(2.min(steps.len()), Step::Data(Bytes::from(line)));
        }
        _ => {}
    }
    steps
}

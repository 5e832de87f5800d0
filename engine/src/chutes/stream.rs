//! The client's incremental decoder for Chutes' encrypted SSE stream (R23),
//! with the opt-in hardened protocol v2 (R25).
//!
//! Wire (one SSE `data:` line per event, events separated by blank lines):
//!
//! ```text
//! data: {"e2e_init": "<b64 mlkem_ct>"}     keys the stream (once, first)
//! data: {"e2e": "<b64 nonce‖ct‖tag>"}      one raw OpenAI SSE line, e.g. `data: {...}`
//! data: {"usage": {...}}                   plaintext billing event
//! data: {"e2e_error": "..."}               upstream failure
//! data: [DONE]                             plaintext outer terminator: forgeable, ignored
//! : keepalive                              comment: skipped
//! ```
//!
//! Rules (R23): only an authenticated inner `[DONE]` ends the stream; EOF
//! without one is [`StreamError::Truncated`] and no [`StreamEvent::Done`] is
//! ever produced for it. A frame before `e2e_init`, bad base64, an AEAD
//! failure, a plaintext content event or malformed JSON is fatal; nothing
//! unauthenticated is yielded as content. After a fatal error the decoder
//! yields nothing more. Caps: [`MAX_LINE`] per SSE line (refused before it is
//! buffered) and [`MAX_BUFFERED`] for everything the decoder holds (the
//! partial line plus decoded events not yet taken).
//!
//! Each `data:` line is one event: Chutes never splits an event over several
//! `data:` lines, so multi-line SSE events are not joined. Other SSE fields
//! (`event:`, `id:`, `retry:`) carry nothing the router forwards and are skipped.

use std::borrow::Cow;
use std::collections::VecDeque;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use bytes::Bytes;
use chacha20poly1305::ChaCha20Poly1305;

use super::e2ee::{open_frame_in_place, E2eeError, ResponseKey, StreamVersion, NONCE_LEN};
use crate::provider::ProviderError;

/// Cap on one SSE line (R23), excluding its line terminator.
pub const MAX_LINE: usize = 16 * 1024 * 1024;
/// Cap on the bytes the decoder holds at once: the partial line plus the
/// payloads of decoded events the consumer has not taken yet. Twice the line
/// cap, so one maximal line always fits while the queue is drained.
pub const MAX_BUFFERED: usize = 2 * MAX_LINE;
/// Longest `e2e_error` message kept (the rest is cut).
const MAX_ERROR_MESSAGE: usize = 512;

/// One decoded item of the stream.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    /// The payload of an authenticated inner `data:` line (without the
    /// `data: ` prefix): one OpenAI chunk, exactly as the instance sent it.
    Chunk(Bytes),
    /// The value of a plaintext `{"usage": …}` billing event. It is not
    /// authenticated (the protocol sends it in clear): use it for accounting,
    /// never forward it as content. It may arrive before or after `Done`.
    Usage(serde_json::Value),
    /// The authenticated inner `[DONE]`: the stream ended cleanly.
    Done,
}

/// Why a stream was refused. All are final: the decoder yields nothing after one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    #[error("e2e frame before e2e_init")]
    FrameBeforeInit,
    #[error("second e2e_init in one stream")]
    DuplicateInit,
    #[error("invalid base64 in {what}")]
    BadBase64 { what: &'static str },
    #[error("invalid e2e_init: {0}")]
    Init(E2eeError),
    /// The frame did not authenticate. Under v2 this includes a dropped,
    /// reordered or replayed frame (its sequence number is bound into the AAD).
    #[error("e2e frame {frame} failed authentication (tampered, or out of sequence)")]
    Authentication { frame: u64 },
    /// v2: the inner terminator does not commit to the number of frames received.
    #[error("inner [DONE] commits to {claimed:?} frames but {received} preceded it")]
    TerminatorMismatch { claimed: String, received: u64 },
    #[error("malformed SSE event: {0}")]
    Malformed(String),
    /// A plaintext event that is neither control nor billing (e.g. an injected
    /// `{"choices": …}`): content must arrive encrypted.
    #[error("unauthenticated plaintext content event")]
    UnexpectedPlaintext,
    /// The instance reported a failure (`{"e2e_error": …}`).
    #[error("upstream E2EE error: {0}")]
    Upstream(String),
    #[error("SSE line exceeds {limit} bytes")]
    LineTooLong { limit: usize },
    #[error("stream decoder buffer exceeds {limit} bytes")]
    BufferOverflow { limit: usize },
    /// EOF without an authenticated inner `[DONE]`.
    #[error("stream ended without an authenticated [DONE]")]
    Truncated,
}

impl From<StreamError> for ProviderError {
    fn from(e: StreamError) -> Self {
        match e {
            StreamError::Truncated => ProviderError::Truncated,
            // `e2e_error` is the instance telling us it failed (it could not
            // decrypt, its model crashed, ...). It is not evidence of
            // tampering: a forged one can only deny service, which an on-path
            // gateway can do anyway by cutting the stream. So it is reported
            // like any upstream failure, as a 502 Bad Gateway — retryable /
            // fall-through when it arrives before any chunk was forwarded
            // (the router's retry classification decides) — rather than as
            // `Integrity`, which fails closed and would keep a healthy
            // fallback from being tried.
            StreamError::Upstream(msg) => ProviderError::status(
                502,
                format!("Chutes instance reported an E2EE error: {msg}"),
            ),
            // Authentication and format failures: tampering or a broken peer.
            other => ProviderError::Integrity(other.to_string()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Accepting input.
    Open,
    /// The authenticated inner `[DONE]` arrived; only usage events still count.
    Done,
    /// A fatal error was queued, or EOF was processed.
    Closed,
}

/// The outer JSON of a `data:` event. Base64 never needs JSON escapes, but a
/// sender may still escape `/` as `\/`, hence `Cow`.
#[derive(serde::Deserialize)]
struct Outer<'a> {
    #[serde(borrow, default)]
    e2e: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    e2e_init: Option<Cow<'a, str>>,
    #[serde(default)]
    e2e_error: Option<serde_json::Value>,
    #[serde(default)]
    usage: Option<serde_json::Value>,
}

/// Incremental decoder: [`feed`](Self::feed) byte chunks as they arrive (lines
/// may split anywhere), take events with [`next_event`](Self::next_event),
/// call [`finish`](Self::finish) at EOF and take the remaining events.
///
/// ```ignore
/// while let Some(chunk) = body.next().await {
///     dec.feed(&chunk?);
///     for ev in dec.drain() { /* forward Ok(..), stop on Err(..) */ }
/// }
/// dec.finish();
/// for ev in dec.drain() { .. }   // a missing inner [DONE] ends in Err(Truncated)
/// ```
pub struct StreamDecoder {
    key: Option<ResponseKey>,
    cipher: Option<ChaCha20Poly1305>,
    version: StreamVersion,
    /// Frames authenticated so far (the next frame's sequence number).
    seq: u64,
    state: State,
    /// The authenticated inner `[DONE]` was decoded.
    done: bool,
    line: Vec<u8>,
    /// Decoded items with the bytes each accounts for in `queued_bytes`.
    queue: VecDeque<(Result<StreamEvent, StreamError>, usize)>,
    queued_bytes: usize,
    max_line: usize,
    max_buffered: usize,
}

impl std::fmt::Debug for StreamDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamDecoder")
            .field("version", &self.version)
            .field("initialised", &self.cipher.is_some())
            .field("frames", &self.seq)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl StreamDecoder {
    /// A decoder for the reply to the request that produced `key`.
    pub fn new(key: ResponseKey, version: StreamVersion) -> Self {
        Self::with_limits(key, version, MAX_LINE, MAX_BUFFERED)
    }

    /// As [`new`](Self::new) with other caps (tests, tighter deployments).
    pub fn with_limits(
        key: ResponseKey,
        version: StreamVersion,
        max_line: usize,
        max_buffered: usize,
    ) -> Self {
        StreamDecoder {
            key: Some(key),
            cipher: None,
            version,
            seq: 0,
            state: State::Open,
            done: false,
            line: Vec::new(),
            queue: VecDeque::new(),
            queued_bytes: 0,
            max_line,
            max_buffered: max_buffered.max(max_line),
        }
    }

    pub fn version(&self) -> StreamVersion {
        self.version
    }

    /// Authenticated frames so far.
    pub fn frames(&self) -> u64 {
        self.seq
    }

    /// Whether `e2e_init` keyed the stream (and no fatal error closed it
    /// since): a provider can hand the stream over from here on.
    pub fn is_keyed(&self) -> bool {
        self.cipher.is_some()
    }

    /// Whether the authenticated inner `[DONE]` has been decoded.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Bytes currently held (partial line plus queued event payloads).
    pub fn buffered_bytes(&self) -> usize {
        self.line.len() + self.queued_bytes
    }

    /// Feeds the next chunk of the response body.
    pub fn feed(&mut self, chunk: &[u8]) {
        let mut rest = chunk;
        while !rest.is_empty() && self.state != State::Closed {
            let (seg, complete) = match rest.iter().position(|&b| b == b'\n') {
                Some(i) => (&rest[..i], Some(i + 1)),
                None => (rest, None),
            };
            // Refuse before buffering: the line so far plus this segment.
            let line_len = self.line.len() + seg.len();
            if line_len > self.max_line {
                self.fail(StreamError::LineTooLong {
                    limit: self.max_line,
                });
                return;
            }
            if self.queued_bytes + line_len > self.max_buffered {
                self.fail(StreamError::BufferOverflow {
                    limit: self.max_buffered,
                });
                return;
            }
            match complete {
                Some(next) => {
                    if self.line.is_empty() {
                        self.process_line(seg);
                    } else {
                        let mut line = std::mem::take(&mut self.line);
                        line.extend_from_slice(seg);
                        self.process_line(&line);
                        line.clear();
                        self.line = line;
                    }
                    rest = &rest[next..];
                }
                None => {
                    self.line.extend_from_slice(seg);
                    return;
                }
            }
        }
    }

    /// End of input. A final line without its newline is an incomplete
    /// event and is discarded (as the SSE spec says); then, unless the inner
    /// `[DONE]` was seen, [`StreamError::Truncated`] is queued.
    pub fn finish(&mut self) {
        self.line = Vec::new();
        match self.state {
            State::Open => self.fail(StreamError::Truncated),
            State::Done => self.state = State::Closed,
            State::Closed => {}
        }
    }

    /// The next decoded event, if any. After a fatal error (which is itself
    /// returned once, last) this returns `None` forever.
    pub fn next_event(&mut self) -> Option<Result<StreamEvent, StreamError>> {
        let (ev, weight) = self.queue.pop_front()?;
        self.queued_bytes -= weight;
        Some(ev)
    }

    /// Takes every queued event.
    pub fn drain(&mut self) -> impl Iterator<Item = Result<StreamEvent, StreamError>> + '_ {
        std::iter::from_fn(move || self.next_event())
    }

    /// Queues an event accounting for `weight` bytes (at most the line it
    /// came from, which was checked against the cap).
    fn push(&mut self, ev: StreamEvent, weight: usize) {
        self.queued_bytes += weight;
        self.queue.push_back((Ok(ev), weight));
    }

    /// Closes the stream with a fatal error. Once the authenticated inner
    /// `[DONE]` was decoded the stream has ended cleanly and nothing later can
    /// taint it: the decoder then just stops, without an error.
    fn fail(&mut self, e: StreamError) {
        if !self.done {
            self.queue.push_back((Err(e), 0));
        }
        self.state = State::Closed;
        self.line = Vec::new();
        self.key = None;
        self.cipher = None;
    }

    fn process_line(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        // Blank lines end events; `:` lines are comments (keepalives).
        if line.is_empty() || line[0] == b':' {
            return;
        }
        let Some(data) = line.strip_prefix(b"data:") else {
            return; // event:, id:, retry: — nothing to forward
        };
        let data = data.strip_prefix(b" ").unwrap_or(data);
        if data == b"[DONE]" {
            return; // the outer terminator is plaintext and forgeable: ignored
        }
        let outer: Outer<'_> = match serde_json::from_slice(data) {
            Ok(o) => o,
            Err(e) => {
                if self.state == State::Open {
                    self.fail(StreamError::Malformed(e.to_string()));
                }
                return;
            }
        };
        let present = [
            outer.e2e.is_some(),
            outer.e2e_init.is_some(),
            outer.e2e_error.is_some(),
            outer.usage.is_some(),
        ]
        .iter()
        .filter(|p| **p)
        .count();
        if present > 1 {
            if self.state == State::Open {
                self.fail(StreamError::Malformed(
                    "event carries more than one of e2e, e2e_init, e2e_error, usage".into(),
                ));
            }
            return;
        }
        if let Some(usage) = outer.usage {
            self.push(StreamEvent::Usage(usage), data.len());
            return;
        }
        if self.state == State::Done {
            // The stream ended cleanly; later frames are never forwarded.
            return;
        }
        if let Some(init) = outer.e2e_init {
            self.on_init(&init);
        } else if let Some(frame) = outer.e2e {
            self.on_frame(&frame);
        } else if let Some(err) = outer.e2e_error {
            let mut msg = match err {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
            if msg.len() > MAX_ERROR_MESSAGE {
                let mut cut = MAX_ERROR_MESSAGE;
                while !msg.is_char_boundary(cut) {
                    cut -= 1;
                }
                msg.truncate(cut);
            }
            self.fail(StreamError::Upstream(msg));
        } else {
            self.fail(StreamError::UnexpectedPlaintext);
        }
    }

    fn on_init(&mut self, init_b64: &str) {
        if self.cipher.is_some() {
            return self.fail(StreamError::DuplicateInit);
        }
        let Ok(ct) = B64.decode(init_b64) else {
            return self.fail(StreamError::BadBase64 { what: "e2e_init" });
        };
        let key = self
            .key
            .take()
            .expect("the response key is held until the stream is keyed");
        match key.stream_cipher(&ct, self.version) {
            Ok(c) => self.cipher = Some(c),
            Err(e) => self.fail(StreamError::Init(e)),
        }
    }

    fn on_frame(&mut self, frame_b64: &str) {
        let Some(cipher) = &self.cipher else {
            return self.fail(StreamError::FrameBeforeInit);
        };
        let Ok(mut buf) = B64.decode(frame_b64) else {
            return self.fail(StreamError::BadBase64 { what: "e2e frame" });
        };
        let frame = self.seq;
        let Ok(n) = open_frame_in_place(cipher, self.version, frame, &mut buf) else {
            return self.fail(StreamError::Authentication { frame });
        };
        self.seq += 1;
        // Authenticated from here on. One raw SSE line; trailing EOLs tolerated.
        let mut end = NONCE_LEN + n;
        while end > NONCE_LEN && matches!(buf[end - 1], b'\n' | b'\r') {
            end -= 1;
        }
        let inner = &buf[NONCE_LEN..end];
        if inner.is_empty() || inner[0] == b':' {
            return;
        }
        let Some(data) = inner.strip_prefix(b"data:") else {
            return;
        };
        let data = data.strip_prefix(b" ").unwrap_or(data);
        let start = end - data.len();
        match self.version {
            StreamVersion::V1 if data == b"[DONE]" => self.state = State::Done,
            StreamVersion::V2 if data.starts_with(b"[DONE]") => {
                let claimed = &data[b"[DONE]".len()..];
                let count = claimed
                    .strip_prefix(b" ")
                    .and_then(|d| std::str::from_utf8(d).ok())
                    .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|d| d.parse::<u64>().ok());
                if count == Some(frame) {
                    self.state = State::Done;
                } else {
                    self.fail(StreamError::TerminatorMismatch {
                        claimed: String::from_utf8_lossy(claimed).trim().to_owned(),
                        received: frame,
                    });
                }
            }
            _ => {
                let chunk = Bytes::from(buf).slice(start..end);
                let weight = chunk.len();
                self.push(StreamEvent::Chunk(chunk), weight);
            }
        }
        if self.state == State::Done {
            self.done = true;
            self.push(StreamEvent::Done, 0);
        }
    }
}

// ------------------------------------------------------- server-side helpers

/// `data: {"e2e_init": "<b64>"}` event (with its blank line).
pub fn init_event(init_b64: &str) -> String {
    format!("data: {{\"e2e_init\": \"{init_b64}\"}}\n\n")
}

/// `data: {"e2e": "<b64>"}` event (with its blank line).
pub fn frame_event(frame_b64: &str) -> String {
    format!("data: {{\"e2e\": \"{frame_b64}\"}}\n\n")
}

/// `data: {"usage": …}` plaintext billing event.
pub fn usage_event(usage: &serde_json::Value) -> String {
    format!("data: {}\n\n", serde_json::json!({ "usage": usage }))
}

/// `data: {"e2e_error": "<message>"}` event.
pub fn error_event(message: &str) -> String {
    format!("data: {}\n\n", serde_json::json!({ "e2e_error": message }))
}

/// The plaintext outer terminator (forgeable; the decoder ignores it).
pub const OUTER_DONE_EVENT: &str = "data: [DONE]\n\n";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chutes::e2ee::{StreamSealer, TAG_LEN};
    use rand_chacha::ChaCha20Rng;
    use rand_core::{Rng, SeedableRng};
    use serde_json::json;

    const LINES: [&str; 3] = [
        r#"data: {"choices":[{"delta":{"content":"Hel"}}]}"#,
        r#"data: {"choices":[{"delta":{"content":"lo"}}]}"#,
        r#"data: {"choices":[{"delta":{"content":"!"}}]}"#,
    ];

    struct Fixture {
        rng: ChaCha20Rng,
        init: String,
        sealer: StreamSealer,
        decoder: Option<StreamDecoder>,
    }

    fn fixture(version: StreamVersion) -> Fixture {
        fixture_decoding(version, version)
    }

    /// Server seals with `server`, client decodes expecting `client`.
    fn fixture_decoding(server: StreamVersion, client: StreamVersion) -> Fixture {
        let mut rng = ChaCha20Rng::seed_from_u64(2026);
        let key = ResponseKey::generate(&mut rng);
        let (init, sealer) = StreamSealer::new(&mut rng, &key.public_key_bytes(), server).unwrap();
        Fixture {
            rng,
            init,
            sealer,
            decoder: Some(StreamDecoder::new(key, client)),
        }
    }

    impl Fixture {
        fn frame(&mut self, line: &str) -> String {
            frame_event(&self.sealer.seal_frame(&mut self.rng, line.as_bytes()))
        }
        fn done(&mut self) -> String {
            frame_event(&self.sealer.seal_done(&mut self.rng))
        }
        fn init(&self) -> String {
            init_event(&self.init)
        }
        fn decoder(&mut self) -> StreamDecoder {
            self.decoder.take().unwrap()
        }
        /// The frames of a normal stream: LINES then the inner terminator.
        fn frames(&mut self) -> Vec<String> {
            let mut v: Vec<String> = LINES.iter().map(|l| self.frame(l)).collect();
            v.push(self.done());
            v
        }
    }

    /// Feeds `wire` in one go, then EOF; returns everything yielded.
    fn run(dec: &mut StreamDecoder, wire: &str) -> Vec<Result<StreamEvent, StreamError>> {
        dec.feed(wire.as_bytes());
        let mut out: Vec<_> = dec.drain().collect();
        dec.finish();
        out.extend(dec.drain());
        out
    }

    fn chunk(line: &str) -> Result<StreamEvent, StreamError> {
        Ok(StreamEvent::Chunk(Bytes::copy_from_slice(
            line.strip_prefix("data: ").unwrap().as_bytes(),
        )))
    }

    fn chunks(idx: &[usize]) -> Vec<Result<StreamEvent, StreamError>> {
        idx.iter().map(|&i| chunk(LINES[i])).collect()
    }

    fn frame_b64(event: &str) -> &str {
        event
            .trim_end()
            .strip_prefix("data: {\"e2e\": \"")
            .unwrap()
            .strip_suffix("\"}")
            .unwrap()
    }

    #[test]
    fn r23_full_stream_decodes() {
        for version in [StreamVersion::V1, StreamVersion::V2] {
            let mut f = fixture(version);
            let mut wire = f.init();
            for fr in f.frames() {
                wire += &fr;
            }
            wire += &usage_event(&json!({"prompt_tokens": 3, "completion_tokens": 3}));
            wire += OUTER_DONE_EVENT;
            let mut dec = f.decoder();
            let mut want = chunks(&[0, 1, 2]);
            want.push(Ok(StreamEvent::Done));
            want.push(Ok(StreamEvent::Usage(
                json!({"prompt_tokens": 3, "completion_tokens": 3}),
            )));
            assert_eq!(run(&mut dec, &wire), want, "{version:?}");
            assert!(dec.is_done());
            assert_eq!(dec.frames(), 4);
        }
    }

    #[test]
    fn r23_outer_done_is_ignored() {
        // A forged outer [DONE] mid-stream neither ends it nor stops decoding…
        let mut f = fixture(StreamVersion::V1);
        let fr = f.frames();
        let wire =
            f.init() + &fr[0] + OUTER_DONE_EVENT + &fr[1] + &fr[2] + &fr[3] + OUTER_DONE_EVENT;
        let mut want = chunks(&[0, 1, 2]);
        want.push(Ok(StreamEvent::Done));
        assert_eq!(run(&mut f.decoder(), &wire), want);

        // …and a stream whose only terminator is the outer one is a truncation.
        let mut f = fixture(StreamVersion::V1);
        let fr = f.frames();
        let wire = f.init() + &fr[0] + &fr[1] + OUTER_DONE_EVENT;
        let mut want = chunks(&[0, 1]);
        want.push(Err(StreamError::Truncated));
        assert_eq!(run(&mut f.decoder(), &wire), want);
    }

    #[test]
    fn r23_frame_before_init_is_fatal() {
        let mut f = fixture(StreamVersion::V1);
        let fr = f.frames();
        let wire = fr[0].clone() + &f.init() + &fr[1] + &fr[2] + &fr[3];
        let mut dec = f.decoder();
        assert_eq!(
            run(&mut dec, &wire),
            vec![Err(StreamError::FrameBeforeInit)]
        );
        // Nothing more, ever.
        dec.feed(f.init().as_bytes());
        dec.finish();
        assert_eq!(dec.next_event(), None);
    }

    #[test]
    fn r23_bad_base64_is_fatal() {
        let mut f = fixture(StreamVersion::V1);
        let fr = f.frames();
        let wire = f.init() + &fr[0] + &frame_event("!!not base64!!") + &fr[1] + &fr[3];
        let mut want = chunks(&[0]);
        want.push(Err(StreamError::BadBase64 { what: "e2e frame" }));
        assert_eq!(run(&mut f.decoder(), &wire), want);

        let mut f = fixture(StreamVersion::V1);
        assert_eq!(
            run(&mut f.decoder(), &init_event("%%%")),
            vec![Err(StreamError::BadBase64 { what: "e2e_init" })]
        );
    }

    #[test]
    fn r23_aead_failure_is_fatal() {
        // A flipped bit in the ciphertext…
        let mut f = fixture(StreamVersion::V1);
        let fr = f.frames();
        let mut raw = B64.decode(frame_b64(&fr[1])).unwrap();
        raw[NONCE_LEN] ^= 0x01;
        let wire = f.init() + &fr[0] + &frame_event(&B64.encode(&raw)) + &fr[2] + &fr[3];
        let mut want = chunks(&[0]);
        want.push(Err(StreamError::Authentication { frame: 1 }));
        let got = run(&mut f.decoder(), &wire);
        assert_eq!(got, want);
        assert!(matches!(
            ProviderError::from(StreamError::Authentication { frame: 1 }),
            ProviderError::Integrity(_)
        ));

        // …a frame too short to hold nonce and tag…
        let mut f = fixture(StreamVersion::V1);
        let wire = f.init() + &frame_event(&B64.encode([0u8; NONCE_LEN + TAG_LEN - 1])) + &f.done();
        assert_eq!(
            run(&mut f.decoder(), &wire),
            vec![Err(StreamError::Authentication { frame: 0 })]
        );

        // …and a frame from another stream (another key) are fatal.
        let mut other = fixture(StreamVersion::V1);
        let mut other_rng = ChaCha20Rng::seed_from_u64(77);
        let other_key = ResponseKey::generate(&mut other_rng);
        let (_, mut other_sealer) = StreamSealer::new(
            &mut other_rng,
            &other_key.public_key_bytes(),
            StreamVersion::V1,
        )
        .unwrap();
        let foreign = frame_event(&other_sealer.seal_frame(&mut other_rng, LINES[0].as_bytes()));
        let wire = other.init() + &foreign + &other.done();
        assert_eq!(
            run(&mut other.decoder(), &wire),
            vec![Err(StreamError::Authentication { frame: 0 })]
        );
    }

    #[test]
    fn r23_eof_without_inner_done_is_truncation() {
        let mut f = fixture(StreamVersion::V1);
        let fr = f.frames();
        let wire = f.init() + &fr[0] + &fr[1] + &fr[2];
        let mut dec = f.decoder();
        let got = run(&mut dec, &wire);
        assert_eq!(got.last(), Some(&Err(StreamError::Truncated)));
        assert!(
            !got.contains(&Ok(StreamEvent::Done)),
            "never a [DONE] for a truncated stream"
        );
        assert!(!dec.is_done());
        assert_eq!(
            ProviderError::from(StreamError::Truncated),
            ProviderError::Truncated
        );

        // Cut in the middle of the inner [DONE] frame's line, or right before
        // its newline (an incomplete SSE event is discarded): still a truncation.
        for cut in [fr[3].len() / 2, fr[3].trim_end().len()] {
            let mut f = fixture(StreamVersion::V1);
            let fr = f.frames();
            let wire = f.init() + &fr[0] + &fr[3][..cut];
            let mut want = chunks(&[0]);
            want.push(Err(StreamError::Truncated));
            assert_eq!(run(&mut f.decoder(), &wire), want);
        }

        // An empty body too.
        let mut f = fixture(StreamVersion::V1);
        assert_eq!(run(&mut f.decoder(), ""), vec![Err(StreamError::Truncated)]);

        // With its newline but no blank line after it, the frame counts.
        let mut f = fixture(StreamVersion::V1);
        let fr = f.frames();
        let wire = f.init() + &fr[0] + fr[3].trim_end() + "\n";
        let mut want = chunks(&[0]);
        want.push(Ok(StreamEvent::Done));
        assert_eq!(run(&mut f.decoder(), &wire), want);
    }

    #[test]
    fn r23_e2e_error_is_typed() {
        let mut f = fixture(StreamVersion::V1);
        let fr = f.frames();
        let wire =
            f.init() + &fr[0] + &error_event("decryption failed on instance") + &fr[1] + &fr[3];
        let mut want = chunks(&[0]);
        want.push(Err(StreamError::Upstream(
            "decryption failed on instance".into(),
        )));
        assert_eq!(run(&mut f.decoder(), &wire), want);
        match ProviderError::from(StreamError::Upstream("x".into())) {
            ProviderError::Status {
                status: 502,
                message,
                ..
            } => assert!(message.contains('x')),
            other => panic!("{other:?}"),
        }
        // A structured error and an error before init are typed too.
        let mut f = fixture(StreamVersion::V1);
        let got = run(&mut f.decoder(), "data: {\"e2e_error\": {\"code\": 7}}\n\n");
        assert_eq!(got, vec![Err(StreamError::Upstream("{\"code\":7}".into()))]);
    }

    #[test]
    fn r23_plaintext_content_is_fatal() {
        let mut f = fixture(StreamVersion::V1);
        let fr = f.frames();
        let wire = f.init()
            + &fr[0]
            + "data: {\"choices\":[{\"delta\":{\"content\":\"injected\"}}]}\n\n"
            + &fr[1]
            + &fr[3];
        let mut want = chunks(&[0]);
        want.push(Err(StreamError::UnexpectedPlaintext));
        assert_eq!(run(&mut f.decoder(), &wire), want);

        for bad in [
            "data: not json\n",
            "data: {\"e2e\": \"AAAA\", \"usage\": {}}\n",
            "data: [1,2]\n",
        ] {
            let mut f = fixture(StreamVersion::V1);
            let got = run(&mut f.decoder(), &(f.init() + bad));
            assert_eq!(got.len(), 1, "{bad}");
            assert!(
                matches!(got[0], Err(StreamError::Malformed(_))),
                "{bad}: {got:?}"
            );
        }
        // A second e2e_init is refused.
        let mut f = fixture(StreamVersion::V1);
        let wire = f.init() + &f.init();
        assert_eq!(
            run(&mut f.decoder(), &wire),
            vec![Err(StreamError::DuplicateInit)]
        );
    }

    #[test]
    fn r23_oversized_line_is_rejected() {
        // A line that never ends, fed 1 MiB at a time: refused as soon as it
        // would exceed 16 MiB, before the excess is buffered.
        let mut f = fixture(StreamVersion::V1);
        let mut dec = f.decoder();
        dec.feed(f.init().as_bytes());
        dec.feed(b"data: {\"e2e\": \"");
        let mib = vec![b'A'; 1 << 20];
        let mut fed = 0;
        while dec.next_event().is_none() && fed < 20 {
            dec.feed(&mib);
            fed += 1;
            assert!(dec.buffered_bytes() <= MAX_LINE);
        }
        assert_eq!(fed, 16, "16 MiB + the prefix is over the cap");
        assert_eq!(dec.buffered_bytes(), 0, "the partial line is released");
        dec.feed(b"\"}\n\n");
        dec.finish();
        assert_eq!(dec.next_event(), None);

        // A whole oversized line inside one chunk, and a small configured cap.
        let mut f = fixture(StreamVersion::V1);
        let key = f.decoder().key.take().unwrap();
        let mut dec = StreamDecoder::with_limits(key, StreamVersion::V1, 4096, 8192);
        let wire = f.init() + &format!("data: {{\"e2e\": \"{}\"}}\n\n", "A".repeat(5000));
        assert_eq!(
            run(&mut dec, &wire),
            vec![Err(StreamError::LineTooLong { limit: 4096 })]
        );
        assert!(matches!(
            ProviderError::from(StreamError::LineTooLong { limit: 1 }),
            ProviderError::Integrity(_)
        ));
    }

    #[test]
    fn r23_total_buffer_is_capped() {
        // A consumer that never drains: decoded chunks accumulate up to the cap.
        let mut f = fixture(StreamVersion::V1);
        let big = format!("data: {{\"x\":\"{}\"}}", "y".repeat(3000));
        let frames: Vec<String> = (0..10).map(|_| f.frame(&big)).collect();
        let key = f.decoder().key.take().unwrap();
        let mut dec = StreamDecoder::with_limits(key, StreamVersion::V1, 8192, 10_000);
        dec.feed(f.init().as_bytes());
        for fr in &frames {
            dec.feed(fr.as_bytes());
            assert!(dec.buffered_bytes() <= 10_000);
        }
        let got: Vec<_> = dec.drain().collect();
        let (last, decoded) = got.split_last().unwrap();
        assert_eq!(last, &Err(StreamError::BufferOverflow { limit: 10_000 }));
        assert!(
            decoded.len() >= 2
                && decoded
                    .iter()
                    .all(|e| matches!(e, Ok(StreamEvent::Chunk(_))))
        );
        assert_eq!(dec.buffered_bytes(), 0);
    }

    #[test]
    fn r23_keepalives_skipped() {
        let mut f = fixture(StreamVersion::V1);
        let fr = f.frames();
        let wire = String::from(": keepalive\n\n")
            + &f.init()
            + ":\n"
            + "\n\n\r\n"
            + &fr[0].replace('\n', "\r\n")
            + ": ping 12345\r\n\r\n"
            + "event: message\nid: 3\nretry: 100\n"
            + &fr[1]
            + &fr[2]
            + ": keepalive\n\n"
            + &fr[3];
        let mut want = chunks(&[0, 1, 2]);
        want.push(Ok(StreamEvent::Done));
        assert_eq!(run(&mut f.decoder(), &wire), want);
    }

    #[test]
    fn r23_lines_split_across_chunks() {
        let mut f = fixture(StreamVersion::V2);
        let mut wire = String::from(": hi\n\n") + &f.init();
        for fr in f.frames() {
            wire += &fr;
        }
        wire += &usage_event(&json!({"total_tokens": 9}));
        wire += OUTER_DONE_EVENT;
        let mut want = chunks(&[0, 1, 2]);
        want.push(Ok(StreamEvent::Done));
        want.push(Ok(StreamEvent::Usage(json!({"total_tokens": 9}))));

        let key_seed = 2026;
        let fresh = || {
            let mut rng = ChaCha20Rng::seed_from_u64(key_seed);
            StreamDecoder::new(ResponseKey::generate(&mut rng), StreamVersion::V2)
        };
        // One byte at a time.
        let mut dec = fresh();
        let mut got = Vec::new();
        for b in wire.as_bytes() {
            dec.feed(std::slice::from_ref(b));
            got.extend(dec.drain());
        }
        dec.finish();
        got.extend(dec.drain());
        assert_eq!(got, want);
        // Random splits (seeded).
        let mut rng = ChaCha20Rng::seed_from_u64(5);
        for _ in 0..20 {
            let mut dec = fresh();
            let mut got = Vec::new();
            let mut rest = wire.as_bytes();
            while !rest.is_empty() {
                let n = (rng.next_u32() as usize % 700 + 1).min(rest.len());
                dec.feed(&rest[..n]);
                rest = &rest[n..];
                got.extend(dec.drain());
            }
            dec.finish();
            got.extend(dec.drain());
            assert_eq!(got, want);
        }
    }

    /// R25: under v1 an on-path gateway can drop, reorder and replay frames;
    /// every frame still authenticates and the stream ends "cleanly".
    #[test]
    fn r25_v1_reorder_replay_drop_undetected() {
        let cases: [(&str, &[usize], &[usize]); 4] = [
            ("drop", &[0, 2, 3], &[0, 2]),
            ("reorder", &[1, 0, 2, 3], &[1, 0, 2]),
            ("replay", &[0, 1, 1, 2, 3], &[0, 1, 1, 2]),
            // Truncation by dropping the tail but keeping the inner [DONE].
            ("drop tail", &[0, 3], &[0]),
        ];
        for (name, order, forwarded) in cases {
            let mut f = fixture(StreamVersion::V1);
            let fr = f.frames();
            let mut wire = f.init();
            for &i in order {
                wire += &fr[i];
            }
            let mut want = chunks(forwarded);
            want.push(Ok(StreamEvent::Done));
            assert_eq!(
                run(&mut f.decoder(), &wire),
                want,
                "v1 {name}: tampering goes undetected"
            );
        }
    }

    /// R25: under v2 the same manipulations fail authentication at the first
    /// out-of-sequence frame; nothing after it is forwarded and no Done is produced.
    #[test]
    fn r25_v2_detects_drop_reorder_replay_truncation() {
        let cases: [(&str, &[usize], &[usize], StreamError); 6] = [
            (
                "drop",
                &[0, 2, 3],
                &[0],
                StreamError::Authentication { frame: 1 },
            ),
            (
                "reorder",
                &[1, 0, 2, 3],
                &[],
                StreamError::Authentication { frame: 0 },
            ),
            (
                "replay",
                &[0, 1, 1, 2, 3],
                &[0, 1],
                StreamError::Authentication { frame: 2 },
            ),
            (
                "drop tail",
                &[0, 3],
                &[0],
                StreamError::Authentication { frame: 1 },
            ),
            (
                "early done",
                &[0, 1, 3, 2],
                &[0, 1],
                StreamError::Authentication { frame: 2 },
            ),
            ("truncation", &[0, 1, 2], &[0, 1, 2], StreamError::Truncated),
        ];
        for (name, order, forwarded, err) in cases {
            let mut f = fixture(StreamVersion::V2);
            let fr = f.frames();
            let mut wire = f.init();
            for &i in order {
                wire += &fr[i];
            }
            wire += OUTER_DONE_EVENT; // forged outer terminator changes nothing
            let mut want = chunks(forwarded);
            want.push(Err(err.clone()));
            let got = run(&mut f.decoder(), &wire);
            assert_eq!(got, want, "v2 {name}");
        }
    }

    #[test]
    fn r25_v2_terminator_commits_to_frame_count() {
        // A terminator claiming the wrong count (a buggy or lying sealer).
        for bad in [
            "data: [DONE] 5",
            "data: [DONE]",
            "data: [DONE] x",
            "data: [DONE] +1",
        ] {
            let mut f = fixture(StreamVersion::V2);
            let wire = f.init() + &f.frame(LINES[0]) + &f.frame(bad);
            let mut want = chunks(&[0]);
            let claimed = bad["data: [DONE]".len()..].trim().to_owned();
            want.push(Err(StreamError::TerminatorMismatch {
                claimed,
                received: 1,
            }));
            assert_eq!(run(&mut f.decoder(), &wire), want, "{bad}");
        }
        let f = fixture(StreamVersion::V2);
        assert_eq!(f.sealer.done_line(), "data: [DONE] 0");
    }

    #[test]
    fn r25_versions_do_not_cross() {
        // A v1 stream offered to a client that asked for v2 (a downgrade) and
        // vice versa: the keys differ, the first frame fails.
        for (server, client) in [
            (StreamVersion::V1, StreamVersion::V2),
            (StreamVersion::V2, StreamVersion::V1),
        ] {
            let mut f = fixture_decoding(server, client);
            let mut wire = f.init();
            for fr in f.frames() {
                wire += &fr;
            }
            let got = run(&mut f.decoder(), &wire);
            assert_eq!(got, vec![Err(StreamError::Authentication { frame: 0 })]);
        }
    }

    #[test]
    fn r23_frames_after_inner_done_are_not_forwarded() {
        let mut f = fixture(StreamVersion::V1);
        let fr = f.frames();
        let wire = f.init()
            + &fr[0]
            + &fr[3]
            + &fr[1]
            + "data: {\"choices\":[]}\n\n"
            + &usage_event(&json!(1));
        let mut want = chunks(&[0]);
        want.push(Ok(StreamEvent::Done));
        want.push(Ok(StreamEvent::Usage(json!(1))));
        assert_eq!(run(&mut f.decoder(), &wire), want);

        // After Done, even a cap violation just stops the decoder quietly.
        let mut f = fixture(StreamVersion::V1);
        let fr = f.frames();
        let key = f.decoder().key.take().unwrap();
        let mut dec = StreamDecoder::with_limits(key, StreamVersion::V1, 2048, 8192);
        let wire = f.init() + &fr[0] + &fr[3] + &"x".repeat(3000) + "\n" + &usage_event(&json!(2));
        let mut want = chunks(&[0]);
        want.push(Ok(StreamEvent::Done));
        assert_eq!(run(&mut dec, &wire), want);
        assert!(dec.is_done());
    }
}

//! Property-based fuzzing of the Chutes stream decoder (R23, R25; issue 9):
//! arbitrary frames, arbitrary splits of the bytes into reads, and byte
//! noise. Properties, for every input:
//!
//! 1. the decoder never panics, and stops after its first error;
//! 2. it never yields unauthenticated bytes: every chunk it yields is a line
//!    the legitimate sender sealed;
//! 3. it never ends cleanly (`Done`) unless the sealed inner `[DONE]` frame
//!    was in the input intact, and at EOF without one it ends in an error;
//! 4. on an untampered stream the events do not depend on how the bytes are
//!    split into reads.
//!
//! `cargo test` runs a bounded number of cases (64 per property); set
//! `PROPTEST_CASES` for a long run (see README, "Fuzzing").

use bytes::Bytes;
use proptest::prelude::*;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use tiersim_engine::chutes::e2ee::{ResponseKey, StreamSealer, StreamVersion};
use tiersim_engine::chutes::stream::{
    error_event, frame_event, init_event, usage_event, StreamDecoder, StreamError, StreamEvent,
    OUTER_DONE_EVENT,
};

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64)
}

/// A legitimate stream: the response key, the events as sent, the sealed
/// content lines (what may be yielded) and the inner `[DONE]` event.
struct Sealed {
    key_seed: u64,
    version: StreamVersion,
    events: Vec<String>,
    lines: Vec<Bytes>,
    done_event: String,
}

fn key(seed: u64) -> ResponseKey {
    ResponseKey::generate(&mut ChaCha20Rng::seed_from_u64(seed))
}

fn sealed(key_seed: u64, version: StreamVersion, contents: &[String]) -> Sealed {
    let mut rng = ChaCha20Rng::seed_from_u64(key_seed ^ 0xfeed);
    let pk = key(key_seed).public_key_bytes();
    let (init, mut sealer) = StreamSealer::new(&mut rng, &pk, version).unwrap();
    let mut events = vec![init_event(&init)];
    let mut lines = Vec::new();
    for c in contents {
        let line = format!(
            "data: {}",
            serde_json::json!({ "choices": [{ "delta": { "content": c } }] })
        );
        events.push(frame_event(&sealer.seal_frame(&mut rng, line.as_bytes())));
        lines.push(Bytes::from(line["data: ".len()..].to_string()));
    }
    let done_event = frame_event(&sealer.seal_done(&mut rng));
    events.push(done_event.clone());
    events.push(usage_event(&serde_json::json!({ "total_tokens": 3 })));
    events.push(OUTER_DONE_EVENT.to_string());
    Sealed {
        key_seed,
        version,
        events,
        lines,
        done_event,
    }
}

/// Feeds `bytes` split at `cuts` (positions, any order), then EOF; returns
/// every event. Checks property 1 on the way.
fn decode(s: &Sealed, bytes: &[u8], cuts: &[usize]) -> Vec<Result<StreamEvent, StreamError>> {
    let mut dec = StreamDecoder::with_limits(key(s.key_seed), s.version, 4096, 8192);
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    cuts.sort_unstable();
    cuts.push(bytes.len());
    let mut out = Vec::new();
    let mut at = 0;
    for cut in cuts {
        dec.feed(&bytes[at..cut]);
        out.extend(dec.drain());
        at = cut;
    }
    dec.finish();
    out.extend(dec.drain());
    if let Some(i) = out.iter().position(Result::is_err) {
        assert_eq!(i, out.len() - 1, "nothing after the first error: {out:?}");
    }
    out
}

/// Properties 2 and 3 for one decoded input.
fn check_authenticated(s: &Sealed, input: &[u8], out: &[Result<StreamEvent, StreamError>]) {
    for ev in out {
        if let Ok(StreamEvent::Chunk(c)) = ev {
            assert!(s.lines.contains(c), "unauthenticated chunk {c:?}");
        }
    }
    let done = out.iter().any(|e| matches!(e, Ok(StreamEvent::Done)));
    // The sealed inner [DONE] line, complete with its newline (the blank
    // line after it only ends the SSE event: a stream cut right after the
    // line still carries it).
    let done_line = &s.done_event.as_bytes()[..s.done_event.trim_end().len() + 1];
    let done_sent = input.windows(done_line.len()).any(|w| w == done_line);
    if done {
        assert!(
            done_sent,
            "Done without the sealed inner [DONE] in the input"
        );
    } else {
        assert!(
            matches!(out.last(), Some(Err(_))),
            "ended without Done and without an error: {out:?}"
        );
    }
}

/// One way an on-path gateway or a broken network spoils the events.
#[derive(Debug, Clone)]
enum Tamper {
    Drop(usize),
    Duplicate(usize),
    Swap(usize),
    FlipByte(usize, u8),
    Insert(usize, Vec<u8>),
    Truncate(usize),
    ForeignEvent(usize, u8),
}

fn tamper() -> impl Strategy<Value = Tamper> {
    prop_oneof![
        any::<usize>().prop_map(Tamper::Drop),
        any::<usize>().prop_map(Tamper::Duplicate),
        any::<usize>().prop_map(Tamper::Swap),
        (any::<usize>(), 1u8..=255).prop_map(|(i, x)| Tamper::FlipByte(i, x)),
        (
            any::<usize>(),
            proptest::collection::vec(any::<u8>(), 1..40)
        )
            .prop_map(|(i, b)| Tamper::Insert(i, b)),
        any::<usize>().prop_map(Tamper::Truncate),
        (any::<usize>(), 0u8..6).prop_map(|(i, k)| Tamper::ForeignEvent(i, k)),
    ]
}

fn apply(s: &Sealed, tampers: &[Tamper]) -> Vec<u8> {
    let mut events: Vec<Vec<u8>> = s.events.iter().map(|e| e.clone().into_bytes()).collect();
    // A stream sealed to another key: its frames are well-formed but foreign.
    let other = sealed(s.key_seed + 1, s.version, &["x".into()]);
    for t in tampers {
        let n = events.len().max(1);
        match t {
            Tamper::Drop(i) if !events.is_empty() => {
                events.remove(i % n);
            }
            Tamper::Duplicate(i) if !events.is_empty() => {
                let e = events[i % n].clone();
                events.insert(i % n, e);
            }
            Tamper::Swap(i) if events.len() > 1 => events.swap(i % (n - 1), i % (n - 1) + 1),
            Tamper::FlipByte(i, x) if !events.is_empty() => {
                let e = &mut events[i % n];
                let at = (i / n) % e.len().max(1);
                if let Some(b) = e.get_mut(at) {
                    *b ^= x;
                }
            }
            Tamper::Insert(i, bytes) => events.insert(i % (events.len() + 1), bytes.clone()),
            Tamper::Truncate(i) if !events.is_empty() => {
                let e = &mut events[i % n];
                let keep = (i / n) % e.len().max(1);
                e.truncate(keep);
            }
            Tamper::ForeignEvent(i, k) => {
                let e = match k {
                    0 => other.events[1].clone(),
                    1 => other.done_event.clone(),
                    2 => other.events[0].clone(),
                    3 => error_event("boom"),
                    4 => "data: {\"choices\":[{\"delta\":{\"content\":\"forged\"}}]}\n\n".into(),
                    _ => OUTER_DONE_EVENT.into(),
                };
                events.insert(i % (events.len() + 1), e.into_bytes());
            }
            _ => {}
        }
    }
    events.concat()
}

fn contents() -> impl Strategy<Value = Vec<String>> {
    proptest::collection::vec("[a-z ]{0,12}", 0..5)
}

fn version() -> impl Strategy<Value = StreamVersion> {
    prop_oneof![Just(StreamVersion::V1), Just(StreamVersion::V2)]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    /// Property 4 and 2/3 on honest streams: any split gives the same events,
    /// which are every sealed line then Done.
    #[test]
    fn r23_untampered_stream_decodes_the_same_under_any_split(
        seed in 0u64..8,
        version in version(),
        contents in contents(),
        cuts in proptest::collection::vec(any::<usize>(), 0..40),
    ) {
        let s = sealed(seed, version, &contents);
        let bytes = s.events.concat().into_bytes();
        let whole = decode(&s, &bytes, &[]);
        let split = decode(&s, &bytes, &cuts);
        prop_assert_eq!(&whole, &split);
        let chunks: Vec<&Bytes> = whole
            .iter()
            .filter_map(|e| match e { Ok(StreamEvent::Chunk(c)) => Some(c), _ => None })
            .collect();
        prop_assert_eq!(chunks, s.lines.iter().collect::<Vec<_>>());
        prop_assert!(whole.iter().any(|e| matches!(e, Ok(StreamEvent::Done))));
        check_authenticated(&s, &bytes, &whole);
    }

    /// Properties 1–3 on tampered streams: dropped, duplicated, swapped,
    /// flipped, truncated and foreign events, inserted noise, any split.
    #[test]
    fn r23_tampered_stream_never_forwards_or_ends_unauthenticated(
        seed in 0u64..8,
        version in version(),
        contents in contents(),
        tampers in proptest::collection::vec(tamper(), 0..6),
        cuts in proptest::collection::vec(any::<usize>(), 0..40),
    ) {
        let s = sealed(seed, version, &contents);
        let bytes = apply(&s, &tampers);
        let out = decode(&s, &bytes, &cuts);
        check_authenticated(&s, &bytes, &out);
        // A split never changes the verdict of the same bytes.
        prop_assert_eq!(&out, &decode(&s, &bytes, &[]));
    }

    /// Property 1 on pure noise: arbitrary bytes, arbitrary splits.
    #[test]
    fn r23_arbitrary_bytes_never_panic_or_end_cleanly(
        bytes in proptest::collection::vec(any::<u8>(), 0..2048),
        cuts in proptest::collection::vec(any::<usize>(), 0..40),
    ) {
        let s = sealed(0, StreamVersion::V1, &[]);
        let out = decode(&s, &bytes, &cuts);
        check_authenticated(&s, &bytes, &out);
    }
}

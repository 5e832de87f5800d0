//! How a simulated host's response bytes are cut into writes (issue 15).
//!
//! A real network delivers an answer in reads whose boundaries the sender
//! does not choose; a client whose outcome depends on them has a bug the
//! simulation must own. Every host's response body can be re-cut here,
//! below the host's own logic: the bytes, their order, delays between them
//! (a slow first token) and resets are kept; only the boundaries move.
//!
//! * [`Chunking::Writes`] (default): as the host writes them (one write per
//!   SSE event, one per JSON body).
//! * [`Chunking::Whole`]: every write that is ready at once goes out as one
//!   (a whole body when nothing delays it).
//! * [`Chunking::Random`]: ready writes are coalesced or not by a coin, then
//!   cut at seed-drawn boundaries into pieces of 1 up to `max_chunk` bytes
//!   (default: the whole body).
//!
//! The cuts come from a ChaCha20 stream seeded from the world seed, the
//! host, its boot and the scenario's `chunk_seed`, one draw per response in
//! turmoil's deterministic order: a seed replays byte for byte.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use axum::body::Body;
use axum::response::Response;
use axum::Router;
use bytes::{Bytes, BytesMut};
use http_body::{Frame, SizeHint};
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::derive_seed;

/// How response bytes are cut into writes (the scenario's
/// `[world] chunking`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Chunking {
    /// As each host writes them.
    #[default]
    Writes,
    /// Everything ready at once in one write.
    Whole,
    /// Seed-drawn boundaries, 1 byte up to `max_chunk`.
    Random,
}

impl Chunking {
    pub const ALL: &'static [Chunking] = &[Chunking::Writes, Chunking::Whole, Chunking::Random];

    pub fn name(self) -> &'static str {
        match self {
            Chunking::Writes => "writes",
            Chunking::Whole => "whole",
            Chunking::Random => "random",
        }
    }

    pub fn from_name(name: &str) -> Option<Chunking> {
        Self::ALL.iter().copied().find(|c| c.name() == name)
    }
}

/// One world's chunking: the mode, the largest random piece and the seed
/// its cuts derive from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkPlan {
    pub chunking: Chunking,
    /// Largest piece under [`Chunking::Random`] (`None`: a whole body).
    pub max_chunk: Option<usize>,
    /// Mixed into the world seed: the same world cut differently.
    pub seed: u64,
}

/// Wraps `router` so each response body is re-cut under `plan` (a no-op for
/// [`Chunking::Writes`]). `host`, `world_seed` and `boot` seed the cuts.
pub(super) fn layer(
    router: Router,
    plan: ChunkPlan,
    host: &str,
    world_seed: u64,
    boot: u64,
) -> Router {
    if plan.chunking == Chunking::Writes {
        return router;
    }
    let seed = derive_seed(
        world_seed ^ plan.seed.rotate_left(17),
        &format!("chunking/{host}/boot-{boot}"),
    );
    let rng = Arc::new(Mutex::new(ChaCha20Rng::from_seed(seed)));
    router.layer(axum::middleware::map_response(move |resp: Response| {
        // One draw per response, in the order responses are built.
        let response_seed = rng.lock().unwrap_or_else(|p| p.into_inner()).next_u64();
        async move {
            let (parts, body) = resp.into_parts();
            let body = Rechunked {
                inner: body,
                rng: ChaCha20Rng::seed_from_u64(response_seed),
                plan,
                out: VecDeque::new(),
                held_error: None,
                inner_done: false,
                pause_after: false,
            };
            Response::from_parts(parts, Body::new(body))
        }
    }))
}

/// A response body with its boundaries moved (see the module docs).
struct Rechunked {
    inner: Body,
    rng: ChaCha20Rng,
    plan: ChunkPlan,
    /// Pieces cut and not yet sent.
    out: VecDeque<Bytes>,
    /// An error that followed data read in the same gathering: sent after it.
    held_error: Option<axum::Error>,
    inner_done: bool,
    /// The host paused (a flush, a sleep) after the pieces held: once they
    /// are sent, pause too, so the server flushes them before what follows
    /// (a reset must not swallow bytes the host meant to deliver).
    pause_after: bool,
}

impl Rechunked {
    fn buffered(&self) -> u64 {
        self.out.iter().map(|b| b.len() as u64).sum()
    }

    /// Cuts `buf` into the pieces to send.
    fn cut(&mut self, mut buf: Bytes) {
        if self.plan.chunking == Chunking::Whole || buf.is_empty() {
            self.out.push_back(buf);
            return;
        }
        let max = self.plan.max_chunk.unwrap_or(usize::MAX).max(1);
        while !buf.is_empty() {
            let cap = max.min(buf.len());
            // Half the pieces small (1..=16 bytes): boundaries inside SSE
            // lines, JSON and base64 are where decoders break.
            let cap = if self.rng.next_u32() & 1 == 0 {
                cap.min(16)
            } else {
                cap
            };
            let n = 1 + (self.rng.next_u64() % cap as u64) as usize;
            self.out.push_back(buf.split_to(n));
        }
    }
}

impl http_body::Body for Rechunked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        if let Some(piece) = this.out.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(piece))));
        }
        if std::mem::take(&mut this.pause_after) {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        if let Some(e) = this.held_error.take() {
            return Poll::Ready(Some(Err(e)));
        }
        if this.inner_done {
            return Poll::Ready(None);
        }
        let mut buf = BytesMut::new();
        match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            None => {
                this.inner_done = true;
                return Poll::Ready(None);
            }
            Some(Err(e)) => return Poll::Ready(Some(Err(e))),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => buf.extend_from_slice(&data),
                // Trailers pass as they are (no simulated host sends any).
                Err(frame) => return Poll::Ready(Some(Ok(frame))),
            },
        }
        // Gather what is ready now: always for `whole`, by a coin for
        // `random`. A delay (a sleep, a flush) stays a boundary.
        loop {
            if this.plan.chunking == Chunking::Random && this.rng.next_u32() & 1 == 0 {
                break;
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => {
                    this.pause_after = true;
                    break;
                }
                Poll::Ready(None) => {
                    this.inner_done = true;
                    break;
                }
                Poll::Ready(Some(Err(e))) => {
                    this.held_error = Some(e);
                    break;
                }
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => buf.extend_from_slice(&data),
                    Err(_) => break,
                },
            }
        }
        this.cut(buf.freeze());
        let piece = this.out.pop_front().expect("cut yields at least one piece");
        Poll::Ready(Some(Ok(Frame::data(piece))))
    }

    fn is_end_stream(&self) -> bool {
        self.out.is_empty()
            && self.held_error.is_none()
            && (self.inner_done || self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        // What is still to come: the pieces held plus the inner rest, so an
        // exact length (a JSON body's Content-Length) stays exact.
        let inner = self.inner.size_hint();
        let held = self.buffered();
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower() + held);
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + held);
        }
        hint
    }
}

/// Boots seen by one host, for [`layer`]'s seeds.
#[derive(Debug, Default)]
pub(super) struct BootCounter(AtomicU64);

impl BootCounter {
    pub(super) fn next(&self) -> u64 {
        self.0.fetch_add(1, Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;

    fn body_of(pieces: &[&'static [u8]]) -> Body {
        let frames: Vec<Result<Bytes, std::io::Error>> =
            pieces.iter().map(|p| Ok(Bytes::from_static(p))).collect();
        Body::from_stream(futures_util::stream::iter(frames))
    }

    async fn frames(plan: ChunkPlan, seed: u64) -> Vec<Bytes> {
        let mut body = Rechunked {
            inner: body_of(&[
                b"data: {\"e2e_init\":\"a\"}\n\n",
                b"data: {\"e2e\":\"b\"}\n\n",
            ]),
            rng: ChaCha20Rng::seed_from_u64(seed),
            plan,
            out: VecDeque::new(),
            held_error: None,
            inner_done: false,
            pause_after: false,
        };
        let mut out = Vec::new();
        while let Some(f) = body.frame().await {
            out.push(f.unwrap().into_data().unwrap());
        }
        out
    }

    #[tokio::test]
    async fn chunking_keeps_the_bytes_and_moves_the_boundaries() {
        let all: Vec<u8> = b"data: {\"e2e_init\":\"a\"}\n\ndata: {\"e2e\":\"b\"}\n\n".to_vec();
        let plan = |chunking, max_chunk| ChunkPlan {
            chunking,
            max_chunk,
            seed: 0,
        };
        let whole = frames(plan(Chunking::Whole, None), 1).await;
        assert_eq!(whole, vec![Bytes::from(all.clone())], "one write");
        let mut shapes = std::collections::BTreeSet::new();
        for seed in 0..20 {
            let random = frames(plan(Chunking::Random, Some(8)), seed).await;
            assert_eq!(random.concat(), all, "same bytes, same order");
            assert!(random.iter().all(|p| (1..=8).contains(&p.len())));
            shapes.insert(random.iter().map(Bytes::len).collect::<Vec<_>>());
            // The same seed cuts the same way.
            assert_eq!(random, frames(plan(Chunking::Random, Some(8)), seed).await);
        }
        assert!(shapes.len() > 10, "seeds cut differently: {}", shapes.len());
    }
}

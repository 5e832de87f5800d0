//! Splitting a body stream into lines (for SSE), with a per-line cap.

use std::pin::Pin;

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};

use super::{BodyStream, HttpError};

pub type LineStream = Pin<Box<dyn Stream<Item = Result<Bytes, HttpError>> + Send>>;

/// The body's lines without their `\n` / `\r\n` terminators. A line longer
/// than `max_line` bytes is an error. An unterminated last line is dropped,
/// as SSE drops an incomplete event: a cut connection must not complete a
/// half-received line.
pub fn lines(body: BodyStream, max_line: usize) -> LineStream {
    struct State {
        body: BodyStream,
        buf: BytesMut,
        /// Bytes of `buf` already searched for a newline.
        scanned: usize,
    }
    let state = Some(State {
        body,
        buf: BytesMut::new(),
        scanned: 0,
    });
    Box::pin(futures_util::stream::unfold(
        state,
        move |state| async move {
            let mut st = state?;
            loop {
                if let Some(pos) = st.buf[st.scanned..].iter().position(|&b| b == b'\n') {
                    let end = st.scanned + pos;
                    let mut line = st.buf.split_to(end + 1);
                    st.scanned = 0;
                    line.truncate(end);
                    if line.last() == Some(&b'\r') {
                        line.truncate(end - 1);
                    }
                    if line.len() > max_line {
                        return Some((Err(HttpError::LineTooLong { limit: max_line }), None));
                    }
                    return Some((Ok(line.freeze()), Some(st)));
                }
                st.scanned = st.buf.len();
                // +1: the line may still end with a `\r` we will strip.
                if st.buf.len() > max_line + 1 {
                    return Some((Err(HttpError::LineTooLong { limit: max_line }), None));
                }
                match st.body.next().await {
                    None => return None,
                    Some(Err(e)) => return Some((Err(e), None)),
                    Some(Ok(chunk)) => st.buf.extend_from_slice(&chunk),
                }
            }
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(chunks: &[&'static str]) -> BodyStream {
        let items: Vec<Result<Bytes, HttpError>> = chunks
            .iter()
            .map(|c| Ok(Bytes::from_static(c.as_bytes())))
            .collect();
        Box::pin(futures_util::stream::iter(items))
    }

    async fn collect(s: LineStream) -> Vec<Result<String, HttpError>> {
        s.map(|r| r.map(|b| String::from_utf8(b.to_vec()).unwrap()))
            .collect()
            .await
    }

    #[tokio::test]
    async fn splits_across_chunks_and_strips_crlf() {
        let got = collect(lines(body(&["da", "ta: a\r\n\nda", "ta: b\n", "tail"]), 64)).await;
        assert_eq!(
            got,
            vec![Ok("data: a".into()), Ok("".into()), Ok("data: b".into())]
        );
    }

    #[tokio::test]
    async fn caps_line_length() {
        let got = collect(lines(body(&["12345", "678\n"]), 5)).await;
        assert_eq!(got, vec![Err(HttpError::LineTooLong { limit: 5 })]);
        let got = collect(lines(body(&["12345\r\n"]), 5)).await;
        assert_eq!(got, vec![Ok("12345".into())]);
    }
}

//! Client-supplied text shown back to a person: in error bodies and log
//! lines. Bounded (a 1 MB model id must not become a 1 MB reply or log
//! line) and with every control or bidi-format character escaped, so no
//! input can forge a log line, move a terminal's cursor or reorder text.

use std::borrow::Cow;
use std::fmt::Write;

/// At most this many characters of client text are echoed; the rest is cut
/// and marked with an ellipsis.
pub const MAX_ECHO_CHARS: usize = 256;

/// Characters that change how the surrounding text reads: C0/C1 controls
/// (newline, ESC of ANSI sequences, DEL), line and paragraph separators,
/// and the bidi marks and overrides.
pub fn is_forging(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
        )
}

/// Appends `c`, written as `\u{…}` if it is a forging character.
pub fn push_escaped(out: &mut String, c: char) {
    if is_forging(c) {
        let _ = write!(out, "\\u{{{:x}}}", c as u32);
    } else {
        out.push(c);
    }
}

/// `s` as it may be echoed: at most [`MAX_ECHO_CHARS`] characters, each
/// forging character written as `\u{…}`, then `…` if it was cut. Text that
/// needs neither is returned as is.
pub fn echo(s: &str) -> Cow<'_, str> {
    bounded(s, MAX_ECHO_CHARS)
}

/// `s` with every forging character escaped, whatever its length: for text
/// that is already bounded (e.g. a sanitised upstream error).
pub fn escape(s: &str) -> Cow<'_, str> {
    bounded(s, usize::MAX)
}

fn bounded(s: &str, max_chars: usize) -> Cow<'_, str> {
    let long = s.chars().nth(max_chars).is_some();
    if !long && !s.chars().any(is_forging) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len().min(max_chars.saturating_mul(4)) + 4);
    for c in s.chars().take(max_chars) {
        push_escaped(&mut out, c);
    }
    if long {
        out.push('…');
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_short_text_is_unchanged() {
        assert!(matches!(echo("zai-org/GLM-5.1-FP8"), Cow::Borrowed(_)));
    }

    #[test]
    fn control_and_bidi_characters_are_escaped() {
        let got = echo("a\nb\r\x1b[31mc\u{7f}\u{202e}d\u{2028}");
        assert_eq!(got, "a\\u{a}b\\u{d}\\u{1b}[31mc\\u{7f}\\u{202e}d\\u{2028}");
        assert!(!got.chars().any(is_forging));
    }

    #[test]
    fn long_text_is_cut_with_an_ellipsis() {
        let long = "x".repeat(1 << 20);
        let got = echo(&long);
        assert_eq!(got.chars().count(), MAX_ECHO_CHARS + 1);
        assert!(got.ends_with('…'));
        let exact = "y".repeat(MAX_ECHO_CHARS);
        assert_eq!(echo(&exact), exact, "exactly the limit is not cut");
        assert_eq!(escape(&long), long, "escape never cuts");
        assert_eq!(escape("a\nb"), "a\\u{a}b");
    }
}

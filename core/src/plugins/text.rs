//! [`Text`]: a response header value that plugins decide per request, kept inline when short.
//!
//! Rate-limiting sets five numeric headers on every response it lets through. As `String`s
//! they were five heap allocations (and frees) per request, each through `core::fmt`; in a
//! proxy the request path runs with cold caches, so every allocation is a few cache lines of
//! allocator state paid again. Numbers and other short values are written in place instead.

use std::fmt;
use std::ops::Deref;

/// Up to this many bytes are kept inline (every `u64` is at most 20 digits).
const INLINE: usize = 22;

/// A header value: inline up to [`INLINE`] bytes, else on the heap.
#[derive(Clone)]
pub(crate) enum Text {
    /// `bytes[..len]`, always UTF-8 (built from a `&str` or from ASCII digits).
    Inline {
        len: u8,
        bytes: [u8; INLINE],
    },
    Heap(String),
}

impl Text {
    /// The decimal digits of `n`. Out of line: one copy of the code however many headers
    /// a plugin numbers (the request path's cost is mostly the code and data it touches).
    #[inline(never)]
    pub(crate) fn number(n: u64) -> Text {
        // Written from the end, then moved to the front.
        let mut bytes = [0u8; INLINE];
        let mut at = INLINE;
        let mut rest = n;
        loop {
            at -= 1;
            bytes[at] = b'0' + (rest % 10) as u8;
            rest /= 10;
            if rest == 0 {
                break;
            }
        }
        bytes.copy_within(at.., 0);
        Text::Inline {
            len: (INLINE - at) as u8,
            bytes,
        }
    }

    fn inline(text: &str) -> Option<Text> {
        let len = text.len();
        (len <= INLINE).then(|| {
            let mut bytes = [0u8; INLINE];
            bytes[..len].copy_from_slice(text.as_bytes());
            Text::Inline {
                len: len as u8,
                bytes,
            }
        })
    }
}

impl Deref for Text {
    type Target = str;

    fn deref(&self) -> &str {
        match self {
            // Never fails: the bytes came from a `&str` or are ASCII digits.
            Text::Inline { len, bytes } => {
                std::str::from_utf8(&bytes[..usize::from(*len)]).unwrap_or_default()
            }
            Text::Heap(text) => text,
        }
    }
}

impl Default for Text {
    fn default() -> Self {
        Text::Inline {
            len: 0,
            bytes: [0; INLINE],
        }
    }
}

impl PartialEq for Text {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Eq for Text {}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self)
    }
}

impl From<&str> for Text {
    fn from(text: &str) -> Self {
        Text::inline(text).unwrap_or_else(|| Text::Heap(text.to_owned()))
    }
}

impl From<String> for Text {
    fn from(text: String) -> Self {
        // An allocation already made is kept rather than copied.
        Text::Heap(text)
    }
}

impl From<Text> for String {
    fn from(text: Text) -> Self {
        match text {
            Text::Heap(text) => text,
            inline => inline.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_their_decimal_digits_inline() {
        for n in [0, 7, 10, 999_999_990, 1_000_000_000, u64::MAX] {
            let text = Text::number(n);
            assert_eq!(&*text, n.to_string(), "{n}");
            assert!(matches!(text, Text::Inline { .. }), "{n}");
        }
    }

    #[test]
    fn short_text_is_inline_and_long_text_on_the_heap_with_the_same_value() {
        let short = "Origin, Accept-Encoding";
        let exactly = "a".repeat(INLINE);
        let long = "b".repeat(INLINE + 1);
        assert!(matches!(Text::from(&exactly[..]), Text::Inline { .. }));
        assert!(matches!(Text::from(&long[..]), Text::Heap(_)));
        assert_eq!(&*Text::from(&long[..]), long);
        assert_eq!(&*Text::from(&exactly[..]), exactly);
        assert_eq!(&*Text::from(short), short);
        assert_eq!(&*Text::from("é✓"), "é✓");
        assert_eq!(&*Text::default(), "");
        assert_eq!(String::from(Text::from("5")), "5");
        assert_eq!(String::from(Text::from(long.clone())), long);
        assert_eq!(Text::from("x"), Text::Heap("x".into()));
        assert_eq!(format!("{:?}", Text::number(42)), "\"42\"");
    }
}

//! How deep a YAML text nests, found before it is parsed for real, at a cost linear in its size.
//!
//! `serde_yaml_ng` reads every event of a document before its own recursion limit applies, and
//! its scanner (libyaml's) spends time proportional to the current flow depth on every token:
//! 100,000 levels of `[` in 200 KB take tens of seconds to refuse. This walks the same scanner's
//! events (the `unsafe-libyaml` crate `serde_yaml_ng` itself is built on, so both read the text
//! alike) and stops at the first collection deeper than the limit: the scanner never works at
//! a depth above it, so the cost stays linear.
//!
//! The only `unsafe` code of the companion: libyaml's parser is a C translation whose API takes
//! raw pointers. Its use mirrors `serde_yaml_ng`'s own parser: one parser on the heap (it
//! points into itself once given its input), every event deleted, the parser deleted on drop.

use std::mem::MaybeUninit;
use unsafe_libyaml as unsafe_sys;

/// Where a text first nests deeper than the limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TooDeep {
    /// 1-based line of the collection that crossed the limit.
    pub line: u64,
    /// 1-based column.
    pub column: u64,
}

/// `Err` with the position of the first array or object nested deeper than `limit` (the
/// top-level collection is depth 1). A text that is not valid YAML is `Ok` once the scanner
/// stops at its error, which the real parse then reports: the scanner got there at a depth
/// within the limit.
pub fn check(text: &str, limit: usize) -> Result<(), TooDeep> {
    let parser = Parser::new(text.as_bytes());
    let mut depth = 0usize;
    loop {
        let Some(event) = parser.next() else {
            return Ok(());
        };
        match event.kind {
            unsafe_sys::YAML_SEQUENCE_START_EVENT | unsafe_sys::YAML_MAPPING_START_EVENT => {
                depth += 1;
                if depth > limit {
                    return Err(TooDeep {
                        line: event.line + 1,
                        column: event.column + 1,
                    });
                }
            }
            unsafe_sys::YAML_SEQUENCE_END_EVENT | unsafe_sys::YAML_MAPPING_END_EVENT => {
                depth = depth.saturating_sub(1);
            }
            unsafe_sys::YAML_STREAM_END_EVENT => return Ok(()),
            _ => {}
        }
    }
}

struct Event {
    kind: unsafe_sys::yaml_event_type_t,
    line: u64,
    column: u64,
}

/// A libyaml parser over borrowed input; deleted on drop.
struct Parser<'input> {
    /// Boxed: once given its input the parser holds a pointer to itself, so it must not move.
    sys: Box<MaybeUninit<unsafe_sys::yaml_parser_t>>,
    _input: std::marker::PhantomData<&'input [u8]>,
}

impl<'input> Parser<'input> {
    fn new(input: &'input [u8]) -> Self {
        let mut sys = Box::new(MaybeUninit::<unsafe_sys::yaml_parser_t>::uninit());
        // SAFETY: `yaml_parser_initialize` initialises the whole struct (it fails only when
        // malloc fails, which aborts in Rust's allocator before returning). The parser keeps
        // a pointer to `input`, which `'input` keeps alive, and one to itself, which the box
        // keeps in place.
        unsafe {
            let parser = sys.as_mut_ptr();
            if unsafe_sys::yaml_parser_initialize(parser).fail {
                panic!("libyaml could not allocate a parser");
            }
            unsafe_sys::yaml_parser_set_encoding(parser, unsafe_sys::YAML_UTF8_ENCODING);
            unsafe_sys::yaml_parser_set_input_string(parser, input.as_ptr(), input.len() as u64);
        }
        Parser {
            sys,
            _input: std::marker::PhantomData,
        }
    }

    /// The next event; `None` after a syntax error.
    fn next(&self) -> Option<Event> {
        let mut event = MaybeUninit::<unsafe_sys::yaml_event_t>::uninit();
        // SAFETY: the parser was initialised in `new`; `yaml_parser_parse` initialises
        // `event` when it succeeds, and the event is deleted before leaving this block (its
        // type and mark are plain data, copied out first). A failed parser keeps failing.
        unsafe {
            let parser = self.sys.as_ptr().cast_mut();
            if unsafe_sys::yaml_parser_parse(parser, event.as_mut_ptr()).fail {
                return None;
            }
            let event = event.as_mut_ptr();
            let out = Event {
                kind: (*event).type_,
                line: (*event).start_mark.line,
                column: (*event).start_mark.column,
            };
            unsafe_sys::yaml_event_delete(event);
            Some(out)
        }
    }
}

impl Drop for Parser<'_> {
    fn drop(&mut self) {
        // SAFETY: initialised in `new`, deleted once.
        unsafe { unsafe_sys::yaml_parser_delete(self.sys.as_mut_ptr()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_counts_block_and_flow_collections() {
        assert_eq!(check("a: 1\n", 1), Ok(()));
        assert_eq!(check("a: [1, {b: 2}]\n", 3), Ok(()));
        assert_eq!(
            check("a: [1, {b: 2}]\n", 2),
            Err(TooDeep { line: 1, column: 8 })
        );
        assert_eq!(
            check("a:\n  - b:\n      c: 1\n", 3),
            Err(TooDeep { line: 3, column: 7 })
        );
        assert_eq!(check("a:\n  - b:\n      c: 1\n", 4), Ok(()));
        // Scalars that look like brackets are not collections.
        assert_eq!(
            check("a: '[[[['\nb: \"{{{{\"\nc: x[[[\n# [[[[\n", 1),
            Ok(())
        );
    }

    #[test]
    fn syntax_errors_are_left_to_the_real_parse() {
        assert_eq!(check("a: [1, 2\n", 5), Ok(()));
        assert_eq!(check("\t- x", 5), Ok(()));
    }

    #[test]
    fn the_first_collection_past_the_limit_is_named() {
        // 100,000 levels: serde_yaml_ng alone spends tens of seconds on this.
        let n = 100_000;
        let text = format!("a: {}{}", "[".repeat(n), "]".repeat(n));
        assert_eq!(
            check(&text, 64),
            Err(TooDeep {
                line: 1,
                column: 67
            })
        );
    }
}

//! Request-path normalisation and upstream-path building, as Kong 3.x does them.

use crate::digest::hex_value;
use std::borrow::Cow;

/// Kong's `kong.tools.uri.normalize(path, true)` (Kong 3.9.x `kong/tools/uri.lua`, RFC 3986
/// §6.2.2): percent-encoded triplets are decoded except reserved characters
/// (`!*'();:@&=+$,/?%#[]`), which keep an upper-case triplet; runs of `/` collapse to one (Kong
/// merges slashes) and dot segments are removed (§5.2.4). `path` has no query.
///
/// Kong works on bytes; here a path stays UTF-8: when decoding would leave bytes that are not
/// UTF-8 (`%FF`), only the ASCII triplets are decoded. [`escape`] encodes the same bytes again
/// on the way upstream, so the upstream request line is Kong's either way.
///
/// Unlike Kong, a `%` that starts no valid triplet becomes `%25`: Kong leaves it, which makes
/// its normalisation read `/%4%41` as `/%4A`, a path that normalises (and that an upstream
/// decodes) to `/J`. Here normalising twice gives what normalising once gives.
pub fn normalize(path: &str) -> Cow<'_, str> {
    // Every segment follows a '/', so a path without "%", "//" and "/." is already normal.
    if !path.contains('%') && !path.contains("//") && !path.contains("/.") {
        return path.into();
    }
    let decoded = decode_triplets(path);
    let merged = merge_slashes(&decoded);
    if !merged.contains('.') {
        return merged.into();
    }
    remove_dot_segments(&merged).into()
}

/// Characters whose meaning changes when decoded: `kong/tools/uri.lua`'s `RESERVED_CHARS`
/// (`migrate_path_280_300.lua`'s `RESERVED_CHARACTERS` is the same set).
pub(crate) const RESERVED: &[u8] = b"!*'();:@&=+$,/?%#[]";

fn decode_triplets(path: &str) -> String {
    if !path.contains('%') {
        return path.to_owned();
    }
    let decode = |ascii_only: bool| {
        rewrite_triplets(path, |c, out| {
            if RESERVED.contains(&c) || (ascii_only && !c.is_ascii()) {
                push_triplet(out, c);
            } else {
                out.push(c);
            }
        })
    };
    String::from_utf8(decode(false)).unwrap_or_else(|_| {
        // Only ASCII bytes were decoded, so valid UTF-8 stays valid.
        String::from_utf8(decode(true))
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
    })
}

/// `text` with each `%XX` triplet replaced by what `write` appends for its byte; a `%` not
/// followed by two hex digits becomes `%25` (see [`normalize`]).
pub(crate) fn rewrite_triplets(text: &str, write: impl Fn(u8, &mut Vec<u8>)) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex_value(bytes[i + 1]), hex_value(bytes[i + 2])) {
                write(h * 16 + l, &mut out);
                i += 3;
                continue;
            }
        }
        if bytes[i] == b'%' {
            // A '%' that starts no triplet is a literal percent sign (RFC 3986 §2.4: always
            // encoded). Left raw, it could pair with what follows once that is decoded
            // ("/%4%41" → "/%4A"), so a second normalisation, or the upstream's own decoding,
            // would read another path ("/J") than the one routed.
            out.extend_from_slice(b"%25");
        } else {
            out.push(bytes[i]);
        }
        i += 1;
    }
    out
}

/// Appends `%XX` with upper-case hex digits.
pub(crate) fn push_triplet(out: &mut Vec<u8>, c: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.extend([b'%', HEX[usize::from(c >> 4)], HEX[usize::from(c & 15)]]);
}

fn merge_slashes(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut previous_slash = false;
    for c in path.chars() {
        if c == '/' && previous_slash {
            continue;
        }
        previous_slash = c == '/';
        out.push(c);
    }
    out
}

/// RFC 3986 §5.2.4 on an absolute path.
fn remove_dot_segments(path: &str) -> String {
    let mut output: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').collect();
    let last = segments.len() - 1;
    // A path ending in "." or ".." names a directory: it keeps a trailing slash.
    let mut trailing_slash = false;
    for (i, segment) in segments.iter().enumerate() {
        match *segment {
            "." => trailing_slash = i == last,
            ".." => {
                output.pop();
                trailing_slash = i == last;
            }
            "" if i == 0 => {}
            s => {
                output.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut out = String::with_capacity(path.len());
    for segment in &output {
        out.push('/');
        out.push_str(segment);
    }
    if trailing_slash || out.is_empty() {
        out.push('/');
    }
    out
}

/// Kong's `kong.tools.uri.escape`: percent-encodes what may not appear raw in a request target
/// (anything outside unreserved, reserved and `%`), so the upstream request line stays valid.
pub fn escape(path: &str) -> Cow<'_, str> {
    let keep = |b: u8| b.is_ascii_alphanumeric() || b"!#$&'()*+,/:;=?@[]-_.~%".contains(&b);
    if path.bytes().all(keep) {
        return path.into();
    }
    let mut out = String::with_capacity(path.len() + 8);
    for b in path.bytes() {
        if keep(b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out.into()
}

/// Kong's `sanitize_uri_postfix`: a remaining path starting with `.`/`..` segments loses them.
pub fn sanitize_postfix(postfix: &str) -> &str {
    match postfix {
        "." | ".." => "",
        _ => postfix
            .strip_prefix("./")
            .or_else(|| postfix.strip_prefix("../"))
            .unwrap_or(postfix),
    }
}

/// `path` split at its first `?`: the path, and the query string if there is one. A byte
/// search: it runs on every request, and `str`'s char searchers are much more code.
pub fn split_query(path: &str) -> (&str, Option<&str>) {
    match path.bytes().position(|b| b == b'?') {
        // `?` is ASCII: both sides are on char boundaries.
        Some(at) => (&path[..at], Some(&path[at + 1..])),
        None => (path, None),
    }
}

/// `parts` joined, in one allocation of the right size: per request, without `core::fmt`.
fn concat(parts: &[&str]) -> String {
    let mut joined = String::with_capacity(parts.iter().map(|p| p.len()).sum());
    for part in parts {
        joined.push_str(part);
    }
    joined
}

/// Kong's `get_upstream_uri_v0`: joins the service path `base` with the request path
/// (`postfix` is what remains after the matched prefix when stripping; `request` is the full
/// normalised request path without its query).
pub fn join_v0(base: &str, strip_path: bool, postfix: &str, request: &str) -> String {
    let request_ends_with_slash = request.ends_with('/');
    if let Some(trimmed) = base.strip_suffix('/') {
        if !strip_path {
            // The request path without its leading slash, after the base's own.
            return concat(&[base, request.strip_prefix('/').unwrap_or(request)]);
        }
        if postfix.is_empty() {
            if base == "/" {
                "/".to_owned()
            } else if request_ends_with_slash {
                base.to_owned()
            } else {
                trimmed.to_owned()
            }
        } else if postfix.starts_with('/') {
            concat(&[trimmed, postfix])
        } else {
            concat(&[base, postfix])
        }
    } else if !strip_path {
        if request == "/" {
            base.to_owned()
        } else {
            concat(&[base, request])
        }
    } else if postfix.is_empty() {
        if request.len() > 1 && request_ends_with_slash {
            concat(&[base, "/"])
        } else {
            base.to_owned()
        }
    } else if postfix.starts_with('/') {
        concat(&[base, postfix])
    } else {
        concat(&[base, "/", postfix])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation_follows_rfc_3986_as_kong_does() {
        // RFC 3986 §5.2.4 examples, on absolute paths; §6.2.2.2 percent-encoding; Kong merges
        // slashes (kong.tools.uri.normalize(uri, true) in its router).
        for (input, expected) in [
            ("/", "/"),
            ("/a/b/c/./../../g", "/a/g"),
            ("/mid/content=5/../6", "/mid/6"),
            ("/a/./b", "/a/b"),
            ("/a/../b", "/b"),
            ("/..", "/"),
            ("/../../x", "/x"),
            ("/a/.", "/a/"),
            ("/a/..", "/"),
            ("/a/b/", "/a/b/"),
            ("//a///b", "/a/b"),
            ("/%7Euser/%61pi", "/~user/api"),
            ("/a%2fb", "/a%2Fb"),
            ("/a%2e%2e/x", "/a../x"),
            ("/x/%2e%2e/y", "/y"),
            ("/100%", "/100%25"),
            ("/%4%41", "/%254A"),
            ("/%zz/%2", "/%25zz/%252"),
            // Kong decodes every triplet but the reserved characters' ("others" too).
            ("/a%20b", "/a b"),
            ("/q%22%3c", "/q\"<"),
            ("/caf%c3%a9", "/caf\u{e9}"),
            ("/a%3b%40", "/a%3B%40"),
            ("/bad%FF%41", "/bad%FFA"),
            ("/.hidden/x", "/.hidden/x"),
        ] {
            assert_eq!(normalize(input), expected, "{input}");
        }
    }

    #[test]
    fn escape_keeps_reserved_and_percent() {
        assert_eq!(escape("/a b/%2F?x"), "/a%20b/%2F?x");
        assert_eq!(escape("/caf\u{e9}"), "/caf%C3%A9");
        assert_eq!(escape("/plain/path"), "/plain/path");
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        /// Paths built from what normalisation treats specially.
        fn odd_path() -> impl Strategy<Value = String> {
            prop::collection::vec(
                prop::sample::select(vec![
                    "/", "//", ".", "..", "%2e", "%2E", "%2f", "%7e", "%41", "%", "%4", "%zz", "a",
                    "b~", "é", "%C3%A9", "?", ";", " ",
                ]),
                0..12,
            )
            .prop_map(|parts| format!("/{}", parts.concat()))
        }

        proptest! {
            #![proptest_config(crate::properties::config())]

            #[test]
            fn normalisation_never_panics_and_is_idempotent(path in prop_oneof![odd_path(), "/.{0,40}"]) {
                let once = normalize(&path).into_owned();
                prop_assert_eq!(normalize(&once), once.as_str(), "from {:?}", path);
                prop_assert!(once.starts_with('/'), "{once:?} from {path:?}");
                prop_assert!(!once.contains("//"), "{once:?} from {path:?}");
                prop_assert!(
                    !once.split('/').any(|s| s == "." || s == ".."),
                    "{once:?} from {path:?}"
                );
                // At most a stray '%' becomes "%25": the 414 check on the raw path bounds
                // what regexes see.
                prop_assert!(once.len() <= 3 * path.len().max(1), "{once:?} from {path:?}");
            }

            #[test]
            fn escaping_keeps_a_request_target_valid_and_is_idempotent(path in ".{0,40}") {
                let escaped = escape(&path).into_owned();
                prop_assert!(escaped.bytes().all(|b| b.is_ascii_graphic()), "{escaped:?}");
                prop_assert_eq!(escape(&escaped), escaped.as_str());
            }

            #[test]
            fn joining_never_panics(base in "/[a-z/]{0,8}", strip in any::<bool>(), request in "/[a-z./]{0,12}", cut in 0usize..14) {
                let at = request.char_indices().map(|(i, _)| i).nth(cut).unwrap_or(request.len());
                let postfix = sanitize_postfix(&request[at..]);
                let joined = join_v0(&base, strip, postfix, &request);
                prop_assert!(joined.starts_with('/'), "{joined:?}");
            }
        }
    }
}

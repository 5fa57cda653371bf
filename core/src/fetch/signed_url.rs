//! The storage call's `:authority` and `:path` from a signed URL.
//!
//! The authority must be the URL's own `host[:port]`, byte for byte: SigV4 and GCS V4 signatures
//! cover the `host` header, so any rewriting would make storage reject the request.

/// `(authority, path_and_query, is https)` of an `http://` or `https://` URL; `None` for
/// anything else (another scheme, user info, an empty host, whitespace or control characters).
pub(super) fn split(url: &str) -> Option<(&str, String, bool)> {
    let (scheme, rest) = url.split_once("://")?;
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return None;
    }
    let rest = rest.split('#').next().unwrap_or(rest);
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let bad = |c: char| c.is_whitespace() || c.is_control();
    if authority.is_empty() || authority.contains('@') || authority.contains(bad) {
        return None;
    }
    if tail.contains(bad) {
        return None;
    }
    let path = if tail.starts_with('/') {
        tail.to_owned()
    } else {
        format!("/{tail}")
    };
    Some((authority, path, scheme.eq_ignore_ascii_case("https")))
}

#[cfg(test)]
mod tests {
    use super::split;

    #[test]
    fn splits_authority_and_path_with_query() {
        assert_eq!(
            split("http://127.0.0.1:8333/bucket/kong/3.4.1.0/config.json?X-Amz-Signature=ab"),
            Some((
                "127.0.0.1:8333",
                "/bucket/kong/3.4.1.0/config.json?X-Amz-Signature=ab".to_owned(),
                false
            ))
        );
        assert_eq!(
            split("HTTPS://storage.googleapis.com/b/k?x=1#frag"),
            Some(("storage.googleapis.com", "/b/k?x=1".to_owned(), true))
        );
        assert_eq!(split("http://h"), Some(("h", "/".to_owned(), false)));
        assert_eq!(
            split("http://h?x=1"),
            Some(("h", "/?x=1".to_owned(), false))
        );
    }

    #[test]
    fn rejects_what_cannot_be_dispatched() {
        for url in [
            "",
            "h/k",
            "ftp://h/k",
            "http:///k",
            "http://user:pw@h/k",
            "http://h/k with space",
            "http://h\r\n/k",
            "file:///tmp/k",
        ] {
            assert_eq!(split(url), None, "{url:?}");
        }
    }
}

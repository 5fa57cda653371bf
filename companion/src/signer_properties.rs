//! Property tests of what the companion parses from outside: the signer's request parsing
//! (`Authorization`, the query, the object path of `file://` URLs, their signatures) and the
//! control plane's answers (`source::normalise`). Kept apart from `signer.rs`, which reaches
//! its parsers through three small `pub(crate)` seams.
//!
//! 64 cases unless `PROPTEST_CASES` says otherwise (`make fuzz` runs 20,000).

use crate::secret::Secret;
use crate::signer::{bearer_from, percent_decode, query_value};
use crate::source::normalise;
use crate::storage::file::UrlSigner;
use fallback_core::wire::{percent_encode, OBJECTS_PATH};
use proptest::prelude::*;
use proptest::test_runner::Config;
use std::time::{Duration, UNIX_EPOCH};

fn config() -> Config {
    let mut config = Config::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = 64;
    }
    config
}

/// Text that YAML and JSON parsers treat specially.
fn yamlish() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop::sample::select(vec![
            "[",
            "]",
            "{",
            "}",
            ",",
            ": ",
            "- ",
            "? ",
            "\n",
            "  ",
            "#",
            "'",
            "\"",
            "\\",
            "&a ",
            "*a",
            "!!str ",
            "|\n",
            ">-\n",
            "---\n",
            "...\n",
            "a",
            "1",
            "null",
            "_format_version: \"3.0\"\n",
            "config",
            "\t",
            "%YAML 1.2\n",
            "<<: ",
            "\u{feff}",
        ]),
        0..40,
    )
    .prop_map(|parts| parts.concat())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn object_paths_decode_what_urls_encode(key in "[^\u{0}]{0,30}", raw in ".{0,40}") {
        prop_assert_eq!(percent_decode(&percent_encode(&key)), Some(key));
        let _ = percent_decode(&raw);
    }

    #[test]
    fn query_values_never_panic_and_read_what_was_written(
        raw in ".{0,60}",
        name in "[a-z]{1,8}",
        value in ".{0,20}",
    ) {
        let _ = query_value(&raw, &name);
        let query = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("other", "x")
            .append_pair(&name, &value)
            .finish();
        prop_assert_eq!(query_value(&query, &name), Some(value));
    }

    #[test]
    fn bearer_tokens_never_panic(raw in ".{0,60}", token in "[A-Za-z0-9._~+/=-]{1,40}") {
        let _ = bearer_from(&raw);
        let header = format!("Bearer {token}");
        prop_assert_eq!(bearer_from(&header), Some(token.as_str()));
        let header = format!("bEaReR   {token}  ");
        prop_assert_eq!(bearer_from(&header), Some(token.as_str()));
        let basic = format!("Basic {token}");
        prop_assert_eq!(bearer_from(&basic), None);
    }

    #[test]
    fn object_urls_verify_only_as_signed(
        key in "[a-z0-9./_-]{1,30}",
        expires in proptest::option::of(".{0,24}"),
        signature in proptest::option::of(".{0,70}"),
        flip in 0usize..64,
    ) {
        let signer = UrlSigner::new("http://companion:8280/", Secret::new("k"));
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        // Anything from the network: never a panic, never accepted unless genuine.
        if signer.verify(&key, expires.as_deref(), signature.as_deref(), now).is_ok() {
            let e: u64 = expires.as_deref().unwrap().parse().unwrap();
            prop_assert!(signature.unwrap().eq_ignore_ascii_case(&signer.signature(&key, e)));
        }
        // What the signer writes reads back: the object path and its query.
        let later = 1_700_000_300;
        let url = signer.url(&key, later);
        let (path, query) = url.split_once('?').unwrap();
        let raw = &path[path.find(OBJECTS_PATH).unwrap() + OBJECTS_PATH.len()..];
        let decoded: Option<Vec<String>> = raw.split('/').map(percent_decode).collect();
        prop_assert_eq!(decoded.map(|s| s.join("/")), Some(key.clone()));
        let expires_q = query_value(query, "expires");
        let signature_q = query_value(query, "signature");
        prop_assert!(signer.verify(&key, expires_q.as_deref(), signature_q.as_deref(), now).is_ok());
        let mut forged = signature_q.clone().unwrap().into_bytes();
        forged[flip] = if forged[flip] == b'0' { b'1' } else { b'0' };
        let forged = String::from_utf8(forged).unwrap();
        prop_assert!(signer.verify(&key, expires_q.as_deref(), Some(&forged), now).is_err());
        let at_expiry = UNIX_EPOCH + Duration::from_secs(later);
        prop_assert!(signer.verify(&key, expires_q.as_deref(), signature_q.as_deref(), at_expiry).is_err());
    }

    #[test]
    fn control_plane_answers_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256), text in yamlish()) {
        for body in [bytes.as_slice(), text.as_bytes()] {
            if let Err(e) = normalise(body) {
                prop_assert!(!e.is_empty());
            }
        }
        let wrapped = serde_json::json!({ "config": text }).to_string();
        let _ = normalise(wrapped.as_bytes());
    }
}

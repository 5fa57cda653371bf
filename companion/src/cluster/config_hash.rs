//! Kong's `config_hash`, computed as `kong/clustering/config_helper.lua` computes it
//! (`calculate_config_hash`, unchanged from Kong 3.4 to 3.10): an MD5 over a sorted, flattened
//! rendering of the config table, in six parts (routes, services, plugins, upstreams, targets,
//! the rest). The control plane sends it with every `reconfigure`; data planes echo it in
//! their pings. The tests below are Kong's own vectors (`spec/01-unit/19-hybrid/02-clustering_spec.lua`).

use md5::{Digest, Md5};
use serde_json::{Map, Value};

/// The hash Kong uses for "no config": 32 ASCII zeros (`DECLARATIVE_EMPTY_CONFIG_HASH`).
pub const EMPTY_CONFIG_HASH: &str = "00000000000000000000000000000000";

/// Kong checks the rendering's length before each value and, past this many bytes, replaces
/// it with its 16-byte binary MD5 (bounding memory on huge configs).
const FOLD_ABOVE: usize = 1_000_000;

/// The entity kinds hashed on their own, in the order their hashes are concatenated.
const GRANULAR: [&str; 5] = ["routes", "services", "plugins", "upstreams", "targets"];

/// `calculate_config_hash(config_table)`: the hex MD5 Kong's control plane sends as
/// `config_hash`.
pub fn config_hash(config_table: &Value) -> String {
    let Value::Object(map) = config_table else {
        return hash_value(Some(config_table));
    };
    let mut rest = Map::with_capacity(map.len());
    for (k, v) in map {
        if !GRANULAR.contains(&k.as_str()) {
            rest.insert(k.clone(), v.clone());
        }
    }
    let mut joined = String::with_capacity(32 * 6);
    for kind in GRANULAR {
        joined.push_str(&hash_value(map.get(kind)));
    }
    joined.push_str(&hash_value(Some(&Value::Object(rest))));
    hex_md5(joined.as_bytes())
}

/// `calculate_hash(input)`: zeros for `nil`, else the hex MD5 of the sorted rendering.
fn hash_value(value: Option<&Value>) -> String {
    match value {
        None => EMPTY_CONFIG_HASH.to_owned(),
        Some(v) => {
            let mut out = Vec::new();
            to_sorted_string(v, &mut out);
            hex_md5(&out)
        }
    }
}

fn hex_md5(bytes: &[u8]) -> String {
    Md5::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `to_sorted_string`: scalars as Lua prints them, arrays joined with `;` (a trailing `;`
/// from six elements on, as Kong's unrolled loop does), objects as `key:value;` in byte order
/// of the keys, empty tables (arrays or objects: Lua cannot tell them apart) as `{}`.
fn to_sorted_string(value: &Value, out: &mut Vec<u8>) {
    if out.len() > FOLD_ABOVE {
        let folded = Md5::digest(&out[..]);
        out.clear();
        out.extend_from_slice(&folded);
    }
    match value {
        Value::Null => out.extend_from_slice(b"/null/"),
        Value::String(s) => out.extend_from_slice(s.as_bytes()),
        Value::Number(n) => out.extend_from_slice(lua_number(n.as_f64().unwrap_or(0.0)).as_bytes()),
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Array(items) if items.is_empty() => out.extend_from_slice(b"{}"),
        Value::Object(map) if map.is_empty() => out.extend_from_slice(b"{}"),
        Value::Array(items) => {
            let count = items.len();
            for (i, item) in items.iter().enumerate() {
                to_sorted_string(item, out);
                if count > 5 || i + 1 < count {
                    out.push(b';');
                }
            }
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
            for key in keys {
                out.extend_from_slice(key.as_bytes());
                out.push(b':');
                to_sorted_string(&map[key], out);
                out.push(b';');
            }
        }
    }
}

/// A number as LuaJIT's `tostring` writes it (`%.14g`): JSON numbers are doubles in Lua.
fn lua_number(v: f64) -> String {
    if v == 0.0 {
        return if v.is_sign_negative() { "-0" } else { "0" }.to_owned();
    }
    let scientific = format!("{v:.13e}");
    let (mantissa, exponent) = scientific
        .split_once('e')
        .expect("`{:e}` always writes an exponent");
    let exponent: i32 = exponent.parse().expect("`{:e}` writes an integer exponent");
    if !(-4..14).contains(&exponent) {
        let mantissa = trim_fraction(mantissa);
        let sign = if exponent < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exponent.abs())
    } else {
        let decimals = (13 - exponent) as usize;
        trim_fraction(&format!("{v:.decimals$}")).to_owned()
    }
}

fn trim_fraction(text: &str) -> &str {
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.')
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Kong's vectors for scalars and tables (`calculates hash for ...`).
    #[test]
    fn kongs_scalar_and_table_vectors() {
        assert_eq!(
            config_hash(&Value::Null),
            "5bf07a8b7343015026657d1108d8206e"
        );
        assert_eq!(config_hash(&json!(10)), "d3d9446802a44259755d38e6d163e820");
        assert_eq!(config_hash(&json!(0.9)), "a894124cc6d5c5c71afe060d5dde0762");
        assert_eq!(config_hash(&json!("")), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(
            config_hash(&json!("hello")),
            "5d41402abc4b2a76b9719d911017c592"
        );
        assert_eq!(
            config_hash(&json!(false)),
            "68934a3e9455fa72420237eb05902327"
        );
        assert_eq!(
            config_hash(&json!(true)),
            "b326b5062b2f0e69046810717534cb09"
        );
        assert_eq!(config_hash(&json!({})), "2da3c26e4dbd6dd6ea3ab60a3dd7fb3e");
    }

    /// Kong's "granular hashes" vectors: present but empty kinds, and missing kinds.
    #[test]
    fn kongs_granular_vectors() {
        assert_eq!(
            config_hash(&json!({"routes": [], "services": [], "plugins": []})),
            "81aac97a81ad03c0cf0b36663806488e"
        );
        assert_eq!(
            config_hash(&json!({"upstreams": [], "targets": []})),
            "4d60dd9998ea4314039da5ca2f1db96f"
        );
    }

    /// Kong's "calculates hash for complex table" vector: arrays of every unrolled length,
    /// nulls, doubles, nested objects and 1,000 consumers.
    #[test]
    fn kongs_complex_table_vector() {
        let six = json!(["v1", "v2", "v3", "v4", "v5", "v6"]);
        let consumers: Vec<Value> = (1..=1000)
            .map(|i| json!({"username": format!("user-{i}")}))
            .collect();
        let value = json!({
            "plugins": [
                {"name": "0", "config": {"param": "value"}},
                {"name": "1", "config": {"param": six}},
                {"name": "2", "config": {"param": ["v1", "v2", "v3", "v4", "v5"]}},
                {"name": "3", "config": {"param": ["v1", "v2", "v3", "v4"]}},
                {"name": "4", "config": {"param": ["v1", "v2", "v3"]}},
                {"name": "5", "config": {"param": ["v1", "v2"]}},
                {"name": "6", "config": {"param": ["v1"]}},
                {"name": "7", "config": {"param": {}}},
                {"name": "8", "config": {"param": "value", "array": six}},
                {"name": "9", "config": {"bool1": true, "bool2": false, "number": 1, "double": 1.1,
                    "empty": {}, "null": null, "string": "test", "hash": {"k": "v"}, "array": six}},
            ],
            "consumers": consumers,
        });
        assert_eq!(config_hash(&value), "675ff4b6b1c8cefa5198284110786ad0");
    }

    #[test]
    fn numbers_print_as_lua_prints_them() {
        for (v, text) in [
            (1.0, "1"),
            (-3.0, "-3"),
            (1.1, "1.1"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1e14, "1e+14"),
            (12345678901234.0, "12345678901234"),
            (123456789012345.0, "1.2345678901234e+14"),
            (1.0 / 3.0, "0.33333333333333"),
        ] {
            assert_eq!(lua_number(v), text, "{v}");
        }
    }

    #[test]
    fn huge_renderings_fold_into_their_md5_as_kong_does() {
        // 1,500 entries of 1,000 bytes: the rendering passes the 1,000,000-byte mark once.
        let big: Vec<Value> = (0..1500).map(|_| json!("x".repeat(1000))).collect();
        let mut expected = Vec::new();
        for _ in 0..1000 {
            expected.extend_from_slice("x".repeat(1000).as_bytes());
            expected.push(b';');
        }
        // The 1,001st element finds 1,001,000 bytes: they become their binary MD5.
        let mut folded = Md5::digest(&expected).to_vec();
        for _ in 1000..1500 {
            folded.extend_from_slice("x".repeat(1000).as_bytes());
            folded.push(b';');
        }
        assert_eq!(hash_value(Some(&Value::Array(big))), hex_md5(&folded));
    }
}

//! `examples/kong/` stays true to the filter: the declarative config's filter configuration is
//! one the filter accepts, for the Kong host, and `fallback.meta.json`'s JSON Schema names
//! exactly the keys the filter knows (Kong validates a filter chain's configuration with it).
//! Kong itself cannot run here: see `examples/kong/README.md`.

use fallback_core::filter_config::FilterConfig;
use fallback_core::host::HostKind;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use wasm_tests::workspace_root;

fn read(name: &str) -> String {
    let path = workspace_root().join("examples").join("kong").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn meta_schema() -> Value {
    serde_json::from_str(&read("fallback.meta.json")).expect("fallback.meta.json is JSON")
}

/// The filter's known keys at `parent` (`""` for the top level), from its own error message
/// for an unknown key: `unknown field "zzz_unknown" (known: a, b, c)`.
fn known_keys(parent: &str) -> BTreeSet<String> {
    let mut config = json!({
        "version": "1",
        "control_plane": {"upstream": "a:1", "authority": "a"},
        "companion": {"upstream": "a:1", "authority": "a", "token": "t"},
        "storage": {"upstream": "a:1"},
    });
    let target = if parent.is_empty() {
        &mut config
    } else {
        &mut config[parent]
    };
    target["zzz_unknown"] = json!(1);
    let error = FilterConfig::parse(config.to_string().as_bytes())
        .expect_err("an unknown key is refused")
        .to_string();
    let list = error
        .split("(known: ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .unwrap_or_else(|| panic!("no list of known keys in {error}"));
    list.split(", ").map(str::to_owned).collect()
}

fn schema_keys(schema: &Value) -> BTreeSet<String> {
    schema["properties"]
        .as_object()
        .expect("properties")
        .keys()
        .cloned()
        .collect()
}

#[test]
fn the_meta_json_schema_names_exactly_the_filters_keys() {
    let schema = &meta_schema()["config_schema"];
    assert_eq!(schema["type"], "object");
    assert_eq!(schema["additionalProperties"], false);
    assert_eq!(schema_keys(schema), known_keys(""));
    for parent in ["control_plane", "storage"] {
        assert_eq!(
            schema_keys(&schema["properties"][parent]),
            known_keys(parent),
            "{parent}"
        );
    }
    // `companion` is one signer or a list of them, tried in order: the schema takes both.
    let companion = &schema["properties"]["companion"]["oneOf"];
    assert_eq!(companion[0]["type"], "object");
    assert_eq!(schema_keys(&companion[0]), known_keys("companion"));
    assert_eq!(companion[1]["type"], "array");
    assert_eq!(companion[1]["minItems"], 1);
    assert_eq!(companion[1]["items"], companion[0]);
    let signer = json!({"upstream": "a:1", "authority": "a", "token": "t"});
    let listed = json!({
        "version": "1",
        "host": "kong",
        "companion": [signer, signer],
        "storage": {"upstream": "a:1"},
    });
    FilterConfig::parse(listed.to_string().as_bytes())
        .expect("the filter takes the list form the schema allows");
    let hosts: Vec<&str> = HostKind::ALL.iter().map(|k| k.as_str()).collect();
    assert_eq!(schema["properties"]["host"]["enum"], json!(hosts));
}

#[test]
fn the_declarative_configs_filter_configuration_is_accepted_for_kong() {
    let doc: Value = serde_yaml_ng::from_str(&read("kong.yaml")).expect("kong.yaml is YAML");
    let route = &doc["services"][0]["routes"][0];
    assert_eq!(route["paths"], json!(["/"]), "a catch-all route");
    let filter = &route["filter_chains"][0]["filters"][0];
    assert_eq!(filter["name"], "fallback", "named after fallback.wasm");
    let config = FilterConfig::parse(filter["config"].to_string().as_bytes())
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.host, HostKind::Kong);
}

#[test]
fn kong_conf_turns_wasm_on_with_a_shared_zone() {
    let conf = read("kong.conf");
    let settings: Vec<(&str, &str)> = conf
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim(), v.trim()))
        .collect();
    for key in ["wasm", "wasm_filters_path", "nginx_wasm_shm_kv"] {
        assert!(
            settings.iter().any(|(k, _)| *k == key),
            "{key} missing: {settings:?}"
        );
    }
    assert!(settings.contains(&("wasm", "on")));
}

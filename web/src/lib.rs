//! `fallback-web`: the companion's config inspector in the browser. The same validation,
//! router and plugins as the filter and `fallback-companion match` (`fallback_core::inspect`),
//! compiled to `wasm32-unknown-unknown` and bound to JavaScript with `wasm-bindgen`.
//!
//! Every function takes text and answers one JSON string, so the page needs no other glue:
//! - [`validate`]: `{"valid", "problems": [{"path", "message"}], "warnings": [...]}`;
//! - [`match_request`] (`match` in JavaScript): `{"answer", "warnings"}` with
//!   `fallback-companion match`'s answer, or `{"error"}`;
//! - [`diff`]: routes, services, plugins and consumers added, removed or changed, or
//!   `{"error"}`.
#![forbid(unsafe_code)]

use fallback_core::document::Problem;
use fallback_core::inspect::{check, normalise, Checked, MatchQuery, Matcher};
use serde::Serialize;
use serde_json::{json, Value};
use wasm_bindgen::prelude::wasm_bindgen;

#[derive(Serialize)]
struct Finding<'a> {
    path: &'a str,
    message: &'a str,
}

fn findings(problems: &[Problem]) -> Vec<Finding<'_>> {
    problems
        .iter()
        .map(|p| Finding {
            path: &p.path,
            message: &p.message,
        })
        .collect()
}

/// Reads and validates a config: `Ok` with its warnings, or every problem (a text that is not
/// JSON/YAML at all is one problem at `$`).
fn load(label: &str, text: &str) -> Result<Checked, Vec<Problem>> {
    let value =
        normalise(text.as_bytes()).map_err(|e| vec![Problem::new("$", format!("{label}: {e}"))])?;
    check(&value).map_err(|e| e.problems)
}

/// Validates `config_text` (JSON, YAML, or an Admin API `GET /config` answer) as `export`
/// does: `{"valid": bool, "problems": [{"path", "message"}], "warnings": [{"path",
/// "message"}]}`.
#[wasm_bindgen]
pub fn validate(config_text: &str) -> String {
    let answer = match load("config", config_text) {
        Ok(checked) => json!({
            "valid": true,
            "problems": [],
            "warnings": findings(&checked.warnings),
        }),
        Err(problems) => json!({
            "valid": false,
            "problems": findings(&problems),
            "warnings": [],
        }),
    };
    answer.to_string()
}

/// The request as the page's form sends it.
#[derive(serde::Deserialize)]
struct RequestForm {
    #[serde(default = "get")]
    method: String,
    url: String,
    #[serde(default)]
    headers: Vec<String>,
    #[serde(default)]
    client_ip: Option<String>,
    #[serde(default)]
    ignore_plugins: Vec<String>,
    /// The plugins' clock, Unix milliseconds (the page passes `Date.now()`).
    #[serde(default)]
    now_ms: u64,
}

fn get() -> String {
    "GET".into()
}

/// Where `request` goes under `config_text`: `{"answer": <the JSON object
/// `fallback-companion match` prints>, "warnings": [{"path", "message"}] (what the filter
/// skips, as `match` prints on stderr)}`, or `{"error": "..."}` when
/// the config or the request is unusable. `request` is JSON: `{"method", "url", "headers":
/// ["Name: value"], "client_ip", "ignore_plugins", "now_ms"}`.
#[wasm_bindgen(js_name = "match")]
pub fn match_request(config_text: &str, request: &str) -> String {
    let error = |message: String| json!({ "error": message }).to_string();
    let form: RequestForm = match serde_json::from_str(request) {
        Ok(f) => f,
        Err(e) => return error(format!("the request is not the expected JSON: {e}")),
    };
    let client_ip = match form.client_ip.as_deref().map(str::trim) {
        None | Some("") => std::net::IpAddr::from([127, 0, 0, 1]),
        Some(text) => match text.parse() {
            Ok(ip) => ip,
            Err(_) => return error(format!("client IP {text:?} is not an IP address")),
        },
    };
    let checked = match load("config", config_text) {
        Ok(c) => c,
        Err(problems) => {
            let list: Vec<String> = problems.iter().map(Problem::to_string).collect();
            return error(format!(
                "the config is not valid; fix it first:\n{}",
                list.join("\n")
            ));
        }
    };
    let policy = fallback_core::plugins::PluginPolicy {
        ignore: form.ignore_plugins,
        refuse_observe_only: false,
    };
    let matcher = Matcher::new(&checked.loaded.document, &policy);
    let headers: Vec<String> = form
        .headers
        .into_iter()
        .filter(|h| !h.trim().is_empty())
        .collect();
    let query = MatchQuery {
        method: form.method.trim(),
        url: form.url.trim(),
        headers: &headers,
        client_ip,
        now_ms: form.now_ms,
    };
    match matcher.answer(&query) {
        // The CLI's answer is kept byte for byte, its keys in their documented order.
        Ok(answer) => {
            let warnings =
                serde_json::to_string(&findings(&matcher.warnings())).unwrap_or_default();
            format!("{{\"answer\": {answer}, \"warnings\": {warnings}}}")
        }
        Err(e) => error(e),
    }
}

/// What changed from `old_text` to `new_text`: `{"services"|"routes"|"plugins"|"consumers":
/// {"added", "removed", "changed"}, "empty": bool}`, or `{"error"}` naming the config that is
/// not valid.
#[wasm_bindgen]
pub fn diff(old_text: &str, new_text: &str) -> String {
    let load_one = |label: &str, text: &str| {
        load(label, text).map_err(|problems| {
            let list: Vec<String> = problems.iter().map(Problem::to_string).collect();
            format!("the {label} config is not valid:\n{}", list.join("\n"))
        })
    };
    let (old, new) = match (load_one("stored", old_text), load_one("new", new_text)) {
        (Ok(old), Ok(new)) => (old, new),
        (Err(e), _) | (_, Err(e)) => return json!({ "error": e }).to_string(),
    };
    let changes = fallback_core::config_diff::diff(&old.loaded.document, &new.loaded.document);
    let mut value = serde_json::to_value(&changes).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut value {
        map.insert("empty".into(), json!(changes.is_empty()));
    }
    value.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"{"_format_version": "3.0", "services": [{"name": "s",
        "url": "http://up:8080", "routes": [{"name": "r", "paths": ["/r"]}]}]}"#;

    fn parse(text: &str) -> Value {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn validate_lists_every_problem_with_its_path() {
        let ok = parse(&validate(CONFIG));
        assert_eq!(ok["valid"], true);
        let broken = parse(&validate(
            r#"{"_format_version": "3.0", "routes": [{"paths": ["x"]}, {"hosts": [1]}]}"#,
        ));
        assert_eq!(broken["valid"], false);
        let paths: Vec<&str> = broken["problems"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["path"].as_str().unwrap())
            .collect();
        assert!(
            paths.iter().any(|p| p.starts_with("routes[0]")),
            "{paths:?}"
        );
        assert!(
            paths.iter().any(|p| p.starts_with("routes[1]")),
            "{paths:?}"
        );
        let not_json = parse(&validate("{"));
        assert_eq!(not_json["problems"][0]["path"], "$");
    }

    #[test]
    fn match_gives_the_cli_answer_and_says_what_is_unusable() {
        let answer = match_request(CONFIG, r#"{"url": "http://gw/r/x"}"#);
        assert_eq!(
            answer,
            r#"{"answer": {"route": "r", "service": "s", "upstream_url": "http://up:8080/x", "upstream_host": "up:8080"}, "warnings": []}"#
        );
        let err = parse(&match_request(CONFIG, r#"{"url": "gw/r"}"#));
        assert!(err["error"].as_str().unwrap().contains("absolute"), "{err}");
        let err = parse(&match_request("{", r#"{"url": "http://gw/r"}"#));
        assert!(
            err["error"].as_str().unwrap().contains("not valid"),
            "{err}"
        );
        let err = parse(&match_request(
            CONFIG,
            r#"{"url": "http://gw/", "client_ip": "x"}"#,
        ));
        assert!(
            err["error"].as_str().unwrap().contains("client IP"),
            "{err}"
        );
    }

    #[test]
    fn diff_names_the_changes_or_the_invalid_side() {
        let changed = CONFIG.replace("/r\"", "/r\", \"/s\"");
        let d = parse(&diff(CONFIG, &changed));
        assert_eq!(d["routes"]["changed"], json!(["r"]));
        assert_eq!(d["empty"], false);
        assert_eq!(parse(&diff(CONFIG, CONFIG))["empty"], true);
        let err = parse(&diff(CONFIG, "[]"));
        assert!(
            err["error"].as_str().unwrap().contains("new config"),
            "{err}"
        );
    }
}

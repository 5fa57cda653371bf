//! What an operator asks of a config, answered the way the filter would: is it valid (every
//! problem with its path), and where would a given request go (route, upstream, plugins)?
//!
//! `fallback-companion match`, `export` and the in-browser inspector (`fallback-web`) all call
//! these functions, so the three give one answer.

use crate::document::{ConfigDocument, Loaded, Problem, ValidationErrors};
use crate::json::{self, StrictError};
use crate::plugins::{
    LocalResponse, MemoryCounters, PluginEngine, PluginOutcome, PluginPolicy, PluginRequest,
    UpstreamChanges,
};
use crate::router::{
    RequestView, RouteOutcome, Router, HTTPS_REQUIRED_MESSAGE, URI_TOO_LONG_MESSAGE,
};
use serde_json::{json, Value};

/// Turns what a control plane (or a file) holds into the declarative document as JSON.
///
/// Accepts declarative JSON, declarative YAML (decK files, with the `yaml` feature), and the
/// DB-less Admin API's `GET /config` answer `{"config": "<YAML or JSON text>"}`. A key repeated
/// in one object is an error ([`crate::json`]).
pub fn normalise(body: &[u8]) -> Result<Value, String> {
    normalise_with(body, &|_| Ok(()))
}

/// [`normalise`], with `check_yaml` run on every YAML text before it is parsed (the companion
/// refuses deep nesting there, before the YAML parser spends time on it).
pub fn normalise_with(
    body: &[u8],
    check_yaml: &dyn Fn(&str) -> Result<(), String>,
) -> Result<Value, String> {
    let text = std::str::from_utf8(body).map_err(|e| format!("not UTF-8 text ({e})"))?;
    let value = parse_json_or_yaml(text, check_yaml)?;
    let admin_api_config = match &value {
        Value::Object(map) if !map.contains_key("_format_version") => match map.get("config") {
            Some(Value::String(inner)) => Some(inner.clone()),
            _ => None,
        },
        _ => None,
    };
    let value = match admin_api_config {
        Some(inner) => parse_json_or_yaml(&inner, check_yaml)
            .map_err(|e| format!("its \"config\" string: {e}"))?,
        None => value,
    };
    if !value.is_object() {
        return Err("expected an object with _format_version at the top".into());
    }
    Ok(value)
}

fn parse_json_or_yaml(
    text: &str,
    check_yaml: &dyn Fn(&str) -> Result<(), String>,
) -> Result<Value, String> {
    match json::from_str(text) {
        Ok(v) => Ok(v),
        // Text that starts like JSON is JSON with a mistake: its JSON error is the useful one.
        Err(StrictError::Syntax(_)) if !text.trim_start().starts_with(['{', '[']) => {
            check_yaml(text)?;
            parse_yaml(text)
        }
        Err(e) => Err(format!("invalid JSON: {e}")),
    }
}

#[cfg(feature = "yaml")]
fn parse_yaml(text: &str) -> Result<Value, String> {
    json::deserialize(serde_yaml_ng::Deserializer::from_str(text), |e| {
        StrictError::Syntax(e.to_string())
    })
    .map_err(|e| match e {
        StrictError::Syntax(e) => format!("neither JSON nor YAML: {e}"),
        e => format!("invalid YAML: {e}"),
    })
}

#[cfg(not(feature = "yaml"))]
fn parse_yaml(_text: &str) -> Result<Value, String> {
    Err("invalid JSON (YAML is not read here)".into())
}

/// A document that validated, with what is worth a warning.
#[derive(Debug)]
pub struct Checked {
    /// The loaded document.
    pub loaded: Loaded,
    /// Non-fatal findings: entity kinds Fallback ignores, and enabled plugins the filter does
    /// not implement (it refuses the requests they apply to with 500 unless told to ignore
    /// them).
    pub warnings: Vec<Problem>,
}

/// Validates `value` as `export` does: every problem at its path, or the document with its
/// warnings.
pub fn check(value: &Value) -> Result<Checked, ValidationErrors> {
    let loaded = ConfigDocument::from_json(value)?;
    let mut warnings = loaded.warnings.clone();
    warnings.extend(crate::plugins::unsupported_warnings(&loaded.document));
    Ok(Checked { loaded, warnings })
}

/// One request to answer, as `fallback-companion match` takes it.
#[derive(Debug, Clone)]
pub struct MatchQuery<'a> {
    /// The request method.
    pub method: &'a str,
    /// `http[s]://host[:port]/path?query` as the gateway receives it.
    pub url: &'a str,
    /// `Name: value` lines.
    pub headers: &'a [String],
    /// The client's address, as the plugins see it.
    pub client_ip: std::net::IpAddr,
    /// The clock the plugins read (Unix milliseconds).
    pub now_ms: u64,
}

/// The filter's router and plugins compiled for one document, ready to answer requests.
#[derive(Debug)]
pub struct Matcher {
    router: Router,
    plugins: PluginEngine,
}

impl Matcher {
    /// Compiles `document`'s routes and plugins; `policy` says which unsupported plugins the
    /// filter is configured to ignore (`ignore_unsupported_plugins`) and whether observe-only
    /// plugins are refused (`refuse_observe_only_plugins`).
    pub fn new(document: &ConfigDocument, policy: &PluginPolicy) -> Self {
        Self {
            router: Router::compile(document),
            plugins: PluginEngine::compile(document, policy),
        }
    }

    /// What the filter skips or refuses in this document (routes it cannot match, plugins it
    /// does not implement), each at its path, routes first.
    pub fn warnings(&self) -> Vec<Problem> {
        let routes = self
            .router
            .unsupported()
            .iter()
            .map(|u| Problem::new(u.path.clone(), u.reason.clone()));
        let plugins = self
            .plugins
            .unsupported()
            .iter()
            .map(|u| Problem::new(u.path.clone(), u.reason.clone()));
        routes.chain(plugins).collect()
    }

    /// One JSON object: `{"route", "service", "upstream_url", "upstream_host"}` for a forwarded
    /// request, with `"upstream_headers"` when plugins add headers upstream, or
    /// `"response": {"status", "body"}` when a plugin answers itself; `{"route": null,
    /// "status": 404}` when nothing matches; `{"route", "status", "location"?, "message"?}`
    /// for an HTTPS redirect or a 503. An error says which part of the query is unusable.
    pub fn answer(&self, query: &MatchQuery<'_>) -> Result<String, String> {
        let (scheme, url_authority, path) = split_url(query.url)?;
        let headers: Vec<(&str, &str)> = query
            .headers
            .iter()
            .map(|h| {
                h.split_once(':')
                    .map(|(n, v)| (n.trim(), v.trim()))
                    .filter(|(n, _)| !n.is_empty())
                    .ok_or_else(|| format!("header {h:?} is not `Name: value`"))
            })
            .collect::<Result<_, _>>()?;
        // Like curl: an explicit Host header replaces the URL's authority.
        let authority = headers
            .iter()
            .rev()
            .find(|(n, _)| n.eq_ignore_ascii_case("host"))
            .map_or(url_authority, |(_, v)| v);
        // The SNI a client sends for this URL, as curl would: its host.
        let url_host = split_host(url_authority);
        let view = RequestView {
            method: query.method,
            authority,
            path,
            scheme,
            headers: &headers,
            sni: scheme.eq_ignore_ascii_case("https").then_some(url_host),
            port: None,
        };
        let outcome = self.router.route(&view);
        // The plugins of the matched route run for a forwarded request, and before Kong's 503
        // for a route without a service or an upstream without targets (Kong answers those
        // after the plugins' access phase).
        let (route, service, upstream_path) = match &outcome {
            RouteOutcome::Forward(f) => (f.route, Some(f.service), f.path.clone()),
            RouteOutcome::Unavailable { route, service, .. } => (*route, *service, path.to_owned()),
            _ => return Ok(describe(outcome)),
        };
        if self.plugins.is_empty() {
            return Ok(describe(outcome));
        }
        let request = PluginRequest {
            method: query.method,
            scheme,
            path,
            upstream_path: &upstream_path,
            headers: &headers,
            client_ip: Some(query.client_ip).into(),
            route: Some(route),
            service,
            now_ms: query.now_ms,
            random: 0,
        };
        // Fresh counters: one request never reaches a rate limit (limits are at least 1).
        let decision = self
            .plugins
            .access(&request, &mut MemoryCounters::default());
        Ok(describe_with_plugins(outcome, decision))
    }
}

/// [`describe`] for a forwarded request, with the plugins' decision.
fn describe_with_plugins(outcome: RouteOutcome, decision: PluginOutcome<'_>) -> String {
    let response = |answer: &LocalResponse| {
        let body = match answer.body.as_deref() {
            None => Value::Null,
            Some(text) => serde_json::from_str(text).unwrap_or_else(|_| json!(text)),
        };
        json!({"status": answer.status, "body": body})
    };
    let mut f = match outcome {
        RouteOutcome::Forward(f) => f,
        RouteOutcome::Unavailable { ref route_name, .. } => {
            return match decision {
                PluginOutcome::Respond(answer) => object(&[
                    ("route", json!(route_name)),
                    ("response", response(&answer)),
                ]),
                PluginOutcome::Forward(_) => describe(outcome),
            };
        }
        other => return describe(other),
    };
    let changes = match decision {
        PluginOutcome::Respond(answer) => {
            return object(&[
                ("route", json!(f.route_name)),
                ("service", json!(f.service_name)),
                ("upstream_url", json!(f.upstream_url())),
                ("upstream_host", json!(&*f.host_header)),
                ("response", response(&answer)),
            ]);
        }
        PluginOutcome::Forward(changes) => changes,
    };
    if let Some(path) = &changes.path {
        f.path.clone_from(path);
    }
    let mut fields = vec![
        ("route", json!(f.route_name)),
        ("service", json!(f.service_name)),
        ("upstream_url", json!(f.upstream_url())),
        ("upstream_host", json!(&*f.host_header)),
    ];
    let added = upstream_headers(&changes);
    if !added.is_empty() {
        fields.push(("upstream_headers", Value::Object(added)));
    }
    if !changes.skipped.is_empty() {
        fields.push(("skipped_plugins", json!(changes.skipped)));
    }
    object(&fields)
}

/// The headers plugins set upstream: name → value (several values joined with ", ").
fn upstream_headers(changes: &UpstreamChanges<'_>) -> serde_json::Map<String, Value> {
    let mut map = serde_json::Map::new();
    for (name, value) in changes.upstream_headers() {
        match map.get_mut(name) {
            Some(Value::String(existing)) => {
                existing.push_str(", ");
                existing.push_str(value);
            }
            _ => {
                map.insert(name.to_owned(), json!(value));
            }
        }
    }
    map
}

/// The JSON answer for one routing decision, its keys in the documented order.
pub fn describe(outcome: RouteOutcome) -> String {
    match outcome {
        RouteOutcome::Forward(f) => object(&[
            ("route", json!(f.route_name)),
            ("service", json!(f.service_name)),
            ("upstream_url", json!(f.upstream_url())),
            ("upstream_host", json!(&*f.host_header)),
        ]),
        RouteOutcome::NoRoute => object(&[("route", Value::Null), ("status", json!(404))]),
        RouteOutcome::UriTooLong => object(&[
            ("route", Value::Null),
            ("status", json!(414)),
            ("message", json!(URI_TOO_LONG_MESSAGE)),
        ]),
        RouteOutcome::HttpsRequired(h) => match h.location {
            Some(location) => object(&[
                ("route", json!(h.route_name)),
                ("status", json!(h.status)),
                ("location", json!(location)),
            ]),
            None => object(&[
                ("route", json!(h.route_name)),
                ("status", json!(h.status)),
                ("message", json!(HTTPS_REQUIRED_MESSAGE)),
            ]),
        },
        RouteOutcome::Unavailable {
            route_name,
            message,
            ..
        } => object(&[
            ("route", json!(route_name)),
            ("status", json!(503)),
            ("message", json!(message)),
        ]),
    }
}

/// `{"k": v, ...}` in the order given (serde_json's map would sort the keys).
fn object(fields: &[(&str, Value)]) -> String {
    let body: Vec<String> = fields
        .iter()
        .map(|(key, value)| format!("{}: {value}", Value::from(*key)))
        .collect();
    format!("{{{}}}", body.join(", "))
}

/// The host of an authority, without port or IPv6 brackets.
fn split_host(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    authority.split(':').next().unwrap_or(authority)
}

/// `scheme://authority/path?query` → (scheme, authority, path with query). The path is kept
/// byte for byte: normalising it is the router's job, as in the gateway.
fn split_url(url: &str) -> Result<(&str, &str, &str), String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("--url {url:?} must be absolute: http[s]://host[:port]/path"))?;
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return Err(format!("--url {url:?}: the scheme must be http or https"));
    }
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    if authority.is_empty() {
        return Err(format!("--url {url:?} has no host"));
    }
    if path.starts_with('?') {
        return Err(format!(
            "--url {url:?}: write the path before the query (`/?…`)"
        ));
    }
    let path = if path.is_empty() { "/" } else { path };
    Ok((scheme, authority, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_keep_the_documented_key_order() {
        assert_eq!(
            describe(RouteOutcome::NoRoute),
            r#"{"route": null, "status": 404}"#
        );
    }

    #[test]
    fn plugins_answer_or_add_upstream_headers() {
        let value = json!({
            "_format_version": "3.0",
            "services": [{"name": "s", "url": "http://up:8080", "routes": [
                {"name": "r", "paths": ["/r"], "plugins": [{"name": "key-auth"}]}
            ]}],
            "consumers": [{"username": "alice", "keyauth_credentials": [{"key": "k"}]}]
        });
        let checked = check(&value).unwrap();
        let matcher = Matcher::new(&checked.loaded.document, &PluginPolicy::default());
        let ask = |headers: &[String]| {
            let answer = matcher
                .answer(&MatchQuery {
                    method: "GET",
                    url: "http://gw/r/x",
                    headers,
                    client_ip: "127.0.0.1".parse().unwrap(),
                    now_ms: 0,
                })
                .unwrap();
            serde_json::from_str::<Value>(&answer).unwrap()
        };
        let denied = ask(&[]);
        assert_eq!(denied["response"]["status"], 401);
        assert_eq!(
            denied["response"]["body"]["message"],
            "No API key found in request"
        );
        let allowed = ask(&["apikey: k".to_owned()]);
        assert_eq!(allowed.get("response"), None);
        assert_eq!(allowed["upstream_headers"]["x-consumer-username"], "alice");
        assert_eq!(allowed["upstream_url"], "http://up:8080/x");
    }

    #[test]
    fn unusable_queries_say_what_is_wrong() {
        let checked = check(&json!({"_format_version": "3.0"})).unwrap();
        let matcher = Matcher::new(&checked.loaded.document, &PluginPolicy::default());
        let query = |url, headers: &'static [String]| MatchQuery {
            method: "GET",
            url,
            headers,
            client_ip: "127.0.0.1".parse().unwrap(),
            now_ms: 0,
        };
        let err = matcher.answer(&query("gw/x", &[])).unwrap_err();
        assert!(err.contains("must be absolute"), "{err}");
        assert_eq!(
            matcher.answer(&query("http://gw/x", &[])).unwrap(),
            r#"{"route": null, "status": 404}"#
        );
    }

    #[test]
    fn check_reports_problems_at_their_paths_and_warns_about_unsupported_plugins() {
        let errors =
            check(&json!({"_format_version": "3.0", "routes": [{"paths": ["x"]}]})).unwrap_err();
        assert!(
            errors
                .problems
                .iter()
                .any(|p| p.path.starts_with("routes[0]")),
            "{errors}"
        );
        let checked =
            check(&json!({"_format_version": "3.0", "plugins": [{"name": "jwt"}]})).unwrap();
        assert_eq!(checked.warnings.len(), 1, "{:?}", checked.warnings);
        assert_eq!(checked.warnings[0].path, "plugins[0]");
    }

    #[test]
    fn urls_split_without_normalising() {
        assert_eq!(
            split_url("http://a.com:8000/x/../y?q=%2e").unwrap(),
            ("http", "a.com:8000", "/x/../y?q=%2e")
        );
        assert_eq!(split_url("https://a.com").unwrap(), ("https", "a.com", "/"));
        assert!(split_url("a.com/x").is_err());
        assert!(split_url("ftp://a.com/x").is_err());
        assert!(split_url("http:///x").is_err());
    }

    #[test]
    fn admin_api_shape_is_unwrapped_and_broken_json_names_the_json_error() {
        let inner = json!({"_format_version": "3.0"}).to_string();
        let v = normalise(json!({"config": inner}).to_string().as_bytes()).unwrap();
        assert_eq!(v, json!({"_format_version": "3.0"}));
        let err = normalise(b"{\"_format_version\": ").unwrap_err();
        assert!(err.starts_with("invalid JSON"), "{err}");
        let err = normalise(b"[1,2]").unwrap_err();
        assert!(err.contains("expected an object"), "{err}");
    }
}

//! `fallback-companion match`: where would this request go under a config? The answer comes
//! from the very router and plugins the filter runs (`fallback_core::router`,
//! `fallback_core::plugins`), so it is the filter's.

use crate::source;
use fallback_core::document::ConfigDocument;
use fallback_core::plugins::{
    LocalResponse, MemoryCounters, PluginEngine, PluginOutcome, PluginPolicy, PluginRequest,
    UpstreamChanges,
};
use fallback_core::router::{
    RequestView, RouteOutcome, Router, HTTPS_REQUIRED_MESSAGE, URI_TOO_LONG_MESSAGE,
};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::ExitCode;

/// `match --config FILE --method M --url URL [-H 'Name: value']...`
#[derive(Debug, clap::Args)]
pub struct MatchArgs {
    /// The declarative config: JSON, YAML (decK), or a DB-less Admin API `GET /config` answer.
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,

    /// The request method.
    #[arg(long, default_value = "GET")]
    pub method: String,

    /// The request URL as the gateway receives it: `http[s]://host[:port]/path?query`. The
    /// scheme is the one the client used to reach the gateway; the authority is the Host
    /// header unless `-H 'Host: …'` is given; for https the URL's host is the SNI.
    #[arg(long)]
    pub url: String,

    /// A request header, `Name: value`; repeat for several.
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE")]
    pub headers: Vec<String>,

    /// The client's IP address, as the plugins see it (ip-restriction, rate-limiting).
    #[arg(long, default_value = "127.0.0.1")]
    pub client_ip: std::net::IpAddr,

    /// Plugins the filter does not implement that it is configured to ignore (the filter's
    /// `ignore_unsupported_plugins`); repeat for several.
    #[arg(long = "ignore-plugin", value_name = "NAME")]
    pub ignore_plugins: Vec<String>,

    /// Refuse the requests observe-only plugins (prometheus, zipkin, http-log...) apply to,
    /// instead of skipping those plugins (the filter's `refuse_observe_only_plugins`).
    #[arg(long)]
    pub refuse_observe_only_plugins: bool,
}

/// Prints one JSON object on stdout: `{"route", "service", "upstream_url", "upstream_host"}`
/// for a forwarded request, with `"upstream_headers"` when plugins add headers upstream and
/// `"skipped_plugins"` when observe-only plugins that apply were skipped, or
/// `"response": {"status", "body"}` when a plugin answers the request itself (401, 403, 429,
/// a termination, a CORS preflight...); `{"route": null, "status": 404}` when nothing matches;
/// `{"route", "status", "location"?, "message"?}` for an HTTPS redirect or a 503, or
/// `{"route", "response"}` when a plugin answers before that 503 (as Kong). Exit code 0
/// whenever an answer is printed, 2 when the file or the arguments are unusable.
pub fn run(args: &MatchArgs) -> ExitCode {
    match answer(args) {
        Ok(answer) => {
            println!("{answer}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
    }
}

fn answer(args: &MatchArgs) -> Result<String, String> {
    let file = args.config.display();
    let bytes = std::fs::read(&args.config).map_err(|e| format!("cannot read {file}: {e}"))?;
    let value = source::normalise(&bytes).map_err(|e| format!("{file}: {e}"))?;
    let loaded = ConfigDocument::from_json(&value)
        .map_err(|e| format!("{file} is not a valid declarative config:\n{e}"))?;
    let router = Router::compile(&loaded.document);
    for skipped in router.unsupported() {
        eprintln!("warning: {}: {}", skipped.path, skipped.reason);
    }
    for warning in &loaded.warnings {
        eprintln!("warning: {warning}");
    }
    let policy = PluginPolicy {
        ignore: args.ignore_plugins.clone(),
        refuse_observe_only: args.refuse_observe_only_plugins,
    };
    let plugins = PluginEngine::compile(&loaded.document, &policy);
    for plugin in plugins.unsupported() {
        eprintln!("warning: {}: {}", plugin.path, plugin.reason);
    }

    let (scheme, url_authority, path) = split_url(&args.url)?;
    let authority = url_authority;
    let headers: Vec<(&str, &str)> = args
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
        .map_or(authority, |(_, v)| v);
    // The SNI a client sends for this URL, as curl would: its host.
    let url_host = split_host(url_authority);
    let view = RequestView {
        method: &args.method,
        authority,
        path,
        scheme,
        headers: &headers,
        sni: scheme.eq_ignore_ascii_case("https").then_some(url_host),
        port: None,
    };
    let outcome = router.route(&view);
    // The plugins of the matched route run for a forwarded request, and before Kong's 503 for
    // a route without a service or an upstream without targets (Kong answers those after the
    // plugins' access phase).
    let (route, service, upstream_path) = match &outcome {
        RouteOutcome::Forward(f) => (f.route, Some(f.service), f.path.as_str()),
        RouteOutcome::Unavailable { route, service, .. } => (*route, *service, path),
        _ => return Ok(describe(outcome)),
    };
    if plugins.is_empty() {
        return Ok(describe(outcome));
    }
    let request = PluginRequest {
        method: &args.method,
        scheme,
        path,
        upstream_path,
        headers: &headers,
        client_ip: Some(args.client_ip),
        route: Some(route),
        service,
        now_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        random: 0,
    };
    // Fresh counters: one request never reaches a rate limit (limits are at least 1).
    let decision = plugins.access(&request, &mut MemoryCounters::default());
    Ok(describe_with_plugins(outcome, decision))
}

/// [`describe`] for a forwarded request, with the plugins' decision.
fn describe_with_plugins(outcome: RouteOutcome, decision: PluginOutcome) -> String {
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
                ("upstream_host", json!(f.host_header)),
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
        ("upstream_host", json!(f.host_header)),
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
fn upstream_headers(changes: &UpstreamChanges) -> serde_json::Map<String, Value> {
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
            ("upstream_host", json!(f.host_header)),
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

    /// `match`'s answer for `url` under `config` (written to a file of its own).
    fn ask(config: &Value, url: &str, headers: &[&str]) -> String {
        static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("match-test-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("kong.json");
        std::fs::write(&file, config.to_string()).unwrap();
        let args = MatchArgs {
            config: file,
            method: "GET".into(),
            url: url.into(),
            headers: headers.iter().map(|h| h.to_string()).collect(),
            client_ip: "127.0.0.1".parse().unwrap(),
            ignore_plugins: Vec::new(),
            refuse_observe_only_plugins: false,
        };
        let out = answer(&args).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        out
    }

    #[test]
    fn plugins_answer_or_add_upstream_headers() {
        let config = json!({
            "_format_version": "3.0",
            "services": [{"name": "s", "url": "http://up:8080", "routes": [
                {"name": "r", "paths": ["/r"], "plugins": [{"name": "key-auth"}]}
            ]}],
            "consumers": [{"username": "alice", "keyauth_credentials": [{"key": "k"}]}]
        });
        let denied: Value = serde_json::from_str(&ask(&config, "http://gw/r/x", &[])).unwrap();
        assert_eq!(denied["response"]["status"], 401);
        assert_eq!(
            denied["response"]["body"]["message"],
            "No API key found in request"
        );
        let allowed: Value =
            serde_json::from_str(&ask(&config, "http://gw/r/x", &["apikey: k"])).unwrap();
        assert_eq!(allowed.get("response"), None);
        assert_eq!(allowed["upstream_headers"]["x-consumer-username"], "alice");
        assert_eq!(allowed["upstream_url"], "http://up:8080/x");
    }

    /// Kong 3.9.x answers an upstream without targets with 503 "failure to get a peer from
    /// the ring-balancer" in the runloop's access.after, once the plugins' access phase has
    /// run: key-auth's 401 comes first.
    #[test]
    fn an_upstream_without_targets_answers_after_the_plugins_as_kong() {
        let config = json!({
            "_format_version": "3.0",
            "upstreams": [{"name": "empty.pool"}],
            "services": [{"name": "s", "host": "empty.pool", "routes": [
                {"name": "r", "paths": ["/r"], "plugins": [{"name": "key-auth"}]}
            ]}],
            "consumers": [{"username": "alice", "keyauth_credentials": [{"key": "k"}]}]
        });
        assert_eq!(
            ask(&config, "http://gw/r", &[]),
            r#"{"route": "r", "response": {"body":{"message":"No API key found in request"},"status":401}}"#
        );
        assert_eq!(
            ask(&config, "http://gw/r", &["apikey: k"]),
            r#"{"route": "r", "status": 503, "message": "failure to get a peer from the ring-balancer"}"#
        );
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
}

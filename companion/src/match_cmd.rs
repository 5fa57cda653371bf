//! `fallback-companion match`: where would this request go under a config? The answer comes
//! from the very router the filter runs (`fallback_core::router`), so it is the filter's.

use crate::source;
use fallback_core::document::ConfigDocument;
use fallback_core::router::{RequestView, RouteOutcome, Router, HTTPS_REQUIRED_MESSAGE};
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
}

/// Prints one JSON object on stdout: `{"route", "service", "upstream_url", "upstream_host"}`
/// for a forwarded request; `{"route": null, "status": 404}` when nothing matches;
/// `{"route", "status", "location"?, "message"?}` for an HTTPS redirect or a 503. Exit code 0
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
    Ok(describe(router.route(&view)))
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

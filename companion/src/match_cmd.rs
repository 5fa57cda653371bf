//! `fallback-companion match`: where would this request go under a config? The answer comes
//! from the very router and plugins the filter runs (`fallback_core::router`,
//! `fallback_core::plugins`, through `fallback_core::inspect`, as the browser inspector), so it
//! is the filter's.

use crate::source;
use fallback_core::document::ConfigDocument;
use fallback_core::inspect::{MatchQuery, Matcher};
use fallback_core::plugins::PluginPolicy;
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
    for warning in &loaded.warnings {
        eprintln!("warning: {warning}");
    }
    let policy = PluginPolicy {
        ignore: args.ignore_plugins.clone(),
        refuse_observe_only: args.refuse_observe_only_plugins,
    };
    let matcher = Matcher::new(&loaded.document, &policy);
    for skipped in matcher.warnings() {
        eprintln!("warning: {skipped}");
    }
    matcher.answer(&MatchQuery {
        method: &args.method,
        url: &args.url,
        headers: &args.headers,
        client_ip: args.client_ip,
        now_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

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
}

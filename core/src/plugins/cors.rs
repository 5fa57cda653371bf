//! `cors`: Cross-Origin Resource Sharing headers, and answers to preflight requests.
//!
//! Kong 3.x: `origins` (none or `*`: any; otherwise exact origins, or regexes for entries with
//! other characters than an origin's), `methods` (GET,HEAD,PUT,PATCH,POST,DELETE,OPTIONS,TRACE,
//! CONNECT), `headers` (default: echo `Access-Control-Request-Headers`), `exposed_headers`,
//! `credentials` (false), `max_age`, `preflight_continue` (false), `private_network` (false).
//! A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) is answered 200
//! with no body unless `preflight_continue`; other responses get `Access-Control-Allow-Origin`
//! (and `Vary: Origin` when origins are listed), credentials and exposed headers.

use super::conf::Conf;
use super::{Exchange, Exit, Step};
use regex_lite::Regex;

const DEFAULT_METHODS: &str = "GET,HEAD,PUT,PATCH,POST,DELETE,OPTIONS,TRACE,CONNECT";

#[derive(Debug)]
enum Origin {
    Exact(String),
    Pattern(Regex),
}

#[derive(Debug)]
pub(super) struct Cors {
    allow_all: bool,
    origins: Vec<Origin>,
    methods: String,
    headers: Option<String>,
    exposed_headers: Option<String>,
    credentials: bool,
    max_age: Option<String>,
    preflight_continue: bool,
    private_network: bool,
}

/// `scheme://host[:port]` lowercased, without the scheme's default port.
fn normalize_origin(origin: &str) -> String {
    let lower = origin.trim_end_matches('/').to_ascii_lowercase();
    lower
        .strip_suffix(":80")
        .filter(|_| lower.starts_with("http://"))
        .or_else(|| {
            lower
                .strip_suffix(":443")
                .filter(|_| lower.starts_with("https://"))
        })
        .map_or(lower.clone(), str::to_owned)
}

impl Cors {
    pub(super) fn new(c: &Conf<'_>) -> Result<Cors, String> {
        let origins = c.strings("origins")?.unwrap_or_default();
        let allow_all = origins.is_empty() || (origins.len() == 1 && origins[0] == "*");
        let compiled = if allow_all {
            Vec::new()
        } else {
            origins
                .iter()
                .map(|o| {
                    let plain = o
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-.:/".contains(&b));
                    if plain {
                        Ok(Origin::Exact(normalize_origin(o)))
                    } else {
                        Regex::new(&format!("^(?:{o})$"))
                            .map(Origin::Pattern)
                            .map_err(|e| {
                                format!("config.origins: {o:?} is not a usable regex: {e}")
                            })
                    }
                })
                .collect::<Result<_, _>>()?
        };
        let join = |key: &str| -> Result<Option<String>, String> {
            Ok(c.strings(key)?
                .filter(|v| !v.is_empty())
                .map(|v| v.join(",")))
        };
        Ok(Cors {
            allow_all,
            origins: compiled,
            methods: join("methods")?.unwrap_or_else(|| DEFAULT_METHODS.to_owned()),
            headers: join("headers")?,
            exposed_headers: join("exposed_headers")?,
            credentials: c.boolean("credentials", false)?,
            max_age: c.number("max_age")?.map(|n| (n as i64).to_string()),
            preflight_continue: c.boolean("preflight_continue", false)?,
            private_network: c.boolean("private_network", false)?,
        })
    }

    fn origin_allowed(&self, origin: &str) -> bool {
        let normalized = normalize_origin(origin);
        self.origins.iter().any(|o| match o {
            Origin::Exact(exact) => *exact == normalized,
            Origin::Pattern(re) => re.is_match(origin),
        })
    }

    /// Kong's `configure_origin` + `configure_credentials`, as response header steps.
    fn origin_headers(&self, ex: &mut Exchange) {
        let origin = ex.header("origin").map(str::to_owned);
        if self.allow_all {
            ex.response.set("Access-Control-Allow-Origin", "*");
            if self.credentials {
                if let Some(origin) = origin {
                    ex.response.set("Access-Control-Allow-Origin", origin);
                    ex.response.set("Access-Control-Allow-Credentials", "true");
                }
            }
            return;
        }
        ex.response.add("Vary", "Origin");
        match origin.filter(|o| self.origin_allowed(o)) {
            Some(origin) => ex.response.set("Access-Control-Allow-Origin", origin),
            None => ex.response.remove("Access-Control-Allow-Origin"),
        }
        if self.credentials {
            ex.response.set("Access-Control-Allow-Credentials", "true");
        }
    }

    pub(super) fn access(&self, ex: &mut Exchange) -> Step {
        let preflight = ex.method == "OPTIONS"
            && ex.header("origin").is_some()
            && ex.header("access-control-request-method").is_some();
        if !preflight {
            self.origin_headers(ex);
            if let Some(exposed) = &self.exposed_headers {
                ex.response
                    .set("Access-Control-Expose-Headers", exposed.clone());
            }
            return Ok(());
        }
        if self.preflight_continue {
            return Ok(());
        }
        self.origin_headers(ex);
        ex.response
            .set("Access-Control-Allow-Methods", self.methods.clone());
        match (&self.headers, ex.header("access-control-request-headers")) {
            (Some(headers), _) => ex
                .response
                .set("Access-Control-Allow-Headers", headers.clone()),
            (None, Some(requested)) => {
                let requested = requested.to_owned();
                ex.response.set("Access-Control-Allow-Headers", requested)
            }
            (None, None) => ex.response.remove("Access-Control-Allow-Headers"),
        }
        match &self.max_age {
            Some(age) => ex.response.set("Access-Control-Max-Age", age.clone()),
            None => ex.response.remove("Access-Control-Max-Age"),
        }
        if self.private_network
            && ex.header("access-control-request-private-network") == Some("true")
        {
            ex.response
                .set("Access-Control-Allow-Private-Network", "true");
        }
        Err(Exit {
            status: 200,
            headers: Vec::new(),
            body: None,
        })
    }
}

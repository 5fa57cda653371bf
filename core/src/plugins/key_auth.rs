//! `key-auth`: an API key in a header or the query string names a consumer's credential.
//!
//! Kong 3.x: `key_names` (`["apikey"]`), `key_in_header` / `key_in_query` (true),
//! `hide_credentials` (false), `anonymous`, `run_on_preflight` (true), `realm`. No key: 401
//! "No API key found in request"; the key given twice: 401 "Duplicate API key found"; an
//! unknown key: 401 "Unauthorized"; each with `WWW-Authenticate: Key realm="kong"` (or the
//! configured realm). `key_in_body` and credential `ttl`s are not enforced.

use super::conf::Conf;
use super::{authenticate, fail_or_anonymous, Exchange, Exit, PluginEngine, Step};
use crate::document::ConfigDocument;

#[derive(Debug)]
pub(super) struct KeyAuth {
    key_names: Vec<String>,
    in_header: bool,
    in_query: bool,
    hide_credentials: bool,
    anonymous: Option<String>,
    run_on_preflight: bool,
    www_authenticate: String,
}

impl KeyAuth {
    pub(super) fn new(c: &Conf<'_>, _doc: &ConfigDocument) -> Result<KeyAuth, String> {
        if c.boolean("key_in_body", false)? {
            return Err("config.key_in_body (keys in the request body) is not supported".into());
        }
        let realm = c.string("realm")?.unwrap_or_else(|| "kong".to_owned());
        Ok(KeyAuth {
            key_names: c
                .strings("key_names")?
                .unwrap_or_else(|| vec!["apikey".to_owned()]),
            in_header: c.boolean("key_in_header", true)?,
            in_query: c.boolean("key_in_query", true)?,
            hide_credentials: c.boolean("hide_credentials", false)?,
            anonymous: c.string("anonymous")?.filter(|a| !a.is_empty()),
            run_on_preflight: c.boolean("run_on_preflight", true)?,
            www_authenticate: format!("Key realm=\"{realm}\""),
        })
    }

    pub(super) fn access<'a>(&self, engine: &'a PluginEngine, ex: &mut Exchange<'a>) -> Step {
        if !self.run_on_preflight && ex.method == "OPTIONS" {
            return Ok(());
        }
        if self.anonymous.is_some() && ex.identity.credential.is_some() {
            // Already authenticated by another plugin: Kong's logical OR.
            return Ok(());
        }
        let unauthorized = |message: &str| {
            Exit::error(401, message).with_header("WWW-Authenticate", self.www_authenticate.clone())
        };
        // The credential the key names, looked up while the key is borrowed from the request
        // (no copy of it); an empty key is no key.
        let lookup = |key: &str| (!key.is_empty()).then(|| engine.keys.get(key));
        let mut found = None;
        for name in &self.key_names {
            let in_headers = {
                let mut values = ex.headers.values(name).filter(|_| self.in_header);
                (values.next().map(lookup), values.next().is_some())
            };
            let hit = match in_headers {
                (Some(_), true) => return Err(unauthorized("Duplicate API key found")),
                (Some(hit), false) => Some(hit),
                (None, _) if self.in_query => match &ex.query.values(name)[..] {
                    [] => None,
                    [key] => Some(lookup(key)),
                    _ => return Err(unauthorized("Duplicate API key found")),
                },
                (None, _) => None,
            };
            let Some(hit) = hit else {
                continue;
            };
            if self.hide_credentials {
                ex.query.remove(name);
                ex.clear_header(name);
            }
            found = Some(hit);
            break;
        }
        let message = match found {
            Some(Some(Some((consumer, credential)))) => {
                authenticate(engine, ex, *consumer, Some(credential.as_str()));
                return Ok(());
            }
            Some(Some(None)) => "Unauthorized",
            None | Some(None) => "No API key found in request",
        };
        fail_or_anonymous(engine, ex, self.anonymous.as_deref(), unauthorized(message))
    }
}

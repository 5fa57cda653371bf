//! `basic-auth`: `Authorization: Basic base64(username:password)` (or `Proxy-Authorization`)
//! names a consumer's credential.
//!
//! Kong 3.9.x (`kong/plugins/basic-auth/access.lua`): `anonymous`, `hide_credentials` (false),
//! `realm`. No header, a header that does not parse, a wrong username or password: 401
//! "Unauthorized" with `WWW-Authenticate: Basic realm="kong"` (or the configured realm; one
//! message for every failure since Kong 3.6). Upstream, `X-Credential-Identifier` is the
//! credential's `username` (its `set_consumer`), not its id. Passwords: Kong stores
//! `sha1(password .. consumer_id)` in hex, and that is what its exports hold; a stored value that
//! is not 40 hex digits is a clear password from a hand-written file (Kong would hash it when
//! loading), compared as is.

use super::conf::Conf;
use super::{authenticate, fail_or_anonymous, Exchange, Exit, PluginEngine, Step};
use crate::document::{BasicAuthCredential, ConfigDocument};
use sha1::{Digest, Sha1};

// The same standard base64 as everywhere in core (padding optional, as `ngx.decode_base64`).
pub(super) use crate::wire::decode_base64;

#[derive(Debug)]
pub(super) struct Credential {
    username: String,
    consumer: usize,
    stored: Stored,
}

#[derive(Debug)]
enum Stored {
    /// Kong's hash and the consumer id it is salted with.
    Sha1 {
        hex: String,
        consumer_id: String,
    },
    Clear(String),
}

impl Credential {
    pub(super) fn new(c: &BasicAuthCredential, consumer_id: String) -> Credential {
        let is_hash = c.password.len() == 40 && c.password.bytes().all(|b| b.is_ascii_hexdigit());
        Credential {
            username: c.username.clone(),
            consumer: c.consumer,
            stored: if is_hash {
                Stored::Sha1 {
                    hex: c.password.to_ascii_lowercase(),
                    consumer_id,
                }
            } else {
                Stored::Clear(c.password.clone())
            },
        }
    }

    fn accepts(&self, password: &str) -> bool {
        match &self.stored {
            Stored::Sha1 { hex, consumer_id } => {
                let given = kong_hash(consumer_id, password);
                constant_time_eq(given.as_bytes(), hex.as_bytes())
            }
            Stored::Clear(clear) => constant_time_eq(password.as_bytes(), clear.as_bytes()),
        }
    }
}

/// Kong's `crypto.hash(consumer_id, password)`: `sha1(password .. consumer_id)` in hex.
pub(super) fn kong_hash(consumer_id: &str, password: &str) -> String {
    let digest = Sha1::new()
        .chain_update(password.as_bytes())
        .chain_update(consumer_id.as_bytes())
        .finalize();
    let mut hex = String::with_capacity(40);
    crate::digest::push_hex(&mut hex, &digest);
    hex
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[derive(Debug)]
pub(super) struct BasicAuth {
    hide_credentials: bool,
    anonymous: Option<String>,
    www_authenticate: String,
}

impl BasicAuth {
    pub(super) fn new(c: &Conf<'_>, _doc: &ConfigDocument) -> Result<BasicAuth, String> {
        let realm = c.string("realm")?.unwrap_or_else(|| "kong".to_owned());
        Ok(BasicAuth {
            hide_credentials: c.boolean("hide_credentials", false)?,
            anonymous: c.string("anonymous")?.filter(|a| !a.is_empty()),
            www_authenticate: format!("Basic realm=\"{realm}\""),
        })
    }

    pub(super) fn access<'a>(&self, engine: &'a PluginEngine, ex: &mut Exchange<'a>) -> Step {
        if self.anonymous.is_some() && ex.identity.credential.is_some() {
            return Ok(());
        }
        let failure = match self.authenticate(engine, ex) {
            Ok(()) => return Ok(()),
            Err(failure) => failure,
        };
        fail_or_anonymous(engine, ex, self.anonymous.as_deref(), failure)
    }

    fn authenticate<'a>(&self, engine: &'a PluginEngine, ex: &mut Exchange<'a>) -> Step {
        if ex.header("authorization").is_none() && ex.header("proxy-authorization").is_none() {
            return Err(Exit::error(401, "Unauthorized")
                .with_header("WWW-Authenticate", self.www_authenticate.clone()));
        }
        let mut found = None;
        let proxy = self.retrieve(ex, "proxy-authorization");
        if let Some((username, password)) = &proxy {
            found = engine.basic.get(username).map(|c| (c, password.clone()));
        }
        if found.is_none() {
            if let Some((username, password)) = self.retrieve(ex, "authorization") {
                found = engine.basic.get(&username).map(|c| (c, password));
            }
        }
        match found {
            Some((credential, password)) if credential.accepts(&password) => {
                authenticate(
                    engine,
                    ex,
                    credential.consumer,
                    Some(credential.username.as_str()),
                );
                Ok(())
            }
            _ => Err(Exit::error(401, "Unauthorized")
                .with_header("WWW-Authenticate", self.www_authenticate.clone())),
        }
    }

    /// The username and password of one header (Kong: `\s*[Bb]asic\s*(.+)`, then
    /// `([^:]+):(.*)`); clears the header when `hide_credentials`.
    fn retrieve(&self, ex: &mut Exchange<'_>, header: &str) -> Option<(String, String)> {
        let value = ex.header(header).map(str::to_owned);
        if self.hide_credentials {
            ex.clear_header(header);
        }
        let value = value?;
        let rest = value.trim_start();
        let rest = rest
            .strip_prefix("Basic")
            .or_else(|| rest.strip_prefix("basic"))?
            .trim_start();
        let decoded = decode_base64(rest.trim_end())?;
        let text = String::from_utf8(decoded).ok()?;
        let (username, password) = text.split_once(':')?;
        if username.is_empty() {
            return None;
        }
        Some((username.to_owned(), password.to_owned()))
    }
}

#[cfg(test)]
pub(super) fn encode_base64(bytes: &[u8]) -> String {
    const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

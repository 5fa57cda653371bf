//! `request-transformer`: change the upstream request's headers, query string, path and method.
//!
//! Kong 3.x, in Kong's order: `remove`, `rename`, `replace`, `add`, `append`, each with
//! `headers` and `querystring` lists of `name` (remove) or `name:value` entries; `replace.uri`
//! sets the upstream path; `http_method` the method. `rename` and `replace` act only when the
//! header or argument exists, `add` only when it does not, `append` always adds a value.
//! Body changes (`*.body`) are not applied (logged as such), and values are used literally:
//! Kong's `$(...)` templates fail closed.

use super::conf::Conf;
use super::{Exchange, Step};
use crate::wire::percent_encode;

/// The query string of the upstream request: pairs kept verbatim unless a plugin touches them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Query {
    /// (decoded name, raw `name=value` text).
    pairs: Vec<(String, String)>,
    changed: bool,
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Query {
    pub(super) fn parse(raw: Option<&str>) -> Query {
        let pairs = raw
            .unwrap_or_default()
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let name = p.split('=').next().unwrap_or_default();
                (percent_decode(name), p.to_owned())
            })
            .collect();
        Query {
            pairs,
            changed: false,
        }
    }

    /// Every value of argument `name` (a bare `name` counts as an empty value).
    pub(super) fn values(&self, name: &str) -> Vec<String> {
        self.pairs
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, raw)| {
                raw.split_once('=')
                    .map_or(String::new(), |(_, v)| percent_decode(v))
            })
            .collect()
    }

    pub(super) fn remove(&mut self, name: &str) {
        let before = self.pairs.len();
        self.pairs.retain(|(n, _)| n != name);
        self.changed |= self.pairs.len() != before;
    }

    fn push(&mut self, name: &str, value: &str) {
        self.pairs.push((
            name.to_owned(),
            format!("{}={}", percent_encode(name), percent_encode(value)),
        ));
        self.changed = true;
    }

    fn set(&mut self, name: &str, value: &str) {
        self.remove(name);
        self.push(name, value);
    }

    pub(super) fn changed(&self) -> bool {
        self.changed
    }

    /// The query string to send, `None` for none.
    pub(super) fn render(&self) -> Option<String> {
        if self.pairs.is_empty() {
            return None;
        }
        Some(
            self.pairs
                .iter()
                .map(|(_, raw)| raw.as_str())
                .collect::<Vec<_>>()
                .join("&"),
        )
    }
}

/// `name:value` entries (`name` alone: empty value).
pub(super) fn pairs(list: Option<Vec<String>>, key: &str) -> Result<Vec<(String, String)>, String> {
    list.unwrap_or_default()
        .into_iter()
        .map(|entry| {
            if entry.contains("$(") {
                return Err(format!(
                    "config.{key}: {entry:?} uses a template, which is not supported"
                ));
            }
            Ok(match entry.split_once(':') {
                Some((n, v)) => (n.trim().to_owned(), v.trim_start().to_owned()),
                None => (entry.trim().to_owned(), String::new()),
            })
        })
        .collect()
}

#[derive(Debug, Default)]
struct Section {
    headers: Vec<(String, String)>,
    querystring: Vec<(String, String)>,
}

fn section(c: &Conf<'_>, key: &str, notes: &mut Vec<String>) -> Result<Section, String> {
    let record = c.record(key)?;
    if record.strings("body")?.is_some_and(|b| !b.is_empty()) {
        notes.push(format!(
            "plugin \"request-transformer\": config.{key}.body is not applied by the Fallback filter"
        ));
    }
    Ok(Section {
        headers: pairs(record.strings("headers")?, &format!("{key}.headers"))?,
        querystring: pairs(
            record.strings("querystring")?,
            &format!("{key}.querystring"),
        )?,
    })
}

#[derive(Debug)]
pub(super) struct RequestTransformer {
    http_method: Option<String>,
    uri: Option<String>,
    remove: Section,
    rename: Section,
    replace: Section,
    add: Section,
    append: Section,
}

impl RequestTransformer {
    pub(super) fn new(c: &Conf<'_>, notes: &mut Vec<String>) -> Result<RequestTransformer, String> {
        let replace = c.record("replace")?;
        let uri = replace.string("uri")?;
        if uri.as_deref().is_some_and(|u| u.contains("$(")) {
            return Err("config.replace.uri uses a template, which is not supported".into());
        }
        Ok(RequestTransformer {
            http_method: c.string("http_method")?.map(|m| m.to_ascii_uppercase()),
            uri,
            remove: section(c, "remove", notes)?,
            rename: section(c, "rename", notes)?,
            replace: section(c, "replace", notes)?,
            add: section(c, "add", notes)?,
            append: section(c, "append", notes)?,
        })
    }

    pub(super) fn access(&self, ex: &mut Exchange) -> Step {
        if let Some(method) = &self.http_method {
            ex.method = method.clone().into();
            ex.method_changed = true;
        }
        for (name, _) in &self.remove.headers {
            ex.clear_header(name);
        }
        for (name, _) in &self.remove.querystring {
            ex.query.remove(name);
        }
        for (old, new) in &self.rename.headers {
            if let Some(value) = ex.header(old).map(str::to_owned) {
                ex.clear_header(old);
                ex.set_header(new.clone(), value);
            }
        }
        for (old, new) in &self.rename.querystring {
            if let Some(value) = ex.query.values(old).into_iter().next() {
                ex.query.remove(old);
                ex.query.set(new, &value);
            }
        }
        for (name, value) in &self.replace.headers {
            if ex.header(name).is_some() {
                ex.set_header(name.clone(), value.clone());
            }
        }
        for (name, value) in &self.replace.querystring {
            if !ex.query.values(name).is_empty() {
                ex.query.set(name, value);
            }
        }
        if let Some(uri) = &self.uri {
            ex.upstream_path = uri.clone().into();
            ex.path_changed = true;
        }
        for (name, value) in &self.add.headers {
            if ex.header(name).is_none() {
                ex.set_header(name.clone(), value.clone());
            }
        }
        for (name, value) in &self.add.querystring {
            if ex.query.values(name).is_empty() {
                ex.query.push(name, value);
            }
        }
        for (name, value) in &self.append.headers {
            ex.headers.append(name.clone().into(), value.clone().into());
        }
        for (name, value) in &self.append.querystring {
            ex.query.push(name, value);
        }
        Ok(())
    }
}

//! `response-transformer`: change the response's headers.
//!
//! Kong 3.x, in Kong's order: `remove.headers`, `rename.headers` (`old:new`, when `old` is
//! present), `replace.headers` (when present), `add.headers` (when absent), `append.headers`
//! (always). Presence is judged on the headers as the response arrived, as Kong's
//! `kong.response.get_headers()` snapshot. JSON body changes (`*.json`) are not applied
//! (logged as such).

use super::conf::Conf;
use super::request_transformer::pairs;
use super::{Exchange, Step};

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(super) struct HeaderTransform {
    remove: Vec<String>,
    rename: Vec<(String, String)>,
    replace: Vec<(String, String)>,
    add: Vec<(String, String)>,
    append: Vec<(String, String)>,
}

impl HeaderTransform {
    pub(super) fn apply(&self, headers: &mut Vec<(String, String)>) {
        let snapshot = headers.clone();
        let had = |name: &str| snapshot.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
        let first = |name: &str| {
            snapshot
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        for name in &self.remove {
            super::remove_header(headers, name);
        }
        for (old, new) in &self.rename {
            if let Some(value) = first(old) {
                super::set_header(headers, new.clone(), value);
                super::remove_header(headers, old);
            }
        }
        for (name, value) in &self.replace {
            if had(name) {
                super::set_header(headers, name.clone(), value.clone());
            }
        }
        for (name, value) in &self.add {
            if !had(name) {
                super::set_header(headers, name.clone(), value.clone());
            }
        }
        for (name, value) in &self.append {
            headers.push((name.clone(), value.clone()));
        }
    }
}

#[derive(Debug)]
pub(super) struct ResponseTransformer {
    transform: HeaderTransform,
}

fn headers_of(
    c: &Conf<'_>,
    key: &str,
    notes: &mut Vec<String>,
) -> Result<Vec<(String, String)>, String> {
    let record = c.record(key)?;
    if record.strings("json")?.is_some_and(|j| !j.is_empty()) {
        notes.push(format!(
            "plugin \"response-transformer\": config.{key}.json is not applied by the Fallback filter"
        ));
    }
    pairs(record.strings("headers")?, &format!("{key}.headers"))
}

impl ResponseTransformer {
    pub(super) fn new(
        c: &Conf<'_>,
        notes: &mut Vec<String>,
    ) -> Result<ResponseTransformer, String> {
        Ok(ResponseTransformer {
            transform: HeaderTransform {
                remove: headers_of(c, "remove", notes)?
                    .into_iter()
                    .map(|(n, _)| n)
                    .collect(),
                rename: headers_of(c, "rename", notes)?,
                replace: headers_of(c, "replace", notes)?,
                add: headers_of(c, "add", notes)?,
                append: headers_of(c, "append", notes)?,
            },
        })
    }

    pub(super) fn access(&self, ex: &mut Exchange) -> Step {
        ex.response
            .steps
            .push(super::ResponseStep::Transform(self.transform.clone()));
        Ok(())
    }
}

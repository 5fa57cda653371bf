//! Typed reads of one JSON object's fields, recording a problem at the field's path instead of
//! failing, so that a loader can keep going and report everything at once.
//!
//! `null` is treated as absent everywhere: Kong's own exports write `null` for unset fields.

use super::Problem;
use serde_json::{Map, Value};

/// Problems collected while loading.
#[derive(Debug, Default)]
pub(super) struct Sink {
    pub(super) errors: Vec<Problem>,
    pub(super) warnings: Vec<Problem>,
}

impl Sink {
    pub(super) fn error(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(Problem::new(path, message));
    }

    pub(super) fn warn(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.warnings.push(Problem::new(path, message));
    }
}

/// How a JSON value reads in "expected X, found Y".
pub(super) fn describe(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_f64() => "a decimal number",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

pub(super) fn type_error(expected: &str, found: &Value) -> String {
    format!("expected {expected}, found {}", describe(found))
}

/// One JSON object and its path in the input.
#[derive(Clone, Copy)]
pub(super) struct Fields<'a> {
    pub(super) path: &'a str,
    pub(super) map: &'a Map<String, Value>,
}

impl<'a> Fields<'a> {
    /// The path of field `key`.
    pub(super) fn at(&self, key: &str) -> String {
        format!("{}.{key}", self.path)
    }

    /// The field's value; `None` when absent or `null`.
    pub(super) fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    pub(super) fn string(&self, key: &str, sink: &mut Sink) -> Option<String> {
        let value = self.get(key)?;
        match value.as_str() {
            Some(s) => Some(s.to_owned()),
            None => {
                sink.error(self.at(key), type_error("a string", value));
                None
            }
        }
    }

    /// A string that must not be empty when present.
    pub(super) fn text(&self, key: &str, sink: &mut Sink) -> Option<String> {
        let s = self.string(key, sink)?;
        if s.is_empty() {
            sink.error(self.at(key), "must not be empty");
            return None;
        }
        Some(s)
    }

    /// A non-empty string that must be present; `""` stands in when it is not (the load fails
    /// anyway, and later checks can still run).
    pub(super) fn required_text(&self, key: &str, sink: &mut Sink) -> String {
        if self.get(key).is_none() {
            sink.error(self.at(key), "required");
            return String::new();
        }
        self.text(key, sink).unwrap_or_default()
    }

    pub(super) fn boolean(&self, key: &str, sink: &mut Sink) -> Option<bool> {
        let value = self.get(key)?;
        match value.as_bool() {
            Some(b) => Some(b),
            None => {
                sink.error(self.at(key), type_error("true or false", value));
                None
            }
        }
    }

    /// An integer within `min..=max`.
    pub(super) fn integer(&self, key: &str, min: i64, max: i64, sink: &mut Sink) -> Option<i64> {
        let value = self.get(key)?;
        let Value::Number(number) = value else {
            sink.error(self.at(key), type_error("an integer", value));
            return None;
        };
        if let Some(n) = number.as_i64().filter(|n| (min..=max).contains(n)) {
            return Some(n);
        }
        if number.is_f64() {
            sink.error(self.at(key), type_error("an integer", value));
        } else {
            sink.error(
                self.at(key),
                format!("must be between {min} and {max}, found {number}"),
            );
        }
        None
    }

    /// An array of strings; absent means empty. Bad elements are reported at `key[i]` and
    /// skipped.
    pub(super) fn strings(&self, key: &str, sink: &mut Sink) -> Vec<String> {
        let Some(value) = self.get(key) else {
            return Vec::new();
        };
        strings_at(value, &self.at(key), sink)
    }

    pub(super) fn object(&self, key: &str, sink: &mut Sink) -> Option<&'a Map<String, Value>> {
        let value = self.get(key)?;
        match value.as_object() {
            Some(map) => Some(map),
            None => {
                sink.error(self.at(key), type_error("an object", value));
                None
            }
        }
    }

    /// Every field whose name is not in `known`, verbatim (including `null` values, so a
    /// re-export keeps them).
    pub(super) fn extra(&self, known: &[&str]) -> Map<String, Value> {
        self.map
            .iter()
            .filter(|(key, _)| !known.contains(&key.as_str()))
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect()
    }
}

/// An array of strings at `path`.
pub(super) fn strings_at(value: &Value, path: &str, sink: &mut Sink) -> Vec<String> {
    let Some(items) = value.as_array() else {
        sink.error(path, type_error("an array of strings", value));
        return Vec::new();
    };
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        match item.as_str() {
            Some(s) => out.push(s.to_owned()),
            None => sink.error(format!("{path}[{i}]"), type_error("a string", item)),
        }
    }
    out
}

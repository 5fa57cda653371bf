//! Typed reads of a plugin's `config`, with Kong's defaults. `null` means absent, as in Kong's
//! exports. A wrong type is an error: the plugin then fails closed rather than run with a
//! configuration nobody wrote.

use serde_json::{Map, Value};

pub(super) struct Conf<'a> {
    map: &'a Map<String, Value>,
    prefix: String,
}

impl<'a> Conf<'a> {
    pub(super) fn new(map: &'a Map<String, Value>) -> Conf<'a> {
        Conf {
            map,
            prefix: String::new(),
        }
    }

    pub(super) fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn at(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    pub(super) fn string(&self, key: &str) -> Result<Option<String>, String> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(format!("config.{} must be a string", self.at(key))),
        }
    }

    pub(super) fn boolean(&self, key: &str, default: bool) -> Result<bool, String> {
        match self.get(key) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(format!("config.{} must be true or false", self.at(key))),
        }
    }

    pub(super) fn number(&self, key: &str) -> Result<Option<f64>, String> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Number(n)) => Ok(n.as_f64()),
            Some(_) => Err(format!("config.{} must be a number", self.at(key))),
        }
    }

    /// An array of strings; absent: `None`.
    pub(super) fn strings(&self, key: &str) -> Result<Option<Vec<String>>, String> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_str().map(str::to_owned).ok_or_else(|| {
                        format!("config.{} must be an array of strings", self.at(key))
                    })
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(_) => Err(format!(
                "config.{} must be an array of strings",
                self.at(key)
            )),
        }
    }

    /// A nested record (`config.add`); absent: an empty one.
    pub(super) fn record(&self, key: &str) -> Result<Conf<'a>, String> {
        static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();
        match self.get(key) {
            None => Ok(Conf {
                map: EMPTY.get_or_init(Map::new),
                prefix: format!("{}{key}.", self.prefix),
            }),
            Some(Value::Object(map)) => Ok(Conf {
                map,
                prefix: format!("{}{key}.", self.prefix),
            }),
            Some(_) => Err(format!("config.{} must be an object", self.at(key))),
        }
    }
}

//! Reading documents from outside into [`serde_json::Value`], strictly: a key repeated in one
//! object and nesting deeper than [`MAX_NESTING_DEPTH`] are errors that name their path.
//!
//! `serde_json::Value`'s own deserializer keeps the last of repeated keys, so
//! `{"routes": [...], "routes": []}` would load with no routes and no word. [`StrictValue`]
//! builds the same `Value` through any serde `Deserializer` (JSON here, YAML in the companion),
//! refusing duplicates as it inserts them, at no extra cost: the map's own insert tells.

use crate::limits::MAX_NESTING_DEPTH;
use crate::pace::Pace;
use serde::de::{DeserializeSeed, Deserializer, Error as _, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};
use std::cell::RefCell;
use std::fmt;

/// Why a document could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StrictError {
    /// An object names the same key twice.
    DuplicateKey {
        /// The object's path (empty for the top level), e.g. `services[0].routes[1]`.
        path: String,
        /// The repeated key.
        key: String,
    },
    /// Arrays and objects nest deeper than [`MAX_NESTING_DEPTH`].
    TooDeep {
        /// Where the limit was crossed.
        path: String,
        /// The limit ([`MAX_NESTING_DEPTH`]).
        limit: usize,
    },
    /// Not well-formed: the parser's message, with its position when it has one.
    Syntax(String),
}

impl StrictError {
    /// The path the error is at, `$` for the document as a whole.
    pub fn path(&self) -> &str {
        match self {
            StrictError::DuplicateKey { path, .. } | StrictError::TooDeep { path, .. } => {
                display_path(path)
            }
            StrictError::Syntax(_) => "$",
        }
    }

    /// What is wrong and what to do, without the path.
    pub fn message(&self) -> String {
        match self {
            StrictError::DuplicateKey { key, .. } => format!(
                "key {key:?} appears twice in the same object; name each key once (JSON \
                 readers keep only the last, silently dropping the first): remove or merge one"
            ),
            StrictError::TooDeep { limit, .. } => format!(
                "nested deeper than {limit} levels of arrays and objects; a declarative config \
                 is about 10 deep, so this is not one: check what produced it"
            ),
            StrictError::Syntax(message) => message.clone(),
        }
    }
}

impl fmt::Display for StrictError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path(), self.message())
    }
}

impl std::error::Error for StrictError {}

fn display_path(path: &str) -> &str {
    if path.is_empty() {
        "$"
    } else {
        path
    }
}

/// Parses JSON `bytes` strictly (see the module documentation). A syntax error names the line
/// and column.
pub fn from_slice(bytes: &[u8]) -> Result<Value, StrictError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = deserialize(&mut de, |e: serde_json::Error| {
        StrictError::Syntax(format!(
            "not valid JSON (line {}, column {}): {}",
            e.line(),
            e.column(),
            json_error_reason(&e)
        ))
    })?;
    de.end().map_err(|e| {
        StrictError::Syntax(format!(
            "not valid JSON (line {}, column {}): {}",
            e.line(),
            e.column(),
            json_error_reason(&e)
        ))
    })?;
    Ok(value)
}

/// Parses JSON `text` strictly.
pub fn from_str(text: &str) -> Result<Value, StrictError> {
    from_slice(text.as_bytes())
}

/// Reads one value strictly from any serde `Deserializer`; `syntax` words the deserializer's
/// own errors (a duplicate or a depth error is reported as such, whatever the format).
pub fn deserialize<'de, D, F>(deserializer: D, syntax: F) -> Result<Value, StrictError>
where
    D: Deserializer<'de>,
    F: FnOnce(D::Error) -> StrictError,
{
    let state = State::default();
    let seed = StrictValue {
        state: &state,
        depth: 0,
    };
    match seed.deserialize(deserializer) {
        Ok(value) => Ok(value),
        Err(e) => Err(state.found.into_inner().unwrap_or_else(|| syntax(e))),
    }
}

/// serde_json's `Display` appends " at line L column C"; the position is already in our message.
fn json_error_reason(err: &serde_json::Error) -> String {
    let text = err.to_string();
    let suffix = format!(" at line {} column {}", err.line(), err.column());
    match text.strip_suffix(&suffix) {
        Some(reason) => reason.to_owned(),
        None => text,
    }
}

/// The path being read and the first strictness error met.
#[derive(Default)]
struct State {
    /// Segments of the current path, rendered only for an error.
    path: RefCell<Vec<Segment>>,
    found: RefCell<Option<StrictError>>,
}

enum Segment {
    Key(String),
    Index(usize),
}

impl State {
    fn render(&self) -> String {
        let mut out = String::new();
        for segment in self.path.borrow().iter() {
            match segment {
                Segment::Key(key) => {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push_str(key);
                }
                Segment::Index(i) => {
                    out.push('[');
                    out.push_str(&i.to_string());
                    out.push(']');
                }
            }
        }
        out
    }

    fn fail<E: serde::de::Error>(&self, error: StrictError) -> E {
        let message = error.to_string();
        self.found.borrow_mut().get_or_insert(error);
        E::custom(message)
    }
}

/// A `DeserializeSeed` that builds a [`Value`], refusing duplicate keys and excessive depth.
struct StrictValue<'s> {
    state: &'s State,
    /// Depth of the value about to be read's container (0 at the top).
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for StrictValue<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl StrictValue<'_> {
    fn enter<E: serde::de::Error>(&self) -> Result<usize, E> {
        let depth = self.depth + 1;
        if depth > MAX_NESTING_DEPTH {
            return Err(self.state.fail(StrictError::TooDeep {
                path: self.state.render(),
                limit: MAX_NESTING_DEPTH,
            }));
        }
        Ok(depth)
    }
}

impl<'de> Visitor<'de> for StrictValue<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        // As serde_json's own Value: a non-finite float (YAML's .inf, .nan) becomes null.
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        self.deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let depth = self.enter()?;
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        loop {
            self.state
                .path
                .borrow_mut()
                .push(Segment::Index(items.len()));
            let item = seq.next_element_seed(StrictValue {
                state: self.state,
                depth,
            });
            self.state.path.borrow_mut().pop();
            match item? {
                Some(item) => items.push(item),
                None => return Ok(Value::Array(items)),
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let depth = self.enter()?;
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                let path = self.state.render();
                return Err(self.state.fail(StrictError::DuplicateKey { path, key }));
            }
            self.state.path.borrow_mut().push(Segment::Key(key));
            let value = map.next_value_seed(StrictValue {
                state: self.state,
                depth,
            });
            let key = match self.state.path.borrow_mut().pop() {
                Some(Segment::Key(key)) => key,
                _ => return Err(A::Error::custom("internal error: JSON path out of step")),
            };
            out.insert(key, value?);
        }
        Ok(Value::Object(out))
    }
}

/// How deep [`drop_paced`] takes values apart: the document (depth 0), its kinds' arrays, their
/// entities and the entities' fields (depth 3, e.g. a service's `routes`). Deeper values, e.g. a
/// nested route with its plugins, are freed in one step.
const DROP_DEPTH: u8 = 4;

/// Frees `value` a step at a time (see [`crate::pace`]): the parsed JSON of a 10,000-route
/// document takes longer to free than a slice.
pub async fn drop_paced(value: Value, pace: &Pace<'_>) {
    let mut stack = vec![(value, 0u8)];
    while let Some((value, depth)) = stack.pop() {
        match value {
            Value::Array(items) if depth < DROP_DEPTH => {
                stack.extend(items.into_iter().map(|v| (v, depth + 1)));
            }
            Value::Object(map) if depth < DROP_DEPTH => {
                stack.extend(map.into_iter().map(|(_, v)| (v, depth + 1)));
            }
            other => drop(other),
        }
        pace.step().await;
    }
}

/// [`from_slice`], yielding to `pace` (see [`crate::pace`]) once per element of the top-level
/// object's arrays: a 10,000-route document takes longer to parse than a slice.
///
/// The text is cut at those elements by a scan that only follows strings and brackets; each
/// piece is parsed by [`from_slice`] and the pieces are put together. Anything the cut cannot
/// vouch for (a syntax error, a duplicate key, nesting near [`MAX_NESTING_DEPTH`], a top level
/// that is not an object) is left to [`from_slice`] on the whole text, so the result, and
/// every error with its position and path, is exactly [`from_slice`]'s.
pub async fn from_slice_paced(bytes: &[u8], pace: &Pace<'_>) -> Result<Value, StrictError> {
    match pieces(bytes, pace).await {
        Some(value) => Ok(value),
        None => from_slice(bytes),
    }
}

/// The top-level object of `bytes` parsed piece by piece; `None` for anything else.
async fn pieces(bytes: &[u8], pace: &Pace<'_>) -> Option<Value> {
    // Depth budget for a piece: one level for the top-level object, one for an array.
    let deepest = MAX_NESTING_DEPTH.checked_sub(2)?;
    let piece = |range: std::ops::Range<usize>, depth: usize| -> Option<Value> {
        (depth <= deepest)
            .then(|| from_slice(&bytes[range]).ok())
            .flatten()
    };
    let mut map = Map::new();
    let mut at = skip_space(bytes, 0);
    expect(bytes, &mut at, b'{')?;
    at = skip_space(bytes, at);
    if bytes.get(at) == Some(&b'}') {
        at += 1;
    } else {
        loop {
            let key_end = string_end(bytes, at)?;
            let key: String = serde_json::from_slice(&bytes[at..key_end]).ok()?;
            at = skip_space(bytes, key_end);
            expect(bytes, &mut at, b':')?;
            at = skip_space(bytes, at);
            let value = if bytes.get(at) == Some(&b'[') {
                at = skip_space(bytes, at + 1);
                let mut items = Vec::new();
                if bytes.get(at) == Some(&b']') {
                    at += 1;
                } else {
                    loop {
                        let (end, depth) = value_end(bytes, at)?;
                        items.push(piece(at..end, depth)?);
                        pace.step().await;
                        let closed;
                        (at, closed) = next_item(bytes, end, b']')?;
                        if closed {
                            break;
                        }
                    }
                }
                Value::Array(items)
            } else {
                let (end, depth) = value_end(bytes, at)?;
                let value = piece(at..end, depth)?;
                at = end;
                value
            };
            if map.insert(key, value).is_some() {
                return None;
            }
            let closed;
            (at, closed) = next_item(bytes, at, b'}')?;
            if closed {
                break;
            }
        }
    }
    (skip_space(bytes, at) == bytes.len()).then_some(Value::Object(map))
}

/// After an item of an array or object ending at `at`: where the next item starts and `false`
/// (a `,`), or just past the container and `true` (`close`); `None` for anything else.
fn next_item(bytes: &[u8], at: usize, close: u8) -> Option<(usize, bool)> {
    let at = skip_space(bytes, at);
    match *bytes.get(at)? {
        b',' => Some((skip_space(bytes, at + 1), false)),
        b if b == close => Some((at + 1, true)),
        _ => None,
    }
}

fn skip_space(bytes: &[u8], mut at: usize) -> usize {
    while matches!(bytes.get(at), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        at += 1;
    }
    at
}

fn expect(bytes: &[u8], at: &mut usize, byte: u8) -> Option<()> {
    (bytes.get(*at) == Some(&byte)).then(|| *at += 1)
}

/// Just past the string starting at `at` (a `"`).
fn string_end(bytes: &[u8], at: usize) -> Option<usize> {
    if bytes.get(at) != Some(&b'"') {
        return None;
    }
    let mut i = at + 1;
    loop {
        match bytes.get(i)? {
            b'"' => return Some(i + 1),
            b'\\' => i += 2,
            _ => i += 1,
        }
    }
}

/// Where the value starting at `at` ends (exclusive), following only strings and brackets,
/// and how deep its arrays and objects nest. What lies between is for the parser to judge.
fn value_end(bytes: &[u8], at: usize) -> Option<(usize, usize)> {
    let (mut i, mut depth, mut deepest) = (at, 0usize, 0usize);
    loop {
        match bytes.get(i) {
            Some(b'"') => {
                i = string_end(bytes, i)?;
                if depth == 0 {
                    return Some((i, deepest));
                }
                continue;
            }
            Some(b'{' | b'[') => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            Some(b'}' | b']') => {
                if depth == 0 {
                    return Some((i, deepest));
                }
                depth -= 1;
                if depth == 0 {
                    return Some((i + 1, deepest));
                }
            }
            Some(b',') if depth == 0 => return Some((i, deepest)),
            Some(_) => {}
            None if depth == 0 && i > at => return Some((i, deepest)),
            None => return None,
        }
        i += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_document_is_parsed_in_pieces_one_array_element_a_step() {
        let doc = json!({
            "_format_version": "3.0",
            "services": (0..100).map(|i| json!({"name": format!("s{i}"), "tags": ["a]\\\"{"]})).collect::<Vec<_>>(),
            "routes": [],
            "empty": {},
        });
        for text in [
            serde_json::to_string(&doc).unwrap(),
            serde_json::to_string_pretty(&doc).unwrap(),
        ] {
            let due = || true;
            let pace = Pace::new(&due);
            let value = crate::pace::run_to_end(pieces(text.as_bytes(), &pace));
            assert_eq!(value.as_ref(), Some(&doc), "cut where it should be: {text}");
            assert_eq!(pace.yields(), 100 / u64::from(crate::pace::CHECK_EVERY));
        }
    }

    #[test]
    fn what_the_pieces_cannot_vouch_for_is_parsed_at_once() {
        let nested = |depth: usize| format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
        let cases = [
            // A duplicate top-level key, and one inside a piece: the path is the document's.
            r#"{"a":[1],"a":[2]}"#.to_owned(),
            r#"{"routes":[{"x":1},{"paths":[],"paths":[]}]}"#.to_owned(),
            // Syntax errors: position in the whole text.
            "{\"routes\":[{\"x\":1},\n{\"x\":tru}]}".to_owned(),
            r#"{"routes":[1,]}"#.to_owned(),
            r#"{"routes":[1] "x":2}"#.to_owned(),
            r#"{"a":1} trailing"#.to_owned(),
            // Too deep, just past the limit inside a piece.
            format!("{{\"routes\":[{}]}}", nested(MAX_NESTING_DEPTH - 1)),
            // Not an object at the top.
            "[1,2]".to_owned(),
        ];
        for text in cases {
            let due = || true;
            let pace = Pace::new(&due);
            let paced = crate::pace::run_to_end(from_slice_paced(text.as_bytes(), &pace));
            assert_eq!(paced.is_err(), !text.starts_with('['), "{text}");
            assert_eq!(paced, from_slice(text.as_bytes()), "{text}");
        }
        // At the limit the pieces read it; one level more, they leave it to the whole parse.
        let due = || true;
        let pace = Pace::new(&due);
        let at_limit = format!("{{\"routes\":[{}]}}", nested(MAX_NESTING_DEPTH - 2));
        let read = crate::pace::run_to_end(pieces(at_limit.as_bytes(), &pace));
        assert_eq!(read.map(Ok), Some(from_slice(at_limit.as_bytes())));
        let past = format!("{{\"routes\":[{}]}}", nested(MAX_NESTING_DEPTH - 1));
        assert!(crate::pace::run_to_end(pieces(past.as_bytes(), &pace)).is_none());
    }

    #[test]
    fn duplicate_keys_are_refused_with_their_path() {
        let err = from_str(r#"{"_format_version":"3.0","routes":[{"paths":["/"]}],"routes":[]}"#)
            .unwrap_err();
        assert_eq!(
            err,
            StrictError::DuplicateKey {
                path: String::new(),
                key: "routes".into()
            }
        );
        assert!(err
            .to_string()
            .starts_with("$: key \"routes\" appears twice"));

        let err = from_str(r#"{"services":[{"name":"a"},{"routes":[{"name":"r","name":"s"}]}]}"#)
            .unwrap_err();
        assert_eq!(err.path(), "services[1].routes[0]");
        assert!(
            err.to_string().contains("key \"name\" appears twice"),
            "{err}"
        );
    }

    #[test]
    fn the_same_key_in_different_objects_is_fine() {
        let value = from_str(r#"{"a":{"k":1},"b":{"k":2},"c":[{"k":1},{"k":2}]}"#).unwrap();
        assert_eq!(
            value,
            json!({"a": {"k": 1}, "b": {"k": 2}, "c": [{"k": 1}, {"k": 2}]})
        );
    }

    #[test]
    fn depth_is_bounded_with_the_path_where_it_was_crossed() {
        let ok = format!(
            "{}{}",
            "[".repeat(MAX_NESTING_DEPTH),
            "]".repeat(MAX_NESTING_DEPTH)
        );
        assert!(from_str(&ok).is_ok());
        let deep = format!("{{\"a\":{}1{}}}", "[".repeat(100), "]".repeat(100));
        let err = from_str(&deep).unwrap_err();
        assert!(
            matches!(
                err,
                StrictError::TooDeep {
                    limit: MAX_NESTING_DEPTH,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.path().starts_with("a[0][0]"), "{}", err.path());
        assert!(err.to_string().contains("deeper than 64 levels"), "{err}");
    }

    #[test]
    fn syntax_errors_give_line_and_column() {
        let err = from_str("{\n  \"a\": }").unwrap_err();
        assert_eq!(
            err,
            StrictError::Syntax("not valid JSON (line 2, column 8): expected value".into())
        );
        let err = from_str("{} x").unwrap_err();
        assert!(err.to_string().contains("trailing characters"), "{err}");
    }

    #[test]
    fn values_are_those_serde_json_builds() {
        let text =
            r#"{"n":-1,"u":18446744073709551615,"f":1.5,"s":"\u00e9","t":true,"z":null,"a":[]}"#;
        assert_eq!(
            from_str(text).unwrap(),
            serde_json::from_str::<Value>(text).unwrap()
        );
    }
}

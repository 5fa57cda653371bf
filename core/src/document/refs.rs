//! References between entities (`"service": "billing"`, `{"id": "..."}`) and the uniqueness of
//! the keys they resolve by.

use super::fields::{type_error, Fields, Sink};
use crate::pace::{drop_all, Pace};
use serde_json::Value;
use std::collections::BTreeMap;

/// Which of a parent's keys a reference names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Lookup {
    /// A plain string: an id, else a name (username), else a custom_id, as Kong resolves it.
    Any,
    Id,
    Name,
    CustomId,
}

/// A reference to a parent as written (`"service": "billing"`, `"service": {"id": "..."}`).
#[derive(Debug)]
pub(super) struct Reference {
    path: String,
    lookup: Lookup,
    value: String,
}

/// Reads a reference field. Consumers are named by `username` or `custom_id` in object form,
/// the other kinds by `name`.
pub(super) fn reference(
    f: Fields<'_>,
    key: &str,
    consumer: bool,
    sink: &mut Sink,
) -> Option<Reference> {
    let value = f.get(key)?;
    let path = f.at(key);
    let object_keys: &[(&str, Lookup)] = if consumer {
        &[
            ("id", Lookup::Id),
            ("username", Lookup::Name),
            ("custom_id", Lookup::CustomId),
        ]
    } else {
        &[("id", Lookup::Id), ("name", Lookup::Name)]
    };
    match value {
        Value::String(s) if s.is_empty() => {
            sink.error(path, "must not be empty");
            None
        }
        Value::String(s) => Some(Reference {
            path,
            lookup: Lookup::Any,
            value: s.clone(),
        }),
        Value::Object(map) => {
            for (object_key, lookup) in object_keys {
                let Some(v) = map.get(*object_key).filter(|v| !v.is_null()) else {
                    continue;
                };
                return match v.as_str() {
                    Some(s) if !s.is_empty() => Some(Reference {
                        path,
                        lookup: *lookup,
                        value: s.to_owned(),
                    }),
                    _ => {
                        sink.error(
                            format!("{path}.{object_key}"),
                            type_error("a non-empty string", v),
                        );
                        None
                    }
                };
            }
            let wanted: Vec<String> = object_keys.iter().map(|(k, _)| format!("{k:?}")).collect();
            sink.error(
                path,
                format!("expected an object with one of {}", wanted.join(", ")),
            );
            None
        }
        other => {
            sink.error(
                path,
                type_error(
                    "an id or name string, or an object like {\"id\": \"...\"}",
                    other,
                ),
            );
            None
        }
    }
}

/// The keys by which an entity can be referenced.
pub(super) struct Keys<'e> {
    pub(super) path: &'e str,
    pub(super) id: Option<&'e str>,
    pub(super) name: Option<&'e str>,
    pub(super) custom_id: Option<&'e str>,
}

/// Who first claimed a unique value: index and path.
pub(super) type Claims = BTreeMap<String, (usize, String)>;

/// Records `value` as taken by entity `index`; reports a duplicate at `field_path` otherwise.
pub(super) fn claim(
    claims: &mut Claims,
    value: &str,
    index: usize,
    entity_path: &str,
    field_path: String,
    what: String,
    sink: &mut Sink,
) {
    match claims.get(value) {
        Some((_, first)) => sink.error(field_path, format!("duplicate {what} (also {first})")),
        None => {
            claims.insert(value.to_owned(), (index, entity_path.to_owned()));
        }
    }
}

/// One kind's lookup tables, built once while checking that ids and names are unique.
pub(super) struct Index {
    kind: &'static str,
    name_field: &'static str,
    paths: Vec<String>,
    by_id: Claims,
    by_name: Claims,
    by_custom_id: Claims,
}

impl Index {
    pub(super) async fn new<'e>(
        kind: &'static str,
        name_field: &'static str,
        entities: impl Iterator<Item = Keys<'e>>,
        sink: &mut Sink,
        pace: &Pace<'_>,
    ) -> Index {
        let mut index = Index {
            kind,
            name_field,
            paths: Vec::new(),
            by_id: Claims::new(),
            by_name: Claims::new(),
            by_custom_id: Claims::new(),
        };
        for (i, keys) in entities.enumerate() {
            pace.step().await;
            index.paths.push(keys.path.to_owned());
            if let Some(id) = keys.id {
                claim(
                    &mut index.by_id,
                    id,
                    i,
                    keys.path,
                    format!("{}.id", keys.path),
                    format!("id {id:?}"),
                    sink,
                );
            }
            if let Some(name) = keys.name {
                claim(
                    &mut index.by_name,
                    name,
                    i,
                    keys.path,
                    format!("{}.{name_field}", keys.path),
                    format!("{name_field} {name:?}"),
                    sink,
                );
            }
            if let Some(custom_id) = keys.custom_id {
                claim(
                    &mut index.by_custom_id,
                    custom_id,
                    i,
                    keys.path,
                    format!("{}.custom_id", keys.path),
                    format!("custom_id {custom_id:?}"),
                    sink,
                );
            }
        }
        index
    }

    /// Frees the index a step at a time.
    pub(super) async fn dismantle(self, pace: &Pace<'_>) {
        drop_all(self.paths, pace).await;
        for claims in [self.by_id, self.by_name, self.by_custom_id] {
            drop_all(claims, pace).await;
        }
    }

    fn find(&self, reference: &Reference) -> Option<usize> {
        let get = |claims: &Claims| claims.get(&reference.value).map(|(i, _)| *i);
        match reference.lookup {
            Lookup::Any => get(&self.by_id)
                .or_else(|| get(&self.by_name))
                .or_else(|| get(&self.by_custom_id)),
            Lookup::Id => get(&self.by_id),
            Lookup::Name => get(&self.by_name),
            Lookup::CustomId => get(&self.by_custom_id),
        }
    }

    /// How a reference reads in a message: `service "billing"`, `consumer with custom_id "7"`.
    fn describe(&self, reference: &Reference) -> String {
        let value = &reference.value;
        match reference.lookup {
            Lookup::Any => format!("{} {value:?}", self.kind),
            Lookup::Id => format!("{} with id {value:?}", self.kind),
            Lookup::Name => format!("{} with {} {value:?}", self.kind, self.name_field),
            Lookup::CustomId => format!("{} with custom_id {value:?}", self.kind),
        }
    }
}

/// Resolves a parent from an explicit reference and/or the entity's nesting.
pub(super) fn link(
    explicit: Option<&Reference>,
    nested_in: Option<usize>,
    index: &Index,
    sink: &mut Sink,
) -> Option<usize> {
    let Some(reference) = explicit else {
        return nested_in;
    };
    let found = index.find(reference);
    match nested_in {
        None => {
            if found.is_none() {
                sink.error(
                    reference.path.as_str(),
                    format!("unknown {}", index.describe(reference)),
                );
            }
            found
        }
        Some(parent) => {
            if found != Some(parent) {
                let parent_path = index.paths.get(parent).map_or("?", String::as_str);
                sink.error(
                    reference.path.as_str(),
                    format!(
                        "names {} but the entity is nested under the {} at {parent_path}; \
                         remove this field or move the entity to the top level",
                        index.describe(reference),
                        index.kind
                    ),
                );
            }
            Some(parent)
        }
    }
}

/// Like [`link`] for a parent Kong requires (targets, credentials, ACLs).
pub(super) fn required_link(
    f: Fields<'_>,
    key: &str,
    explicit: Option<&Reference>,
    nested_in: Option<usize>,
    index: &Index,
    sink: &mut Sink,
) -> Option<usize> {
    if explicit.is_none() && nested_in.is_none() {
        if f.get(key).is_none() {
            sink.error(
                f.at(key),
                format!(
                    "required: nest this entity under a {kind} or name its {kind} here",
                    kind = index.kind
                ),
            );
        }
        return None;
    }
    link(explicit, nested_in, index, sink)
}

/// Checks that ids are unique within one kind that nothing references by id.
pub(super) async fn unique_ids<'e>(
    entities: impl Iterator<Item = (&'e str, Option<&'e str>)>,
    sink: &mut Sink,
    pace: &Pace<'_>,
) {
    let mut claims = Claims::new();
    for (i, (path, id)) in entities.enumerate() {
        pace.step().await;
        if let Some(id) = id {
            claim(
                &mut claims,
                id,
                i,
                path,
                format!("{path}.id"),
                format!("id {id:?}"),
                sink,
            );
        }
    }
    drop_all(claims, pace).await;
}

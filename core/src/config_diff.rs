//! What changed between two configs: routes, services, plugins and consumers added, removed or
//! changed, each named the way an operator knows it (its name, else its id, else where it sits).

use crate::document::{ConfigDocument, Consumer, Plugin, Route, Service};
use serde::Serialize;
use std::collections::BTreeMap;

/// The changes of one kind of entity, each list sorted by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct KindDiff {
    /// Entities only in the new config.
    pub added: Vec<String>,
    /// Entities only in the old config.
    pub removed: Vec<String>,
    /// Entities in both whose settings differ.
    pub changed: Vec<String>,
}

impl KindDiff {
    /// True when nothing of this kind changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

/// The changes between two configs, by kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ConfigDiff {
    /// Services.
    pub services: KindDiff,
    /// Routes.
    pub routes: KindDiff,
    /// Plugins, named `<plugin name>` plus its instance name or id, or its scope
    /// (`key-auth on route r`, `cors (global)`).
    pub plugins: KindDiff,
    /// Consumers.
    pub consumers: KindDiff,
}

impl ConfigDiff {
    /// True when the two configs route and authorise the same way.
    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
            && self.routes.is_empty()
            && self.plugins.is_empty()
            && self.consumers.is_empty()
    }
}

/// Compares `old` with `new`. Entities are matched by name (or id); an entity without either
/// is matched by where it sits (`routes[2]`), so moving it shows as removed and added.
/// Positions and the order of entities are not changes.
pub fn diff(old: &ConfigDocument, new: &ConfigDocument) -> ConfigDiff {
    ConfigDiff {
        services: compare(entities(old, service_entry), entities(new, service_entry)),
        routes: compare(entities(old, route_entry), entities(new, route_entry)),
        plugins: compare(entities(old, plugin_entry), entities(new, plugin_entry)),
        consumers: compare(entities(old, consumer_entry), entities(new, consumer_entry)),
    }
}

/// An entity's name for the diff and what it is compared by (its settings, with positions
/// and indices replaced by the names they point to).
type Entry = (String, String);

fn entities(
    doc: &ConfigDocument,
    entry: fn(&ConfigDocument, usize) -> Option<Entry>,
) -> BTreeMap<String, String> {
    (0..usize::MAX).map_while(|i| entry(doc, i)).collect()
}

fn compare(old: BTreeMap<String, String>, new: BTreeMap<String, String>) -> KindDiff {
    let mut out = KindDiff::default();
    for (name, settings) in &old {
        match new.get(name) {
            None => out.removed.push(name.clone()),
            Some(other) if other != settings => out.changed.push(name.clone()),
            Some(_) => {}
        }
    }
    out.added = new
        .keys()
        .filter(|k| !old.contains_key(*k))
        .cloned()
        .collect();
    out
}

/// The name, else the id the input gave (generated ids are not the user's words), else the path.
fn label(name: Option<&String>, id: Option<&str>, path: &str) -> String {
    name.map(String::as_str)
        .or(id)
        .map_or_else(|| path.to_owned(), str::to_owned)
}

fn service_name(doc: &ConfigDocument, index: Option<usize>) -> Option<String> {
    let s = doc.services.get(index?)?;
    Some(label(s.name.as_ref(), s.id.given_id(), &s.path))
}

fn route_name(doc: &ConfigDocument, index: Option<usize>) -> Option<String> {
    let r = doc.routes.get(index?)?;
    Some(label(r.name.as_ref(), r.id.given_id(), &r.path))
}

fn consumer_name(doc: &ConfigDocument, index: Option<usize>) -> Option<String> {
    let c = doc.consumers.get(index?)?;
    Some(label(
        c.username.as_ref().or(c.custom_id.as_ref()),
        c.id.given_id(),
        &c.path,
    ))
}

fn service_entry(doc: &ConfigDocument, i: usize) -> Option<Entry> {
    let s = doc.services.get(i)?;
    let settings = Service {
        path: String::new(),
        ..s.clone()
    };
    Some((service_name(doc, Some(i))?, format!("{settings:?}")))
}

fn route_entry(doc: &ConfigDocument, i: usize) -> Option<Entry> {
    let r = doc.routes.get(i)?;
    let settings = Route {
        path: String::new(),
        service: None,
        ..r.clone()
    };
    let service = service_name(doc, r.service);
    Some((
        route_name(doc, Some(i))?,
        format!("{settings:?} -> {service:?}"),
    ))
}

fn consumer_entry(doc: &ConfigDocument, i: usize) -> Option<Entry> {
    let c = doc.consumers.get(i)?;
    let settings = Consumer {
        path: String::new(),
        ..c.clone()
    };
    // Credentials and ACL groups belong to the consumer: a new key is a changed consumer.
    let credentials = (
        doc.keyauth_credentials
            .iter()
            .filter(|k| k.consumer == i)
            .map(|k| format!("{:?}", (&k.key, &k.tags)))
            .collect::<Vec<_>>(),
        doc.basicauth_credentials
            .iter()
            .filter(|b| b.consumer == i)
            .map(|b| format!("{:?}", (&b.username, &b.password, &b.tags)))
            .collect::<Vec<_>>(),
        doc.acls
            .iter()
            .filter(|a| a.consumer == i)
            .map(|a| a.group.clone())
            .collect::<Vec<_>>(),
    );
    Some((
        consumer_name(doc, Some(i))?,
        format!("{settings:?} {credentials:?}"),
    ))
}

fn plugin_entry(doc: &ConfigDocument, i: usize) -> Option<Entry> {
    let p = doc.plugins.get(i)?;
    let mut scope = Vec::new();
    if let Some(r) = route_name(doc, p.route) {
        scope.push(format!("route {r}"));
    }
    if let Some(s) = service_name(doc, p.service) {
        scope.push(format!("service {s}"));
    }
    if let Some(c) = consumer_name(doc, p.consumer) {
        scope.push(format!("consumer {c}"));
    }
    let name = match p.instance_name.as_deref().or(p.id.given_id()) {
        Some(instance) => format!("{} {instance}", p.name),
        None if scope.is_empty() => format!("{} (global)", p.name),
        None => format!("{} on {}", p.name, scope.join(", ")),
    };
    let settings = Plugin {
        path: String::new(),
        route: None,
        service: None,
        consumer: None,
        ..p.clone()
    };
    Some((name, format!("{settings:?} {scope:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc(value: serde_json::Value) -> ConfigDocument {
        ConfigDocument::from_json(&value).unwrap().document
    }

    #[test]
    fn the_same_config_in_another_shape_or_order_has_no_changes() {
        let nested = doc(json!({"_format_version": "3.0", "services": [
            {"name": "a", "url": "http://a:80", "routes": [{"name": "ra", "paths": ["/a"]}]},
            {"name": "b", "url": "http://b:80"}
        ]}));
        let flat = doc(json!({"_format_version": "3.0",
            "services": [{"name": "b", "url": "http://b:80"}, {"name": "a", "url": "http://a:80"}],
            "routes": [{"name": "ra", "paths": ["/a"], "service": "a"}]
        }));
        let d = diff(&nested, &flat);
        assert!(d.is_empty(), "{d:?}");
    }

    #[test]
    fn added_removed_and_changed_entities_of_each_kind() {
        let old = doc(json!({"_format_version": "3.0",
            "services": [
                {"name": "keep", "url": "http://k:80", "routes": [{"name": "r1", "paths": ["/1"]}]},
                {"name": "gone", "url": "http://g:80"},
                {"name": "moved", "url": "http://m:80"}
            ],
            "plugins": [{"name": "cors"}, {"name": "key-auth", "route": "r1"}],
            "consumers": [{"username": "alice", "keyauth_credentials": [{"key": "k1"}]}, {"username": "bob"}]
        }));
        let new = doc(json!({"_format_version": "3.0",
            "services": [
                {"name": "keep", "url": "http://k:80", "routes": [{"name": "r1", "paths": ["/1", "/one"]}, {"name": "r2", "paths": ["/2"]}]},
                {"name": "moved", "url": "http://m:8080"},
                {"name": "new", "url": "http://n:80"}
            ],
            "plugins": [{"name": "cors", "config": {"origins": ["*"]}}, {"name": "key-auth", "route": "r1"}, {"name": "acl", "service": "new", "config": {"allow": ["x"]}}],
            "consumers": [{"username": "alice", "keyauth_credentials": [{"key": "k2"}]}, {"username": "carol"}]
        }));
        let d = diff(&old, &new);
        assert_eq!(d.services.added, ["new"]);
        assert_eq!(d.services.removed, ["gone"]);
        assert_eq!(d.services.changed, ["moved"]);
        assert_eq!(d.routes.added, ["r2"]);
        assert_eq!(d.routes.changed, ["r1"]);
        assert!(d.routes.removed.is_empty());
        assert_eq!(d.plugins.added, ["acl on service new"]);
        assert_eq!(d.plugins.changed, ["cors (global)"]);
        assert!(d.plugins.removed.is_empty(), "{d:?}");
        assert_eq!(d.consumers.added, ["carol"]);
        assert_eq!(d.consumers.removed, ["bob"]);
        assert_eq!(
            d.consumers.changed,
            ["alice"],
            "a new key changes the consumer"
        );
    }

    #[test]
    fn a_route_pointing_to_another_service_is_changed() {
        let old = doc(json!({"_format_version": "3.0",
            "services": [{"name": "a", "url": "http://a:80"}, {"name": "b", "url": "http://b:80"}],
            "routes": [{"name": "r", "paths": ["/"], "service": "a"}]}));
        let new = doc(json!({"_format_version": "3.0",
            "services": [{"name": "a", "url": "http://a:80"}, {"name": "b", "url": "http://b:80"}],
            "routes": [{"name": "r", "paths": ["/"], "service": "b"}]}));
        assert_eq!(diff(&old, &new).routes.changed, ["r"]);
    }
}

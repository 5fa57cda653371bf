//! Kong 3.x's on-the-fly migration of `_format_version` "1.1" and "2.1" files (Kong 3.9.x,
//! `kong/db/declarative/migrations/route_path.lua` with
//! `kong/db/migrations/migrate_path_280_300.lua`).
//!
//! Kong 2.x matched every route path as a regex and percent-decoded paths; Kong 3.x matches
//! plain paths as prefixes and wants regexes marked with `~`. So before validating an older
//! file Kong rewrites the `paths` of top-level routes and of routes nested in top-level
//! services (nowhere else):
//! - a path made only of `[a-zA-Z0-9.\-_~/%]` is a plain path: normalised as Kong normalises
//!   request paths (`kong.tools.uri.normalize(path, true)`);
//! - any other path was a regex: it becomes `~` + the path, its `%XX` triplets decoded (a
//!   reserved character stays an upper-case triplet, a regex metacharacter comes back escaped).

use super::fields::Sink;
use crate::router::path::{push_triplet, rewrite_triplets, RESERVED};
use serde_json::{Map, Value};

/// A copy of `root` with the route paths migrated; every path that changed is reported as a
/// warning at its place in the input.
pub(super) fn route_paths(
    root: &Map<String, Value>,
    version: &str,
    sink: &mut Sink,
) -> Map<String, Value> {
    let mut root = root.clone();
    let migrate_routes = |routes: Option<&mut Value>, path: &str, sink: &mut Sink| {
        let Some(Value::Array(routes)) = routes else {
            return;
        };
        for (i, route) in routes.iter_mut().enumerate() {
            let Some(Value::Array(paths)) = route.get_mut("paths") else {
                continue;
            };
            for (j, item) in paths.iter_mut().enumerate() {
                let Value::String(old) = item else {
                    continue;
                };
                let new = migrate_path(old);
                if new != *old {
                    sink.warn(
                        format!("{path}[{i}].paths[{j}]"),
                        format!(
                            "{old:?} read as {new:?}: Kong 3.x migrates the paths of \
                             _format_version {version:?} files on load ({})",
                            if new.starts_with('~') {
                                "a path with characters outside [a-zA-Z0-9.-_~/%] was a \
                                 regex, now marked with \"~\""
                            } else {
                                "plain paths are normalised"
                            }
                        ),
                    );
                    *item = Value::String(new);
                }
            }
        }
    };
    migrate_routes(root.get_mut("routes"), "routes", sink);
    if let Some(Value::Array(services)) = root.get_mut("services") {
        for (i, service) in services.iter_mut().enumerate() {
            migrate_routes(
                service.get_mut("routes"),
                &format!("services[{i}].routes"),
                sink,
            );
        }
    }
    root
}

/// `migrate_path_280_300.lua`'s `migrate_path`.
pub(super) fn migrate_path(path: &str) -> String {
    let plain = path
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-~/%".contains(&b));
    if plain {
        crate::router::path::normalize(path).into_owned()
    } else {
        format!("~{}", normalize_regex(path))
    }
}

/// `normalize_regex`: every `%XX` triplet decoded, except reserved characters (kept as an
/// upper-case triplet) and regex metacharacters (escaped, so the regex still means the
/// character).
fn normalize_regex(regex: &str) -> String {
    if !regex.contains('%') {
        return regex.to_owned();
    }
    let out = rewrite_triplets(regex, |c, out| {
        if RESERVED.contains(&c) {
            push_triplet(out, c);
        } else if b".^-{}\\|".contains(&c) {
            out.extend([b'\\', c]);
        } else {
            out.push(c);
        }
    });
    // A decoded byte that is not UTF-8 on its own cannot be written in a JSON string anyway.
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_paths_are_normalised_and_others_become_regexes() {
        for (old, new) in [
            // Kong's spec/01-unit/01-db/01-schema/11-declarative_config/
            // 04-on-the-fly-migration_spec.lua: "/regex.+" and "/prefix" in a 1.1 or 2.1 file.
            ("/regex.+", "~/regex.+"),
            ("/prefix", "/prefix"),
            ("/", "/"),
            ("/users/\\d+", "~/users/\\d+"),
            ("/v1/(?<version>[a-z]+)", "~/v1/(?<version>[a-z]+)"),
            ("/api$", "~/api$"),
            ("/a b", "~/a b"),
            // Only the class's characters: normalised like a request path.
            ("/a//b/./c/../d", "/a/b/d"),
            ("/%7Euser", "/~user"),
            ("/a%2fb", "/a%2Fb"),
            ("/caf%C3%A9", "/caf\u{e9}"),
            // Triplets in a regex: reserved stay encoded, metacharacters come back escaped.
            ("/x/%2f/\\d", "~/x/%2F/\\d"),
            ("/x%2e\\d", "~/x\\.\\d"),
            ("/x%41+", "~/xA+"),
            ("/x%7c+", "~/x\\|+"),
        ] {
            assert_eq!(migrate_path(old), new, "{old}");
        }
    }
}

//! `acl`: allow or deny the authenticated consumer by its groups (`acls`).
//!
//! Kong 3.x: exactly one of `allow` / `deny`; `hide_groups_header` (false). No consumer: 401
//! "Unauthorized"; a consumer not in an allowed group, or in a denied one: 403 "You cannot
//! consume this service". Allowed: the upstream gets `X-Consumer-Groups: g1, g2`.

use super::conf::Conf;
use super::{Exchange, Exit, PluginEngine, Step};

#[derive(Debug)]
pub(super) struct Acl {
    allow: Option<Vec<String>>,
    deny: Option<Vec<String>>,
    hide_groups_header: bool,
}

impl Acl {
    pub(super) fn new(c: &Conf<'_>) -> Result<Acl, String> {
        let allow = c.strings("allow")?.filter(|a| !a.is_empty());
        let deny = c.strings("deny")?.filter(|d| !d.is_empty());
        if allow.is_some() == deny.is_some() {
            return Err("exactly one of config.allow and config.deny must be set".into());
        }
        if c.boolean("include_consumer_groups", false)? {
            return Err("config.include_consumer_groups (consumer groups) is not supported".into());
        }
        Ok(Acl {
            allow,
            deny,
            hide_groups_header: c.boolean("hide_groups_header", false)?,
        })
    }

    pub(super) fn access(&self, engine: &PluginEngine, ex: &mut Exchange) -> Step {
        let Some(consumer) = ex.identity.consumer.and_then(|i| engine.consumer(i)) else {
            return Err(Exit::error(401, "Unauthorized"));
        };
        let groups = &consumer.groups;
        let member = |list: &[String]| list.iter().any(|g| groups.contains(g));
        let blocked = match (&self.allow, &self.deny) {
            (Some(allow), _) => !member(allow),
            (None, Some(deny)) => member(deny),
            (None, None) => false,
        };
        if blocked {
            return Err(Exit::error(403, "You cannot consume this service"));
        }
        if !self.hide_groups_header && !groups.is_empty() {
            let joined = groups.join(", ");
            ex.set_header("x-consumer-groups", joined);
        }
        Ok(())
    }
}

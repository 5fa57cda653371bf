//! `ip-restriction`: allow or deny clients by IP address or CIDR block, IPv4 and IPv6.
//!
//! Kong 3.x: `allow`, `deny` (at least one), `status` (403), `message` ("Your IP address is not
//! allowed"). A client in `deny` is refused; with `allow` set, a client outside it is refused.

use super::conf::Conf;
use super::{Exchange, Exit, Step};
use std::net::IpAddr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub(super) fn parse(text: &str) -> Option<Cidr> {
        let (ip, prefix) = match text.split_once('/') {
            Some((ip, prefix)) => (ip, Some(prefix)),
            None => (text, None),
        };
        let network: IpAddr = ip.trim().parse().ok()?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.trim().parse::<u8>().ok().filter(|p| *p <= max)?,
            None => max,
        };
        Some(Cidr { network, prefix })
    }

    pub(super) fn contains(&self, ip: IpAddr) -> bool {
        // An IPv4 client seen through an IPv6 socket (`::ffff:a.b.c.d`) is that IPv4 client.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.network, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

#[derive(Debug)]
pub(super) struct IpRestriction {
    allow: Vec<Cidr>,
    deny: Vec<Cidr>,
    status: u16,
    message: String,
}

fn cidrs(c: &Conf<'_>, key: &str) -> Result<Vec<Cidr>, String> {
    c.strings(key)?
        .unwrap_or_default()
        .iter()
        .map(|text| {
            Cidr::parse(text)
                .ok_or_else(|| format!("config.{key}: {text:?} is not an IP address or CIDR block"))
        })
        .collect()
}

impl IpRestriction {
    pub(super) fn new(c: &Conf<'_>) -> Result<IpRestriction, String> {
        let allow = cidrs(c, "allow")?;
        let deny = cidrs(c, "deny")?;
        if allow.is_empty() && deny.is_empty() {
            return Err("at least one of config.allow and config.deny must be set".into());
        }
        let status = match c.number("status")? {
            None => 403,
            Some(s) if (100.0..=599.0).contains(&s) => s as u16,
            Some(s) => return Err(format!("config.status {s} is not an HTTP status")),
        };
        Ok(IpRestriction {
            allow,
            deny,
            status,
            message: c
                .string("message")?
                .unwrap_or_else(|| "Your IP address is not allowed".to_owned()),
        })
    }

    pub(super) fn access(&self, ex: &mut Exchange) -> Step {
        let Some(ip) = ex.client_ip() else {
            return Err(Exit::error(self.status, &self.message));
        };
        let denied = self.deny.iter().any(|c| c.contains(ip));
        let allowed = self.allow.is_empty() || self.allow.iter().any(|c| c.contains(ip));
        if denied || !allowed {
            return Err(Exit::error(self.status, &self.message));
        }
        Ok(())
    }
}

//! Addresses as Kong writes them: hosts, `host:port`, and a service's `url` shorthand.
//!
//! Hand-written rather than a URL crate: the core must stay small for the wasm filter, and
//! Kong's accepted forms are few.

use super::entities::Protocol;

pub(super) fn protocol_named(name: &str) -> Result<Protocol, String> {
    Protocol::from_name(name).ok_or_else(|| {
        let all: Vec<&str> = Protocol::ALL.iter().map(|p| p.as_str()).collect();
        format!(
            "unknown protocol {name:?}; expected one of {}",
            all.join(", ")
        )
    })
}

/// A host as Kong's `host` type accepts it: a hostname or an IP, without port or scheme.
pub(super) fn check_host(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("must not be empty".to_owned());
    }
    let is_ipv6 = host.contains(':')
        && host
            .chars()
            .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.');
    let is_name = host
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_');
    if is_ipv6 || is_name {
        Ok(())
    } else {
        Err(format!(
            "{host:?} is not a valid hostname or IP address (no scheme, port or path here)"
        ))
    }
}

/// Splits `host`, `host:port`, `[ipv6]:port` or a bare IPv6 address.
pub(super) fn split_host_port(authority: &str) -> Result<(String, Option<u16>), String> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("{authority:?} has an unclosed '['"))?;
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':').ok_or_else(|| {
                format!("{authority:?}: expected \":port\" after the IPv6 address")
            })?),
        };
        (host, port)
    } else {
        match authority.split_once(':') {
            Some((host, port)) if !port.contains(':') => (host, Some(port)),
            _ => (authority, None),
        }
    };
    check_host(host)?;
    let port = match port {
        None => None,
        Some(text) => Some(parse_port(text).ok_or_else(|| {
            format!("port {text:?} in {authority:?} must be a number between 0 and 65535")
        })?),
    };
    Ok((host.to_owned(), port))
}

pub(super) fn parse_port(text: &str) -> Option<u16> {
    // u16's parser accepts a leading '+'; a port is digits only.
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// A service `url` split into the fields it stands for.
#[derive(Debug, PartialEq)]
pub(super) struct UrlParts {
    pub(super) protocol: Protocol,
    pub(super) host: String,
    pub(super) port: Option<u16>,
    pub(super) path: Option<String>,
}

pub(super) fn parse_url(url: &str) -> Result<UrlParts, String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("{url:?} is not a URL like \"http://host:port/path\""))?;
    let protocol = protocol_named(&scheme.to_ascii_lowercase())?;
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if rest.contains(['?', '#']) {
        return Err("query strings and fragments are not allowed in a service url".to_owned());
    }
    if authority.contains('@') {
        return Err("credentials in a service url are not supported".to_owned());
    }
    let (host, port) = split_host_port(authority)?;
    Ok(UrlParts {
        protocol,
        host,
        port,
        path: Some(path.to_owned()).filter(|p| !p.is_empty()),
    })
}

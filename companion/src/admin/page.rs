//! The status page, rendered on the server: it works without JavaScript.

use super::AdminPages;
use crate::admin::inspector_built;
use fallback_core::digest::Sha256Digest;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

/// Text made safe for HTML content and attribute values.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn time(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(at).to_string()
}

/// `3m 12s`: whole seconds, the largest two units.
fn age(elapsed: Duration) -> String {
    let text = humantime::format_duration(Duration::from_secs(elapsed.as_secs())).to_string();
    text.split(' ').take(2).collect::<Vec<_>>().join(" ")
}

fn row(out: &mut String, name: &str, value: &str) {
    let _ = write!(out, "<tr><th>{}</th><td>{value}</td></tr>", esc(name));
}

/// The whole status page.
pub async fn status(pages: &AdminPages, storage_ready: Option<bool>) -> String {
    let mut out = String::new();
    out.push_str(concat!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">",
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">",
        "<title>Fallback companion — status</title>",
        "<link rel=\"stylesheet\" href=\"/ui/style.css\"></head><body>",
        "<header><h1>Fallback companion</h1><nav><a href=\"/ui/\" aria-current=\"page\">Status</a>",
        "<a href=\"/ui/inspector\">Inspector</a><a href=\"/metrics\">Metrics</a></nav></header><main>"
    ));
    let roles: Vec<&str> = [
        pages.export_stats.as_ref().map(|_| "export"),
        pages.signer.as_ref().map(|_| "signer"),
    ]
    .into_iter()
    .flatten()
    .collect();
    let _ = write!(
        out,
        "<p class=\"lead\">Version {} · roles: {} · storage <code>{}</code>{}</p>",
        env!("CARGO_PKG_VERSION"),
        esc(&roles.join(" + ")),
        esc(&pages.store.describe()),
        match storage_ready {
            Some(true) => " · <span class=\"ok\">storage reachable</span>",
            Some(false) => " · <span class=\"bad\">storage not reachable</span>",
            None => "",
        }
    );
    stored_config(&mut out, pages).await;
    if let Some(stats) = &pages.export_stats {
        out.push_str("<section id=\"exports\"><h2>Last exports of this process</h2>");
        let events = stats.recent.newest_first();
        if events.is_empty() {
            out.push_str("<p class=\"muted\">None yet: the export role writes when the control plane sends a new valid document.</p>");
        } else {
            out.push_str("<table><thead><tr><th>time</th><th>revision</th><th>outcome</th><th>duration</th><th>detail</th></tr></thead><tbody>");
            for e in events {
                let _ = write!(
                    out,
                    "<tr><td>{}</td><td>{}</td><td class=\"outcome-{o}\">{o}</td><td>{} ms</td><td>{}</td></tr>",
                    time(e.at),
                    e.revision,
                    e.duration.as_millis(),
                    esc(e.detail.as_deref().unwrap_or("")),
                    o = e.outcome,
                );
            }
            out.push_str("</tbody></table>");
        }
        out.push_str("</section>");
    }
    if let Some(signer) = &pages.signer {
        out.push_str("<section id=\"signer\"><h2>Recent signer requests</h2>");
        let events = signer.recent.newest_first();
        if events.is_empty() {
            out.push_str("<p class=\"muted\">None yet: filters ask when their control plane is unreachable.</p>");
        } else {
            out.push_str("<table><thead><tr><th>time</th><th>token</th><th>remote address</th><th>status</th><th>revision</th></tr></thead><tbody>");
            for e in events {
                let _ = write!(
                    out,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"status-{}\">{}</td><td>{}</td></tr>",
                    time(e.at),
                    esc(e.token.as_deref().unwrap_or("(none accepted)")),
                    e.remote,
                    e.status / 100,
                    e.status,
                    e.revision.map(|r| r.to_string()).unwrap_or_default(),
                );
            }
            out.push_str("</tbody></table>");
        }
        out.push_str("</section>");
    }
    let _ = write!(
        out,
        "<p class=\"muted\">Rendered {}. {}</p></main></body></html>",
        time(SystemTime::now()),
        if inspector_built() {
            "The <a href=\"/ui/inspector\">inspector</a> validates the stored config, answers requests and compares configs in your browser."
        } else {
            "This binary was built without the inspector (run <code>make build</code>)."
        }
    );
    out
}

async fn stored_config(out: &mut String, pages: &AdminPages) {
    out.push_str("<section id=\"stored\"><h2>Stored config</h2>");
    let key = match &pages.key {
        Ok(k) => k,
        Err(e) => {
            let _ = write!(out, "<p class=\"bad\">{}</p></section>", esc(e));
            return;
        }
    };
    let object = format!("{}/{key}", pages.store.describe());
    let fetched = tokio::time::timeout(Duration::from_secs(10), pages.store.get(key)).await;
    let fetched = match fetched {
        Ok(Ok(Some(f))) => f,
        Ok(Ok(None)) => {
            let _ = write!(
                out,
                "<p class=\"bad\" id=\"stored-missing\">Nothing stored at <code>{}</code> yet.</p></section>",
                esc(&object)
            );
            return;
        }
        Ok(Err(e)) => {
            let _ = write!(
                out,
                "<p class=\"bad\">Cannot read <code>{}</code>: {}</p></section>",
                esc(&object),
                esc(&e.to_string())
            );
            return;
        }
        Err(_) => {
            let _ = write!(
                out,
                "<p class=\"bad\">No answer from storage within 10 s for <code>{}</code>.</p></section>",
                esc(&object)
            );
            return;
        }
    };
    out.push_str("<table class=\"facts\"><tbody>");
    row(out, "object", &format!("<code>{}</code>", esc(&object)));
    row(out, "size", &format!("{} bytes", fetched.body.len()));
    match &fetched.stored.metadata {
        None => row(
            out,
            "metadata",
            "<span class=\"bad\">none: another tool wrote this object; filters cannot verify it</span>",
        ),
        Some(meta) => {
            row(
                out,
                "revision",
                &format!("<span id=\"stored-revision\">{}</span>", meta.revision),
            );
            let matches = Sha256Digest::of(&fetched.body) == meta.sha256;
            row(
                out,
                "sha256",
                &format!(
                    "<code>{}</code> {}",
                    meta.sha256.to_hex(),
                    if matches {
                        "<span class=\"ok\">matches the body</span>"
                    } else {
                        "<span class=\"bad\">does NOT match the body</span>"
                    }
                ),
            );
            let exported = humantime::parse_rfc3339_weak(&meta.exported_at).ok();
            let ago = exported
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .map(|d| format!(" ({} ago)", age(d)))
                .unwrap_or_default();
            row(out, "exported at", &format!("{}{ago}", esc(&meta.exported_at)));
            row(out, "node id", &esc(&meta.node_id));
            row(out, "signature", &signature_text(meta));
        }
    }
    out.push_str("</tbody></table></section>");
}

/// The status page's words for an export's signature: by which key id, when recorded.
fn signature_text(meta: &fallback_core::export::ExportMetadata) -> String {
    match (&meta.signature, &meta.key_id) {
        (Some(_), Some(key_id)) => format!(
            "<span class=\"ok\">signed</span> (Ed25519, key id <code>{}</code>)",
            esc(key_id)
        ),
        (Some(_), None) => {
            "<span class=\"ok\">signed</span> (Ed25519; no key id: exported by an older release)"
                .to_owned()
        }
        (None, _) => "not signed".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_row_names_the_key_id() {
        let mut meta = fallback_core::export::ExportMetadata {
            sha256: fallback_core::digest::Sha256Digest::of(b"doc"),
            revision: 1,
            node_id: "n".into(),
            exported_at: "2026-01-01T00:00:00.000Z".into(),
            signature: None,
            key_id: None,
        };
        assert_eq!(signature_text(&meta), "not signed");
        meta.signature = Some("c2ln".into());
        assert!(signature_text(&meta).contains("no key id"));
        meta.key_id = Some("0123456789abcdef".into());
        assert!(signature_text(&meta).contains("key id <code>0123456789abcdef</code>"));
    }

    #[test]
    fn text_is_escaped_for_html() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        assert_eq!(age(Duration::from_secs(3 * 3600 + 125)), "3h 2m");
    }
}

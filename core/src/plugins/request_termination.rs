//! `request-termination`: answer every request with a fixed response.
//!
//! Kong 3.x: `status_code` (503), `message`, `body` + `content_type`, `trigger` (terminate only
//! when a header or query argument of that name is present). Without `body`, the answer is
//! `{"message": message}`, the message defaulting to Kong's text for the status. `echo` is not
//! supported (it fails closed).

use super::conf::Conf;
use super::{default_message, Exchange, Exit, Step, JSON_CONTENT_TYPE};

#[derive(Debug)]
pub(super) struct RequestTermination {
    status: u16,
    message: Option<String>,
    body: Option<(String, String)>,
    trigger: Option<String>,
}

impl RequestTermination {
    pub(super) fn new(
        c: &Conf<'_>,
        _notes: &mut Vec<String>,
    ) -> Result<RequestTermination, String> {
        let status = match c.number("status_code")? {
            None => 503,
            Some(s) if (100.0..=599.0).contains(&s) => s as u16,
            Some(s) => return Err(format!("config.status_code {s} is not an HTTP status")),
        };
        if c.boolean("echo", false)? {
            return Err("config.echo is not supported".into());
        }
        let message = c.string("message")?;
        let body = c.string("body")?;
        if message.is_some() && body.is_some() {
            return Err("config.message and config.body cannot both be set".into());
        }
        let content_type = c
            .string("content_type")?
            .unwrap_or_else(|| JSON_CONTENT_TYPE.to_owned());
        Ok(RequestTermination {
            status,
            message,
            body: body.map(|b| (b, content_type)),
            trigger: c.string("trigger")?,
        })
    }

    pub(super) fn access(&self, ex: &mut Exchange) -> Step {
        if let Some(trigger) = &self.trigger {
            if ex.header(trigger).is_none() && ex.query.values(trigger).is_empty() {
                return Ok(());
            }
        }
        if let Some((body, content_type)) = &self.body {
            return Err(Exit {
                status: self.status,
                headers: vec![("Content-Type".to_owned(), content_type.clone())],
                body: Some(body.clone()),
            });
        }
        let message = self
            .message
            .clone()
            .unwrap_or_else(|| default_message(self.status));
        Err(Exit::error(self.status, &message))
    }
}

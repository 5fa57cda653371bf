//! What the demo binaries (`echo-upstream`, `mock-cp`) share: reading flags in both forms
//! (`--flag value` and `--flag=value`) and the shape of `main` (help, usage errors, the async
//! runtime), so that the two keep one command-line convention.

use std::future::Future;
use std::process::ExitCode;

/// One command-line argument: the flag, and its value when given as `--flag=value`.
pub struct Flag {
    /// The flag as typed, without any `=value`.
    pub name: String,
    inline_value: Option<String>,
}

impl Flag {
    /// Splits `arg`; only a `--long` flag may carry an inline `=value`.
    pub fn parse(arg: String) -> Flag {
        match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => Flag {
                name: n.to_string(),
                inline_value: Some(v.to_string()),
            },
            _ => Flag {
                name: arg,
                inline_value: None,
            },
        }
    }

    /// Whether the value was given inline (a switch with one is a bad command line).
    pub fn has_inline_value(&self) -> bool {
        self.inline_value.is_some()
    }

    /// The flag's value: the inline one, or else the next argument. `what` names the expected
    /// value in the error.
    pub fn value(
        &self,
        args: &mut impl Iterator<Item = String>,
        what: &str,
    ) -> Result<String, String> {
        self.inline_value
            .clone()
            .or_else(|| args.next())
            .ok_or_else(|| format!("{} needs a value ({what})", self.name))
    }
}

/// Reads a `--port` value: a port number from 1 to 65535.
pub fn port(text: &str) -> Result<u16, String> {
    text.parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("--port {text:?} is not a port number (1-65535)"))
}

/// A demo binary's `main`: `Ok(None)` (help) prints `usage` and succeeds, `Err` prints the
/// message and `usage` and exits 2, and options are handed to `serve` on a two-worker runtime.
/// `bin` prefixes the binary's error messages.
pub fn run<O, F>(
    bin: &str,
    usage: &str,
    parsed: Result<Option<O>, String>,
    serve: impl FnOnce(O) -> F,
) -> ExitCode
where
    F: Future<Output = ExitCode>,
{
    let options = match parsed {
        Ok(Some(options)) => options,
        Ok(None) => {
            println!("{usage}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("{bin}: {message}\n\n{usage}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{bin}: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(serve(options))
}

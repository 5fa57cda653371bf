//! `echo-upstream`: the end-to-end tests' echo upstream ([`wasm_tests::EchoServer`]) as a
//! standalone process, for the demo (`scripts/demo.sh`).
//!
//! ```text
//! echo-upstream --name NAME --port PORT
//! ```
//!
//! Answers every request on `http://127.0.0.1:PORT` with `200` and the JSON
//! `{"upstream": NAME, "method": ..., "path": ..., "headers": {...}}`, so that one can see which
//! upstream a proxy chose and with which path and headers. Listens on 127.0.0.1 only.
//! SIGINT/SIGTERM end it (default signal action: there is nothing to flush or clean up).

use std::io::Write;
use std::process::ExitCode;

use wasm_tests::demo_cli::{self, Flag};
use wasm_tests::EchoServer;

const USAGE: &str = "\
usage: echo-upstream --name NAME --port PORT

Answers every request on http://127.0.0.1:PORT with 200 and the JSON
{\"upstream\": NAME, \"method\": ..., \"path\": ..., \"headers\": {...}}.

options:
  --name NAME    the name it answers with (required)
  --port PORT    the loopback port to listen on (required)
  -h, --help     show this help";

/// Parsed command line.
#[derive(Debug, PartialEq, Eq)]
struct Options {
    name: String,
    port: u16,
}

/// `Ok(None)` for `--help`; `Err(message)` for a bad command line.
fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Option<Options>, String> {
    let mut name = None;
    let mut port = None;
    while let Some(arg) = args.next() {
        let flag = Flag::parse(arg);
        match flag.name.as_str() {
            "-h" | "--help" => return Ok(None),
            "--name" => {
                let text = flag.value(&mut args, "a name")?;
                if text.is_empty() {
                    return Err("--name must not be empty".into());
                }
                name = Some(text);
            }
            "--port" => {
                port = Some(demo_cli::port(&flag.value(&mut args, "a port number")?)?);
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Some(Options {
        name: name.ok_or("--name NAME is required")?,
        port: port.ok_or("--port PORT is required")?,
    }))
}

async fn serve(options: Options) -> ExitCode {
    let server = EchoServer::start_on(&options.name, options.port).await;
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "echo-upstream: {:?} answering on http://127.0.0.1:{}/",
            server.name(),
            server.port()
        );
        let _ = out.flush();
    }
    std::future::pending::<()>().await;
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    demo_cli::run(
        "echo-upstream",
        USAGE,
        parse_args(std::env::args().skip(1)),
        serve,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Option<Options>, String> {
        parse_args(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn parses_both_forms() {
        let want = Options {
            name: "orders".into(),
            port: 8081,
        };
        assert_eq!(
            parse(&["--name", "orders", "--port", "8081"]),
            Ok(Some(want))
        );
        let want = Options {
            name: "orders".into(),
            port: 8081,
        };
        assert_eq!(parse(&["--port=8081", "--name=orders"]), Ok(Some(want)));
        assert_eq!(parse(&["-h"]), Ok(None));
    }

    #[test]
    fn rejects_bad_command_lines() {
        assert!(parse(&["--name", "x"]).unwrap_err().contains("--port"));
        assert!(parse(&["--port", "1"]).unwrap_err().contains("--name"));
        assert!(parse(&["--name", "x", "--port", "0"]).is_err());
        assert!(parse(&["--name", "x", "--port", "http"]).is_err());
        assert!(parse(&["--name"]).unwrap_err().contains("needs a value"));
        assert!(parse(&["--bogus"]).unwrap_err().contains("unknown"));
    }
}

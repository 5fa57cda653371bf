//! The accept loop of the test servers that must really go away when stopped (the mock CP,
//! the fault proxy): every connection lives in the loop's task, so aborting that task drops
//! the listener and every open connection with it.

use std::convert::Infallible;
use std::future::Future;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

/// Serves HTTP/1.1 on `listener`, each request answered by `handler`, until the returned task is
/// aborted. `name` labels accept errors on stderr.
pub fn spawn_server<H, F>(name: &'static str, listener: TcpListener, handler: H) -> JoinHandle<()>
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send + 'static,
{
    tokio::spawn(async move {
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let stream = match accepted {
                        Ok((stream, _)) => stream,
                        Err(e) => {
                            eprintln!("[harness] {name} accept: {e}");
                            continue;
                        }
                    };
                    let handler = handler.clone();
                    connections.spawn(async move {
                        let _ = http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service_fn(handler))
                            .await;
                    });
                }
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
    })
}

/// Binds `127.0.0.1:port`, retrying for a few seconds while a stopped instance releases it.
pub async fn bind_loopback(name: &str, port: u16) -> TcpListener {
    let mut attempt = 0;
    loop {
        match TcpListener::bind(("127.0.0.1", port)).await {
            Ok(listener) => return listener,
            Err(_) if attempt < 50 => {
                attempt += 1;
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{name}: cannot listen on 127.0.0.1:{port}: {e}"),
        }
    }
}

/// Like [`spawn_server`] for servers that are not plain HTTP (the fake Kong control plane's
/// TLS WebSocket): each accepted connection goes to `serve`.
pub fn spawn_stream_server<S, F>(listener: TcpListener, serve: S) -> JoinHandle<()>
where
    S: Fn(tokio::net::TcpStream) -> F + Send + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    if let Ok((stream, _)) = accepted {
                        connections.spawn(serve(stream));
                    }
                }
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
    })
}

//! Free loopback ports, never the same one twice within the test process.
//!
//! Tests run in parallel threads and each starts its own servers; a port is found by binding
//! `127.0.0.1:0`, recorded in a process-wide set, and released so the server can bind it.
//! The set makes sure two tests of the same process never get the same port; another process
//! could still grab it in the short window before the server binds, which is why
//! [`crate::SeaweedFs::start`] retries with fresh ports when a bind fails.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::sync::{Mutex, OnceLock};

fn handed_out() -> &'static Mutex<HashSet<u16>> {
    static SET: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    SET.get_or_init(|| Mutex::new(HashSet::new()))
}

fn bind(port: u16) -> std::io::Result<TcpListener> {
    TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
}

/// A TCP port on 127.0.0.1 that was free a moment ago and that no other caller in this process
/// has received (or will receive).
pub fn free_port() -> u16 {
    for _ in 0..1000 {
        let listener = bind(0).expect("bind 127.0.0.1:0 to find a free port");
        let port = listener
            .local_addr()
            .expect("local_addr of a freshly bound listener")
            .port();
        drop(listener);
        let mut set = handed_out().lock().expect("port set lock poisoned");
        if set.insert(port) {
            return port;
        }
    }
    panic!("no fresh free loopback port found after 1000 attempts");
}

/// A free port `p` (as [`free_port`]) such that `p + offset` is free too; both are reserved.
///
/// SeaweedFS derives each gRPC port as HTTP port + 10000 when not told otherwise, hence
/// `free_port_with_offset(10000)`. (The harness passes every gRPC port explicitly anyway.)
pub fn free_port_with_offset(offset: u16) -> u16 {
    for _ in 0..1000 {
        let listener = bind(0).expect("bind 127.0.0.1:0 to find a free port");
        let port = listener
            .local_addr()
            .expect("local_addr of a freshly bound listener")
            .port();
        let Some(other) = port.checked_add(offset) else {
            continue;
        };
        let Ok(other_listener) = bind(other) else {
            continue;
        };
        drop(other_listener);
        drop(listener);
        let mut set = handed_out().lock().expect("port set lock poisoned");
        if !set.contains(&port) && !set.contains(&other) {
            set.insert(port);
            set.insert(other);
            return port;
        }
    }
    panic!("no free loopback port p with p+{offset} also free after 1000 attempts");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_unique_across_threads() {
        let handles: Vec<_> = (0..8)
            .map(|_| std::thread::spawn(|| (0..50).map(|_| free_port()).collect::<Vec<_>>()))
            .collect();
        let mut all = HashSet::new();
        for h in handles {
            for p in h.join().expect("port thread panicked") {
                assert!(all.insert(p), "port {p} handed out twice");
            }
        }
    }

    #[test]
    fn offset_pair_is_free() {
        let p = free_port_with_offset(10000);
        assert!(bind(p).is_ok());
        assert!(bind(p + 10000).is_ok());
    }
}

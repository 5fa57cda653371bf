//! What the two `footprint` examples (`make footprint`) share: their arguments, and callgrind's
//! client requests (no-ops outside valgrind).

/// `footprint ROUTES PLUGINS`: the number of routes, and whether each has `key-auth` +
/// `rate-limiting` (1) or no plugin (0); exits with the usage otherwise.
pub fn args() -> (usize, bool) {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match (
        args.first().and_then(|a| a.parse::<usize>().ok()),
        args.get(1).map(|a| a == "1"),
    ) {
        (Some(routes), Some(plugins)) => (routes, plugins),
        _ => {
            eprintln!("usage: footprint ROUTES PLUGINS(0|1)");
            std::process::exit(2);
        }
    }
}

/// `VG_USERREQ__TOGGLE_COLLECT` (`callgrind.h`: `VG_USERREQ_TOOL_BASE('C', 'T')` + 2): events
/// stop (or start again) being counted; the simulated caches still see every access.
pub const TOGGLE_COLLECT: usize = 0x4354_0002;
/// `VG_USERREQ__START_INSTRUMENTATION` (+ 4): from here on, with `--instr-atstart=no`.
pub const START_INSTRUMENTATION: usize = 0x4354_0004;
/// `VG_USERREQ__STOP_INSTRUMENTATION` (+ 5).
pub const STOP_INSTRUMENTATION: usize = 0x4354_0005;

/// A valgrind client request (`valgrind.h`'s amd64 sequence: rotations of `rdi` by 128 bits in
/// all, which change nothing, then `xchg rbx, rbx`); a no-op outside valgrind.
#[cfg(target_arch = "x86_64")]
pub fn client_request(request: usize) {
    let args: [usize; 6] = [request, 0, 0, 0, 0, 0];
    // SAFETY: the sequence only rotates rdi back to its value and exchanges rbx with itself;
    // valgrind reads `args` through rax and writes its answer in rdx.
    unsafe {
        std::arch::asm!(
            "rol rdi, 3",
            "rol rdi, 13",
            "rol rdi, 61",
            "rol rdi, 51",
            "xchg rbx, rbx",
            in("rax") args.as_ptr(),
            inout("rdx") 0usize => _,
            inout("rdi") 0usize => _,
        );
    }
}

#[cfg(not(target_arch = "x86_64"))]
pub fn client_request(_: usize) {
    eprintln!("footprint: valgrind client requests are only written for x86_64");
    std::process::exit(2);
}

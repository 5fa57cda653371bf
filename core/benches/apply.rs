//! What applying a new config costs a worker, natively: the whole work at once, and the same
//! work in slices (`fallback_core::generation`), with the longest slice, which is how long a
//! request arriving at the wrong moment waits.
//!
//! `cargo bench -p fallback-core --bench apply [-- ROUTES]` (default 10,000 routes, each with
//! its own service and `key-auth` + `rate-limiting`, as bench-proxy's F10k).

mod common;

use fallback_core::generation::{self, Compiled, SLICE_NS};
use fallback_core::pace::{run_to_end, Pace, Sliced};
use fallback_core::plugins::PluginPolicy;
use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Slices of `work`: (total time, count, longest).
struct Slices {
    total: Duration,
    count: u32,
    longest: Duration,
}

/// Runs the work `make` builds (given a `due` closure) in slices of [`SLICE_NS`].
fn sliced<T: 'static>(make: impl FnOnce(Rc<dyn Fn() -> bool>) -> Sliced<T>) -> (T, Slices) {
    let deadline = Rc::new(Cell::new(Instant::now()));
    let d = deadline.clone();
    let mut work = make(Rc::new(move || Instant::now() >= d.get()));
    let (mut count, mut longest, mut total) = (0, Duration::ZERO, Duration::ZERO);
    loop {
        let start = Instant::now();
        deadline.set(start + Duration::from_nanos(SLICE_NS));
        let done = work.resume();
        let took = start.elapsed();
        count += 1;
        total += took;
        longest = longest.max(took);
        if let Some(value) = done {
            return (
                value,
                Slices {
                    total,
                    count,
                    longest,
                },
            );
        }
    }
}

fn main() {
    let routes: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(10_000);
    let bytes = Rc::new(serde_json::to_vec(&common::document(routes, true)).expect("serializes"));
    println!(
        "apply: {routes} routes with key-auth + rate-limiting, {} bytes; slices of {} ms",
        bytes.len(),
        SLICE_NS / 1_000_000
    );
    println!("| round | compile at once | compile in slices | slices | longest | free at once | free in slices | slices | longest |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for round in 1..=3 {
        let start = Instant::now();
        let once = run_to_end(generation::compile(
            &bytes,
            &PluginPolicy::default(),
            &Pace::unbounded(),
        ))
        .expect("loads");
        let compile_once = start.elapsed();
        let start = Instant::now();
        drop(once);
        let free_once = start.elapsed();

        let b = bytes.clone();
        let (compiled, compile) = sliced(move |due| {
            Sliced::new(async move {
                let pace = Pace::new(&*due);
                generation::compile(&b, &PluginPolicy::default(), &pace).await
            })
        });
        let Compiled {
            router, plugins, ..
        } = compiled.expect("loads");
        let ((), free) = sliced(move |due| {
            Sliced::new(async move {
                let pace = Pace::new(&*due);
                generation::dismantle(router, plugins, &pace).await
            })
        });
        let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1e3);
        println!(
            "| {round} | {} | {} | {} | {} | {} | {} | {} | {} |",
            ms(compile_once),
            ms(compile.total),
            compile.count,
            ms(compile.longest),
            ms(free_once),
            ms(free.total),
            free.count,
            ms(free.longest),
        );
    }
    println!("The longest slice is the longest piece of work between two of the pace's questions.");
}

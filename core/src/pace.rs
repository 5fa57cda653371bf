//! Long work done in slices: the proxy's worker runs one thread, and while it compiles a new
//! config it serves nothing. Compiling a 10,000-route config takes a few hundred milliseconds in
//! a wasm VM; done in one go, every request in flight waits for all of it.
//!
//! The work that grows with the config (loading the document, compiling the router and the
//! plugins, and freeing the previous generation) is written as `async fn`s that call
//! [`Pace::step`] once per unit of work (an entity, a route, a map entry). Rust turns them into
//! resumable state machines, so the work can stop at any step and go on later, with no threads
//! and no hand-written states:
//!
//! - [`run_to_end`] runs such work at once (the companion, the CLI, tests);
//! - [`Sliced`] runs it a slice at a time: the filter polls it from its tick (and between
//!   requests), with a [`Pace`] whose `due` closure says when the slice's time is up.
//!
//! No I/O here: the clock is the caller's closure.

use std::cell::Cell;
use std::cmp::Ordering;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// How often [`Pace::step`] asks its `due` closure (a host call in the filter): every this many
/// steps. A step is at most a few microseconds of work, so a slice overruns its time by less
/// than this many steps.
pub const CHECK_EVERY: u32 = 16;

/// When the work in progress yields: [`Pace::unbounded`] never, [`Pace::new`] when its `due`
/// closure says the slice is used up.
pub struct Pace<'c> {
    due: Option<&'c dyn Fn() -> bool>,
    steps: Cell<u32>,
    yields: Cell<u64>,
}

impl Pace<'static> {
    /// Never yields: the work runs to its end in one poll.
    pub fn unbounded() -> Self {
        Pace {
            due: None,
            steps: Cell::new(0),
            yields: Cell::new(0),
        }
    }
}

impl<'c> Pace<'c> {
    /// Yields when `due()` returns true; `due` is asked every [`CHECK_EVERY`] steps.
    pub fn new(due: &'c dyn Fn() -> bool) -> Self {
        Pace {
            due: Some(due),
            steps: Cell::new(0),
            yields: Cell::new(0),
        }
    }

    /// One unit of work done: yields to the caller when the slice is used up.
    pub async fn step(&self) {
        let Some(due) = self.due else {
            return;
        };
        let steps = self.steps.get().wrapping_add(1);
        self.steps.set(steps);
        if steps.is_multiple_of(CHECK_EVERY) && due() {
            self.yields.set(self.yields.get() + 1);
            YieldOnce(false).await;
        }
    }

    /// Yields now if the slice is used up, whatever the step count: after a piece of work
    /// that has no steps of its own (parsing the document, sorting).
    pub async fn checkpoint(&self) {
        if let Some(due) = self.due {
            if due() {
                self.yields.set(self.yields.get() + 1);
                YieldOnce(false).await;
            }
        }
    }

    /// How many times the work yielded so far.
    pub fn yields(&self) -> u64 {
        self.yields.get()
    }
}

/// Pending once, then ready: gives control back to whoever polls.
struct YieldOnce(bool);

impl Future for YieldOnce {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            Poll::Ready(())
        } else {
            self.0 = true;
            Poll::Pending
        }
    }
}

/// Runs `work` to its end. With [`Pace::unbounded`] it never yields, so this is one poll; with
/// another pace it polls until done.
pub fn run_to_end<T>(work: impl Future<Output = T>) -> T {
    let mut work = std::pin::pin!(work);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(value) = work.as_mut().poll(&mut cx) {
            return value;
        }
    }
}

/// Work in progress, run a slice at a time by [`Sliced::resume`].
pub struct Sliced<T> {
    work: Pin<Box<dyn Future<Output = T>>>,
}

impl<T> Sliced<T> {
    /// Work to run in slices; nothing runs until the first [`Sliced::resume`].
    pub fn new(work: impl Future<Output = T> + 'static) -> Self {
        Sliced {
            work: Box::pin(work),
        }
    }

    /// Runs the work until it yields (`None`) or ends (`Some`). Not to be called again once it
    /// returned `Some`.
    pub fn resume(&mut self) -> Option<T> {
        let mut cx = Context::from_waker(Waker::noop());
        match self.work.as_mut().poll(&mut cx) {
            Poll::Ready(value) => Some(value),
            Poll::Pending => None,
        }
    }
}

/// Drops the items of `items` (a vector, a map) one step each, then the collection: freeing
/// a generation of 10,000 routes takes longer than a slice.
pub async fn drop_all<I: IntoIterator>(items: I, pace: &Pace<'_>) {
    for item in items {
        drop(item);
        pace.step().await;
    }
}

/// Sorts `items` by `cmp`, stably, yielding to `pace`: runs of 32 sorted at once, then merged
/// a step per item (10,000 routes take longer to sort than a slice).
pub async fn sort_by<T>(
    items: Vec<T>,
    cmp: impl Fn(&T, &T) -> Ordering,
    pace: &Pace<'_>,
) -> Vec<T> {
    const RUN: usize = 32;
    let mut runs: Vec<Vec<T>> = Vec::with_capacity(items.len() / RUN + 1);
    let mut rest = items.into_iter();
    loop {
        let mut run: Vec<T> = rest.by_ref().take(RUN).collect();
        if run.is_empty() {
            break;
        }
        run.sort_by(&cmp);
        runs.push(run);
        pace.step().await;
    }
    while runs.len() > 1 {
        let mut merged = Vec::with_capacity(runs.len() / 2 + 1);
        let mut pairs = runs.into_iter();
        while let Some(first) = pairs.next() {
            match pairs.next() {
                Some(second) => merged.push(merge(first, second, &cmp, pace).await),
                None => merged.push(first),
            }
        }
        runs = merged;
    }
    runs.pop().unwrap_or_default()
}

/// `first` and `second`, each sorted, as one sorted vector; on a tie `first`'s item comes
/// first.
async fn merge<T>(
    first: Vec<T>,
    second: Vec<T>,
    cmp: &impl Fn(&T, &T) -> Ordering,
    pace: &Pace<'_>,
) -> Vec<T> {
    let mut out = Vec::with_capacity(first.len() + second.len());
    let mut first = first.into_iter().peekable();
    let mut second = second.into_iter().peekable();
    loop {
        let from_second = match (first.peek(), second.peek()) {
            (Some(a), Some(b)) => cmp(b, a) == Ordering::Less,
            (None, Some(_)) => true,
            (Some(_), None) => false,
            (None, None) => return out,
        };
        let next = if from_second {
            second.next()
        } else {
            first.next()
        };
        out.extend(next);
        pace.step().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;

    async fn count_to(n: u32, pace: &Pace<'_>) -> u32 {
        let mut done = 0;
        for _ in 0..n {
            done += 1;
            pace.step().await;
        }
        done
    }

    #[test]
    fn unbounded_work_ends_in_one_poll() {
        let mut work = Sliced::new(async { count_to(10_000, &Pace::unbounded()).await });
        assert_eq!(work.resume(), Some(10_000));
    }

    #[test]
    fn sliced_work_stops_when_due_and_goes_on_where_it_stopped() {
        // The slice is up after every second question: 2 * CHECK_EVERY steps per slice.
        let asked = Rc::new(Cell::new(0u32));
        let counter = asked.clone();
        let mut work = Sliced::new(async move {
            let due = move || {
                counter.set(counter.get() + 1);
                counter.get().is_multiple_of(2)
            };
            let pace = Pace::new(&due);
            let done = count_to(10 * CHECK_EVERY, &pace).await;
            (done, pace.yields())
        });
        let mut slices = 1;
        let (done, yields) = loop {
            match work.resume() {
                Some(result) => break result,
                None => slices += 1,
            }
        };
        assert_eq!(
            done,
            10 * CHECK_EVERY,
            "no step lost or repeated across slices"
        );
        assert_eq!(yields, 5);
        assert_eq!(slices, 6);
        assert_eq!(asked.get(), 10, "asked every CHECK_EVERY steps");
    }

    #[test]
    fn run_to_end_polls_sliced_work_to_its_end() {
        let due = || true;
        let pace = Pace::new(&due);
        assert_eq!(run_to_end(count_to(100, &pace)), 100);
        assert_eq!(pace.yields(), u64::from(100 / CHECK_EVERY));
    }

    #[test]
    fn sort_by_sorts_stably_in_slices() {
        // Pairs (key, original position): equal keys must keep their order.
        let mut seed = 12345u64;
        let items: Vec<(u8, usize)> = (0..1000)
            .map(|i| {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                ((seed >> 59) as u8, i)
            })
            .collect();
        let mut expected = items.clone();
        expected.sort_by_key(|&(key, _)| key);
        for n in [0, 1, 31, 32, 33, 1000] {
            let due = || true;
            let pace = Pace::new(&due);
            let sorted = run_to_end(sort_by(items[..n].to_vec(), |a, b| a.0.cmp(&b.0), &pace));
            let mut want = items[..n].to_vec();
            want.sort_by_key(|&(key, _)| key);
            assert_eq!(sorted, want, "{n} items");
        }
        let due = || true;
        let pace = Pace::new(&due);
        let sorted = run_to_end(sort_by(items, |a, b| a.0.cmp(&b.0), &pace));
        assert_eq!(sorted, expected);
        assert!(
            pace.yields() > 1000 / u64::from(CHECK_EVERY),
            "merged a step per item"
        );
    }

    #[test]
    fn drop_all_drops_every_element() {
        let tracked = Rc::new(());
        let items: Vec<Rc<()>> = (0..100).map(|_| tracked.clone()).collect();
        let due = || true;
        let pace = Pace::new(&due);
        run_to_end(drop_all(items, &pace));
        assert_eq!(Rc::strong_count(&tracked), 1);
        assert_eq!(pace.yields(), u64::from(100 / CHECK_EVERY));
    }
}

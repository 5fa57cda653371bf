//! The upstream request headers while the plugins run: the client's headers, borrowed as they
//! are, with the plugins' changes over them per header name.
//!
//! The plugins of a request change a few headers (`key-auth` sets three) and read a few more,
//! so this neither copies the client's headers nor compares them with the result: the changes
//! ([`RequestHeaders::changes`]) come from the names the plugins changed alone. It runs on
//! every request, in the filter's wasm, where each copied header and each comparison costs
//! instructions and cache lines the proxy pays for. In the crate's tests every change is also
//! made to a full copy, whose difference with the client's headers must be the same changes.

#[cfg(test)]
use super::diff_headers;
use super::{lowercase, HeaderOp};
use std::borrow::Cow;

/// The request headers as the plugins that ran so far leave them.
#[derive(Debug, Default)]
pub(super) struct RequestHeaders<'a> {
    /// The client's headers (names in any case; pseudo-headers are skipped).
    client: &'a [(&'a str, &'a str)],
    /// Every header a plugin changed, one entry per value it has now, in order; a header
    /// removed keeps one entry without a value. In one list: one allocation per request.
    changed: Vec<Entry<'a>>,
    /// Orders the headers the client did not send, as they were (last) added.
    added: usize,
    /// The same changes made to a copy, the way they were made before this type: their
    /// difference with the client's headers must be [`RequestHeaders::changes`].
    #[cfg(test)]
    copy: Vec<(Cow<'a, str>, Cow<'a, str>)>,
}

#[derive(Debug)]
struct Entry<'a> {
    /// Lowercase.
    name: Cow<'a, str>,
    /// Where the client first sent the header, or `client.len()` + when it was added: the
    /// order of [`RequestHeaders::changes`].
    order: usize,
    value: Option<Cow<'a, str>>,
}

impl<'a> RequestHeaders<'a> {
    /// The client's headers, unchanged.
    pub(super) fn new(client: &'a [(&'a str, &'a str)]) -> Self {
        RequestHeaders {
            client,
            changed: Vec::new(),
            added: 0,
            #[cfg(test)]
            copy: client
                .iter()
                .filter(|(n, _)| !n.starts_with(':'))
                .map(|&(n, v)| (lowercase(Cow::Borrowed(n)), Cow::Borrowed(v)))
                .collect(),
        }
    }

    /// The client's values of `name` (pseudo-headers excluded), in order.
    fn client_values<'n>(
        &self,
        name: &'n str,
    ) -> impl Iterator<Item = &'a str> + Clone + use<'a, 'n> {
        let client: &'a [(&'a str, &'a str)] = self.client;
        client
            .iter()
            .filter(move |(n, _)| !n.starts_with(':') && n.eq_ignore_ascii_case(name))
            .map(|&(_, v)| v)
    }

    /// The first entry of `name`, if a plugin changed it.
    fn first(&self, name: &str) -> Option<usize> {
        self.changed
            .iter()
            .position(|e| e.name.eq_ignore_ascii_case(name))
    }

    /// The values of the changed header whose first entry is `first`.
    fn changed_values(&self, first: usize) -> impl Iterator<Item = &Cow<'a, str>> + Clone {
        let name = &self.changed[first].name;
        self.changed[first..]
            .iter()
            .filter(move |e| e.name == *name)
            .filter_map(|e| e.value.as_ref())
    }

    /// Every value of `name` now, in order (names compared case-insensitively).
    pub(super) fn values<'s, 'n>(
        &'s self,
        name: &'n str,
    ) -> impl Iterator<Item = &'s str> + use<'s, 'a, 'n> {
        let first = self.first(name);
        let from_client = first.is_none().then(|| self.client_values(name));
        let from_changes = first.map(|i| self.changed_values(i).map(|v| &**v));
        from_client
            .into_iter()
            .flatten()
            .chain(from_changes.into_iter().flatten())
    }

    /// The first value of `name` now.
    pub(super) fn get(&self, name: &str) -> Option<&str> {
        self.values(name).next()
    }

    /// A new entry for `name`, which no plugin changed yet.
    fn push(&mut self, name: Cow<'a, str>, value: Option<Cow<'a, str>>) {
        if self.changed.capacity() == 0 {
            // Authentication alone changes up to five headers.
            self.changed.reserve(8);
        }
        let order = match self
            .client
            .iter()
            .position(|(n, _)| !n.starts_with(':') && n.eq_ignore_ascii_case(&name))
        {
            Some(at) => at,
            None => self.next_added(),
        };
        self.changed.push(Entry {
            name: lowercase(name),
            order,
            value,
        });
    }

    fn next_added(&mut self) -> usize {
        self.added += 1;
        self.client.len() + self.added
    }

    /// Before a value is given to the changed header at `first`: one the client did not send
    /// and that has no value now goes last, as an added header does.
    fn reinsert(&mut self, first: usize) {
        if self.changed[first].order >= self.client.len()
            && self.changed_values(first).next().is_none()
        {
            self.changed[first].order = self.next_added();
        }
    }

    /// Replaces every value of `name` with `value`.
    pub(super) fn set(&mut self, name: Cow<'a, str>, value: Cow<'a, str>) {
        #[cfg(test)]
        super::set_header(&mut self.copy, lowercase(name.clone()), value.clone());
        let Some(first) = self.first(&name) else {
            return self.push(name, Some(value));
        };
        self.reinsert(first);
        self.changed[first].value = Some(value);
        self.drop_after(first);
    }

    /// Adds one more value to `name` (after its others).
    pub(super) fn append(&mut self, name: Cow<'a, str>, value: Cow<'a, str>) {
        #[cfg(test)]
        self.copy.push((lowercase(name.clone()), value.clone()));
        let first = match self.first(&name) {
            Some(first) => first,
            None => {
                // The client's values first.
                let client: Vec<&'a str> = self.client_values(&name).collect();
                if client.is_empty() {
                    return self.push(name, Some(value));
                }
                let first = self.changed.len();
                for v in client {
                    self.push(name.clone(), Some(Cow::Borrowed(v)));
                }
                first
            }
        };
        self.reinsert(first);
        let order = self.changed[first].order;
        let name = self.changed[first].name.clone();
        self.changed.push(Entry {
            name,
            order,
            value: Some(value),
        });
    }

    /// Removes every value of `name`.
    pub(super) fn remove(&mut self, name: &str) {
        #[cfg(test)]
        super::remove_header(&mut self.copy, name);
        match self.first(name) {
            Some(first) => {
                self.changed[first].value = None;
                self.drop_after(first);
            }
            None if self.client_values(name).next().is_some() => {
                self.push(Cow::Owned(name.to_owned()), None);
            }
            // Removing a header nobody sent or set changes nothing.
            None => {}
        }
    }

    /// Drops the entries of the header at `first` after that one.
    fn drop_after(&mut self, first: usize) {
        let name = self.changed[first].name.clone();
        let mut i = 0;
        self.changed.retain(|e| {
            let keep = i <= first || e.name != name;
            i += 1;
            keep
        });
    }

    /// What turns the client's headers into these: for each header whose values differ,
    /// remove it (if the client sent it), then add its new values. Headers in the order the
    /// client sent them, then the added ones in the order they were added.
    pub(super) fn changes(&self) -> Vec<HeaderOp<'a>> {
        let mut ops = Vec::new();
        // A few headers: picking the next one each time is cheaper than sorting a copy.
        let mut last = None;
        while let Some((first, entry)) = self
            .changed
            .iter()
            .enumerate()
            .filter(|(_, e)| last.is_none_or(|l| e.order > l))
            .min_by_key(|(_, e)| e.order)
        {
            last = Some(entry.order);
            let name = &entry.name;
            // Pseudo-headers (`:path`) are the host's: never edited.
            if name.starts_with(':') {
                continue;
            }
            let old = self.client_values(name);
            let new = self.changed_values(first);
            if old.clone().eq(new.clone().map(|v| &**v)) {
                continue;
            }
            if ops.capacity() == 0 {
                ops.reserve(self.changed.len() + 1);
            }
            if old.clone().next().is_some() {
                ops.push(HeaderOp::Remove(name.clone()));
            }
            ops.extend(new.map(|v| HeaderOp::Add(name.clone(), v.clone())));
        }
        #[cfg(test)]
        assert_eq!(
            ops,
            diff_headers(self.client, &self.copy),
            "the changes worked out from the changed names differ from a full comparison \
             (client: {:?}, after: {:?})",
            self.client,
            self.copy
        );
        ops
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What a plugin does to the headers.
    #[derive(Debug, Clone)]
    enum Op {
        Set(usize, usize),
        Append(usize, usize),
        Remove(usize),
    }

    const NAMES: [&str; 5] = ["apikey", "X-Consumer-ID", "x-new", "X-Other", ":path"];
    const VALUES: [&str; 3] = ["1", "2", "3"];

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..NAMES.len(), 0..VALUES.len()).prop_map(|(n, v)| Op::Set(n, v)),
            (0..NAMES.len(), 0..VALUES.len()).prop_map(|(n, v)| Op::Append(n, v)),
            (0..NAMES.len()).prop_map(Op::Remove),
        ]
    }

    proptest! {
        /// Any sequence of changes over any client headers (repeated names, any case,
        /// pseudo-headers) gives the same changes as comparing a full copy with the client's
        /// headers (`changes` asserts it in tests), and reads see the copy's values.
        #[test]
        fn changes_match_a_full_comparison(
            client in prop::collection::vec((0..NAMES.len(), 0..VALUES.len()), 0..6),
            ops in prop::collection::vec(op(), 0..8),
        ) {
            let upper: Vec<String> = NAMES.iter().map(|n| n.to_ascii_uppercase()).collect();
            let client: Vec<(&str, &str)> = client
                .iter()
                .enumerate()
                .map(|(i, &(n, v))| {
                    let name = if i % 2 == 0 { NAMES[n] } else { upper[n].as_str() };
                    (name, VALUES[v])
                })
                .collect();
            let mut headers = RequestHeaders::new(&client);
            for op in ops {
                match op {
                    Op::Set(n, v) => headers.set(NAMES[n].into(), VALUES[v].into()),
                    Op::Append(n, v) => headers.append(NAMES[n].into(), VALUES[v].into()),
                    Op::Remove(n) => headers.remove(NAMES[n]),
                }
                for name in NAMES.iter().filter(|n| !n.starts_with(':')) {
                    let copy: Vec<&str> = headers
                        .copy
                        .iter()
                        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                        .map(|(_, v)| &**v)
                        .collect();
                    let now: Vec<&str> = headers.values(&name.to_ascii_uppercase()).collect();
                    prop_assert_eq!(now, copy, "{}", name);
                }
            }
            headers.changes();
        }
    }
}

//! In-order, exactly-once delivery within a session (see [`crate::message`]).

use std::collections::BTreeMap;

/// Messages received ahead of a gap, at most this many, before the session counts as broken.
const MAX_AHEAD: usize = 4096;

/// The receiving side of one session direction.
#[derive(Debug)]
pub(crate) struct Inbox<T> {
    next: u64,
    ahead: BTreeMap<u64, T>,
}

/// The session lost messages for good (more arrived past a gap than can be held).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Broken;

impl<T> Default for Inbox<T> {
    fn default() -> Self {
        Inbox { next: 0, ahead: BTreeMap::new() }
    }
}

impl<T> Inbox<T> {
    /// Takes message `seq`; returns the messages now deliverable, in order (none for a duplicate
    /// or a message ahead of a gap).
    pub(crate) fn accept(&mut self, seq: u64, msg: T) -> Result<Vec<T>, Broken> {
        if seq < self.next {
            return Ok(Vec::new());
        }
        if seq > self.next {
            if self.ahead.len() >= MAX_AHEAD {
                return Err(Broken);
            }
            self.ahead.entry(seq).or_insert(msg);
            return Ok(Vec::new());
        }
        let mut out = vec![msg];
        self.next += 1;
        while let Some(m) = self.ahead.remove(&self.next) {
            out.push(m);
            self.next += 1;
        }
        Ok(out)
    }

    /// Whether messages wait behind a gap.
    #[cfg(test)]
    pub(crate) fn has_gap(&self) -> bool {
        !self.ahead.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivers_in_order_once() {
        let mut i = Inbox::default();
        assert_eq!(i.accept(1, 'b').unwrap(), Vec::<char>::new());
        assert!(i.has_gap());
        assert_eq!(i.accept(0, 'a').unwrap(), vec!['a', 'b']);
        assert_eq!(i.accept(0, 'a').unwrap(), Vec::<char>::new());
        assert_eq!(i.accept(2, 'c').unwrap(), vec!['c']);
        assert!(!i.has_gap());
    }

    #[test]
    fn too_much_ahead_of_a_gap_breaks() {
        let mut i = Inbox::default();
        for s in 1..=MAX_AHEAD as u64 {
            i.accept(s, ()).unwrap();
        }
        assert_eq!(i.accept(MAX_AHEAD as u64 + 1, ()), Err(Broken));
    }
}

//! The rules of pipelined batches (see [`Ready`]) in one place, for every caller of the core:
//! which messages may leave now, which wait for a write, and what to tell the core when a
//! write is done. The caller owns the disk and the clock; this only keeps the order.

use std::collections::VecDeque;

use crate::{Durable, Event, Msg, NodeId, Persist, Ready};

/// Batches taken from the core and not yet durable, oldest first.
#[derive(Debug, Default)]
pub struct Pipeline {
    writes: VecDeque<Pending>,
    next_seq: u64,
}

#[derive(Debug)]
struct Pending {
    seq: u64,
    /// Messages that leave once this write (and every one before it) is durable.
    held: Vec<(NodeId, Msg)>,
    durable: Durable,
}

/// What to do with a batch just taken ([`Pipeline::take`]).
#[derive(Debug, Default)]
pub struct Taken {
    /// To act on now.
    pub events: Vec<Event>,
    /// To send now, in order.
    pub send: Vec<(NodeId, Msg)>,
    /// To write after every earlier write, then report with [`Pipeline::written`] and this
    /// sequence number.
    pub write: Option<(u64, Vec<Persist>)>,
    /// Nothing was being written and nothing is to write: hand this to
    /// [`Zab::advance_to`](crate::Zab::advance_to) now.
    pub durable: Option<Durable>,
}

/// What to do once writes are durable ([`Pipeline::written`]).
#[derive(Debug, Default)]
pub struct Released {
    /// To send now, in order.
    pub send: Vec<(NodeId, Msg)>,
    /// To hand to [`Zab::advance_to`](crate::Zab::advance_to) (`None`: no batch finished).
    pub durable: Option<Durable>,
}

impl Pipeline {
    /// Sorts a batch from [`Zab::ready`](crate::Zab::ready): its events are for now; a
    /// leader's `send_first` messages leave now unless an earlier batch's messages still wait
    /// (the order to each peer is kept); other messages wait for this batch's write, or, with
    /// nothing to write, for the last write in progress.
    pub fn take(&mut self, r: Ready) -> Taken {
        let held_before = self.writes.iter().any(|w| !w.held.is_empty());
        let mut t = Taken { events: r.events, ..Taken::default() };
        let held = if r.send_first && !held_before {
            t.send = r.messages;
            Vec::new()
        } else {
            r.messages
        };
        if !r.persist.is_empty() {
            self.next_seq += 1;
            let seq = self.next_seq;
            t.write = Some((seq, r.persist));
            self.writes.push_back(Pending { seq, held, durable: r.durable });
        } else if let Some(last) = self.writes.back_mut() {
            // Nothing new to write: all of it is durable once the last write is.
            last.held.extend(held);
            last.durable = r.durable;
        } else {
            t.send.extend(held);
            t.durable = Some(r.durable);
        }
        t
    }

    /// Every write up to `seq` is durable: their messages leave, in order, and the core hears
    /// the last of their marks.
    pub fn written(&mut self, seq: u64) -> Released {
        let mut out = Released::default();
        while self.writes.front().is_some_and(|w| w.seq <= seq) {
            let Some(w) = self.writes.pop_front() else { break };
            out.send.extend(w.held);
            out.durable = Some(w.durable);
        }
        out
    }

    /// Whether a write is in progress.
    pub fn writing(&self) -> bool {
        !self.writes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Entry, Zxid};
    use std::sync::Arc;

    fn ready(send_first: bool, persist: bool, to: u128, zxid: u64) -> Ready {
        let entry = Entry { zxid: Zxid(zxid), txn: Arc::new(vec![1]) };
        Ready {
            persist: if persist { vec![Persist::Append(vec![entry])] } else { Vec::new() },
            messages: vec![(
                NodeId::from(to),
                Msg::Connect { session: 1, accepted_epoch: 1, accepted_leader: NodeId::from(0) },
            )],
            events: Vec::new(),
            send_first,
            durable: Durable { zxid: Zxid(zxid), epoch: 1 },
        }
    }

    #[test]
    fn messages_wait_for_their_write_and_keep_their_order() {
        let mut p = Pipeline::default();
        // A learner's batch: its ACK waits for its write.
        let a = p.take(ready(false, true, 1, 1));
        assert!(a.send.is_empty() && a.durable.is_none());
        let (seq_a, _) = a.write.expect("a write");
        // A leader's send_first batch after it: held too, behind the first batch's messages.
        let b = p.take(ready(true, true, 2, 2));
        assert!(b.send.is_empty(), "must not overtake a held message");
        let (seq_b, _) = b.write.expect("a write");
        // Nothing to write: its messages join the last write.
        let c = p.take(ready(false, false, 3, 2));
        assert!(c.send.is_empty() && c.write.is_none() && c.durable.is_none());
        let r = p.written(seq_a);
        assert_eq!(r.send.len(), 1);
        assert_eq!(r.durable, Some(Durable { zxid: Zxid(1), epoch: 1 }));
        assert!(p.writing());
        let r = p.written(seq_b);
        assert_eq!(r.send.len(), 2, "the second write's messages and the empty batch's");
        assert_eq!(r.durable, Some(Durable { zxid: Zxid(2), epoch: 1 }));
        assert!(!p.writing());
        assert!(p.written(seq_b).durable.is_none(), "nothing left");
    }

    #[test]
    fn a_leaders_proposals_leave_at_once_and_an_idle_batch_advances_at_once() {
        let mut p = Pipeline::default();
        let a = p.take(ready(true, true, 1, 1));
        assert_eq!(a.send.len(), 1, "send_first with nothing held leaves now");
        let (seq, _) = a.write.expect("a write");
        assert_eq!(p.written(seq).durable, Some(Durable { zxid: Zxid(1), epoch: 1 }));
        let idle = p.take(ready(false, false, 2, 1));
        assert_eq!(idle.send.len(), 1);
        assert_eq!(idle.durable, Some(Durable { zxid: Zxid(1), epoch: 1 }));
    }
}

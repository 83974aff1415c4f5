//! An object's inbox and the output gate: replies held until the write they wait for is
//! acknowledged, released in turn order.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, oneshot};

use crate::backend::{Ack, AckSink};
use crate::clock::lock;
use crate::context::PendingReply;
use crate::error::{Error, Result};
use crate::object::DurableObject;

use super::Envelope;
use super::actor::Actor;

/// An object's inbox and its controls, shared between its task and the runtime. Messages
/// are pushed only under the table lock, so an object can leave the table only with an empty
/// inbox.
pub(crate) struct Mailbox<O: DurableObject> {
    pub(super) last_used_ms: AtomicI64,
    pub(super) evict: AtomicBool,
    pub(super) evicted: Mutex<Vec<oneshot::Sender<bool>>>,
    pub(super) notify: Notify,
    pub(super) inbox: Mutex<Inbox<O>>,
    /// How long the object's turns take lately, for the `Retry-After` of an overload.
    pub(super) pace: TurnPace,
    /// Where the namespace sums the commit latencies its objects timed.
    pub(super) commit_timing: Arc<CommitTiming>,
}

/// Commits timed (a sample: one in flight per object at a time, from its submission to its
/// acknowledgement) and their latencies summed, in nanoseconds: the runtime's vital signs.
#[derive(Debug)]
pub(crate) struct CommitTiming {
    pub(crate) commits: AtomicU64,
    pub(crate) nanos: AtomicU64,
    /// What submission times count from (so that an inbox keeps a `u64`, not an `Instant`).
    epoch: std::time::Instant,
}

impl Default for CommitTiming {
    fn default() -> Self {
        CommitTiming {
            commits: AtomicU64::new(0),
            nanos: AtomicU64::new(0),
            epoch: std::time::Instant::now(),
        }
    }
}

impl CommitTiming {
    /// Nanoseconds since the epoch, now (at least 1: 0 means "nothing timed").
    pub(crate) fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos())
            .unwrap_or(u64::MAX)
            .max(1)
    }
}

/// A moving average of an object's turn length in nanoseconds (each turn weighs 1/16),
/// written by the object's task alone (so no other thread contends for it).
#[derive(Debug, Default)]
pub(super) struct TurnPace(AtomicU64);

impl TurnPace {
    pub(super) fn record(&self, took: std::time::Duration) {
        let sample = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let old = self.0.load(Ordering::Relaxed);
        self.0
            .store(old - old / 16 + sample / 16, Ordering::Relaxed);
    }

    /// About how long a mailbox `depth` deep takes to drain: the hint an overloaded caller
    /// gets, between 1 ms and 5 s.
    pub(super) fn drain_time(&self, depth: usize) -> std::time::Duration {
        let nanos = self.0.load(Ordering::Relaxed).saturating_mul(depth as u64);
        std::time::Duration::from_nanos(nanos).clamp(
            std::time::Duration::from_millis(1),
            std::time::Duration::from_secs(5),
        )
    }
}

/// Where an object's state is while its task sleeps: with the task, in the inbox for a
/// caller to take and run one turn in its own task (the object is idle), or inside a turn a
/// caller started and could not finish at once, for the task to finish.
pub(super) enum Slot<O: DurableObject> {
    /// With the object's task, or with a caller running a turn of it.
    Away,
    /// The task sleeps with nothing to do: a caller may take the object.
    Idle(Box<Actor<O>>),
    /// A turn a caller started, waiting on something: the task finishes it.
    Turn(Pin<Box<dyn Future<Output = Box<Actor<O>>> + Send>>),
}

pub(super) struct Inbox<O: DurableObject> {
    pub(super) messages: VecDeque<Envelope<O>>,
    /// The object's state, while its task sleeps (see [`Slot`]).
    pub(super) slot: Slot<O>,
    /// Acks the task has not seen yet: it counts its outstanding commits with them.
    pub(super) acks: Vec<Ack>,
    /// The task found the inbox empty and sleeps: the next push must wake it. While the task
    /// runs it reads the inbox again before it sleeps, so pushes then need not notify.
    pub(super) waiting: bool,
    /// The sleeping task waits for acks (to finish a reset, or to stop): acks must wake it.
    /// Otherwise an ack does not: it releases the replies it covers itself (see `gate`), and
    /// the task reads it whenever it next runs.
    pub(super) wants_acks: bool,
    /// The output gate: replies held with the seq of the write each waits for, in seq order.
    /// The ack that covers a reply sends it where the ack arrives, so that a reply costs no
    /// extra run of the object's task.
    pub(super) gate: VecDeque<(u64, PendingReply)>,
    /// The highest seq acknowledged.
    pub(super) acked: u64,
    /// A commit failed and the object has not reset yet: held replies have failed, and
    /// replies put behind the gate until the reset fail at once.
    pub(super) failed: bool,
    /// Acks sending released replies right now, outside the lock. Meanwhile a reply is not
    /// sent ahead of them, even if its write is acknowledged: it goes behind the gate, and
    /// they send it after theirs (replies and `after_commit` calls keep turn order).
    pub(super) releasing: usize,
    /// The commit being timed: the seq it covers, and when it was submitted
    /// ([`CommitTiming::now`]; 0 when none is).
    pub(super) timed: (u64, u64),
}

/// Replies to send once the inbox lock is released (a reply may run code that sends to
/// this very object).
pub(super) type Released = Vec<(PendingReply, Result<()>)>;

impl<O: DurableObject> Inbox<O> {
    /// An empty inbox with nothing acknowledged.
    pub(super) fn new() -> Self {
        Inbox {
            messages: VecDeque::new(),
            slot: Slot::Away,
            acks: Vec::new(),
            waiting: false,
            wants_acks: false,
            gate: VecDeque::new(),
            acked: 0,
            failed: false,
            releasing: 0,
            timed: (0, 0),
        }
    }

    /// The object, if its task sleeps with it here and nothing else to do (nothing queued, no
    /// commit failed, only successful acks to see, not leaving), for a caller to run a turn
    /// of it in its own task, with those acks for it to see first.
    pub(super) fn take_idle(&mut self, leaving: bool) -> Option<(Box<Actor<O>>, Vec<Ack>)> {
        let idle = self.waiting
            && !self.wants_acks
            && !self.failed
            && !leaving
            && self.messages.is_empty()
            && self.acks.iter().all(|a| a.ok);
        if !idle {
            return None;
        }
        // A task that waits has left the object here; anything else stays where it is.
        match std::mem::replace(&mut self.slot, Slot::Away) {
            Slot::Idle(actor) => {
                self.waiting = false;
                Some((actor, std::mem::take(&mut self.acks)))
            }
            other => {
                debug_assert!(false, "a waiting task without its object in the inbox");
                self.slot = other;
                None
            }
        }
    }

    /// Puts a turn's reply behind the gate, or releases it if its write is already
    /// acknowledged (or lost).
    pub(super) fn hold(&mut self, seq: u64, reply: PendingReply, out: &mut Released) {
        if self.failed {
            out.push((reply, Err(Error::Reset)));
        } else if seq <= self.acked && self.releasing == 0 {
            out.push((reply, Ok(())));
        } else {
            self.gate.push_back((seq, reply));
        }
    }

    /// Takes the held replies the acknowledged seq already covers.
    pub(super) fn covered(&mut self, out: &mut Released) {
        while self.gate.front().is_some_and(|(s, _)| *s <= self.acked) {
            if let Some((_, reply)) = self.gate.pop_front() {
                out.push((reply, Ok(())));
            }
        }
    }

    /// Releases what `ack` covers: every reply up to its seq, or all of them with an error
    /// when the commit failed.
    pub(super) fn release(&mut self, ack: &Ack, out: &mut Released) {
        if self.failed {
            return;
        }
        if ack.ok {
            self.acked = self.acked.max(ack.seq);
            self.covered(out);
        } else {
            self.failed = true;
            out.extend(self.gate.drain(..).map(|(_, r)| (r, Err(Error::Reset))));
        }
    }
}

pub(super) fn send_released(released: Released) {
    for (reply, result) in released {
        reply(result);
    }
}

impl<O: DurableObject> AckSink for Mailbox<O> {
    fn ack(&self, ack: Ack) {
        let mut released = Vec::new();
        let wake = {
            let mut inbox = lock(&self.inbox);
            let (seq, at) = inbox.timed;
            if at != 0 && ack.seq >= seq {
                inbox.timed = (0, 0);
                if ack.ok {
                    let took = self.commit_timing.now().saturating_sub(at);
                    self.commit_timing.commits.fetch_add(1, Ordering::Relaxed);
                    self.commit_timing.nanos.fetch_add(took, Ordering::Relaxed);
                }
            }
            inbox.release(&ack, &mut released);
            if !released.is_empty() {
                inbox.releasing += 1;
            }
            inbox.acks.push(ack);
            let wake = inbox.waiting && (inbox.wants_acks || !ack.ok);
            if wake {
                inbox.waiting = false;
            }
            wake
        };
        if wake {
            self.notify.notify_one();
        }
        while !released.is_empty() {
            send_released(std::mem::take(&mut released));
            // Replies held meanwhile behind these went to the gate: send them too, in order.
            // (After a failure the gate stays empty: there is nothing to cover.)
            let mut inbox = lock(&self.inbox);
            inbox.covered(&mut released);
            if released.is_empty() {
                inbox.releasing -= 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// An object type for inboxes that never run a turn.
    struct Nothing;

    impl DurableObject for Nothing {
        const CLASS: &'static str = "nothing";
        type Env = ();
        async fn activate(_: &mut crate::Context, _: Arc<()>) -> Result<Self> {
            Ok(Nothing)
        }
    }

    /// A reply that records (its name, whether it was released with Ok) when sent.
    fn reply(log: &Arc<Mutex<Vec<(u32, bool)>>>, name: u32) -> PendingReply {
        let log = log.clone();
        Box::new(move |r: Result<()>| log.lock().unwrap().push((name, r.is_ok())))
    }

    fn ack(seq: u64, ok: bool) -> Ack {
        Ack { seq, ok }
    }

    #[test]
    fn an_overloaded_object_says_how_long_its_mailbox_takes_to_drain() {
        use std::time::Duration;
        let pace = TurnPace::default();
        // Turns of 2 ms, long enough for the average to settle.
        for _ in 0..200 {
            pace.record(Duration::from_millis(2));
        }
        let per_turn = pace.drain_time(1);
        assert!(
            (Duration::from_micros(1900)..=Duration::from_millis(2)).contains(&per_turn),
            "{per_turn:?}"
        );
        assert_eq!(pace.drain_time(100), per_turn * 100);
        // Never less than a millisecond, never more than five seconds.
        assert_eq!(
            TurnPace::default().drain_time(4096),
            Duration::from_millis(1)
        );
        assert_eq!(pace.drain_time(1_000_000), Duration::from_secs(5));
    }

    #[test]
    fn replies_wait_for_the_write_they_follow_and_leave_in_turn_order() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut inbox = Inbox::<Nothing>::new();
        let mut out = Vec::new();
        for (seq, name) in [(1, 1), (1, 2), (2, 3), (3, 4)] {
            inbox.hold(seq, reply(&log, name), &mut out);
        }
        assert!(out.is_empty(), "nothing is acknowledged yet");
        inbox.release(&ack(2, true), &mut out);
        send_released(std::mem::take(&mut out));
        assert_eq!(*log.lock().unwrap(), [(1, true), (2, true), (3, true)]);
        // A reply whose write is acknowledged already leaves at once.
        inbox.hold(2, reply(&log, 5), &mut out);
        send_released(std::mem::take(&mut out));
        assert_eq!(log.lock().unwrap().last(), Some(&(5, true)));
        inbox.release(&ack(3, true), &mut out);
        send_released(std::mem::take(&mut out));
        assert_eq!(log.lock().unwrap().last(), Some(&(4, true)));
        assert!(inbox.gate.is_empty());
    }

    #[test]
    fn a_failed_commit_fails_every_held_reply_and_those_that_follow_until_the_reset() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut inbox = Inbox::<Nothing>::new();
        let mut out = Vec::new();
        inbox.hold(1, reply(&log, 1), &mut out);
        inbox.hold(2, reply(&log, 2), &mut out);
        inbox.release(&ack(1, false), &mut out);
        inbox.hold(3, reply(&log, 3), &mut out);
        // A later success does not release anything while the object has not reset.
        inbox.release(&ack(3, true), &mut out);
        send_released(out);
        assert_eq!(*log.lock().unwrap(), [(1, false), (2, false), (3, false)]);
        assert!(inbox.failed);
    }

    #[test]
    fn while_an_ack_sends_its_replies_a_later_reply_waits_behind_them() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut inbox = Inbox::<Nothing>::new();
        let mut out = Vec::new();
        inbox.hold(1, reply(&log, 1), &mut out);
        inbox.release(&ack(1, true), &mut out);
        // The ack sends reply 1 outside the lock; meanwhile the next turn's reply arrives,
        // its write (seq 1) already acknowledged.
        inbox.releasing += 1;
        let mut meanwhile = Vec::new();
        inbox.hold(1, reply(&log, 2), &mut meanwhile);
        assert!(meanwhile.is_empty(), "it must not overtake reply 1");
        send_released(out);
        let mut after = Vec::new();
        inbox.covered(&mut after);
        inbox.releasing -= 1;
        send_released(after);
        assert_eq!(*log.lock().unwrap(), [(1, true), (2, true)]);
    }
}

//! A call's reply and its deadline. The reply is one cell, filled once: by the call's turn
//! (through the output gate), by its deadline, or by the turn's end without an answer,
//! whichever comes first. The deadlines of every waiting call are kept in one coarse wheel
//! that one task sweeps, so that a call registers no timer of its own: it puts its cell
//! in the wheel's slot for its deadline, and takes it out again when its answer comes.
//! (On a manual clock, calls wait on the clock's own sleepers instead.)

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::clock::lock;

/// The wheel's resolution: a call times out after its deadline, at most about one tick
/// late (plus however late the sweeping task runs).
pub(crate) const TICK: Duration = Duration::from_millis(10);

/// How many ticks the wheel spans (1.28 s). A deadline further away waits in its slot for
/// as many turns of the wheel as it takes; calls usually end long before their deadline,
/// and take themselves out of the wheel then.
const SLOTS: usize = 128;

/// Each slot is split in this many parts, each thread registering in its own, so that
/// threads do not contend for the slot every call of the moment falls in.
const SHARDS: usize = 4;

thread_local! {
    /// The part of a slot this thread registers in.
    static SHARD: usize = {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS
    };
}

/// Why a reply did not come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NoReply {
    /// The deadline passed first.
    Expired,
    /// The sender went away without answering (the message was dropped).
    Dropped,
}

enum State<T> {
    /// No answer yet; the waker of the task waiting for it, if one waits.
    Waiting(Option<Waker>),
    Ready(T),
    Failed(NoReply),
    /// The receiver took the answer (or went away): anything sent now is dropped.
    Closed,
}

struct Cell<T> {
    state: Mutex<State<T>>,
}

/// What the wheel calls on a deadline that passed.
trait Expire: Send + Sync {
    fn expire(&self);
}

impl<T> Cell<T> {
    /// Ends a wait that has no answer yet with `why` (nothing if it has ended already).
    fn fail(&self, why: NoReply) {
        let waker = {
            let mut state = lock(&self.state);
            match &mut *state {
                State::Waiting(w) => {
                    let w = w.take();
                    *state = State::Failed(why);
                    w
                }
                _ => None,
            }
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl<T: Send> Expire for Cell<T> {
    fn expire(&self) {
        self.fail(NoReply::Expired);
    }
}

/// A new reply cell: its sending and its receiving end.
pub(crate) fn channel<T>() -> (ReplyTx<T>, ReplyRx<T>) {
    let cell = Arc::new(Cell {
        state: Mutex::new(State::Waiting(None)),
    });
    (ReplyTx { cell: cell.clone() }, ReplyRx { cell })
}

/// The answering end of a reply: sends once; dropped unsent, the caller learns that the
/// message was dropped.
pub(crate) struct ReplyTx<T> {
    cell: Arc<Cell<T>>,
}

impl<T> ReplyTx<T> {
    /// Sends the answer; gives it back if nobody waits for it any more (the caller went
    /// away, or its deadline passed).
    pub(crate) fn send(self, value: T) -> Result<(), T> {
        let waker = {
            let mut state = lock(&self.cell.state);
            match &mut *state {
                State::Waiting(w) => {
                    let w = w.take();
                    *state = State::Ready(value);
                    w
                }
                _ => return Err(value),
            }
        };
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }

    /// Whether nobody waits for the answer any more.
    pub(crate) fn is_closed(&self) -> bool {
        !matches!(*lock(&self.cell.state), State::Waiting(_))
    }
}

impl<T> Drop for ReplyTx<T> {
    fn drop(&mut self) {
        self.cell.fail(NoReply::Dropped);
    }
}

/// The waiting end of a reply: a future of the answer.
pub(crate) struct ReplyRx<T> {
    cell: Arc<Cell<T>>,
}

impl<T> ReplyRx<T> {
    /// The answer, if it is there already.
    pub(crate) fn try_recv(&mut self) -> Option<Result<T, NoReply>> {
        let mut state = lock(&self.cell.state);
        match std::mem::replace(&mut *state, State::Closed) {
            State::Ready(v) => Some(Ok(v)),
            State::Failed(e) => Some(Err(e)),
            waiting @ State::Waiting(_) => {
                *state = waiting;
                None
            }
            State::Closed => Some(Err(NoReply::Dropped)),
        }
    }
}

impl<T> Future for ReplyRx<T> {
    type Output = Result<T, NoReply>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = lock(&self.cell.state);
        match &mut *state {
            State::Waiting(w) => {
                if !w.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    *w = Some(cx.waker().clone());
                }
                Poll::Pending
            }
            _ => match std::mem::replace(&mut *state, State::Closed) {
                State::Ready(v) => Poll::Ready(Ok(v)),
                State::Failed(e) => Poll::Ready(Err(e)),
                _ => Poll::Ready(Err(NoReply::Dropped)),
            },
        }
    }
}

impl<T> Drop for ReplyRx<T> {
    fn drop(&mut self) {
        // Whatever is there (an answer not taken) goes with the cell; a later send fails.
        let mut state = lock(&self.cell.state);
        if matches!(*state, State::Waiting(_)) {
            *state = State::Closed;
        }
    }
}

/// One slot of the wheel: the cells whose deadline tick falls on it (modulo the wheel),
/// each with its tick; vacant places are reused.
#[derive(Default)]
struct Slot {
    entries: Vec<Option<(u64, Arc<dyn Expire>)>>,
    vacant: Vec<u32>,
}

impl Slot {
    fn live(&self) -> usize {
        self.entries.len() - self.vacant.len()
    }

    /// Takes out every entry due at `tick` or before it.
    fn take_due(&mut self, tick: u64, out: &mut Vec<Arc<dyn Expire>>) {
        for (i, entry) in self.entries.iter_mut().enumerate() {
            if entry.as_ref().is_some_and(|(t, _)| *t <= tick)
                && let Some((_, cell)) = entry.take()
            {
                out.push(cell);
                self.vacant.push(i as u32);
            }
        }
        self.shrink();
    }

    /// Forgets the places once every one is vacant.
    fn shrink(&mut self) {
        if self.vacant.len() == self.entries.len() {
            self.entries.clear();
            self.vacant.clear();
        }
    }
}

/// The deadlines of the runtime's waiting calls (real time).
pub(crate) struct Deadlines {
    epoch: Instant,
    slots: Box<[Mutex<Slot>]>,
    /// The sweeping task sleeps with the wheel empty: the next call to register wakes it.
    sleeping: AtomicBool,
    wake: Arc<Notify>,
}

impl Default for Deadlines {
    fn default() -> Self {
        Deadlines {
            epoch: Instant::now(),
            slots: (0..SLOTS * SHARDS)
                .map(|_| Mutex::new(Slot::default()))
                .collect(),
            sleeping: AtomicBool::new(false),
            wake: Arc::new(Notify::new()),
        }
    }
}

impl Drop for Deadlines {
    fn drop(&mut self) {
        // The sweeping task, if it sleeps, wakes to find the runtime gone.
        self.wake.notify_one();
    }
}

/// A call's place in the wheel; dropping it takes the call out (its answer came, or it
/// went away). Drop it while the receiver it watches is still alive: it finds its place
/// by the cell's address, which a freed cell could pass on to another call.
pub(crate) struct Watch<'a> {
    wheel: &'a Deadlines,
    slot: u32,
    index: u32,
    /// The watched cell's address, to tell it from a later call given the same place.
    cell: usize,
}

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        let mut slot = lock(&self.wheel.slots[self.slot as usize]);
        let index = self.index as usize;
        // The sweeper may have expired this call and given its place to another.
        let mine = slot
            .entries
            .get(index)
            .is_some_and(|e| e.as_ref().is_some_and(|(_, c)| address(c) == self.cell));
        if mine {
            slot.entries[index] = None;
            slot.vacant.push(self.index);
            slot.shrink();
        }
    }
}

/// Where a cell lives (its identity while it is alive).
fn address(cell: &Arc<dyn Expire>) -> usize {
    Arc::as_ptr(cell).cast::<()>() as usize
}

impl Deadlines {
    /// The tick `at` falls in.
    fn tick_of(&self, at: Instant) -> u64 {
        let since = at.saturating_duration_since(self.epoch);
        u64::try_from(since.as_nanos() / TICK.as_nanos()).unwrap_or(u64::MAX)
    }

    /// Watches `rx` for `timeout`: once it passes without an answer, the receiver gets
    /// [`NoReply::Expired`].
    pub(crate) fn watch<T: Send + 'static>(&self, rx: &ReplyRx<T>, timeout: Duration) -> Watch<'_> {
        // The first tick that starts at or after the deadline: never early.
        let since = self.epoch.elapsed().saturating_add(timeout);
        let tick = u64::try_from(since.as_nanos().div_ceil(TICK.as_nanos())).unwrap_or(u64::MAX);
        let slot_no = (tick % SLOTS as u64) as usize * SHARDS + SHARD.with(|s| *s);
        let cell: Arc<dyn Expire> = rx.cell.clone();
        let ptr = address(&cell);
        let index = {
            let mut slot = lock(&self.slots[slot_no]);
            match slot.vacant.pop() {
                Some(i) => {
                    slot.entries[i as usize] = Some((tick, cell));
                    i
                }
                None => {
                    slot.entries.push(Some((tick, cell)));
                    u32::try_from(slot.entries.len() - 1).unwrap_or(u32::MAX)
                }
            }
        };
        if self.sleeping.load(Ordering::SeqCst) && self.sleeping.swap(false, Ordering::SeqCst) {
            self.wake.notify_one();
        }
        Watch {
            wheel: self,
            slot: slot_no as u32,
            index,
            cell: ptr,
        }
    }

    /// Expires the calls due in ticks `from..=to`.
    fn sweep(&self, from: u64, to: u64) {
        let mut due = Vec::new();
        let ticks = if to.saturating_sub(from) >= SLOTS as u64 {
            // Late by a whole turn of the wheel or more: every slot.
            to.saturating_sub(SLOTS as u64 - 1)..=to
        } else {
            from..=to
        };
        for tick in ticks {
            let first = (tick % SLOTS as u64) as usize * SHARDS;
            for slot in &self.slots[first..first + SHARDS] {
                lock(slot).take_due(to, &mut due);
            }
            for cell in due.drain(..) {
                cell.expire();
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.slots.iter().all(|s| lock(s).live() == 0)
    }

    /// How many calls the wheel watches (for tests).
    #[cfg(test)]
    fn watched(&self) -> usize {
        self.slots.iter().map(|s| lock(s).live()).sum()
    }
}

/// The task that sweeps the wheel once a tick, and sleeps while it is empty. It ends once
/// the runtime (which owns the wheel) is gone.
pub(crate) async fn sweep_loop(wheel: Weak<Deadlines>) {
    let Some(wake) = wheel.upgrade().map(|w| w.wake.clone()) else {
        return;
    };
    let mut next = 0u64;
    loop {
        let at = {
            let Some(w) = wheel.upgrade() else { return };
            let now = w.tick_of(Instant::now());
            if now >= next {
                w.sweep(next, now);
                next = now + 1;
            }
            // Sleep for good only on a wheel seen empty after saying so: a call that
            // registers meanwhile sees the flag and wakes this task.
            w.sleeping.store(true, Ordering::SeqCst);
            if w.is_empty() {
                None
            } else {
                w.sleeping.store(false, Ordering::SeqCst);
                Some(w.epoch + TICK * u32::try_from(next).unwrap_or(u32::MAX))
            }
        };
        match at {
            Some(at) => tokio::time::sleep_until(at).await,
            None => {
                wake.notified().await;
                // Ticks passed while it slept found nothing to expire.
                if let Some(w) = wheel.upgrade() {
                    next = next.max(w.tick_of(Instant::now()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_reply_that_comes_in_time_wins_and_leaves_the_wheel() {
        let wheel = Arc::new(Deadlines::default());
        let sweeper = tokio::spawn(sweep_loop(Arc::downgrade(&wheel)));
        let (tx, mut rx) = channel::<u32>();
        let watch = wheel.watch(&rx, Duration::from_millis(100));
        assert_eq!(wheel.watched(), 1);
        assert!(rx.try_recv().is_none());
        assert!(!tx.is_closed());
        tx.send(7).unwrap();
        assert_eq!((&mut rx).await, Ok(7));
        drop(watch);
        assert_eq!(wheel.watched(), 0);
        tokio::time::sleep(Duration::from_secs(1)).await;
        drop(wheel);
        sweeper.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_passes_never_early_and_at_most_a_tick_late() {
        let wheel = Arc::new(Deadlines::default());
        tokio::spawn(sweep_loop(Arc::downgrade(&wheel)));
        // Let the sweeper reach its sleep (the wheel is empty).
        tokio::time::sleep(TICK * 3).await;
        for timeout_ms in [1u64, 15, 250, 4_000, 30_000] {
            let timeout = Duration::from_millis(timeout_ms);
            let (tx, mut rx) = channel::<u32>();
            let started = Instant::now();
            let watch = wheel.watch(&rx, timeout);
            assert_eq!((&mut rx).await, Err(NoReply::Expired));
            let took = started.elapsed();
            assert!(took >= timeout, "{timeout:?}: expired after {took:?}");
            assert!(
                took <= timeout + 2 * TICK,
                "{timeout:?}: expired after {took:?}"
            );
            // The answer that comes too late is refused, and the wheel holds nothing.
            assert!(tx.is_closed());
            assert_eq!(tx.send(1), Err(1));
            drop(watch);
            assert_eq!(wheel.watched(), 0);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn many_calls_with_mixed_deadlines_each_get_their_own_outcome() {
        let wheel = Arc::new(Deadlines::default());
        tokio::spawn(sweep_loop(Arc::downgrade(&wheel)));
        let mut calls = Vec::new();
        for i in 0..2_000u64 {
            let (tx, rx) = channel::<u64>();
            // Deadlines over several turns of the wheel; every third call is answered.
            let timeout = Duration::from_millis(5 + (i * 37) % 7_000);
            calls.push((i, tx, rx, timeout));
        }
        let mut unanswered = Vec::new();
        let waits: Vec<_> = calls
            .into_iter()
            .map(|(i, tx, mut rx, timeout)| {
                let wheel = wheel.clone();
                let answered = i % 3 == 0;
                if answered {
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                        let _ = tx.send(i);
                    });
                } else {
                    // Kept unanswered (and unsent) until the end.
                    unanswered.push(tx);
                }
                tokio::spawn(async move {
                    let started = Instant::now();
                    let got = {
                        let _watch = wheel.watch(&rx, timeout);
                        (&mut rx).await
                    };
                    (i, answered, got, started.elapsed(), timeout)
                })
            })
            .collect();
        for w in waits {
            let (i, answered, got, took, timeout) = w.await.unwrap();
            if answered {
                assert_eq!(got, Ok(i));
            } else {
                assert_eq!(got, Err(NoReply::Expired), "call {i}");
                assert!(
                    took >= timeout && took <= timeout + 2 * TICK,
                    "call {i}: {took:?} for {timeout:?}"
                );
            }
        }
        assert_eq!(wheel.watched(), 0);
        drop(unanswered);
    }

    #[test]
    fn a_sender_dropped_unsent_says_so_and_a_late_receiver_drop_closes_it() {
        let (tx, mut rx) = channel::<u32>();
        drop(tx);
        assert_eq!(rx.try_recv(), Some(Err(NoReply::Dropped)));
        let (tx, rx) = channel::<u32>();
        drop(rx);
        assert!(tx.is_closed());
        assert_eq!(tx.send(3), Err(3));
    }
}

//! Awaiting many asks at once: [`join_all`] wakes its caller once, when every one has
//! answered, rather than once per answer.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use crate::clock::lock;

/// Runs every future to completion and returns their outputs in order.
///
/// Unlike a join that re-polls its caller on every child's wake-up, this wakes the caller
/// once, when every child still pending has woken. That matters when the caller is an HTTP
/// connection task, whose every poll walks the server's whole stack: a read that asks 16
/// shards is polled about twice, not 17 times.
pub(crate) fn join_all<I>(futures: I) -> JoinAll<I::Item>
where
    I: IntoIterator,
    I::Item: Future,
{
    let children: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let n = children.len();
    let shared = Arc::new(Shared {
        parent: Mutex::new(None),
        unwoken: AtomicUsize::new(0),
        // Every child is due for its first poll.
        woken: (0..n).map(|_| AtomicBool::new(true)).collect(),
    });
    let wakers = (0..n)
        .map(|index| {
            Waker::from(Arc::new(ChildWaker {
                index,
                shared: shared.clone(),
            }))
        })
        .collect();
    JoinAll {
        children: children.into_iter().map(Some).collect(),
        outputs: (0..n).map(|_| None).collect(),
        wakers,
        shared,
        pending: n,
    }
}

/// The future of [`join_all`].
#[must_use = "futures do nothing unless awaited"]
pub(crate) struct JoinAll<F: Future> {
    children: Vec<Option<Pin<Box<F>>>>,
    outputs: Vec<Option<F::Output>>,
    wakers: Vec<Waker>,
    shared: Arc<Shared>,
    pending: usize,
}

impl<F: Future> std::fmt::Debug for JoinAll<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinAll")
            .field("children", &self.children.len())
            .field("pending", &self.pending)
            .finish()
    }
}

struct Shared {
    parent: Mutex<Option<Waker>>,
    /// Children pending and not woken since their last poll.
    unwoken: AtomicUsize,
    /// Per child: woken since its last poll (and so due for another), or done.
    woken: Vec<AtomicBool>,
}

struct ChildWaker {
    index: usize,
    shared: Arc<Shared>,
}

impl Wake for ChildWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let shared = &self.shared;
        if !shared.woken[self.index].swap(true, Ordering::AcqRel)
            && shared.unwoken.fetch_sub(1, Ordering::AcqRel) == 1
            && let Some(parent) = lock(&shared.parent).take()
        {
            parent.wake();
        }
    }
}

impl<F: Future> Unpin for JoinAll<F> {}

impl<F: Future> Future for JoinAll<F> {
    type Output = Vec<F::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        // Registered before any child is polled: a wake-up from here on reaches this task.
        *lock(&this.shared.parent) = Some(cx.waker().clone());
        for i in 0..this.children.len() {
            let Some(child) = this.children[i].as_mut() else {
                continue;
            };
            if !this.shared.woken[i].swap(false, Ordering::AcqRel) {
                continue;
            }
            // Counted as unwoken before the poll, so a wake-up during it finds it counted.
            this.shared.unwoken.fetch_add(1, Ordering::AcqRel);
            let mut child_cx = Context::from_waker(&this.wakers[i]);
            if let Poll::Ready(out) = child.as_mut().poll(&mut child_cx) {
                this.outputs[i] = Some(out);
                this.children[i] = None;
                this.pending -= 1;
                // Done for good; undo the count unless a wake-up during the poll did.
                if !this.shared.woken[i].swap(true, Ordering::AcqRel) {
                    this.shared.unwoken.fetch_sub(1, Ordering::AcqRel);
                }
            }
        }
        if this.pending > 0 {
            // Every child still pending has woken already (one polled early woke while a
            // later one ran, and that one then finished: a finish wakes no one): no wake-up
            // is coming, so this task wakes itself, to poll them again from the scheduler
            // (not in a loop here, which a child out of its task's budget would spin).
            if this.shared.unwoken.load(Ordering::Acquire) == 0 {
                cx.waker().wake_by_ref();
            }
            return Poll::Pending;
        }
        Poll::Ready(
            this.outputs
                .iter_mut()
                .map(|o| o.take().expect("every child is done"))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use tokio::sync::oneshot;

    /// Counts how often it is polled.
    struct Polls<F> {
        inner: Pin<Box<F>>,
        count: Arc<AtomicUsize>,
    }

    impl<F: Future> Future for Polls<F> {
        type Output = F::Output;
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
            self.count.fetch_add(1, Ordering::SeqCst);
            self.inner.as_mut().poll(cx)
        }
    }

    #[tokio::test]
    async fn answers_in_order_and_wakes_the_caller_once_all_have_answered() {
        let (senders, receivers): (Vec<_>, Vec<_>) = (0..16).map(|_| oneshot::channel()).unzip();
        let polls = Arc::new(AtomicUsize::new(0));
        let joined = tokio::spawn(Polls {
            inner: Box::pin(join_all(receivers)),
            count: polls.clone(),
        });
        tokio::task::yield_now().await;
        // Answer out of order, with a pause between answers.
        for (i, tx) in senders.into_iter().enumerate().rev() {
            tx.send(i).unwrap();
            tokio::task::yield_now().await;
        }
        let out: Vec<usize> = joined
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.unwrap())
            .collect();
        assert_eq!(out, (0..16).collect::<Vec<_>>());
        assert!(
            polls.load(Ordering::SeqCst) <= 2,
            "polled {} times",
            polls.load(Ordering::SeqCst)
        );
    }

    #[test]
    fn a_child_woken_while_a_later_one_finishes_is_polled_again() {
        // Child 0 waits; child 1, polled after it, answers child 0 and finishes at once:
        // child 0's wake-up comes while child 1 is counted, and child 1's finish wakes no one.
        let (tx, rx) = oneshot::channel::<u8>();
        let mut tx = Some(tx);
        let answers_first = std::future::poll_fn(move |_| {
            if let Some(tx) = tx.take() {
                tx.send(7).unwrap();
            }
            Poll::Ready(Ok(1))
        });
        let children: Vec<Pin<Box<dyn Future<Output = _> + Send>>> =
            vec![Box::pin(rx), Box::pin(answers_first)];
        let mut joined = Box::pin(join_all(children));
        let woken = Arc::new(Woken::default());
        let waker = Waker::from(woken.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(joined.as_mut().poll(&mut cx).is_pending());
        assert!(
            woken.0.load(Ordering::SeqCst) > 0,
            "the caller must be woken to poll child 0 again"
        );
        match joined.as_mut().poll(&mut cx) {
            Poll::Ready(out) => {
                assert_eq!(
                    out.into_iter().map(|r| r.unwrap()).collect::<Vec<_>>(),
                    [7, 1]
                )
            }
            Poll::Pending => panic!("both children have answered"),
        }
    }

    /// A waker that counts its wake-ups.
    #[derive(Default)]
    struct Woken(AtomicUsize);

    impl Wake for Woken {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn empty_and_already_ready_sets_complete_at_once() {
        let none: Vec<std::future::Ready<u8>> = Vec::new();
        assert!(join_all(none).await.is_empty());
        assert_eq!(
            join_all([std::future::ready(1), std::future::ready(2)]).await,
            vec![1, 2]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn children_woken_from_other_threads_all_complete() {
        for round in 0..200 {
            let (senders, receivers): (Vec<_>, Vec<_>) = (0..8).map(|_| oneshot::channel()).unzip();
            let answer = std::thread::spawn(move || {
                for (i, tx) in senders.into_iter().enumerate() {
                    tx.send(i * round).unwrap();
                }
            });
            let out = tokio::time::timeout(std::time::Duration::from_secs(10), join_all(receivers))
                .await
                .expect("a lost wake-up would hang here");
            answer.join().unwrap();
            assert_eq!(
                out.into_iter().map(|r| r.unwrap()).collect::<Vec<_>>(),
                (0..8).map(|i| i * round).collect::<Vec<_>>()
            );
        }
    }
}

//! A backend wrapper that injects faults, for testing failure paths.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::{
    Backend, CommitBatch, FenceToken, ListOptions, MemoryBackend, NamedObject, ObjectEntry,
    ObjectRef, Value, unavailable,
};
use crate::clock::lock;
use crate::error::{Error, Result};
use crate::id::ObjectId;

/// Wraps a backend and fails or stalls chosen commits, fails reads, or fences writers, on
/// request.
///
/// Commits are numbered from 1 in submission order. A stalled commit, and every commit
/// submitted after it, is held back until [`release`](Self::release), so per-object order
/// is kept.
///
/// ```
/// use std::sync::Arc;
/// use stead_core::MemoryBackend;
/// use stead_core::testing::FaultyBackend;
/// let faulty = Arc::new(FaultyBackend::new(MemoryBackend::new()));
/// faulty.fail_commit(1); // the first commit will fail
/// ```
pub struct FaultyBackend<B: Backend = MemoryBackend> {
    inner: B,
    submitted: AtomicU64,
    fail_at: Mutex<BTreeSet<u64>>,
    stall_at: Mutex<BTreeSet<u64>>,
    held: Mutex<Option<Vec<CommitBatch>>>,
    fail_reads: AtomicBool,
    /// When set, activations write under this epoch and older tokens are refused.
    epoch: Mutex<Option<u64>>,
}

impl<B: Backend> std::fmt::Debug for FaultyBackend<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultyBackend")
            .field("submitted", &self.submitted.load(Ordering::Relaxed))
            .finish()
    }
}

impl<B: Backend> FaultyBackend<B> {
    /// Wraps `inner`; no faults until asked.
    pub fn new(inner: B) -> Self {
        FaultyBackend {
            inner,
            submitted: AtomicU64::new(0),
            fail_at: Mutex::new(BTreeSet::new()),
            stall_at: Mutex::new(BTreeSet::new()),
            held: Mutex::new(None),
            fail_reads: AtomicBool::new(false),
            epoch: Mutex::new(None),
        }
    }

    /// Fences writers as a lease would: activations from now on write under `epoch`, and
    /// a batch carrying an older token is refused (as if another node had taken over).
    pub fn set_epoch(&self, epoch: u64) {
        *lock(&self.epoch) = Some(epoch);
    }

    /// Makes commit number `n` (counted from 1 over the backend's life) fail.
    pub fn fail_commit(&self, n: u64) {
        lock(&self.fail_at).insert(n);
    }

    /// Makes commit number `n` wait, with every commit after it, until [`release`](Self::release).
    pub fn stall_commit(&self, n: u64) {
        lock(&self.stall_at).insert(n);
    }

    /// Makes every read fail (`true`) or work again (`false`).
    pub fn fail_reads(&self, fail: bool) {
        self.fail_reads.store(fail, Ordering::SeqCst);
    }

    /// How many commits have been submitted so far.
    pub fn submitted(&self) -> u64 {
        self.submitted.load(Ordering::SeqCst)
    }

    /// How many commits are held back by a stall.
    pub fn held(&self) -> usize {
        lock(&self.held).as_ref().map_or(0, Vec::len)
    }

    /// Lets stalled commits through, in order.
    pub fn release(&self) {
        let held = lock(&self.held).take().unwrap_or_default();
        for b in held {
            self.inner.submit(b);
        }
    }

    /// Fails the first stalled commit, then lets the others through in order (they are
    /// refused by the fence when they belong to the same activation).
    pub fn release_failing_first(&self) {
        let held = lock(&self.held).take().unwrap_or_default();
        let mut held = held.into_iter();
        if let Some(first) = held.next() {
            first.complete(Err(Error::Reset));
        }
        for b in held {
            self.inner.submit(b);
        }
    }

    fn check_reads(&self) -> Result<()> {
        if self.fail_reads.load(Ordering::SeqCst) {
            Err(unavailable("injected read failure"))
        } else {
            Ok(())
        }
    }
}

impl<B: Backend> Backend for FaultyBackend<B> {
    async fn get(&self, obj: &ObjectRef, key: &str) -> Result<Option<Value>> {
        self.check_reads()?;
        self.inner.get(obj, key).await
    }

    async fn list(&self, obj: &ObjectRef, opts: &ListOptions) -> Result<Vec<(String, Value)>> {
        self.check_reads()?;
        self.inner.list(obj, opts).await
    }

    async fn load(&self, obj: &ObjectRef, limit: usize) -> Result<Vec<(String, Value)>> {
        self.check_reads()?;
        self.inner.load(obj, limit).await
    }

    async fn get_alarm(&self, obj: &ObjectRef) -> Result<Option<i64>> {
        self.check_reads()?;
        self.inner.get_alarm(obj).await
    }

    async fn due_alarms(
        &self,
        class: &'static str,
        after: Option<(i64, ObjectId)>,
        until_ms: i64,
        limit: usize,
    ) -> Result<Vec<(i64, ObjectId)>> {
        self.inner.due_alarms(class, after, until_ms, limit).await
    }

    async fn alarm_classes(&self) -> Result<Vec<String>> {
        self.inner.alarm_classes().await
    }

    async fn objects(
        &self,
        class: &'static str,
        after: Option<ObjectId>,
        limit: usize,
    ) -> Result<Vec<ObjectEntry>> {
        self.inner.objects(class, after, limit).await
    }

    async fn objects_by_name(
        &self,
        class: &'static str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<NamedObject>> {
        self.inner
            .objects_by_name(class, prefix, after, limit)
            .await
    }

    async fn object_name(&self, obj: &ObjectRef) -> Result<Option<String>> {
        self.inner.object_name(obj).await
    }

    fn fence_token(&self, obj: &ObjectRef) -> Option<FenceToken> {
        match *lock(&self.epoch) {
            Some(epoch) => Some(FenceToken::new(0, epoch)),
            None => self.inner.fence_token(obj),
        }
    }

    fn backlogged(&self, obj: &ObjectRef) -> bool {
        self.inner.backlogged(obj)
    }

    fn submit(&self, batch: CommitBatch) {
        let n = self.submitted.fetch_add(1, Ordering::SeqCst) + 1;
        let current = *lock(&self.epoch);
        if let Some(epoch) = current
            && batch.fence_token().is_some_and(|t| t.epoch != epoch)
        {
            batch.complete(Err(Error::Reset));
            return;
        }
        if lock(&self.fail_at).remove(&n) {
            batch.complete(Err(Error::Reset));
            return;
        }
        let mut held = lock(&self.held);
        if lock(&self.stall_at).remove(&n) && held.is_none() {
            *held = Some(Vec::new());
        }
        match held.as_mut() {
            Some(h) => h.push(batch),
            None => {
                drop(held);
                self.inner.submit(batch);
            }
        }
    }

    async fn close(&self) -> Result<()> {
        self.release();
        self.inner.close().await
    }

    async fn flush(&self) -> Result<()> {
        self.release();
        self.inner.flush().await
    }
}

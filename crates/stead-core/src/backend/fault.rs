//! A backend wrapper that injects faults, for testing failure paths.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::{Backend, CommitBatch, ListOptions, ObjectEntry, ObjectRef, Value, unavailable};
use crate::clock::lock;
use crate::error::{Error, Result};
use crate::id::ObjectId;

/// Wraps a backend and fails or stalls chosen commits, or fails reads, on request.
///
/// Commits are numbered from 1 in submission order. A stalled commit, and every commit
/// submitted after it, is held back until [`release`](Self::release), so per-object order
/// is kept.
///
/// ```
/// use std::sync::Arc;
/// use stead_core::{FaultyBackend, MemoryBackend};
/// let faulty = Arc::new(FaultyBackend::new(Arc::new(MemoryBackend::new())));
/// faulty.fail_commit(1); // the first commit will fail
/// ```
pub struct FaultyBackend {
    inner: Arc<dyn Backend>,
    submitted: AtomicU64,
    fail_at: Mutex<BTreeSet<u64>>,
    stall_at: Mutex<BTreeSet<u64>>,
    held: Mutex<Option<Vec<CommitBatch>>>,
    fail_reads: AtomicBool,
}

impl std::fmt::Debug for FaultyBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultyBackend")
            .field("submitted", &self.submitted.load(Ordering::Relaxed))
            .finish()
    }
}

impl FaultyBackend {
    /// Wraps `inner`; no faults until asked.
    pub fn new(inner: Arc<dyn Backend>) -> Self {
        FaultyBackend {
            inner,
            submitted: AtomicU64::new(0),
            fail_at: Mutex::new(BTreeSet::new()),
            stall_at: Mutex::new(BTreeSet::new()),
            held: Mutex::new(None),
            fail_reads: AtomicBool::new(false),
        }
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

impl Backend for FaultyBackend {
    fn get(&self, obj: &ObjectRef, key: &str) -> Result<Option<Value>> {
        self.check_reads()?;
        self.inner.get(obj, key)
    }

    fn list(&self, obj: &ObjectRef, opts: &ListOptions) -> Result<Vec<(String, Value)>> {
        self.check_reads()?;
        self.inner.list(obj, opts)
    }

    fn load(&self, obj: &ObjectRef, limit: usize) -> Result<Vec<(String, Value)>> {
        self.check_reads()?;
        self.inner.load(obj, limit)
    }

    fn get_alarm(&self, obj: &ObjectRef) -> Result<Option<i64>> {
        self.check_reads()?;
        self.inner.get_alarm(obj)
    }

    fn alarms(&self, class: &'static str) -> Result<Vec<(ObjectId, i64)>> {
        self.inner.alarms(class)
    }

    fn alarm_classes(&self) -> Result<Vec<String>> {
        self.inner.alarm_classes()
    }

    fn objects(
        &self,
        class: &'static str,
        after: Option<ObjectId>,
        limit: usize,
    ) -> Result<Vec<ObjectEntry>> {
        self.inner.objects(class, after, limit)
    }

    fn objects_by_name(
        &self,
        class: &'static str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ObjectEntry>> {
        self.inner.objects_by_name(class, prefix, after, limit)
    }

    fn object_name(&self, obj: &ObjectRef) -> Result<Option<String>> {
        self.inner.object_name(obj)
    }

    fn submit(&self, batch: CommitBatch) {
        let n = self.submitted.fetch_add(1, Ordering::SeqCst) + 1;
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

    fn close(&self) -> Result<()> {
        self.inner.close()
    }

    fn flush(&self) -> Result<()> {
        self.release();
        self.inner.flush()
    }
}

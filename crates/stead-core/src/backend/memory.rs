//! The memory backend: for tests and for namespaces that need no durability.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::{Arc, Mutex};

use super::{Backend, CommitBatch, ListOptions, ObjectEntry, ObjectRef, Value};
use crate::clock::lock;
use crate::error::Result;
use crate::id::ObjectId;

/// Keeps everything in process memory. Commits are applied at once, in submission order.
///
/// ```
/// use std::sync::Arc;
/// use stead_core::{Backend, MemoryBackend};
/// let backend: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
/// # let _ = backend;
/// ```
#[derive(Debug, Default)]
pub struct MemoryBackend {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    objects: HashMap<ObjectRef, ObjectData>,
    /// The registry, ordered by id within a class.
    registry: BTreeMap<(&'static str, ObjectId), Option<Arc<str>>>,
}

#[derive(Debug, Default)]
struct ObjectData {
    kv: BTreeMap<String, Value>,
    alarm: Option<i64>,
}

impl MemoryBackend {
    /// An empty memory backend.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Backend for MemoryBackend {
    fn get(&self, obj: &ObjectRef, key: &str) -> Result<Option<Value>> {
        let st = lock(&self.state);
        Ok(st.objects.get(obj).and_then(|o| o.kv.get(key).cloned()))
    }

    fn list(&self, obj: &ObjectRef, opts: &ListOptions) -> Result<Vec<(String, Value)>> {
        let st = lock(&self.state);
        let Some(o) = st.objects.get(obj) else {
            return Ok(Vec::new());
        };
        let (lower, upper) = opts.bounds();
        if upper.as_ref().is_some_and(|u| *u <= lower) {
            return Ok(Vec::new());
        }
        let hi = match &upper {
            Some(u) => Bound::Excluded(u.as_str()),
            None => Bound::Unbounded,
        };
        let range =
            o.kv.range::<str, _>((Bound::Included(lower.as_str()), hi))
                .map(|(k, v)| (k.clone(), v.clone()));
        let limit = opts.limit.unwrap_or(usize::MAX);
        Ok(if opts.reverse {
            range.rev().take(limit).collect()
        } else {
            range.take(limit).collect()
        })
    }

    fn get_alarm(&self, obj: &ObjectRef) -> Result<Option<i64>> {
        Ok(lock(&self.state).objects.get(obj).and_then(|o| o.alarm))
    }

    fn alarms(&self, class: &'static str) -> Result<Vec<(ObjectId, i64)>> {
        let st = lock(&self.state);
        Ok(st
            .objects
            .iter()
            .filter(|(r, _)| r.class == class)
            .filter_map(|(r, o)| o.alarm.map(|a| (r.id, a)))
            .collect())
    }

    fn objects(
        &self,
        class: &'static str,
        after: Option<ObjectId>,
        limit: usize,
    ) -> Result<Vec<ObjectEntry>> {
        let st = lock(&self.state);
        let lo = match after {
            Some(id) => Bound::Excluded((class, id)),
            None => Bound::Included((class, ObjectId::from_bytes([0; 32]))),
        };
        Ok(st
            .registry
            .range((
                lo,
                Bound::Included((class, ObjectId::from_bytes([0xff; 32]))),
            ))
            .take(limit)
            .map(|((_, id), name)| ObjectEntry {
                id: *id,
                name: name.as_deref().map(str::to_owned),
            })
            .collect())
    }

    fn objects_by_name(
        &self,
        class: &'static str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ObjectEntry>> {
        let st = lock(&self.state);
        let mut out: Vec<ObjectEntry> = st
            .registry
            .iter()
            .filter(|((c, _), _)| *c == class)
            .filter_map(|((_, id), name)| {
                let name = name.as_deref()?;
                (name.starts_with(prefix) && after.is_none_or(|a| name > a)).then(|| ObjectEntry {
                    id: *id,
                    name: Some(name.to_owned()),
                })
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out.truncate(limit);
        Ok(out)
    }

    fn object_name(&self, obj: &ObjectRef) -> Result<Option<String>> {
        let st = lock(&self.state);
        Ok(st
            .registry
            .get(&(obj.class, obj.id))
            .and_then(|n| n.as_deref().map(str::to_owned)))
    }

    fn submit(&self, mut batch: CommitBatch) {
        if batch.is_fenced() {
            batch.complete(Err(crate::Error::Reset));
            return;
        }
        {
            let mut st = lock(&self.state);
            let obj = batch.object;
            if batch.clear {
                st.objects.remove(&obj);
                st.registry.remove(&(obj.class, obj.id));
            }
            if let Some(name) = batch.register.take() {
                let entry = st.registry.entry((obj.class, obj.id)).or_default();
                if entry.is_none() {
                    *entry = name;
                }
            }
            let data = st.objects.entry(obj).or_default();
            for (k, v) in batch.writes.drain(..) {
                match v {
                    Some(v) => {
                        data.kv.insert(k, v);
                    }
                    None => {
                        data.kv.remove(&k);
                    }
                }
            }
            if let Some(a) = batch.alarm {
                data.alarm = a;
            }
            if data.kv.is_empty() && data.alarm.is_none() {
                st.objects.remove(&obj);
            }
        }
        batch.complete(Ok(()));
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }
}

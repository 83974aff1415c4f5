//! The memory backend: for tests and for namespaces that need no durability.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::{Arc, Mutex};

use super::{Backend, CommitBatch, ListOptions, NamedObject, ObjectEntry, ObjectRef, Value};
use crate::clock::lock;
use crate::error::Result;
use crate::id::ObjectId;

/// Keeps everything in process memory. Commits are applied at once, in submission order.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use stead_core::{MemoryBackend, Runtime};
/// let rt = Runtime::builder().backend(MemoryBackend::new()).build().await?;
/// # rt.shutdown().await }).unwrap();
/// ```
#[derive(Debug)]
pub struct MemoryBackend {
    /// Objects' data, in shards by id so that commits of different objects rarely meet on a
    /// lock.
    shards: Box<[Mutex<HashMap<ObjectRef, ObjectData>>]>,
    /// The registry, ordered by id within a class (written only on an object's first commit
    /// of an activation, and on a clear).
    registry: Mutex<Registry>,
}

type Registry = BTreeMap<(&'static str, ObjectId), Option<Arc<str>>>;

const SHARDS: usize = 16;

impl Default for MemoryBackend {
    fn default() -> Self {
        MemoryBackend {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            registry: Mutex::default(),
        }
    }
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

    fn shard(&self, obj: &ObjectRef) -> &Mutex<HashMap<ObjectRef, ObjectData>> {
        &self.shards[usize::from(obj.id.as_bytes()[0]) % SHARDS]
    }
}

impl Backend for MemoryBackend {
    async fn get(&self, obj: &ObjectRef, key: &str) -> Result<Option<Value>> {
        let st = lock(self.shard(obj));
        Ok(st.get(obj).and_then(|o| o.kv.get(key).cloned()))
    }

    async fn list(&self, obj: &ObjectRef, opts: &ListOptions) -> Result<Vec<(String, Value)>> {
        let st = lock(self.shard(obj));
        let Some(o) = st.get(obj) else {
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

    async fn get_alarm(&self, obj: &ObjectRef) -> Result<Option<i64>> {
        Ok(lock(self.shard(obj)).get(obj).and_then(|o| o.alarm))
    }

    async fn due_alarms(
        &self,
        class: &'static str,
        after: Option<(i64, ObjectId)>,
        until_ms: i64,
        limit: usize,
    ) -> Result<Vec<(i64, ObjectId)>> {
        let mut out = Vec::new();
        for shard in &self.shards {
            out.extend(
                lock(shard)
                    .iter()
                    .filter(|(r, _)| r.class == class)
                    .filter_map(|(r, o)| o.alarm.map(|a| (a, r.id)))
                    .filter(|k| k.0 <= until_ms && after.is_none_or(|a| *k > a)),
            );
        }
        out.sort_unstable();
        out.truncate(limit);
        Ok(out)
    }

    async fn alarm_classes(&self) -> Result<Vec<String>> {
        let mut classes = std::collections::BTreeSet::new();
        for shard in &self.shards {
            classes.extend(
                lock(shard)
                    .iter()
                    .filter(|(_, o)| o.alarm.is_some())
                    .map(|(r, _)| r.class),
            );
        }
        Ok(classes.into_iter().map(str::to_owned).collect())
    }

    async fn objects(
        &self,
        class: &'static str,
        after: Option<ObjectId>,
        limit: usize,
    ) -> Result<Vec<ObjectEntry>> {
        let registry = lock(&self.registry);
        let lo = match after {
            Some(id) => Bound::Excluded((class, id)),
            None => Bound::Included((class, ObjectId::from_bytes([0; 32]))),
        };
        Ok(registry
            .range((
                lo,
                Bound::Included((class, ObjectId::from_bytes([0xff; 32]))),
            ))
            .take(limit)
            .map(|((_, id), name)| ObjectEntry::new(*id, name.as_deref().map(str::to_owned)))
            .collect())
    }

    async fn objects_by_name(
        &self,
        class: &'static str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<NamedObject>> {
        let registry = lock(&self.registry);
        let mut out: Vec<NamedObject> = registry
            .iter()
            .filter(|((c, _), _)| *c == class)
            .filter_map(|((_, id), name)| {
                let name = name.as_deref()?;
                (name.starts_with(prefix) && after.is_none_or(|a| name > a))
                    .then(|| NamedObject::new(*id, name.to_owned()))
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out.truncate(limit);
        Ok(out)
    }

    async fn object_name(&self, obj: &ObjectRef) -> Result<Option<String>> {
        Ok(lock(&self.registry)
            .get(&(obj.class, obj.id))
            .and_then(|n| n.as_deref().map(str::to_owned)))
    }

    fn submit(&self, mut batch: CommitBatch) {
        if batch.is_fenced() {
            batch.complete(Err(crate::Error::Reset));
            return;
        }
        let obj = batch.object;
        if batch.clear || batch.register.is_some() {
            let mut registry = lock(&self.registry);
            if batch.clear {
                registry.remove(&(obj.class, obj.id));
            }
            if let Some(name) = batch.register.take() {
                let entry = registry.entry((obj.class, obj.id)).or_default();
                if entry.is_none() {
                    *entry = name;
                }
            }
        }
        {
            let mut st = lock(self.shard(&obj));
            if batch.clear {
                st.remove(&obj);
            }
            let data = st.entry(obj).or_default();
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
            batch.alarm.apply(&mut data.alarm);
            if data.kv.is_empty() && data.alarm.is_none() {
                st.remove(&obj);
            }
        }
        batch.complete(Ok(()));
    }

    async fn flush(&self) -> Result<()> {
        Ok(())
    }
}

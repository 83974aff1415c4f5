//! The object: one per flag set. It holds the set's definition, its version and its audit
//! log; every change is checked, versioned and audited in one turn, and the compiled
//! snapshot of each committed version is published after its commit, for evaluation
//! without a turn.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use stead_core::{Context, DurableObject, Handler, Log, LogPage, LogQuery, Result};
use tokio::sync::watch;

use crate::client::FlagsConfig;
use crate::definition::{FlagDefinition, FlagSetDefinition};
use crate::error::FlagsError;
use crate::evaluate::Snapshot;

const DEFINITION: &str = "d";
/// The audit log, numbered by version.
const AUDIT: Log = Log::new("a/");

/// The committed snapshots of a runtime's flag sets, shared by the objects (which publish)
/// and every evaluator (which read). A snapshot is only ever replaced by a newer version.
/// Each is kept with when it was last published or confirmed, for a cluster node's bound
/// on staleness.
#[derive(Debug, Default)]
pub struct Snapshots {
    sets: RwLock<HashMap<String, (Arc<Snapshot>, tokio::time::Instant)>>,
    versions: RwLock<HashMap<String, watch::Sender<u64>>>,
}

impl Snapshots {
    /// The latest published snapshot of `set`, if one was published.
    pub fn get(&self, set: &str) -> Option<Arc<Snapshot>> {
        self.sets
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(set)
            .map(|(s, _)| s.clone())
    }

    /// The published snapshot of `set`, if it was published or confirmed within `max_age`.
    pub(crate) fn get_within(
        &self,
        set: &str,
        max_age: std::time::Duration,
    ) -> Option<Arc<Snapshot>> {
        self.sets
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(set)
            .filter(|(_, at)| at.elapsed() <= max_age)
            .map(|(s, _)| s.clone())
    }

    /// Publishes `snap` unless a newer version of the set is published already; the same
    /// version is confirmed (its time renewed). A set never configured (version 0) is not
    /// published: asking about names costs no memory.
    pub(crate) fn publish(&self, set: &str, snap: Arc<Snapshot>) {
        let version = snap.version();
        if version == 0 {
            return;
        }
        let now = tokio::time::Instant::now();
        {
            let mut sets = self.sets.write().unwrap_or_else(|e| e.into_inner());
            match sets.get_mut(set) {
                Some((old, _)) if old.version() > version => return,
                Some((old, at)) if old.version() == version => {
                    *at = now;
                    return;
                }
                _ => {
                    sets.insert(set.to_owned(), (snap, now));
                }
            }
        }
        // Only sets someone waits on have a channel.
        let versions = self.versions.read().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = versions.get(set) {
            tx.send_replace(version);
        }
    }

    /// A receiver of the set's published versions, starting at the published one; the
    /// set's channel exists while someone waits on it, and goes with the last
    /// [`VersionWatch`] dropped (however its wait ended), so that asking costs no memory.
    pub(crate) fn watch(self: &Arc<Self>, set: &str) -> VersionWatch {
        let mut versions = self.versions.write().unwrap_or_else(|e| e.into_inner());
        let rx = match versions.get(set) {
            Some(tx) => tx.subscribe(),
            None => {
                // Read under the channel map's lock: a publish after this sends to it.
                let current = self.get(set).map_or(0, |s| s.version());
                let (tx, rx) = watch::channel(current);
                versions.insert(set.to_owned(), tx);
                rx
            }
        };
        VersionWatch {
            rx: Some(rx),
            set: set.to_owned(),
            snapshots: self.clone(),
        }
    }

    /// How many sets have a waiting long-poll (each has a channel while it does).
    pub fn watched_sets(&self) -> usize {
        self.versions
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// How many sets are published in this process.
    pub fn published_sets(&self) -> usize {
        self.sets.read().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// One waiter on a set's versions; see [`Snapshots::watch`].
#[derive(Debug)]
pub(crate) struct VersionWatch {
    rx: Option<watch::Receiver<u64>>,
    set: String,
    snapshots: Arc<Snapshots>,
}

impl VersionWatch {
    /// Waits until the published version is not `version`.
    pub(crate) async fn changed_from(&mut self, version: u64) {
        if let Some(rx) = &mut self.rx {
            let _ = rx.wait_for(|v| *v != version).await;
        }
    }
}

impl Drop for VersionWatch {
    fn drop(&mut self) {
        drop(self.rx.take());
        let mut versions = self
            .snapshots
            .versions
            .write()
            .unwrap_or_else(|e| e.into_inner());
        if versions
            .get(&self.set)
            .is_some_and(|tx| tx.receiver_count() == 0)
        {
            versions.remove(&self.set);
        }
    }
}

/// What the flag-set object is given: its settings and where it publishes.
#[derive(Debug)]
pub struct FlagsEnv {
    /// The settings.
    pub config: FlagsConfig,
    /// The published snapshots.
    pub snapshots: Arc<Snapshots>,
}

/// Two environments are the same when their settings are.
impl PartialEq for FlagsEnv {
    fn eq(&self, other: &Self) -> bool {
        self.config == other.config
    }
}

/// The set as stored (written from a borrowed definition, read into an owned one).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Stored<D = FlagSetDefinition> {
    version: u64,
    updated_at: DateTime<Utc>,
    definition: D,
}

/// What a change did, as the audit log keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum AuditAction {
    /// The whole definition was replaced.
    Replace,
    /// One flag was created or replaced.
    PutFlag,
    /// One flag was deleted.
    DeleteFlag,
}

/// One entry of a set's audit log: who changed which flags when, before and after.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct AuditEntry {
    /// The version the change made.
    pub version: u64,
    /// When it committed.
    pub at: DateTime<Utc>,
    /// Who made it (as the caller named itself).
    pub actor: String,
    /// What kind of change.
    pub action: AuditAction,
    /// The flags it changed, by key.
    pub flags: Vec<String>,
    /// Each changed flag before (`null`: it did not exist).
    #[cfg_attr(feature = "http", schema(value_type = Object))]
    pub before: Map<String, Value>,
    /// Each changed flag after (`null`: it was deleted).
    #[cfg_attr(feature = "http", schema(value_type = Object))]
    pub after: Map<String, Value>,
    /// Whether `before` and `after` were left out because together they are larger than
    /// one stored value (the keys in `flags` are always there).
    #[serde(default)]
    pub truncated: bool,
}

/// One flag set: definition, version, audit log.
#[derive(Debug)]
pub struct FlagSet {
    /// The committed version, compiled: the set's whole state in memory.
    snapshot: Arc<Snapshot>,
    env: Arc<FlagsEnv>,
}

impl DurableObject for FlagSet {
    const CLASS: &'static str = "flagset";
    type Env = FlagsEnv;

    fn remote(remote: &mut stead_core::Remote<Self>) {
        remote
            .message::<Configure>()
            .message::<DeleteFlag>()
            .message::<Inspect>()
            .message::<PutFlag>()
            .message::<ReadAudit>();
    }

    async fn activate(ctx: &mut Context, env: Arc<FlagsEnv>) -> Result<Self> {
        let stored: Stored = ctx.storage().get(DEFINITION).await?.unwrap_or(Stored {
            version: 0,
            updated_at: DateTime::<Utc>::UNIX_EPOCH,
            definition: FlagSetDefinition {
                flags: Default::default(),
                evaluators: Map::new(),
                metadata: Map::new(),
            },
        });
        let version = stored.version;
        let snapshot = Arc::new(Snapshot::new(version, stored.definition));
        env.snapshots
            .publish(ctx.name().unwrap_or_default(), snapshot.clone());
        Ok(FlagSet { snapshot, env })
    }
}

/// How a change is made: by whom, and against which version.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Edit {
    /// Who makes the change (kept in the audit log).
    pub actor: Option<String>,
    /// The version the change was made against: a set at another version refuses it with
    /// [`FlagsError::VersionConflict`]. `None` changes whatever version is there.
    pub expect_version: Option<u64>,
}

impl Edit {
    /// A change by `actor`.
    pub fn by(actor: &str) -> Self {
        Edit {
            actor: Some(actor.to_owned()),
            expect_version: None,
        }
    }

    /// Only if the set is at `version`.
    pub fn if_version(mut self, version: u64) -> Self {
        self.expect_version = Some(version);
        self
    }
}

/// What a change did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Changed {
    /// The set's snapshot after it (the version it made, or the same version when nothing
    /// changed).
    pub snapshot: Arc<Snapshot>,
    /// Whether anything changed (a definition equal to the current one changes nothing and
    /// makes no version).
    pub changed: bool,
}

/// Replaces the whole definition.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Configure {
    /// The new definition (checked).
    pub definition: FlagSetDefinition,
    /// By whom and against which version.
    pub edit: Edit,
}

/// Creates or replaces one flag.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PutFlag {
    /// Its key.
    pub key: String,
    /// Its definition (checked; its `$ref`s are checked against the set).
    pub flag: FlagDefinition,
    /// By whom and against which version.
    pub edit: Edit,
}

/// Deletes one flag.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeleteFlag {
    /// Its key.
    pub key: String,
    /// By whom and against which version.
    pub edit: Edit,
}

/// The set's current snapshot.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Inspect;

/// Asks for a page of the audit log (numbered by version).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct ReadAudit(pub LogQuery);

fn flag_json(f: Option<&FlagDefinition>) -> Value {
    f.map_or(Value::Null, |f| {
        serde_json::to_value(f).expect("a flag serializes")
    })
}

impl FlagSet {
    fn check_version(&self, edit: &Edit) -> Result<(), FlagsError> {
        match edit.expect_version {
            Some(v) if v != self.snapshot.version() => Err(FlagsError::VersionConflict {
                current: self.snapshot.version(),
            }),
            _ => Ok(()),
        }
    }

    /// Commits `next` as the next version, audited, and publishes it after the commit. Its
    /// targeting rules are compiled here, once: a rule that cannot be compiled refuses it.
    async fn commit(
        &mut self,
        ctx: &mut Context,
        next: FlagSetDefinition,
        action: AuditAction,
        edit: Edit,
    ) -> Result<Changed, FlagsError> {
        let old = self.snapshot.definition();
        let mut keys: Vec<String> = old
            .flags
            .keys()
            .chain(next.flags.keys())
            .filter(|k| old.flags.get(*k) != next.flags.get(*k))
            .cloned()
            .collect();
        keys.sort();
        keys.dedup();
        if keys.is_empty() && old.evaluators == next.evaluators && old.metadata == next.metadata {
            return Ok(Changed {
                snapshot: self.snapshot.clone(),
                changed: false,
            });
        }
        let max = self.env.config.max_definition_bytes;
        let size = serde_json::to_vec(&next).map_or(usize::MAX, |v| v.len());
        let version = self.snapshot.version() + 1;
        let before: Map<String, Value> = keys
            .iter()
            .map(|k| (k.clone(), flag_json(old.flags.get(k))))
            .collect();
        let snapshot = Arc::new(Snapshot::compile(version, next)?);
        if size > max {
            return Err(FlagsError::TooLarge { size, max });
        }
        let next = snapshot.definition();
        let now = ctx.now();
        let mut entry = AuditEntry {
            version,
            at: now,
            actor: edit.actor.unwrap_or_else(|| "unknown".to_owned()),
            action,
            before,
            after: keys
                .iter()
                .map(|k| (k.clone(), flag_json(next.flags.get(k))))
                .collect(),
            flags: keys,
            truncated: false,
        };
        let room = self.env.config.max_definition_bytes;
        if serde_json::to_vec(&entry).map_or(usize::MAX, |v| v.len()) > room {
            entry.before.clear();
            entry.after.clear();
            entry.truncated = true;
        }
        let stored = Stored {
            version,
            updated_at: now,
            definition: next,
        };
        ctx.storage().put(DEFINITION, &stored)?;
        let keep = self.env.config.max_audit_entries as u64;
        AUDIT.append(ctx.storage(), version, &entry, keep)?;
        self.snapshot = snapshot.clone();
        let (snapshots, name, published) = (
            self.env.snapshots.clone(),
            ctx.name().unwrap_or_default().to_owned(),
            snapshot.clone(),
        );
        // Published once durable, and before the reply leaves: a caller that has the reply
        // never evaluates an older version.
        ctx.after_commit(move || snapshots.publish(&name, published));
        Ok(Changed {
            snapshot,
            changed: true,
        })
    }
}

impl Handler<Configure> for FlagSet {
    type Reply = Result<Changed, FlagsError>;
    async fn handle(&mut self, msg: Configure, ctx: &mut Context) -> Self::Reply {
        self.check_version(&msg.edit)?;
        self.commit(ctx, msg.definition, AuditAction::Replace, msg.edit)
            .await
    }
}

impl Handler<PutFlag> for FlagSet {
    type Reply = Result<Changed, FlagsError>;
    async fn handle(&mut self, msg: PutFlag, ctx: &mut Context) -> Self::Reply {
        self.check_version(&msg.edit)?;
        let mut next = self.snapshot.definition().clone();
        if !next.flags.contains_key(&msg.key) && next.flags.len() >= crate::MAX_FLAGS {
            return Err(stead_core::InvalidInput::new(format!(
                "a flag set holds at most {} flags",
                crate::MAX_FLAGS
            ))
            .into());
        }
        next.flags.insert(msg.key.clone(), msg.flag);
        // Only the flag sent can be at fault (the others compiled before); it was sent
        // alone, so its fault's pointer is relative to it.
        let base = format!("/flags/{}", msg.key.replace('~', "~0").replace('/', "~1"));
        self.commit(ctx, next, AuditAction::PutFlag, msg.edit)
            .await
            .map_err(|e| match e {
                FlagsError::Definition(mut d) => {
                    d.path = d.path.strip_prefix(&base).unwrap_or(&d.path).to_owned();
                    FlagsError::Definition(d)
                }
                other => other,
            })
    }
}

impl Handler<DeleteFlag> for FlagSet {
    type Reply = Result<Changed, FlagsError>;
    async fn handle(&mut self, msg: DeleteFlag, ctx: &mut Context) -> Self::Reply {
        self.check_version(&msg.edit)?;
        let mut next = self.snapshot.definition().clone();
        if next.flags.remove(&msg.key).is_none() {
            return Err(FlagsError::FlagNotFound {
                set: ctx.name().unwrap_or_default().to_owned(),
                key: msg.key,
            });
        }
        self.commit(ctx, next, AuditAction::DeleteFlag, msg.edit)
            .await
    }
}

impl Handler<Inspect> for FlagSet {
    type Reply = Result<Arc<Snapshot>, FlagsError>;
    async fn handle(&mut self, _msg: Inspect, _ctx: &mut Context) -> Self::Reply {
        Ok(self.snapshot.clone())
    }
}

impl Handler<ReadAudit> for FlagSet {
    type Reply = Result<LogPage<AuditEntry>, FlagsError>;
    async fn handle(&mut self, msg: ReadAudit, ctx: &mut Context) -> Self::Reply {
        Ok(AUDIT.page(ctx.storage(), &msg.0).await?)
    }
}

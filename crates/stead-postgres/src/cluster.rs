//! Partitioned ownership: objects hash into a fixed number of partitions, each with its own
//! lease row (holder, epoch, expiry on PostgreSQL's clock), spread over the live members of
//! the deployment.
//!
//! Every node registers in the `members` table and beats its heart there once per round
//! (three rounds per lease duration). From the live members (a heartbeat younger than one
//! lease) every node computes the same placement: the owner a partition should have is the
//! member that ranks highest for it by rendezvous hashing, so a member that joins or leaves
//! moves only the partitions it wins or held. A round renews every partition the node holds
//! (one statement), hands over at most [`ClusterOptions::max_moves`] partitions that now
//! belong elsewhere (new turns stop first, commits in flight finish, then the lease is given
//! back), and takes the partitions it should own whose lease is free or expired (and any
//! partition left expired for a whole lease, whoever should own it). Ownership ends only
//! when a lease ends: a node counts a partition as held until its own monotonic clock says
//! the lease may have expired, and every commit re-checks the epochs of the partitions it
//! writes in its own transaction, as the single lease does.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use stead_core::{Handover, ObjectRef, Result};
use tokio::sync::{oneshot, watch};

use crate::lease::LeaseState;
use crate::schema::{Sql, describe};
use crate::{lock, pg_err};

/// Options of a partitioned cluster (see [`PostgresOptions::cluster`](crate::PostgresOptions::cluster)).
///
/// ```
/// use stead_postgres::{ClusterOptions, PostgresOptions};
///
/// let opts = PostgresOptions::new("postgres://stead@db.internal/app")
///     .cluster(ClusterOptions::new("10.0.0.7:8080").partitions(256));
/// assert_eq!(opts.cluster.unwrap().partitions, 256);
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClusterOptions {
    /// How many partitions the deployment has (256). Fixed when the deployment is created
    /// (stored in the schema): a node started with another count is refused.
    pub partitions: u32,
    /// The address other nodes reach this one at (`host:port`), recorded in the members
    /// table.
    pub advertise: String,
    /// At most this many partitions are handed over to other nodes per round (16), so that
    /// a node joining a busy cluster takes its share in steps.
    pub max_moves: usize,
}

impl ClusterOptions {
    /// Options for a node that peers reach at `advertise`, with the defaults.
    pub fn new(advertise: impl Into<String>) -> Self {
        ClusterOptions {
            partitions: 256,
            advertise: advertise.into(),
            max_moves: 16,
        }
    }

    /// The same options with `n` partitions.
    pub fn partitions(mut self, n: u32) -> Self {
        self.partitions = n;
        self
    }

    /// The same options, handing over at most `n` partitions per round.
    pub fn max_moves(mut self, n: usize) -> Self {
        self.max_moves = n;
        self
    }
}

/// The most partitions a deployment may have.
pub const MAX_PARTITIONS: u32 = 65_536;

/// The partition an object belongs to among `count`: the 64-bit FNV-1a hash of its class's
/// UTF-8 bytes, one `0xff` byte (which UTF-8 never contains), and its 32-byte id, modulo
/// `count`. Written down here and never changed: every node of every version places an
/// object in the same partition.
///
/// ```
/// use stead_core::{ObjectId, ObjectRef};
///
/// let obj = ObjectRef { class: "counter", id: ObjectId::from_bytes([7; 32]) };
/// let p = stead_postgres::partition_of(&obj, 256);
/// assert!(p < 256);
/// assert_eq!(p, stead_postgres::partition_of(&obj, 256));
/// ```
pub fn partition_of(obj: &ObjectRef, count: u32) -> u32 {
    let mut h = Fnv::new();
    h.write(obj.class.as_bytes());
    h.write(&[0xff]);
    h.write(&obj.id.as_bytes()[..]);
    (h.0 % u64::from(count.max(1))) as u32
}

/// 64-bit FNV-1a.
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// How much `node` wants partition `p` (rendezvous hashing): FNV-1a of the name and the
/// partition, mixed by SplitMix64's finalizer so that close inputs rank far apart.
fn score(node: &str, p: u32) -> u64 {
    let mut h = Fnv::new();
    h.write(node.as_bytes());
    h.write(&[0xff]);
    h.write(&p.to_be_bytes());
    let mut z = h.0;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The member that should own partition `p`: the highest score by node name, ties (two
/// processes of one name) to the greater holder.
pub(crate) fn placement(members: &[Member], p: u32) -> Option<&Member> {
    members
        .iter()
        .max_by(|a, b| (score(&a.node, p), &a.holder).cmp(&(score(&b.node, p), &b.holder)))
}

/// A live member of the deployment, as the last round saw it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct Member {
    /// The process holding leases: its node name with a nonce of the process.
    pub holder: String,
    /// The node's name.
    pub node: String,
    /// Where peers reach it.
    pub address: String,
    /// How many partitions it holds (unexpired leases).
    pub partitions: u32,
}

/// What a node knows of the cluster, from its last round.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct ClusterView {
    /// This process's holder name.
    pub holder: String,
    /// How many partitions the deployment has.
    pub partitions: u32,
    /// The live members, by holder.
    pub members: Vec<Member>,
    /// The partitions this node holds, with their epochs.
    pub held: BTreeMap<u32, u64>,
    /// Partitions whose lease is held by a node other than the one that should own them
    /// (or by none): moves still to make.
    pub moving: u32,
}

/// What the node holds, shared by readers, writers and the round task.
#[derive(Debug)]
pub(crate) struct Partitions {
    pub(crate) holder: String,
    node: String,
    address: String,
    pub(crate) count: u32,
    pub(crate) duration: Duration,
    max_moves: usize,
    /// Per partition, the epoch new turns and reads run under (0: not held).
    serving: Box<[AtomicU64]>,
    /// Per partition, the epoch commits may still be made under: the serving one, or the
    /// one being handed over while its commits in flight finish (0: none).
    committing: Box<[AtomicU64]>,
    /// Until when, in nanoseconds after `base` on this node's monotonic clock, the epochs
    /// held count as valid (every round renews them all at once).
    valid_until_ns: AtomicU64,
    base: Instant,
    state: watch::Sender<LeaseState>,
    view: std::sync::Mutex<ClusterView>,
    /// Per partition, the address of the other member that held its lease at the last
    /// round (`None`: this node, nobody, or a holder no longer a member).
    owners: std::sync::RwLock<Arc<[Option<Arc<str>>]>>,
    /// Counts the rounds that took partitions, for the runtime to read their alarms.
    pub(crate) takeovers: watch::Sender<u64>,
    /// What the runtime does before objects leave (closes their WebSockets).
    pub(crate) handover: HandoverHook,
}

/// The runtime's [`Handover`], once it registered it.
#[derive(Default)]
pub(crate) struct HandoverHook(pub(crate) std::sync::RwLock<Option<Handover>>);

impl std::fmt::Debug for HandoverHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HandoverHook")
    }
}

impl Partitions {
    pub(crate) fn new(
        holder: String,
        node: String,
        duration: Duration,
        opts: &ClusterOptions,
    ) -> Self {
        let zeros = || (0..opts.partitions).map(|_| AtomicU64::new(0)).collect();
        Partitions {
            view: std::sync::Mutex::new(ClusterView {
                holder: holder.clone(),
                partitions: opts.partitions,
                ..ClusterView::default()
            }),
            holder,
            node,
            address: opts.advertise.clone(),
            count: opts.partitions,
            duration,
            max_moves: opts.max_moves.max(1),
            serving: zeros(),
            committing: zeros(),
            valid_until_ns: AtomicU64::new(0),
            base: Instant::now(),
            state: watch::Sender::new(LeaseState::Starting),
            owners: std::sync::RwLock::new((0..opts.partitions).map(|_| None).collect()),
            takeovers: watch::Sender::new(0),
            handover: HandoverHook::default(),
        }
    }

    /// Tells the runtime that the objects of partitions `ps` leave this node, and waits
    /// for it (their WebSockets close while this node still owns them).
    pub(crate) fn hand_over(&self, ps: &[u32]) -> futures_util::future::BoxFuture<'static, ()> {
        let hook = self
            .handover
            .0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let (Some(hook), false) = (hook, ps.is_empty()) else {
            return Box::pin(async {});
        };
        let count = self.count;
        let leaving: std::collections::HashSet<u32> = ps.iter().copied().collect();
        hook(Arc::new(move |obj| {
            leaving.contains(&partition_of(obj, count))
        }))
    }

    /// Where `obj` lives, as this node saw at its last round.
    pub(crate) fn locate(&self, obj: &ObjectRef) -> stead_core::Location {
        let p = self.partition(obj);
        if self.serving(p).is_some() {
            return stead_core::Location::Here;
        }
        let owner = self
            .owners
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(p as usize)
            .cloned()
            .flatten();
        match owner {
            Some(address) => stead_core::Location::At(address),
            None => stead_core::Location::Unknown,
        }
    }

    pub(crate) fn partition(&self, obj: &ObjectRef) -> u32 {
        partition_of(obj, self.count)
    }

    fn valid(&self) -> bool {
        self.nanos(Instant::now()) < self.valid_until_ns.load(Ordering::Acquire)
    }

    /// The epoch new turns and reads of partition `p` run under, if held and not possibly
    /// expired.
    pub(crate) fn serving(&self, p: u32) -> Option<u64> {
        let e = self.serving.get(p as usize)?.load(Ordering::Acquire);
        (e != 0 && self.valid()).then_some(e)
    }

    /// The epoch a commit of partition `p` may be made under, if any.
    pub(crate) fn committing(&self, p: u32) -> Option<u64> {
        let e = self.committing.get(p as usize)?.load(Ordering::Acquire);
        (e != 0 && self.valid()).then_some(e)
    }

    /// The partitions this node serves now.
    pub(crate) fn serving_now(&self) -> Vec<i32> {
        if !self.valid() {
            return Vec::new();
        }
        (0..self.count)
            .filter(|&p| self.serving[p as usize].load(Ordering::Acquire) != 0)
            .map(|p| p as i32)
            .collect()
    }

    pub(crate) fn view(&self) -> ClusterView {
        lock(&self.view).clone()
    }

    pub(crate) fn state(&self) -> LeaseState {
        self.state.borrow().clone()
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<LeaseState> {
        self.state.subscribe()
    }

    pub(crate) fn set(&self, state: LeaseState) {
        self.state.send_if_modified(|s| {
            let changed = *s != state;
            *s = state;
            changed
        });
    }

    /// Whether the node has joined (its first round went through) and is not closed.
    pub(crate) fn joined(&self) -> bool {
        matches!(*self.state.borrow(), LeaseState::Member { .. }) && self.valid()
    }

    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX)
    }

    fn hold(&self, p: u32, epoch: u64) {
        self.committing[p as usize].store(epoch, Ordering::Release);
        self.serving[p as usize].store(epoch, Ordering::Release);
    }

    fn drop_partition(&self, p: u32) {
        self.serving[p as usize].store(0, Ordering::Release);
        self.committing[p as usize].store(0, Ordering::Release);
    }

    /// Every partition held, by the epochs commits are made under.
    fn held(&self) -> Vec<(u32, u64)> {
        (0..self.count)
            .filter_map(|p| {
                let e = self.committing[p as usize].load(Ordering::Acquire);
                (e != 0).then_some((p, e))
            })
            .collect()
    }
}

/// Waits until every commit submitted before the call is complete.
pub(crate) type Flush = Box<dyn Fn() -> futures_util::future::BoxFuture<'static, ()> + Send + Sync>;

/// One lease row as a round reads it.
struct Row {
    holder: String,
    /// Milliseconds until it expires (negative: expired that long ago).
    ms_left: i64,
}

/// Runs rounds until `stop` fires; then hands every partition back and leaves.
pub(crate) async fn run(
    parts: Arc<Partitions>,
    pool: Pool,
    sql: Arc<Sql>,
    flush: Flush,
    mut stop: oneshot::Receiver<()>,
) {
    let every = parts.duration / 3;
    let ms = i64::try_from(parts.duration.as_millis()).unwrap_or(i64::MAX);
    loop {
        let sent = Instant::now();
        let wait = match round(&parts, &pool, &sql, &flush, ms, sent).await {
            Ok(next) => next.clamp(Duration::from_millis(20), every),
            Err(e) => {
                if !parts.valid() {
                    // Nothing held counts any more: new turns already stop; say why.
                    let held: Vec<u32> = parts.held().into_iter().map(|(p, _)| p).collect();
                    for p in &held {
                        parts.drop_partition(*p);
                    }
                    tokio::spawn(parts.hand_over(&held));
                    parts.set(LeaseState::Standby {
                        reason: format!("cannot reach PostgreSQL for its leases: {e}"),
                    });
                }
                tracing::warn!(holder = %parts.holder, error = %e, "a cluster round failed");
                (every / 2).max(Duration::from_millis(50))
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = &mut stop => {
                leave(&parts, &pool, &sql, &flush).await;
                parts.set(LeaseState::Closed);
                return;
            }
        }
    }
}

/// One round: heartbeat, placement, renewals, handovers, takeovers. Answers how soon the
/// next round should run (sooner than a third of a lease when a lease it wants expires, or
/// a member's heartbeat does, before then).
async fn round(
    parts: &Partitions,
    pool: &Pool,
    sql: &Sql,
    flush: &Flush,
    ms: i64,
    sent: Instant,
) -> std::result::Result<Duration, String> {
    let client = pool.get().await.map_err(|e| e.to_string())?;
    client
        .execute(
            &sql.member_heartbeat,
            &[&parts.holder, &parts.node, &parts.address],
        )
        .await
        .map_err(|e| describe(&e))?;
    let members = client
        .query(&sql.members_live, &[&ms])
        .await
        .map_err(|e| describe(&e))?;
    let mut soonest = i64::MAX;
    let mut live: Vec<Member> = Vec::with_capacity(members.len());
    for r in &members {
        soonest = soonest.min(r.get::<_, i64>(3));
        live.push(Member {
            holder: r.get(0),
            node: r.get(1),
            address: r.get(2),
            partitions: 0,
        });
    }
    let count = i32::try_from(parts.count).unwrap_or(i32::MAX);
    let rows: HashMap<u32, Row> = client
        .query(&sql.partitions_read, &[&count])
        .await
        .map_err(|e| describe(&e))?
        .iter()
        .map(|r| {
            (
                r.get::<_, i32>(0).unsigned_abs(),
                Row {
                    holder: r.get(1),
                    ms_left: r.get(2),
                },
            )
        })
        .collect();
    drop(client);

    // Renew what this node holds; what does not come back is lost.
    let held = parts.held();
    if !held.is_empty() {
        let ps: Vec<i32> = held.iter().map(|(p, _)| *p as i32).collect();
        let es: Vec<i64> = held.iter().map(|(_, e)| *e as i64).collect();
        let client = pool.get().await.map_err(|e| e.to_string())?;
        let renewed: Vec<u32> = client
            .query(&sql.partitions_renew, &[&ps, &es, &ms, &parts.holder])
            .await
            .map_err(|e| describe(&e))?
            .iter()
            .map(|r| r.get::<_, i32>(0).unsigned_abs())
            .collect();
        let mut lost = Vec::new();
        for (p, e) in &held {
            if !renewed.contains(p) {
                tracing::error!(holder = %parts.holder, partition = p, epoch = e,
                    "lost the lease of a partition: its objects stop here");
                parts.drop_partition(*p);
                lost.push(*p);
            }
        }
        // Their sockets close (their close turns cannot commit here any more).
        tokio::spawn(parts.hand_over(&lost));
    }
    parts.valid_until_ns.store(
        parts.nanos(sent + parts.duration * 9 / 10),
        Ordering::Release,
    );

    // Hand over, a few at a time, what now belongs to another live member.
    let me = parts.holder.as_str();
    let mut away: Vec<(u32, u64)> = Vec::new();
    for (p, e) in parts.held() {
        if away.len() >= parts.max_moves {
            break;
        }
        if placement(&live, p).is_some_and(|m| m.holder != me) {
            away.push((p, e));
        }
    }
    if !away.is_empty() {
        match give_up(parts, pool, sql, flush, &away).await {
            Ok(n) => tracing::info!(holder = %me, partitions = n, "handed partitions over"),
            Err(e) => tracing::warn!(holder = %me, error = %e,
                "could not give partitions back; they move when their leases expire"),
        }
    }

    // Take what this node should own and is free, and what was left expired for a lease.
    let mut take: Vec<i32> = Vec::new();
    for p in 0..parts.count {
        if parts.committing[p as usize].load(Ordering::Acquire) != 0 {
            continue;
        }
        let mine = placement(&live, p).is_some_and(|m| m.holder == me);
        match rows.get(&p) {
            None if mine => take.push(p as i32),
            Some(r) if r.ms_left <= 0 && (mine || r.ms_left <= -ms) => take.push(p as i32),
            Some(r) if mine && r.ms_left > 0 => soonest = soonest.min(r.ms_left),
            _ => {}
        }
    }
    if !take.is_empty() {
        let mut client = pool.get().await.map_err(|e| e.to_string())?;
        let tx = client.transaction().await.map_err(|e| describe(&e))?;
        // Waits for every commit that holds these partitions' locks; later ones wait for
        // this transaction, then see the new epochs.
        tx.query(&sql.lease_fence, &[&take, &sql.lock_space])
            .await
            .map_err(|e| describe(&e))?;
        tx.query(&sql.partitions_lock, &[&take])
            .await
            .map_err(|e| describe(&e))?;
        let got = tx
            .query(&sql.partitions_acquire, &[&take, &parts.holder, &ms])
            .await
            .map_err(|e| describe(&e))?;
        if let Some(audit) = &sql.audit {
            let ps: Vec<i32> = got.iter().map(|r| r.get(0)).collect();
            let es: Vec<i64> = got.iter().map(|r| r.get(1)).collect();
            tx.execute(&audit.acquire, &[&ps, &es, &parts.holder])
                .await
                .map_err(|e| describe(&e))?;
        }
        tx.commit().await.map_err(|e| describe(&e))?;
        for r in &got {
            let (p, e) = (
                r.get::<_, i32>(0).unsigned_abs(),
                r.get::<_, i64>(1).unsigned_abs(),
            );
            parts.hold(p, e);
        }
        if !got.is_empty() {
            tracing::info!(holder = %me, partitions = got.len(), "took partitions");
            parts.takeovers.send_modify(|n| *n += 1);
        }
    }

    // The view: who holds what, and how many partitions are not where they should be.
    let mut view = ClusterView {
        holder: parts.holder.clone(),
        partitions: parts.count,
        held: parts.held().into_iter().collect(),
        ..ClusterView::default()
    };
    let mut holds: HashMap<&str, u32> = HashMap::new();
    for (p, r) in &rows {
        if parts.committing[*p as usize].load(Ordering::Acquire) != 0 {
            continue;
        }
        if r.ms_left > 0 {
            *holds.entry(r.holder.as_str()).or_default() += 1;
        }
    }
    *holds.entry(me).or_default() = view.held.len() as u32;
    for p in 0..parts.count {
        let holder = if view.held.contains_key(&p) {
            Some(me)
        } else {
            rows.get(&p)
                .filter(|r| r.ms_left > 0)
                .map(|r| r.holder.as_str())
        };
        if placement(&live, p).map(|m| m.holder.as_str()) != holder {
            view.moving += 1;
        }
    }
    for m in &mut live {
        m.partitions = holds.get(m.holder.as_str()).copied().unwrap_or(0);
    }
    view.members = live;
    // Where each partition held elsewhere is served, for calls to forward there.
    let addresses: HashMap<&str, &str> = view
        .members
        .iter()
        .map(|m| (m.holder.as_str(), m.address.as_str()))
        .collect();
    let owners: Arc<[Option<Arc<str>>]> = (0..parts.count)
        .map(|p| {
            rows.get(&p)
                .filter(|r| r.ms_left > 0 && r.holder != me)
                .and_then(|r| addresses.get(r.holder.as_str()))
                .map(|a| Arc::from(*a))
        })
        .collect();
    *parts.owners.write().unwrap_or_else(|e| e.into_inner()) = owners;
    let held_count = view.held.len() as u32;
    *lock(&parts.view) = view;
    parts.set(LeaseState::Member {
        partitions: held_count,
    });
    Ok(
        Duration::from_millis(u64::try_from(soonest.max(0)).unwrap_or(u64::MAX))
            + Duration::from_millis(5),
    )
}

/// Gives partitions `held` up: their objects' WebSockets close (their close turns
/// committed here), new turns stop, the commits already queued finish (their callers get
/// their answers; later ones are refused by the fence), and the leases are given back.
/// Answers how many were.
async fn give_up(
    parts: &Partitions,
    pool: &Pool,
    sql: &Sql,
    flush: &Flush,
    held: &[(u32, u64)],
) -> std::result::Result<u64, String> {
    let ps: Vec<u32> = held.iter().map(|(p, _)| *p).collect();
    parts.hand_over(&ps).await;
    for p in &ps {
        parts.serving[*p as usize].store(0, Ordering::Release);
    }
    // A socket accepted meanwhile closes too (its object is no longer served here).
    tokio::spawn(parts.hand_over(&ps));
    flush().await;
    let es: Vec<i64> = held.iter().map(|(_, e)| *e as i64).collect();
    let ps: Vec<i32> = ps.iter().map(|p| *p as i32).collect();
    let released = async {
        let client = pool.get().await.map_err(|e| e.to_string())?;
        client
            .execute(&sql.partitions_release, &[&ps, &es, &parts.holder])
            .await
            .map_err(|e| describe(&e))
    }
    .await;
    for (p, _) in held {
        parts.drop_partition(*p);
    }
    released
}

/// A graceful stop: every partition is given up (see [`give_up`]) and the node leaves the
/// members table, so that the others take over at their next round.
async fn leave(parts: &Partitions, pool: &Pool, sql: &Sql, flush: &Flush) {
    let held = parts.held();
    let result = async {
        if !held.is_empty() {
            give_up(parts, pool, sql, flush, &held).await?;
        }
        let client = pool.get().await.map_err(|e| e.to_string())?;
        client
            .execute(&sql.member_leave, &[&parts.holder])
            .await
            .map_err(|e| describe(&e))
    }
    .await;
    if let Err(e) = result {
        tracing::warn!(error = %e, "could not give partitions back; others take them when their leases expire");
    }
}

/// Records the deployment's partition count when it is created, and checks it when it
/// exists: a node with another count (or of the other mode) is refused.
pub(crate) async fn check_deployment(
    client: &deadpool_postgres::Object,
    sql: &Sql,
    schema: &str,
    partitions: Option<u32>,
) -> Result<()> {
    let (mode, count) = match partitions {
        Some(n) => ("cluster", n),
        None => ("single", 1),
    };
    let count_i = i32::try_from(count).unwrap_or(i32::MAX);
    client
        .execute(&sql.deployment_create, &[&mode, &count_i])
        .await
        .map_err(pg_err)?;
    let row = client
        .query_one(&sql.deployment_read, &[])
        .await
        .map_err(pg_err)?;
    let (have_mode, have): (String, i32) = (row.get(0), row.get(1));
    if have_mode != mode || have != count_i {
        let what = |mode: &str, n: i32| match mode {
            "cluster" => format!("a cluster of {n} partitions"),
            _ => "one active node with standbys".to_owned(),
        };
        return Err(stead_core::Error::invalid_config(format!(
            "PostgreSQL schema {schema:?} holds a deployment of {}; this node was started as {}: \
             start it with the deployment's settings, or use another schema",
            what(&have_mode, have),
            what(mode, count_i),
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use stead_core::ObjectId;

    fn member(node: &str) -> Member {
        Member {
            holder: format!("{node}/0"),
            node: node.into(),
            address: String::new(),
            partitions: 0,
        }
    }

    #[test]
    fn the_partition_function_is_fixed() {
        // These values were computed apart from this code (FNV-1a written out in a few
        // lines of another language); a change here moves every object of every
        // deployment.
        let obj = |class, b| ObjectRef {
            class,
            id: ObjectId::from_bytes([b; 32]),
        };
        assert_eq!(partition_of(&obj("counter", 0), 256), 20);
        assert_eq!(partition_of(&obj("counter", 1), 256), 244);
        assert_eq!(partition_of(&obj("lock", 0), 256), 199);
        assert_eq!(partition_of(&obj("lock", 0), 1), 0);
        // Spread: 10,000 random ids over 256 partitions, none far from the mean.
        let mut n = [0u32; 256];
        for _ in 0..10_000 {
            let o = ObjectRef {
                class: "c",
                id: ObjectId::from_bytes(rand::random()),
            };
            n[partition_of(&o, 256) as usize] += 1;
        }
        assert!(n.iter().all(|&c| (10..=80).contains(&c)), "{n:?}");
    }

    #[test]
    fn placement_moves_little_when_a_member_joins_or_leaves() {
        let three: Vec<Member> = ["a", "b", "c"].map(member).into();
        let four: Vec<Member> = ["a", "b", "c", "d"].map(member).into();
        let owner = |ms: &[Member], p| placement(ms, p).unwrap().node.clone();
        let mut moved = 0;
        let mut per = HashMap::new();
        for p in 0..256 {
            let (before, after) = (owner(&three, p), owner(&four, p));
            *per.entry(before.clone()).or_insert(0) += 1;
            if before != after {
                // Only to the newcomer.
                assert_eq!(after, "d");
                moved += 1;
            }
        }
        // About a quarter moves, and each of three holds about a third before.
        assert!((40..=90).contains(&moved), "{moved}");
        assert!(per.values().all(|&n| (60..=110).contains(&n)), "{per:?}");
        // One leaves: only its partitions move.
        let two: Vec<Member> = ["a", "c"].map(member).into();
        for p in 0..256 {
            let before = owner(&three, p);
            if before != "b" {
                assert_eq!(owner(&two, p), before);
            }
        }
        assert!(placement(&[], 0).is_none());
    }
}

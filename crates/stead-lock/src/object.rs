//! The lock object: holders with fencing tokens, a FIFO queue of waiters, expiry by alarm.

use std::collections::VecDeque;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use stead_core::{AlarmInfo, Context, Deferred, DeferredHandler, DurableObject, Handler, Result};

use stead_core::InvalidInput;

use crate::client::LockConfig;
use crate::error::LockError;

/// The longest lease, and the longest wait, in milliseconds (one day).
pub const MAX_TTL_MS: u64 = 24 * 3600 * 1000;
/// The longest a caller may wait in the queue, in milliseconds (five minutes).
pub const MAX_WAIT_MS: u64 = 5 * 60 * 1000;
/// The most permits a semaphore may have.
pub const MAX_PERMITS: u32 = 10_000;
/// The longest holder name, in characters.
pub const MAX_HOLDER_CHARS: usize = stead_core::MAX_NAME_CHARS;

const STATE: &str = "state";

/// One lease on the lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct Lease {
    /// Who holds it.
    pub holder: String,
    /// Its fencing token: greater than every token issued before it.
    pub token: u64,
    /// When it lapses unless renewed.
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct State {
    /// The next token to hand out; only ever grows.
    next_token: u64,
    permits: u32,
    leases: Vec<Lease>,
}

#[derive(Debug)]
struct Waiter {
    holder: String,
    ttl_ms: u64,
    deadline: DateTime<Utc>,
    reply: Deferred<Result<AcquireReply, LockError>>,
}

/// A lock (or, with more than one permit, a counting semaphore).
#[derive(Debug)]
pub struct Lock {
    state: State,
    waiters: VecDeque<Waiter>,
    /// When the alarm is set for, if it is.
    alarm_at: Option<DateTime<Utc>>,
}

impl DurableObject for Lock {
    const CLASS: &'static str = "lock";
    type Env = LockConfig;

    fn remote(remote: &mut stead_core::Remote<Self>) {
        remote
            .message::<Acquire>()
            .message::<Renew>()
            .message::<Release>()
            .message::<Inspect>()
            .message::<Validate>();
    }

    async fn activate(ctx: &mut Context, _env: Arc<LockConfig>) -> Result<Self> {
        let state: State = ctx.storage().get(STATE).await?.unwrap_or_default();
        Ok(Lock {
            state,
            waiters: VecDeque::new(),
            alarm_at: ctx.storage().alarm().await?,
        })
    }

    async fn alarm(&mut self, ctx: &mut Context, _info: AlarmInfo) -> Result<()> {
        // The alarm that fired is spent.
        self.alarm_at = None;
        self.settle(ctx)
    }
}

/// Asks for a lease.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Acquire {
    /// Who asks (a client id, a host name...).
    pub holder: String,
    /// How long the lease lasts unless renewed.
    pub ttl_ms: u64,
    /// How long to wait in the queue when the lock is taken (0: answer at once).
    pub wait_ms: u64,
    /// How many holders the lock admits at once (1: a mutex).
    pub permits: u32,
}

/// The answer to [`Acquire`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct AcquireReply {
    /// Whether the lease was granted.
    pub acquired: bool,
    /// The fencing token of the granted lease.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<u64>,
    /// When the granted lease lapses.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    /// When refused: a current holder.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub holder: Option<String>,
    /// When refused: how long until the earliest lease lapses.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

impl DeferredHandler<Acquire> for Lock {
    type Reply = Result<AcquireReply, LockError>;
    async fn handle(
        &mut self,
        msg: Acquire,
        ctx: &mut Context,
        reply: Deferred<Result<AcquireReply, LockError>>,
    ) {
        // Answered now, unless the caller was put in line (which keeps the reply).
        let mut reply = Some(reply);
        let answer = self.acquire(msg, ctx, &mut reply).await;
        if let Some(reply) = reply {
            reply.complete(ctx, answer);
        }
    }
}

impl Lock {
    async fn acquire(
        &mut self,
        msg: Acquire,
        ctx: &mut Context,
        reply: &mut Option<Deferred<Result<AcquireReply, LockError>>>,
    ) -> Result<AcquireReply, LockError> {
        check_holder(&msg.holder)?;
        check_ttl(msg.ttl_ms)?;
        if msg.wait_ms > MAX_WAIT_MS {
            return Err(InvalidInput::new(format!("wait_ms may be at most {MAX_WAIT_MS}")).into());
        }
        if msg.permits == 0 || msg.permits > MAX_PERMITS {
            return Err(
                InvalidInput::new(format!("permits must be between 1 and {MAX_PERMITS}")).into(),
            );
        }
        self.expire(ctx.now());
        self.waiters.retain(|w| !w.reply.is_closed());
        if !self.state.leases.is_empty() && msg.permits != self.state.permits {
            return Err(LockError::PermitMismatch {
                permits: self.state.permits,
            });
        }
        self.state.permits = msg.permits;
        // Asking again for a lease already held answers with that lease (a safe retry).
        if let Some(lease) = self.state.leases.iter().find(|l| l.holder == msg.holder) {
            return Ok(granted(lease));
        }
        if self.has_room() && self.waiters.is_empty() {
            let lease = self.grant(ctx, msg.holder, msg.ttl_ms)?;
            self.arm(ctx)?;
            return Ok(granted(&lease));
        }
        if msg.wait_ms > 0 {
            // Wait in line: the reply is given in a later turn (a release, an expiry or the
            // deadline).
            if self.waiters.len() >= stead_core::MAX_PARKED_PER_OBJECT {
                return Err(stead_core::Error::too_many_waiting(Self::CLASS).into());
            }
            if let Some(reply) = reply.take() {
                let deadline = ctx.now() + chrono::Duration::milliseconds(msg.wait_ms as i64);
                self.waiters.push_back(Waiter {
                    holder: msg.holder,
                    ttl_ms: msg.ttl_ms,
                    deadline,
                    reply,
                });
                self.arm(ctx)?;
            }
            return Ok(self.refusal(ctx.now()));
        }
        Ok(self.refusal(ctx.now()))
    }
}

impl Lock {
    fn has_room(&self) -> bool {
        self.state.leases.len() < self.state.permits.max(1) as usize
    }

    /// Drops leases that have lapsed.
    fn expire(&mut self, now: DateTime<Utc>) {
        self.state.leases.retain(|l| l.expires_at > now);
    }

    fn grant(&mut self, ctx: &mut Context, holder: String, ttl_ms: u64) -> Result<Lease> {
        self.state.next_token += 1;
        let lease = Lease {
            holder,
            token: self.state.next_token,
            expires_at: ctx.now() + chrono::Duration::milliseconds(ttl_ms as i64),
        };
        self.state.leases.push(lease.clone());
        ctx.storage().put(STATE, &self.state)?;
        Ok(lease)
    }

    fn refusal(&self, now: DateTime<Utc>) -> AcquireReply {
        let first = self.state.leases.iter().min_by_key(|l| l.expires_at);
        AcquireReply {
            acquired: false,
            token: None,
            expires_at: None,
            holder: first.map(|l| l.holder.clone()),
            retry_after_ms: first.map(|l| (l.expires_at - now).num_milliseconds().max(0) as u64),
        }
    }

    /// Makes sure an alarm fires by the next lease expiry or waiter deadline. An alarm set
    /// earlier than that is left alone (it finds nothing to do, or less, and re-arms), and
    /// so is one with nothing left to wait for: a lock taken and given back in a loop then
    /// writes its alarm once per lease time instead of twice per pair.
    fn arm(&mut self, ctx: &mut Context) -> Result<()> {
        let next = self
            .state
            .leases
            .iter()
            .map(|l| l.expires_at)
            .chain(self.waiters.iter().map(|w| w.deadline))
            .min();
        match (next, self.alarm_at) {
            (Some(next), Some(set)) if set <= next => Ok(()),
            (Some(next), _) => {
                ctx.storage().set_alarm(next)?;
                self.alarm_at = Some(next);
                Ok(())
            }
            (None, _) => Ok(()),
        }
    }

    /// Expires lapsed leases, answers waiters whose deadline passed, grants the lock to the
    /// waiters at the head of the line while there is room, and re-arms the alarm.
    fn settle(&mut self, ctx: &mut Context) -> Result<()> {
        let now = ctx.now();
        let before = self.state.leases.len();
        self.expire(now);
        if self.state.leases.len() != before {
            ctx.storage().put(STATE, &self.state)?;
        }
        let mut waiting = VecDeque::new();
        for w in std::mem::take(&mut self.waiters) {
            if w.reply.is_closed() {
                continue;
            }
            if w.deadline <= now {
                let refusal = self.refusal(now);
                w.reply.complete(ctx, Ok(refusal));
            } else {
                waiting.push_back(w);
            }
        }
        self.waiters = waiting;
        while self.has_room() {
            let Some(w) = self.waiters.pop_front() else {
                break;
            };
            if w.reply.is_closed() {
                continue;
            }
            let lease = self.grant(ctx, w.holder, w.ttl_ms)?;
            w.reply.complete(ctx, Ok(granted(&lease)));
        }
        self.arm(ctx)
    }

    fn lease_of(&self, holder: &str, token: u64) -> Result<usize, LockError> {
        if let Some(i) = self
            .state
            .leases
            .iter()
            .position(|l| l.holder == holder && l.token == token)
        {
            return Ok(i);
        }
        Err(
            match self.state.leases.iter().find(|l| l.holder == holder) {
                Some(l) => LockError::StaleToken {
                    holder: holder.to_owned(),
                    token,
                    current: l.token,
                },
                None => LockError::NotHolder {
                    holder: holder.to_owned(),
                    token,
                },
            },
        )
    }
}

/// Extends a lease.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Renew {
    /// The holder of the lease.
    pub holder: String,
    /// Its token.
    pub token: u64,
    /// The new time to live, from now.
    pub ttl_ms: u64,
}

impl Handler<Renew> for Lock {
    type Reply = Result<Lease, LockError>;
    async fn handle(&mut self, msg: Renew, ctx: &mut Context) -> Result<Lease, LockError> {
        check_holder(&msg.holder)?;
        check_ttl(msg.ttl_ms)?;
        self.expire(ctx.now());
        let i = self.lease_of(&msg.holder, msg.token)?;
        self.state.leases[i].expires_at =
            ctx.now() + chrono::Duration::milliseconds(msg.ttl_ms as i64);
        ctx.storage().put(STATE, &self.state)?;
        self.arm(ctx)?;
        Ok(self.state.leases[i].clone())
    }
}

/// Gives a lease back.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Release {
    /// The holder of the lease.
    pub holder: String,
    /// Its token.
    pub token: u64,
}

impl Handler<Release> for Lock {
    type Reply = Result<(), LockError>;
    async fn handle(&mut self, msg: Release, ctx: &mut Context) -> Result<(), LockError> {
        check_holder(&msg.holder)?;
        self.expire(ctx.now());
        let i = self.lease_of(&msg.holder, msg.token)?;
        self.state.leases.remove(i);
        ctx.storage().put(STATE, &self.state)?;
        Ok(self.settle(ctx)?)
    }
}

/// What the lock looks like now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct LockState {
    /// How many holders it admits.
    pub permits: u32,
    /// The live leases.
    pub holders: Vec<Lease>,
    /// How many callers wait in line.
    pub waiters: usize,
    /// The last token handed out.
    pub last_token: u64,
}

impl stead_core::Outcome for LockState {}

/// Reads the lock's state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Inspect;

impl Handler<Inspect> for Lock {
    type Reply = LockState;
    async fn handle(&mut self, _: Inspect, ctx: &mut Context) -> LockState {
        self.expire(ctx.now());
        LockState {
            permits: self.state.permits.max(1),
            holders: self.state.leases.clone(),
            waiters: self.waiters.iter().filter(|w| !w.reply.is_closed()).count(),
            last_token: self.state.next_token,
        }
    }
}

/// Asks whether a token belongs to a live lease (for resource servers).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Validate {
    /// The token to check.
    pub token: u64,
}

/// The answer to [`Validate`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct Validity {
    /// Whether the token is held by a live lease now.
    pub valid: bool,
    /// The last token handed out: a resource can refuse anything below the highest it saw.
    pub last_token: u64,
}

impl stead_core::Outcome for Validity {}

impl Handler<Validate> for Lock {
    type Reply = Validity;
    async fn handle(&mut self, msg: Validate, ctx: &mut Context) -> Validity {
        self.expire(ctx.now());
        Validity {
            valid: self.state.leases.iter().any(|l| l.token == msg.token),
            last_token: self.state.next_token,
        }
    }
}

fn granted(lease: &Lease) -> AcquireReply {
    AcquireReply {
        acquired: true,
        token: Some(lease.token),
        expires_at: Some(lease.expires_at),
        holder: None,
        retry_after_ms: None,
    }
}

fn check_holder(holder: &str) -> Result<(), InvalidInput> {
    stead_core::validate_name("holder", holder)
}

fn check_ttl(ttl_ms: u64) -> Result<(), InvalidInput> {
    stead_core::validate_ms("ttl_ms", ttl_ms, MAX_TTL_MS)
}

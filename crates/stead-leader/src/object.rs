//! The election object: one leader per term, terms that only grow, expiry by alarm, and
//! watchers parked until the term moves.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use stead_core::{
    AlarmInfo, Context, Deferred, DeferredHandler, DurableObject, Handler, InvalidInput, Result,
};

use crate::client::LeaderConfig;
use crate::error::LeaderError;

/// The longest lease, in milliseconds (one hour).
pub const MAX_TTL_MS: u64 = 3600 * 1000;
/// The longest a watch may wait, in milliseconds (five minutes).
pub const MAX_WATCH_MS: u64 = 5 * 60 * 1000;
/// The longest candidate name, in characters.
pub const MAX_CANDIDATE_CHARS: usize = stead_core::MAX_NAME_CHARS;

const STATE: &str = "state";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct State {
    term: u64,
    leader: Option<String>,
    ttl_ms: u64,
    expires_at: Option<DateTime<Utc>>,
    /// How many times leadership changed hands.
    transitions: u64,
    /// Who led last (to count transitions).
    last_leader: Option<String>,
}

/// The group's leadership as seen now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct Leadership {
    /// The current leader, if a lease is live.
    pub leader: Option<String>,
    /// The current (or last) term: it only grows.
    pub term: u64,
    /// When the leader's lease lapses unless renewed.
    pub expires_at: Option<DateTime<Utc>>,
    /// How many times leadership changed hands.
    pub transitions: u64,
    /// How many watches are waiting for the next term.
    pub watchers: usize,
}

/// The answer to a campaign.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct CampaignResult {
    /// Whether the candidate leads now.
    pub elected: bool,
    /// Who leads.
    pub leader: Option<String>,
    /// The term it leads in.
    pub term: u64,
    /// When the lease lapses unless renewed.
    pub expires_at: Option<DateTime<Utc>>,
}

#[derive(Debug)]
struct Watcher {
    after_term: u64,
    deadline: DateTime<Utc>,
    reply: Deferred<Result<Leadership, LeaderError>>,
}

/// One election group.
#[derive(Debug)]
pub struct Election {
    state: State,
    watchers: Vec<Watcher>,
}

impl DurableObject for Election {
    const CLASS: &'static str = "leader";
    type Env = LeaderConfig;

    fn remote(remote: &mut stead_core::Remote<Self>) {
        remote
            .message::<Campaign>()
            .message::<Heartbeat>()
            .message::<Resign>()
            .message::<Inspect>()
            .message::<Watch>();
    }

    async fn activate(ctx: &mut Context, _env: Arc<LeaderConfig>) -> Result<Self> {
        Ok(Election {
            state: ctx.storage().get(STATE).await?.unwrap_or_default(),
            watchers: Vec::new(),
        })
    }

    async fn alarm(&mut self, ctx: &mut Context, _info: AlarmInfo) -> Result<()> {
        self.expire(ctx)?;
        self.wake(ctx);
        self.arm(ctx)
    }
}

impl Election {
    fn view(&self) -> Leadership {
        Leadership {
            leader: self.state.leader.clone(),
            term: self.state.term,
            expires_at: self.state.expires_at,
            transitions: self.state.transitions,
            watchers: self.watchers.len(),
        }
    }

    /// Ends a lapsed lease.
    fn expire(&mut self, ctx: &mut Context) -> Result<()> {
        if self.state.expires_at.is_some_and(|at| at <= ctx.now()) {
            self.state.leader = None;
            self.state.expires_at = None;
            ctx.storage().put(STATE, &self.state)?;
        }
        Ok(())
    }

    /// Answers watchers whose term passed, or whose wait ran out.
    fn wake(&mut self, ctx: &mut Context) {
        let now = ctx.now();
        let view = self.view();
        let mut keep = Vec::new();
        for w in std::mem::take(&mut self.watchers) {
            if w.reply.is_closed() {
                continue;
            }
            if view.term > w.after_term || w.deadline <= now {
                w.reply.complete(ctx, Ok(view.clone()));
            } else {
                keep.push(w);
            }
        }
        self.watchers = keep;
    }

    fn arm(&mut self, ctx: &mut Context) -> Result<()> {
        let next = self
            .state
            .expires_at
            .into_iter()
            .chain(self.watchers.iter().map(|w| w.deadline))
            .min();
        ctx.storage().replace_alarm(next)
    }

    fn check_leader(&self, candidate: &str, term: u64) -> Result<(), LeaderError> {
        match &self.state.leader {
            Some(l) if l == candidate && self.state.term == term => Ok(()),
            leader => Err(LeaderError::NotLeader {
                candidate: candidate.to_owned(),
                term,
                leader: leader.clone(),
                current_term: self.state.term,
            }),
        }
    }
}

/// Stands for election: wins when nobody leads (starting a new term), or renews when the
/// candidate already leads.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Campaign {
    /// Who stands.
    pub candidate: String,
    /// How long a won lease lasts unless renewed by heartbeats.
    pub ttl_ms: u64,
}

impl Handler<Campaign> for Election {
    type Reply = Result<CampaignResult, LeaderError>;
    async fn handle(
        &mut self,
        msg: Campaign,
        ctx: &mut Context,
    ) -> Result<CampaignResult, LeaderError> {
        check_candidate(&msg.candidate)?;
        check_ttl(msg.ttl_ms)?;
        self.expire(ctx)?;
        let now = ctx.now();
        let expires = now + chrono::Duration::milliseconds(msg.ttl_ms as i64);
        match &self.state.leader {
            None => {
                self.state.term += 1;
                if self.state.last_leader.as_deref() != Some(msg.candidate.as_str()) {
                    self.state.transitions += 1;
                }
                self.state.leader = Some(msg.candidate.clone());
                self.state.last_leader = Some(msg.candidate.clone());
                self.state.ttl_ms = msg.ttl_ms;
                self.state.expires_at = Some(expires);
                ctx.storage().put(STATE, &self.state)?;
                self.wake(ctx);
                self.arm(ctx)?;
            }
            Some(l) if *l == msg.candidate => {
                self.state.ttl_ms = msg.ttl_ms;
                self.state.expires_at = Some(expires);
                ctx.storage().put(STATE, &self.state)?;
                self.arm(ctx)?;
            }
            Some(_) => {}
        }
        Ok(CampaignResult {
            elected: self.state.leader.as_deref() == Some(msg.candidate.as_str()),
            leader: self.state.leader.clone(),
            term: self.state.term,
            expires_at: self.state.expires_at,
        })
    }
}

/// Renews the leader's lease for another TTL.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The leader.
    pub candidate: String,
    /// The term it leads.
    pub term: u64,
}

impl Handler<Heartbeat> for Election {
    type Reply = Result<Leadership, LeaderError>;
    async fn handle(
        &mut self,
        msg: Heartbeat,
        ctx: &mut Context,
    ) -> Result<Leadership, LeaderError> {
        check_candidate(&msg.candidate)?;
        self.expire(ctx)?;
        self.check_leader(&msg.candidate, msg.term)?;
        self.state.expires_at =
            Some(ctx.now() + chrono::Duration::milliseconds(self.state.ttl_ms as i64));
        ctx.storage().put(STATE, &self.state)?;
        self.arm(ctx)?;
        Ok(self.view())
    }
}

/// Steps down; the next campaign starts a new term.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Resign {
    /// The leader.
    pub candidate: String,
    /// The term it leads.
    pub term: u64,
}

impl Handler<Resign> for Election {
    type Reply = Result<Leadership, LeaderError>;
    async fn handle(&mut self, msg: Resign, ctx: &mut Context) -> Result<Leadership, LeaderError> {
        check_candidate(&msg.candidate)?;
        self.expire(ctx)?;
        self.check_leader(&msg.candidate, msg.term)?;
        self.state.leader = None;
        self.state.expires_at = None;
        ctx.storage().put(STATE, &self.state)?;
        self.arm(ctx)?;
        Ok(self.view())
    }
}

/// Reads the leadership.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Inspect;

impl Handler<Inspect> for Election {
    type Reply = Result<Leadership>;
    async fn handle(&mut self, _: Inspect, ctx: &mut Context) -> Result<Leadership> {
        self.expire(ctx)?;
        Ok(self.view())
    }
}

/// Waits until the term passes `after_term` (or `timeout_ms` runs out), then answers with
/// the leadership.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Watch {
    /// Answer once the term is greater than this.
    pub after_term: u64,
    /// How long to wait at most.
    pub timeout_ms: u64,
}

impl DeferredHandler<Watch> for Election {
    type Reply = Result<Leadership, LeaderError>;
    async fn handle(
        &mut self,
        msg: Watch,
        ctx: &mut Context,
        reply: Deferred<Result<Leadership, LeaderError>>,
    ) {
        // Answered now, unless the watcher waits for a change (which keeps the reply).
        let mut reply = Some(reply);
        let answer = self.watch(msg, ctx, &mut reply);
        if let Some(reply) = reply {
            reply.complete(ctx, answer);
        }
    }
}

impl Election {
    fn watch(
        &mut self,
        msg: Watch,
        ctx: &mut Context,
        reply: &mut Option<Deferred<Result<Leadership, LeaderError>>>,
    ) -> Result<Leadership, LeaderError> {
        if msg.timeout_ms > MAX_WATCH_MS {
            return Err(
                InvalidInput::new(format!("timeout_ms may be at most {MAX_WATCH_MS}")).into(),
            );
        }
        self.expire(ctx)?;
        if self.state.term > msg.after_term || msg.timeout_ms == 0 {
            return Ok(self.view());
        }
        self.watchers.retain(|w| !w.reply.is_closed());
        if self.watchers.len() >= stead_core::MAX_PARKED_PER_OBJECT {
            return Err(stead_core::Error::too_many_waiting(Self::CLASS).into());
        }
        if let Some(reply) = reply.take() {
            self.watchers.push(Watcher {
                after_term: msg.after_term,
                deadline: ctx.now() + chrono::Duration::milliseconds(msg.timeout_ms as i64),
                reply,
            });
            self.arm(ctx)?;
        }
        Ok(self.view())
    }
}

fn check_candidate(candidate: &str) -> Result<(), InvalidInput> {
    stead_core::validate_name("candidate", candidate)
}

fn check_ttl(ttl_ms: u64) -> Result<(), InvalidInput> {
    stead_core::validate_ms("ttl_ms", ttl_ms, MAX_TTL_MS)
}

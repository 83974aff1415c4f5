//! The ledger: a budget's cycles, per-processor accounts and two-phase reservations, in
//! integer minor units. Pure: time comes in as milliseconds; no runtime, no I/O. The object
//! keeps one and stores it.
//!
//! The invariant, for every account of every cycle at every moment:
//! `spent + reserved <= allocated`, except where after-the-fact usage (which cannot be
//! refused) overran, and then the account is flagged and refuses further reservations.
//! Nothing is created or lost: a cycle's `total + rollover_in` is exactly the sum of its
//! accounts' allocations, and a reservation's amount is, once resolved, exactly split
//! between spent and freed.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// Splits `total` by integer weights, exactly: each gets `floor(total × weight / sum)`, and
/// the minor units left over go one each to the entries with a weight, in the order given.
/// Entries of weight 0 get nothing; with no weight at all, nobody gets anything.
///
/// ```
/// use stead_budget::ledger::split;
/// assert_eq!(split(100, &[5, 3, 2]), [50, 30, 20]);
/// assert_eq!(split(10, &[1, 1, 1]), [4, 3, 3]); // one unit left over: to the first
/// assert_eq!(split(7, &[0, 2]), [0, 7]);
/// ```
pub fn split(total: u64, weights: &[u64]) -> Vec<u64> {
    let sum: u128 = weights.iter().map(|&w| u128::from(w)).sum();
    if sum == 0 {
        return vec![0; weights.len()];
    }
    let mut shares: Vec<u64> = weights
        .iter()
        .map(|&w| (u128::from(total) * u128::from(w) / sum) as u64)
        .collect();
    let mut left = total - shares.iter().sum::<u64>();
    // Fewer units are left than there are weighted entries, so one pass hands them all out.
    for (share, &w) in shares.iter_mut().zip(weights) {
        if left == 0 {
            break;
        }
        if w > 0 {
            *share += 1;
            left -= 1;
        }
    }
    shares
}

/// One processor's account in one cycle.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// What it may spend this cycle (its share, plus what rolled over to it).
    pub allocated: u64,
    /// Held by pending reservations.
    pub reserved: u64,
    /// Spent: committed reservations and reported usage.
    pub spent: u64,
    /// Items reported.
    pub items: u64,
    /// Errors reported.
    pub errors: u64,
    /// Reported usage took it past its allocation: it refuses reservations until the next
    /// cycle.
    pub overrun: bool,
}

impl Account {
    /// What a reservation may still take.
    pub fn available(&self) -> u64 {
        self.allocated
            .saturating_sub(self.spent.saturating_add(self.reserved))
    }
}

/// A cycle: its total and the accounts it was split into.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cycle {
    /// Its number: cycles are numbered from 1.
    pub number: u64,
    /// When it started, in ms.
    pub started_ms: i64,
    /// When it closed, in ms (none while it is the current one).
    pub closed_ms: Option<i64>,
    /// The total it was given.
    pub total: u64,
    /// What rolled over into it from the cycle before.
    pub rollover_in: u64,
    /// What rolled over out of it into the next.
    pub rollover_out: u64,
    /// The accounts, by processor id.
    pub accounts: BTreeMap<String, Account>,
}

impl Cycle {
    /// The sum of the accounts: (allocated, reserved, spent).
    pub fn sums(&self) -> (u64, u64, u64) {
        self.accounts.values().fold((0, 0, 0), |(a, r, s), acc| {
            (a + acc.allocated, r + acc.reserved, s + acc.spent)
        })
    }
}

/// How unspent budget moves into the next cycle.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case", tag = "mode")]
pub enum Rollover {
    /// It does not: every cycle starts from its total.
    #[default]
    Off,
    /// Each processor keeps what it did not spend or hold, up to `cap` minor units.
    Capped {
        /// The most a processor carries over.
        #[cfg_attr(feature = "http", schema(schema_with = stead_core::http::schema::integer::<0, { crate::spec::MAX_AMOUNT }>))]
        cap: u64,
    },
}

/// Where a reservation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum ReservationState {
    /// Holding its amount until it is committed, voided or expires.
    Pending,
    /// Committed: `actual` was spent, the rest freed.
    Committed {
        /// What was spent.
        actual: u64,
    },
    /// Voided: all of it freed.
    Voided,
    /// Expired unresolved: all of it freed.
    Expired,
}

/// A two-phase reservation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    /// The caller's id: a repeated request with it has one effect.
    pub id: String,
    /// The processor it is for.
    pub processor: String,
    /// The amount held.
    pub amount: u64,
    /// The cycle it holds budget in (its commit spends there, even after the cycle closed).
    pub cycle: u64,
    /// When it was made, in ms.
    pub created_ms: i64,
    /// When it expires if unresolved, in ms.
    pub expires_ms: i64,
    /// Where it is.
    pub state: ReservationState,
    /// When it was resolved, in ms: its id is remembered from then on (for records written
    /// before this was kept, its expiry stands in, which is never earlier).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_ms: Option<i64>,
    /// Committed after it had expired: the spend was recorded when it came, unheld.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub late: bool,
}

impl Reservation {
    /// When its id started being remembered.
    fn remembered_from(&self) -> i64 {
        self.resolved_ms.unwrap_or(self.expires_ms)
    }
}

/// Why the ledger refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerError {
    /// No cycle has started.
    #[error("no cycle has started")]
    NoCycle,
    /// The processor has no account (unknown, or disabled when the cycle started).
    #[error("processor {0} has no account in the current cycle")]
    UnknownProcessor(String),
    /// No reservation has this id.
    #[error("no reservation {0}")]
    UnknownReservation(String),
    /// Not enough budget: what the processor and the whole budget have available.
    #[error(
        "{processor} has {available} available (the budget {budget_available}); {requested} requested"
    )]
    Insufficient {
        /// The processor.
        processor: String,
        /// What was asked for.
        requested: u64,
        /// What the processor has available.
        available: u64,
        /// What the whole cycle has available.
        budget_available: u64,
    },
    /// Reported usage overran the processor's allocation: it refuses reservations until the
    /// next cycle.
    #[error("{0} overran its allocation this cycle; reservations resume next cycle")]
    Overrun(String),
    /// The id was used for another request (another processor or amount).
    #[error("reservation {0} exists with other parameters")]
    IdReused(String),
    /// Too many resolved reservations are remembered, and none is old enough to forget:
    /// forgetting a young id would let its retry spend twice, so new reservations wait
    /// (the rule of `stead_core::check_room`).
    #[error("resolved reservations: {0}")]
    Remembering(stead_core::Remembering),
    /// The reservation was resolved another way already.
    #[error("reservation {id} is already {state}")]
    AlreadyResolved {
        /// The reservation.
        id: String,
        /// How it was resolved (`committed`, `voided`, `expired`).
        state: &'static str,
    },
    /// A commit of more than was reserved.
    #[error("a commit of {actual} is above the {reserved} reserved")]
    AboveReserved {
        /// What the commit said.
        actual: u64,
        /// What was reserved.
        reserved: u64,
    },
}

fn state_name(s: ReservationState) -> &'static str {
    match s {
        ReservationState::Pending => "pending",
        ReservationState::Committed { .. } => "committed",
        ReservationState::Voided => "voided",
        ReservationState::Expired => "expired",
    }
}

/// A budget's books: the current cycle, the closed ones still kept, and the reservations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ledger {
    /// Cycles, oldest first; the last is the current one unless it is closed.
    pub cycles: Vec<Cycle>,
    /// Reservations by id: pending ones, and resolved ones remembered for idempotency.
    reservations: BTreeMap<String, Reservation>,
    /// The pending ones by expiry.
    expiries: BTreeSet<(i64, String)>,
    /// The resolved ones by age.
    resolved: BTreeSet<(i64, String)>,
}

impl Ledger {
    /// Books of these cycles and reservations.
    pub fn from_parts(cycles: Vec<Cycle>, reservations: Vec<Reservation>) -> Self {
        let mut l = Ledger {
            cycles,
            ..Ledger::default()
        };
        for r in reservations {
            l.index(&r);
            l.reservations.insert(r.id.clone(), r);
        }
        l
    }

    fn index(&mut self, r: &Reservation) {
        if r.state == ReservationState::Pending {
            self.expiries.insert((r.expires_ms, r.id.clone()));
        } else {
            self.resolved.insert((r.remembered_from(), r.id.clone()));
        }
    }

    /// Every reservation it holds or remembers, by id.
    pub fn reservations(&self) -> &BTreeMap<String, Reservation> {
        &self.reservations
    }

    /// How many reservations are pending.
    pub fn pending_count(&self) -> usize {
        self.expiries.len()
    }

    /// The current cycle.
    pub fn current(&self) -> Option<&Cycle> {
        self.cycles.last().filter(|c| c.closed_ms.is_none())
    }

    fn cycle_mut(&mut self, number: u64) -> Option<&mut Cycle> {
        self.cycles.iter_mut().rev().find(|c| c.number == number)
    }

    /// Closes the current cycle (if any) and starts the next with `total`, split by
    /// `weights` (processor id and weight, in the stated order), plus what rolls over. Keeps
    /// at most `keep` cycles (the oldest closed ones go first; one with pending
    /// reservations stays until they resolve).
    pub fn start_cycle(
        &mut self,
        total: u64,
        weights: &[(String, u64)],
        rollover: Rollover,
        keep: usize,
        now_ms: i64,
    ) -> &Cycle {
        let mut carried: BTreeMap<String, u64> = BTreeMap::new();
        let number = self.cycles.last().map_or(1, |c| c.number + 1);
        if let Some(c) = self.cycles.last_mut().filter(|c| c.closed_ms.is_none()) {
            c.closed_ms = Some(now_ms);
            if let Rollover::Capped { cap } = rollover {
                for (id, acc) in &mut c.accounts {
                    let carry = acc.available().min(cap);
                    if carry > 0 && weights.iter().any(|(w, _)| w == id) {
                        // The carried units leave this account as if allocated elsewhere.
                        acc.allocated -= carry;
                        c.rollover_out += carry;
                        carried.insert(id.clone(), carry);
                    }
                }
            }
        }
        let shares = split(total, &weights.iter().map(|(_, w)| *w).collect::<Vec<_>>());
        let mut accounts = BTreeMap::new();
        for ((id, _), share) in weights.iter().zip(shares) {
            let carry = carried.get(id).copied().unwrap_or(0);
            accounts.insert(
                id.clone(),
                Account {
                    allocated: share + carry,
                    ..Account::default()
                },
            );
        }
        self.cycles.push(Cycle {
            number,
            started_ms: now_ms,
            closed_ms: None,
            total,
            rollover_in: carried.values().sum(),
            rollover_out: 0,
            accounts,
        });
        // Keep the last `keep` cycles, and any closed one that still holds reservations.
        let keep = keep.max(1);
        let held: BTreeSet<u64> = self
            .expiries
            .iter()
            .filter_map(|(_, id)| self.reservations.get(id).map(|r| r.cycle))
            .collect();
        while self.cycles.len() > keep {
            let Some(i) = self.cycles[..self.cycles.len() - 1]
                .iter()
                .position(|c| !held.contains(&c.number))
            else {
                break;
            };
            self.cycles.remove(i);
        }
        self.cycles.last().expect("pushed above")
    }

    /// Holds `amount` for `processor` in the current cycle until `expires_ms`. A repeated
    /// request with the same id returns the reservation it made (in whatever state it is
    /// now); the same id with other parameters is refused.
    pub fn reserve(
        &mut self,
        id: &str,
        processor: &str,
        amount: u64,
        expires_ms: i64,
        now_ms: i64,
    ) -> Result<Reservation, LedgerError> {
        if let Some(r) = self.reservations.get(id) {
            return if r.processor == processor && r.amount == amount {
                Ok(r.clone())
            } else {
                Err(LedgerError::IdReused(id.to_owned()))
            };
        }
        let cycle = self.cycles.last_mut().filter(|c| c.closed_ms.is_none());
        let Some(cycle) = cycle else {
            return Err(LedgerError::NoCycle);
        };
        let (allocated, reserved, spent) = cycle.sums();
        let budget_available = allocated.saturating_sub(reserved.saturating_add(spent));
        let number = cycle.number;
        let Some(acc) = cycle.accounts.get_mut(processor) else {
            return Err(LedgerError::UnknownProcessor(processor.to_owned()));
        };
        if acc.overrun {
            return Err(LedgerError::Overrun(processor.to_owned()));
        }
        if amount > acc.available() || amount > budget_available {
            return Err(LedgerError::Insufficient {
                processor: processor.to_owned(),
                requested: amount,
                available: acc.available(),
                budget_available,
            });
        }
        acc.reserved += amount;
        let r = Reservation {
            id: id.to_owned(),
            processor: processor.to_owned(),
            amount,
            cycle: number,
            created_ms: now_ms,
            expires_ms,
            state: ReservationState::Pending,
            resolved_ms: None,
            late: false,
        };
        self.expiries.insert((expires_ms, id.to_owned()));
        self.reservations.insert(id.to_owned(), r.clone());
        Ok(r)
    }

    /// Resolves a pending reservation at `now_ms`: `Some(actual)` commits (spends `actual`,
    /// frees the rest), `None` voids; `expired` marks an expiry. A repeat of the same
    /// resolution returns the reservation as it is; another resolution is refused, except a
    /// commit of an expired reservation: that money was spent, so it is recorded (spent in
    /// the reservation's cycle, or the current one if that is gone; marked `late`) rather
    /// than dropped.
    fn resolve(
        &mut self,
        id: &str,
        to: ReservationState,
        now_ms: i64,
    ) -> Result<Reservation, LedgerError> {
        let r = self
            .reservations
            .get(id)
            .ok_or_else(|| LedgerError::UnknownReservation(id.to_owned()))?;
        let late = r.state == ReservationState::Expired
            && matches!(to, ReservationState::Committed { .. });
        if r.state != ReservationState::Pending && !late {
            return if r.state == to {
                Ok(r.clone())
            } else {
                Err(LedgerError::AlreadyResolved {
                    id: id.to_owned(),
                    state: state_name(r.state),
                })
            };
        }
        if let ReservationState::Committed { actual } = to
            && actual > r.amount
        {
            return Err(LedgerError::AboveReserved {
                actual,
                reserved: r.amount,
            });
        }
        let (cycle, processor, amount) = (r.cycle, r.processor.clone(), r.amount);
        let was_from = r.remembered_from();
        let held = if late { 0 } else { amount };
        // The cycle it holds budget in is kept while it is pending; a late commit spends in
        // the current cycle when its own is gone.
        let number = if late && self.cycle_mut(cycle).is_none() {
            self.current().map(|c| c.number)
        } else {
            Some(cycle)
        };
        if let Some(acc) = number
            .and_then(|n| self.cycle_mut(n))
            .and_then(|c| c.accounts.get_mut(&processor))
        {
            acc.reserved -= held;
            if let ReservationState::Committed { actual } = to {
                acc.spent = acc.spent.saturating_add(actual);
                if late && acc.spent.saturating_add(acc.reserved) > acc.allocated {
                    acc.overrun = true;
                }
            }
        }
        let r = self.reservations.get_mut(id).expect("found above");
        r.state = to;
        r.resolved_ms = Some(now_ms);
        r.late = late;
        if let Some(n) = number {
            // Where its spend went.
            r.cycle = n;
        }
        let r = r.clone();
        if late {
            self.resolved.remove(&(was_from, r.id.clone()));
        } else {
            self.expiries.remove(&(r.expires_ms, r.id.clone()));
        }
        self.resolved.insert((now_ms, r.id.clone()));
        Ok(r)
    }

    /// Commits a reservation for `actual` (at most what it holds): a pending one, or an
    /// expired one late (see [`resolve`](Self::resolve)).
    pub fn commit(
        &mut self,
        id: &str,
        actual: u64,
        now_ms: i64,
    ) -> Result<Reservation, LedgerError> {
        self.resolve(id, ReservationState::Committed { actual }, now_ms)
    }

    /// Voids a pending reservation, freeing all of it.
    pub fn void(&mut self, id: &str, now_ms: i64) -> Result<Reservation, LedgerError> {
        self.resolve(id, ReservationState::Voided, now_ms)
    }

    /// Expires every pending reservation due at `now_ms`; their ids.
    pub fn expire(&mut self, now_ms: i64) -> Vec<String> {
        let due: Vec<String> = self
            .expiries
            .iter()
            .take_while(|(at, _)| *at <= now_ms)
            .map(|(_, id)| id.clone())
            .collect();
        for id in &due {
            let _ = self.resolve(id, ReservationState::Expired, now_ms);
        }
        due
    }

    /// The earliest expiry of a pending reservation.
    pub fn next_expiry_ms(&self) -> Option<i64> {
        self.expiries.first().map(|(at, _)| *at)
    }

    /// Counts usage reported after the fact as spent (it cannot be refused: it happened).
    /// Whether it overran the processor's allocation (which then refuses reservations for
    /// the rest of the cycle).
    pub fn usage(
        &mut self,
        processor: &str,
        cost: u64,
        items: u64,
        errors: u64,
    ) -> Result<bool, LedgerError> {
        let cycle = self
            .cycles
            .last_mut()
            .filter(|c| c.closed_ms.is_none())
            .ok_or(LedgerError::NoCycle)?;
        let acc = cycle
            .accounts
            .get_mut(processor)
            .ok_or_else(|| LedgerError::UnknownProcessor(processor.to_owned()))?;
        acc.spent = acc.spent.saturating_add(cost);
        acc.items = acc.items.saturating_add(items);
        acc.errors = acc.errors.saturating_add(errors);
        if acc.spent.saturating_add(acc.reserved) > acc.allocated {
            acc.overrun = true;
        }
        Ok(acc.overrun)
    }

    /// Forgets the reservations resolved at or before `before_ms` (their ids may then be
    /// used again); the ids forgotten, oldest first. A reservation resolved since is never
    /// forgotten, however many there are: see [`check_room`](Self::check_room).
    pub fn forget_resolved(&mut self, before_ms: i64) -> Vec<String> {
        let mut forgot = Vec::new();
        while let Some((resolved, id)) = self.resolved.first().cloned() {
            if resolved > before_ms {
                break;
            }
            self.resolved.pop_first();
            self.reservations.remove(&id);
            forgot.push(id);
        }
        forgot
    }

    /// Whether a new reservation may be made while at most `keep` resolved ones are
    /// remembered for `remember_ms` each: [`LedgerError::Remembering`] (with when the oldest
    /// may go) when `keep` are remembered and none is old enough to forget.
    pub fn check_room(
        &self,
        keep: usize,
        remember_ms: i64,
        now_ms: i64,
    ) -> Result<(), LedgerError> {
        stead_core::check_room(
            self.resolved.len() as u64,
            keep as u64,
            self.resolved.first().map(|(at, _)| *at),
            remember_ms,
            now_ms,
        )
        .map_err(LedgerError::Remembering)
    }

    /// How many resolved reservations it remembers.
    pub fn resolved_count(&self) -> usize {
        self.resolved.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn weights(ws: &[(&str, u64)]) -> Vec<(String, u64)> {
        ws.iter().map(|(id, w)| ((*id).to_owned(), *w)).collect()
    }

    #[test]
    fn split_is_exact() {
        assert_eq!(split(10_000, &[5, 3, 2]), [5000, 3000, 2000]);
        assert_eq!(split(1, &[5, 3, 2]), [1, 0, 0]);
        assert_eq!(split(2, &[1, 1, 1]), [1, 1, 0]);
        assert_eq!(split(5, &[0, 0]), [0, 0]);
        assert_eq!(
            split(u64::MAX, &[u64::MAX, 1]).iter().sum::<u64>(),
            u64::MAX
        );
    }

    #[test]
    fn reserve_commit_void_and_expire() {
        let mut l = Ledger::default();
        assert_eq!(l.reserve("r", "kw", 1, 10, 0), Err(LedgerError::NoCycle));
        l.start_cycle(
            1000,
            &weights(&[("kw", 1), ("seo", 1)]),
            Rollover::Off,
            10,
            0,
        );
        let r = l.reserve("r1", "kw", 300, 100, 0).unwrap();
        assert_eq!(r.state, ReservationState::Pending);
        // The same request again: the same reservation, no second hold.
        assert_eq!(l.reserve("r1", "kw", 300, 100, 5).unwrap(), r);
        assert_eq!(
            l.reserve("r1", "kw", 301, 100, 5),
            Err(LedgerError::IdReused("r1".into()))
        );
        let err = l.reserve("r2", "kw", 201, 100, 0).unwrap_err();
        assert!(matches!(
            err,
            LedgerError::Insufficient { available: 200, .. }
        ));
        l.commit("r1", 120, 10).unwrap();
        assert_eq!(
            l.commit("r1", 120, 10).unwrap().state,
            ReservationState::Committed { actual: 120 }
        );
        assert!(matches!(
            l.void("r1", 10),
            Err(LedgerError::AlreadyResolved { .. })
        ));
        let acc = l.current().unwrap().accounts["kw"];
        assert_eq!((acc.spent, acc.reserved, acc.available()), (120, 0, 380));
        l.reserve("r3", "kw", 380, 50, 0).unwrap();
        assert_eq!(
            l.commit("r3", 381, 10),
            Err(LedgerError::AboveReserved {
                actual: 381,
                reserved: 380
            })
        );
        assert_eq!(l.next_expiry_ms(), Some(50));
        assert_eq!(l.expire(50), ["r3"]);
        assert_eq!(l.current().unwrap().accounts["kw"].available(), 380);
        assert!(matches!(
            l.reserve("x", "nope", 1, 1, 0),
            Err(LedgerError::UnknownProcessor(_))
        ));
    }

    #[test]
    fn usage_after_the_fact_flags_an_overrun() {
        let mut l = Ledger::default();
        l.start_cycle(100, &weights(&[("kw", 1)]), Rollover::Off, 10, 0);
        assert!(!l.usage("kw", 60, 6, 1).unwrap());
        assert!(l.usage("kw", 60, 6, 0).unwrap());
        assert_eq!(
            l.reserve("r", "kw", 1, 10, 0),
            Err(LedgerError::Overrun("kw".into()))
        );
        // A new cycle starts clean.
        l.start_cycle(100, &weights(&[("kw", 1)]), Rollover::Off, 10, 1);
        l.reserve("r", "kw", 1, 10, 1).unwrap();
    }

    #[test]
    fn rollover_carries_what_was_left_up_to_the_cap() {
        let mut l = Ledger::default();
        let w = weights(&[("a", 1), ("b", 1)]);
        l.start_cycle(1000, &w, Rollover::Capped { cap: 100 }, 10, 0);
        l.reserve("r", "a", 450, 10, 0).unwrap();
        l.commit("r", 450, 0).unwrap();
        // a left 50, b left 500 (capped to 100).
        let c = l
            .start_cycle(1000, &w, Rollover::Capped { cap: 100 }, 10, 1)
            .clone();
        assert_eq!(c.rollover_in, 150);
        assert_eq!(c.accounts["a"].allocated, 550);
        assert_eq!(c.accounts["b"].allocated, 600);
        let closed = &l.cycles[0];
        assert_eq!(closed.rollover_out, 150);
        assert_eq!(closed.sums().0 + closed.rollover_out, 1000);
    }

    #[test]
    fn a_reservation_spends_in_its_own_cycle_after_it_closed() {
        let mut l = Ledger::default();
        let w = weights(&[("a", 1)]);
        l.start_cycle(100, &w, Rollover::Off, 1, 0);
        l.reserve("r", "a", 80, 1000, 0).unwrap();
        l.start_cycle(100, &w, Rollover::Off, 1, 10);
        // Kept despite keep = 1: it holds a reservation.
        assert_eq!(l.cycles.len(), 2);
        l.commit("r", 30, 10).unwrap();
        assert_eq!(l.cycles[0].accounts["a"].spent, 30);
        assert_eq!(l.current().unwrap().accounts["a"].spent, 0);
        l.start_cycle(100, &w, Rollover::Off, 1, 20);
        assert_eq!(l.cycles.len(), 1);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Reserve(u8, u8, u64, i64),
        Commit(u8, u64),
        Void(u8),
        Advance(i64),
        Cycle(u64, bool),
        Usage(u8, u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..24, 0u8..3, 0u64..400, 1i64..50).prop_map(|(i, p, a, t)| Op::Reserve(i, p, a, t)),
            (0u8..24, 0u64..400).prop_map(|(i, a)| Op::Commit(i, a)),
            (0u8..24).prop_map(Op::Void),
            (0i64..30).prop_map(Op::Advance),
            (0u64..2000, any::<bool>()).prop_map(|(t, r)| Op::Cycle(t, r)),
            (0u8..3, 0u64..50).prop_map(|(p, c)| Op::Usage(p, c)),
        ]
    }

    proptest! {
        /// After every step: no account holds and spends more than it was given (unless
        /// after-the-fact usage overran it, which flags it), and no unit is created or lost:
        /// each cycle's allocations plus what rolled out equal its total plus what rolled in,
        /// and every reservation's amount is held, or split between spent and freed.
        #[test]
        fn never_an_overspend_and_every_unit_accounted_for(ops in proptest::collection::vec(op(), 1..300)) {
            let procs = ["a", "b", "c"];
            let w = weights(&[("a", 5), ("b", 3), ("c", 2)]);
            let mut l = Ledger::default();
            let mut now = 0i64;
            let mut usage: BTreeMap<(u64, String), u64> = BTreeMap::new();
            l.start_cycle(1000, &w, Rollover::Off, 4, now);
            for op in ops {
                match op {
                    Op::Reserve(i, p, a, t) => { let _ = l.reserve(&format!("r{i}"), procs[p as usize], a, now + t, now); }
                    Op::Commit(i, a) => { let _ = l.commit(&format!("r{i}"), a, now); }
                    Op::Void(i) => { let _ = l.void(&format!("r{i}"), now); }
                    Op::Advance(d) => { now += d; l.expire(now); }
                    Op::Cycle(t, r) => {
                        now += 1;
                        let rollover = if r { Rollover::Capped { cap: 100 } } else { Rollover::Off };
                        l.start_cycle(t, &w, rollover, 4, now);
                    }
                    Op::Usage(p, c) => {
                        let n = l.current().unwrap().number;
                        if l.usage(procs[p as usize], c, 1, 0).is_ok() {
                            *usage.entry((n, procs[p as usize].to_owned())).or_default() += c;
                        }
                    }
                }
                for c in &l.cycles {
                    let (allocated, _, _) = c.sums();
                    prop_assert_eq!(allocated + c.rollover_out, c.total + c.rollover_in);
                    for (id, acc) in &c.accounts {
                        if !acc.overrun {
                            prop_assert!(acc.spent + acc.reserved <= acc.allocated, "{id} in cycle {}: {acc:?}", c.number);
                        }
                        // What is held is exactly the pending reservations; what is spent is
                        // exactly the commits plus the usage.
                        let pending: u64 = l.reservations.values()
                            .filter(|r| r.cycle == c.number && &r.processor == id && r.state == ReservationState::Pending)
                            .map(|r| r.amount).sum();
                        prop_assert_eq!(acc.reserved, pending);
                        let committed: u64 = l.reservations.values()
                            .filter(|r| r.cycle == c.number && &r.processor == id)
                            .filter_map(|r| match r.state { ReservationState::Committed { actual } => Some(actual), _ => None })
                            .sum();
                        let used = usage.get(&(c.number, id.clone())).copied().unwrap_or(0);
                        prop_assert_eq!(acc.spent, committed + used);
                    }
                }
            }
        }
    }
}

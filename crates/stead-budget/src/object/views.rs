//! What the budget shows: accounts, cycles, reservations, the plan.

use super::*;

/// One processor's account, as shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct AccountView {
    /// The processor.
    pub processor: String,
    /// What it may spend this cycle.
    pub allocated: u64,
    /// Held by pending reservations.
    pub reserved: u64,
    /// Spent.
    pub spent: u64,
    /// What a reservation may still take.
    pub available: u64,
    /// Items reported.
    pub items: u64,
    /// Errors reported.
    pub errors: u64,
    /// Whether reported usage overran it (it refuses reservations until the next cycle).
    pub overrun: bool,
}

/// A cycle, as shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct CycleView {
    /// Its number.
    pub number: u64,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// When it closed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub closed_at: Option<DateTime<Utc>>,
    /// Its total.
    pub total: u64,
    /// Rolled over into it.
    pub rollover_in: u64,
    /// Rolled over out of it.
    pub rollover_out: u64,
    /// The sums of its accounts.
    pub allocated: u64,
    /// Held.
    pub reserved: u64,
    /// Spent.
    pub spent: u64,
    /// Per processor, in the configured order (then any no longer configured).
    pub accounts: Vec<AccountView>,
}

/// A reservation, as shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct ReservationView {
    /// Its id.
    pub id: String,
    /// The processor.
    pub processor: String,
    /// The amount held (or that was held).
    pub amount: u64,
    /// The cycle it holds budget in.
    pub cycle: u64,
    /// When it expires if unresolved.
    pub expires_at: DateTime<Utc>,
    /// `pending`, `committed`, `voided` or `expired`.
    pub state: String,
    /// For a committed one: what was spent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actual: Option<u64>,
    /// When it was resolved (its id is remembered from then on).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolved_at: Option<DateTime<Utc>>,
    /// Committed after it had expired: its spend was recorded unheld.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub late: bool,
}

impl From<&Reservation> for ReservationView {
    fn from(r: &Reservation) -> Self {
        let (state, actual) = match r.state {
            ReservationState::Pending => ("pending", None),
            ReservationState::Committed { actual } => ("committed", Some(actual)),
            ReservationState::Voided => ("voided", None),
            ReservationState::Expired => ("expired", None),
        };
        ReservationView {
            id: r.id.clone(),
            processor: r.processor.clone(),
            amount: r.amount,
            cycle: r.cycle,
            expires_at: from_ms(r.expires_ms),
            state: state.to_owned(),
            actual,
            resolved_at: r.resolved_ms.map(from_ms),
            late: r.late,
        }
    }
}

/// The answer to a reservation: it, and whether this request made it (false: a repeat).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reserved {
    /// The reservation.
    pub reservation: ReservationView,
    /// Whether this request made it.
    pub created: bool,
}

/// A budget's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct BudgetState {
    /// The configuration.
    pub config: BudgetSpec,
    /// The current cycle.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cycle: Option<CycleView>,
    /// Reservations pending (in any cycle).
    pub pending: u64,
    /// When the next cycle starts by schedule.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cycle_at: Option<DateTime<Utc>>,
}

/// One processor's line of the plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct PlanLine {
    /// The processor.
    pub processor: String,
    /// Its tier.
    pub tier: String,
    /// The tier's model.
    pub model: String,
    /// What a call costs.
    pub cost_per_call: u64,
    /// What it has available now.
    pub available: u64,
    /// The most items it can afford now: `available / cost_per_call`, at most the tier's
    /// `max_concurrency`.
    pub max_items: u64,
}

/// A phase of the plan: processors that may run together.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct PlanPhase {
    /// The phase.
    pub phase: u32,
    /// Its processors, in the configured order.
    pub processors: Vec<PlanLine>,
}

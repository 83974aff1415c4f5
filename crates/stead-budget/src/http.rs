//! The HTTP routes of the budgets (mounted under `/budgets` by the umbrella crate), and the
//! mapping of [`BudgetError`] to problems.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use stead_core::http::{
    Json as Body, LogParams, Name, OptionalJson, Problem, Query, problems, schema,
};
use stead_core::{LogPage, Result, Runtime};
use utoipa::{OpenApi, ToSchema};

use crate::client::{BudgetClient, BudgetConfig};
use crate::error::BudgetError;
use crate::object::{
    AccountView, BudgetEvent, BudgetState, CycleView, MAX_TTL_MS, PlanPhase, ReservationView,
};
use crate::spec::{BudgetSpec, MAX_AMOUNT};

/// The budget pattern, as the umbrella crate mounts it.
#[derive(Debug, Clone, Copy)]
pub struct BudgetPattern;

impl stead_core::http::Pattern for BudgetPattern {
    const PREFIX: &'static str = "/budgets";
    const SETTINGS_KEY: &'static str = "budgets";
    type Settings = BudgetConfig;

    fn configure(rt: &Runtime, settings: BudgetConfig) -> Result<()> {
        BudgetClient::with_config(rt, settings).map(drop)
    }

    fn router<S: Clone + Send + Sync + 'static>(rt: &Runtime) -> Result<Router<S>> {
        Ok(Router::new()
            .route("/{name}", get(state).put(configure).delete(remove))
            .route("/{name}/plan", get(plan))
            .route("/{name}/history", get(history))
            .route("/{name}/events", get(events))
            .route("/{name}/cycles", post(start_cycle))
            .route("/{name}/reservations", post(reserve))
            .route("/{name}/reservations/{id}/commit", post(commit))
            .route("/{name}/reservations/{id}/void", post(void))
            .route("/{name}/usage", post(usage))
            .with_state(BudgetClient::new(rt)?)
            .layer(stead_core::http::ProblemLayer))
    }

    fn openapi() -> utoipa::openapi::OpenApi {
        Api::openapi()
    }
}

impl From<&BudgetError> for Problem {
    fn from(err: &BudgetError) -> Self {
        let detail = err.to_string();
        match err {
            BudgetError::NotFound => {
                Problem::new(StatusCode::NOT_FOUND, "budget-not-found", detail)
            }
            BudgetError::NoCycle => Problem::new(StatusCode::CONFLICT, "no-cycle", detail),
            BudgetError::UnknownProcessor(p) => {
                Problem::new(StatusCode::NOT_FOUND, "unknown-processor", detail)
                    .with("processor", p.clone())
            }
            BudgetError::UnknownReservation(id) => {
                Problem::new(StatusCode::NOT_FOUND, "unknown-reservation", detail)
                    .with("id", id.clone())
            }
            BudgetError::Insufficient {
                processor,
                requested,
                available,
                budget_available,
            } => Problem::new(StatusCode::CONFLICT, "insufficient-budget", detail)
                .with("processor", processor.clone())
                .with("requested", *requested)
                .with("available", *available)
                .with("budget_available", *budget_available),
            BudgetError::Overrun(p) => {
                Problem::new(StatusCode::CONFLICT, "overrun", detail).with("processor", p.clone())
            }
            BudgetError::IdReused(id) => {
                Problem::new(StatusCode::CONFLICT, "id-reused", detail).with("id", id.clone())
            }
            BudgetError::Remembering(r) => Problem::from(r),
            BudgetError::AlreadyResolved { id, state } => {
                Problem::new(StatusCode::CONFLICT, "already-resolved", detail)
                    .with("id", id.clone())
                    .with("state", state.clone())
            }
            BudgetError::AboveReserved { actual, reserved } => {
                Problem::new(StatusCode::CONFLICT, "above-reserved", detail)
                    .with("actual", *actual)
                    .with("reserved", *reserved)
            }
            BudgetError::Invalid(e) => Problem::from(e),
            BudgetError::Runtime(e) => Problem::from(e),
        }
    }
}

impl IntoResponse for BudgetError {
    fn into_response(self) -> Response {
        match self {
            BudgetError::Runtime(e) => e.into_response(),
            other => Problem::from(&other).into_response(),
        }
    }
}

/// Set a budget's configuration, creating it (and its first cycle) if it is new.
#[utoipa::path(put, path = "/{name}", operation_id = "configureBudget", tag = "budgets",
    params(Name),
    request_body = BudgetSpec,
    responses(
        (status = 200, description = "changed (from the next cycle)", body = BudgetState),
        (status = 201, description = "created", body = BudgetState),
        problems::BadRequest))]
async fn configure(
    State(c): State<BudgetClient>,
    Name(name): Name,
    Body(spec): Body<BudgetSpec>,
) -> Result<Response, BudgetError> {
    let (state, created) = c.configure(&name, spec).await?;
    let status = stead_core::http::created_or_ok(created);
    Ok((status, Body(state)).into_response())
}

/// A budget's configuration, current cycle (per processor allocated, reserved, spent,
/// available) and the next scheduled cycle.
#[utoipa::path(get, path = "/{name}", operation_id = "getBudget", tag = "budgets",
    params(Name),
    responses((status = 200, description = "the budget", body = BudgetState),
        problems::NotFound, problems::BadRequest))]
async fn state(
    State(c): State<BudgetClient>,
    Name(name): Name,
) -> Result<Body<BudgetState>, BudgetError> {
    Ok(Body(c.state(&name).await?))
}

/// Delete a budget and everything it keeps.
#[utoipa::path(delete, path = "/{name}", operation_id = "deleteBudget", tag = "budgets",
    params(Name),
    responses((status = 204, description = "deleted"), problems::NotFound, problems::BadRequest))]
async fn remove(
    State(c): State<BudgetClient>,
    Name(name): Name,
) -> Result<StatusCode, BudgetError> {
    if c.remove(&name).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(BudgetError::NotFound)
    }
}

/// The current cycle's plan, phase by phase: per processor its tier's model and the most
/// items it can afford now.
#[utoipa::path(get, path = "/{name}/plan", operation_id = "getBudgetPlan", tag = "budgets",
    params(Name),
    responses((status = 200, description = "the phases", body = [PlanPhase]),
        problems::NotFound, problems::Conflict, problems::BadRequest))]
async fn plan(
    State(c): State<BudgetClient>,
    Name(name): Name,
) -> Result<Body<Vec<PlanPhase>>, BudgetError> {
    Ok(Body(c.plan(&name).await?))
}

/// Closed cycles kept, numbered by cycle (newest first unless asked otherwise).
#[utoipa::path(get, path = "/{name}/history", operation_id = "getBudgetHistory", tag = "budgets",
    params(Name, LogParams),
    responses((status = 200, description = "a page of closed cycles", body = LogPage<CycleView>),
        problems::NotFound, problems::BadRequest))]
async fn history(
    State(c): State<BudgetClient>,
    Name(name): Name,
    Query(q): Query<LogParams>,
) -> Result<Body<LogPage<CycleView>>, BudgetError> {
    Ok(Body(c.history(&name, q.query()).await?))
}

/// The event log (cycles started, alerts, overruns), newest first unless asked otherwise.
#[utoipa::path(get, path = "/{name}/events", operation_id = "getBudgetEvents", tag = "budgets",
    params(Name, LogParams),
    responses((status = 200, description = "a page of the log", body = LogPage<BudgetEvent>),
        problems::NotFound, problems::BadRequest))]
async fn events(
    State(c): State<BudgetClient>,
    Name(name): Name,
    Query(q): Query<LogParams>,
) -> Result<Body<LogPage<BudgetEvent>>, BudgetError> {
    Ok(Body(c.events(&name, q.query()).await?))
}

/// Starts a cycle (the body is optional).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CycleBody {
    /// The cycle's total (the configured total if absent).
    #[schema(schema_with = schema::optional_integer::<0, MAX_AMOUNT>)]
    total: Option<u64>,
}

/// Close the current cycle and start the next now.
#[utoipa::path(post, path = "/{name}/cycles", operation_id = "startBudgetCycle", tag = "budgets",
    params(Name),
    request_body(content = Option<CycleBody>, description = "optional"),
    responses((status = 201, description = "the new cycle", body = CycleView),
        problems::NotFound, problems::BadRequest))]
async fn start_cycle(
    State(c): State<BudgetClient>,
    Name(name): Name,
    OptionalJson(b): OptionalJson<CycleBody>,
) -> Result<(StatusCode, Body<CycleView>), BudgetError> {
    Ok((
        StatusCode::CREATED,
        Body(c.start_cycle(&name, b.total).await?),
    ))
}

/// Holds an amount for a processor.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ReserveBody {
    /// Your id for it: the same request again has one effect.
    #[schema(schema_with = schema::name)]
    id: String,
    /// The processor.
    #[schema(schema_with = schema::name)]
    processor: String,
    /// The amount, in minor units.
    #[schema(schema_with = schema::integer::<1, MAX_AMOUNT>)]
    amount: u64,
    /// How long it holds unless committed or voided, in ms.
    #[schema(schema_with = schema::integer::<1, MAX_TTL_MS>)]
    ttl_ms: u64,
}

/// Reserve: hold `amount` for `processor` if it fits in its allocation and the budget's.
#[utoipa::path(post, path = "/{name}/reservations", operation_id = "reserveBudget", tag = "budgets",
    params(Name),
    request_body = ReserveBody,
    responses(
        (status = 201, description = "reserved", body = ReservationView),
        (status = 200, description = "a repeat: the reservation this id made, as it is now", body = ReservationView),
        (status = 409, description = "`insufficient-budget` (with `available` and `budget_available`), `overrun`, `id-reused` or `no-cycle`",
            body = Problem, content_type = "application/problem+json"),
        problems::NotFound, problems::BadRequest))]
async fn reserve(
    State(c): State<BudgetClient>,
    Name(name): Name,
    Body(b): Body<ReserveBody>,
) -> Result<(StatusCode, Body<ReservationView>), BudgetError> {
    let r = c
        .reserve(&name, &b.id, &b.processor, b.amount, b.ttl_ms)
        .await?;
    let status = stead_core::http::created_or_ok(r.created);
    Ok((status, Body(r.reservation)))
}

/// What was spent.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CommitBody {
    /// At most the amount reserved; the rest is freed.
    #[schema(schema_with = schema::integer::<0, MAX_AMOUNT>)]
    actual: u64,
}

fn reservation_id(name: String, id: String) -> Result<(String, String), BudgetError> {
    stead_core::validate_name("budget name", &name)?;
    stead_core::validate_name("reservation id", &id)?;
    Ok((name, id))
}

/// Commit: spend `actual` of a reservation and free the rest.
#[utoipa::path(post, path = "/{name}/reservations/{id}/commit", operation_id = "commitBudgetReservation", tag = "budgets",
    params(Name, ("id" = String, Path, description = "The reservation's id.")),
    request_body = CommitBody,
    responses(
        (status = 200, description = "committed (or, repeated, as it was)", body = ReservationView),
        (status = 409, description = "`already-resolved` another way, or `above-reserved`",
            body = Problem, content_type = "application/problem+json"),
        problems::NotFound, problems::BadRequest))]
async fn commit(
    State(c): State<BudgetClient>,
    Path((name, id)): Path<(String, String)>,
    Body(b): Body<CommitBody>,
) -> Result<Body<ReservationView>, BudgetError> {
    let (name, id) = reservation_id(name, id)?;
    Ok(Body(c.commit(&name, &id, b.actual).await?))
}

/// Void: free all of a reservation.
#[utoipa::path(post, path = "/{name}/reservations/{id}/void", operation_id = "voidBudgetReservation", tag = "budgets",
    params(Name, ("id" = String, Path, description = "The reservation's id.")),
    responses(
        (status = 200, description = "voided (or, repeated, as it was)", body = ReservationView),
        (status = 409, description = "`already-resolved` another way", body = Problem, content_type = "application/problem+json"),
        problems::NotFound, problems::BadRequest))]
async fn void(
    State(c): State<BudgetClient>,
    Path((name, id)): Path<(String, String)>,
) -> Result<Body<ReservationView>, BudgetError> {
    let (name, id) = reservation_id(name, id)?;
    Ok(Body(c.void(&name, &id).await?))
}

/// Usage reported after the fact.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct UsageBody {
    /// The processor.
    #[schema(schema_with = schema::name)]
    processor: String,
    /// What it spent, in minor units.
    #[schema(schema_with = schema::integer::<0, MAX_AMOUNT>)]
    cost: u64,
    /// Items it did.
    #[serde(default)]
    #[schema(schema_with = schema::integer::<0, MAX_AMOUNT>)]
    items: u64,
    /// Errors it met.
    #[serde(default)]
    #[schema(schema_with = schema::integer::<0, MAX_AMOUNT>)]
    errors: u64,
}

/// Report usage after the fact: counted as spent; an overrun is flagged, and the processor
/// then refuses reservations until the next cycle.
#[utoipa::path(post, path = "/{name}/usage", operation_id = "reportBudgetUsage", tag = "budgets",
    params(Name),
    request_body = UsageBody,
    responses(
        (status = 200, description = "the processor's account after it", body = AccountView),
        problems::NotFound, problems::Conflict, problems::BadRequest))]
async fn usage(
    State(c): State<BudgetClient>,
    Name(name): Name,
    Body(b): Body<UsageBody>,
) -> Result<Body<AccountView>, BudgetError> {
    Ok(Body(
        c.usage(&name, &b.processor, b.cost, b.items, b.errors)
            .await?,
    ))
}

/// The OpenAPI description of these routes, generated from the handlers and types above.
#[derive(OpenApi)]
#[openapi(paths(
    configure,
    state,
    remove,
    plan,
    history,
    events,
    start_cycle,
    reserve,
    commit,
    void,
    usage
))]
struct Api;

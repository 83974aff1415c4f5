//! Steps: declared once, leased one at a time, completed, failed or resumed, each output kept.

use super::*;

/// One checkpointed step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct Step {
    /// Its name.
    pub name: String,
    /// Where it is.
    pub status: StepStatus,
    /// How many times it was leased.
    pub attempts: u32,
    /// The worker holding (or that last held) it.
    pub worker: Option<String>,
    /// The token of its current (or last) lease.
    pub token: Option<u64>,
    /// When the current lease lapses (a running step whose lease lapsed is leased again).
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// The error of its last failure.
    pub error: Option<String>,
    /// Its output (JSON text), once done (kept apart from the step list, and read with
    /// [`Steps`]). Serialized as the JSON value itself, not as a string of JSON.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "json_text")]
    #[cfg_attr(feature = "http", schema(value_type = Option<serde_json::Value>))]
    pub output: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct StepList {
    steps: Vec<Step>,
}

/// Declares the steps, in order. Declaring the same steps again changes nothing; other
/// steps once some are declared are a conflict.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeclareSteps {
    /// The step names, in the order they run.
    pub steps: Vec<String>,
}

/// Leases the next step: the first that is not done, if it is pending (or running with a
/// lapsed lease).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NextStep {
    /// Who takes it.
    pub worker: String,
    /// How long the lease lasts, in ms.
    pub lease_ms: u64,
}

/// A leased step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct StepLease {
    /// The step.
    pub name: String,
    /// The lease's token: completing or failing the step needs it.
    pub token: u64,
    /// Which attempt this is (1 for the first).
    pub attempt: u32,
    /// When the lease lapses.
    pub lease_expires_at: DateTime<Utc>,
    /// The output of the step before it (JSON text), if any. Serialized as the JSON value
    /// itself, not as a string of JSON.
    #[serde(default, with = "json_text")]
    #[cfg_attr(feature = "http", schema(value_type = Option<serde_json::Value>))]
    pub previous_output: Option<String>,
}

/// The answer to [`NextStep`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct NextReply {
    /// The step leased, if one could be.
    pub lease: Option<StepLease>,
    /// Every step is done.
    pub finished: bool,
    /// The step that holds the workflow up (running under another lease, or failed).
    pub blocked_by: Option<Step>,
}

/// Records a leased step's outcome.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FinishStep {
    /// The step.
    pub name: String,
    /// The lease's token.
    pub token: u64,
    /// `Ok(output JSON)` completes it, `Err(error)` fails it.
    pub outcome: std::result::Result<Option<String>, String>,
}

/// Re-opens a failed step: it becomes pending again.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResumeStep {
    /// The step.
    pub name: String,
}

/// Reads the steps.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Steps;

impl Sidecar {
    async fn steps(ctx: &mut Context) -> Result<StepList> {
        Ok(ctx.storage().get(STEPS).await?.unwrap_or_default())
    }

    fn find<'a>(list: &'a mut StepList, name: &str) -> Result<&'a mut Step, SidecarError> {
        list.steps
            .iter_mut()
            .find(|s| s.name == name)
            .ok_or_else(|| SidecarError::StepNotFound {
                name: name.to_owned(),
            })
    }
}

impl Handler<DeclareSteps> for Sidecar {
    type Reply = Result<Vec<Step>, SidecarError>;
    async fn handle(&mut self, msg: DeclareSteps, ctx: &mut Context) -> Self::Reply {
        if msg.steps.is_empty() || msg.steps.len() > MAX_STEPS {
            return Err(InvalidInput::new(format!("declare 1 to {MAX_STEPS} steps")).into());
        }
        for (i, s) in msg.steps.iter().enumerate() {
            stead_core::validate_name("step", s)?;
            if msg.steps[..i].contains(s) {
                return Err(InvalidInput::new(format!("step {s:?} is declared twice")).into());
            }
        }
        self.expire_if_due(ctx)?;
        let list = Self::steps(ctx).await?;
        if !list.steps.is_empty() {
            let names: Vec<&String> = list.steps.iter().map(|s| &s.name).collect();
            if names.iter().copied().eq(msg.steps.iter()) {
                return Ok(list.steps);
            }
            return Err(SidecarError::StepsDeclared {
                steps: list.steps.into_iter().map(|s| s.name).collect(),
            });
        }
        let list = StepList {
            steps: msg
                .steps
                .into_iter()
                .map(|name| Step {
                    name,
                    status: StepStatus::Pending,
                    attempts: 0,
                    worker: None,
                    token: None,
                    lease_expires_at: None,
                    error: None,
                    output: None,
                })
                .collect(),
        };
        ctx.storage().put(STEPS, &list)?;
        self.wrote(ctx)?;
        Ok(list.steps)
    }
}

impl Handler<NextStep> for Sidecar {
    type Reply = Result<NextReply, SidecarError>;
    async fn handle(&mut self, msg: NextStep, ctx: &mut Context) -> Self::Reply {
        stead_core::validate_name("worker", &msg.worker)?;
        stead_core::validate_ms("lease_ms", msg.lease_ms, MAX_LEASE_MS)?;
        self.expire_if_due(ctx)?;
        let mut list = Self::steps(ctx).await?;
        let now = ctx.now();
        let Some(at) = list.steps.iter().position(|s| s.status != StepStatus::Done) else {
            return Ok(NextReply {
                lease: None,
                finished: !list.steps.is_empty(),
                blocked_by: None,
            });
        };
        let step = &list.steps[at];
        let lapsed =
            step.status == StepStatus::Running && step.lease_expires_at.is_none_or(|t| t <= now);
        if step.status == StepStatus::Failed || (step.status == StepStatus::Running && !lapsed) {
            return Ok(NextReply {
                lease: None,
                finished: false,
                blocked_by: Some(step.clone()),
            });
        }
        let previous_output = match at.checked_sub(1) {
            Some(p) => ctx.storage().get(&output_key(&list.steps[p].name)).await?,
            None => None,
        };
        let token = self.next_version();
        let expires = now + chrono::Duration::milliseconds(msg.lease_ms as i64);
        let step = &mut list.steps[at];
        step.status = StepStatus::Running;
        step.attempts += 1;
        step.worker = Some(msg.worker);
        step.token = Some(token);
        step.lease_expires_at = Some(expires);
        let lease = StepLease {
            name: step.name.clone(),
            token,
            attempt: step.attempts,
            lease_expires_at: expires,
            previous_output,
        };
        ctx.storage().put(STEPS, &list)?;
        self.wrote(ctx)?;
        Ok(NextReply {
            lease: Some(lease),
            finished: false,
            blocked_by: None,
        })
    }
}

impl Handler<FinishStep> for Sidecar {
    type Reply = Result<Step, SidecarError>;
    async fn handle(&mut self, msg: FinishStep, ctx: &mut Context) -> Self::Reply {
        if let Ok(Some(output)) = &msg.outcome {
            let size = output.len() as u64;
            if size > self.limits.max_item_bytes || encoded_len(output) > self.limits.chunk_bytes {
                return Err(SidecarError::TooLarge {
                    size,
                    max: self.limits.max_item_bytes,
                });
            }
            validate_json("output", output)?;
        }
        self.expire_if_due(ctx)?;
        let mut list = Self::steps(ctx).await?;
        let step = Self::find(&mut list, &msg.name)?;
        if step.status != StepStatus::Running || step.token != Some(msg.token) {
            return Err(SidecarError::StepLeaseLost {
                name: msg.name,
                status: step.status,
                token: msg.token,
                current: step.token,
            });
        }
        match &msg.outcome {
            Ok(output) => {
                let key = output_key(&msg.name);
                let old: Option<String> = ctx.storage().get(&key).await?;
                let freed = old.map_or(0, |o| o.len() as u64);
                let added = output.as_ref().map_or(0, |o| o.len() as u64);
                self.check_quota(added, freed, false)?;
                match output {
                    Some(o) => ctx.storage().put(&key, o)?,
                    None => ctx.storage().delete(&key)?,
                }
                self.meta.bytes = self.meta.bytes - freed + added;
                let step = Self::find(&mut list, &msg.name)?;
                step.status = StepStatus::Done;
                step.error = None;
                step.lease_expires_at = None;
            }
            Err(error) => {
                step.status = StepStatus::Failed;
                step.error = Some(error.chars().take(MAX_ERROR_CHARS).collect());
                step.lease_expires_at = None;
            }
        }
        ctx.storage().put(STEPS, &list)?;
        self.wrote(ctx)?;
        let mut step = Self::find(&mut list, &msg.name)?.clone();
        step.output = msg.outcome.ok().flatten();
        Ok(step)
    }
}

impl Handler<ResumeStep> for Sidecar {
    type Reply = Result<Step, SidecarError>;
    async fn handle(&mut self, msg: ResumeStep, ctx: &mut Context) -> Self::Reply {
        self.expire_if_due(ctx)?;
        let mut list = Self::steps(ctx).await?;
        let step = Self::find(&mut list, &msg.name)?;
        if step.status != StepStatus::Failed {
            return Err(SidecarError::StepNotFailed {
                name: msg.name,
                status: step.status,
            });
        }
        step.status = StepStatus::Pending;
        let step = step.clone();
        ctx.storage().put(STEPS, &list)?;
        self.wrote(ctx)?;
        Ok(step)
    }
}

impl Handler<Steps> for Sidecar {
    type Reply = Result<Vec<Step>, SidecarError>;
    async fn handle(&mut self, _: Steps, ctx: &mut Context) -> Self::Reply {
        self.expire_if_due(ctx)?;
        let mut steps = Self::steps(ctx).await?.steps;
        for s in &mut steps {
            if s.status == StepStatus::Done {
                s.output = ctx.storage().get(&output_key(&s.name)).await?;
            }
        }
        Ok(steps)
    }
}

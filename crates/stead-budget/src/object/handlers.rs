//! How the budget answers each message.

use super::*;

impl Handler<Configure> for Governor {
    type Reply = Result<(BudgetState, bool), BudgetError>;
    async fn handle(&mut self, Configure(spec): Configure, ctx: &mut Context) -> Self::Reply {
        spec.check()?;
        let created = self.spec.is_none();
        let schedule_changed = self
            .spec
            .as_ref()
            .is_none_or(|old| old.cycle_ms != spec.cycle_ms || old.cron != spec.cron);
        if schedule_changed {
            ctx.schedules().cancel(CYCLE_JOB).await?;
            let set = match (&spec.cycle_ms, &spec.cron) {
                (Some(ms), _) => ctx.schedules().every(CYCLE_JOB, Duration::from_millis(*ms)),
                (None, Some(expr)) => ctx.schedules().cron(CYCLE_JOB, expr),
                (None, None) => Ok(()),
            };
            if let Err(e) = set {
                // The error reply discards the cancel above with the rest of the turn.
                return Err(match e {
                    stead_core::Error::InvalidSchedule { detail } => {
                        InvalidInput::new(format!("cron: {detail}")).into()
                    }
                    other => other.into(),
                });
            }
        }
        ctx.storage().put(CONFIG, &spec)?;
        let total = spec.total;
        self.spec = Some(spec);
        if self.books.current().is_none() {
            self.start_cycle(ctx, total)?;
        }
        self.save(ctx).await?;
        Ok((self.view(ctx).await?, created))
    }
}

impl Handler<StartCycle> for Governor {
    type Reply = Result<CycleView, BudgetError>;
    async fn handle(&mut self, msg: StartCycle, ctx: &mut Context) -> Self::Reply {
        let spec = self.spec.as_ref().ok_or(BudgetError::NotFound)?;
        let total = msg.total.unwrap_or(spec.total);
        if total > MAX_AMOUNT {
            return Err(InvalidInput::new(format!("total must be at most {MAX_AMOUNT}")).into());
        }
        self.start_cycle(ctx, total)?;
        self.save(ctx).await?;
        Ok(self.cycle_view(self.books.current().expect("started")))
    }
}

impl Handler<Reserve> for Governor {
    type Reply = Result<Reserved, BudgetError>;
    async fn handle(&mut self, msg: Reserve, ctx: &mut Context) -> Self::Reply {
        stead_core::validate_name("id", &msg.id)?;
        stead_core::validate_ms("ttl_ms", msg.ttl_ms, MAX_TTL_MS)?;
        if msg.amount == 0 || msg.amount > MAX_AMOUNT {
            return Err(
                InvalidInput::new(format!("amount must be between 1 and {MAX_AMOUNT}")).into(),
            );
        }
        self.spec.as_ref().ok_or(BudgetError::NotFound)?;
        let now = ctx.now().timestamp_millis();
        self.expire(now);
        let existed = self.books.reservations().contains_key(&msg.id);
        if !existed {
            // Forget what is old enough; never a young id (its retry would spend again).
            self.forget(now);
            if let Err(e) =
                self.books
                    .check_room(self.env.remember_max as usize, self.remember_ms(), now)
            {
                self.save(ctx).await?;
                return Err(e.into());
            }
        }
        let r = self.books.reserve(
            &msg.id,
            &msg.processor,
            msg.amount,
            now + msg.ttl_ms as i64,
            now,
        );
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                self.save(ctx).await?;
                return Err(e.into());
            }
        };
        if !existed {
            self.dirty_res.insert(r.id.clone());
            self.dirty_cycles.insert(r.cycle);
        }
        self.save(ctx).await?;
        Ok(Reserved {
            reservation: ReservationView::from(&r),
            created: !existed,
        })
    }
}

impl Handler<Commit> for Governor {
    type Reply = Result<ReservationView, BudgetError>;
    async fn handle(&mut self, msg: Commit, ctx: &mut Context) -> Self::Reply {
        self.spec.as_ref().ok_or(BudgetError::NotFound)?;
        let now = ctx.now().timestamp_millis();
        self.expire(now);
        let was_late = self
            .books
            .reservations()
            .get(&msg.id)
            .is_some_and(|r| r.late);
        let r = self.books.commit(&msg.id, msg.actual, now);
        if let Ok(r) = &r
            && r.late
            && !was_late
        {
            self.late_commit(ctx, r)?;
        }
        self.resolved(ctx, r).await
    }
}

impl Handler<Void> for Governor {
    type Reply = Result<ReservationView, BudgetError>;
    async fn handle(&mut self, msg: Void, ctx: &mut Context) -> Self::Reply {
        self.spec.as_ref().ok_or(BudgetError::NotFound)?;
        let now = ctx.now().timestamp_millis();
        self.expire(now);
        let r = self.books.void(&msg.id, now);
        self.resolved(ctx, r).await
    }
}

impl Handler<Usage> for Governor {
    type Reply = Result<AccountView, BudgetError>;
    async fn handle(&mut self, msg: Usage, ctx: &mut Context) -> Self::Reply {
        if msg.cost > MAX_AMOUNT {
            return Err(InvalidInput::new(format!("cost must be at most {MAX_AMOUNT}")).into());
        }
        self.spec.as_ref().ok_or(BudgetError::NotFound)?;
        let was = self
            .books
            .current()
            .and_then(|c| c.accounts.get(&msg.processor))
            .is_some_and(|a| a.overrun);
        let overrun = self
            .books
            .usage(&msg.processor, msg.cost, msg.items, msg.errors)?;
        let cycle = self.books.current().expect("usage needs a cycle");
        let number = cycle.number;
        let acc = cycle.accounts[&msg.processor];
        self.dirty_cycles.insert(number);
        if overrun && !was {
            self.event(
                ctx,
                EventKind::Overrun,
                Some(&msg.processor),
                None,
                acc.spent,
                acc.allocated,
            )?;
        }
        self.alerts(ctx, &msg.processor)?;
        self.save(ctx).await?;
        Ok(account_view(&msg.processor, &acc))
    }
}

impl Handler<Inspect> for Governor {
    type Reply = Result<BudgetState, BudgetError>;
    async fn handle(&mut self, _: Inspect, ctx: &mut Context) -> Self::Reply {
        self.view(ctx).await
    }
}

impl Handler<Plan> for Governor {
    type Reply = Result<Vec<PlanPhase>, BudgetError>;
    async fn handle(&mut self, _: Plan, _ctx: &mut Context) -> Self::Reply {
        let spec = self.spec.as_ref().ok_or(BudgetError::NotFound)?;
        let cycle = self.books.current().ok_or(LedgerError::NoCycle)?;
        let mut phases: BTreeMap<u32, Vec<PlanLine>> = BTreeMap::new();
        for p in spec.processors.iter().filter(|p| p.enabled) {
            let (Some(acc), Some(tier)) = (cycle.accounts.get(&p.id), spec.tiers.get(&p.tier))
            else {
                continue;
            };
            let available = if acc.overrun { 0 } else { acc.available() };
            phases.entry(p.phase).or_default().push(PlanLine {
                processor: p.id.clone(),
                tier: p.tier.clone(),
                model: tier.model.clone(),
                cost_per_call: tier.cost_per_call,
                available,
                max_items: (available / tier.cost_per_call).min(tier.max_concurrency),
            });
        }
        Ok(phases
            .into_iter()
            .map(|(phase, processors)| PlanPhase { phase, processors })
            .collect())
    }
}

impl Handler<History> for Governor {
    type Reply = Result<LogPage<CycleView>, BudgetError>;
    async fn handle(&mut self, msg: History, _ctx: &mut Context) -> Self::Reply {
        self.spec.as_ref().ok_or(BudgetError::NotFound)?;
        msg.0.validate()?;
        let closed = self.books.cycles.iter().filter(|c| c.closed_ms.is_some());
        Ok(LogPage::from_numbered(closed, |c| c.number, &msg.0).map(|c| self.cycle_view(c)))
    }
}

impl Handler<Events> for Governor {
    type Reply = Result<LogPage<BudgetEvent>, BudgetError>;
    async fn handle(&mut self, msg: Events, ctx: &mut Context) -> Self::Reply {
        self.spec.as_ref().ok_or(BudgetError::NotFound)?;
        msg.0.validate()?;
        Ok(EVENTS.page(ctx.storage(), &msg.0).await?)
    }
}

impl Handler<Remove> for Governor {
    type Reply = Result<bool, BudgetError>;
    async fn handle(&mut self, _: Remove, ctx: &mut Context) -> Self::Reply {
        let existed = self.spec.take().is_some();
        ctx.storage().delete_all();
        self.books = Ledger::default();
        self.meta = Meta::default();
        self.expiry_ms = None;
        self.dirty_cycles.clear();
        self.dirty_res.clear();
        Ok(existed)
    }
}

pub(super) fn account_view(processor: &str, a: &Account) -> AccountView {
    AccountView {
        processor: processor.to_owned(),
        allocated: a.allocated,
        reserved: a.reserved,
        spent: a.spent,
        available: if a.overrun { 0 } else { a.available() },
        items: a.items,
        errors: a.errors,
        overrun: a.overrun,
    }
}

//! The governor's own steps: events, alerts, expiry, saving.

use super::*;

impl Governor {
    pub(super) fn start_cycle(&mut self, ctx: &mut Context, total: u64) -> Result<()> {
        let Some(spec) = &self.spec else {
            return Ok(());
        };
        let (weights, rollover, keep) = (spec.weights(), spec.rollover, spec.history as usize);
        let now = ctx.now().timestamp_millis();
        let before: Vec<u64> = self.books.cycles.iter().map(|c| c.number).collect();
        if let Some(c) = self.books.current() {
            self.dirty_cycles.insert(c.number);
        }
        // `keep` closed cycles, and the current one.
        let cycle = self
            .books
            .start_cycle(total, &weights, rollover, keep + 1, now);
        let (number, allocated) = (cycle.number, cycle.sums().0);
        self.dirty_cycles.insert(number);
        // Cycles dropped from the history are deleted; those kept are unchanged.
        let kept: BTreeSet<u64> = self.books.cycles.iter().map(|c| c.number).collect();
        self.dirty_cycles
            .extend(before.into_iter().filter(|n| !kept.contains(n)));
        self.meta.fired.clear();
        self.event(ctx, EventKind::CycleStarted, None, None, 0, allocated)
    }

    /// A late commit: the money was spent, unheld. It is on the books (spent), in the event
    /// log, and flags an overrun if it took the processor past its allocation.
    pub(super) fn late_commit(&mut self, ctx: &mut Context, r: &Reservation) -> Result<()> {
        let Some(acc) = self
            .books
            .cycles
            .iter()
            .find(|c| c.number == r.cycle)
            .and_then(|c| c.accounts.get(&r.processor))
            .copied()
        else {
            return Ok(());
        };
        metrics::counter!("stead_budget_late_commits_total").increment(1);
        tracing::warn!(budget = ?ctx.name(), reservation = %r.id, processor = %r.processor, "a reservation was committed after it expired; its spend is recorded");
        self.event(
            ctx,
            EventKind::LateCommit,
            Some(&r.processor),
            None,
            acc.spent,
            acc.allocated,
        )?;
        if acc.overrun {
            self.event(
                ctx,
                EventKind::Overrun,
                Some(&r.processor),
                None,
                acc.spent,
                acc.allocated,
            )?;
        }
        Ok(())
    }

    pub(super) fn remember_ms(&self) -> i64 {
        i64::try_from(self.env.remember_ms).unwrap_or(i64::MAX)
    }

    /// Forgets the resolved reservations whose `remember_ms` since resolution passed.
    pub(super) fn forget(&mut self, now: i64) {
        let before = now.saturating_sub(self.remember_ms());
        for id in self.books.forget_resolved(before) {
            self.dirty_res.insert(id);
        }
    }

    /// Expires due reservations.
    pub(super) fn expire(&mut self, now: i64) {
        for id in self.books.expire(now) {
            if let Some(r) = self.books.reservations().get(&id) {
                self.dirty_cycles.insert(r.cycle);
            }
            self.dirty_res.insert(id);
        }
    }

    pub(super) async fn resolved(
        &mut self,
        ctx: &mut Context,
        r: Result<Reservation, LedgerError>,
    ) -> Result<ReservationView, BudgetError> {
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                self.save(ctx).await?;
                return Err(e.into());
            }
        };
        self.dirty_res.insert(r.id.clone());
        self.dirty_cycles.insert(r.cycle);
        if matches!(r.state, ReservationState::Committed { .. })
            && self.books.current().is_some_and(|c| c.number == r.cycle)
        {
            self.alerts(ctx, &r.processor)?;
        }
        self.save(ctx).await?;
        Ok(ReservationView::from(&r))
    }

    /// Fires the alerts whose thresholds the processor's or the budget's spending crossed.
    pub(super) fn alerts(&mut self, ctx: &mut Context, processor: &str) -> Result<()> {
        let Some(spec) = &self.spec else {
            return Ok(());
        };
        let Some(cycle) = self.books.current() else {
            return Ok(());
        };
        let number = cycle.number;
        let (allocated, _, spent) = cycle.sums();
        let acc = cycle.accounts.get(processor).copied().unwrap_or_default();
        let mut due = Vec::new();
        for &t in &spec.alerts {
            for (scope, spent, allocated) in [
                (processor, acc.spent, acc.allocated),
                ("*", spent, allocated),
            ] {
                let crossed = u128::from(spent) * 100 >= u128::from(allocated) * u128::from(t);
                if allocated > 0 && crossed && !self.meta.fired.contains(&(scope.to_owned(), t)) {
                    due.push((scope.to_owned(), t, spent, allocated));
                }
            }
        }
        for (scope, t, spent, allocated) in due {
            self.meta.fired.insert((scope.clone(), t));
            let who = (scope != "*").then_some(scope.as_str());
            metrics::counter!("stead_budget_alerts_total", "threshold" => t.to_string())
                .increment(1);
            tracing::info!(budget = ?ctx.name(), cycle = number, processor = who, threshold = t, spent, allocated, "budget alert");
            self.event(ctx, EventKind::Alert, who, Some(t), spent, allocated)?;
        }
        Ok(())
    }

    pub(super) fn event(
        &mut self,
        ctx: &mut Context,
        kind: EventKind,
        processor: Option<&str>,
        threshold: Option<u32>,
        spent: u64,
        allocated: u64,
    ) -> Result<()> {
        self.meta.next_event += 1;
        self.meta_dirty = true;
        let seq = self.meta.next_event;
        let e = BudgetEvent {
            seq,
            at: ctx.now(),
            kind,
            cycle: self.books.current().map_or(0, |c| c.number),
            processor: processor.map(str::to_owned),
            threshold,
            spent,
            allocated,
        };
        EVENTS.append(ctx.storage(), seq, &e, u64::from(self.env.events.max(1)))
    }

    /// Writes what the turn changed, forgets old resolved reservations, and sets the
    /// expiry job for the next pending expiry.
    pub(super) async fn save(&mut self, ctx: &mut Context) -> Result<()> {
        // Cheap: it looks at the oldest resolved reservation and stops at the first young one.
        self.forget(ctx.now().timestamp_millis());
        for n in std::mem::take(&mut self.dirty_cycles) {
            match self.books.cycles.iter().find(|c| c.number == n) {
                Some(c) => ctx.storage().put(&cycle_key(n), c)?,
                None => {
                    ctx.storage().delete(&cycle_key(n))?;
                }
            }
        }
        for id in std::mem::take(&mut self.dirty_res) {
            match self.books.reservations().get(&id) {
                Some(r) => ctx.storage().put(&res_key(&id), r)?,
                None => {
                    ctx.storage().delete(&res_key(&id))?;
                }
            }
        }
        if std::mem::take(&mut self.meta_dirty) {
            ctx.storage().put(META, &self.meta)?;
        }
        let next = self.books.next_expiry_ms();
        if next != self.expiry_ms {
            match next {
                Some(ms) => ctx.schedules().once(EXPIRY_JOB, from_ms(ms))?,
                None => {
                    ctx.schedules().cancel(EXPIRY_JOB).await?;
                }
            }
            self.expiry_ms = next;
        }
        Ok(())
    }

    pub(super) fn cycle_view(&self, c: &Cycle) -> CycleView {
        let (allocated, reserved, spent) = c.sums();
        let order: Vec<&str> = self
            .spec
            .iter()
            .flat_map(|s| s.processors.iter().map(|p| p.id.as_str()))
            .collect();
        let mut accounts: Vec<AccountView> = order
            .iter()
            .filter_map(|id| c.accounts.get(*id).map(|a| account_view(id, a)))
            .collect();
        accounts.extend(
            c.accounts
                .iter()
                .filter(|(id, _)| !order.contains(&id.as_str()))
                .map(|(id, a)| account_view(id, a)),
        );
        CycleView {
            number: c.number,
            started_at: from_ms(c.started_ms),
            closed_at: c.closed_ms.map(from_ms),
            total: c.total,
            rollover_in: c.rollover_in,
            rollover_out: c.rollover_out,
            allocated,
            reserved,
            spent,
            accounts,
        }
    }

    pub(super) async fn view(&mut self, ctx: &mut Context) -> Result<BudgetState, BudgetError> {
        let spec = self.spec.clone().ok_or(BudgetError::NotFound)?;
        let next_cycle_at = ctx
            .schedules()
            .list()
            .await?
            .into_iter()
            .find(|j| j.name == CYCLE_JOB)
            .map(|j| j.next);
        Ok(BudgetState {
            config: spec,
            cycle: self.books.current().map(|c| self.cycle_view(c)),
            pending: self.books.pending_count() as u64,
            next_cycle_at,
        })
    }
}

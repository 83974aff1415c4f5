//! The entity's own work: recording decisions and commands, delivering to webhooks, cycles, bounds.

use super::*;

impl ReactorEntity {
    pub(super) async fn delivery(&self) -> Result<Delivery, ReactorError> {
        Ok(self.env.entry(&self.kind).await?.delivery.clone())
    }

    /// The delivery of the type, for work the runtime starts (a job, a delivery's
    /// outcome): a type that is gone leaves nothing to do (and is logged).
    pub(super) async fn delivery_for_job(&self) -> stead_core::Result<Option<Delivery>> {
        match self.delivery().await {
            Ok(d) => Ok(Some(d)),
            Err(ReactorError::Runtime(e)) => Err(e),
            Err(e) => {
                tracing::warn!(reactor = %self.kind, entity = %self.entity, error = %e, "no deliveries: the reactor type is not available");
                Ok(None)
            }
        }
    }

    pub(super) async fn state_or_initial(&self) -> Result<Value, ReactorError> {
        let ty = self.env.entry(&self.kind).await?;
        self.state_or(&ty.behaviour)
    }

    pub(super) fn state_or(&self, behaviour: &SharedBehaviour) -> Result<Value, ReactorError> {
        match &self.meta.state {
            Some(s) => Ok(s.clone()),
            None => Ok(behaviour.initial()?),
        }
    }

    pub(super) fn check_size(&self, state: &Value) -> Result<(), ReactorError> {
        let bytes = serde_json::to_vec(state).map_or(usize::MAX, |v| v.len());
        let max = self.env.config.max_state_bytes as usize;
        if bytes > max {
            return Err(ReactorError::StateTooLarge { bytes, max });
        }
        Ok(())
    }

    /// Commands not yet everywhere they go.
    pub(super) fn pending(&self, delivery: &Delivery) -> u64 {
        self.meta.last_seq - self.low_water(delivery)
    }

    /// The command every way has: what may leave storage.
    pub(super) fn low_water(&self, delivery: &Delivery) -> u64 {
        let mut low = self.meta.last_seq;
        if delivery.pull {
            low = low.min(self.meta.acked);
        }
        for w in &delivery.webhooks {
            low = low.min(self.start_of(&w.url));
        }
        low
    }

    /// Every command up to this one is delivered to (or dead-lettered for) the endpoint. An
    /// endpoint added to a type later starts after the commands already gone.
    pub(super) fn start_of(&self, url: &str) -> u64 {
        match self.meta.endpoints.get(url) {
            Some(c) => c.delivered,
            None => self
                .outbox
                .keys()
                .next()
                .map_or(self.meta.last_seq, |first| first - 1),
        }
    }

    /// Sets the cycle jobs to the type's cycles, once per activation (a type's cycles
    /// that changed reach an entity when it next activates or its next cycle runs).
    pub(super) async fn check_cycles(
        &mut self,
        ctx: &mut Context,
        behaviour: &SharedBehaviour,
    ) -> Result<(), ReactorError> {
        if self.cycles_checked {
            return Ok(());
        }
        let wanted = behaviour.cycles();
        if wanted != self.meta.cycles {
            for old in &self.meta.cycles {
                if !wanted.contains(old) {
                    ctx.schedules()
                        .cancel(&format!("{CYCLE_JOB}{}", old.name))
                        .await?;
                }
            }
            for c in &wanted {
                if !self.meta.cycles.contains(c) {
                    ctx.schedules()
                        .cron(&format!("{CYCLE_JOB}{}", c.name), &c.cron)
                        .map_err(|e| InvalidInput::new(e.to_string()))?;
                }
            }
            self.meta.cycles = wanted;
        }
        self.cycles_checked = true;
        Ok(())
    }

    pub(super) async fn run_cycle(
        &mut self,
        ctx: &mut Context,
        cycle: &str,
    ) -> Result<(), ReactorError> {
        let ty = self.env.entry(&self.kind).await?;
        self.cycles_checked = false;
        self.check_cycles(ctx, &ty.behaviour).await?;
        if !self.meta.cycles.iter().any(|c| c.name == cycle) {
            return Ok(());
        }
        let mut state = self.state_or(&ty.behaviour)?;
        let mut out = Decide::new(self.entity.clone(), ctx.now());
        ty.behaviour.on_cycle(&mut state, cycle, &mut out)?;
        let pending = self.pending(&ty.delivery);
        if pending + out.commands.len() as u64 > u64::from(self.env.config.max_outbox) {
            return Err(ReactorError::OutboxFull { pending });
        }
        self.check_size(&state)?;
        self.record(ctx, state, out, format!("cycle:{cycle}"), &ty.delivery)
            .await?;
        Ok(())
    }

    /// Keeps what a decision produced: the state, the commands, the log entries; then
    /// starts deliveries, answers long-polls and tells live views, once it is durable.
    pub(super) async fn record(
        &mut self,
        ctx: &mut Context,
        state: Value,
        out: Decide,
        cause: String,
        delivery: &Delivery,
    ) -> Result<(), ReactorError> {
        let now = ctx.now();
        let first = self.meta.last_seq + 1;
        let commands: Vec<Command> = out
            .commands
            .into_iter()
            .zip(first..)
            .map(|(emit, seq)| Command {
                seq,
                id: format!("{}{seq}", self.id_prefix),
                kind: emit.kind,
                payload: emit.payload,
                reactor: self.kind.clone(),
                entity: self.entity.clone(),
                created_at: now,
                cause: cause.clone(),
            })
            .collect();
        // Bounded by bytes as well as by count, before anything is written.
        let weight: u64 = commands.iter().map(command_bytes).sum();
        let config = &self.env.config;
        if weight > config.max_event_output_bytes {
            return Err(InvalidInput::new(format!(
                "the decision emits {weight} bytes of commands; one event or cycle may emit at most {}",
                config.max_event_output_bytes
            ))
            .into());
        }
        if self.outbox_bytes + weight > config.max_outbox_bytes {
            return Err(ReactorError::OutboxFull {
                pending: self.pending(delivery),
            });
        }
        let mut seqs = Vec::with_capacity(commands.len());
        for command in commands {
            let seq = command.seq;
            self.meta.last_seq = seq;
            ctx.storage().put(&seq_key(CMD, seq), &command)?;
            self.outbox.insert(seq, command);
            seqs.push(seq);
        }
        self.outbox_bytes += weight;
        let keep = u64::from(self.env.config.decisions);
        let mut logged = Vec::with_capacity(out.notes.len());
        for (
            Note {
                kind,
                reason,
                context,
            },
            covered,
        ) in out.notes
        {
            self.meta.last_decision += 1;
            let n = self.meta.last_decision;
            let decision = Decision {
                seq: n,
                at: now,
                kind,
                reason,
                context,
                cause: cause.clone(),
                commands: covered.iter().map(|i| first + *i as u64).collect(),
            };
            DECISIONS.append(ctx.storage(), n, &decision, keep)?;
            logged.push(decision);
        }
        let changed = self.meta.state.as_ref() != Some(&state);
        self.meta.state = Some(state);
        self.pump(ctx, delivery).await?;
        self.save(ctx)?;
        if !seqs.is_empty() {
            self.answer_waiters(ctx)?;
        }
        if !ctx.websockets(Some(LIVE_TAG)).is_empty() {
            let update = serde_json::json!({
                "kind": "update",
                "cause": cause,
                "state": if changed { self.meta.state.clone() } else { None },
                "decisions": logged,
                "commands": seqs.iter().filter_map(|s| self.outbox.get(s)).collect::<Vec<_>>(),
            });
            ctx.broadcast(Some(LIVE_TAG), WebSocketMessage::Text(update.to_string()));
        }
        Ok(())
    }

    /// Starts a delivery to every endpoint that has something to send, is not waiting for
    /// an answer or a retry; sets the delivery job for the next retry or as a watchdog.
    pub(super) async fn pump(
        &mut self,
        ctx: &mut Context,
        delivery: &Delivery,
    ) -> stead_core::Result<()> {
        if delivery.webhooks.is_empty() {
            return Ok(());
        }
        let now = to_ms(ctx.now());
        let mut wake: Option<i64> = None;
        for hook in &delivery.webhooks {
            let start = self.start_of(&hook.url);
            let cursor = self
                .meta
                .endpoints
                .entry(hook.url.clone())
                .or_insert_with(|| Cursor::starting_at(start));
            if self.inflight.contains_key(&hook.url) {
                let watchdog = now + WATCHDOG_MS;
                wake = Some(wake.map_or(watchdog, |w| w.min(watchdog)));
                continue;
            }
            if let Some(retry) = cursor.retry_at_ms
                && retry > now
            {
                wake = Some(wake.map_or(retry, |w| w.min(retry)));
                continue;
            }
            let (target, command) = loop {
                match cursor.redo.front() {
                    Some(d) => {
                        let d = *d;
                        match ctx
                            .storage()
                            .get::<DeadLetter>(&DEAD_LETTERS.key(d))
                            .await?
                        {
                            Some(dead) => break (Target::Dead(d), Some(dead.command)),
                            // Dropped meanwhile.
                            None => {
                                cursor.redo.pop_front();
                            }
                        }
                    }
                    None if cursor.delivered < self.meta.last_seq => {
                        let s = cursor.delivered + 1;
                        break (Target::Seq(s), self.outbox.get(&s).cloned());
                    }
                    None => break (Target::Seq(0), None),
                }
            };
            let Some(command) = command else {
                continue;
            };
            self.inflight.insert(hook.url.clone(), (target, now));
            let watchdog = now + WATCHDOG_MS;
            wake = Some(wake.map_or(watchdog, |w| w.min(watchdog)));
            let env = self.env.clone();
            let name = entity_name(&self.kind, &self.entity);
            let url = hook.url.clone();
            let key = hook.key();
            // Sent only once this turn is durable: a command is never delivered before it
            // is stored.
            ctx.after_commit(move || {
                tokio::spawn(async move {
                    env.deliver(name, url, key, target, command).await;
                });
            });
        }
        if let Some(wake) = wake {
            ctx.schedules().once(DELIVER_JOB, from_ms(wake))?;
        }
        Ok(())
    }

    /// Deletes the commands every way has.
    pub(super) async fn collect(
        &mut self,
        ctx: &mut Context,
        delivery: &Delivery,
    ) -> stead_core::Result<()> {
        let low = self.low_water(delivery);
        let gone: Vec<u64> = self.outbox.range(..=low).map(|(s, _)| *s).collect();
        for s in gone {
            if let Some(c) = self.outbox.remove(&s) {
                self.outbox_bytes = self.outbox_bytes.saturating_sub(command_bytes(&c));
            }
            ctx.storage().delete(&seq_key(CMD, s))?;
        }
        Ok(())
    }

    pub(super) async fn dead_letter(
        &mut self,
        ctx: &mut Context,
        endpoint: &str,
        command: Command,
        attempts: u32,
        error: String,
    ) -> stead_core::Result<()> {
        let keep = u64::from(self.env.config.dead_letters);
        self.meta.last_dead += 1;
        let n = self.meta.last_dead;
        tracing::warn!(reactor = %self.kind, entity = %self.entity, endpoint = %crate::delivery::masked(endpoint), command = %command.id, %error, "a command was dead-lettered");
        let dead = DeadLetter {
            seq: n,
            endpoint: endpoint.to_owned(),
            command,
            attempts,
            error,
            at: ctx.now(),
            retrying: false,
        };
        ctx.storage().put(&DEAD_LETTERS.key(n), &dead)?;
        *self.meta.dead_count.get_or_insert(0) += 1;
        if n > keep {
            let old = n - keep;
            self.remove_dead(ctx, old).await?;
            for c in self.meta.endpoints.values_mut() {
                c.redo.retain(|s| *s != old);
            }
        }
        Ok(())
    }

    /// Deletes dead letter `seq`, if it is still there, and counts it out.
    pub(super) async fn remove_dead(
        &mut self,
        ctx: &mut Context,
        seq: u64,
    ) -> stead_core::Result<()> {
        let key = DEAD_LETTERS.key(seq);
        if ctx.storage().get::<Value>(&key).await?.is_some() {
            ctx.storage().delete(&key)?;
            let n = self.meta.dead_count.get_or_insert(0);
            *n = n.saturating_sub(1);
        }
        Ok(())
    }

    pub(super) fn save(&mut self, ctx: &mut Context) -> stead_core::Result<()> {
        ctx.storage().put(META, &self.meta)
    }

    pub(super) fn page(&self, after: u64, limit: u32) -> CommandPage {
        let from = after.max(self.meta.acked) + 1;
        CommandPage {
            commands: self
                .outbox
                .range(from..)
                .take(limit as usize)
                .map(|(_, c)| c.clone())
                .collect(),
        }
    }

    /// Answers the long-polls that have commands now or whose wait is over; sets the poll
    /// job for the next deadline.
    pub(super) fn answer_waiters(&mut self, ctx: &mut Context) -> stead_core::Result<()> {
        let now = ctx.now();
        for w in std::mem::take(&mut self.waiters) {
            if w.reply.is_closed() {
                continue;
            }
            let page = self.page(w.after, w.limit);
            if !page.commands.is_empty() || w.deadline <= now {
                w.reply.complete(ctx, Ok(page));
            } else {
                self.waiters.push(w);
            }
        }
        self.arm_poll(ctx)
    }

    pub(super) fn arm_poll(&mut self, ctx: &mut Context) -> stead_core::Result<()> {
        match self.waiters.iter().map(|w| w.deadline).min() {
            Some(next) => ctx.schedules().once(POLL_JOB, next),
            None => Ok(()),
        }
    }
}

//! How the entity answers each message.

use super::*;

impl Handler<Ingest> for ReactorEntity {
    type Reply = Result<Ingested, ReactorError>;
    async fn handle(&mut self, Ingest(event): Ingest, ctx: &mut Context) -> Self::Reply {
        stead_core::validate_name("event id", &event.id)?;
        stead_core::validate_name("event type", &event.kind)?;
        let ty = self.env.entry(&self.kind).await?;
        let now = ctx.now();
        let now_ms = to_ms(now);
        self.seen
            .forget_expired(ctx.storage(), now_ms, FORGET_BATCH)
            .await?;
        let key = seen_key(&event.id);
        if self.seen.seen(ctx.storage(), &key, now_ms).await?.is_some() {
            return Ok(Ingested {
                accepted: true,
                duplicate: true,
                commands: 0,
            });
        }
        let pending = self.pending(&ty.delivery);
        if pending >= u64::from(self.env.config.max_outbox) {
            return Err(ReactorError::OutboxFull { pending });
        }
        self.check_cycles(ctx, &ty.behaviour).await?;
        let mut state = self.state_or(&ty.behaviour)?;
        let mut out = Decide::new(self.entity.clone(), now);
        ty.behaviour.on_event(&mut state, &event, &mut out)?;
        let emitted = out.commands.len() as u64;
        if pending + emitted > u64::from(self.env.config.max_outbox) {
            return Err(ReactorError::OutboxFull { pending });
        }
        self.check_size(&state)?;
        if let Err(r) = self.seen.make_room(ctx.storage(), now_ms).await? {
            return Err(ReactorError::Remembering(r));
        }
        self.seen.remember(ctx.storage(), &key, now_ms).await?;
        self.meta.events += 1;
        self.record(ctx, state, out, format!("event:{}", event.id), &ty.delivery)
            .await?;
        Ok(Ingested {
            accepted: true,
            duplicate: false,
            commands: emitted,
        })
    }
}

impl Handler<Inspect> for ReactorEntity {
    type Reply = Result<EntityView, ReactorError>;
    async fn handle(&mut self, _: Inspect, _ctx: &mut Context) -> Self::Reply {
        let ty = self.env.entry(&self.kind).await?;
        let state = self.state_or(&ty.behaviour)?;
        let endpoints = ty
            .delivery
            .webhooks
            .iter()
            .map(|w| {
                let c = self.meta.endpoints.get(&w.url).cloned().unwrap_or_default();
                EndpointView {
                    url: w.url.clone(),
                    delivered: self.start_of(&w.url),
                    attempts: c.attempts,
                    retry_at: c.retry_at_ms.map(from_ms),
                    last_error: c.last_error,
                }
            })
            .collect();
        Ok(EntityView {
            reactor: self.kind.clone(),
            entity: self.entity.clone(),
            state,
            events: self.meta.events,
            last_seq: self.meta.last_seq,
            acked: ty.delivery.pull.then_some(self.meta.acked),
            pending: self.outbox.len() as u64,
            endpoints,
            dead_letters: self.meta.dead_count.unwrap_or(0),
        })
    }
}

impl Handler<Decisions> for ReactorEntity {
    type Reply = Result<LogPage<Decision>, ReactorError>;
    async fn handle(&mut self, msg: Decisions, ctx: &mut Context) -> Self::Reply {
        Ok(DECISIONS.page(ctx.storage(), &msg.0).await?)
    }
}

impl DeferredHandler<Poll> for ReactorEntity {
    type Reply = Result<CommandPage, ReactorError>;
    async fn handle(&mut self, msg: Poll, ctx: &mut Context, reply: Deferred<Self::Reply>) {
        let answer = async {
            stead_core::validate_page_limit(u64::from(msg.limit))?;
            if msg.wait_ms > MAX_WAIT_MS {
                return Err(
                    InvalidInput::new(format!("wait_ms may be at most {MAX_WAIT_MS}")).into(),
                );
            }
            let ty = self.env.entry(&self.kind).await?;
            if !ty.delivery.pull {
                return Err(ReactorError::NotPulled);
            }
            Ok(())
        }
        .await;
        if let Err(e) = answer {
            reply.complete(ctx, Err(e));
            return;
        }
        let page = self.page(msg.after, msg.limit);
        if !page.commands.is_empty() || msg.wait_ms == 0 {
            reply.complete(ctx, Ok(page));
            return;
        }
        let deadline = ctx.now() + chrono::Duration::milliseconds(msg.wait_ms as i64);
        self.waiters.retain(|w| !w.reply.is_closed());
        if self.waiters.len() >= stead_core::MAX_PARKED_PER_OBJECT {
            let err = stead_core::Error::too_many_waiting(<Self as DurableObject>::CLASS);
            reply.complete(ctx, Err(err.into()));
            return;
        }
        self.waiters.push(Waiter {
            after: msg.after,
            limit: msg.limit,
            deadline,
            reply,
        });
        if let Err(e) = self.arm_poll(ctx) {
            tracing::warn!(error = %e, "a long-poll could not set its deadline");
        }
    }
}

impl Handler<Ack> for ReactorEntity {
    type Reply = Result<u64, ReactorError>;
    async fn handle(&mut self, msg: Ack, ctx: &mut Context) -> Self::Reply {
        let ty = self.env.entry(&self.kind).await?;
        if !ty.delivery.pull {
            return Err(ReactorError::NotPulled);
        }
        if msg.up_to > self.meta.last_seq {
            return Err(ReactorError::AckBeyondOutbox {
                up_to: msg.up_to,
                last: self.meta.last_seq,
            });
        }
        if msg.up_to > self.meta.acked {
            self.meta.acked = msg.up_to;
            self.collect(ctx, &ty.delivery).await?;
            self.save(ctx)?;
        }
        Ok(self.meta.acked)
    }
}

impl Handler<DeadLetters> for ReactorEntity {
    type Reply = Result<LogPage<DeadLetter>, ReactorError>;
    async fn handle(&mut self, msg: DeadLetters, ctx: &mut Context) -> Self::Reply {
        let page: LogPage<DeadLetter> = DEAD_LETTERS.page(ctx.storage(), &msg.0).await?;
        Ok(page.map(|mut d| {
            d.retrying = self
                .meta
                .endpoints
                .get(&d.endpoint)
                .is_some_and(|c| c.redo.contains(&d.seq));
            d
        }))
    }
}

impl Handler<ResolveDeadLetters> for ReactorEntity {
    type Reply = Result<u64, ReactorError>;
    async fn handle(&mut self, msg: ResolveDeadLetters, ctx: &mut Context) -> Self::Reply {
        let all: Vec<(String, DeadLetter)> = ctx.storage().list(ListOptions::prefix(DEAD)).await?;
        let chosen: Vec<DeadLetter> = all
            .into_iter()
            .map(|(_, d)| d)
            .filter(|d| msg.seqs.as_ref().is_none_or(|s| s.contains(&d.seq)))
            .collect();
        if let Some(seqs) = &msg.seqs
            && let Some(missing) = seqs.iter().find(|s| !chosen.iter().any(|d| d.seq == **s))
        {
            return Err(ReactorError::UnknownDeadLetter(*missing));
        }
        let delivery = self.delivery().await?;
        let mut n = 0;
        for d in chosen {
            match msg.action {
                DeadLetterAction::Drop => {
                    self.remove_dead(ctx, d.seq).await?;
                    if let Some(c) = self.meta.endpoints.get_mut(&d.endpoint) {
                        c.redo.retain(|s| *s != d.seq);
                    }
                    n += 1;
                }
                DeadLetterAction::Retry => {
                    if !delivery.webhooks.iter().any(|w| w.url == d.endpoint) {
                        return Err(ReactorError::EndpointGone(d.endpoint));
                    }
                    let c = self.meta.endpoints.entry(d.endpoint.clone()).or_default();
                    if !c.redo.contains(&d.seq) {
                        c.redo.push_back(d.seq);
                        n += 1;
                    }
                }
            }
        }
        self.pump(ctx, &delivery).await?;
        self.save(ctx)?;
        Ok(n)
    }
}

impl Handler<Delivered> for ReactorEntity {
    type Reply = stead_core::Result<()>;
    async fn handle(&mut self, msg: Delivered, ctx: &mut Context) -> Self::Reply {
        let Some(delivery) = self.delivery_for_job().await? else {
            return Ok(());
        };
        let was_inflight = self.inflight.get(&msg.endpoint).map(|(t, _)| *t) == Some(msg.target);
        if was_inflight {
            self.inflight.remove(&msg.endpoint);
        }
        let Some(hook) = delivery.webhooks.iter().find(|w| w.url == msg.endpoint) else {
            return Ok(());
        };
        let url = hook.url.clone();
        let start = self.start_of(&url);
        let now = to_ms(ctx.now());
        let cfg = &self.env.config;
        let (max_attempts, base_ms, max_ms) =
            (cfg.max_attempts, cfg.retry_base_ms, cfg.retry_max_ms);
        let cursor = self
            .meta
            .endpoints
            .entry(url.clone())
            .or_insert_with(|| Cursor::starting_at(start));
        // Only the outcome for what the endpoint waits on counts (a late answer to a
        // delivery sent again is a duplicate): its next command, or the dead letter first in
        // line. A dead letter queued while a command was out does not make that command's
        // answer a duplicate.
        let waited_on = match msg.target {
            Target::Seq(s) => s == cursor.delivered + 1,
            Target::Dead(d) => cursor.redo.front() == Some(&d),
        };
        if !waited_on {
            if was_inflight {
                // The endpoint is free again: send what it does wait on.
                self.pump(ctx, &delivery).await?;
                self.save(ctx)?;
            }
            return Ok(());
        }
        match msg.outcome {
            Ok(()) => {
                cursor.attempts = 0;
                cursor.retry_at_ms = None;
                cursor.last_error = None;
                match msg.target {
                    Target::Seq(s) => cursor.delivered = s,
                    Target::Dead(d) => {
                        cursor.redo.pop_front();
                        self.remove_dead(ctx, d).await?;
                    }
                }
            }
            Err(error) => {
                cursor.attempts += 1;
                cursor.last_error = Some(error.clone());
                if cursor.attempts >= max_attempts {
                    let attempts = cursor.attempts;
                    cursor.attempts = 0;
                    cursor.retry_at_ms = None;
                    match msg.target {
                        Target::Seq(s) => {
                            cursor.delivered = s;
                            if let Some(command) = self.outbox.get(&s).cloned() {
                                self.dead_letter(ctx, &url, command, attempts, error)
                                    .await?;
                            }
                        }
                        Target::Dead(d) => {
                            // Given up again: it stays a dead letter, no longer queued.
                            cursor.redo.pop_front();
                            let key = DEAD_LETTERS.key(d);
                            if let Some(mut dead) = ctx.storage().get::<DeadLetter>(&key).await? {
                                dead.attempts += attempts;
                                dead.error = error;
                                dead.at = from_ms(now);
                                ctx.storage().put(&key, &dead)?;
                            }
                        }
                    }
                } else {
                    let wait = delivery::backoff(cursor.attempts, base_ms, max_ms);
                    cursor.retry_at_ms = Some(now + wait as i64);
                }
            }
        }
        self.collect(ctx, &delivery).await?;
        self.pump(ctx, &delivery).await?;
        self.save(ctx)
    }
}

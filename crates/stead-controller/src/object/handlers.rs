//! How the controller answers each message.

use super::*;

impl Handler<Configure> for Controller {
    type Reply = Result<(ControllerState, bool), ControllerError>;
    async fn handle(&mut self, Configure(body): Configure, ctx: &mut Context) -> Self::Reply {
        let spec = body.check()?;
        let now = to_ms(ctx.now());
        let created = self.state.is_none();
        let before = self.state.as_ref().map(State::setting);
        match &mut self.state {
            None => {
                self.state = Some(State {
                    epoch: now,
                    paused: false,
                    shape: Shape {
                        batch_size: spec.initial_batch,
                        interval_ms: spec.bounds.base_interval_ms,
                    },
                    backing_off: false,
                    breaker: Breaker::default(),
                    window: Window::new(spec.window as usize),
                    window_dirty: true,
                    gradient: GradientState::default(),
                    leases: Vec::new(),
                    next_lease: 1,
                    last_start_ms: None,
                    totals: Totals::default(),
                    next_log: 1,
                    updated_ms: now,
                    spec,
                });
            }
            Some(s) => {
                if s.spec.policy.name() != spec.policy.name() {
                    s.gradient = GradientState::default();
                }
                let b = &spec.bounds;
                s.shape.batch_size = s.shape.batch_size.clamp(b.min_batch, b.max_batch);
                s.shape.interval_ms = if s.backing_off {
                    s.shape
                        .interval_ms
                        .clamp(b.base_interval_ms, b.max_interval_ms)
                } else {
                    b.base_interval_ms
                };
                s.window.resize(spec.window as usize);
                s.window_dirty = true;
                s.spec = spec;
            }
        }
        let s = self.state.as_mut().expect("set above");
        let after = s.setting();
        s.log(
            ctx,
            &self.env,
            Entry::new(Cause::Configured, before.unwrap_or(after), after),
        )
        .await?;
        self.drive(ctx).await;
        self.save(ctx)?;
        Ok((self.view(ctx)?, created))
    }
}

impl Handler<Start> for Controller {
    type Reply = Result<ControllerState, ControllerError>;
    async fn handle(&mut self, _: Start, ctx: &mut Context) -> Self::Reply {
        let s = existing(&mut self.state)?;
        let before = s.setting();
        if s.paused {
            s.paused = false;
            s.last_start_ms = None;
            let after = s.setting();
            s.log(ctx, &self.env, Entry::new(Cause::Started, before, after))
                .await?;
        }
        self.drive(ctx).await;
        self.save(ctx)?;
        self.view(ctx)
    }
}

impl Handler<Pause> for Controller {
    type Reply = Result<ControllerState, ControllerError>;
    async fn handle(&mut self, _: Pause, ctx: &mut Context) -> Self::Reply {
        let s = existing(&mut self.state)?;
        let before = s.setting();
        if !s.paused {
            s.paused = true;
            let after = s.setting();
            s.log(ctx, &self.env, Entry::new(Cause::Paused, before, after))
                .await?;
        }
        self.save(ctx)?;
        self.view(ctx)
    }
}

impl Handler<Reset> for Controller {
    type Reply = Result<ControllerState, ControllerError>;
    async fn handle(&mut self, _: Reset, ctx: &mut Context) -> Self::Reply {
        let s = existing(&mut self.state)?;
        let before = s.setting();
        s.shape = Shape {
            batch_size: s.spec.initial_batch,
            interval_ms: s.spec.bounds.base_interval_ms,
        };
        s.backing_off = false;
        s.breaker = Breaker::default();
        s.window.clear();
        s.window_dirty = true;
        s.gradient = GradientState::default();
        s.last_start_ms = None;
        // Leases out stay valid: their reports are decided on as usual.
        for l in &mut s.leases {
            l.probe = false;
        }
        let after = s.setting();
        s.log(ctx, &self.env, Entry::new(Cause::Reset, before, after))
            .await?;
        self.drive(ctx).await;
        self.save(ctx)?;
        self.view(ctx)
    }
}

impl Handler<Remove> for Controller {
    type Reply = Result<bool, ControllerError>;
    async fn handle(&mut self, _: Remove, ctx: &mut Context) -> Self::Reply {
        let existed = self.state.take().is_some();
        ctx.storage().delete_all();
        self.alarm_ms = None;
        Ok(existed)
    }
}

impl Handler<Lease> for Controller {
    type Reply = Result<Granted, ControllerError>;
    async fn handle(&mut self, msg: Lease, ctx: &mut Context) -> Self::Reply {
        if let Some(w) = &msg.worker {
            stead_core::validate_name("worker", w)?;
        }
        existing(&mut self.state)?;
        let expired = self.expire(ctx).await?;
        let granted = self.grant(ctx, msg.worker).await;
        // A refusal writes nothing (workers that poll cost no commit), unless leases
        // expired on the way.
        if granted.is_ok() || expired {
            self.save(ctx)?;
        }
        granted
    }
}

impl Handler<Report> for Controller {
    type Reply = Result<Reported, ControllerError>;
    async fn handle(&mut self, msg: Report, ctx: &mut Context) -> Self::Reply {
        if let Some(r) = msg.results.iter().find(|r| r.latency_ms > MAX_LATENCY_MS) {
            return Err(InvalidInput::new(format!(
                "latency_ms must be at most {MAX_LATENCY_MS}, not {}",
                r.latency_ms
            ))
            .into());
        }
        existing(&mut self.state)?;
        // A lease that lapsed before its report arrived has been decided on as failed.
        let expired = self.expire(ctx).await?;
        let reply = self.report(ctx, msg).await;
        // A refused report changes nothing (but expiries on the way are kept).
        if reply.is_ok() {
            self.drive(ctx).await;
        }
        if reply.is_ok() || expired {
            self.save(ctx)?;
        }
        reply
    }
}

impl Handler<Inspect> for Controller {
    type Reply = Result<ControllerState, ControllerError>;
    async fn handle(&mut self, _: Inspect, ctx: &mut Context) -> Self::Reply {
        existing(&mut self.state)?;
        self.view(ctx)
    }
}

impl Handler<Decisions> for Controller {
    type Reply = Result<LogPage<DecisionEntry>, ControllerError>;
    async fn handle(&mut self, msg: Decisions, ctx: &mut Context) -> Self::Reply {
        existing(&mut self.state)?;
        msg.0.validate()?;
        Ok(LOG.page(ctx.storage(), &msg.0).await?)
    }
}

impl Handler<Drive> for Controller {
    type Reply = Result<(), ControllerError>;
    async fn handle(&mut self, _: Drive, ctx: &mut Context) -> Self::Reply {
        if self.state.is_none() {
            return Ok(());
        }
        self.expire(ctx).await?;
        self.drive(ctx).await;
        Ok(self.save(ctx)?)
    }
}

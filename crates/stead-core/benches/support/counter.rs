//! The object the core benchmarks drive: a counter whose every increment is a durable write.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use stead_core::{Context, DurableObject, Handler, Result};

pub(crate) struct Counter {
    pub(crate) value: i64,
}

impl DurableObject for Counter {
    const CLASS: &'static str = "bench-counter";
    type Env = ();
    async fn activate(ctx: &mut Context, _: Arc<()>) -> Result<Self> {
        Ok(Counter {
            value: ctx.storage().get("n").await?.unwrap_or(0),
        })
    }
}

/// Adds one and writes the new value; answers it.
#[derive(Serialize, Deserialize)]
pub(crate) struct Incr;

impl Handler<Incr> for Counter {
    type Reply = Result<i64>;
    async fn handle(&mut self, _: Incr, ctx: &mut Context) -> Result<i64> {
        self.value += 1;
        ctx.storage().put("n", &self.value)?;
        Ok(self.value)
    }
}

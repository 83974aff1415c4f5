//! The whole sidecar: its lifetime, what it holds, and removing it.

use super::*;

/// Deletes everything the sidecar holds (its lifetime and steps too).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Remove;

impl Handler<Remove> for Sidecar {
    type Reply = Result<(), SidecarError>;
    async fn handle(&mut self, _: Remove, ctx: &mut Context) -> Self::Reply {
        self.clear(ctx)?;
        Ok(())
    }
}

/// Sets (or, with `None`, removes) the sidecar's lifetime; the time runs from now.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SetLifetime {
    /// The lifetime.
    pub lifetime: Option<Lifetime>,
}

/// What a sidecar holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct SidecarInfo {
    /// Values and lists.
    pub keys: u64,
    /// Bytes of values, items and step outputs.
    pub bytes: u64,
    /// The quota on keys.
    pub max_keys: u64,
    /// The quota on bytes.
    pub max_bytes: u64,
    /// The lifetime, if any.
    pub lifetime: Option<Lifetime>,
    /// When everything is deleted, if a lifetime is set.
    pub expires_at: Option<DateTime<Utc>>,
}

impl Sidecar {
    fn info(&self) -> SidecarInfo {
        SidecarInfo {
            keys: self.meta.keys,
            bytes: self.meta.bytes,
            max_keys: self.limits.max_keys,
            max_bytes: self.limits.max_total_bytes,
            lifetime: self.meta.lifetime,
            expires_at: self.meta.expires_at,
        }
    }
}

impl Handler<SetLifetime> for Sidecar {
    type Reply = Result<SidecarInfo, SidecarError>;
    async fn handle(&mut self, msg: SetLifetime, ctx: &mut Context) -> Self::Reply {
        if let Some(l) = msg.lifetime {
            stead_core::validate_ms("ttl_ms", l.ttl_ms, MAX_TTL_MS)?;
        }
        self.expire_if_due(ctx)?;
        self.meta.lifetime = msg.lifetime;
        match msg.lifetime {
            Some(l) => self.set_expiry(ctx, l)?,
            None => {
                self.meta.expires_at = None;
                ctx.storage().delete_alarm();
            }
        }
        self.save_meta(ctx)?;
        Ok(self.info())
    }
}

/// Reads what the sidecar holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Inspect;

impl Handler<Inspect> for Sidecar {
    type Reply = Result<SidecarInfo, SidecarError>;
    async fn handle(&mut self, _: Inspect, ctx: &mut Context) -> Self::Reply {
        self.expire_if_due(ctx)?;
        Ok(self.info())
    }
}

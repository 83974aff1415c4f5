//! The definitions of declarative reactor types: one object per type.

use super::*;

/// The definition of one declarative reactor type (class `reactor-type`, named by the type).
pub struct ReactorType {
    env: Arc<crate::client::Types>,
    definition: Option<Value>,
}

impl std::fmt::Debug for ReactorType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReactorType").finish()
    }
}

impl DurableObject for ReactorType {
    const CLASS: &'static str = "reactor-type";
    type Env = crate::client::TypesEnv;

    fn remote(remote: &mut stead_core::Remote<Self>) {
        remote.message::<Configure>().message::<Inspect>();
    }

    async fn activate(
        ctx: &mut Context,
        env: Arc<crate::client::TypesEnv>,
    ) -> stead_core::Result<Self> {
        Ok(ReactorType {
            env: env.0.clone(),
            definition: ctx.storage().get(DEF).await?,
        })
    }
}

/// Sets a type's definition; whether it was new.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Configure(pub Value);

impl Handler<Configure> for ReactorType {
    type Reply = Result<bool, ReactorError>;
    async fn handle(&mut self, Configure(def): Configure, ctx: &mut Context) -> Self::Reply {
        let kind = ctx.name().unwrap_or_default().to_owned();
        if self.env.is_code(&kind) {
            return Err(ReactorError::DefinedInCode(kind));
        }
        let compiled = Arc::new(Declarative::compile(&def)?);
        ctx.storage().put(DEF, &def)?;
        let created = self.definition.is_none();
        self.definition = Some(def.clone());
        let types = self.env.clone();
        ctx.after_commit(move || types.put_declarative(&kind, compiled, def));
        Ok(created)
    }
}

impl Handler<Inspect> for ReactorType {
    type Reply = Option<Value>;
    async fn handle(&mut self, _: Inspect, _ctx: &mut Context) -> Self::Reply {
        self.definition.clone()
    }
}

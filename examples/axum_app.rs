//! Mount stead's router into an existing axum app, beside your own routes, and call an
//! object from one of your handlers.
//!
//! Run with `ADMIN_TOKEN=<a long random secret> cargo run --example axum_app`, then
//! `curl localhost:3000/hits/home`; the catalog answers under `/stead` to
//! `curl -H "Authorization: Bearer $ADMIN_TOKEN" ...`.

// ANCHOR: imports
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use stead::{Context, DurableObject, Handler, Namespace, Result, Runtime};
// ANCHOR_END: imports

struct Hits(u64);

impl DurableObject for Hits {
    const CLASS: &'static str = "hits";
    type Env = ();
    async fn activate(ctx: &mut Context, _: Arc<()>) -> Result<Self> {
        Ok(Hits(ctx.storage().get("n").await?.unwrap_or(0)))
    }
}

#[derive(Serialize, Deserialize)]
struct Hit;

impl Handler<Hit> for Hits {
    type Reply = Result<u64>;
    async fn handle(&mut self, _: Hit, ctx: &mut Context) -> Result<u64> {
        self.0 += 1;
        ctx.storage().put("n", &self.0)?;
        Ok(self.0)
    }
}

// ANCHOR: mount
async fn hit(State(hits): State<Namespace<Hits>>, Path(page): Path<String>) -> Result<String> {
    let n = hits.get_by_name(&page).call(Hit).await?;
    Ok(format!("{page} has been seen {n} times\n"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let rt = Runtime::builder().sqlite("./data-example").build().await?;
    let hits = rt.namespace::<Hits>(())?;
    // The catalog's routes write, list and reveal: only holders of the admin token may
    // call them.
    let admin_token = std::env::var("ADMIN_TOKEN").unwrap_or_default();
    let app = axum::Router::new()
        .route("/hits/{page}", get(hit).with_state(hits))
        .nest("/stead", stead::router(&rt)?.bearer([admin_token])?)
        .fallback(stead::http::not_found);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    rt.shutdown().await?;
    Ok(())
}
// ANCHOR_END: mount

//! Define your own durable object and call it: a shopping cart per user, kept in SQLite,
//! that empties itself after a day of inactivity with an alarm.
//!
//! Run with `cargo run --example custom_object`.

// ANCHOR: object
use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::Duration;
use serde::{Deserialize, Serialize};
use stead::{AlarmInfo, Context, DurableObject, Handler, Result, Runtime};

/// One cart per user: item -> quantity.
struct Cart {
    items: BTreeMap<String, u32>,
}

impl DurableObject for Cart {
    const CLASS: &'static str = "cart";
    type Env = ();

    async fn activate(ctx: &mut Context, _env: Arc<()>) -> Result<Self> {
        let items = ctx.storage().get("items").await?.unwrap_or_default();
        Ok(Cart { items })
    }

    /// A day without activity: forget the cart.
    async fn alarm(&mut self, ctx: &mut Context, _info: AlarmInfo) -> Result<()> {
        self.items.clear();
        ctx.storage().delete_all();
        Ok(())
    }
}

#[derive(Serialize, Deserialize)]
struct Add {
    item: String,
    quantity: u32,
}

impl Handler<Add> for Cart {
    type Reply = Result<BTreeMap<String, u32>>;

    async fn handle(&mut self, msg: Add, ctx: &mut Context) -> Self::Reply {
        // Change a copy, write it, and only then adopt it: an error returned by `put` (a
        // value too large, say) leaves the cart in memory as it is in storage. An `Err`
        // reply keeps whatever the turn already changed; only a panic or a failed commit
        // resets the object.
        let mut items = self.items.clone();
        *items.entry(msg.item).or_default() += msg.quantity;
        ctx.storage().put("items", &items)?;
        self.items = items;
        // Every change pushes the expiry a day further.
        let expiry = ctx.now() + Duration::days(1);
        ctx.storage().set_alarm(expiry)?;
        Ok(self.items.clone())
    }
}
// ANCHOR_END: object

// ANCHOR: main
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // Registered as the runtime is built: carts whose expiry alarm is pending from an
    // earlier run get it from the start.
    let rt = Runtime::builder()
        .sqlite(dir.path())
        .register::<Cart>(())
        .build()
        .await?;
    let carts = rt.get_namespace::<Cart>()?.expect("registered");

    let alice = carts.get_by_name("alice");
    alice
        .call(Add {
            item: "apples".into(),
            quantity: 3,
        })
        .await?;
    let items = alice
        .call(Add {
            item: "pears".into(),
            quantity: 1,
        })
        .await?;
    println!("alice's cart: {items:?}");

    // The reply came back only after the write was on disk: a restart keeps it.
    rt.shutdown().await?;
    let rt = Runtime::builder()
        .sqlite(dir.path())
        .register::<Cart>(())
        .build()
        .await?;
    let alice = rt
        .get_namespace::<Cart>()?
        .expect("registered")
        .get_by_name("alice");
    let items = alice
        .call(Add {
            item: "apples".into(),
            quantity: 1,
        })
        .await?;
    println!("after a restart: {items:?}");
    assert_eq!(items.get("apples"), Some(&4));
    rt.shutdown().await?;
    Ok(())
}
// ANCHOR_END: main

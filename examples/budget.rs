//! The seed's budget governor: a cycle of 10,000 minor units split 5/3/2 across three
//! processors in two phases on three tiers; the plan; then workers that reserve what a
//! batch may cost, do it, and commit what it cost, phase by phase, until the budget is spent.
//!
//! `cargo run --example budget`

use stead::budget::{BudgetClient, BudgetError, BudgetSpec};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let rt = stead::Runtime::builder().memory().build().await?;
    let budgets = BudgetClient::new(&rt)?;
    let spec: BudgetSpec = serde_json::from_value(serde_json::json!({
        "total": 10000,
        "unit": "millicents",
        "processors": [
            {"id": "keywords", "weight": 5, "phase": 1, "tier": "premium"},
            {"id": "content",  "weight": 3, "phase": 1, "tier": "standard"},
            {"id": "seo",      "weight": 2, "phase": 2, "tier": "economy"}
        ],
        "tiers": {
            "premium":  {"model": "large", "cost_per_call": 300, "max_concurrency": 5},
            "standard": {"model": "small", "cost_per_call": 50,  "max_concurrency": 20},
            "economy":  {"model": "flash", "cost_per_call": 10,  "max_concurrency": 50}
        }
    }))?;
    budgets.configure("marketing", spec).await?;

    let mut batch = 0;
    loop {
        let plan = budgets.plan("marketing").await?;
        if plan
            .iter()
            .flat_map(|p| &p.processors)
            .all(|l| l.max_items == 0)
        {
            break;
        }
        for phase in &plan {
            println!("phase {}", phase.phase);
            // The processors of a phase run at once; each reserves its batch's worst case.
            let mut workers = Vec::new();
            for line in phase.processors.iter().filter(|l| l.max_items > 0) {
                batch += 1;
                let (budgets, line) = (budgets.clone(), line.clone());
                let id = format!("batch-{batch}");
                workers.push(tokio::spawn(async move {
                    let worst = line.max_items * line.cost_per_call;
                    budgets
                        .reserve("marketing", &id, &line.processor, worst, 60_000)
                        .await?;
                    // The work: here, two thirds of the calls were needed.
                    let calls = (line.max_items * 2).div_ceil(3);
                    budgets
                        .commit("marketing", &id, calls * line.cost_per_call)
                        .await?;
                    println!(
                        "  {:<9} {:<6} reserved {:>5} for {:>2} calls, spent {:>5}",
                        line.processor,
                        line.model,
                        worst,
                        line.max_items,
                        calls * line.cost_per_call
                    );
                    Ok::<(), BudgetError>(())
                }));
            }
            for w in workers {
                w.await??;
            }
        }
    }
    let cycle = budgets.state("marketing").await?.cycle.expect("a cycle");
    println!(
        "\nspent {} of {} ({} left unspendable in whole calls)",
        cycle.spent,
        cycle.total,
        cycle.total - cycle.spent
    );
    for a in &cycle.accounts {
        println!(
            "  {:<9} allocated {:>5} spent {:>5}",
            a.processor, a.allocated, a.spent
        );
    }
    rt.shutdown().await?;
    Ok(())
}

//! The brand agent written in Rust: the same decisions as `brand.json`.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use stead_reactor::{Cycle, Decide, Event, Reactor, Rejected};

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;

/// What the agent knows about its brand's world.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct BrandState {
    pub(crate) observations: Observations,
    /// When content was last asked for (the last 50), to allow 5 a day.
    pub(crate) content_created: Vec<i64>,
    pub(crate) last_cycle_at: i64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Observations {
    pub(crate) last_research_at: Option<i64>,
    pub(crate) last_publish_at: Option<i64>,
    pub(crate) content_count: u64,
    pub(crate) avg_engagement: f64,
    pub(crate) top_keywords: Vec<String>,
    pub(crate) competitor_moves: Vec<CompetitorMove>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CompetitorMove {
    pub(crate) competitor: String,
    pub(crate) action: String,
    pub(crate) observed_at: i64,
}

/// The agent.
pub(crate) struct BrandAgent;

fn field<'a, T: Deserialize<'a>>(payload: &'a Value, name: &str) -> Result<T, Rejected> {
    T::deserialize(&payload[name]).map_err(|e| Rejected(format!("payload.{name}: {e}")))
}

/// Hours as the reasons print them (rounded, as JavaScript's `toFixed(0)`).
fn hours(ms: i64) -> i64 {
    (ms as f64 / HOUR_MS as f64).round() as i64
}

impl Reactor for BrandAgent {
    type State = BrandState;

    fn on_event(&self, s: &mut BrandState, e: &Event, out: &mut Decide) -> Result<(), Rejected> {
        let now = out.now().timestamp_millis();
        let brand = out.entity().to_owned();
        match e.kind.as_str() {
            "research.completed" => {
                let keywords: Vec<String> = field(&e.payload, "keywords").unwrap_or_default();
                let opportunities: Vec<String> = field(&e.payload, "opportunities")?;
                s.observations.last_research_at = Some(now);
                s.observations.top_keywords = keywords;
                for opportunity in opportunities {
                    let today = s
                        .content_created
                        .iter()
                        .filter(|t| **t > now - DAY_MS)
                        .count();
                    if today >= 5 {
                        continue;
                    }
                    s.content_created.push(now);
                    if s.content_created.len() > 50 {
                        s.content_created.remove(0);
                    }
                    let priority = if s.observations.top_keywords.contains(&opportunity) {
                        1
                    } else {
                        2
                    };
                    out.emit(
                        "content.create",
                        json!({"brandId": brand, "keyword": opportunity, "priority": priority}),
                    )?;
                    out.log(
                        "create-content",
                        format!("Research found opportunity \"{opportunity}\" — creating content"),
                    );
                }
            }
            "content.published" => {
                let content_id: String = field(&e.payload, "contentId")?;
                let keyword: String = field(&e.payload, "keyword")?;
                s.observations.last_publish_at = Some(now);
                s.observations.content_count += 1;
                if s.observations.top_keywords.contains(&keyword) {
                    out.emit(
                        "social.schedule",
                        json!({"brandId": brand, "contentId": content_id,
                               "platforms": ["twitter", "linkedin"], "timing": "optimal"}),
                    )?;
                    out.log(
                        "promote-content",
                        format!("Content \"{keyword}\" published — scheduling social promotion"),
                    );
                }
            }
            "engagement.report" => {
                let avg: f64 = field(&e.payload, "avgEngagement")?;
                s.observations.avg_engagement = avg;
                if avg < 0.02 {
                    out.emit(
                        "research.request",
                        json!({"brandId": brand, "focus": "engagement-optimization",
                               "context": {"underPerforming": e.payload["underPerforming"]}}),
                    )?;
                    out.log(
                        "engagement-pivot",
                        format!("Engagement at {}% — triggering research pivot", avg * 100.0),
                    );
                }
            }
            "competitor.detected" => {
                let competitor: String = field(&e.payload, "competitor")?;
                let action: String = field(&e.payload, "action")?;
                let moves = &mut s.observations.competitor_moves;
                moves.push(CompetitorMove {
                    competitor: competitor.clone(),
                    action: action.clone(),
                    observed_at: now,
                });
                if moves.len() > 50 {
                    moves.remove(0);
                }
                let recent = moves
                    .iter()
                    .filter(|m| m.competitor == competitor && m.observed_at > now - 7 * DAY_MS)
                    .count();
                if action == "new-content" && recent >= 3 {
                    out.emit(
                        "research.request",
                        json!({"brandId": brand, "focus": "competitive-response",
                               "context": {"competitor": competitor, "action": action,
                                           "details": e.payload["details"]}}),
                    )?;
                    out.log(
                        "competitive-response",
                        format!(
                            "Competitor \"{competitor}\" published new content — investigating"
                        ),
                    );
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn cycles(&self) -> Vec<Cycle> {
        vec![Cycle::new("decision-cycle", "0 * * * *")]
    }

    fn on_cycle(&self, s: &mut BrandState, _name: &str, out: &mut Decide) -> Result<(), Rejected> {
        let now = out.now().timestamp_millis();
        let brand = out.entity().to_owned();
        match s.observations.last_research_at {
            Some(at) if now - at <= DAY_MS => {}
            last => {
                out.emit(
                    "research.request",
                    json!({"brandId": brand, "focus": "routine-discovery"}),
                )?;
                out.log(
                    "routine-research",
                    match last {
                        Some(at) => format!(
                            "No research in {}h — requesting routine discovery",
                            hours(now - at)
                        ),
                        None => "No research yet — requesting routine discovery".to_owned(),
                    },
                );
            }
        }
        match s.observations.last_publish_at {
            Some(at) if now - at <= 2 * DAY_MS => {}
            Some(at) => out.log(
                "pipeline-stall",
                format!(
                    "No publishing in {}h — pipeline may be stalled",
                    hours(now - at)
                ),
            ),
            None => out.log(
                "pipeline-stall",
                "Nothing published yet — pipeline may be stalled",
            ),
        }
        s.last_cycle_at = now;
        Ok(())
    }
}

/// The same agent, declared (what `PUT /reactors/brand` takes).
pub(crate) fn definition() -> Value {
    serde_json::from_str(include_str!("brand.json")).expect("brand.json is JSON")
}

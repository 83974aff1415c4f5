//! Hostile definitions: `$ref` expansion is bounded when a set is defined, so a small
//! document cannot expand into more than memory holds.

use std::time::{Duration, Instant};

use serde_json::{Map, json};
use stead_flags::FlagSetDefinition;

#[test]
fn a_ref_chain_that_doubles_at_every_step_is_refused_when_defined() {
    // Each evaluator refers to the next twice: 2^30 copies of the last once resolved.
    let mut evaluators = Map::new();
    for i in 0..30 {
        evaluators.insert(
            format!("e{i}"),
            json!({"or": [{"$ref": format!("e{}", i + 1)}, {"$ref": format!("e{}", i + 1)}]}),
        );
    }
    evaluators.insert("e30".into(), json!({"==": [{"var": "plan"}, "pro"]}));
    let doc = json!({
        "$evaluators": evaluators,
        "flags": {"f": {"state": "ENABLED", "variants": {"on": true, "off": false},
            "defaultVariant": "off", "targeting": {"if": [{"$ref": "e0"}, "on"]}}}
    });
    let started = Instant::now();
    let err = FlagSetDefinition::parse(&doc).unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(30));
    let text = err.to_string();
    assert!(text.contains("values"), "{text}");
    assert!(
        text.contains("/flags/f/targeting"),
        "the error names the rule: {text}"
    );
}

//! Hostile rules: an evaluation has a budget of work, of values built and of nesting, so a
//! small request cannot overflow a stack, exhaust memory or hold a core.

use std::time::Instant;

use proptest::prelude::*;
use serde_json::{Map, Value, json};
use stead_logic::{Rule, RuleFault};

fn data(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

fn items(n: usize) -> Value {
    json!({ "arr": (0..n).collect::<Vec<_>>() })
}

#[test]
fn a_reduce_that_nests_at_every_step_is_over_budget_not_a_stack_overflow() {
    let rule =
        Rule::compile(&json!({"reduce": [{"var": "arr"}, [{"var": "accumulator"}], 0]})).unwrap();
    let err = rule.apply(&data(items(10_000))).unwrap_err();
    assert!(matches!(err, RuleFault::OverBudget(_)), "{err:?}");
    // A few steps are fine, unless the result nests deeper than a stored value may.
    assert_eq!(rule.apply(&data(items(3))).unwrap(), json!([[[0]]]));
    let err = rule.apply(&data(items(100))).unwrap_err();
    assert!(matches!(err, RuleFault::OverBudget(_)), "{err:?}");
}

#[test]
fn a_quadratic_merge_stops_at_the_budget_in_bounded_time() {
    let rule = Rule::compile(&json!({"reduce": [
        {"var": "arr"},
        {"merge": [{"var": "accumulator"}, [{"var": "current"}]]},
        []
    ]}))
    .unwrap();
    let started = Instant::now();
    let err = rule.apply(&data(items(30_000))).unwrap_err();
    assert!(matches!(err, RuleFault::OverBudget(_)), "{err:?}");
    // Reported, not asserted as a timing: the budget bounds the work.
    eprintln!(
        "quadratic merge over 30,000 items refused after {:?}",
        started.elapsed()
    );
    // The same over a small list works as JsonLogic says.
    assert_eq!(rule.apply(&data(items(4))).unwrap(), json!([0, 1, 2, 3]));
}

#[test]
fn copying_a_large_string_again_and_again_is_over_budget() {
    let rule = Rule::compile_scoped(
        &json!({"map": [{"var": "arr"}, {"cat": [{"var": "../big"}, {"var": "../big"}]}]}),
    )
    .unwrap();
    let mut d = items(5_000);
    d["big"] = json!("x".repeat(100_000));
    let err = rule.apply(&data(d)).unwrap_err();
    assert!(matches!(err, RuleFault::OverBudget(_)), "{err:?}");
}

/// Random rules over random data: an evaluation ends, in a value or a fault, never in a
/// panic or an overflow.
fn rule() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(json!({"var": "arr"})),
        Just(json!({"var": "accumulator"})),
        Just(json!({"var": "current"})),
        Just(json!({"var": ""})),
        Just(json!({"var": "s"})),
        (-5i64..5).prop_map(|n| json!(n)),
        Just(json!("x")),
        Just(json!([])),
    ];
    leaf.prop_recursive(6, 64, 4, |inner| {
        let op = prop::sample::select(vec![
            "map", "filter", "reduce", "all", "some", "none", "merge", "cat", "+", "*", "if", "==",
            "<", "!", "in", "substr", "missing", "var", "max", "min", "and", "or",
        ]);
        (op, prop::collection::vec(inner, 0..4)).prop_map(|(op, args)| json!({ op: args }))
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn any_rule_over_any_data_ends_in_a_value_or_a_fault(r in rule(), n in 0usize..2_000) {
        if let Ok(rule) = Rule::compile(&r) {
            let mut d = items(n);
            d["s"] = json!("y".repeat(n));
            let _ = rule.apply(&data(d));
        }
    }
}

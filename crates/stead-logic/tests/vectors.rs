//! The differential test: every rule the reference evaluator (the JsonLogic evaluator flagd
//! runs targeting rules with) answered in the committed vectors, stead-logic answers the
//! same, a value or a failure; where the evaluator's compiled and interpreted modes disagree,
//! the same as one of them. `fixtures/generate.mjs` makes the vectors.

use serde_json::{Map, Value};
use stead_logic::Rule;

/// Equal as JSON values are in JavaScript: numbers by value (`1` and `1.0` are one number).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

#[test]
fn every_vector_agrees_with_the_reference_evaluator() {
    let doc: Value =
        serde_json::from_str(include_str!("fixtures/logic-vectors.json")).expect("vectors");
    let datas: Vec<Map<String, Value>> = doc["datas"]
        .as_array()
        .expect("datas")
        .iter()
        .map(|d| d.as_object().expect("an object").clone())
        .collect();
    let vectors = doc["vectors"].as_array().expect("vectors");
    let (mut values, mut failures) = (0, 0);
    let mut wrong = Vec::new();
    for v in vectors {
        let data = &datas[v["data"].as_u64().expect("an index") as usize];
        let got = Rule::compile(&v["rule"])
            .map_err(|e| e.to_string())
            .and_then(|rule| rule.apply(data).map_err(|e| e.to_string()));
        let agrees = |answer: &Value| {
            if answer.get("error").is_some() || answer.get("nonfinite").is_some() {
                got.is_err()
            } else {
                got.as_ref().is_ok_and(|g| same(g, &answer["result"]))
            }
        };
        // Where the reference's two modes disagree, either answer is the reference's.
        let ok = agrees(v) || v.get("interpreted").is_some_and(agrees);
        if got.is_ok() {
            values += 1;
        } else {
            failures += 1;
        }
        if !ok {
            wrong.push(format!(
                "{} over data {}: the reference says {}, stead-logic {:?}",
                v["rule"], v["data"], v, got
            ));
        }
    }
    eprintln!(
        "{} vectors: {values} values and {failures} failures agreed on, {} disagreements",
        vectors.len(),
        wrong.len()
    );
    assert!(vectors.len() > 5_000 && failures > 100 && values > 4_000);
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

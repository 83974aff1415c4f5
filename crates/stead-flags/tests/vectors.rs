//! The differential test: every evaluation the reference evaluator (flagd-core) answered
//! in the committed vectors, stead answers the same: value, variant, reason, error code
//! and metadata.

use serde_json::{Map, Value};
use stead_flags::{FlagType, Snapshot};

fn vectors() -> Value {
    serde_json::from_str(include_str!("fixtures/flagd-vectors.json")).unwrap()
}

fn flag_type(name: &str) -> FlagType {
    serde_json::from_value(Value::String(name.to_owned())).unwrap()
}

#[test]
fn every_vector_agrees_with_flagd() {
    let v = vectors();
    let timestamp = v["timestamp"].as_i64().unwrap();
    let mut checked = 0;
    let mut failures = Vec::new();
    for case in v["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let snap = Snapshot::from_document(1, &case["definition"])
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        for e in case["evaluations"].as_array().unwrap() {
            let flag = e["flag"].as_str().unwrap();
            let ty = flag_type(e["type"].as_str().unwrap());
            let context: Map<String, Value> = e["context"].as_object().unwrap().clone();
            let got = snap.evaluate(flag, &context, timestamp).expect(flag, ty);
            let value = got.value.clone().unwrap_or_else(|| e["default"].clone());
            let want_variant = e["variant"].as_str().map(str::to_owned);
            let want_code = e["errorCode"].as_str();
            let got_code = got.error_code().map(|c| c.as_str());
            let ok = value == e["value"]
                && got.variant == want_variant
                && got.reason.as_str() == e["reason"].as_str().unwrap()
                && got_code == want_code
                && Value::Object(got.metadata.clone()) == e["metadata"];
            if !ok {
                failures.push(format!(
                    "{name} / {flag} as {} with {}: want {} {:?} {} {:?} {}, got {} {:?} {} {:?} {:?} ({:?})",
                    e["type"], e["context"], e["value"], want_variant, e["reason"], want_code,
                    e["metadata"], value, got.variant, got.reason.as_str(), got_code,
                    got.metadata, got.error
                ));
            }
            checked += 1;
        }
    }
    assert!(checked > 1500, "only {checked} vectors");
    assert!(
        failures.is_empty(),
        "{} of {checked} vectors disagree:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

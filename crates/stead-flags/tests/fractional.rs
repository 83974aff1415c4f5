//! Fractional splits against the reference evaluator: 10,000 targeting keys for each split
//! of the committed vectors land in the very bucket flagd puts them in.

use serde_json::Value;

fn vectors() -> Value {
    let text = include_str!("fixtures/flagd-vectors.json");
    serde_json::from_str(text).unwrap()
}

#[test]
fn ten_thousand_keys_land_where_flagd_puts_them() {
    let v = vectors();
    let definition = &v["splits"]["definition"]["flags"];
    for split in v["splits"]["results"].as_array().unwrap() {
        let key = split["flag"].as_str().unwrap();
        // The split's buckets: [variant, weight?] pairs (weight 1 when left out).
        let buckets = definition[key]["targeting"]["fractional"]
            .as_array()
            .unwrap();
        let names: Vec<&str> = buckets.iter().map(|b| b[0].as_str().unwrap()).collect();
        let weights: Vec<u64> = buckets
            .iter()
            .map(|b| b.get(1).map_or(1, |w| w.as_u64().unwrap()))
            .collect();
        let expected: Vec<char> = split["variants"].as_str().unwrap().chars().collect();
        assert_eq!(expected.len(), 10_000);
        for (i, want) in expected.iter().enumerate() {
            let bucket = stead_flags::fractional_bucket(key, &format!("user-{i}"), &weights)
                .expect("a bucket");
            assert_eq!(names[bucket], want.to_string(), "flag {key}, key user-{i}");
        }
    }
}

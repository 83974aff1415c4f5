//! The OpenFeature Rust SDK, unchanged, evaluating stead flags through [`FlagsProvider`]:
//! every flag type, details (variant, reason, metadata), every error the SDK can see, and
//! an acknowledged change visible to the next evaluation.
#![cfg(feature = "openfeature")]

use std::sync::Arc;

use open_feature::{
    EvaluationContext, EvaluationContextFieldValue, EvaluationErrorCode, EvaluationReason,
    FlagMetadataValue, OpenFeature, StructValue, Value,
};
use serde_json::json;
use stead_fixtures::TestRuntime;
use stead_flags::{Edit, FlagsClient, FlagsProvider};

fn doc() -> serde_json::Value {
    json!({
        "flags": {
            "dark-mode": {"state": "ENABLED", "variants": {"on": true, "off": false},
                "defaultVariant": "off",
                "targeting": {"if": [{"==": [{"var": "plan"}, "pro"]}, "on"]},
                "metadata": {"owner": "web", "rank": 2}},
            "greeting": {"state": "ENABLED", "variants": {"en": "hello", "fr": "bonjour"},
                "defaultVariant": "en",
                "targeting": {"if": [{"==": [{"var": "address.country"}, "FR"]}, "fr"]}},
            "retries": {"state": "ENABLED", "variants": {"few": 3, "many": 10},
                "defaultVariant": "few"},
            "ratio": {"state": "ENABLED", "variants": {"low": 0.25, "high": 0.75},
                "defaultVariant": "low",
                "targeting": {"if": [{">": [{"var": "age"}, 40]}, "high"]}},
            "theme": {"state": "ENABLED", "variants": {
                    "dark": {"bg": "#000", "sizes": [1, 2.5], "nested": {"on": true}},
                    "light": {"bg": "#fff", "sizes": [], "nested": {"on": false}}},
                "defaultVariant": "light",
                "targeting": {"fractional": [["dark", 50], ["light", 50]]}},
            "old": {"state": "DISABLED", "variants": {"on": true}, "defaultVariant": "on"},
            "unset": {"state": "ENABLED", "variants": {"on": true}, "defaultVariant": null,
                "targeting": {"if": [{"==": [{"var": "plan"}, "pro"]}, "on"]}},
            "needs-key": {"state": "ENABLED", "variants": {"a": "a", "b": "b"},
                "defaultVariant": "a",
                "targeting": {"fractional": [["a", 50], ["b", 50]]}},
            "with-null": {"state": "ENABLED", "variants": {"x": {"a": null}},
                "defaultVariant": "x"}
        },
        "metadata": {"env": "test"}
    })
}

async fn provider(name: &str) -> (TestRuntime, FlagsClient, open_feature::Client) {
    let rt = TestRuntime::memory().await;
    let flags = FlagsClient::new(&rt).unwrap();
    flags
        .replace("prod", &doc(), Edit::by("test"))
        .await
        .unwrap();
    let mut api = OpenFeature::singleton_mut().await;
    api.set_named_provider(name, FlagsProvider::new(flags.clone(), "prod"))
        .await;
    let client = api.create_named_client(name);
    (rt, flags, client)
}

#[tokio::test]
async fn every_type_with_details() {
    let (_rt, _flags, client) = provider("types").await;
    let pro = EvaluationContext::default()
        .with_targeting_key("u1")
        .with_custom_field("plan", "pro")
        .with_custom_field("age", 41)
        .with_custom_field(
            "address",
            EvaluationContextFieldValue::Struct(Arc::new(
                StructValue::default().with_field("country", "FR"),
            )),
        );
    let free = EvaluationContext::default()
        .with_targeting_key("u1")
        .with_custom_field("plan", "free")
        .with_custom_field("age", 30.5)
        .with_custom_field(
            "address",
            EvaluationContextFieldValue::new_struct(json!({"country": "DE"})),
        );

    let d = client
        .get_bool_details("dark-mode", Some(&pro), None)
        .await
        .unwrap();
    assert!(d.value);
    assert_eq!(d.variant.as_deref(), Some("on"));
    assert_eq!(d.reason, Some(EvaluationReason::TargetingMatch));
    let meta = &d.flag_metadata.values;
    assert_eq!(meta["owner"], FlagMetadataValue::String("web".into()));
    assert_eq!(meta["rank"], FlagMetadataValue::Int(2));
    assert_eq!(meta["env"], FlagMetadataValue::String("test".into()));
    let d = client
        .get_bool_details("dark-mode", Some(&free), None)
        .await
        .unwrap();
    assert_eq!(
        (d.value, d.variant.as_deref(), d.reason),
        (false, Some("off"), Some(EvaluationReason::Default))
    );

    // Strings, with a structure in the context (the SDK's own and a JSON value).
    let s = |ctx| client.get_string_value("greeting", Some(ctx), None);
    assert_eq!(s(&pro).await.unwrap(), "bonjour");
    assert_eq!(s(&free).await.unwrap(), "hello");

    // Integers and floats; an integer flag reads as a float too.
    assert_eq!(
        client
            .get_int_value("retries", Some(&pro), None)
            .await
            .unwrap(),
        3
    );
    let d = client
        .get_float_details("retries", Some(&pro), None)
        .await
        .unwrap();
    assert_eq!((d.value, d.reason), (3.0, Some(EvaluationReason::Static)));
    let f = |ctx| client.get_float_value("ratio", Some(ctx), None);
    assert_eq!(f(&pro).await.unwrap(), 0.75);
    assert_eq!(f(&free).await.unwrap(), 0.25);

    // Objects: a fractional split, the same bucket as the client's own evaluation.
    let mut seen = std::collections::BTreeSet::new();
    for k in 0..40 {
        let ctx = EvaluationContext::default().with_targeting_key(format!("user-{k}"));
        let d = client
            .get_struct_details::<StructValue>("theme", Some(&ctx), None)
            .await
            .unwrap();
        let dark = d.variant.as_deref() == Some("dark");
        assert_eq!(d.reason, Some(EvaluationReason::TargetingMatch));
        let bg = d.value.fields["bg"].as_str().unwrap().to_owned();
        assert_eq!(bg, if dark { "#000" } else { "#fff" });
        if dark {
            assert_eq!(
                d.value.fields["sizes"],
                Value::Array(vec![Value::Int(1), Value::Float(2.5)])
            );
            let nested = d.value.fields["nested"].as_struct().unwrap();
            assert_eq!(nested.fields["on"], Value::Bool(true));
        }
        seen.insert(d.variant.unwrap());
    }
    assert_eq!(seen.len(), 2, "both halves of the split are reached");
}

#[tokio::test]
async fn what_gives_no_value_is_an_error_and_the_callers_default() {
    let (_rt, _flags, client) = provider("errors").await;
    let ctx = EvaluationContext::default().with_targeting_key("u1");
    let code = |r: Result<_, open_feature::EvaluationError>| match r {
        Ok::<bool, _>(v) => panic!("a value: {v}"),
        Err(e) => e.code,
    };

    assert_eq!(
        code(client.get_bool_value("nope", Some(&ctx), None).await),
        EvaluationErrorCode::FlagNotFound
    );
    let e = client
        .get_int_value("dark-mode", Some(&ctx), None)
        .await
        .unwrap_err();
    assert_eq!(e.code, EvaluationErrorCode::TypeMismatch);
    assert!(e.message.unwrap().contains("boolean"));
    assert_eq!(
        code(client.get_bool_value("old", Some(&ctx), None).await),
        EvaluationErrorCode::General("DISABLED".into())
    );
    assert!(
        client
            .get_bool_value("old", Some(&ctx), None)
            .await
            .unwrap_or(true)
    );
    assert_eq!(
        code(client.get_bool_value("unset", Some(&ctx), None).await),
        EvaluationErrorCode::General("DEFAULT".into())
    );
    // As flagd does: a split with no targeting key to bucket chooses nothing, and the
    // flag's default variant applies.
    let d = client
        .get_string_details("needs-key", None, None)
        .await
        .unwrap();
    assert_eq!(
        (d.value.as_str(), d.reason),
        ("a", Some(EvaluationReason::Default))
    );
    let e = client
        .get_struct_value::<StructValue>("with-null", Some(&ctx), None)
        .await
        .unwrap_err();
    assert_eq!(e.code, EvaluationErrorCode::TypeMismatch);
    // A context the targeting cannot read.
    let bad = ctx
        .clone()
        .with_custom_field("n", EvaluationContextFieldValue::Float(f64::NAN));
    let e = client
        .get_bool_value("dark-mode", Some(&bad), None)
        .await
        .unwrap_err();
    assert_eq!(e.code, EvaluationErrorCode::InvalidContext);
    let opaque = ctx
        .clone()
        .with_custom_field("s", EvaluationContextFieldValue::new_struct(7u8));
    let e = client
        .get_bool_value("dark-mode", Some(&opaque), None)
        .await
        .unwrap_err();
    assert_eq!(e.code, EvaluationErrorCode::InvalidContext);
}

#[tokio::test]
async fn an_acknowledged_change_is_what_the_next_evaluation_sees() {
    let (_rt, flags, client) = provider("changes").await;
    let ctx = EvaluationContext::default().with_targeting_key("u1");
    assert_eq!(
        client
            .get_int_value("retries", Some(&ctx), None)
            .await
            .unwrap(),
        3
    );
    for n in 4..20i64 {
        flags
            .put_flag(
                "prod",
                "retries",
                &json!({"state": "ENABLED", "variants": {"v": n}, "defaultVariant": "v"}),
                Edit::by("test"),
            )
            .await
            .unwrap();
        assert_eq!(
            client
                .get_int_value("retries", Some(&ctx), None)
                .await
                .unwrap(),
            n
        );
    }
    // A date-time in the context reaches targeting as RFC 3339 text.
    flags
        .put_flag(
            "prod",
            "since",
            &json!({"state": "ENABLED", "variants": {"y": true, "n": false},
                "defaultVariant": "n",
                "targeting": {"if": [{"starts_with": [{"var": "signup"}, "2024-02-03T04:05:06.007Z"]}, "y"]}}),
            Edit::by("test"),
        )
        .await
        .unwrap();
    let at = time::OffsetDateTime::from_unix_timestamp_nanos(1_706_933_106_007_000_000).unwrap();
    let dated = ctx.with_custom_field("signup", EvaluationContextFieldValue::DateTime(at));
    assert!(
        client
            .get_bool_value("since", Some(&dated), None)
            .await
            .unwrap()
    );
}

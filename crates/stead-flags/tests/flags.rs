//! Flag sets through the client: versions, the audit log, stale edits, restarts, and a
//! snapshot never older than an acknowledged change.

use serde_json::{Map, Value, json};
use stead_core::LogQuery;
use stead_fixtures::TestRuntime;
use stead_flags::{AuditAction, Edit, ErrorCode, FlagsClient, FlagsError, Reason};

fn ctx(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

fn doc() -> Value {
    json!({
        "$evaluators": {"pro": {"==": [{"var": "plan"}, "pro"]}},
        "flags": {
            "dark-mode": {"state": "ENABLED", "variants": {"on": true, "off": false},
                "defaultVariant": "off", "targeting": {"if": [{"$ref": "pro"}, "on"]}},
            "banner": {"state": "ENABLED", "variants": {"a": "hello", "b": "hi"},
                "defaultVariant": "a", "metadata": {"owner": "web"}}
        },
        "metadata": {"env": "prod"}
    })
}

/// How many changes of `set` the audit log holds (up to 100).
async fn audited(flags: &FlagsClient, set: &str) -> usize {
    let page = flags.audit(set, LogQuery::newest(100)).await.unwrap();
    page.entries.len()
}

#[tokio::test]
async fn changes_are_versioned_audited_and_evaluated() {
    let rt = TestRuntime::memory().await;
    let flags = FlagsClient::new(&rt).unwrap();
    let c = flags
        .replace("prod", &doc(), Edit::by("ada"))
        .await
        .unwrap();
    assert_eq!((c.snapshot.version(), c.changed), (1, true));
    // The same document again changes nothing and makes no version.
    let c = flags
        .replace("prod", &doc(), Edit::by("ada"))
        .await
        .unwrap();
    assert_eq!((c.snapshot.version(), c.changed), (1, false));

    let pro = ctx(json!({"targetingKey": "u1", "plan": "pro"}));
    let d = flags.value("prod", "dark-mode", false, &pro).await.unwrap();
    assert_eq!(
        (d.value, d.reason, d.variant.as_deref()),
        (true, Reason::TargetingMatch, Some("on"))
    );
    let d = flags
        .value("prod", "banner", String::new(), &pro)
        .await
        .unwrap();
    assert_eq!(d.value, "hello");
    assert_eq!(d.metadata, ctx(json!({"owner": "web", "env": "prod"})));
    // A type mismatch answers the caller's default.
    let d = flags.value("prod", "banner", 7i64, &pro).await.unwrap();
    assert_eq!(
        (d.value, d.error.map(|e| e.0)),
        (7, Some(ErrorCode::TypeMismatch))
    );

    flags
        .put_flag(
            "prod",
            "banner",
            &json!({"state": "DISABLED", "variants": {"a": "x"}}),
            Edit::by("bo"),
        )
        .await
        .unwrap();
    let d = flags
        .value("prod", "banner", "dflt".to_owned(), &pro)
        .await
        .unwrap();
    assert_eq!((d.value.as_str(), d.reason), ("dflt", Reason::Disabled));
    flags
        .delete_flag("prod", "dark-mode", Edit::by("cy"))
        .await
        .unwrap();
    let d = flags.value("prod", "dark-mode", false, &pro).await.unwrap();
    assert_eq!(d.error.map(|e| e.0), Some(ErrorCode::FlagNotFound));

    let log = flags
        .audit("prod", LogQuery::newest(10))
        .await
        .unwrap()
        .entries;
    let summary: Vec<_> = log
        .iter()
        .map(|e| (e.version, e.actor.as_str(), e.action, e.flags.clone()))
        .collect();
    assert_eq!(
        summary,
        vec![
            (
                3,
                "cy",
                AuditAction::DeleteFlag,
                vec!["dark-mode".to_owned()]
            ),
            (2, "bo", AuditAction::PutFlag, vec!["banner".to_owned()]),
            (
                1,
                "ada",
                AuditAction::Replace,
                vec!["banner".to_owned(), "dark-mode".to_owned()]
            ),
        ]
    );
    assert_eq!(log[0].before["dark-mode"]["defaultVariant"], "off");
    assert_eq!(log[0].after["dark-mode"], Value::Null);
    assert_eq!(log[1].before["banner"]["state"], "ENABLED");
    assert_eq!(log[1].after["banner"]["state"], "DISABLED");
    assert_eq!(log[2].before["banner"], Value::Null);
    // Paging back.
    let first = flags.audit("prod", LogQuery::newest(2)).await.unwrap();
    assert_eq!(first.next, Some(2));
    let older = flags
        .audit("prod", LogQuery::newest(10).from(first.next))
        .await
        .unwrap();
    let versions: Vec<u64> = older.entries.iter().map(|e| e.version).collect();
    assert_eq!((versions, older.next), (vec![1], None));
}

#[tokio::test]
async fn a_stale_edit_is_refused_and_exactly_one_of_two_concurrent_editors_wins() {
    let rt = TestRuntime::memory().await;
    let flags = FlagsClient::new(&rt).unwrap();
    flags.replace("s", &doc(), Edit::default()).await.unwrap();
    let v = flags.snapshot("s").await.unwrap().version();
    let flag =
        |color: &str| json!({"state": "ENABLED", "variants": {"c": color}, "defaultVariant": "c"});
    let (red, blue) = (flag("red"), flag("blue"));
    let (a, b) = tokio::join!(
        flags.put_flag("s", "color", &red, Edit::by("a").if_version(v)),
        flags.put_flag("s", "color", &blue, Edit::by("b").if_version(v)),
    );
    let wins = [&a, &b].iter().filter(|r| r.is_ok()).count();
    assert_eq!(wins, 1, "{a:?} {b:?}");
    let loser = if a.is_ok() { b } else { a };
    assert!(matches!(loser, Err(FlagsError::VersionConflict { current }) if current == v + 1));
    assert_eq!(audited(&flags, "s").await, 2);
}

#[tokio::test]
async fn bad_definitions_name_the_flag_and_the_path_and_change_nothing() {
    let rt = TestRuntime::memory().await;
    let flags = FlagsClient::new(&rt).unwrap();
    flags.replace("s", &doc(), Edit::default()).await.unwrap();
    let mut bad = doc();
    bad["flags"]["dark-mode"]["targeting"] = json!({"if": [{"$ref": "missing"}, "on"]});
    let Err(FlagsError::Definition(e)) = flags.replace("s", &bad, Edit::default()).await else {
        panic!("refused")
    };
    assert_eq!(e.flag.as_deref(), Some("dark-mode"));
    assert_eq!(e.path, "/flags/dark-mode/targeting/if/0/$ref");
    // One flag alone: its path is relative to the flag, and $refs are checked against the set.
    let Err(FlagsError::Definition(e)) = flags
        .put_flag(
            "s",
            "x",
            &json!({"state": "ENABLED", "variants": {"on": true},
            "targeting": {"and": [{"$ref": "pro"}, {"sem_vr": [1]}]}}),
            Edit::default(),
        )
        .await
    else {
        panic!("refused")
    };
    assert_eq!(e.path, "/targeting/and/1/sem_vr");
    flags
        .put_flag(
            "s",
            "x",
            &json!({"state": "ENABLED", "variants": {"on": true},
            "defaultVariant": "on", "targeting": {"if": [{"$ref": "pro"}, "on"]}}),
            Edit::default(),
        )
        .await
        .unwrap();
    assert_eq!(flags.snapshot("s").await.unwrap().version(), 2);
}

#[tokio::test]
async fn sets_and_audit_survive_a_restart() {
    let rt = TestRuntime::sqlite().await;
    let flags = FlagsClient::new(&rt).unwrap();
    flags.replace("s", &doc(), Edit::by("ada")).await.unwrap();
    flags
        .put_flag(
            "s",
            "beta",
            &json!({"enabled": true, "allow": ["u1"], "rollout_percent": 0}),
            Edit::by("bo"),
        )
        .await
        .unwrap();
    let rt = rt.restart().await;
    let flags = FlagsClient::new(&rt).unwrap();
    let snap = flags.snapshot("s").await.unwrap();
    assert_eq!(snap.version(), 2);
    let u1 = flags
        .value("s", "beta", false, &ctx(json!({"targetingKey": "u1"})))
        .await
        .unwrap();
    let u2 = flags
        .value("s", "beta", true, &ctx(json!({"targetingKey": "u2"})))
        .await
        .unwrap();
    assert_eq!((u1.value, u2.value), (true, false));
    assert_eq!(audited(&flags, "s").await, 2);
}

#[tokio::test]
async fn an_evaluation_after_a_reply_never_sees_an_older_version() {
    let rt = TestRuntime::memory().await;
    let flags = FlagsClient::new(&rt).unwrap();
    let c = ctx(json!({"targetingKey": "u"}));
    for i in 0..50 {
        let body = json!({"state": "ENABLED", "variants": {"v": i}, "defaultVariant": "v"});
        let changed = flags
            .put_flag("s", "n", &body, Edit::default())
            .await
            .unwrap();
        // Straight after the reply, from the snapshot and with no turn: the new value.
        assert_eq!(
            flags.snapshot("s").await.unwrap().version(),
            changed.snapshot.version()
        );
        assert_eq!(flags.value("s", "n", -1i64, &c).await.unwrap().value, i);
    }
}

#[tokio::test]
async fn the_audit_log_is_bounded() {
    let rt = TestRuntime::memory().await;
    let flags = FlagsClient::with_config(
        &rt,
        stead_flags::FlagsConfig::default().max_audit_entries(3),
    )
    .unwrap();
    for i in 0..6 {
        let body = json!({"state": "ENABLED", "variants": {"v": i}, "defaultVariant": "v"});
        flags
            .put_flag("s", "n", &body, Edit::default())
            .await
            .unwrap();
    }
    let log = flags
        .audit("s", LogQuery::newest(100))
        .await
        .unwrap()
        .entries;
    assert_eq!(
        log.iter().map(|e| e.version).collect::<Vec<_>>(),
        vec![6, 5, 4]
    );
}

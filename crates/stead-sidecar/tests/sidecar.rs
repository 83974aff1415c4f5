//! The sidecar's promises: no lost update under conditional writes, lists without gaps or
//! repeats, listings stable under writes, large values byte for byte, a lifetime that
//! deletes everything, quotas, and steps that survive a restart.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use stead_fixtures::TestRuntime;
use stead_sidecar::{
    Condition, Lifetime, Quota, SidecarClient, SidecarConfig, SidecarError, StepStatus,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_writes_lose_no_update() {
    let rt = TestRuntime::sqlite().await;
    let sc = SidecarClient::new(&rt).unwrap();
    sc.put("e", "n", &json!({"count": 0}), Condition::IfAbsent)
        .await
        .unwrap();
    let successes = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..32)
        .map(|_| {
            let (sc, successes) = (sc.clone(), successes.clone());
            tokio::spawn(async move {
                let mut lost = 0;
                for _ in 0..20 {
                    let (v, version) = sc.get_as::<Value>("e", "n").await.unwrap().unwrap();
                    let next = json!({"count": v["count"].as_u64().unwrap() + 1});
                    match sc.put("e", "n", &next, Condition::IfVersion(version)).await {
                        Ok(_) => {
                            successes.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(SidecarError::PreconditionFailed { current, .. }) => {
                            assert_ne!(current, Some(version));
                            lost += 1;
                        }
                        Err(e) => panic!("{e}"),
                    }
                }
                lost
            })
        })
        .collect();
    let mut lost = 0;
    for w in writers {
        lost += w.await.unwrap();
    }
    let (v, _) = sc.get_as::<Value>("e", "n").await.unwrap().unwrap();
    let won = successes.load(Ordering::SeqCst);
    assert_eq!(
        v["count"].as_u64().unwrap(),
        won,
        "every acknowledged write counted once"
    );
    assert_eq!(won + lost, 32 * 20);
    assert!(lost > 0, "the writers did race");
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn conditions_and_versions() {
    let rt = TestRuntime::memory().await;
    let sc = SidecarClient::new(&rt).unwrap();
    let a = sc.put("e", "k", &1, Condition::Always).await.unwrap();
    assert!(a.created);
    let b = sc.put("e", "k", &2, Condition::IfPresent).await.unwrap();
    assert!(!b.created && b.version > a.version);
    let err = sc
        .put("e", "k", &3, Condition::IfVersion(a.version))
        .await
        .unwrap_err();
    assert!(
        matches!(err, SidecarError::PreconditionFailed { current: Some(v), .. } if v == b.version)
    );
    assert!(sc.put("e", "k", &3, Condition::IfAbsent).await.is_err());
    assert!(sc.put("e", "new", &3, Condition::IfPresent).await.is_err());
    // A conditional delete, then a re-creation: versions are never reused.
    assert!(
        sc.delete("e", "k", Condition::IfVersion(a.version))
            .await
            .is_err()
    );
    assert!(
        sc.delete("e", "k", Condition::IfVersion(b.version))
            .await
            .unwrap()
    );
    assert!(!sc.delete("e", "k", Condition::Always).await.unwrap());
    let c = sc.put("e", "k", &4, Condition::IfAbsent).await.unwrap();
    assert!(c.created && c.version > b.version);
    sc.delete_all("e").await.unwrap();
    let d = sc.put("e", "k", &5, Condition::IfAbsent).await.unwrap();
    assert!(d.version > c.version, "not even after deleting everything");
    // Values are JSON, kept byte for byte.
    let text = "{ \"spaced\" :  [1, 2.50, \"\\u00e9\"] }";
    sc.put_raw("e", "raw", text.to_owned(), Condition::Always)
        .await
        .unwrap();
    assert_eq!(sc.get("e", "raw").await.unwrap().unwrap().value, text);
    assert!(matches!(
        sc.put_raw("e", "raw", "{not json".into(), Condition::Always)
            .await,
        Err(SidecarError::Invalid(_))
    ));
    for bad in ["", "a\u{7}b"] {
        assert!(matches!(
            sc.put("e", bad, &1, Condition::Always).await,
            Err(SidecarError::Invalid(_))
        ));
    }
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_get_every_index_once_in_order() {
    let rt = TestRuntime::sqlite().await;
    let sc = SidecarClient::new(&rt).unwrap();
    let writers: Vec<_> = (0..16)
        .map(|w| {
            let sc = sc.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                for i in 0..50 {
                    let a = sc
                        .append("e", "log", &json!({"w": w, "i": i}), None)
                        .await
                        .unwrap();
                    got.push((a.index, w, i));
                }
                got
            })
        })
        .collect();
    let mut all = Vec::new();
    for w in writers {
        all.extend(w.await.unwrap());
    }
    let indexes: BTreeSet<u64> = all.iter().map(|(i, ..)| *i).collect();
    assert_eq!(indexes.len(), 800, "no index repeated");
    assert_eq!(
        indexes.iter().copied().collect::<Vec<_>>(),
        (0..800).collect::<Vec<_>>()
    );
    // Read back in pages: every item at the index it was given.
    let mut read = Vec::new();
    let mut from = 0;
    loop {
        let page = sc.range("e", "log", from, 300).await.unwrap().unwrap();
        if page.items.is_empty() {
            break;
        }
        from = page.items.last().unwrap().index + 1;
        read.extend(page.items);
    }
    assert_eq!(read.len(), 800, "no item lost");
    for (index, w, i) in all {
        let item: Value = serde_json::from_str(&read[index as usize].item).unwrap();
        assert_eq!(
            (read[index as usize].index, item),
            (index, json!({"w": w, "i": i}))
        );
    }
    // A maximum length drops the oldest.
    for i in 0..10 {
        sc.append("e", "recent", &i, Some(3)).await.unwrap();
    }
    let r = sc.range("e", "recent", 0, 100).await.unwrap().unwrap();
    assert_eq!((r.first, r.next), (7, 10));
    let items: Vec<&str> = r.items.iter().map(|i| i.item.as_str()).collect();
    assert_eq!(items, ["7", "8", "9"]);
    assert!(sc.range("e", "none", 0, 10).await.unwrap().is_none());
    // A list whose key extends another's does not leak into its range.
    sc.append("e", "re", &"short", None).await.unwrap();
    let r = sc.range("e", "re", 0, 100).await.unwrap().unwrap();
    assert_eq!(r.items.len(), 1);
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_walked_during_writes_sees_stable_keys_exactly_once() {
    let rt = TestRuntime::sqlite().await;
    let sc = SidecarClient::new(&rt).unwrap();
    // Stable keys, present for the whole walk.
    for i in 0..300 {
        sc.put("e", &format!("doc/{i:04}"), &i, Condition::Always)
            .await
            .unwrap();
    }
    let churn = {
        let sc = sc.clone();
        tokio::spawn(async move {
            for round in 0..40u32 {
                for j in 0..10u32 {
                    let k = format!("doc/{:04}x{j}", (round * 37 + j * 11) % 300);
                    sc.put("e", &k, &round, Condition::Always).await.unwrap();
                }
                for j in 0..10u32 {
                    let k = format!("doc/{:04}x{j}", (round * 37 + j * 11) % 300);
                    sc.delete("e", &k, Condition::Always).await.unwrap();
                }
            }
        })
    };
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = sc.list("e", "doc/", cursor.as_deref(), 7).await.unwrap();
        seen.extend(page.keys.into_iter().map(|k| k.key));
        tokio::task::yield_now().await;
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    churn.await.unwrap();
    let unique: BTreeSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "no key repeated");
    for i in 0..300 {
        assert!(
            unique.contains(&format!("doc/{i:04}")),
            "doc/{i:04} skipped"
        );
    }
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "in key order");
    // Prefixes select.
    assert_eq!(
        sc.list("e", "doc/000", None, 100).await.unwrap().keys.len(),
        10
    );
    assert!(sc.list("e", "", None, 0).await.is_err());
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn large_values_round_trip_byte_for_byte() {
    let rt = TestRuntime::sqlite().await;
    let sc = SidecarClient::new(&rt).unwrap();
    let big = |n: usize| {
        // Quotes and escapes in every chunk, and a multi-byte character at many boundaries:
        // each four characters take seven bytes of JSON text, so the text is at most `n`.
        let body: String = "é\"\\x".chars().cycle().take((n - 2) / 7 * 4).collect();
        let text = serde_json::to_string(&body).unwrap();
        assert!(text.len() <= n && text.len() + 7 > n);
        text
    };
    for text in [
        "1".to_owned(),
        big(128 * 1024),
        big(5 * 1024 * 1024),
        big(16 * 1024 * 1024),
    ] {
        let w = sc
            .put_raw("big", "v", text.clone(), Condition::Always)
            .await
            .unwrap();
        let got = sc.get("big", "v").await.unwrap().unwrap();
        assert_eq!(got.version, w.version);
        assert!(got.value == text, "{} bytes read back exactly", text.len());
    }
    // Shrinking leaves no stale chunk behind, and survives a restart.
    sc.put_raw("big", "v", "[1,2]".into(), Condition::Always)
        .await
        .unwrap();
    let rt = rt.restart().await;
    let sc = SidecarClient::new(&rt).unwrap();
    assert_eq!(sc.get("big", "v").await.unwrap().unwrap().value, "[1,2]");
    assert_eq!(sc.info("big").await.unwrap().bytes, 5);
    let too_big = "1".repeat(16 * 1024 * 1024 + 1);
    assert!(matches!(
        sc.put_raw("big", "v", too_big, Condition::Always).await,
        Err(SidecarError::TooLarge { .. })
    ));
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_json_null_value_is_read_back_as_null() {
    // `null` is a JSON value like any other: stored, evicted, restarted, it reads `null`
    // (it once came back empty: kept inline, it was taken for "nothing inline").
    let rt = TestRuntime::sqlite().await;
    let sc = SidecarClient::new(&rt).unwrap();
    for (key, text) in [("n", "null"), ("s", "\"\""), ("z", "0"), ("e", "[]")] {
        sc.put_raw("nulls", key, text.into(), Condition::Always)
            .await
            .unwrap();
        assert_eq!(sc.get("nulls", key).await.unwrap().unwrap().value, text);
    }
    let rt = rt.restart().await;
    let sc = SidecarClient::new(&rt).unwrap();
    for (key, text) in [("n", "null"), ("s", "\"\""), ("z", "0"), ("e", "[]")] {
        assert_eq!(
            sc.get("nulls", key).await.unwrap().unwrap().value,
            text,
            "{key}"
        );
    }
    // A `null` an earlier build kept inline (stored as `"raw": null`, which it read as none).
    let mut doc = rt.export_object("sidecar", "nulls").await.unwrap();
    doc.entries.insert(
        "k/old".into(),
        serde_json::json!({"version": 7, "size": 4, "raw": null, "chunks": 0}),
    );
    rt.import_object("sidecar", "nulls", doc).await.unwrap();
    let old = sc.get("nulls", "old").await.unwrap().unwrap();
    assert_eq!((old.version, old.value.as_str()), (7, "null"));
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_lifetime_deletes_everything_when_it_runs_out() {
    let rt = TestRuntime::sqlite().await;
    let sc = SidecarClient::new(&rt).unwrap();
    sc.put("run", "a", &1, Condition::Always).await.unwrap();
    sc.append("run", "l", &1, None).await.unwrap();
    let info = sc
        .set_lifetime(
            "run",
            Some(Lifetime {
                ttl_ms: 60_000,
                renew_on_write: true,
            }),
        )
        .await
        .unwrap();
    assert_eq!(info.keys, 2);
    // Writes renew it.
    rt.advance(Duration::from_secs(50)).await;
    sc.put("run", "b", &2, Condition::Always).await.unwrap();
    rt.advance(Duration::from_secs(50)).await;
    assert!(
        sc.get("run", "a").await.unwrap().is_some(),
        "renewed at 50 s"
    );
    rt.advance(Duration::from_secs(11)).await;
    assert!(sc.get("run", "a").await.unwrap().is_none(), "gone at 111 s");
    let info = sc.info("run").await.unwrap();
    assert_eq!((info.keys, info.bytes, info.expires_at), (0, 0, None));
    assert_eq!(rt.pending_alarms().await, 0);
    // A fixed lifetime is not renewed; removing it keeps the data.
    let fixed = Lifetime {
        ttl_ms: 10_000,
        renew_on_write: false,
    };
    sc.set_lifetime("job", Some(fixed)).await.unwrap();
    rt.advance(Duration::from_secs(9)).await;
    sc.put("job", "x", &1, Condition::Always).await.unwrap();
    rt.advance(Duration::from_secs(2)).await;
    assert!(sc.get("job", "x").await.unwrap().is_none());
    sc.set_lifetime("kept", Some(fixed)).await.unwrap();
    sc.put("kept", "x", &1, Condition::Always).await.unwrap();
    sc.set_lifetime("kept", None).await.unwrap();
    rt.advance(Duration::from_secs(20)).await;
    assert!(sc.get("kept", "x").await.unwrap().is_some());
    assert!(
        sc.set_lifetime(
            "kept",
            Some(Lifetime {
                ttl_ms: 0,
                renew_on_write: true
            })
        )
        .await
        .is_err()
    );
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn quotas_refuse_and_say_which() {
    let rt = TestRuntime::memory().await;
    let sc = SidecarClient::with_config(
        &rt,
        SidecarConfig::default().max_keys(3).max_total_bytes(100),
    )
    .unwrap();
    for k in ["a", "b", "c"] {
        sc.put("q", k, &"0123456789", Condition::Always)
            .await
            .unwrap();
    }
    let err = sc.put("q", "d", &1, Condition::Always).await.unwrap_err();
    assert!(
        matches!(
            err,
            SidecarError::QuotaExceeded {
                quota: Quota::Keys,
                limit: 3,
                requested: 4
            }
        ),
        "{err}"
    );
    // Replacing a value counts only the difference.
    sc.put("q", "a", &"x".repeat(60), Condition::Always)
        .await
        .unwrap();
    let err = sc
        .put("q", "b", &"x".repeat(60), Condition::Always)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            SidecarError::QuotaExceeded {
                quota: Quota::Bytes,
                limit: 100,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("bytes quota"), "{err}");
    // Deleting frees.
    sc.delete("q", "a", Condition::Always).await.unwrap();
    sc.put("q", "b", &"x".repeat(60), Condition::Always)
        .await
        .unwrap();
    let info = sc.info("q").await.unwrap();
    assert_eq!((info.keys, info.bytes), (2, 62 + 12));
    // A second configuration of the same runtime is refused.
    assert!(SidecarClient::with_config(&rt, SidecarConfig::default()).is_err());
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn steps_lease_complete_fail_resume_and_survive_a_restart() {
    let rt = TestRuntime::sqlite().await;
    let sc = SidecarClient::new(&rt).unwrap();
    let lease = Duration::from_secs(30);
    sc.declare_steps("wf", &["fetch", "parse", "store"])
        .await
        .unwrap();
    sc.declare_steps("wf", &["fetch", "parse", "store"])
        .await
        .unwrap();
    assert!(matches!(
        sc.declare_steps("wf", &["other"]).await,
        Err(SidecarError::StepsDeclared { .. })
    ));
    let a = sc
        .next_step("wf", "w1", lease)
        .await
        .unwrap()
        .lease
        .unwrap();
    assert_eq!((a.name.as_str(), a.attempt), ("fetch", 1));
    // While leased, nobody else gets it.
    let busy = sc.next_step("wf", "w2", lease).await.unwrap();
    assert!(busy.lease.is_none());
    assert_eq!(busy.blocked_by.unwrap().status, StepStatus::Running);
    // The worker dies mid-step, and so does the process.
    let rt = rt.restart().await;
    let sc = SidecarClient::new(&rt).unwrap();
    rt.advance(Duration::from_secs(31)).await;
    let b = sc
        .next_step("wf", "w2", lease)
        .await
        .unwrap()
        .lease
        .unwrap();
    assert_eq!((b.name.as_str(), b.attempt), ("fetch", 2));
    assert!(b.token > a.token);
    // The first worker comes back late: its token is stale.
    let late = sc
        .complete_step("wf", "fetch", a.token, Some(&1))
        .await
        .unwrap_err();
    assert!(matches!(late, SidecarError::StepLeaseLost { .. }), "{late}");
    sc.complete_step("wf", "fetch", b.token, Some(&json!({"pages": 2})))
        .await
        .unwrap();
    let p = sc
        .next_step("wf", "w2", lease)
        .await
        .unwrap()
        .lease
        .unwrap();
    assert_eq!(p.name, "parse");
    assert_eq!(p.previous_output.as_deref(), Some(r#"{"pages":2}"#));
    sc.fail_step("wf", "parse", p.token, "bad input")
        .await
        .unwrap();
    let blocked = sc.next_step("wf", "w2", lease).await.unwrap();
    let step = blocked.blocked_by.unwrap();
    assert_eq!(
        (step.status, step.error.as_deref()),
        (StepStatus::Failed, Some("bad input"))
    );
    assert!(matches!(
        sc.resume_step("wf", "fetch").await,
        Err(SidecarError::StepNotFailed { .. })
    ));
    sc.resume_step("wf", "parse").await.unwrap();
    let p2 = sc
        .next_step("wf", "w3", lease)
        .await
        .unwrap()
        .lease
        .unwrap();
    assert_eq!((p2.name.as_str(), p2.attempt), ("parse", 2));
    sc.complete_step("wf", "parse", p2.token, None::<&Value>)
        .await
        .unwrap();
    let s = sc
        .next_step("wf", "w3", lease)
        .await
        .unwrap()
        .lease
        .unwrap();
    sc.complete_step("wf", "store", s.token, Some(&"ok"))
        .await
        .unwrap();
    let end = sc.next_step("wf", "w3", lease).await.unwrap();
    assert!(end.finished && end.lease.is_none());
    let steps = sc.steps("wf").await.unwrap();
    assert!(steps.iter().all(|s| s.status == StepStatus::Done));
    assert_eq!(steps[0].output.as_deref(), Some(r#"{"pages":2}"#));
    assert_eq!(steps[2].output.as_deref(), Some(r#""ok""#));
    assert!(matches!(
        sc.resume_step("wf", "nope").await,
        Err(SidecarError::StepNotFound { .. })
    ));
    rt.shutdown().await.unwrap();
}

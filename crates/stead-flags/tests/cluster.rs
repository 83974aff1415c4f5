//! Flags on the nodes of a cluster: the set's object lives on one node, and evaluations on
//! another node are never staler than `CLUSTER_STALENESS`; a change made through a node is
//! seen there at once. (Nodes in one process, calls serialized as between machines.)

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde_json::{Map, Value, json};
use stead_core::{Cluster, Error, Location, ObjectRef, PeerCall, PeerReply, Result, Runtime};
use stead_flags::{CLUSTER_STALENESS, Edit, FlagsClient};

/// Every object lives on node 1.
struct Node {
    me: usize,
    runtimes: Arc<Mutex<Vec<Runtime>>>,
}

impl Cluster for Node {
    fn locate(&self, _obj: &ObjectRef) -> Location {
        if self.me == 1 {
            Location::Here
        } else {
            Location::At("n1".into())
        }
    }

    fn call(&self, _peer: &str, call: PeerCall) -> BoxFuture<'static, Result<PeerReply>> {
        let rt = self.runtimes.lock().unwrap()[1].clone();
        Box::pin(async move {
            let wire = |e| Error::Codec(e);
            let call: PeerCall =
                serde_json::from_slice(&serde_json::to_vec(&call).map_err(wire)?).map_err(wire)?;
            let reply = rt.serve_peer(call).await;
            serde_json::from_slice(&serde_json::to_vec(&reply).map_err(wire)?).map_err(wire)
        })
    }
}

fn flag(color: &str) -> Value {
    json!({"state": "ENABLED", "variants": {"c": color}, "defaultVariant": "c"})
}

async fn color(flags: &FlagsClient) -> String {
    let d = flags
        .value("prod", "color", String::new(), &Map::new())
        .await
        .unwrap();
    d.value
}

#[tokio::test(start_paused = true)]
async fn evaluations_on_a_node_that_does_not_own_the_set_are_at_most_a_bound_stale() {
    let runtimes: Arc<Mutex<Vec<Runtime>>> = Arc::default();
    let mut clients = Vec::new();
    for me in 0..2 {
        let rt = Runtime::builder()
            .memory()
            .cluster(Arc::new(Node {
                me,
                runtimes: runtimes.clone(),
            }))
            .build()
            .await
            .unwrap();
        clients.push(FlagsClient::new(&rt).unwrap());
        runtimes.lock().unwrap().push(rt);
    }
    let (away, owner) = (&clients[0], &clients[1]);
    // A change made through the node that forwards it is seen there at once.
    away.put_flag("prod", "color", &flag("red"), Edit::by("ada"))
        .await
        .unwrap();
    assert_eq!(color(away).await, "red");
    assert_eq!(color(owner).await, "red");
    // A change made on the owner reaches the other node within the bound, not before
    // (within it, the other node may answer with what it fetched last).
    owner
        .put_flag("prod", "color", &flag("blue"), Edit::by("bo"))
        .await
        .unwrap();
    assert_eq!(color(owner).await, "blue");
    assert_eq!(color(away).await, "red", "still within the bound");
    tokio::time::advance(CLUSTER_STALENESS + Duration::from_millis(1)).await;
    assert_eq!(color(away).await, "blue");
    // A long-poll on the other node wakes for a change made on the owner.
    let version = away.snapshot("prod").await.unwrap().version();
    let (away2, owner2) = (away.clone(), owner.clone());
    let wait = tokio::spawn(async move {
        away2
            .wait_for_change("prod", version, Duration::from_secs(30))
            .await
    });
    tokio::time::advance(Duration::from_millis(10)).await;
    owner2
        .put_flag("prod", "color", &flag("green"), Edit::by("cy"))
        .await
        .unwrap();
    tokio::time::advance(CLUSTER_STALENESS * 2).await;
    assert_eq!(wait.await.unwrap().unwrap(), version + 1);
    // Asking about sets never configured publishes nothing on either node.
    let published = |rt: &Runtime| {
        rt.get_namespace::<stead_flags::FlagSet>()
            .unwrap()
            .unwrap()
            .env()
            .snapshots
            .published_sets()
    };
    for i in 0..50 {
        let _ = away.snapshot(&format!("nobody-{i}")).await;
    }
    for rt in runtimes.lock().unwrap().iter() {
        assert_eq!(published(rt), 1, "only the configured set is published");
    }
    for rt in runtimes.lock().unwrap().drain(..) {
        drop(rt);
    }
}

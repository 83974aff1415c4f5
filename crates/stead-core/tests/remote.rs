//! Calls across the nodes of a cluster, with nodes in one process and a transport that
//! serializes every call and reply as a real one would: a call to an object another node
//! owns is forwarded and answered there, follows the owner when it moved, waits while
//! nobody owns it, and refuses messages its class did not declare.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use stead_core::{
    Cluster, Context, DurableObject, Error, Handler, Location, ObjectRef, PeerCall, PeerReply,
    Remote, Result, Runtime,
};

struct Counter {
    node: usize,
}

impl DurableObject for Counter {
    const CLASS: &'static str = "remote-counter";
    /// The node's index, so that a reply says where the turn ran.
    type Env = usize;
    async fn activate(_ctx: &mut Context, env: Arc<usize>) -> Result<Self> {
        Ok(Counter { node: *env })
    }
    fn remote(remote: &mut Remote<Self>) {
        remote.message::<Add>().message::<Refuse>();
    }
}

/// Adds to the stored value; answers the new value and the node the turn ran on.
#[derive(Serialize, Deserialize)]
struct Add(i64);

impl Handler<Add> for Counter {
    type Reply = Result<(i64, usize)>;
    async fn handle(&mut self, msg: Add, ctx: &mut Context) -> Result<(i64, usize)> {
        let v = ctx.storage().get::<i64>("v").await?.unwrap_or(0) + msg.0;
        ctx.storage().put("v", &v)?;
        Ok((v, self.node))
    }
}

/// Fails with a conflict.
#[derive(Serialize, Deserialize)]
struct Refuse;

impl Handler<Refuse> for Counter {
    type Reply = Result<()>;
    async fn handle(&mut self, _: Refuse, _ctx: &mut Context) -> Result<()> {
        Err(Error::conflict("the token is stale"))
    }
}

/// Not declared callable from another node.
#[derive(Serialize, Deserialize)]
struct Local;

impl Handler<Local> for Counter {
    type Reply = usize;
    async fn handle(&mut self, _: Local, _ctx: &mut Context) -> usize {
        self.node
    }
}

/// Nodes `n0`, `n1`, ... in one process. Each node's view of who owns everything is its
/// own (`views[i]`: an index, or `usize::MAX` for nobody), so that a view can lag behind.
#[derive(Default)]
struct Nodes {
    runtimes: Mutex<Vec<Runtime>>,
    views: Vec<AtomicUsize>,
    /// Calls each node received.
    received: Vec<AtomicUsize>,
    /// Nodes that never answer (paused).
    paused: Vec<AtomicBool>,
}

struct Node {
    me: usize,
    nodes: Arc<Nodes>,
}

impl Cluster for Node {
    fn locate(&self, _obj: &ObjectRef) -> Location {
        match self.nodes.views[self.me].load(Ordering::SeqCst) {
            usize::MAX => Location::Unknown,
            n if n == self.me => Location::Here,
            n => Location::At(format!("n{n}").into()),
        }
    }

    fn call(&self, peer: &str, call: PeerCall) -> BoxFuture<'static, Result<PeerReply>> {
        let nodes = self.nodes.clone();
        let n: usize = peer[1..].parse().unwrap();
        Box::pin(async move {
            // Over the wire: JSON both ways.
            let wire = |e| Error::Codec(e);
            let call: PeerCall =
                serde_json::from_slice(&serde_json::to_vec(&call).map_err(wire)?).map_err(wire)?;
            nodes.received[n].fetch_add(1, Ordering::SeqCst);
            if nodes.paused[n].load(Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            let rt = nodes.runtimes.lock().unwrap()[n].clone();
            let reply = rt.serve_peer(call).await;
            serde_json::from_slice(&serde_json::to_vec(&reply).map_err(wire)?).map_err(wire)
        })
    }
}

async fn cluster(n: usize) -> (Arc<Nodes>, Vec<stead_core::Namespace<Counter>>) {
    let nodes = Arc::new(Nodes {
        runtimes: Mutex::default(),
        views: (0..n).map(|_| AtomicUsize::new(0)).collect(),
        received: (0..n).map(|_| AtomicUsize::new(0)).collect(),
        paused: (0..n).map(|_| AtomicBool::new(false)).collect(),
    });
    let mut namespaces = Vec::new();
    for me in 0..n {
        let rt = Runtime::builder()
            .memory()
            .cluster(Arc::new(Node {
                me,
                nodes: nodes.clone(),
            }))
            .build()
            .await
            .unwrap();
        namespaces.push(rt.namespace::<Counter>(me).unwrap());
        nodes.runtimes.lock().unwrap().push(rt);
    }
    (nodes, namespaces)
}

fn place(nodes: &Nodes, owner: usize) {
    for v in &nodes.views {
        v.store(owner, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn a_call_to_an_object_owned_elsewhere_runs_on_its_owner() {
    let (nodes, ns) = cluster(2).await;
    place(&nodes, 1);
    let via0 = ns[0].get_by_name("c");
    let via1 = ns[1].get_by_name("c");
    assert_eq!(via0.call(Add(2)).await.unwrap(), (2, 1), "forwarded to n1");
    assert_eq!(via1.call(Add(3)).await.unwrap(), (5, 1), "n1 runs its own");
    assert_eq!(via0.call(Add(1)).await.unwrap(), (6, 1));
    assert_eq!(nodes.received[1].load(Ordering::SeqCst), 2);
    // The owner's error comes back as the same error.
    let err = via0.call(Refuse).await.unwrap_err();
    assert!(
        matches!(&err, Error::Conflict { detail } if detail == "the token is stale"),
        "{err:?}"
    );
    // A message the class did not declare is refused, and says how to declare it.
    let err = via0.ask(Local).await.unwrap_err();
    assert!(
        matches!(&err, Error::InvalidConfig { detail } if detail.contains("DurableObject::remote")),
        "{err:?}"
    );
    // Called on its owner, an undeclared message runs as any call does.
    assert_eq!(via1.ask(Local).await.unwrap(), 1);
    // A message told through another node reaches the owner too.
    via0.tell(Add(10)).unwrap();
    for _ in 0..100 {
        if via1.call(Add(0)).await.unwrap().0 == 16 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the told message never arrived");
}

#[tokio::test]
async fn a_node_that_is_not_the_owner_sends_the_caller_on() {
    let (nodes, ns) = cluster(3).await;
    // n2 owns the object; n1 knows it; n0 still believes n1 does.
    place(&nodes, 2);
    nodes.views[0].store(1, Ordering::SeqCst);
    let (v, ran_on) = ns[0].get_by_name("c").call(Add(1)).await.unwrap();
    assert_eq!((v, ran_on), (1, 2));
    assert_eq!(
        nodes.received[1].load(Ordering::SeqCst),
        1,
        "asked n1 first"
    );
    assert_eq!(nodes.received[2].load(Ordering::SeqCst), 1, "then n2");
}

#[tokio::test]
async fn a_call_waits_while_nobody_owns_the_object() {
    let (nodes, ns) = cluster(2).await;
    place(&nodes, usize::MAX);
    let stub = ns[0].get_by_name("c");
    let call = tokio::spawn(async move { stub.call(Add(1)).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!call.is_finished(), "it waits for the placement to settle");
    // The partition lands on the caller's own node: the call runs there.
    place(&nodes, 0);
    assert_eq!(call.await.unwrap().unwrap(), (1, 0));
}

#[tokio::test]
async fn a_call_gives_up_when_nobody_owns_the_object_for_long() {
    let (nodes, ns) = cluster(2).await;
    place(&nodes, usize::MAX);
    let err = ns[0]
        .get_by_name("c")
        .with_timeout(Duration::from_millis(300))
        .call(Add(1))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("storage") || format!("{err:?}").contains("changing hands"),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_call_to_a_paused_owner_gives_up_once_the_object_moved_on() {
    let (nodes, ns) = cluster(3).await;
    place(&nodes, 1);
    nodes.paused[1].store(true, Ordering::SeqCst);
    let stub = ns[0].get_by_name("c");
    let started = std::time::Instant::now();
    let call = tokio::spawn(async move { stub.call(Add(1)).await });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        !call.is_finished(),
        "it waits for the owner while the owner is still placed"
    );
    // The paused node's leases expire; n2 takes the object over.
    place(&nodes, 2);
    let err = call.await.unwrap().unwrap_err();
    assert!(matches!(err, Error::Timeout), "{err:?}");
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "gave up after {took:?}, not at the 30 s deadline"
    );
    // The next call reaches the new owner.
    assert_eq!(ns[0].get_by_name("c").call(Add(1)).await.unwrap(), (1, 2));
}

#[test]
fn errors_travel_between_nodes_as_themselves() {
    let cases = [
        Error::Reset,
        Error::Timeout,
        Error::conflict("stale"),
        Error::not_found("the lock"),
        Error::bad_request("no"),
        Error::Overloaded {
            class: "remote-counter",
            retry_after: Duration::from_millis(250),
        },
        Error::ValueTooLarge { size: 10, max: 5 },
    ];
    for e in cases {
        let back: Error = serde_json::from_str(&serde_json::to_string(&e).unwrap()).unwrap();
        assert_eq!(format!("{back:?}"), format!("{e:?}"));
    }
    // A storage error's causes travel as its message.
    let e = Error::storage(std::io::Error::other("disk on fire"));
    let back: Error = serde_json::from_str(&serde_json::to_string(&e).unwrap()).unwrap();
    assert!(
        matches!(&back, Error::Storage(s) if s.to_string().contains("disk on fire")),
        "{back:?}"
    );
}

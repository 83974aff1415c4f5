//! The sockets the runtime holds for each object: kept apart from the object itself, so that
//! they stay open (with their tags, attachments and the auto-response) while the object is
//! out of memory, and the next message activates it again.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::Notify;

use crate::clock::lock;
use crate::error::{Error, Result};
use crate::id::{IdHashState, ObjectId};
use crate::shared::Shared;

/// Socket numbers, unique within the process.
static NEXT_SOCKET: AtomicU64 = AtomicU64::new(1);

/// Something to write to a client.
#[derive(Debug, Clone)]
pub(crate) enum Frame {
    /// Valid UTF-8.
    Text(Bytes),
    Binary(Bytes),
    /// The object closes the socket.
    Close(u16, Arc<str>),
}

impl Frame {
    fn len(&self) -> usize {
        match self {
            Frame::Text(b) | Frame::Binary(b) => b.len(),
            Frame::Close(_, r) => r.len() + 2,
        }
    }
}

/// Why the runtime ends a connection from its side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Stop {
    /// The object closed it with this code and reason (after what it sent before).
    Object(u16, Arc<str>),
    /// The runtime shuts down: 1001 (after what was sent before).
    Shutdown,
    /// The client did not read: its queue overflowed and was dropped.
    SlowReader,
    /// Its object moves to another node of the cluster: 1012, the client reconnects
    /// (after what was sent before).
    Moved,
}

/// The queue of what is to be written to one client.
#[derive(Debug, Default)]
struct Outbox {
    frames: VecDeque<Frame>,
    bytes: usize,
    stop: Option<Stop>,
    finished: bool,
}

/// One socket, as the runtime holds it.
pub(crate) struct SocketShared {
    pub(crate) id: u64,
    pub(crate) tags: Box<[Box<str>]>,
    attachment: Mutex<Box<str>>,
    outbox: Mutex<Outbox>,
    /// Woken when there is something to write or a reason to stop.
    pub(crate) wake: Notify,
    /// Set once the connection is over and its close turn has run (or could not).
    ended: tokio::sync::watch::Sender<bool>,
    max_messages: usize,
    max_bytes: usize,
}

impl SocketShared {
    pub(crate) fn new(
        tags: Box<[Box<str>]>,
        attachment: Box<str>,
        max_messages: usize,
        max_bytes: usize,
    ) -> Self {
        SocketShared {
            id: NEXT_SOCKET.fetch_add(1, Ordering::Relaxed),
            tags,
            attachment: Mutex::new(attachment),
            outbox: Mutex::new(Outbox::default()),
            wake: Notify::new(),
            ended: tokio::sync::watch::Sender::new(false),
            max_messages,
            max_bytes,
        }
    }

    pub(crate) fn has_tag(&self, tag: &str) -> bool {
        self.tags.iter().any(|t| &**t == tag)
    }

    pub(crate) fn attachment(&self) -> Box<str> {
        lock(&self.attachment).clone()
    }

    pub(crate) fn set_attachment(&self, json: Box<str>) {
        *lock(&self.attachment) = json;
    }

    /// Sets the attachment; returns the one it replaced.
    pub(crate) fn replace_attachment(&self, json: Box<str>) -> Box<str> {
        std::mem::replace(&mut *lock(&self.attachment), json)
    }

    pub(crate) fn is_open(&self) -> bool {
        let outbox = lock(&self.outbox);
        outbox.stop.is_none() && !outbox.finished
    }

    /// Queues a frame for the client. A closing or closed socket drops it; one that would
    /// overflow its queue is stopped as a slow reader instead.
    pub(crate) fn deliver(&self, frame: Frame) {
        let wake = {
            let mut outbox = lock(&self.outbox);
            if outbox.finished || outbox.stop.is_some() {
                return;
            }
            match frame {
                Frame::Close(code, reason) => {
                    outbox.stop = Some(Stop::Object(code, reason));
                    true
                }
                frame => {
                    let len = frame.len();
                    if outbox.frames.len() >= self.max_messages
                        || outbox.bytes.saturating_add(len) > self.max_bytes
                    {
                        outbox.frames = VecDeque::new();
                        outbox.bytes = 0;
                        outbox.stop = Some(Stop::SlowReader);
                        true
                    } else {
                        outbox.bytes += len;
                        outbox.frames.push_back(frame);
                        outbox.frames.len() == 1
                    }
                }
            }
        };
        if wake {
            self.wake.notify_one();
        }
    }

    /// Stops the connection from the runtime's side (unless it is stopping already).
    pub(crate) fn stop(&self, stop: Stop) {
        {
            let mut outbox = lock(&self.outbox);
            if outbox.finished || outbox.stop.is_some() {
                return;
            }
            outbox.stop = Some(stop);
        }
        self.wake.notify_one();
    }

    /// Takes what is queued, with the reason to stop once it is written, if any.
    pub(crate) fn take(&self) -> (VecDeque<Frame>, Option<Stop>) {
        let mut outbox = lock(&self.outbox);
        outbox.bytes = 0;
        (std::mem::take(&mut outbox.frames), outbox.stop.clone())
    }

    /// Whether the queue overflowed (the writer gives up on a client that does not read).
    pub(crate) fn overflowed(&self) -> bool {
        lock(&self.outbox).stop == Some(Stop::SlowReader)
    }

    /// The connection is over and its close turn was delivered.
    pub(crate) fn end(&self) {
        self.ended.send_replace(true);
    }

    /// Waits until [`end`](Self::end).
    pub(crate) async fn ended(&self) {
        let mut rx = self.ended.subscribe();
        let _ = rx.wait_for(|ended| *ended).await;
    }

    /// The connection is over: nothing more is queued.
    pub(crate) fn finish(&self) {
        let mut outbox = lock(&self.outbox);
        outbox.finished = true;
        outbox.frames = VecDeque::new();
    }
}

/// The sockets of one object.
#[derive(Default)]
pub(crate) struct ObjectSockets {
    inner: Mutex<HubInner>,
}

#[derive(Default)]
struct HubInner {
    /// Open sockets, by number (so in the order they were accepted).
    sockets: BTreeMap<u64, Arc<SocketShared>>,
    /// Accepted, not yet upgraded: they count against the limit.
    reserved: usize,
    /// A text message answered by the runtime, and its answer.
    auto_response: Option<(Box<str>, Bytes)>,
}

impl ObjectSockets {
    /// Open sockets, with `tag` if given, in the order they were accepted.
    pub(crate) fn list(&self, tag: Option<&str>) -> Vec<Arc<SocketShared>> {
        let inner = lock(&self.inner);
        inner
            .sockets
            .values()
            .filter(|s| tag.is_none_or(|t| s.has_tag(t)))
            .cloned()
            .collect()
    }

    /// The runtime's answer to `text`, if it is the auto-response request.
    pub(crate) fn auto_response(&self, text: &str) -> Option<Bytes> {
        let inner = lock(&self.inner);
        match &inner.auto_response {
            Some((request, response)) if &**request == text => Some(response.clone()),
            _ => None,
        }
    }

    /// Registers an upgraded socket in place of its reservation.
    pub(crate) fn register(&self, socket: Arc<SocketShared>) {
        let mut inner = lock(&self.inner);
        inner.reserved = inner.reserved.saturating_sub(1);
        inner.sockets.insert(socket.id, socket);
    }

    fn unused(inner: &HubInner) -> bool {
        inner.sockets.is_empty() && inner.reserved == 0 && inner.auto_response.is_none()
    }
}

/// The sockets of a namespace's objects, by object.
#[derive(Default)]
pub(crate) struct SocketTable {
    map: Mutex<HashMap<ObjectId, Arc<ObjectSockets>, IdHashState>>,
}

impl SocketTable {
    /// How many sockets are open, over every object.
    pub(crate) fn open(&self) -> usize {
        let hubs: Vec<_> = lock(&self.map).values().cloned().collect();
        hubs.iter().map(|h| lock(&h.inner).sockets.len()).sum()
    }

    pub(crate) fn get(&self, id: &ObjectId) -> Option<Arc<ObjectSockets>> {
        lock(&self.map).get(id).cloned()
    }

    /// Reserves room for one more socket of object `id`, within `max`.
    pub(crate) fn reserve(&self, id: ObjectId, max: usize) -> Result<Arc<ObjectSockets>> {
        let mut map = lock(&self.map);
        let hub = map.entry(id).or_default().clone();
        let mut inner = lock(&hub.inner);
        if inner.sockets.len() + inner.reserved >= max {
            let unused = ObjectSockets::unused(&inner);
            drop(inner);
            if unused {
                map.remove(&id);
            }
            return Err(Error::TooManyWebSockets { max });
        }
        inner.reserved += 1;
        drop(inner);
        Ok(hub)
    }

    /// Ends a reservation (`socket` None) or a registered socket, and forgets the object's
    /// entry once nothing is left in it.
    pub(crate) fn release(&self, id: ObjectId, socket: Option<u64>) {
        let mut map = lock(&self.map);
        let Some(hub) = map.get(&id).cloned() else {
            return;
        };
        let mut inner = lock(&hub.inner);
        match socket {
            Some(n) => {
                inner.sockets.remove(&n);
            }
            None => inner.reserved = inner.reserved.saturating_sub(1),
        }
        if ObjectSockets::unused(&inner) {
            map.remove(&id);
        }
    }

    /// Sets (or clears) object `id`'s auto-response.
    pub(crate) fn set_auto_response(&self, id: ObjectId, pair: Option<(Box<str>, Bytes)>) {
        let mut map = lock(&self.map);
        let hub = map.entry(id).or_default().clone();
        let mut inner = lock(&hub.inner);
        inner.auto_response = pair;
        if ObjectSockets::unused(&inner) {
            map.remove(&id);
        }
    }

    /// Stops every socket of the objects `which` selects, and answers them with their
    /// objects.
    pub(crate) fn stop_where(
        &self,
        which: &dyn Fn(&ObjectId) -> bool,
        stop: &Stop,
    ) -> Vec<(ObjectId, Arc<SocketShared>)> {
        let hubs: Vec<_> = lock(&self.map)
            .iter()
            .filter(|(id, _)| which(id))
            .map(|(id, hub)| (*id, hub.clone()))
            .collect();
        let mut stopped = Vec::new();
        for (id, hub) in hubs {
            for socket in hub.list(None) {
                socket.stop(stop.clone());
                stopped.push((id, socket));
            }
        }
        stopped
    }

    /// Stops every socket of every object.
    pub(crate) fn stop_all(&self, stop: &Stop) {
        self.stop_where(&|_| true, stop);
    }
}

/// A socket's place in its object's hub and in the runtime's count of live sockets, from
/// the accept to the end of its close turn's delivery. Dropping it gives both back.
pub(crate) struct SocketSlot {
    table: Arc<SocketTable>,
    object: ObjectId,
    shared: Arc<Shared>,
    /// Counted against the limit, not yet upgraded.
    reserved: bool,
    registered: Option<Arc<SocketShared>>,
}

impl SocketSlot {
    pub(crate) fn reserve(
        table: Arc<SocketTable>,
        object: ObjectId,
        shared: Arc<Shared>,
    ) -> Result<(SocketSlot, Arc<ObjectSockets>)> {
        let hub = table.reserve(object, shared.config.websocket.max_per_object)?;
        shared.sockets.started();
        Ok((
            SocketSlot {
                table,
                object,
                shared,
                reserved: true,
                registered: None,
            },
            hub,
        ))
    }

    /// The upgrade succeeded: the socket is listed from now on.
    pub(crate) fn register(&mut self, hub: &ObjectSockets, socket: Arc<SocketShared>) {
        hub.register(socket.clone());
        self.reserved = false;
        self.registered = Some(socket);
        metrics::gauge!("stead_websockets_open").increment(1.0);
    }

    /// The connection is over: the socket is no longer listed (its close turn does not see
    /// it), and anything still sent to it is dropped.
    pub(crate) fn unregister(&mut self) {
        if let Some(socket) = self.registered.take() {
            socket.finish();
            self.table.release(self.object, Some(socket.id));
            metrics::gauge!("stead_websockets_open").decrement(1.0);
        }
    }
}

impl Drop for SocketSlot {
    fn drop(&mut self) {
        self.unregister();
        if self.reserved {
            self.table.release(self.object, None);
        }
        self.shared.sockets.stopped();
    }
}

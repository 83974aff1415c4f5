//! Turns of WebSocket events: an open socket, a message, a close. They have no caller: a
//! handler's error or panic is logged and discards the turn.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures_util::FutureExt;
use tracing::Instrument;

use crate::object::DurableObject;
use crate::websocket::{WebSocket, WebSocketClose, WebSocketMessage};

use super::actor::Actor;
use super::{Envelope, NsInner};
use crate::error::Error;
use crate::id::ObjectId;

/// Something that happened to one of an object's sockets.
#[cfg_attr(not(feature = "http"), allow(dead_code))]
pub(crate) enum SocketEvent {
    Open(WebSocket),
    Message(WebSocket, WebSocketMessage),
    Close(WebSocket, WebSocketClose),
}

impl SocketEvent {
    pub(crate) fn socket(&self) -> &WebSocket {
        match self {
            SocketEvent::Open(s) | SocketEvent::Message(s, _) | SocketEvent::Close(s, _) => s,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            SocketEvent::Open(_) => "websocket_open",
            SocketEvent::Message(..) => "websocket_message",
            SocketEvent::Close(..) => "websocket_close",
        }
    }
}

impl<O: DurableObject> Actor<O> {
    /// Runs one socket event as a turn.
    pub(super) async fn run_socket(&mut self, event: SocketEvent) {
        let Some(instance) = self.instance.as_mut() else {
            return;
        };
        let kind = event.kind();
        let socket_id = event.socket().id();
        let span = tracing::debug_span!("turn", class = O::CLASS, id = %self.id, message = kind, socket = socket_id);
        let started = std::time::Instant::now();
        let ctx = &mut self.ctx;
        let turn = async move {
            match event {
                SocketEvent::Open(socket) => instance.on_websocket_open(ctx, socket).await,
                SocketEvent::Message(socket, msg) => {
                    instance.on_websocket_message(ctx, socket, msg).await
                }
                SocketEvent::Close(socket, close) => {
                    instance.on_websocket_close(ctx, socket, close).await
                }
            }
        };
        let result = AssertUnwindSafe(turn).catch_unwind().instrument(span).await;
        let took = started.elapsed();
        self.ns.metrics.record_turn(took);
        self.mailbox.pace.record(took);
        match result {
            Ok(Ok(())) => self.end_turn().await,
            Ok(Err(e)) => {
                tracing::warn!(class = O::CLASS, id = %self.id, socket = socket_id, handler = kind, error = %e, "WebSocket handler failed; its turn is discarded");
                metrics::counter!("stead_websocket_handler_failures_total", "class" => O::CLASS)
                    .increment(1);
                self.discard_turn();
            }
            Err(panic) => self.panicked(panic),
        }
    }
}

/// Delivers a socket event that could not run again later, with the backoff of a failed
/// alarm (the runtime's `alarm_first_retry`, doubling, at most `alarm_max_retries` times),
/// on the runtime's clock; then it is dropped with a log line and a metric.
pub(super) fn retry_later<O: DurableObject>(
    ns: &Arc<NsInner<O>>,
    id: ObjectId,
    name: Option<Arc<str>>,
    event: SocketEvent,
    tried: u32,
    err: &Error,
) {
    let config = &ns.shared.config;
    let kind = event.kind();
    let socket = event.socket().id();
    if tried >= config.alarm_max_retries {
        tracing::error!(class = O::CLASS, %id, socket, handler = kind, error = %err, retries = tried,
            "a WebSocket event could not be delivered and is dropped");
        metrics::counter!("stead_websocket_events_dropped_total", "class" => O::CLASS).increment(1);
        return;
    }
    tracing::warn!(class = O::CLASS, %id, socket, handler = kind, error = %err, retry = tried,
        "a WebSocket event could not be delivered; will retry");
    let backoff = config.retry_backoff(tried);
    let clock = ns.shared.clock.clone();
    let at = clock.now() + chrono::Duration::from_std(backoff).unwrap_or(chrono::TimeDelta::MAX);
    let ns = ns.clone();
    tokio::spawn(async move {
        clock.sleep_until(at).await;
        let event = Envelope::Socket(event, tried + 1);
        if let Err((e, back)) = ns.send_waiting(id, &name, event).await {
            back.fail(e);
        }
    });
}

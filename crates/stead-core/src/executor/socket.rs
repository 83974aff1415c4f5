//! Turns of WebSocket events: an open socket, a message, a close. They have no caller: a
//! handler's error or panic is logged and discards the turn.

use std::panic::AssertUnwindSafe;

use futures_util::FutureExt;
use tracing::Instrument;

use crate::object::DurableObject;
use crate::websocket::{WebSocket, WebSocketClose, WebSocketMessage};

use super::actor::Actor;

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
                self.ctx.storage.rollback();
                self.ctx.discard_outputs();
            }
            Err(panic) => self.panicked(panic),
        }
    }
}

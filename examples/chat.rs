//! Chat rooms, one durable object per room, holding its members' WebSockets.
//!
//! `cargo run --example chat -- 127.0.0.1:3000 ./chat-data` serves
//! `GET /rooms/{room}/ws?name=…` (a WebSocket) and `GET /rooms/{room}/who` (who is in the
//! room). On joining, a client first receives the room's last 50 messages, then every text
//! message anyone in the room sends (itself included), each as `{"from":"…","text":"…"}`.
//! The history is kept in the room's storage, so it survives a restart on the same data
//! directory; a room nobody writes to leaves memory while its sockets stay open.

use std::sync::Arc;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use stead::{
    Context, DurableObject, Handler, ListOptions, Namespace, Runtime, WebSocket, WebSocketMessage,
};

/// How many messages a room keeps, and sends to whoever joins.
pub const HISTORY: usize = 50;
/// The longest message a room accepts, in characters.
pub const MAX_TEXT_CHARS: usize = 4000;

/// One chat message, as stored and as sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Said {
    /// Who said it.
    pub from: String,
    /// What they said.
    pub text: String,
}

/// A chat room: the last messages in storage, the members' sockets held by the runtime.
#[derive(Debug)]
pub struct Room {
    /// The number the next message is stored under.
    next: u64,
}

fn key(seq: u64) -> String {
    format!("msg/{seq:016}")
}

impl DurableObject for Room {
    const CLASS: &'static str = "chat-room";
    type Env = ();

    async fn activate(ctx: &mut Context, _: Arc<()>) -> stead::Result<Self> {
        let last = ctx
            .storage()
            .list::<Said>(ListOptions::prefix("msg/").reverse().limit(1))
            .await?;
        let next = last
            .first()
            .and_then(|(k, _)| k.strip_prefix("msg/")?.parse::<u64>().ok())
            .map_or(0, |n| n + 1);
        // Browsers' keep-alive pings are answered by the runtime, without waking the room.
        ctx.set_websocket_auto_response("ping", "pong");
        Ok(Room { next })
    }

    async fn on_websocket_open(
        &mut self,
        ctx: &mut Context,
        socket: WebSocket,
    ) -> stead::Result<()> {
        let mut history = ctx
            .storage()
            .list::<Said>(ListOptions::prefix("msg/").reverse().limit(HISTORY))
            .await?;
        history.reverse();
        for (_, said) in history {
            socket.send(
                ctx,
                serde_json::to_string(&said).map_err(stead::Error::Codec)?,
            );
        }
        Ok(())
    }

    async fn on_websocket_message(
        &mut self,
        ctx: &mut Context,
        socket: WebSocket,
        message: WebSocketMessage,
    ) -> stead::Result<()> {
        let WebSocketMessage::Text(text) = message else {
            return Ok(()); // a chat of text: binary messages are ignored
        };
        let from: String = socket.attachment()?;
        if text.chars().count() > MAX_TEXT_CHARS {
            let refusal = Said {
                from: String::new(),
                text: format!("not sent: a message has at most {MAX_TEXT_CHARS} characters"),
            };
            socket.send(
                ctx,
                serde_json::to_string(&refusal).map_err(stead::Error::Codec)?,
            );
            return Ok(());
        }
        let said = Said { from, text };
        ctx.storage().put(&key(self.next), &said)?;
        if let Some(old) = self.next.checked_sub(HISTORY as u64) {
            ctx.storage().delete(&key(old))?;
        }
        self.next += 1;
        // Everyone gets it once it is durable, the sender too.
        ctx.broadcast(
            None,
            serde_json::to_string(&said).map_err(stead::Error::Codec)?,
        );
        Ok(())
    }
}

/// Who is in the room: the names its open sockets were tagged with, once each.
#[derive(Debug, Serialize, Deserialize)]
pub struct Who;

impl Handler<Who> for Room {
    type Reply = Vec<String>;
    async fn handle(&mut self, _: Who, ctx: &mut Context) -> Vec<String> {
        let mut names: Vec<String> = ctx
            .websockets(None)
            .iter()
            .flat_map(|s| {
                s.tags()
                    .filter_map(|t| t.strip_prefix("user:"))
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect();
        names.sort();
        names.dedup();
        names
    }
}

#[derive(Deserialize)]
struct Join {
    name: String,
}

async fn join(
    State(rooms): State<Namespace<Room>>,
    Path(room): Path<String>,
    Query(join): Query<Join>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let checked =
        stead::validate_name("room", &room).and_then(|()| stead::validate_name("name", &join.name));
    if let Err(e) = checked {
        return stead::http::Problem::from(&e).into_response();
    }
    let tag = format!("user:{}", join.name);
    match rooms
        .get_by_name(&room)
        .accept_websocket(upgrade, &[&tag], &join.name)
    {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

async fn who(State(rooms): State<Namespace<Room>>, Path(room): Path<String>) -> Response {
    match rooms.get_by_name(&room).ask(Who).await {
        Ok(names) => axum::Json(names).into_response(),
        Err(e) => e.into_response(),
    }
}

/// The chat's routes on `rt`.
pub fn app(rt: &Runtime) -> stead::Result<axum::Router> {
    let rooms = rt.namespace::<Room>(())?;
    Ok(axum::Router::new()
        .route("/rooms/{room}/ws", get(join))
        .route("/rooms/{room}/who", get(who))
        .with_state(rooms))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:3000".to_owned());
    let dir = args.next().unwrap_or_else(|| "./chat-data".to_owned());
    let rt = Runtime::builder().sqlite(&dir).build().await?;
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!(
        "chat on ws://{}/rooms/{{room}}/ws?name={{you}}, data in {dir}",
        listener.local_addr()?
    );
    axum::serve(listener, app(&rt)?)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    // Every socket is closed with 1001 (going away) and the room's writes are flushed.
    rt.shutdown().await?;
    Ok(())
}

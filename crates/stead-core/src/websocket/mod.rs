//! WebSockets held by objects: the handle a turn gets on a socket, the messages, the limits,
//! and (in `hub`) the sockets the runtime keeps open while their object may leave memory.
//!
//! A socket is accepted by a stub (`Stub::accept_websocket`, with the `http` feature); from
//! then on the runtime owns the connection. Its events are turns of the object
//! ([`crate::DurableObject::on_websocket_open`], `on_websocket_message`,
//! `on_websocket_close`), and what a turn sends leaves only once the turn's writes are
//! durable (the output gate), so a client never sees a message whose cause was lost.

pub(crate) mod hub;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::context::Context;
use crate::error::{Error, Result};

#[cfg(feature = "http")]
pub(crate) use hub::ObjectSockets;
pub(crate) use hub::{Frame, SocketShared, SocketTable};

/// At most this many tags per socket.
pub const MAX_TAGS: usize = 10;
/// At most this many characters per tag.
pub const MAX_TAG_CHARS: usize = 256;
/// The largest attachment, serialized as JSON, in bytes.
pub const MAX_ATTACHMENT_BYTES: usize = 16 * 1024;

/// Limits and timers of the WebSockets objects hold (part of [`crate::RuntimeConfig`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WebSocketConfig {
    /// At most this many open sockets per object; more are refused with
    /// [`Error::TooManyWebSockets`] (default 32,768).
    pub max_per_object: usize,
    /// The largest message a client may send, in bytes; a larger one closes the socket with
    /// 1009 (default 1 MiB).
    pub max_message_bytes: usize,
    /// Messages waiting to be written to one client; a client that falls this far behind is
    /// closed with 1008 instead of growing memory (default 1,024).
    pub max_queued_messages: usize,
    /// Bytes waiting to be written to one client, with the same consequence (default 8 MiB).
    pub max_queued_bytes: usize,
    /// A client silent this long is sent a ping (default 30 s), on the runtime's clock.
    pub ping_interval: Duration,
    /// A ping unanswered this long closes the socket as dead (default 30 s).
    pub ping_timeout: Duration,
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        WebSocketConfig {
            max_per_object: 32_768,
            max_message_bytes: 1024 * 1024,
            max_queued_messages: 1024,
            max_queued_bytes: 8 * 1024 * 1024,
            ping_interval: Duration::from_secs(30),
            ping_timeout: Duration::from_secs(30),
        }
    }
}

/// A message from or to a WebSocket client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebSocketMessage {
    /// A text message.
    Text(String),
    /// A binary message.
    Binary(Vec<u8>),
}

impl WebSocketMessage {
    /// The text, for a text message.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            WebSocketMessage::Text(t) => Some(t),
            WebSocketMessage::Binary(_) => None,
        }
    }

    pub(crate) fn into_frame(self) -> Frame {
        match self {
            WebSocketMessage::Text(t) => Frame::Text(Bytes::from(t)),
            WebSocketMessage::Binary(b) => Frame::Binary(Bytes::from(b)),
        }
    }
}

impl From<String> for WebSocketMessage {
    fn from(s: String) -> Self {
        WebSocketMessage::Text(s)
    }
}

impl From<&str> for WebSocketMessage {
    fn from(s: &str) -> Self {
        WebSocketMessage::Text(s.to_owned())
    }
}

impl From<Vec<u8>> for WebSocketMessage {
    fn from(b: Vec<u8>) -> Self {
        WebSocketMessage::Binary(b)
    }
}

/// Why a socket closed, as its close turn is told.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WebSocketClose {
    /// The close code: the client's, the object's, 1001 on shutdown, 1006 when the
    /// connection was lost without a close frame (dropped, or a ping went unanswered), 1008
    /// for a client that did not read, 1009 for a message over the limit, 1005 when the
    /// client's close frame carried no code.
    pub code: u16,
    /// The reason given with the code (the runtime's own words for its own causes).
    pub reason: String,
    /// Whether both sides exchanged close frames.
    pub was_clean: bool,
}

/// A WebSocket held by an object, as a turn sees it: its tags and attachment, and sends and
/// closes that obey the output gate. Cheap to clone; it stays valid after the socket closed
/// (sends are then dropped).
#[derive(Clone)]
pub struct WebSocket {
    pub(crate) shared: Arc<SocketShared>,
}

impl std::fmt::Debug for WebSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebSocket")
            .field("id", &self.shared.id)
            .field("tags", &self.shared.tags)
            .finish()
    }
}

impl PartialEq for WebSocket {
    fn eq(&self, other: &Self) -> bool {
        self.shared.id == other.shared.id
    }
}

impl Eq for WebSocket {}

impl WebSocket {
    /// A number that names this socket within the process (sockets accepted later have
    /// larger ones).
    pub fn id(&self) -> u64 {
        self.shared.id
    }

    /// The tags it was accepted with.
    pub fn tags(&self) -> impl Iterator<Item = &str> {
        self.shared.tags.iter().map(|t| &**t)
    }

    /// Whether it was accepted with `tag`.
    pub fn has_tag(&self, tag: &str) -> bool {
        self.shared.has_tag(tag)
    }

    /// Its attachment: the value given when it was accepted, or last set.
    pub fn attachment<T: DeserializeOwned>(&self) -> Result<T> {
        let json = self.shared.attachment();
        serde_json::from_str(&json).map_err(Error::Codec)
    }

    /// Replaces its attachment (kept by the runtime with the socket, also while the object
    /// is out of memory; at most 16 KiB as JSON). Takes effect at once (later reads in the
    /// turn see it); a turn that fails puts the earlier value back.
    pub fn set_attachment<T: Serialize + ?Sized>(
        &self,
        ctx: &mut Context,
        value: &T,
    ) -> Result<()> {
        let json = encode_attachment(value)?;
        let before = self.shared.replace_attachment(json);
        ctx.attachments_before.push((self.shared.clone(), before));
        Ok(())
    }

    /// Sends `msg` to the client once the current turn's writes are durable; never if the
    /// turn fails. A socket that closed meanwhile drops it.
    pub fn send(&self, ctx: &mut Context, msg: impl Into<WebSocketMessage>) {
        ctx.sends
            .push((self.shared.clone(), msg.into().into_frame()));
    }

    /// Closes the socket with `code` (1000, or 3000 to 4999) and `reason` (at most 123
    /// bytes) once the current turn's writes are durable: what the turn sent before goes
    /// first. The close handler then runs as for any other close.
    pub fn close(&self, ctx: &mut Context, code: u16, reason: &str) -> Result<()> {
        if !(code == 1000 || (3000..=4999).contains(&code)) {
            return Err(Error::bad_request(format!(
                "close code {code} is not one an application may send: use 1000 or 3000 to 4999"
            )));
        }
        if reason.len() > 123 {
            return Err(Error::bad_request(format!(
                "a close reason has at most 123 bytes, not {}",
                reason.len()
            )));
        }
        ctx.sends
            .push((self.shared.clone(), Frame::Close(code, Arc::from(reason))));
        Ok(())
    }

    /// Whether the socket is still open (neither side has begun to close it).
    pub fn is_open(&self) -> bool {
        self.shared.is_open()
    }
}

/// Checks tags given to an accept: at most [`MAX_TAGS`], each non-empty and at most
/// [`MAX_TAG_CHARS`] characters.
pub(crate) fn check_tags(tags: &[&str]) -> Result<Box<[Box<str>]>> {
    if tags.len() > MAX_TAGS {
        return Err(Error::bad_request(format!(
            "a socket has at most {MAX_TAGS} tags, not {}",
            tags.len()
        )));
    }
    for tag in tags {
        let chars = tag.chars().count();
        if chars == 0 || chars > MAX_TAG_CHARS {
            return Err(Error::bad_request(format!(
                "a tag has 1 to {MAX_TAG_CHARS} characters, not {chars}"
            )));
        }
    }
    Ok(tags.iter().map(|t| Box::from(*t)).collect())
}

/// Serializes an attachment, refusing one over [`MAX_ATTACHMENT_BYTES`].
pub(crate) fn encode_attachment<T: Serialize + ?Sized>(value: &T) -> Result<Box<str>> {
    bounded_attachment(serde_json::to_string(value).map_err(Error::Codec)?)
}

/// An attachment already serialized, refused over [`MAX_ATTACHMENT_BYTES`].
pub(crate) fn bounded_attachment(json: String) -> Result<Box<str>> {
    if json.len() > MAX_ATTACHMENT_BYTES {
        return Err(Error::ValueTooLarge {
            size: json.len(),
            max: MAX_ATTACHMENT_BYTES,
        });
    }
    Ok(json.into_boxed_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_and_attachments_are_bounded() {
        assert!(check_tags(&["a"; 10]).is_ok());
        assert!(matches!(
            check_tags(&["a"; 11]),
            Err(Error::BadRequest { .. })
        ));
        let long = "é".repeat(256);
        assert!(check_tags(&[&long]).is_ok());
        let longer = "é".repeat(257);
        assert!(check_tags(&[&longer]).is_err());
        assert!(check_tags(&[""]).is_err());
        assert!(encode_attachment(&"x".repeat(16 * 1024 - 2)).is_ok());
        assert!(matches!(
            encode_attachment(&"x".repeat(16 * 1024)),
            Err(Error::ValueTooLarge { .. })
        ));
    }
}

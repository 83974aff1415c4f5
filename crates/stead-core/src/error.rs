//! The one error type of the runtime.

use std::time::Duration;

/// A boxed error, kept as the `source` of [`Error::Storage`] and [`Error::Other`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong when talking to a durable object.
///
/// Each variant is something a caller can act on; over HTTP (the `http` feature) every
/// variant maps to one status code and an RFC 9457 problem body.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The object's mailbox is full: back off and retry after `retry_after`.
    #[error("object of class {class} is overloaded; retry after {retry_after:?}")]
    Overloaded {
        /// The class of the overloaded object.
        class: &'static str,
        /// A hint for when to retry.
        retry_after: Duration,
    },
    /// The object was reset (a commit failed, or a handler panicked) before this request's
    /// effects became durable; nothing it did is claimed to have happened.
    #[error("the object was reset before the request's writes became durable")]
    Reset,
    /// The handler panicked; its writes were discarded and the object was reset.
    #[error("the handler panicked: {message}")]
    Panicked {
        /// The panic payload, when it was a string.
        message: String,
    },
    /// A storage key is empty, too long, or uses the reserved prefix.
    #[error("invalid storage key: {reason}")]
    InvalidKey {
        /// Why the key was refused.
        reason: &'static str,
    },
    /// A value is larger than the configured maximum.
    #[error("value of {size} bytes exceeds the limit of {max} bytes")]
    ValueTooLarge {
        /// The encoded size of the value.
        size: usize,
        /// The configured maximum.
        max: usize,
    },
    /// A value could not be encoded or decoded.
    #[error("value could not be encoded or decoded")]
    Codec(#[source] serde_json::Error),
    /// The storage backend failed.
    #[error("storage backend failed")]
    Storage(#[source] BoxError),
    /// A call did not get its reply before its deadline (see
    /// [`crate::RuntimeConfig::ask_timeout`] and [`crate::Stub::with_timeout`]). The
    /// message may still be handled: a deadline stops the waiting, not the turn.
    #[error("timed out waiting for the object's reply")]
    Timeout,
    /// Something that was asked for does not exist.
    #[error("not found: {what}")]
    NotFound {
        /// What was not found.
        what: String,
    },
    /// The request was malformed; `detail` says how.
    #[error("bad request: {detail}")]
    BadRequest {
        /// A precise, human-readable description of the problem.
        detail: String,
    },
    /// The request conflicts with the object's current state (a stale token, a wrong holder).
    #[error("conflict: {detail}")]
    Conflict {
        /// A precise, human-readable description of the conflict.
        detail: String,
    },
    /// The runtime is shutting down and accepts no new work.
    #[error("the runtime is shutting down")]
    ShuttingDown,
    /// An object id string is not 64 hex characters.
    #[error("invalid object id: expected 64 hex characters")]
    InvalidId,
    /// A class name is registered twice with different object types.
    #[error("class {class} is already registered with another type")]
    ClassConflict {
        /// The class name.
        class: &'static str,
    },
    /// The class is registered already: a runtime holds one namespace per class, with one
    /// environment. Look it up with [`crate::Runtime::get_namespace`].
    #[error("class {class} is already registered in this runtime")]
    AlreadyRegistered {
        /// The class name.
        class: &'static str,
    },
    /// The runtime or a backend was configured in a way that cannot work.
    #[error("invalid configuration: {detail}")]
    InvalidConfig {
        /// What is wrong, and what to do instead.
        detail: String,
    },
    /// A handler's own failure that is none of the above; its cause is the `source`.
    #[error("{0}")]
    Other(#[source] BoxError),
    /// The object holds as many WebSockets as it may
    /// ([`crate::WebSocketConfig::max_per_object`]); this one was refused.
    #[error("the object holds {max} WebSockets already, its limit; try another object or later")]
    TooManyWebSockets {
        /// The limit.
        max: usize,
    },
    /// A SQL statement failed; see [`crate::SqlError`] for which and why.
    #[error(transparent)]
    Sql(#[from] crate::sql::SqlError),
    /// A cron expression or schedule is invalid.
    #[error("invalid schedule: {detail}")]
    InvalidSchedule {
        /// What is wrong with it.
        detail: String,
    },
}

impl Error {
    /// Wraps a backend error.
    pub fn storage(err: impl Into<BoxError>) -> Self {
        Error::Storage(err.into())
    }

    /// Wraps a handler's own failure (an I/O error, a client's error, ...), keeping it as
    /// the `source`.
    ///
    /// ```
    /// let err = stead_core::Error::other(std::io::Error::other("upstream refused"));
    /// assert_eq!(err.to_string(), "upstream refused");
    /// assert!(std::error::Error::source(&err).is_some());
    /// ```
    pub fn other(err: impl Into<BoxError>) -> Self {
        Error::Other(err.into())
    }

    /// A [`Error::InvalidConfig`] with the given detail.
    pub fn invalid_config(detail: impl Into<String>) -> Self {
        Error::InvalidConfig {
            detail: detail.into(),
        }
    }

    /// The [`Error::Overloaded`] of an object of `class` that already holds
    /// [`MAX_PARKED_PER_OBJECT`] callers waiting (a lock's queue, long-polls): a caller more is
    /// told to come back in a second rather than held.
    pub fn too_many_waiting(class: &'static str) -> Self {
        Error::Overloaded {
            class,
            retry_after: Duration::from_secs(1),
        }
    }

    /// A [`Error::BadRequest`] with the given detail.
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Error::BadRequest {
            detail: detail.into(),
        }
    }

    /// A [`Error::Conflict`] with the given detail.
    pub fn conflict(detail: impl Into<String>) -> Self {
        Error::Conflict {
            detail: detail.into(),
        }
    }

    /// A [`Error::NotFound`] for the given thing.
    pub fn not_found(what: impl Into<String>) -> Self {
        Error::NotFound { what: what.into() }
    }
}

/// The result type of the runtime.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The most callers one object holds waiting at once (a lock's queue, an election's
/// watchers, a reactor entity's long-polls); past it they get
/// [`Error::too_many_waiting`] (HTTP 503 with `Retry-After`).
pub const MAX_PARKED_PER_OBJECT: usize = 1024;

/// An [`Error`] as it travels between the nodes of a cluster (a forwarded call's failure):
/// its kind, its message (with the causes of a storage or handler error), and the fields a
/// caller acts on. It comes back as the same variant where the variant can be rebuilt, and
/// otherwise as the closest one with the same message.
#[derive(serde::Serialize, serde::Deserialize)]
struct WireError {
    kind: String,
    message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    class: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    retry_after_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    size: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sql: Option<crate::sql::SqlError>,
}

/// The message of an error and of its causes, as one line.
fn with_causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

/// A class name from another node, as the `&'static str` the variants hold: each distinct
/// name is kept once (a cluster's nodes know the same few classes).
fn interned(name: String) -> &'static str {
    static NAMES: std::sync::Mutex<Vec<&'static str>> = std::sync::Mutex::new(Vec::new());
    let mut names = NAMES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(n) = names.iter().find(|n| **n == name) {
        return n;
    }
    if names.len() >= 1024 {
        return "(unknown class)";
    }
    let leaked: &'static str = Box::leak(name.into_boxed_str());
    names.push(leaked);
    leaked
}

impl From<&Error> for WireError {
    fn from(e: &Error) -> Self {
        let mut w = WireError {
            kind: String::new(),
            message: with_causes(e),
            class: None,
            retry_after_ms: None,
            size: None,
            max: None,
            sql: None,
        };
        w.kind = match e {
            Error::Overloaded { class, retry_after } => {
                w.class = Some((*class).to_owned());
                w.retry_after_ms = Some(u64::try_from(retry_after.as_millis()).unwrap_or(u64::MAX));
                "overloaded"
            }
            Error::Reset => "reset",
            Error::Panicked { message } => {
                w.message = message.clone();
                "panicked"
            }
            Error::ValueTooLarge { size, max } => {
                (w.size, w.max) = (Some(*size), Some(*max));
                "value_too_large"
            }
            Error::Codec(_) => "codec",
            Error::Storage(_) => "storage",
            Error::Timeout => "timeout",
            Error::NotFound { what } => {
                w.message = what.clone();
                "not_found"
            }
            Error::BadRequest { detail } => {
                w.message = detail.clone();
                "bad_request"
            }
            Error::Conflict { detail } => {
                w.message = detail.clone();
                "conflict"
            }
            Error::ShuttingDown => "shutting_down",
            Error::InvalidId => "invalid_id",
            Error::InvalidConfig { detail } => {
                w.message = detail.clone();
                "invalid_config"
            }
            Error::TooManyWebSockets { max } => {
                w.max = Some(*max);
                "too_many_websockets"
            }
            Error::Sql(s) => {
                w.sql = Some(s.clone());
                "sql"
            }
            Error::InvalidSchedule { detail } => {
                w.message = detail.clone();
                "invalid_schedule"
            }
            // The key's reason and the classes are this node's own: the message carries them.
            Error::InvalidKey { .. } => "invalid_key",
            Error::ClassConflict { .. } | Error::AlreadyRegistered { .. } => "invalid_config",
            Error::Other(_) => "other",
        }
        .to_owned();
        w
    }
}

impl From<WireError> for Error {
    fn from(w: WireError) -> Self {
        match w.kind.as_str() {
            "overloaded" => Error::Overloaded {
                class: interned(w.class.unwrap_or_default()),
                retry_after: Duration::from_millis(w.retry_after_ms.unwrap_or(0)),
            },
            "reset" => Error::Reset,
            "panicked" => Error::Panicked { message: w.message },
            "value_too_large" => Error::ValueTooLarge {
                size: w.size.unwrap_or(0),
                max: w.max.unwrap_or(0),
            },
            "codec" => Error::Codec(serde::de::Error::custom(w.message)),
            "timeout" => Error::Timeout,
            "not_found" => Error::NotFound { what: w.message },
            "bad_request" | "invalid_key" => Error::BadRequest { detail: w.message },
            "conflict" => Error::Conflict { detail: w.message },
            "shutting_down" => Error::ShuttingDown,
            "invalid_id" => Error::InvalidId,
            "invalid_config" => Error::InvalidConfig { detail: w.message },
            "too_many_websockets" => Error::TooManyWebSockets {
                max: w.max.unwrap_or(0),
            },
            "invalid_schedule" => Error::InvalidSchedule { detail: w.message },
            "sql" => match w.sql {
                Some(s) => Error::Sql(s),
                None => Error::Other(w.message.into()),
            },
            "storage" => Error::Storage(w.message.into()),
            _ => Error::Other(w.message.into()),
        }
    }
}

/// Errors are serde so that a reply such as `Result<T, Error>` can come back from another
/// node of a cluster (see [`WireError`]'s rules: causes travel as text).
impl serde::Serialize for Error {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        WireError::from(self).serialize(s)
    }
}

impl<'de> serde::Deserialize<'de> for Error {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        WireError::deserialize(d).map(Error::from)
    }
}

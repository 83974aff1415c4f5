//! Checks of what callers pass in (names, bounded durations), shared by every pattern so that
//! each says the same thing about the same mistake, in process and over HTTP alike.

use crate::error::Error;

/// The longest name accepted (of an object, a key, a holder...), in characters.
pub const MAX_NAME_CHARS: usize = 256;

/// A value a caller passed in is outside what it may be; the message says which and why.
///
/// Every pattern's error enum carries it as its "invalid input" variant; over HTTP it is a
/// 400 problem.
///
/// ```
/// let err = stead_core::validate_name("lock name", "").unwrap_err();
/// assert_eq!(err.to_string(), "lock name may not be empty");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[error("{detail}")]
pub struct InvalidInput {
    detail: String,
}

impl InvalidInput {
    /// An invalid input described by `detail` (name the field and the rule it broke).
    pub fn new(detail: impl Into<String>) -> Self {
        InvalidInput {
            detail: detail.into(),
        }
    }

    /// What is wrong.
    pub fn detail(&self) -> &str {
        &self.detail
    }
}

impl From<InvalidInput> for Error {
    fn from(e: InvalidInput) -> Self {
        Error::BadRequest { detail: e.detail }
    }
}

/// Checks a name: 1 to [`MAX_NAME_CHARS`] characters, no control characters. `what` names
/// it in the message (`"lock name"`, `"holder"`).
///
/// ```
/// assert!(stead_core::validate_name("holder", "worker-1").is_ok());
/// assert!(stead_core::validate_name("holder", "a\nb").is_err());
/// ```
pub fn validate_name(what: &str, name: &str) -> Result<(), InvalidInput> {
    if name.is_empty() {
        return Err(InvalidInput::new(format!("{what} may not be empty")));
    }
    let chars = name.chars().count();
    if chars > MAX_NAME_CHARS {
        return Err(InvalidInput::new(format!(
            "{what} is {chars} characters long; the limit is {MAX_NAME_CHARS}"
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(InvalidInput::new(format!(
            "{what} may not contain control characters"
        )));
    }
    Ok(())
}

/// The longest name an object may be addressed by ([`crate::Namespace::get_by_name`]), in
/// bytes: room for a pattern's composite names (a key of 256 characters and a policy name,
/// say).
pub const MAX_OBJECT_NAME_BYTES: usize = 4096;

/// Checks the name of an object: 1 to [`MAX_OBJECT_NAME_BYTES`] bytes, no NUL character. The
/// runtime applies it to every [`crate::Namespace::get_by_name`]; names that users type
/// (a lock, a counter, a rate-limit key) are held to [`validate_name`] by each pattern,
/// in process and over HTTP alike.
///
/// ```
/// assert!(stead_core::validate_object_name("orders\u{1f}per-minute").is_ok());
/// assert!(stead_core::validate_object_name("a\0b").is_err());
/// ```
pub fn validate_object_name(name: &str) -> Result<(), InvalidInput> {
    if name.is_empty() {
        return Err(InvalidInput::new("an object name may not be empty"));
    }
    if name.len() > MAX_OBJECT_NAME_BYTES {
        return Err(InvalidInput::new(format!(
            "an object name is {} bytes long; the limit is {MAX_OBJECT_NAME_BYTES}",
            name.len()
        )));
    }
    if name.contains('\0') {
        return Err(InvalidInput::new(
            "an object name may not contain a NUL character",
        ));
    }
    Ok(())
}

/// Checks a duration in milliseconds: at least 1, at most `max`.
///
/// ```
/// assert!(stead_core::validate_ms("ttl_ms", 0, 1000).is_err());
/// assert!(stead_core::validate_ms("ttl_ms", 1000, 1000).is_ok());
/// ```
pub fn validate_ms(what: &str, value: u64, max: u64) -> Result<(), InvalidInput> {
    between_one_and(what, value, max)
}

/// The most entries one page of a listing holds, in every pattern (counters, keys, events,
/// dead letters, ...).
pub const MAX_PAGE: usize = 1000;

/// Checks the `limit` of a listing: at least 1, at most [`MAX_PAGE`].
///
/// ```
/// assert!(stead_core::validate_page_limit(0).is_err());
/// assert!(stead_core::validate_page_limit(1000).is_ok());
/// assert_eq!(
///     stead_core::validate_page_limit(1001).unwrap_err().detail(),
///     "limit must be between 1 and 1000, not 1001"
/// );
/// ```
pub fn validate_page_limit(limit: u64) -> Result<(), InvalidInput> {
    between_one_and("limit", limit, MAX_PAGE as u64)
}

/// The rule `validate_ms` and `validate_page_limit` share: between 1 and `max`.
fn between_one_and(what: &str, value: u64, max: u64) -> Result<(), InvalidInput> {
    if value == 0 || value > max {
        return Err(InvalidInput::new(format!(
            "{what} must be between 1 and {max}, not {value}"
        )));
    }
    Ok(())
}

/// A duration in whole milliseconds, saturating at `u64::MAX` (for settings and requests that
/// carry durations as milliseconds).
///
/// ```
/// use std::time::Duration;
/// assert_eq!(stead_core::duration_ms(Duration::from_micros(2500)), 2);
/// ```
pub fn duration_ms(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

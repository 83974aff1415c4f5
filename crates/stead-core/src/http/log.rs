//! The query of every log route: `?limit=&order=&cursor=`.

use serde::Deserialize;
use utoipa::IntoParams;

use super::schema;
use crate::input::MAX_PAGE;
use crate::log::{LogOrder, LogQuery};

/// Which page of a log a route answers with: at most `limit` entries (default 50), `newest`
/// (the default) or `oldest` first, continuing from the previous page's `next`.
///
/// ```
/// use stead_core::http::LogParams;
/// use stead_core::{LogQuery, LogOrder};
///
/// let q: LogParams = serde_json::from_str(r#"{"order":"oldest","cursor":7}"#).unwrap();
/// assert_eq!(q.query(), LogQuery::oldest(50).from(Some(7)));
/// ```
#[derive(Debug, Clone, Copy, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LogParams {
    /// At most this many entries (1 to 1000; default 50).
    #[param(schema_with = schema::integer::<1, { MAX_PAGE as u64 }>)]
    pub limit: Option<u32>,
    /// `newest` (the default) or `oldest` first.
    #[param(inline)]
    pub order: Option<LogOrder>,
    /// The `next` of the previous page.
    #[param(schema_with = schema::integer::<0, { u64::MAX }>)]
    pub cursor: Option<u64>,
}

impl LogParams {
    /// The default page size of a log route.
    pub const DEFAULT_LIMIT: u32 = 50;

    /// The query these parameters ask for (the limit is checked where the log is read).
    pub fn query(self) -> LogQuery {
        LogQuery {
            limit: self.limit.unwrap_or(Self::DEFAULT_LIMIT),
            order: self.order.unwrap_or_default(),
            cursor: self.cursor,
        }
    }
}

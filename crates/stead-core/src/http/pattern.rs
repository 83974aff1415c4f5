//! The trait by which the umbrella crate and the server mount a pattern.

use axum::Router;
use serde::de::DeserializeOwned;

use super::Routes;
use crate::{Result, Runtime};

/// One pattern of the catalog, as the umbrella crate (`stead::router`, `stead::openapi`,
/// `stead::configure`) and the server see it. Adding a pattern to them is one line.
///
/// Its routes carry no prefix and work in any app state; the umbrella nests them under
/// [`PREFIX`](Self::PREFIX). Its settings are its own: the server reads them from the
/// pattern's table of its configuration file (`[ratelimit]`, ...) into
/// [`Settings`](Self::Settings) and hands them to [`configure`](Self::configure) before it
/// builds any router.
pub trait Pattern {
    /// Where the umbrella mounts the routes, such as `"/locks"`.
    const PREFIX: &'static str;
    /// The name of the pattern's table in the server's configuration, such as `"ratelimit"`.
    const SETTINGS_KEY: &'static str;
    /// The pattern's settings (with serde defaults: an absent table is the defaults).
    type Settings: DeserializeOwned + Default + Send + 'static;

    /// Sets the pattern up on `rt` with `settings` (registering its classes with them). A
    /// runtime is configured at most once per pattern, before its first client is made;
    /// settings that cannot work on this runtime are an [`crate::Error::InvalidConfig`].
    fn configure(rt: &Runtime, settings: Self::Settings) -> Result<()>;

    /// The pattern's routes, without a prefix, in any app state `S`.
    fn router<S: Clone + Send + Sync + 'static>(rt: &Runtime) -> Result<Router<S>>;

    /// [`router`](Self::router)'s routes before their mount says who may call them: what
    /// each pattern crate's public `router` function answers.
    fn routes<S: Clone + Send + Sync + 'static>(rt: &Runtime) -> Result<Routes<S>> {
        Ok(Routes::new(Self::router(rt)?))
    }

    /// The OpenAPI description of [`router`](Self::router)'s routes (paths without the
    /// prefix).
    fn openapi() -> utoipa::openapi::OpenApi;

    /// Routes the pattern serves at the root of the app, outside its prefix, for a protocol
    /// whose paths are fixed (such as OpenFeature's `/ofrep/v1/...`). None by default.
    fn root_router<S: Clone + Send + Sync + 'static>(rt: &Runtime) -> Result<Router<S>> {
        let _ = rt;
        Ok(Router::new())
    }

    /// The OpenAPI description of [`root_router`](Self::root_router)'s routes, if it has any.
    fn root_openapi() -> Option<utoipa::openapi::OpenApi> {
        None
    }
}

//! The validated name of an object, taken from the path.

use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::request::Parts;
use utoipa::openapi::Required;
use utoipa::openapi::path::{Parameter, ParameterBuilder, ParameterIn};

use super::{Problem, schema};

/// The `{name}` path parameter of a pattern route (a lock's, a counter's, a rate-limited
/// key's...), checked by [`crate::validate_name`]: 1 to [`crate::MAX_NAME_CHARS`] characters,
/// no control characters. A bad one is a 400 problem. Its OpenAPI description (with
/// `params(Name)`) states the same bounds, from the same constants.
///
/// ```
/// use axum::{Router, routing::get};
/// use stead_core::http::Name;
///
/// async fn show(Name(name): Name) -> String {
///     format!("hello, {name}")
/// }
/// let app: Router = Router::new().route("/{name}", get(show));
/// # let _ = app;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Name(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Name {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        let axum::extract::Path(name) =
            axum::extract::Path::<String>::from_request_parts(parts, state)
                .await
                .map_err(|e| Problem::new(StatusCode::BAD_REQUEST, "bad-request", e.body_text()))?;
        crate::validate_name("the name in the path", &name).map_err(|e| Problem::from(&e))?;
        Ok(Name(name))
    }
}

impl utoipa::IntoParams for Name {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        vec![
            ParameterBuilder::new()
                .name("name")
                .parameter_in(ParameterIn::Path)
                .required(Required::True)
                .description(Some(format!(
                    "The object's name: 1 to {} characters, no control characters.",
                    crate::MAX_NAME_CHARS
                )))
                .schema(Some(schema::name()))
                .build(),
        ]
    }
}

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

/// The two names of a route that has two (`/{set}/flags/{flag}`, `/{type}/{entity}`), each
/// checked as [`Name`] checks one; a bad one is a 400 problem that names the parameter. The
/// route declares the two parameters in its OpenAPI attribute (a parameter that is a bare
/// string there is described as a name).
///
/// ```
/// use axum::{Router, routing::get};
/// use stead_core::http::Names;
///
/// async fn show(Names(set, flag): Names) -> String {
///     format!("{flag} of {set}")
/// }
/// let app: Router = Router::new().route("/{set}/flags/{flag}", get(show));
/// # let _ = app;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names(pub String, pub String);

impl<S: Send + Sync> FromRequestParts<S> for Names {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        let axum::extract::Path(params) =
            axum::extract::Path::<Vec<(String, String)>>::from_request_parts(parts, state)
                .await
                .map_err(|e| Problem::new(StatusCode::BAD_REQUEST, "bad-request", e.body_text()))?;
        let [(first_param, first), (second_param, second)]: [(String, String); 2] =
            params.try_into().map_err(|p: Vec<_>| {
                Problem::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "error",
                    format!("the route has {} parameters, not 2", p.len()),
                )
            })?;
        for (param, value) in [(&first_param, &first), (&second_param, &second)] {
            crate::validate_name(&format!("the {param} in the path"), value)
                .map_err(|e| Problem::from(&e))?;
        }
        Ok(Names(first, second))
    }
}

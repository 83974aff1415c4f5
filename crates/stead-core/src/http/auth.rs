//! Who may call a router: the [`RequireBearer`] layer, and [`Routes`], the routes of a
//! pattern before their mount has said who may call them.

use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::Problem;
use crate::error::{Error, Result};

/// A tower layer that lets a request through only with `Authorization: Bearer <token>`
/// naming one of its tokens, and answers anything else with a 401 problem+json and
/// `WWW-Authenticate: Bearer`.
///
/// The scheme is case-insensitive (RFC 9110); the token is compared in constant time (the
/// SHA-256 of each side, every configured token compared), so timing reveals neither how
/// much of a token matched nor its length. Tokens are checked by [`check_token`]: at least
/// 16 characters, without whitespace at their ends (a token of spaces would be an open door).
///
/// ```
/// use axum::{Router, routing::get};
/// use stead_core::http::RequireBearer;
/// let admin: Router = Router::new()
///     .route("/admin", get(|| async { "secret" }))
///     .route_layer(RequireBearer::new(["a-long-random-secret"])?);
/// assert!(RequireBearer::new([" "]).is_err());
/// # Ok::<(), stead_core::Error>(())
/// ```
#[derive(Clone)]
pub struct RequireBearer {
    digests: Arc<[[u8; 32]]>,
}

impl std::fmt::Debug for RequireBearer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequireBearer")
            .field("tokens", &self.digests.len())
            .finish()
    }
}

impl RequireBearer {
    /// Requires one of `tokens`. An empty list, or a token [`check_token`] refuses, is an
    /// [`Error::InvalidConfig`].
    pub fn new<I, T>(tokens: I) -> Result<Self>
    where
        I: IntoIterator<Item = T>,
        T: AsRef<str>,
    {
        let mut digests = Vec::new();
        for t in tokens {
            let t = t.as_ref();
            check_token(t)?;
            digests.push(Sha256::digest(t.as_bytes()).into());
        }
        if digests.is_empty() {
            return Err(Error::invalid_config(
                "at least one bearer token is required (or mount the routes unauthenticated, \
                 saying so)",
            ));
        }
        Ok(RequireBearer {
            digests: digests.into(),
        })
    }

    /// Whether `Authorization` carries one of the tokens; if not, why not.
    fn admits(&self, authorization: Option<&HeaderValue>) -> std::result::Result<(), &'static str> {
        let given = authorization.and_then(|v| v.to_str().ok()).and_then(|v| {
            let (scheme, token) = v.trim_start().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
        if let Some(t) = given {
            let d: [u8; 32] = Sha256::digest(t.as_bytes()).into();
            // Every token compared, each without an early exit.
            let hit = self
                .digests
                .iter()
                .fold(0u8, |found, k| found | u8::from(constant_time_eq(k, &d)));
            if hit == 1 {
                return Ok(());
            }
        }
        Err(if given.is_some() {
            "the bearer token is not valid"
        } else {
            "these routes require an Authorization: Bearer <token> header"
        })
    }
}

/// The 401 answer: a problem, and the scheme to use.
fn unauthorized(detail: &str) -> Response {
    let mut resp = Problem::new(StatusCode::UNAUTHORIZED, "unauthorized", detail).into_response();
    resp.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    resp
}

/// The shortest bearer token accepted, in characters.
pub const MIN_TOKEN_CHARS: usize = 16;

/// Checks a bearer token: at least [`MIN_TOKEN_CHARS`] characters, no whitespace at its
/// ends (clients trim what they send), no control characters.
///
/// ```
/// assert!(stead_core::http::check_token("a-long-random-secret").is_ok());
/// assert!(stead_core::http::check_token("short").is_err());
/// ```
pub fn check_token(token: &str) -> Result<()> {
    if token.trim().is_empty() {
        return Err(Error::invalid_config(
            "a bearer token may not be empty or only whitespace",
        ));
    }
    if token.trim() != token {
        return Err(Error::invalid_config(
            "a bearer token may not start or end with whitespace (clients trim what they send)",
        ));
    }
    if token.chars().any(char::is_control) {
        return Err(Error::invalid_config(
            "a bearer token may not hold control characters",
        ));
    }
    let n = token.chars().count();
    if n < MIN_TOKEN_CHARS {
        return Err(Error::invalid_config(format!(
            "a bearer token of {n} characters is too short to be safe: use at least {MIN_TOKEN_CHARS}"
        )));
    }
    Ok(())
}

/// Compares two digests without an early exit.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A check of a request's head, made before the request reaches the service it guards:
/// [`RequireBearer`] and [`RequireJsonWrites`](super::RequireJsonWrites). Either is a tower
/// layer whose service is [`Checked`]; a refused request is answered at once, without an
/// allocation or a task on the way.
pub trait RequestCheck: Clone + Send + Sync + 'static {
    /// `Some(answer)` refuses the request with that answer; `None` lets it through.
    fn refuse(&self, method: &Method, headers: &HeaderMap) -> Option<Response>;
}

impl RequestCheck for RequireBearer {
    fn refuse(&self, _: &Method, headers: &HeaderMap) -> Option<Response> {
        self.admits(headers.get(header::AUTHORIZATION))
            .err()
            .map(unauthorized)
    }
}

impl<S> tower::Layer<S> for RequireBearer {
    type Service = Checked<S, RequireBearer>;

    fn layer(&self, inner: S) -> Self::Service {
        Checked::new(inner, self.clone())
    }
}

/// The service of a [`RequestCheck`] layer.
#[derive(Debug, Clone)]
pub struct Checked<S, C> {
    inner: S,
    check: C,
}

impl<S, C> Checked<S, C> {
    pub(super) fn new(inner: S, check: C) -> Self {
        Checked { inner, check }
    }
}

impl<S, B, C> tower::Service<axum::http::Request<B>> for Checked<S, C>
where
    S: tower::Service<axum::http::Request<B>, Response = Response>,
    C: RequestCheck,
{
    type Response = Response;
    type Error = S::Error;
    type Future = futures_util::future::Either<
        std::future::Ready<std::result::Result<Response, S::Error>>,
        S::Future,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::result::Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: axum::http::Request<B>) -> Self::Future {
        match self.check.refuse(req.method(), req.headers()) {
            None => futures_util::future::Either::Right(self.inner.call(req)),
            Some(answer) => futures_util::future::Either::Left(std::future::ready(Ok(answer))),
        }
    }
}

/// Routes that have not said yet who may call them: a pattern's router (and the umbrella
/// crate's `stead::router`) answers this, and it becomes an axum `Router` only by saying
/// so. [`bearer`](Self::bearer) is the short, safe mount; [`unauthenticated`](Self::unauthenticated)
/// is for routes only trusted callers can reach (a private network, or behind an
/// authentication layer of the app's own, added after it).
///
/// Most pattern routes are for operators and trusted services: they write, list or reveal.
/// The guide's security section says, route by route, which are meant for untrusted callers.
///
/// ```
/// use axum::{Router, routing::get};
/// use stead_core::http::Routes;
/// let routes: Routes = Routes::new(Router::new().route("/x", get(|| async { "x" })));
/// let app: Router = Router::new().nest("/admin", routes.bearer(["a-long-random-secret"])?);
/// # Ok::<(), stead_core::Error>(())
/// ```
#[must_use = "say who may call these routes: `.bearer(tokens)?` or `.unauthenticated()`"]
#[derive(Debug)]
pub struct Routes<S = ()> {
    router: Router<S>,
}

impl<S: Clone + Send + Sync + 'static> Routes<S> {
    /// Wraps a router whose callers are not yet decided. Its writes must say they are JSON
    /// ([`RequireJsonWrites`](super::RequireJsonWrites)), however they are mounted; a method
    /// a route does not take is a 405 first. Meant for routers without routes that take any
    /// method (`axum::routing::any`), as stead's are: such a route would see a request with
    /// a method of no meaning when a write without a JSON content type reaches it.
    pub fn new(router: Router<S>) -> Self {
        Routes {
            router: router.route_layer(super::JsonWritesAfterMethods),
        }
    }

    /// The routes, answering only requests with `Authorization: Bearer` and one of
    /// `tokens` (see [`RequireBearer`]); unknown paths still answer 404.
    pub fn bearer<I, T>(self, tokens: I) -> Result<Router<S>>
    where
        I: IntoIterator<Item = T>,
        T: AsRef<str>,
    {
        Ok(self.require(RequireBearer::new(tokens)?))
    }

    /// The routes behind a [`RequireBearer`] made once (to share one between mounts).
    pub fn require(self, check: RequireBearer) -> Router<S> {
        self.router.route_layer(check)
    }

    /// The routes with no check at all: anyone who reaches them may call every one of
    /// them, including those that write, list and reveal. Choose this only where no
    /// untrusted caller can reach them, or add your own authentication layer after it.
    pub fn unauthenticated(self) -> Router<S> {
        self.router
    }
}

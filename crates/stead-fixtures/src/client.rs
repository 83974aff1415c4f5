//! Calling a router without a socket.

use std::net::SocketAddr;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tower::ServiceExt;

/// The largest response body a test reads (64 MiB).
const MAX_BODY: usize = 64 << 20;

/// Calls an axum router in the test's own task, as an HTTP client would, without binding a
/// port. Each request carries [`ConnectInfo`] for its peer address (`127.0.0.1:40000` unless
/// [`peer`](Self::peer) says otherwise), so routes keyed by the client's address work.
///
/// ```
/// use axum::{Router, routing::get};
/// use stead_fixtures::TestClient;
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let app = TestClient::new(Router::new().route("/hi", get(|| async { "hello" })));
/// let r = app.get("/hi").send().await;
/// assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "hello"));
/// # });
/// ```
#[derive(Clone, Debug)]
pub struct TestClient {
    router: Router,
    peer: Option<SocketAddr>,
}

impl TestClient {
    /// A client of `router`.
    pub fn new(router: Router) -> TestClient {
        TestClient {
            router,
            peer: Some(SocketAddr::from(([127, 0, 0, 1], 40_000))),
        }
    }

    /// The same client, calling from `peer`.
    pub fn peer(&self, peer: impl Into<SocketAddr>) -> TestClient {
        TestClient {
            router: self.router.clone(),
            peer: Some(peer.into()),
        }
    }

    /// The same client, without connect info: as a router served by plain `axum::serve`
    /// (not `into_make_service_with_connect_info`) sees its requests.
    pub fn without_connect_info(&self) -> TestClient {
        TestClient {
            router: self.router.clone(),
            peer: None,
        }
    }

    /// A request with any method.
    pub fn request(&self, method: Method, uri: &str) -> TestRequest {
        let mut req = Request::new(Body::empty());
        *req.method_mut() = method;
        *req.uri_mut() = uri
            .parse()
            .unwrap_or_else(|e| panic!("{uri:?} is not a URI: {e}"));
        if let Some(peer) = self.peer {
            req.extensions_mut().insert(ConnectInfo(peer));
        }
        TestRequest {
            router: self.router.clone(),
            req,
            bare: false,
        }
    }

    /// A `GET` request.
    pub fn get(&self, uri: &str) -> TestRequest {
        self.request(Method::GET, uri)
    }

    /// A `POST` request.
    pub fn post(&self, uri: &str) -> TestRequest {
        self.request(Method::POST, uri)
    }

    /// A `PUT` request.
    pub fn put(&self, uri: &str) -> TestRequest {
        self.request(Method::PUT, uri)
    }

    /// A `PATCH` request.
    pub fn patch(&self, uri: &str) -> TestRequest {
        self.request(Method::PATCH, uri)
    }

    /// A `DELETE` request.
    pub fn delete(&self, uri: &str) -> TestRequest {
        self.request(Method::DELETE, uri)
    }
}

/// A request being built; [`send`](Self::send) calls the router.
#[derive(Debug)]
pub struct TestRequest {
    router: Router,
    req: Request<Body>,
    /// Whether to leave a write's missing content type missing.
    bare: bool,
}

impl TestRequest {
    /// Adds a header.
    ///
    /// # Panics
    /// When the name or the value is not valid in HTTP.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        let name: HeaderName = name.parse().expect("a valid header name");
        let value = HeaderValue::from_str(value).expect("a valid header value");
        self.req.headers_mut().append(name, value);
        self
    }

    /// A JSON body, with its content type.
    pub fn json(self, body: &impl Serialize) -> Self {
        let bytes = serde_json::to_vec(body).expect("the body serializes");
        self.header("content-type", "application/json").bytes(bytes)
    }

    /// A raw body (no content type is added).
    pub fn bytes(mut self, body: impl Into<Bytes>) -> Self {
        *self.req.body_mut() = Body::from(body.into());
        self
    }

    /// Sends a bodiless write without a content type, as a web page's form could: by
    /// default [`send`](Self::send) says `application/json` on a `POST`, `PUT` or `PATCH`
    /// that has none, as a JSON client does.
    pub fn without_content_type(mut self) -> Self {
        self.bare = true;
        self
    }

    /// Calls the router and reads the whole response.
    pub async fn send(mut self) -> TestResponse {
        let write = matches!(
            *self.req.method(),
            Method::POST | Method::PUT | Method::PATCH
        );
        if write && !self.bare && !self.req.headers().contains_key("content-type") {
            self.req.headers_mut().insert(
                axum::http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
        let resp = match self.router.oneshot(self.req).await {
            Ok(resp) => resp,
            Err(never) => match never {},
        };
        let (parts, body) = resp.into_parts();
        let body = axum::body::to_bytes(body, MAX_BODY)
            .await
            .expect("the response body can be read");
        TestResponse {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }
}

/// A response read in full.
#[derive(Clone, Debug)]
pub struct TestResponse {
    /// The status.
    pub status: StatusCode,
    /// The headers.
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
}

impl TestResponse {
    /// The body as JSON of type `T`.
    ///
    /// # Panics
    /// When the body is not that JSON; the message shows the status and the body.
    pub fn json<T: DeserializeOwned>(&self) -> T {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "a {} response whose body is not the JSON expected ({e}): {}",
                self.status,
                self.text()
            )
        })
    }

    /// The body as any JSON value.
    pub fn value(&self) -> serde_json::Value {
        self.json()
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header's value as text, if present and visible ASCII.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The content type, or `""`.
    pub fn content_type(&self) -> &str {
        self.header("content-type").unwrap_or_default()
    }
}

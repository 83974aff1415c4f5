//! The OpenAPI 3.1 document of every route the server serves, generated from the handlers
//! and types of the server and of every enabled pattern.

use axum::Json;
use serde_json::{Value, json};
use utoipa::OpenApi;

/// The server's own routes.
#[derive(OpenApi)]
#[openapi(paths(crate::app::healthz, crate::app::readyz, crate::app::metrics, document))]
struct ServerApi;

/// This document.
#[utoipa::path(get, path = "/openapi.json", operation_id = "openapi", tag = "server",
    responses((status = 200, description = "the OpenAPI 3.1 document", body = Object)))]
pub(crate) async fn document() -> Json<Value> {
    Json(spec())
}

/// Routes that answer without a token even when tokens are configured.
const OPEN: [&str; 3] = ["/healthz", "/readyz", "/openapi.json"];

/// The document: the server's own routes plus those of every enabled pattern. Every route
/// but the open ones takes a bearer token when the server is configured with tokens, and
/// answers 401 without one.
pub fn spec() -> Value {
    let mut doc = stead::openapi();
    doc.merge(ServerApi::openapi());
    let mut doc = serde_json::to_value(&doc).unwrap_or_else(|_| json!({}));
    doc["components"]["securitySchemes"] =
        json!({ "bearer": { "type": "http", "scheme": "bearer" } });
    if let Some(paths) = doc["paths"].as_object_mut() {
        for (path, item) in paths.iter_mut() {
            if OPEN.contains(&path.as_str()) {
                continue;
            }
            for op in item
                .as_object_mut()
                .into_iter()
                .flat_map(|m| m.values_mut())
            {
                op["security"] = json!([{ "bearer": [] }, {}]);
                op["responses"]["401"] = json!({
                    "description": "missing or invalid bearer token (when the server has tokens)",
                    "content": { "application/problem+json": { "schema": { "$ref": "#/components/schemas/Problem" } } }
                });
            }
        }
    }
    doc
}

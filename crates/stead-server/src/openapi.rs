//! The OpenAPI 3.1 document of every route the server serves.

use axum::Json;
use serde_json::{Value, json};

/// `GET /openapi.json`.
pub(crate) async fn document() -> Json<Value> {
    Json(spec())
}

fn problem_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/problem+json": { "schema": { "$ref": "#/components/schemas/Problem" } } }
    })
}

/// The document: the server's own routes plus those of every enabled pattern.
pub fn spec() -> Value {
    let mut doc = server_spec();
    if let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) {
        paths.extend(stead::openapi_paths());
    }
    doc
}

fn server_spec() -> Value {
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "stead",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Durable objects and coordination patterns over HTTP. Every error is an RFC 9457 problem document."
        },
        "paths": {
            "/healthz": { "get": {
                "operationId": "healthz",
                "summary": "Liveness: the process is up",
                "responses": { "200": { "description": "alive", "content": { "text/plain": { "schema": { "type": "string" } } } } }
            }},
            "/readyz": { "get": {
                "operationId": "readyz",
                "summary": "Readiness: the server takes requests (503 while shutting down)",
                "responses": {
                    "200": { "description": "ready", "content": { "text/plain": { "schema": { "type": "string" } } } },
                    "503": { "description": "shutting down", "content": { "text/plain": { "schema": { "type": "string" } } } }
                }
            }},
            "/metrics": { "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics in text format",
                "security": [{ "bearer": [] }, {}],
                "responses": {
                    "200": { "description": "metrics", "content": { "text/plain": { "schema": { "type": "string" } } } },
                    "401": problem_response("missing or invalid bearer token")
                }
            }},
            "/openapi.json": { "get": {
                "operationId": "openapi",
                "summary": "This document",
                "responses": { "200": { "description": "the OpenAPI document", "content": { "application/json": { "schema": { "type": "object" } } } } }
            }}
        },
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
            "schemas": {
                "Problem": {
                    "type": "object",
                    "required": ["type", "title", "status", "detail"],
                    "properties": {
                        "type": { "type": "string" },
                        "title": { "type": "string" },
                        "status": { "type": "integer" },
                        "detail": { "type": "string" }
                    },
                    "additionalProperties": true
                }
            }
        }
    })
}

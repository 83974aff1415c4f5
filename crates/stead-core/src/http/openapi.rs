//! The OpenAPI pieces every pattern's routes declare alike: schemas whose bounds come from
//! the Rust constants, the problem responses, and the responses every route may give.

use utoipa::openapi::{ContentBuilder, OpenApi, Ref, Response, ResponseBuilder};

use super::PROBLEM_JSON;

/// Schemas built from the constants that the code checks, so the document and the code
/// cannot drift apart. Use them with `#[schema(schema_with = ...)]` or
/// `#[param(schema_with = ...)]`.
///
/// ```
/// use stead_core::http::schema;
/// #[derive(serde::Deserialize, utoipa::ToSchema)]
/// struct Body {
///     #[schema(schema_with = schema::name)]
///     holder: String,
///     #[schema(schema_with = schema::integer::<1, 86_400_000>)]
///     ttl_ms: u64,
/// }
/// ```
pub mod schema {
    use utoipa::openapi::schema::{KnownFormat, Object, ObjectBuilder, SchemaFormat, Type};

    /// The pattern of a name: no control characters.
    pub const NAME_PATTERN: &str = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$";

    /// A name: 1 to [`crate::MAX_NAME_CHARS`] characters, no control characters.
    pub fn name() -> Object {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1))
            .max_length(Some(crate::MAX_NAME_CHARS))
            .pattern(Some(NAME_PATTERN))
            .build()
    }

    /// A name, or `null` (an `Option<String>` field: serde reads `null` as absent).
    pub fn optional_name() -> Object {
        nullable(name())
    }

    /// An unsigned integer from `MIN` to `MAX`, or `null` (an `Option` field).
    pub fn optional_integer<const MIN: u64, const MAX: u64>() -> Object {
        nullable(bounded(MIN, MAX))
    }

    /// The same schema, with `null` allowed too.
    pub fn nullable(mut o: Object) -> Object {
        if let utoipa::openapi::schema::SchemaType::Type(t) = o.schema_type {
            o.schema_type = utoipa::openapi::schema::SchemaType::from_iter([t, Type::Null]);
        }
        o
    }

    /// An unsigned integer from `MIN` to `MAX` (a field stored as `u64` or smaller).
    pub fn integer<const MIN: u64, const MAX: u64>() -> Object {
        bounded(MIN, MAX)
    }

    /// A signed integer from `MIN` to `MAX` (a field stored as `i64` or smaller).
    pub fn signed<const MIN: i64, const MAX: i64>() -> Object {
        bounded(MIN, MAX)
    }

    fn bounded<N: Into<utoipa::Number>>(min: N, max: N) -> Object {
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
            .minimum(Some(min))
            .maximum(Some(max))
            .build()
    }
}

/// One problem response: `description`, a problem+json body.
pub(super) fn problem_response(description: &str) -> Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            PROBLEM_JSON,
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("Problem")))
                .build(),
        )
        .build()
}

/// The problem responses a route declares, one type per status, for
/// `responses((status = 200, ...), problems::BadRequest, problems::Conflict)` in
/// `#[utoipa::path]`. The problem's `type` says which case it is; the pattern's error enum
/// documents them. Responses every route may give (500, 503, 504, and 413/415 where a body
/// is taken) are added to every operation by [`document_problems`].
pub mod problems {
    use std::collections::BTreeMap;

    use utoipa::openapi::{RefOr, Response};

    macro_rules! problem_responses {
        ($($(#[$doc:meta])* $name:ident = $status:literal, $description:literal;)*) => {$(
            $(#[$doc])*
            #[derive(Debug, Clone, Copy)]
            pub struct $name;

            impl utoipa::IntoResponses for $name {
                fn responses() -> BTreeMap<String, RefOr<Response>> {
                    BTreeMap::from([(
                        $status.to_owned(),
                        super::problem_response($description).into(),
                    )])
                }
            }
        )*};
    }

    problem_responses! {
        /// 400: the input breaks a rule; the detail names the field and the rule.
        BadRequest = "400", "the input breaks a rule; the detail names the field and the rule";
        /// 404: the thing asked for does not exist.
        NotFound = "404", "the thing asked for does not exist";
        /// 409: the request conflicts with the object's state; the type says how.
        Conflict = "409", "the request conflicts with the object's state; the problem's type says how";
        /// 412: a precondition (`If-Match`) does not hold.
        PreconditionFailed = "412", "a precondition does not hold";
        /// 429: refused by a limit; `Retry-After` says when to retry.
        TooManyRequests = "429", "refused by a limit; Retry-After says when to retry";
        /// 507: a quota would be exceeded; the detail says which.
        InsufficientStorage = "507", "a quota would be exceeded; the detail says which";
    }
}

/// Adds to every operation of `doc` the problem responses any route may give: 500 (the
/// object failed), 503 (overloaded, storage failing or shutting down; `Retry-After`), 504
/// (no reply within the deadline), and, where the operation takes a body, 413 (too large)
/// and 415 (not JSON). Responses an operation declares itself are left as they are. Also
/// registers the `Problem` schema they refer to.
pub fn document_problems(doc: &mut OpenApi) {
    use utoipa::PartialSchema;
    let components = doc.components.get_or_insert_with(Default::default);
    components
        .schemas
        .entry("Problem".into())
        .or_insert_with(super::Problem::schema);
    for item in doc.paths.paths.values_mut() {
        let ops = [
            (&mut item.get, false),
            (&mut item.put, true),
            (&mut item.post, true),
            (&mut item.delete, false),
            (&mut item.patch, true),
        ];
        for (op, write) in ops {
            let Some(op) = op else { continue };
            if write {
                json_write_body(op);
            }
            let has_body = op.request_body.is_some();
            let names_in_path = name_path_params(op);
            let r = &mut op.responses.responses;
            let mut add = |status: &str, description: &str| {
                r.entry(status.into())
                    .or_insert_with(|| problem_response(description).into());
            };
            add("500", "the object failed while handling the request");
            add(
                "503",
                "overloaded, storage failing or shutting down; Retry-After says when to retry",
            );
            add("504", "the object did not answer within the deadline");
            if has_body {
                add("413", "the body is larger than the server accepts");
            }
            if has_body || write {
                add(
                    "415",
                    "the request does not say Content-Type: application/json (a write says it even without a body)",
                );
            }
            if names_in_path {
                add("400", "a name in the path breaks the rules of names");
            }
        }
    }
}

/// States what every write sends: a JSON body, required, since a write must say
/// `Content-Type: application/json` even when it has nothing to say (415 otherwise). A write
/// that takes no parameters is described as taking any JSON value, which it ignores; one whose
/// body is optional, as taking `null` for "nothing" (an empty body is accepted too).
fn json_write_body(op: &mut utoipa::openapi::path::Operation) {
    use utoipa::openapi::Required;
    use utoipa::openapi::request_body::RequestBodyBuilder;
    match &mut op.request_body {
        Some(utoipa::openapi::RefOr::T(body)) => body.required = Some(Required::True),
        Some(_) => {}
        None => {
            op.request_body = Some(
                RequestBodyBuilder::new()
                    .description(Some(
                        "Nothing to say: any JSON value, ignored (`{}`); the request must say Content-Type: application/json",
                    ))
                    .content(
                        "application/json",
                        ContentBuilder::new()
                            .schema(Some(utoipa::openapi::schema::Schema::Object(
                                utoipa::openapi::schema::ObjectBuilder::new()
                                    .schema_type(utoipa::openapi::schema::SchemaType::AnyValue)
                                    .build(),
                            )))
                            .build(),
                    )
                    .required(Some(Required::True))
                    .build()
                    .into(),
            )
        }
    }
}

/// Gives every path parameter declared as a bare string the schema of a name (1 to
/// [`crate::MAX_NAME_CHARS`] characters, no control characters: what the routes check with
/// the `Name` extractor or `validate_name`); whether the operation has any.
fn name_path_params(op: &mut utoipa::openapi::path::Operation) -> bool {
    use utoipa::openapi::path::ParameterIn;
    use utoipa::openapi::schema::{Schema, Type};
    use utoipa::openapi::{RefOr, schema::SchemaType};
    let mut any = false;
    for p in op.parameters.iter_mut().flatten() {
        let RefOr::T(p) = p else { continue };
        if p.parameter_in != ParameterIn::Path {
            continue;
        }
        any = true;
        let bare = match &p.schema {
            None => true,
            Some(RefOr::T(Schema::Object(o))) => {
                o.schema_type == SchemaType::Type(Type::String) && o.pattern.is_none()
            }
            Some(_) => false,
        };
        if bare {
            p.schema = Some(RefOr::T(Schema::Object(schema::name())));
        }
    }
    any
}

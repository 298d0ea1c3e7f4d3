//! What the OpenAPI document says beyond each handler's own `#[utoipa::path]`: the answers every
//! route of a kind can give (401 with API keys, 503 while Redis is down, 408/413/415 for bodies,
//! 400 for a malformed id, 416 for a bad Range), the id parameters' patterns, closed forms, and
//! that the API key is optional when the server sets no `API_KEYS`. One place, so a new route
//! gets them too.

use super::OPEN_ROUTES;
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, Schema, Type};
use utoipa::openapi::security::SecurityRequirement;
use utoipa::openapi::{Content, Ref, RefOr, Response};

/// The pattern of a 64-character lower-case hex hash (`image_id`).
pub const HASH_PATTERN: &str = "^[0-9a-f]{64}$";
/// The pattern of a session id (a UUID v4 as 32 lower-case hex characters).
pub const SESSION_PATTERN: &str = "^[0-9a-f]{32}$";

/// Path parameters whose values are ids: name, pattern, length.
const ID_PARAMS: &[(&str, &str, usize)] = &[("image_id", HASH_PATTERN, 64), ("session_id", SESSION_PATTERN, 32)];

/// Routes that serve files with HTTP Range support (they may answer 416).
const RANGED: &[&str] = &["/api/vip/download/{session_id}", "/api/avatar/idle/{image_id}"];

fn error_response(description: &str) -> RefOr<Response> {
    let mut r = Response::new(description);
    r.content.insert("application/json".into(), Content::new(Some(Ref::from_schema_name("ErrorBody"))));
    RefOr::T(r)
}

fn operations(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.patch,
        &mut item.head,
        &mut item.options,
        &mut item.trace,
    ]
    .into_iter()
    .flatten()
}

/// Add `status` with `description` unless the handler documents it already.
fn ensure(op: &mut Operation, status: u16, description: &str) {
    op.responses.responses.entry(status.to_string()).or_insert_with(|| error_response(description));
}

/// The multipart forms: only their own fields (others are ignored by the server, but a field
/// name that a Content-Disposition header cannot carry is a malformed body, 400).
const FORMS: &[&str] = &["GenerateForm", "UploadForm", "GenerateJson", "UploadJson"];

/// Apply the shared answers, id patterns, closed forms and optional security to the whole document.
pub fn complete(doc: &mut utoipa::openapi::OpenApi) {
    if let Some(components) = doc.components.as_mut() {
        for name in FORMS {
            if let Some(RefOr::T(Schema::Object(form))) = components.schemas.get_mut(*name) {
                form.additional_properties = Some(Box::new(AdditionalProperties::FreeForm(false)));
            }
        }
    }
    // Either no key (a server without API_KEYS) or the X-API-Key header.
    doc.security =
        Some(vec![SecurityRequirement::new("api_key", Vec::<String>::new()), SecurityRequirement::default()]);
    for (path, item) in doc.paths.paths.iter_mut() {
        let open = OPEN_ROUTES.contains(&path.as_str());
        for op in operations(item) {
            if open {
                op.security = Some(vec![SecurityRequirement::default()]);
            } else {
                ensure(op, 401, "Missing or wrong X-API-Key (only when the server sets API_KEYS)");
            }
            if path.starts_with("/api/") {
                ensure(op, 503, "The job store (Redis) is unavailable (`redis_unavailable`, with Retry-After)");
            }
            if op.request_body.is_some() {
                ensure(op, 400, "Malformed body or field");
                ensure(op, 408, "The body did not arrive within the body timeout (`body_timeout`)");
                ensure(op, 413, "Body larger than the limit");
                ensure(op, 415, "Neither multipart/form-data nor JSON, or a file of the wrong type");
            }
            if RANGED.contains(&path.as_str()) {
                ensure(op, 416, "The Range is outside the file");
            }
            let mut ids = Vec::new();
            for param in op.parameters.iter_mut().flatten() {
                let Some((name, pattern, len)) = ID_PARAMS.iter().find(|(n, ..)| *n == param.name) else {
                    continue;
                };
                param.schema = Some(RefOr::T(
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .pattern(Some(*pattern))
                        .min_length(Some(*len))
                        .max_length(Some(*len))
                        .into(),
                ));
                ids.push(*name);
            }
            for name in ids {
                ensure(op, 400, &format!("Malformed {name}"));
                ensure(op, 404, &format!("Unknown {name}"));
            }
        }
    }
}

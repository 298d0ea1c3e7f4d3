//! A POST body as one [`Form`], whichever way the client sent it: `multipart/form-data` (see
//! [`super::multipart`]) or an `application/json` object whose string, number and boolean members
//! are the form's fields (`metadata` may be an object). The byte limits of the multipart path
//! hold here too: the body is refused from its Content-Length, or as soon as it passes its limit
//! while streaming in.

use super::multipart::{read_form, too_large, FileLimit, Form, Upload, OVERHEAD, TEXT_MAX};
use crate::errors::{ApiError, Code};
use actix_multipart::Multipart;
use actix_web::http::header;
use actix_web::{web, HttpRequest};
use futures_util::StreamExt;

/// Fields that may hold a JSON object (kept as its compact JSON text).
const OBJECT_FIELDS: &[&str] = &["metadata"];

fn is_json(req: &HttpRequest) -> bool {
    req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).and_then(|v| v.split(';').next()).is_some_and(
        |v| {
            let v = v.trim().to_ascii_lowercase();
            v == "application/json" || (v.starts_with("application/") && v.ends_with("+json"))
        },
    )
}

/// Read the body as a form. `limits` name the byte fields (files, base64) and their limits;
/// in JSON only the non-file ones (base64) may appear, as strings.
pub async fn read_body(req: &HttpRequest, payload: web::Payload, limits: &[FileLimit]) -> Result<Form, ApiError> {
    if !is_json(req) {
        return read_form(req, Multipart::new(req.headers(), payload), limits).await;
    }
    let allowed: u64 = limits.iter().map(|l| l.max_bytes).max().unwrap_or(0) + OVERHEAD;
    let declared =
        req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > allowed) {
        return Err(too_large("the JSON body", allowed));
    }
    let mut payload = payload;
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|p| {
            super::edge::payload_error(&p)
                .unwrap_or_else(|| ApiError::new(Code::BadRequest, format!("the request body could not be read: {p}")))
        })?;
        if (body.len() + chunk.len()) as u64 > allowed {
            return Err(too_large("the JSON body", allowed));
        }
        body.extend_from_slice(&chunk);
    }
    json_form(&body, limits)
}

/// A JSON object's members as form fields.
fn json_form(body: &[u8], limits: &[FileLimit]) -> Result<Form, ApiError> {
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::new(Code::BadRequest, format!("the body is not valid JSON: {e}")))?;
    let serde_json::Value::Object(members) = value else {
        return Err(ApiError::new(Code::BadRequest, "the JSON body must be an object"));
    };
    let mut form = Form::default();
    for (name, v) in members {
        if let Some(limit) = limits.iter().find(|l| l.field == name) {
            let serde_json::Value::String(s) = v else {
                return Err(ApiError::new(Code::InvalidField, format!("`{name}` must be a string")));
            };
            if name.ends_with("_file") {
                let alt = name.trim_end_matches("_file");
                return Err(ApiError::new(
                    Code::InvalidField,
                    format!("`{name}` is a multipart file field; in JSON send `{alt}_base64` or `{alt}_url`"),
                ));
            }
            if s.len() as u64 > limit.max_bytes {
                return Err(too_large(&format!("`{name}`"), limit.max_bytes));
            }
            let upload = Upload { bytes: s.into_bytes(), content_type: None, filename: None };
            form.files.push((name, upload));
            continue;
        }
        let text = match v {
            serde_json::Value::Null => continue,
            serde_json::Value::String(s) => s,
            serde_json::Value::Bool(b) => b.to_string(),
            serde_json::Value::Number(n) => n.to_string(),
            obj @ serde_json::Value::Object(_) if OBJECT_FIELDS.contains(&name.as_str()) => obj.to_string(),
            _ => {
                return Err(ApiError::new(
                    Code::InvalidField,
                    format!("`{name}` must be a string, a number or a boolean"),
                ))
            }
        };
        if text.len() > TEXT_MAX {
            return Err(too_large(&format!("the field `{name}`"), TEXT_MAX as u64));
        }
        form.texts.push((name, text));
    }
    Ok(form)
}

/// Declares the documented shapes of one POST body for the OpenAPI document, the multipart form
/// and the JSON object, from one field list (handlers read the fields through [`Form`], so these
/// structs exist for the schema only). `head` fields open both, `form_only` ones (files) follow
/// in the form alone, `shared` ones follow in both; both end with `callback_url` and `metadata`
/// (a JSON text in the form, an object in the JSON body).
macro_rules! request_bodies {
    (
        $(#[$form_meta:meta])* form $form:ident;
        $(#[$json_meta:meta])* json $json:ident;
        head { $($(#[$hm:meta])* $hf:ident: $ht:ty,)* }
        form_only { $($(#[$fm:meta])* $ff:ident: $ft:ty,)* }
        shared { $($(#[$sm:meta])* $sf:ident: $st:ty,)* }
    ) => {
        $(#[$form_meta])*
        #[derive(utoipa::ToSchema)]
        #[allow(dead_code)]
        pub struct $form {
            $($(#[$hm])* $hf: $ht,)*
            $($(#[$fm])* $ff: $ft,)*
            $($(#[$sm])* $sf: $st,)*
            /// Where to POST signed webhooks when this finishes (http/https; Standard Webhooks).
            #[schema(required = false)]
            callback_url: String,
            /// A JSON object sent back in every webhook of this request (without `callback_url`
            /// there is no webhook, and it is not kept).
            #[schema(required = false, example = json!("{\"order\": 42}"))]
            metadata: String,
        }

        $(#[$json_meta])*
        #[derive(utoipa::ToSchema)]
        #[allow(dead_code)]
        pub struct $json {
            $($(#[$hm])* $hf: $ht,)*
            $($(#[$sm])* $sf: $st,)*
            /// Where to POST signed webhooks when this finishes (http/https; Standard Webhooks).
            #[schema(required = false)]
            callback_url: String,
            /// A JSON object sent back in every webhook of this request (without `callback_url`
            /// there is no webhook, and it is not kept).
            #[schema(required = false, value_type = Object)]
            metadata: serde_json::Value,
        }
    };
}
pub(crate) use request_bodies;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_members_become_fields_and_bad_shapes_are_refused() {
        let limits =
            [FileLimit { field: "image_base64", max_bytes: 16 }, FileLimit { field: "image_file", max_bytes: 16 }];
        let mut form = json_form(br#"{"image_base64":"aGk=","retry":true,"size":512,"x":null}"#, &limits).unwrap();
        assert_eq!(form.text("retry"), Some("true"));
        assert_eq!(form.text("size"), Some("512"));
        assert_eq!(form.take_file_opt("image_base64").unwrap().bytes, b"aGk=");
        let code = |body: &[u8]| json_form(body, &limits).unwrap_err().code;
        assert_eq!(code(b"[1]"), Code::BadRequest);
        assert_eq!(code(b"{"), Code::BadRequest);
        assert_eq!(code(br#"{"image_base64": 5}"#), Code::InvalidField);
        assert_eq!(code(br#"{"image_file": "x"}"#), Code::InvalidField);
        assert_eq!(code(br#"{"retry": [true]}"#), Code::InvalidField);
        assert_eq!(code(br#"{"image_base64": "aaaaaaaaaaaaaaaaaaaaaaaa"}"#), Code::PayloadTooLarge);
        assert!(json_form(br#"{"metadata": {"order": 7}}"#, &limits).unwrap().text("metadata").unwrap().contains("7"));
    }
}

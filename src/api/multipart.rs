//! Streaming multipart reading with per-field byte limits: an oversize request is refused from
//! its Content-Length, or as soon as a field passes its limit, never after buffering it all.
//! Every failure becomes an `ApiError` with the field named.

use crate::errors::{ApiError, Code};
use actix_multipart::{Multipart, MultipartError};
use actix_web::http::header;
use actix_web::HttpRequest;
use futures_util::StreamExt;

/// Largest accepted text field (options are short).
pub(super) const TEXT_MAX: usize = 4 * 1024;
/// Allowance for multipart framing and the text fields on top of the file limits.
pub(super) const OVERHEAD: u64 = 64 * 1024;

/// A file field's bytes and what the client said about them.
#[derive(Debug)]
pub struct Upload {
    pub bytes: Vec<u8>,
    pub content_type: Option<String>,
    pub filename: Option<String>,
}

/// A file field this endpoint accepts and its byte limit.
pub struct FileLimit {
    pub field: &'static str,
    pub max_bytes: u64,
}

/// A request's fields: file fields (and other byte fields with their own limit, such as
/// base64 text) and short text fields, from a multipart form or a JSON object.
#[derive(Debug, Default)]
pub struct Form {
    pub(super) files: Vec<(String, Upload)>,
    pub(super) texts: Vec<(String, String)>,
}

impl Form {
    /// Take a file field, or a `missing_field` error naming it.
    pub fn take_file(&mut self, name: &str) -> Result<Upload, ApiError> {
        let i = self.files.iter().position(|(n, _)| n == name).ok_or_else(|| missing(name))?;
        Ok(self.files.swap_remove(i).1)
    }

    /// Take a file field if present.
    pub fn take_file_opt(&mut self, name: &str) -> Option<Upload> {
        let i = self.files.iter().position(|(n, _)| n == name)?;
        Some(self.files.swap_remove(i).1)
    }

    pub fn text(&self, name: &str) -> Option<&str> {
        self.texts.iter().find(|(n, _)| n == name).map(|(_, v)| v.trim()).filter(|v| !v.is_empty())
    }

    /// Parse an optional text field with `parse`, naming the field on failure.
    pub fn parse<T>(
        &self,
        name: &str,
        expected: &str,
        parse: impl Fn(&str) -> Option<T>,
    ) -> Result<Option<T>, ApiError> {
        match self.text(name) {
            None => Ok(None),
            Some(v) => parse(v).map(Some).ok_or_else(|| {
                ApiError::new(Code::InvalidField, format!("`{name}`: {:?} is not {expected}", shorten(v)))
            }),
        }
    }
}

fn shorten(s: &str) -> String {
    s.chars().take(64).collect()
}

/// A boolean form field: `true`/`false` (also `1`/`0`, `yes`/`no`, `on`/`off`).
pub fn parse_bool(s: &str) -> Option<bool> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

pub fn missing(name: &str) -> ApiError {
    ApiError::new(Code::MissingField, format!("the multipart field `{name}` is required"))
}

pub(super) fn too_large(what: &str, max: u64) -> ApiError {
    ApiError::new(Code::PayloadTooLarge, format!("{what} is larger than the limit of {max} bytes"))
}

/// `multipart` says whether the request's Content-Type names a multipart type (a multipart type
/// whose parameters do not parse, e.g. an empty `boundary=`, is a malformed multipart body).
fn map_multipart(e: MultipartError, multipart: bool) -> ApiError {
    match e {
        MultipartError::ContentTypeMissing
        | MultipartError::ContentTypeParse
        | MultipartError::ContentTypeIncompatible
            if multipart =>
        {
            ApiError::new(Code::MalformedMultipart, "the multipart Content-Type has no usable boundary parameter")
        }
        MultipartError::ContentTypeMissing
        | MultipartError::ContentTypeParse
        | MultipartError::ContentTypeIncompatible => {
            ApiError::new(Code::ExpectedMultipart, "the request body must be multipart/form-data")
        }
        MultipartError::Payload(p) => super::edge::payload_error(&p).unwrap_or_else(|| {
            ApiError::new(Code::MalformedMultipart, format!("the request body could not be read: {p}"))
        }),
        other => ApiError::new(Code::MalformedMultipart, format!("malformed multipart body: {other}")),
    }
}

/// Read the whole form, enforcing `limits` on file fields and [`TEXT_MAX`] on the others.
pub async fn read_form(req: &HttpRequest, mut payload: Multipart, limits: &[FileLimit]) -> Result<Form, ApiError> {
    let allowed: u64 = limits.iter().map(|l| l.max_bytes).sum::<u64>() + OVERHEAD;
    let declared =
        req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if let Some(len) = declared {
        if len > allowed {
            let what = limits.iter().map(|l| l.field).collect::<Vec<_>>().join(", ");
            return Err(ApiError::new(
                Code::PayloadTooLarge,
                format!(
                    "the request body ({len} bytes) exceeds the limit for {what} ({allowed} bytes with form overhead)"
                ),
            ));
        }
    }
    let multipart = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with("multipart/"));
    let to_api = |e: MultipartError| map_multipart(e, multipart);
    let mut form = Form::default();
    while let Some(field) = payload.next().await {
        let mut field = field.map_err(to_api)?;
        let name = field.name().unwrap_or_default().to_string();
        if form.files.iter().any(|(n, _)| *n == name) || form.texts.iter().any(|(n, _)| *n == name) {
            return Err(ApiError::new(Code::DuplicateField, format!("the field `{name}` appears more than once")));
        }
        if let Some(limit) = limits.iter().find(|l| l.field == name) {
            let mut bytes = Vec::new();
            while let Some(chunk) = field.next().await {
                let chunk = chunk.map_err(to_api)?;
                if (bytes.len() + chunk.len()) as u64 > limit.max_bytes {
                    return Err(too_large(&format!("`{name}`"), limit.max_bytes));
                }
                bytes.extend_from_slice(&chunk);
            }
            let upload = Upload {
                bytes,
                content_type: field.content_type().map(|m| m.essence_str().to_string()),
                filename: field.content_disposition().and_then(|cd| cd.get_filename()).map(String::from),
            };
            form.files.push((name, upload));
        } else {
            let mut bytes = Vec::new();
            while let Some(chunk) = field.next().await {
                let chunk = chunk.map_err(to_api)?;
                if bytes.len() + chunk.len() > TEXT_MAX {
                    return Err(too_large(&format!("the text field `{name}`"), TEXT_MAX as u64));
                }
                bytes.extend_from_slice(&chunk);
            }
            let text = String::from_utf8(bytes)
                .map_err(|_| ApiError::new(Code::InvalidField, format!("the field `{name}` is not UTF-8 text")))?;
            form.texts.push((name, text));
        }
    }
    Ok(form)
}

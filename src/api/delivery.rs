//! Handing a stored blob to a client: from a local store, the file itself (HTTP Range,
//! Last-Modified); from object storage, a `307` redirect to a presigned GET URL. Also the
//! `download_url` a status answer carries.

use crate::blobs::BlobStore;
use crate::config::Config;
use crate::errors::ApiError;
use crate::state::AppState;
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse};
use vipavatar_cache::SessionId;

/// How to present one blob.
pub struct Delivery<'a> {
    pub name: &'a str,
    pub mime: &'a str,
    /// `Content-Disposition` file name.
    pub filename: String,
    /// The error when the blob is gone.
    pub gone: fn() -> ApiError,
}

/// Serve `d.name`: stream it (local) or redirect to a presigned URL (object storage).
pub async fn serve_blob(req: &HttpRequest, state: &AppState, d: Delivery<'_>) -> Result<HttpResponse, ApiError> {
    if let Some(url) = state.blobs.presign(d.name).await? {
        if !state.blobs.exists(d.name).await? {
            return Err((d.gone)());
        }
        return Ok(HttpResponse::TemporaryRedirect()
            .insert_header((header::LOCATION, url))
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .finish());
    }
    let path = state.blobs.local_path(d.name)?.ok_or_else(|| (d.gone)())?;
    let file = actix_files::NamedFile::open_async(&path).await.map_err(|_| (d.gone)())?;
    let mut resp = file
        .set_content_type(d.mime.parse().map_err(ApiError::internal)?)
        .set_content_disposition(header::ContentDisposition {
            disposition: header::DispositionType::Inline,
            parameters: vec![header::DispositionParam::Filename(d.filename)],
        })
        .use_last_modified(true)
        .into_response(req);
    resp.headers_mut().insert(header::CACHE_CONTROL, header::HeaderValue::from_static("private, max-age=3600"));
    Ok(resp)
}

/// Where a ready session's video is fetched: `{VIPAVATAR_PUBLIC_URL}/api/vip/download/{id}`
/// when a public URL is configured; else, with object storage, the presigned URL itself; else
/// the relative download path.
pub async fn download_url(
    config: &Config,
    blobs: &BlobStore,
    id: &SessionId,
    video_file: &str,
) -> Result<String, ApiError> {
    let path = format!("/api/vip/download/{id}");
    if let Some(base) = config.storage.public_url.as_deref().filter(|u| !u.is_empty()) {
        return Ok(format!("{}{path}", base.trim_end_matches('/')));
    }
    match blobs.presign(video_file).await? {
        Some(url) => Ok(url),
        None => Ok(path),
    }
}

//! `/api/avatar/idle/{image_id}` and `/api/avatar/thumbnail/{image_id}`: the avatar's seamless
//! idle loop (MP4, shown between answers) and its first frame (JPEG), rendered once after the
//! precompute by the idle job and kept under `idle:{image}:{mode}:{size}`.

use super::avatar::{avatar_records, StatusQuery};
use super::delivery::{serve_blob, Delivery};
use super::parse_image_id;
use crate::errors::{ApiError, Code, ErrorBody};
use crate::jobs::avatar::default_size;
use crate::jobs::{Job, Queue};
use crate::records::{AvatarStatus, IdleEntry, IdleRef};
use crate::state::AppState;
use actix_web::{web, HttpRequest, HttpResponse};
use vipavatar_cache::{ImageHash, Key};
use vipavatar_pipeline::engine::PreprocessMode;

/// The avatar's idle loop.
///
/// Ten seconds of the face at rest (closed mouth, two blinks, a slight sway) whose last frame is
/// its first, so a player loops it without a seam (`<video loop>`). Rendered in the background
/// right after the precompute; until then, 409 with `Retry-After`.
#[utoipa::path(
    get,
    path = "/idle/{image_id}",
    tag = "avatar",
    params(("image_id" = String, Path, description = "The id returned by the upload"), StatusQuery),
    responses(
        (status = 200, description = "The idle loop", content_type = "video/mp4", body = Vec<u8>),
        (status = 206, description = "The requested byte range", content_type = "video/mp4", body = Vec<u8>),
        (status = 307, description = "Object storage: redirect to a presigned URL (Location)"),
        (status = 400, description = "Malformed image_id or preprocess_mode", body = ErrorBody),
        (status = 401, description = "Missing or wrong X-API-Key", body = ErrorBody),
        (status = 404, description = "Unknown image, or its engine renders no idle loop", body = ErrorBody),
        (status = 409, description = "Not rendered yet, or the avatar failed", body = ErrorBody),
    )
)]
pub async fn idle(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: web::Query<StatusQuery>,
) -> Result<HttpResponse, ApiError> {
    let (image, entry) = idle_entry(&state, &path, &query).await?;
    serve(&req, &state, &image, &entry.video, "video/mp4", "mp4").await
}

/// The avatar's thumbnail: the first frame of its idle loop (JPEG).
#[utoipa::path(
    get,
    path = "/thumbnail/{image_id}",
    tag = "avatar",
    params(("image_id" = String, Path, description = "The id returned by the upload"), StatusQuery),
    responses(
        (status = 200, description = "The thumbnail", content_type = "image/jpeg", body = Vec<u8>),
        (status = 307, description = "Object storage: redirect to a presigned URL (Location)"),
        (status = 400, description = "Malformed image_id or preprocess_mode", body = ErrorBody),
        (status = 401, description = "Missing or wrong X-API-Key", body = ErrorBody),
        (status = 404, description = "Unknown image, or its engine renders no idle loop", body = ErrorBody),
        (status = 409, description = "Not rendered yet, or the avatar failed", body = ErrorBody),
    )
)]
pub async fn thumbnail(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: web::Query<StatusQuery>,
) -> Result<HttpResponse, ApiError> {
    let (image, entry) = idle_entry(&state, &path, &query).await?;
    serve(&req, &state, &image, &entry.thumbnail, "image/jpeg", "jpg").await
}

/// The idle entry of the requested (or most recent) upload of the image. A ready avatar whose
/// entry is missing (expired, or its job failed) gets the idle job queued again.
async fn idle_entry(state: &AppState, path: &str, query: &StatusQuery) -> Result<(ImageHash, IdleRef), ApiError> {
    let image = parse_image_id(path)?;
    let want = query.mode()?;
    let records = avatar_records(&state.cache, &image).await?;
    let rec = match want {
        Some(m) => records.iter().find(|r| r.mode == m),
        None => records.iter().max_by_key(|r| r.created_ms),
    }
    .ok_or_else(|| ApiError::new(Code::ImageNotFound, format!("no upload of image {image} for that mode")))?;
    let mode: PreprocessMode = rec.mode;
    match rec.status {
        AvatarStatus::Failed => {
            let why = rec.error.as_ref().map(|e| e.message.clone()).unwrap_or_default();
            return Err(ApiError::new(Code::AvatarFailed, format!("the avatar failed: {why}")));
        }
        AvatarStatus::Processing => {
            return Err(
                ApiError::new(Code::VideoNotReady, format!("image {image} is still being precomputed")).retry_after(2)
            )
        }
        AvatarStatus::Ready => {}
    }
    match state.cache.peek::<IdleEntry>(&Key::idle(&image, mode.as_str(), default_size())).await? {
        Some(IdleEntry::Rendered(entry)) => return Ok((image, entry)),
        Some(IdleEntry::NoneFor(engine)) => {
            return Err(ApiError::new(
                Code::IdleNotFound,
                format!("image {image} was prepared by the {} engine, which renders no idle loop", engine.as_str()),
            ))
        }
        None => {}
    }
    state.queue.enqueue(Queue::Standard, &Job::Idle { image: image.clone(), mode }).await?;
    Err(ApiError::new(Code::VideoNotReady, format!("the idle loop of image {image} is being rendered")).retry_after(2))
}

async fn serve(
    req: &HttpRequest,
    state: &AppState,
    image: &ImageHash,
    name: &str,
    mime: &str,
    ext: &str,
) -> Result<HttpResponse, ApiError> {
    let d = Delivery {
        name,
        mime,
        filename: format!("{image}-idle.{ext}"),
        gone: || ApiError::new(Code::IdleNotFound, "the idle loop of this image is no longer stored"),
    };
    serve_blob(req, state, d).await
}

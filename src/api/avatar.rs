//! `/api/avatar`: upload a portrait once (stored, hashed, precomputed in the background) and
//! poll its precompute status.

use super::body::read_body;
use super::callbacks;
use super::inputs::{self, Input};
use super::media::check_image;
use super::multipart::parse_bool;
use super::{parse_image_id, seconds_map, Guard};
use crate::blobs::BlobStore;
use crate::erase::Erased;
use crate::errors::{ApiError, Code, ErrorBody};
use crate::jobs::avatar::CoeffsEntry;
use crate::jobs::{counters, Job, Queue};
use crate::records::{AvatarRecord, AvatarStatus, WebhookState};
use crate::state::AppState;
use crate::webhooks::Target;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::{IntoParams, OpenApi, ToSchema};
use vipavatar_cache::{Cache, ImageHash, Key};
use vipavatar_pipeline::engine::PreprocessMode;

#[derive(OpenApi)]
#[openapi(
    paths(upload, status, delete, super::idle::idle, super::idle::thumbnail),
    components(schemas(
        UploadForm,
        UploadJson,
        UploadResponse,
        AvatarStatusResponse,
        ModeStatus,
        PreprocessMode,
        AvatarStatus,
        WebhookState,
        Erased,
        ErrorBody
    ))
)]
pub struct AvatarApi;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/upload", web::post().to(upload))
        .route("/status/{image_id}", web::get().to(status))
        .route("/idle/{image_id}", web::get().to(super::idle::idle))
        .route("/thumbnail/{image_id}", web::get().to(super::idle::thumbnail))
        .route("/{image_id}", web::delete().to(delete));
}

super::body::request_bodies! {
    /// Multipart form of an upload: the portrait as exactly one of `image_file`, `image_url` and
    /// `image_base64`.
    form UploadForm;
    /// JSON body of an upload: the portrait as exactly one of `image_url` and `image_base64`.
    json UploadJson;
    head {}
    form_only {
        /// The portrait: PNG, JPEG or WebP.
        #[schema(value_type = String, format = Binary, required = false)]
        image_file: Vec<u8>,
    }
    shared {
        /// An http(s) URL the server fetches the portrait from (same limits and checks as a file).
        #[schema(required = false)]
        image_url: String,
        /// The portrait's bytes in base64 (standard or URL-safe, padding optional, a `data:` URL
        /// accepted).
        #[schema(required = false)]
        image_base64: String,
        /// Framing to precompute (default `crop`).
        #[schema(required = false)]
        preprocess_mode: PreprocessMode,
        /// Precompute again even though this image already failed for this mode because of its
        /// content (default false: that failure is answered at once, for the avatar's TTL).
        #[schema(required = false)]
        retry: bool,
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UploadResponse {
    /// blake3 of the image bytes: use it in `/api/vip/generate`.
    pub image_id: String,
    pub status: AvatarStatus,
    /// Seconds until the precompute is expected to be done (absent when cached).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub estimated_time: Option<f64>,
    /// True when this image was already precomputed for this mode (nothing was recomputed).
    pub cached: bool,
    pub preprocess_mode: String,
    /// What happened, in words.
    pub message: String,
}

/// Upload a portrait.
///
/// Stores the image, then precomputes everything that depends only on it (face detection,
/// landmarks, crop, engine state) in the background. The same bytes uploaded again for the same
/// mode answer 200 with `cached: true` and recompute nothing. An image whose precompute failed
/// because of its content (no face, ...) answers that same error at once for the avatar's TTL,
/// without running again (send `retry=true` to run it anyway); a server-side failure is retried.
#[utoipa::path(
    post,
    path = "/upload",
    tag = "avatar",
    request_body(content((UploadForm = "multipart/form-data"), (UploadJson = "application/json"))),
    responses(
        (status = 200, description = "Already precomputed", body = UploadResponse),
        (status = 202, description = "Accepted; precompute running", body = UploadResponse),
        (status = 400, description = "Missing or invalid field, `invalid_base64`, or `url_forbidden` (the URL is not http(s), or reaches a private address)", body = ErrorBody),
        (status = 401, description = "Missing or wrong X-API-Key", body = ErrorBody),
        (status = 413, description = "Image larger than the byte limit", body = ErrorBody),
        (status = 415, description = "Not a PNG, JPEG or WebP file, or not multipart", body = ErrorBody),
        (status = 422, description = "The image does not decode, is too small or too large in pixels, or already failed for this mode (no face, ...); or `url_fetch_failed`", body = ErrorBody),
        (status = 429, description = "Too many jobs are waiting (`overloaded`, with Retry-After)", body = ErrorBody),
    )
)]
#[tracing::instrument(skip_all, fields(image_id))]
pub async fn upload(
    req: HttpRequest,
    state: web::Data<AppState>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let input = Input::image(state.config.limits.max_image_bytes);
    let mut form = read_body(&req, payload, &input.limits()).await?;
    let mode = form.parse("preprocess_mode", &PreprocessMode::expected(), PreprocessMode::parse)?.unwrap_or_default();
    let retry = form.parse("retry", "true or false", parse_bool)?.unwrap_or(false);
    let callback = callbacks::parse(&state, &form)?;
    let source = inputs::pick(&mut form, &input, &state.fetcher)?;
    let field = source.field(&input);
    let bytes = inputs::load(&state, &input, source).await?;
    check_image(field, &bytes)?;
    check_dimensions(field, &bytes)?;
    let bytes = std::sync::Arc::new(bytes);
    let max_pixels = state.config.limits.max_image_pixels;
    let b = bytes.clone();
    tokio::task::spawn_blocking(move || vipavatar_pipeline::image::decode(&b, max_pixels))
        .await
        .map_err(ApiError::internal)??;
    let image = ImageHash::of(&bytes);
    tracing::Span::current().record("image_id", image.as_str());

    let key = Key::avatar(&image, mode.as_str());
    let target = Target::Avatar { image: image.clone(), mode };
    let existing = state.cache.peek::<AvatarRecord>(&key).await?;
    match existing.as_ref().map(|r| r.status) {
        // `peek`: a status check, not a cache lookup, so it counts no hit or miss.
        Some(AvatarStatus::Ready)
            if state.cache.peek::<CoeffsEntry>(&Key::coeffs_3dmm(&image, mode.as_str())).await?.is_some() =>
        {
            callbacks::attach(&state, target, callback).await?;
            return Ok(HttpResponse::Ok().json(UploadResponse {
                image_id: image.to_string(),
                status: AvatarStatus::Ready,
                estimated_time: None,
                cached: true,
                preprocess_mode: mode.as_str().into(),
                message: format!("Avatar already precomputed for {}: nothing was recomputed", mode.as_str()),
            }));
        }
        Some(AvatarStatus::Processing) => {
            callbacks::attach(&state, target, callback).await?;
            return Ok(HttpResponse::Accepted().json(UploadResponse {
                image_id: image.to_string(),
                status: AvatarStatus::Processing,
                estimated_time: Some(estimate_precompute(&state).await),
                cached: false,
                preprocess_mode: mode.as_str().into(),
                message: format!("Avatar is already being precomputed for {}", mode.as_str()),
            }));
        }
        Some(AvatarStatus::Failed) => {
            // The same bytes fail the same way: answer the stored error, run nothing.
            if let Some(error) = existing.as_ref().and_then(AvatarRecord::remembered_failure).filter(|_| !retry) {
                return Err(ApiError::from(error.clone()));
            }
        }
        Some(AvatarStatus::Ready) | None => {}
    }

    super::check_overload(&state).await?;
    // Store first, then enqueue; the guard undoes both if anything below fails.
    crate::erase::revive(&state.cache, &image).await?;
    let name = BlobStore::image_name(&image);
    let created = state.blobs.put_if_absent(&name, bytes::Bytes::from(bytes.to_vec())).await?;
    let mut guard = Guard::new(&state);
    if created {
        guard.remove_blob(name);
    }
    state.cache.put(&key, &AvatarRecord::processing(image.clone(), mode)).await?;
    guard.remove_key(key);
    state.queue.enqueue(Queue::Standard, &Job::Precompute { image: image.clone(), mode }).await?;
    guard.disarm();
    let index = crate::erase::avatars_key(state.cache.namespace());
    let _: () = redis::cmd("ZADD")
        .arg(index)
        .arg("NX")
        .arg(crate::records::now_ms())
        .arg(image.as_str())
        .query_async(&mut state.cache.connection())
        .await?;
    callbacks::attach(&state, target, callback).await?;
    Ok(HttpResponse::Accepted().json(UploadResponse {
        image_id: image.to_string(),
        status: AvatarStatus::Processing,
        estimated_time: Some(estimate_precompute(&state).await),
        cached: false,
        preprocess_mode: mode.as_str().into(),
        message: format!("Avatar accepted: precomputing {} in the background", mode.as_str()),
    }))
}

/// Refuse, from the header alone, an image too small on its short side to hold a face.
fn check_dimensions(field: &str, bytes: &[u8]) -> Result<(), ApiError> {
    let (_, width, height) = vipavatar_pipeline::image::header_dimensions(bytes)?;
    let min = vipavatar_pipeline::precompute::ABSOLUTE_MIN_SIDE;
    if width.min(height) < min {
        return Err(ApiError::new(
            Code::ImageTooSmall,
            format!("`{field}` is {width}x{height} pixels; both sides must be at least {min}"),
        ));
    }
    Ok(())
}

/// Average precompute time times the jobs ahead, in seconds.
async fn estimate_precompute(state: &AppState) -> f64 {
    let counters = state.cache.counters().await.unwrap_or_default();
    let runs = counters.get(counters::PRECOMPUTE_RUNS).copied().unwrap_or(0);
    let ms = counters.get(counters::PRECOMPUTE_MS).copied().unwrap_or(0);
    let each = if runs > 0 { ms as f64 / runs as f64 / 1e3 } else { 2.0 };
    let ahead = state.queue.depth().await.map(|d| d.standard + d.processing).unwrap_or(0);
    ((ahead as f64 + 1.0) * each * 10.0).round() / 10.0
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StatusQuery {
    /// Which mode to report (default: the most recently uploaded one).
    #[param(value_type = Option<PreprocessMode>)]
    preprocess_mode: Option<String>,
}

impl StatusQuery {
    /// The mode asked for, if any.
    pub fn mode(&self) -> Result<Option<PreprocessMode>, ApiError> {
        match self.preprocess_mode.as_deref() {
            None | Some("") => Ok(None),
            Some(m) => Ok(Some(PreprocessMode::parse(m).ok_or_else(|| {
                ApiError::new(
                    Code::InvalidField,
                    format!("`preprocess_mode`: {m:?} is not {}", PreprocessMode::expected()),
                )
            })?)),
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ModeStatus {
    pub preprocess_mode: String,
    pub status: AvatarStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AvatarStatusResponse {
    pub image_id: String,
    /// State of the reported mode.
    pub status: AvatarStatus,
    pub preprocess_mode: String,
    /// Why it failed (same body as an HTTP error).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
    /// Precompute stage -> seconds (empty until done).
    pub timings: BTreeMap<String, f64>,
    /// Decoded image size (0 until precomputed).
    pub width: u32,
    pub height: u32,
    pub faces_found: u32,
    /// The landmark model that placed the face's points: `mediapipe` (the default) or `dlib`
    /// (an operator's opt-in); absent until ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub landmark_model: Option<String>,
    /// Every mode this image was uploaded for.
    pub modes: Vec<ModeStatus>,
    /// Cache entries present for this image (keys without the namespace and image id).
    pub cached: Vec<String>,
    /// The latest webhook delivery for this mode's events (absent without a `callback_url`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookState>,
    /// Once ready: the measured seconds of image-side work (this precompute's `total`) that
    /// every generation for this avatar skips.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub performance_ready: Option<f64>,
}

/// Precompute status of an uploaded image.
#[utoipa::path(
    get,
    path = "/status/{image_id}",
    tag = "avatar",
    params(("image_id" = String, Path, description = "The id returned by the upload"), StatusQuery),
    responses(
        (status = 200, description = "Current state", body = AvatarStatusResponse),
        (status = 400, description = "Malformed image_id", body = ErrorBody),
        (status = 401, description = "Missing or wrong X-API-Key", body = ErrorBody),
        (status = 404, description = "Unknown image", body = ErrorBody),
    )
)]
pub async fn status(
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: web::Query<StatusQuery>,
) -> Result<HttpResponse, ApiError> {
    let image = parse_image_id(&path)?;
    let want = query.mode()?;
    Ok(HttpResponse::Ok().json(avatar_body(&state.cache, &image, want).await?))
}

/// The status body of `image` in mode `want` (default: its most recent upload); also the
/// `data` of its webhooks.
pub async fn avatar_body(
    cache: &Cache,
    image: &ImageHash,
    want: Option<PreprocessMode>,
) -> Result<AvatarStatusResponse, ApiError> {
    let records = avatar_records(cache, image).await?;
    let chosen = match want {
        Some(m) => records.iter().find(|r| r.mode == m),
        None => records.iter().max_by_key(|r| r.created_ms),
    };
    let Some(rec) = chosen else {
        return Err(ApiError::new(Code::ImageNotFound, format!("no upload of image {image} for that mode")));
    };
    Ok(AvatarStatusResponse {
        image_id: image.to_string(),
        status: rec.status,
        preprocess_mode: rec.mode.as_str().into(),
        error: rec.error.clone(),
        timings: seconds_map(&rec.timings_ms),
        width: rec.width,
        height: rec.height,
        faces_found: rec.faces_found,
        landmark_model: rec.landmark_model.clone(),
        modes: records
            .iter()
            .map(|r| ModeStatus { preprocess_mode: r.mode.as_str().into(), status: r.status, error: r.error.clone() })
            .collect(),
        cached: cached_entries(cache, image).await?,
        webhook: rec.webhook,
        performance_ready: crate::performance::image_seconds(rec),
    })
}

/// Erase an avatar and everything derived from it.
///
/// A face is biometric data: this removes every cache entry of the image (analysis, crops,
/// engine state, gestures, visemes, motion, videos, status records, idle loop), every session
/// made from it (unfinished ones are cancelled first) with its live stream and its audio, and
/// the blobs: the original, its videos and thumbnails, its idle loops. Jobs still running for
/// it drop their results. Uploading the same bytes again starts from nothing.
#[utoipa::path(
    delete,
    path = "/{image_id}",
    tag = "avatar",
    params(("image_id" = String, Path, description = "The id returned by the upload")),
    responses(
        (status = 200, description = "Erased: what was removed", body = Erased),
        (status = 400, description = "Malformed image_id", body = ErrorBody),
        (status = 404, description = "Nothing of this image is stored", body = ErrorBody),
    )
)]
#[tracing::instrument(skip_all, fields(image_id = %path.as_str()))]
pub async fn delete(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    if let Some(not_allowed) = super::edge::literal_elsewhere(&req) {
        return Ok(not_allowed);
    }
    let image = parse_image_id(&path)?;
    match crate::erase::erase_avatar(&state.cache, &state.blobs, &image).await.map_err(ApiError::internal)? {
        Some(erased) => {
            tracing::info!(keys = erased.redis_keys, blobs = erased.blobs, sessions = erased.sessions, "avatar erased");
            Ok(HttpResponse::Ok().json(erased))
        }
        None => Err(ApiError::new(Code::ImageNotFound, format!("nothing of image {image} is stored"))),
    }
}

/// Every mode's record for `image` (in crop, resize, full order).
pub async fn avatar_records(cache: &Cache, image: &ImageHash) -> Result<Vec<AvatarRecord>, ApiError> {
    let mut out = Vec::new();
    for mode in [PreprocessMode::Crop, PreprocessMode::Resize, PreprocessMode::Full] {
        if let Some(r) = cache.peek::<AvatarRecord>(&Key::avatar(image, mode.as_str())).await? {
            out.push(r);
        }
    }
    if out.is_empty() {
        return Err(ApiError::new(Code::ImageNotFound, format!("image {image} was never uploaded (or has expired)")));
    }
    Ok(out)
}

/// Which image-side cache entries exist, named like their keys minus namespace and image id.
async fn cached_entries(cache: &Cache, image: &ImageHash) -> Result<Vec<String>, ApiError> {
    let mut candidates: Vec<(String, Key)> = vec![
        ("face_detection".into(), Key::face_detection(image)),
        ("landmarks".into(), Key::landmarks(image)),
        ("gestures".into(), Key::gestures(image)),
        ("visemes".into(), Key::visemes(image)),
    ];
    for mode in ["crop", "resize", "full"] {
        candidates.push((format!("3dmm_coeffs:{mode}"), Key::coeffs_3dmm(image, mode)));
        for size in [256, 512] {
            candidates.push((format!("face_crop:{mode}:{size}"), Key::face_crop(image, mode, size)));
            for engine in ["classic", "sadtalker"] {
                candidates.push((
                    format!("source_state:{mode}:{size}:{engine}"),
                    Key::source_state(image, mode, size, engine),
                ));
            }
        }
    }
    let mut pipe = redis::pipe();
    for (_, key) in &candidates {
        pipe.exists(cache.namespace().key(key));
    }
    let found: Vec<bool> = pipe.query_async(&mut cache.connection()).await?;
    Ok(candidates.into_iter().zip(found).filter(|(_, f)| *f).map(|((label, _), _)| label).collect())
}

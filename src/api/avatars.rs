//! `/api/avatars`: the uploaded faces, newest first, a page at a time, each with the state of
//! every mode it was uploaded for, when it was first uploaded and the bytes its blobs hold.

use super::avatar::{avatar_records, ModeStatus};
use crate::blobs::BlobStore;
use crate::erase::avatars_key;
use crate::errors::{ApiError, Code, ErrorBody};
use crate::state::AppState;
use actix_web::{web, HttpResponse};
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, OpenApi, ToSchema};
use vipavatar_cache::ImageHash;

#[derive(OpenApi)]
#[openapi(paths(list), components(schemas(AvatarList, AvatarSummary, ModeStatus, ErrorBody)))]
pub struct AvatarsApi;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("", web::get().to(list));
}

const MAX_PER_PAGE: u64 = 100;
const MAX_PAGE: u64 = 1_000_000;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// 1-based page, 1..=1000000 (default 1).
    #[param(minimum = 1, maximum = 1_000_000)]
    page: Option<u64>,
    /// Avatars per page, 1..=100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    per_page: Option<u64>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AvatarSummary {
    pub image_id: String,
    /// Milliseconds since the Unix epoch of its first upload.
    pub created_ms: u64,
    /// Every mode it was uploaded for, with its state.
    pub modes: Vec<ModeStatus>,
    /// Bytes of its blobs: the original, its videos and thumbnails, its idle loops.
    pub bytes: u64,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AvatarList {
    pub avatars: Vec<AvatarSummary>,
    pub page: u64,
    pub per_page: u64,
    /// Avatars in all pages.
    pub total: u64,
}

/// The uploaded avatars, newest first.
#[utoipa::path(
    get,
    path = "",
    tag = "avatar",
    params(ListQuery),
    responses(
        (status = 200, description = "One page of avatars", body = AvatarList),
        (status = 400, description = "Invalid page or per_page", body = ErrorBody),
    )
)]
pub async fn list(state: web::Data<AppState>, query: web::Query<ListQuery>) -> Result<HttpResponse, ApiError> {
    let page = query.page.unwrap_or(1);
    let per_page = query.per_page.unwrap_or(20);
    if !(1..=MAX_PAGE).contains(&page) || !(1..=MAX_PER_PAGE).contains(&per_page) {
        return Err(ApiError::new(Code::InvalidField, "`page` must be 1..=1000000 and `per_page` 1..=100"));
    }
    let key = avatars_key(state.cache.namespace());
    let mut conn = state.cache.connection();
    let start = (page - 1).saturating_mul(per_page);
    let stop = start.saturating_add(per_page - 1);
    let (start, stop) = (start.min(i64::MAX as u64) as isize, stop.min(i64::MAX as u64) as isize);
    let members: Vec<(String, f64)> = conn.zrevrange_withscores(&key, start, stop).await?;
    let total: u64 = conn.zcard(&key).await?;
    let mut avatars = Vec::new();
    for (id, score) in members {
        let Ok(image) = ImageHash::parse(&id) else { continue };
        // Its records expired (tier 1): it is no longer an avatar; drop it from the index.
        let records = match avatar_records(&state.cache, &image).await {
            Ok(r) => r,
            Err(e) if e.code == Code::ImageNotFound => {
                let _: () = conn.zrem(&key, &id).await?;
                continue;
            }
            Err(e) => return Err(e),
        };
        avatars.push(AvatarSummary {
            image_id: id,
            created_ms: score as u64,
            modes: records
                .iter()
                .map(|r| ModeStatus {
                    preprocess_mode: r.mode.as_str().into(),
                    status: r.status,
                    error: r.error.clone(),
                })
                .collect(),
            bytes: bytes_held(&state.blobs, &image).await?,
        });
    }
    Ok(HttpResponse::Ok().json(AvatarList { avatars, page, per_page, total }))
}

/// Bytes of the blobs derived from `image` (its sessions' audio is not counted: it may be shared).
async fn bytes_held(blobs: &BlobStore, image: &ImageHash) -> Result<u64, ApiError> {
    let mut total = 0;
    for prefix in [format!("images/{image}"), format!("videos/{image}-"), format!("idle/{image}-")] {
        total += blobs.list(&prefix).await?.iter().map(|l| l.bytes).sum::<u64>();
    }
    Ok(total)
}

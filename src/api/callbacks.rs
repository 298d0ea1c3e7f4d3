//! `callback_url` and `metadata` on upload and generate: validated at the request (a signing
//! secret must be configured; the URL passes the fetch guard's static checks; `metadata` is a
//! JSON object), registered on the session or avatar, and announced when it finishes, by the
//! worker that finished it, or here when it already had (see [`crate::webhooks`]).

use super::avatar::avatar_body;
use super::multipart::Form;
use super::vip::session_body;
use crate::blobs::BlobStore;
use crate::config::Config;
use crate::errors::{ApiError, Code};
use crate::records::{AvatarRecord, AvatarStatus, SessionRecord, SessionStatus};
use crate::state::AppState;
use crate::webhooks::{self, Callback, Event, Target};
use vipavatar_cache::{Cache, ImageHash, Key};
use vipavatar_pipeline::engine::PreprocessMode;

/// The request's callback, if it sent one.
pub fn parse(state: &AppState, form: &Form) -> Result<Option<Callback>, ApiError> {
    let metadata = match form.text("metadata") {
        None => None,
        Some(m) => match serde_json::from_str::<serde_json::Value>(m) {
            Ok(v @ serde_json::Value::Object(_)) => Some(v.to_string()),
            _ => return Err(ApiError::new(Code::InvalidField, "`metadata` must be a JSON object")),
        },
    };
    // `metadata` alone is valid (it travels only with webhooks, so it is not kept).
    let Some(url) = form.text("callback_url") else { return Ok(None) };
    if state.config.webhooks.webhook_secret.as_ref().is_none_or(|s| s.is_empty()) {
        return Err(ApiError::new(
            Code::InvalidField,
            "`callback_url`: this server signs no webhooks (VIPAVATAR_WEBHOOK_SECRET is not set)",
        ));
    }
    let parsed = state.fetcher.check_url(url).map_err(|e| super::inputs::fetch_error("callback_url", e))?;
    Ok(Some(Callback { url: parsed.to_string(), metadata }))
}

/// Register `cb` on `target`; if the target finished meanwhile, announce it now.
pub async fn attach(state: &AppState, target: Target, cb: Option<Callback>) -> Result<(), ApiError> {
    let Some(cb) = cb else { return Ok(()) };
    let mut conn = state.cache.connection();
    webhooks::register(&mut conn, &state.config, &target, &cb).await?;
    match &target {
        Target::Session(id) => {
            if let Some(rec) = state.cache.peek::<SessionRecord>(&Key::session(id)).await? {
                if rec.is_finished() {
                    announce_session(&state.cache, &state.config, &state.blobs, &rec).await;
                }
            }
        }
        Target::Avatar { image, mode } => {
            let rec = state.cache.peek::<AvatarRecord>(&Key::avatar(image, mode.as_str())).await?;
            if rec.is_some_and(|r| r.status != AvatarStatus::Processing) {
                announce_avatar(&state.cache, image, *mode).await;
            }
        }
    }
    Ok(())
}

/// Queue the webhooks of a finished session (`video.ready` / `video.failed`); failures are logged.
pub async fn announce_session(cache: &Cache, config: &Config, blobs: &BlobStore, rec: &SessionRecord) {
    let event = match rec.status {
        SessionStatus::Ready => Event::VideoReady,
        SessionStatus::Failed => Event::VideoFailed,
        _ => return,
    };
    let body = match session_body(config, blobs, rec).await {
        Ok(b) => serde_json::to_value(b).unwrap_or_default(),
        Err(e) => {
            tracing::warn!(error = %e, "could not build a webhook body");
            return;
        }
    };
    let target = Target::Session(rec.id.clone());
    if let Err(e) = webhooks::announce(&mut cache.connection(), cache.namespace(), target, event, &body).await {
        tracing::warn!(error = %e, session = %rec.id, "could not queue the session's webhooks");
    }
}

/// Queue the webhooks of a finished avatar (`avatar.ready` / `avatar.failed`).
pub async fn announce_avatar(cache: &Cache, image: &ImageHash, mode: PreprocessMode) {
    let body = match avatar_body(cache, image, Some(mode)).await {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(error = %e, "could not build a webhook body");
            return;
        }
    };
    let event = match body.status {
        AvatarStatus::Ready => Event::AvatarReady,
        AvatarStatus::Failed => Event::AvatarFailed,
        AvatarStatus::Processing => return,
    };
    let data = serde_json::to_value(&body).unwrap_or_default();
    let target = Target::Avatar { image: image.clone(), mode };
    if let Err(e) = webhooks::announce(&mut cache.connection(), cache.namespace(), target, event, &data).await {
        tracing::warn!(error = %e, %image, "could not queue the avatar's webhooks");
    }
}

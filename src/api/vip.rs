//! `/api/vip`: generate a video for an uploaded avatar from an audio file, poll the session, and
//! download the MP4 (HTTP Range supported).

use super::avatar::avatar_records;
use super::body::read_body;
use super::callbacks;
use super::delivery::{download_url, serve_blob, Delivery};
use super::inputs::{self, Input};
use super::media::check_audio;
use super::multipart::{parse_bool, Form};
use super::vip_docs::{GenerateForm, GenerateJson};
use super::{parse_image_id, seconds_map, Guard};
use crate::blobs::BlobStore;
use crate::config::{Config, EngineChoice};
use crate::errors::{ApiError, Code, ErrorBody};
use crate::jobs::generate::cached_video;
use crate::jobs::{counters, Job, Queue};
use crate::records::{
    now_ms, AvatarRecord, AvatarStatus, SessionRecord, SessionRequest, SessionStatus, VideoRef, WebhookState,
};
use crate::state::AppState;
use crate::webhooks::Target;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use utoipa::{OpenApi, ToSchema};
use vipavatar_cache::{AudioHash, ImageHash, Key, OptionsHash, SessionId};
use vipavatar_pipeline::audio::{decode_audio, AudioLimits};
use vipavatar_pipeline::engine::{EngineKind, Enhancer, GenerateOptions, PreprocessMode, Quality};

#[derive(OpenApi)]
#[openapi(
    paths(
        generate,
        status,
        download,
        thumbnail,
        cancel,
        super::stream::stream,
        super::hls::playlist,
        super::hls::init,
        super::hls::segment
    ),
    components(schemas(
        GenerateForm,
        GenerateJson,
        GenerateResponse,
        SessionStatusResponse,
        Performance,
        SessionStatus,
        WebhookState,
        Enhancer,
        Quality,
        EngineChoice,
        PreprocessMode,
        ErrorBody
    ))
)]
pub struct VipApi;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/generate", web::post().to(generate))
        .route("/status/{session_id}", web::get().to(status))
        .route("/download/{session_id}", web::get().to(download))
        .route("/stream/{session_id}", web::get().to(super::stream::stream))
        .route("/stream/{session_id}/index.m3u8", web::get().to(super::hls::playlist))
        .route("/stream/{session_id}/init.mp4", web::get().to(super::hls::init))
        .route("/stream/{session_id}/seg/{segment}", web::get().to(super::hls::segment))
        .route("/thumbnail/{session_id}", web::get().to(thumbnail))
        .route("/session/{session_id}", web::delete().to(cancel));
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct GenerateResponse {
    pub session_id: String,
    pub status: SessionStatus,
    /// Seconds until the video is expected (0 when it came from the cache).
    pub estimated_time: f64,
    /// True when the finished video was already cached for this image, audio and options.
    pub cached: bool,
    /// Watch the video while it renders: a fragmented MP4 that a `<video>` element plays at
    /// once (the finished file once the session is ready and its stream has expired).
    pub stream_url: String,
    /// The same live stream as an HLS playlist (fMP4 segments, about 1 s each).
    pub hls_url: String,
    /// True when an identical request (same image, audio and options) was already rendering:
    /// this is its session, and nothing new was queued.
    #[serde(default)]
    pub joined: bool,
    /// Expected speedup from the cache, measured: `(expected seconds + the avatar's measured
    /// image-side seconds) / expected seconds` for a cached avatar (1 when it is not cached);
    /// for a cached video, the measured time of the whole render saved over this answer's time.
    pub performance_boost: f64,
}

/// Where a session's live stream is served.
pub fn stream_url(id: &SessionId) -> String {
    format!("/api/vip/stream/{id}")
}

/// Where a session's live stream is served as HLS.
pub fn hls_url(id: &SessionId) -> String {
    format!("/api/vip/stream/{id}/index.m3u8")
}

/// Read the option fields (syntax only; ranges are checked by `GenerateOptions::validate`).
fn options_from(form: &Form) -> Result<(GenerateOptions, Option<EngineKind>, Option<PreprocessMode>), ApiError> {
    let d = GenerateOptions::default();
    let enhancer = form.parse("enhancer", &Enhancer::expected(), Enhancer::parse)?;
    let quality = form.parse("quality", &Quality::expected(), Quality::parse)?;
    let opts = GenerateOptions {
        size: form.parse("size", "256 or 512", |s| s.parse().ok())?.unwrap_or(d.size),
        preprocess: d.preprocess,
        still_mode: form.parse("still_mode", "true or false", parse_bool)?.unwrap_or(d.still_mode),
        expression_scale: form
            .parse("expression_scale", "a number", |s| s.parse::<f32>().ok())?
            .unwrap_or(d.expression_scale),
        pose_style: form.parse("pose_style", "an integer 0..=45", |s| s.parse().ok())?.unwrap_or(d.pose_style),
        enhancer: enhancer.unwrap_or(d.enhancer),
        quality: quality.unwrap_or(d.quality),
        seed: form.parse("seed", "a non-negative integer", |s| s.parse().ok())?.unwrap_or(d.seed),
    };
    let engine = form.parse("engine", &EngineChoice::expected(), EngineChoice::parse)?.and_then(EngineChoice::fixed);
    let mode = form.parse("preprocess_mode", &PreprocessMode::expected(), PreprocessMode::parse)?;
    Ok((opts, engine, mode))
}

/// Generate a talking-head video.
///
/// Needs an uploaded `image_id` and an audio file. Only the audio-dependent work runs when the
/// avatar is cached (the `vip` queue). If the avatar is still being precomputed the job waits
/// for it. The same image, audio and options again return the cached video at once; while an
/// identical request is still rendering, this one joins its session (`joined: true`) instead of
/// rendering the same video twice.
#[utoipa::path(
    post,
    path = "/generate",
    tag = "vip",
    request_body(content((GenerateForm = "multipart/form-data"), (GenerateJson = "application/json"))),
    responses(
        (status = 200, description = "Video already cached: the session is ready", body = GenerateResponse),
        (status = 202, description = "Queued", body = GenerateResponse),
        (status = 400, description = "Missing or invalid field or option, `invalid_base64`, or `url_forbidden` (the URL is not http(s), or reaches a private address)", body = ErrorBody),
        (status = 401, description = "Missing or wrong X-API-Key", body = ErrorBody),
        (status = 404, description = "Unknown image_id", body = ErrorBody),
        (status = 413, description = "Audio larger than the byte or duration limit", body = ErrorBody),
        (status = 415, description = "Not a recognised audio file, or not multipart", body = ErrorBody),
        (status = 422, description = "Audio does not decode, the option is unsupported by the engine, the avatar failed, or `url_fetch_failed`", body = ErrorBody),
        (status = 429, description = "Too many jobs are waiting (`overloaded`, with Retry-After)", body = ErrorBody),
        (status = 503, description = "No live worker serves the engine (`no_worker`), or the job store (Redis) is unavailable (`redis_unavailable`); both with Retry-After", body = ErrorBody),
    )
)]
#[tracing::instrument(skip_all, fields(session_id, image_id))]
pub async fn generate(
    req: HttpRequest,
    state: web::Data<AppState>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let started = Instant::now();
    let input = Input::audio(state.config.limits.max_audio_bytes);
    let mut form = read_body(&req, payload, &input.limits()).await?;
    let image = parse_image_id(form.text("image_id").ok_or_else(|| super::multipart::missing("image_id"))?)?;
    tracing::Span::current().record("image_id", image.as_str());
    let (mut opts, engine_req, mode_req) = options_from(&form)?;
    let callback = callbacks::parse(&state, &form)?;
    let source = inputs::pick(&mut form, &input, &state.fetcher)?;
    opts.validate()?;
    let engine_kind = crate::jobs::registry::pick_engine(&state, engine_req, &opts).await?;

    // The avatar: the requested mode, else the most recent upload of the image.
    // An expired status record with the original still stored is rebuilt (precompute again).
    let records = match avatar_records(&state.cache, &image).await {
        Ok(r) => r,
        Err(e)
            if e.code == Code::ImageNotFound
                && state.blobs.exists(&BlobStore::image_name(&image)).await.unwrap_or(false) =>
        {
            Vec::new()
        }
        Err(e) => return Err(e),
    };
    let mode =
        mode_req.unwrap_or_else(|| records.iter().max_by_key(|r| r.created_ms).map(|r| r.mode).unwrap_or_default());
    opts.preprocess = mode;
    let avatar = records.iter().find(|r| r.mode == mode);
    if let Some(error) = avatar.and_then(AvatarRecord::remembered_failure) {
        return Err(ApiError::from(error.clone()));
    }
    // A server-side failure is not remembered: precompute again (as for a new mode).
    let avatar = avatar.filter(|a| a.status != AvatarStatus::Failed);
    let image_seconds = avatar.and_then(crate::performance::image_seconds).unwrap_or(0.0);

    let field = source.field(&input);
    let bytes = inputs::load(&state, &input, source).await?;
    check_audio(field, &bytes)?;
    let bytes = std::sync::Arc::new(bytes);
    let audio = AudioHash::of(&bytes);
    let options_hash = OptionsHash::parse(&opts.options_hash(engine_kind)).map_err(ApiError::internal)?;
    let id = SessionId::parse(&uuid::Uuid::new_v4().simple().to_string()).map_err(ApiError::internal)?;
    tracing::Span::current().record("session_id", id.as_str());
    let new_record = |options, audio_seconds| {
        let req = SessionRequest {
            image: image.clone(),
            audio: audio.clone(),
            engine: engine_kind,
            options,
            options_hash: options_hash.clone(),
            audio_seconds,
        };
        SessionRecord::queued(id.clone(), req)
    };

    // The finished video first: these exact bytes were decoded and validated when it was made,
    // so a hit answers without decoding the audio again. Else claim the render (single flight):
    // an identical request already in flight, on any node, is joined instead.
    let flight = Key::inflight(&image, &audio, &options_hash);
    let mut guard = Guard::new(&state);
    match single_flight(&state, &flight, &id, &image, &audio, &options_hash).await? {
        Flight::Cached(video) => {
            let mut rec = new_record(opts, video.duration_s);
            rec.status = SessionStatus::Ready;
            rec.progress = 1.0;
            rec.started_ms = Some(rec.created_ms);
            rec.finished_ms = Some(now_ms());
            rec.cache_hits = vec!["video".into()];
            // Saved: the avatar's image side and the whole render this answer did not run.
            let render = estimate_generate(&state, video.duration_s, Queue::Vip).await;
            rec.video = Some(video);
            rec.from_cache = true;
            let saved = image_seconds + render;
            let answered = started.elapsed().as_secs_f64();
            rec.saved_s = Some(saved);
            let boost = crate::performance::speedup(answered, saved);
            crate::performance::record(&state.cache, boost).await;
            state.cache.put(&Key::session(&id), &rec).await?;
            index_session(&state, &image, &id).await?;
            callbacks::attach(&state, Target::Session(id.clone()), callback).await?;
            return Ok(HttpResponse::Ok().json(GenerateResponse {
                stream_url: stream_url(&id),
                hls_url: hls_url(&id),
                session_id: id.to_string(),
                status: SessionStatus::Ready,
                estimated_time: 0.0,
                cached: true,
                joined: false,
                performance_boost: boost,
            }));
        }
        Flight::Joined(rec) => {
            tracing::Span::current().record("session_id", rec.id.as_str());
            callbacks::attach(&state, Target::Session(rec.id.clone()), callback).await?;
            let estimated_time = estimate_generate(&state, rec.audio_seconds, Queue::Vip).await;
            return Ok(HttpResponse::Accepted().json(GenerateResponse {
                stream_url: stream_url(&rec.id),
                hls_url: hls_url(&rec.id),
                session_id: rec.id.to_string(),
                status: rec.status,
                estimated_time,
                cached: false,
                joined: true,
                performance_boost: crate::performance::speedup(estimated_time, image_seconds),
            }));
        }
        Flight::Claimed => guard.release_claim(flight, id.clone()),
    }
    super::check_overload(&state).await?;

    // Decoded once, here: the worker reads these samples instead of decoding again.
    let b = bytes.clone();
    let audio_limits = AudioLimits { max_seconds: state.config.limits.max_audio_seconds, ..AudioLimits::default() };
    let clip =
        tokio::task::spawn_blocking(move || decode_audio(&b, &audio_limits)).await.map_err(ApiError::internal)??;
    let rec = new_record(opts, clip.duration_s());

    // Store first, then enqueue; the guard undoes both (and the claim) if anything below fails.
    let audio_name = BlobStore::audio_name(&audio);
    if state.blobs.put_if_absent(&audio_name, bytes::Bytes::from(bytes.to_vec())).await? {
        guard.remove_blob(audio_name);
    }
    let pcm_key = Key::audio_pcm(&audio);
    state.cache.put(&pcm_key, &clip.samples[..]).await?;
    guard.remove_key(pcm_key);
    let mut queue = Queue::Vip;
    if avatar.is_none_or(|a| a.status != AvatarStatus::Ready) {
        queue = Queue::Standard;
    }
    if avatar.is_none() {
        // A new mode for a known image: precompute it first (the job waits for it).
        let key = Key::avatar(&image, mode.as_str());
        state.cache.put(&key, &AvatarRecord::processing(image.clone(), mode)).await?;
        guard.remove_key(key);
        state.queue.enqueue(Queue::Standard, &Job::Precompute { image: image.clone(), mode }).await?;
    }
    let skey = Key::session(&id);
    state.cache.put(&skey, &rec).await?;
    guard.remove_key(skey);
    index_session(&state, &image, &id).await?;
    state.queue.enqueue(queue, &Job::Generate { session: id.clone() }).await?;
    guard.disarm();
    callbacks::attach(&state, Target::Session(id.clone()), callback).await?;
    let estimated_time = estimate_generate(&state, rec.audio_seconds, queue).await;
    Ok(HttpResponse::Accepted().json(GenerateResponse {
        stream_url: stream_url(&id),
        hls_url: hls_url(&id),
        session_id: id.to_string(),
        status: SessionStatus::Queued,
        estimated_time,
        cached: false,
        joined: false,
        performance_boost: match queue {
            Queue::Vip => crate::performance::speedup(estimated_time, image_seconds),
            Queue::Standard => 1.0,
        },
    }))
}

/// Add `id` to the face's session index (`sessions_of:{image}`, read when the face is erased).
async fn index_session(state: &AppState, image: &ImageHash, id: &SessionId) -> Result<(), ApiError> {
    let key = crate::erase::sessions_key(state.cache.namespace(), image);
    let ttl = state.config.ttl.ttl_tier1_secs.max(state.config.ttl.ttl_session_secs);
    let mut pipe = redis::pipe();
    pipe.cmd("SADD").arg(&key).arg(id.as_str()).ignore();
    if ttl > 0 {
        pipe.cmd("EXPIRE").arg(&key).arg(ttl).ignore();
    }
    pipe.query_async::<()>(&mut state.cache.connection()).await?;
    Ok(())
}

/// How long a request waits for the session of the identical request that claimed the render
/// to be stored (that request is still validating its audio) before taking the claim over.
const CLAIM_WAIT: Duration = Duration::from_secs(10);

/// What the single-flight check found for one `video:` key.
enum Flight {
    /// The video is already made.
    Cached(VideoRef),
    /// An identical request is rendering it: its (unfinished) session.
    Joined(Box<SessionRecord>),
    /// This request holds `inflight:` now and renders it.
    Claimed,
}

/// Single flight on the `video:` key: the cached video, else join the session that holds
/// `inflight:{image}:{audio}:{options}` while it is unfinished, else claim it for `id` (SET NX,
/// the session TTL). A claim whose session finished (failed, or its video is gone) or never
/// appeared within [`CLAIM_WAIT`] is taken over.
async fn single_flight(
    state: &AppState,
    flight: &Key,
    id: &SessionId,
    image: &ImageHash,
    audio: &AudioHash,
    options: &OptionsHash,
) -> Result<Flight, ApiError> {
    let start = Instant::now();
    loop {
        if let Some(video) = cached_video(&state.cache, &state.blobs, image, audio, options).await? {
            return Ok(Flight::Cached(video));
        }
        let Some(holder) = state.cache.claim(flight, id.as_str()).await? else {
            return Ok(Flight::Claimed);
        };
        let session = match SessionId::parse(&holder) {
            Ok(h) => state.cache.peek::<SessionRecord>(&Key::session(&h)).await?,
            Err(_) => None,
        };
        match session {
            Some(rec) if !rec.is_finished() => return Ok(Flight::Joined(Box::new(rec))),
            None if start.elapsed() < CLAIM_WAIT && SessionId::parse(&holder).is_ok() => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            // Finished (a ready one's video is checked again first) or abandoned: take it over.
            _ => {
                state.cache.release(flight, &holder).await?;
            }
        }
    }
}

/// Past generation speed (ms per audio second) times this audio, plus the jobs ahead. Called
/// after this request's job is queued: while no worker has claimed it, it is one of the waiting
/// jobs, and not ahead of itself.
async fn estimate_generate(state: &AppState, audio_seconds: f64, queue: Queue) -> f64 {
    let c = state.cache.counters().await.unwrap_or_default();
    let ms = c.get(counters::GENERATE_MS).copied().unwrap_or(0) as f64;
    let audio_ms = c.get(counters::GENERATE_AUDIO_MS).copied().unwrap_or(0) as f64;
    let per_audio_second = if audio_ms > 0.0 { ms / audio_ms } else { 1.0 };
    let this = per_audio_second * audio_seconds.max(0.1);
    let ahead = match state.queue.depth().await {
        Ok(d) if queue == Queue::Vip => d.vip.saturating_sub(1),
        Ok(d) => (d.vip + d.standard).saturating_sub(1),
        Err(_) => 0,
    };
    ((this * (1.0 + ahead as f64)) * 10.0).round() / 10.0
}

pub(crate) fn parse_session_id(s: &str) -> Result<SessionId, ApiError> {
    SessionId::parse(s).map_err(|e| ApiError::new(Code::InvalidSessionId, e.to_string()))
}

pub(crate) async fn load_session(state: &AppState, id: &SessionId) -> Result<SessionRecord, ApiError> {
    state
        .cache
        .peek::<SessionRecord>(&Key::session(id))
        .await?
        .ok_or_else(|| ApiError::new(Code::SessionNotFound, format!("session {id} does not exist (or has expired)")))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Performance {
    /// Seconds from the request to the finished video (or until now).
    pub total_time: f64,
    /// Seconds the job waited before a worker took it (or until now).
    pub queue_time: f64,
    /// Stage -> seconds.
    pub stages: BTreeMap<String, f64>,
    /// Cache kinds that were hits for this session.
    pub cache_hits: Vec<String>,
    /// Cache kinds that had to be computed.
    pub cache_misses: Vec<String>,
    /// Attempts the job took (a worker lost mid-job counts).
    pub attempts: u32,
    /// The worker that produced (or is producing) the video.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// Once ready: `(total_time + seconds the cache saved) / total_time`, measured (the saved
    /// seconds are the avatar's image-side precompute when this session found it cached, and
    /// also the whole render for a video that came from the cache).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub speedup: Option<f64>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SessionStatusResponse {
    pub session_id: String,
    pub status: SessionStatus,
    /// 0..1
    pub progress: f32,
    pub video_ready: bool,
    /// Where to download the MP4 once ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub download_url: Option<String>,
    /// The live stream (fragmented MP4), watchable from the first rendered chunk.
    pub stream_url: String,
    /// The same live stream as an HLS playlist.
    pub hls_url: String,
    /// Milliseconds from the request until the first video fragment could be watched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_frame_ms: Option<u64>,
    /// Frames rendered so far.
    pub frames_done: u64,
    /// Frames the video will have (0 until the job starts).
    pub frames_total: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
    pub image_id: String,
    pub engine: String,
    /// Audio length in seconds.
    pub audio_duration: f64,
    /// Video length in seconds (once ready).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub video_duration: Option<f64>,
    /// True when the video came straight from the cache.
    pub cached: bool,
    pub performance: Performance,
    /// The latest webhook delivery for this session's events (absent without a `callback_url`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookState>,
}

/// Status of a generate session.
#[utoipa::path(
    get,
    path = "/status/{session_id}",
    tag = "vip",
    params(("session_id" = String, Path, description = "The id returned by generate")),
    responses(
        (status = 200, description = "Current state", body = SessionStatusResponse),
        (status = 400, description = "Malformed session_id", body = ErrorBody),
        (status = 401, description = "Missing or wrong X-API-Key", body = ErrorBody),
        (status = 404, description = "Unknown or expired session", body = ErrorBody),
    )
)]
pub async fn status(state: web::Data<AppState>, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let id = parse_session_id(&path)?;
    let rec = load_session(&state, &id).await?;
    Ok(HttpResponse::Ok().json(session_body(&state.config, &state.blobs, &rec).await?))
}

/// The status body of a session; also the `data` of its webhooks.
pub async fn session_body(
    config: &Config,
    blobs: &BlobStore,
    rec: &SessionRecord,
) -> Result<SessionStatusResponse, ApiError> {
    let id = &rec.id;
    let now = now_ms();
    let secs = |from: u64, to: u64| to.saturating_sub(from) as f64 / 1e3;
    let ready = rec.status == SessionStatus::Ready;
    let download_url = match (&rec.video, ready) {
        (Some(v), true) => Some(download_url(config, blobs, id, &v.file).await?),
        _ => None,
    };
    Ok(SessionStatusResponse {
        session_id: id.to_string(),
        status: rec.status,
        progress: rec.progress.clamp(0.0, 1.0),
        video_ready: ready,
        download_url,
        stream_url: stream_url(id),
        hls_url: hls_url(id),
        first_frame_ms: rec.first_frame_ms,
        frames_done: rec.frames_done,
        frames_total: rec.frames_total,
        error: rec.error.clone(),
        image_id: rec.image.to_string(),
        engine: rec.engine.as_str().into(),
        audio_duration: rec.audio_seconds,
        video_duration: rec.video.as_ref().map(|v| v.duration_s),
        cached: rec.from_cache,
        performance: Performance {
            total_time: secs(rec.created_ms, rec.finished_ms.unwrap_or(now)),
            queue_time: secs(rec.created_ms, rec.started_ms.unwrap_or(now)),
            stages: seconds_map(&rec.stages_ms),
            cache_hits: rec.cache_hits.clone(),
            cache_misses: rec.cache_misses.clone(),
            attempts: rec.attempts,
            worker: rec.worker.clone(),
            speedup: match (ready, rec.saved_s) {
                (true, Some(saved)) => {
                    Some(crate::performance::speedup(secs(rec.created_ms, rec.finished_ms.unwrap_or(now)), saved))
                }
                _ => None,
            },
        },
        webhook: rec.webhook,
    })
}

/// The first frame of a finished session's video (JPEG).
#[utoipa::path(
    get,
    path = "/thumbnail/{session_id}",
    tag = "vip",
    params(("session_id" = String, Path, description = "The id returned by generate")),
    responses(
        (status = 200, description = "The thumbnail", content_type = "image/jpeg", body = Vec<u8>),
        (status = 307, description = "Object storage: redirect to a presigned URL (Location)"),
        (status = 404, description = "Unknown session, or it has no thumbnail", body = ErrorBody),
        (status = 409, description = "Not ready yet, failed or cancelled", body = ErrorBody),
    )
)]
pub async fn thumbnail(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_session_id(&path)?;
    let rec = load_session(&state, &id).await?;
    let video = ready_video(&id, rec)?;
    let Some(name) = video.thumbnail else {
        return Err(ApiError::new(Code::ThumbnailNotFound, format!("session {id} has no thumbnail")));
    };
    let d = Delivery {
        name: &name,
        mime: "image/jpeg",
        filename: format!("{id}.jpg"),
        gone: || ApiError::new(Code::ThumbnailNotFound, "the thumbnail of this session is no longer stored"),
    };
    serve_blob(&req, &state, d).await
}

/// Cancel a queued or running session.
///
/// A queued session never runs; a running one stops at its next chunk of frames, and its
/// temporary files and live stream are removed (no video is stored). Answers the session's
/// status, now `cancelled`.
#[utoipa::path(
    delete,
    path = "/session/{session_id}",
    tag = "vip",
    params(("session_id" = String, Path, description = "The id returned by generate")),
    responses(
        (status = 200, description = "Cancelled", body = SessionStatusResponse),
        (status = 404, description = "Unknown or expired session", body = ErrorBody),
        (status = 409, description = "Already finished (ready, failed or cancelled): `session_finished`", body = ErrorBody),
    )
)]
#[tracing::instrument(skip_all, fields(session_id = %path.as_str()))]
pub async fn cancel(state: web::Data<AppState>, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let id = parse_session_id(&path)?;
    let key = Key::session(&id);
    let mut rec = load_session(&state, &id).await?;
    if rec.is_finished() {
        let status = serde_json::to_value(rec.status).unwrap_or_default();
        return Err(ApiError::new(
            Code::SessionFinished,
            format!("session {id} is already {}", status.as_str().unwrap_or("finished")),
        ));
    }
    rec.status = SessionStatus::Cancelled;
    rec.finished_ms = Some(now_ms());
    let flag = crate::jobs::generate::cancel_key(state.cache.namespace(), &id);
    let ttl = state.config.ttl.ttl_session_secs.max(60);
    redis::cmd("SET").arg(flag).arg(1).arg("EX").arg(ttl).query_async::<()>(&mut state.cache.connection()).await?;
    state.cache.put(&key, &rec).await?;
    // An identical request must not join a cancelled session.
    let flight = Key::inflight(&rec.image, &rec.audio, &rec.options_hash);
    state.cache.release(&flight, id.as_str()).await?;
    tracing::info!("session cancelled");
    Ok(HttpResponse::Ok().json(session_body(&state.config, &state.blobs, &rec).await?))
}

/// The video of a ready session, or why there is none.
fn ready_video(id: &SessionId, rec: SessionRecord) -> Result<VideoRef, ApiError> {
    match (rec.status, rec.video) {
        (SessionStatus::Ready, Some(v)) => Ok(v),
        (SessionStatus::Cancelled, _) => {
            Err(ApiError::new(Code::SessionCancelled, format!("session {id} was cancelled")))
        }
        (SessionStatus::Failed, _) => {
            let why = rec.error.map(|e| e.message).unwrap_or_default();
            Err(ApiError::new(Code::VideoFailed, format!("session {id} failed: {why}")))
        }
        _ => Err(ApiError::new(Code::VideoNotReady, format!("session {id} is not ready yet")).retry_after(2)),
    }
}

/// Download the finished MP4.
///
/// Supports HTTP Range requests (206 partial content), so browsers can seek. With object
/// storage it answers `307` to a presigned URL of the file (Range works there too).
#[utoipa::path(
    get,
    path = "/download/{session_id}",
    tag = "vip",
    params(("session_id" = String, Path, description = "The id returned by generate")),
    responses(
        (status = 200, description = "The video", content_type = "video/mp4", body = Vec<u8>),
        (status = 206, description = "The requested byte range", content_type = "video/mp4", body = Vec<u8>),
        (status = 307, description = "Object storage: redirect to a presigned URL of the video (Location)"),
        (status = 401, description = "Missing or wrong X-API-Key", body = ErrorBody),
        (status = 404, description = "Unknown session, or its video file is gone", body = ErrorBody),
        (status = 409, description = "Not ready yet, or failed", body = ErrorBody),
    )
)]
pub async fn download(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_session_id(&path)?;
    let rec = load_session(&state, &id).await?;
    serve_video(&req, &state, &id, rec).await
}

/// The finished MP4 of a session (Range supported), or why there is none yet.
pub(crate) async fn serve_video(
    req: &HttpRequest,
    state: &AppState,
    id: &SessionId,
    rec: SessionRecord,
) -> Result<HttpResponse, ApiError> {
    let video = ready_video(id, rec)?;
    let d = Delivery {
        name: &video.file,
        mime: "video/mp4",
        filename: format!("{id}.mp4"),
        gone: || {
            ApiError::new(Code::SessionNotFound, "the video of this session is no longer stored; generate it again")
        },
    };
    serve_blob(req, state, d).await
}

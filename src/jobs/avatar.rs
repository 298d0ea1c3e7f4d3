//! The image side: analysis (`face_detection`, `landmarks`, `3dmm_coeffs`) and per-engine
//! prepared state (`face_crop`, `source_state`, `gestures`, `visemes`), each read from the cache or
//! rebuilt from the stored original image; the precompute job that fills them after an upload,
//! and the idle job that renders the avatar's idle loop after it.

use super::{counters, internal, Job, JobContext, JobError, Queue, Tracker};
use crate::blobs::BlobStore;
use crate::errors::{ApiError, Code};
use crate::records::{now_ms, AvatarRecord, AvatarStatus, IdleEntry, IdleRef};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
use vipavatar_cache::{ImageHash, Key, Kind};
use vipavatar_pipeline::engine::{
    AvatarInput, Engine, EngineKind, GenerateOptions, PreparedAvatar, PreprocessMode, Quality, StateKind,
};
use vipavatar_pipeline::face::FaceDetection;
use vipavatar_pipeline::image::RgbImage;
use vipavatar_pipeline::precompute::AvatarAnalysis;
use vipavatar_pipeline::video::{render_idle, STOPPED};
use vipavatar_pipeline::PipelineError;

/// `face_detection:{image}`: the chosen face and how many were found.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DetectionEntry {
    pub face: FaceDetection,
    pub faces_found: u32,
}

/// `3dmm_coeffs:{image}:{mode}`: the analysis (crop/transform parameters, pose) plus any engine's
/// 3DMM coefficient blob.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CoeffsEntry {
    pub analysis: AvatarAnalysis,
    pub engine_coeffs: Vec<(EngineKind, Vec<u8>)>,
}

/// `source_state:{image}:{mode}:{size}:{engine}`: the engine's own state plus a digest of every
/// other part it produced, so a part overwritten or evicted elsewhere is detected and rebuilt.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SourceStateEntry {
    pub state: Option<Vec<u8>>,
    pub parts: Vec<(StateKind, [u8; 32])>,
}

/// A decoded avatar: the image the analysis refers to, and the analysis.
pub struct Avatar {
    pub image: RgbImage,
    pub analysis: AvatarAnalysis,
}

fn part_key(kind: StateKind, image: &ImageHash, mode: PreprocessMode, size: u32) -> Option<Key> {
    match kind {
        StateKind::FaceCrop => Some(Key::face_crop(image, mode.as_str(), size)),
        StateKind::Gestures => Some(Key::gestures(image)),
        StateKind::Visemes => Some(Key::visemes(image)),
        StateKind::SourceState | StateKind::Coeffs3dmm => None,
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    *blake3::hash(bytes).as_bytes()
}

/// Read the original image bytes (kept for rebuilding), or a final error if they are gone.
async fn original(ctx: &JobContext, image: &ImageHash) -> Result<Vec<u8>, JobError> {
    let bytes = ctx.blobs.read(&BlobStore::image_name(image)).await?;
    bytes.map(|b| b.to_vec()).ok_or_else(|| {
        JobError::Final(
            ApiError::new(
                Code::ImageNotFound,
                format!("the original of image {image} is no longer stored; upload it again"),
            )
            .body(),
        )
    })
}

/// Decode the original and bring it to the size the analysis refers to (precompute upscales
/// small images).
async fn decode_for(ctx: &JobContext, image: &ImageHash, analysis: &AvatarAnalysis) -> Result<RgbImage, JobError> {
    let bytes = original(ctx, image).await?;
    let max = ctx.config.limits.max_image_pixels;
    let (w, h) = (analysis.width, analysis.height);
    let img = tokio::task::spawn_blocking(move || -> vipavatar_pipeline::Result<RgbImage> {
        let img = vipavatar_pipeline::image::decode(&bytes, max)?;
        if (img.width, img.height) == (w, h) {
            Ok(img)
        } else {
            vipavatar_pipeline::image::resize(&img, w, h)
        }
    })
    .await
    .map_err(internal)??;
    Ok(img)
}

/// The analysis of `image` in `mode`: from `3dmm_coeffs`, else precompute from the original.
pub async fn ensure_analysis(
    ctx: &JobContext,
    t: &mut Tracker,
    image: &ImageHash,
    mode: PreprocessMode,
) -> Result<Arc<Avatar>, JobError> {
    let key = Key::coeffs_3dmm(image, mode.as_str());
    if let Some(entry) = ctx.cache.get::<CoeffsEntry>(&key).await? {
        t.hit(Kind::Coeffs3dmm);
        let start = Instant::now();
        let img = decode_for(ctx, image, &entry.analysis).await?;
        t.stage("decode_image", start);
        return Ok(Arc::new(Avatar { image: img, analysis: entry.analysis }));
    }
    t.miss(Kind::Coeffs3dmm);
    let bytes = original(ctx, image).await?;
    let start = Instant::now();
    let pre = ctx.engines.precomputer().clone();
    let (img, analysis) = ctx.model.run(move || pre.run(&bytes, mode)).await?;
    let ms = start.elapsed().as_millis() as i64;
    t.stages_ms.extend(analysis.timings_ms.iter().cloned());
    ctx.cache.incr(counters::PRECOMPUTE_RUNS, 1).await?;
    ctx.cache.incr(counters::PRECOMPUTE_MS, ms).await?;
    let detection = DetectionEntry { face: analysis.face.clone(), faces_found: analysis.faces_found as u32 };
    ctx.cache.put(&Key::face_detection(image), &detection).await?;
    ctx.cache.put(&Key::landmarks(image), &analysis.landmarks).await?;
    ctx.cache.put(&key, &CoeffsEntry { analysis: analysis.clone(), engine_coeffs: Vec::new() }).await?;
    Ok(Arc::new(Avatar { image: img, analysis }))
}

/// Try to assemble `engine`'s prepared state for the avatar from the cache.
async fn cached_prepared(
    ctx: &JobContext,
    t: &mut Tracker,
    engine: EngineKind,
    image: &ImageHash,
    mode: PreprocessMode,
    size: u32,
) -> Result<Option<PreparedAvatar>, JobError> {
    let key = Key::source_state(image, mode.as_str(), size, engine.as_str());
    let Some(entry) = ctx.cache.get::<SourceStateEntry>(&key).await? else {
        t.miss(Kind::SourceState);
        return Ok(None);
    };
    t.hit(Kind::SourceState);
    let mut prepared = PreparedAvatar::default();
    if let Some(state) = entry.state {
        prepared.parts.push((StateKind::SourceState, state));
    }
    for (kind, want) in entry.parts {
        let bytes = match part_key(kind, image, mode, size) {
            Some(k) => {
                let got = ctx.cache.get::<Vec<u8>>(&k).await?;
                match &got {
                    Some(_) => t.hit(k.kind()),
                    None => t.miss(k.kind()),
                }
                got
            }
            None => {
                let coeffs = ctx.cache.peek::<CoeffsEntry>(&Key::coeffs_3dmm(image, mode.as_str())).await?;
                coeffs.and_then(|c| c.engine_coeffs.into_iter().find(|(k, _)| *k == engine).map(|(_, b)| b))
            }
        };
        match bytes {
            Some(b) if digest(&b) == want => prepared.parts.push((kind, b)),
            Some(_) => {
                tracing::info!(?kind, "cached part was replaced by another engine's; preparing again");
                return Ok(None);
            }
            None => return Ok(None),
        }
    }
    Ok(Some(prepared))
}

/// `engine`'s prepared state for the avatar: from the cache, else `Engine::prepare` (stored).
pub async fn ensure_prepared(
    ctx: &JobContext,
    t: &mut Tracker,
    engine: &Arc<dyn Engine>,
    image: &ImageHash,
    avatar: &Arc<Avatar>,
    size: u32,
) -> Result<PreparedAvatar, JobError> {
    let mode = avatar.analysis.preprocess;
    if let Some(p) = cached_prepared(ctx, t, engine.kind(), image, mode, size).await? {
        return Ok(p);
    }
    let start = Instant::now();
    let (e, a) = (engine.clone(), avatar.clone());
    let prepared =
        ctx.model.run(move || e.prepare(&AvatarInput { image: &a.image, analysis: &a.analysis }, size)).await?;
    t.stage("prepare", start);
    ctx.cache.incr(counters::PREPARE_RUNS, 1).await?;
    let mut entry = SourceStateEntry { state: None, parts: Vec::new() };
    for (kind, bytes) in &prepared.parts {
        match (kind, part_key(*kind, image, mode, size)) {
            (StateKind::SourceState, _) => entry.state = Some(bytes.clone()),
            (_, Some(key)) => {
                ctx.cache.put(&key, bytes).await?;
                entry.parts.push((*kind, digest(bytes)));
            }
            (_, None) => {
                let ckey = Key::coeffs_3dmm(image, mode.as_str());
                let mut c = ctx
                    .cache
                    .peek::<CoeffsEntry>(&ckey)
                    .await?
                    .unwrap_or(CoeffsEntry { analysis: avatar.analysis.clone(), engine_coeffs: Vec::new() });
                c.engine_coeffs.retain(|(k, _)| *k != engine.kind());
                c.engine_coeffs.push((engine.kind(), bytes.clone()));
                ctx.cache.put(&ckey, &c).await?;
                entry.parts.push((*kind, digest(bytes)));
            }
        }
    }
    let key = Key::source_state(image, mode.as_str(), size, engine.kind().as_str());
    ctx.cache.put(&key, &entry).await?;
    Ok(prepared)
}

/// The precompute job: analysis + the default engine's state at the default size.
pub async fn run_precompute(ctx: &JobContext, image: &ImageHash, mode: PreprocessMode) -> Result<(), JobError> {
    let key = Key::avatar(image, mode.as_str());
    let mut record =
        ctx.cache.peek::<AvatarRecord>(&key).await?.unwrap_or_else(|| AvatarRecord::processing(image.clone(), mode));
    if record.status == AvatarStatus::Ready || crate::erase::is_erased(&ctx.cache, image).await {
        return Ok(());
    }
    let mut t = Tracker::default();
    let start = Instant::now();
    let avatar = ensure_analysis(ctx, &mut t, image, mode).await?;
    let engine = ctx.engines.get(None)?;
    ensure_prepared(ctx, &mut t, &engine, image, &avatar, default_size()).await?;
    t.stage("total", start);
    record.status = AvatarStatus::Ready;
    record.error = None;
    record.updated_ms = now_ms();
    record.timings_ms = t.stages_ms;
    record.width = avatar.analysis.width;
    record.height = avatar.analysis.height;
    record.faces_found = avatar.analysis.faces_found as u32;
    record.landmark_model = Some(avatar.analysis.landmark_model.as_str().into());
    if erased_meanwhile(ctx, image).await {
        return Ok(());
    }
    ctx.cache.put(&key, &record).await?;
    crate::api::callbacks::announce_avatar(&ctx.cache, image, mode).await;
    // The idle loop comes after: the avatar is ready for generate requests (served first, from
    // the vip queue) while it renders.
    ctx.queue.enqueue(Queue::Standard, &Job::Idle { image: image.clone(), mode }).await?;
    Ok(())
}

/// The idle job: render the avatar's idle loop and thumbnail with the default engine and store
/// where they are under `idle:`. Engines without an idle loop leave none.
pub async fn run_idle(ctx: &JobContext, image: &ImageHash, mode: PreprocessMode) -> Result<(), JobError> {
    let size = default_size();
    let key = Key::idle(image, mode.as_str(), size);
    if ctx.cache.peek::<IdleEntry>(&key).await?.is_some() {
        return Ok(());
    }
    let mut t = Tracker::default();
    let avatar = ensure_analysis(ctx, &mut t, image, mode).await?;
    let engine = ctx.engines.get(None)?;
    let prepared = ensure_prepared(ctx, &mut t, &engine, image, &avatar, size).await?;
    let (video_name, thumb_name) = BlobStore::idle_names(image, mode.as_str(), size);
    let (tmp_video, tmp_thumb) = (ctx.blobs.temp_path("mp4"), ctx.blobs.temp_path("jpg"));
    let options = GenerateOptions { preprocess: mode, size, quality: Quality::High, ..GenerateOptions::default() };
    let (e, a, v, th) = (engine.clone(), avatar.clone(), tmp_video.clone(), tmp_thumb.clone());
    // The idle loop is background work: it stops between chunks when a VIP job (a generate, a
    // part) is waiting, and goes back to the end of its queue, so a request that arrives just
    // after an upload does not wait for this render.
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = spawn_vip_watch(ctx, stop.clone());
    let flag = stop.clone();
    let rendered = ctx
        .model
        .run(move || {
            let input = AvatarInput { image: &a.image, analysis: &a.analysis };
            render_idle(e.as_ref(), input, &prepared, &options, &v, &th, &|| flag.load(Ordering::Relaxed))
        })
        .await;
    watcher.abort();
    if matches!(&rendered, Err(PipelineError::Internal(m)) if m == STOPPED) && stop.load(Ordering::Relaxed) {
        let _ = ctx.blobs.remove_temp(&tmp_video).await;
        let _ = ctx.blobs.remove_temp(&tmp_thumb).await;
        tracing::info!(%image, "idle loop yields to waiting VIP work; queued again");
        ctx.queue.enqueue(Queue::Standard, &Job::Idle { image: image.clone(), mode }).await?;
        return Ok(());
    }
    let stats = match rendered {
        Ok(Some(stats)) => stats,
        other => {
            let _ = ctx.blobs.remove_temp(&tmp_video).await;
            let _ = ctx.blobs.remove_temp(&tmp_thumb).await;
            other?;
            ctx.cache.put(&key, &IdleEntry::NoneFor(engine.kind())).await?;
            return Ok(());
        }
    };
    let stored = async {
        let bytes = ctx.blobs.put_file(&video_name, &tmp_video).await?;
        ctx.blobs.put_file(&thumb_name, &tmp_thumb).await?;
        Ok::<_, std::io::Error>(bytes)
    };
    let bytes = match stored.await {
        Ok(b) => b,
        Err(e) => {
            let _ = ctx.blobs.remove(&video_name).await;
            let _ = ctx.blobs.remove_temp(&tmp_video).await;
            let _ = ctx.blobs.remove_temp(&tmp_thumb).await;
            return Err(e.into());
        }
    };
    if erased_meanwhile(ctx, image).await {
        return Ok(());
    }
    let entry = IdleRef { video: video_name, thumbnail: thumb_name, frames: stats.frames as u64, bytes };
    ctx.cache.put(&key, &IdleEntry::Rendered(entry)).await?;
    tracing::info!(%image, frames = stats.frames, ms = stats.total_ms, "idle loop rendered");
    Ok(())
}

/// A job that ran while its face was erased: erase again what it wrote since; true if so.
pub(super) async fn erased_meanwhile(ctx: &JobContext, image: &ImageHash) -> bool {
    if !crate::erase::is_erased(&ctx.cache, image).await {
        return false;
    }
    if let Err(e) = crate::erase::erase_avatar(&ctx.cache, &ctx.blobs, image).await {
        tracing::warn!(error = %e, %image, "could not erase what a job wrote for an erased face");
    }
    tracing::info!(%image, "the face was erased while a job ran for it; its results are gone");
    true
}

/// Set `stop` as soon as VIP work waits in the queue (checked every 50 ms).
fn spawn_vip_watch(ctx: &JobContext, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
    let queue = ctx.queue.clone();
    crate::spawn_named("idle-vip-watch", async move {
        loop {
            if matches!(queue.depth().await, Ok(d) if d.vip > 0) {
                stop.store(true, Ordering::Relaxed);
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
}

/// The output size prepared right after upload (the generate default).
pub fn default_size() -> u32 {
    vipavatar_pipeline::engine::GenerateOptions::default().size
}

/// Mark a precompute as failed (after a final error or the last retry).
pub async fn fail_precompute(
    ctx: &JobContext,
    image: &ImageHash,
    mode: PreprocessMode,
    err: &JobError,
) -> Result<(), JobError> {
    let key = Key::avatar(image, mode.as_str());
    let mut record =
        ctx.cache.peek::<AvatarRecord>(&key).await?.unwrap_or_else(|| AvatarRecord::processing(image.clone(), mode));
    record.status = AvatarStatus::Failed;
    record.error = Some(err.body().clone());
    record.updated_ms = now_ms();
    ctx.cache.put(&key, &record).await?;
    crate::api::callbacks::announce_avatar(&ctx.cache, image, mode).await;
    Ok(())
}

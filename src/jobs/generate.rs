//! The generate job: wait for the avatar if it is still being precomputed, assemble every
//! image-side part from the cache (or rebuild it), take the audio the API decoded, reuse cached
//! audio features and motion, render and encode on the model thread while publishing the live
//! fragments to `stream:{session}`, store the video under `video:` and finish the session.

use super::avatar::{ensure_analysis, ensure_prepared};
use super::parts::{render_split, PartInput};
use super::{counters, internal, JobContext, JobError, Tracker};
use crate::blobs::BlobStore;
use crate::errors::{ApiError, Code};
use crate::records::{now_ms, AvatarRecord, AvatarStatus, SessionRecord, SessionStatus, VideoRef};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use vipavatar_cache::{AudioHash, ImageHash, Key, Kind, Piece, SessionId};
use vipavatar_pipeline::audio::{decode_audio, AudioClip, AudioLimits, SAMPLE_RATE};
use vipavatar_pipeline::engine::{AvatarInput, EngineKind, PreprocessMode};
use vipavatar_pipeline::video::{
    generate_streamed_until, split_parts, track_samples, Fragment, FragmentSink, GenerateRequest, FPS,
};

/// `audio_features:{audio}`: each engine's features for this audio (engines differ in what they
/// extract, and the key does not name the engine).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AudioFeaturesEntry {
    pub engines: Vec<(EngineKind, Vec<u8>)>,
}

/// Progress reserved for the steps before rendering starts.
const PRE_RENDER_PROGRESS: f32 = 0.1;

/// Session progress when `share` (0..=1) of the frames are rendered.
pub(super) fn render_progress(share: f32) -> f32 {
    PRE_RENDER_PROGRESS + (0.98 - PRE_RENDER_PROGRESS) * share
}

/// How long a generate job waits for its avatar's precompute before computing what it needs
/// itself.
fn avatar_wait_limit(ctx: &JobContext) -> Duration {
    ctx.config.jobs.lease() * 2
}

async fn save(ctx: &JobContext, rec: &SessionRecord) -> Result<(), JobError> {
    ctx.cache.put(&Key::session(&rec.id), rec).await?;
    Ok(())
}

/// Wait while another worker precomputes the avatar; a failed avatar fails the session.
async fn wait_for_avatar(ctx: &JobContext, image: &ImageHash, mode: PreprocessMode) -> Result<(), JobError> {
    let key = Key::avatar(image, mode.as_str());
    let start = Instant::now();
    loop {
        match ctx.cache.peek::<AvatarRecord>(&key).await? {
            Some(r) if r.status == AvatarStatus::Processing && start.elapsed() < avatar_wait_limit(ctx) => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Some(r) if r.status == AvatarStatus::Failed => {
                let e = r.error.unwrap_or_else(|| ApiError::new(Code::AvatarFailed, "the avatar failed").body());
                return Err(JobError::Final(e));
            }
            _ => return Ok(()),
        }
    }
}

/// Run one generate session to completion.
pub async fn run_generate(ctx: &JobContext, id: &SessionId, attempt: u32) -> Result<(), JobError> {
    let Some(mut rec) = ctx.cache.peek::<SessionRecord>(&Key::session(id)).await? else {
        tracing::warn!(session = %id, "session expired before it ran; dropping the job");
        return Ok(());
    };
    if rec.is_finished() {
        return Ok(());
    }
    if crate::erase::is_erased(&ctx.cache, &rec.image).await || cancel_requested(&ctx.cache, id).await {
        tracing::info!(session = %id, "the session was cancelled or its face erased; dropping the job");
        return Ok(());
    }
    rec.status = SessionStatus::Processing;
    rec.started_ms.get_or_insert_with(now_ms);
    rec.worker = Some(ctx.consumer.clone());
    rec.attempts = attempt;
    rec.progress = 0.0;
    save(ctx, &rec).await?;

    let start = Instant::now();
    let mut t = Tracker::default();
    let mode = rec.options.preprocess;
    let s = Instant::now();
    wait_for_avatar(ctx, &rec.image, mode).await?;
    t.stage("wait_avatar", s);

    let avatar = ensure_analysis(ctx, &mut t, &rec.image, mode).await?;
    let engine = ctx.engines.get(Some(rec.engine))?;
    engine.check_options(&rec.options)?;
    let prepared = ensure_prepared(ctx, &mut t, &engine, &rec.image, &avatar, rec.options.size).await?;

    let s = Instant::now();
    let clip = load_audio(ctx, &mut t, &rec.audio).await?;
    t.stage("audio_load", s);

    let fkey = Key::audio_features(&rec.audio);
    let mut features_entry = ctx.cache.get::<AudioFeaturesEntry>(&fkey).await?.unwrap_or_default();
    let features = features_entry.engines.iter().find(|(k, _)| *k == rec.engine).map(|(_, f)| f.clone());
    match features {
        Some(_) => t.hit(Kind::AudioFeatures),
        None => t.miss(Kind::AudioFeatures),
    }
    let mkey = Key::motion(&rec.audio, &rec.image, &rec.options_hash);
    let motion = ctx.cache.get::<Vec<u8>>(&mkey).await?;
    match motion {
        Some(_) => t.hit(Kind::Motion),
        None => t.miss(Kind::Motion),
    }
    rec.progress = PRE_RENDER_PROGRESS;
    rec.frames_total = clip.num_frames() as u64;
    save(ctx, &rec).await?;

    // Render + encode on the model thread (or beside it: `run_session`); progress flows back
    // through a watch channel and the live fragments through a channel to the publisher, which
    // appends them to `stream:{id}`.
    ctx.streams.reset(&rec.id).await?;
    let tmp = ctx.blobs.temp_path("mp4");
    let thumb = ctx.blobs.temp_path("jpg");
    // A cancel (or an erase of the face) stops the render at its next chunk.
    let cancelled = Arc::new(AtomicBool::new(false));
    let watcher = spawn_cancel_watch(ctx, &rec, cancelled.clone());
    let (live_tx, live_rx) = watch::channel(Live { progress: PRE_RENDER_PROGRESS, ..Live::default() });
    let live_tx = Arc::new(live_tx);
    let writer = spawn_progress_writer(ctx, rec.clone(), live_rx);
    let (frag_tx, frag_rx) = mpsc::unbounded_channel::<Fragment>();
    let publisher = spawn_publisher(ctx, &rec, attempt, frag_rx, live_tx.clone());
    let (had_features, had_motion) = (features.is_some(), motion.is_some());
    // Split only when another worker can take a part: one worker alone renders a long clip
    // faster in one piece (no second pass through the muxer, no analysis repeated per part).
    let split = match engine.renders_parts() {
        true => split_parts(&clip, ctx.config.jobs.split_seconds),
        false => None,
    };
    let split = match split {
        Some(parts) if live_consumers(ctx, engine.kind()).await >= 2 => Some(parts),
        _ => None,
    };
    let s = Instant::now();
    let result = match split {
        Some(parts) => {
            let input = PartInput {
                engine: engine.clone(),
                avatar: avatar.clone(),
                prepared: Arc::new(prepared),
                clip: Arc::new(clip),
                options: rec.options.clone(),
                motion: motion.map(Arc::new),
            };
            let sink: FragmentSink = Box::new(move |f| {
                let _ = frag_tx.send(f);
            });
            render_split(ctx, &rec, attempt, input, parts, tmp.clone(), sink, live_tx.clone()).await
        }
        None => {
            let (e, a, p, o, out) = (engine.clone(), avatar.clone(), prepared, rec.options.clone(), tmp.clone());
            let (thumb_out, stop) = (thumb.clone(), cancelled.clone());
            let progress_tx = live_tx.clone();
            ctx.model
                .run_session(engine.as_ref(), move || {
                    let req = GenerateRequest {
                        engine: e.as_ref(),
                        avatar: AvatarInput { image: &a.image, analysis: &a.analysis },
                        prepared: &p,
                        audio: &clip,
                        options: &o,
                        features: features.as_deref(),
                        motion: motion.as_deref(),
                        output: &out,
                        thumbnail: Some(thumb_out.as_path()),
                        contact_sheet: None,
                        close_loop: false,
                    };
                    let sink: FragmentSink = Box::new(move |f| {
                        let _ = frag_tx.send(f);
                    });
                    let stop = move || stop.load(Ordering::Relaxed);
                    generate_streamed_until(
                        &req,
                        Some(sink),
                        &mut |pr| {
                            if pr.stage == "render" && pr.total > 0 {
                                let f = pr.done as f32 / pr.total as f32;
                                progress_tx.send_modify(|l| {
                                    l.progress = render_progress(f);
                                    l.frames_done = pr.done as u64;
                                });
                            }
                        },
                        &stop,
                    )
                })
                .await
                .map_err(JobError::from)
        }
    };
    watcher.abort();
    // Every fragment is in Redis once the publisher has drained its channel (the encoder's sink,
    // and with it the sender, is gone when the model call returns).
    let published = publisher.await.map_err(internal)?;
    // Stop the writer now instead of letting it finish its throttle sleep (that cost up to
    // 250 ms per job). Awaiting the aborted handle orders any in-flight progress write before
    // the final session save below (one multiplexed connection keeps command order).
    writer.abort();
    let _ = writer.await;
    if cancelled.load(Ordering::Relaxed) || session_cancelled(ctx, &rec).await {
        // Nothing of it stays: no temporaries, no stream, no video.
        let _ = ctx.blobs.remove_temp_family(&tmp).await;
        let _ = ctx.blobs.remove_temp(&thumb).await;
        let _ = ctx.streams.reset(&rec.id).await;
        let _ = ctx.cache.release(&Key::inflight(&rec.image, &rec.audio, &rec.options_hash), rec.id.as_str()).await;
        // The progress writer may have stored `processing` over the cancel: store it again.
        if ctx.cache.exists(&Key::session(&rec.id)).await.unwrap_or(false) {
            rec.status = SessionStatus::Cancelled;
            rec.finished_ms.get_or_insert_with(now_ms);
            save(ctx, &rec).await?;
        }
        tracing::info!(session = %rec.id, "cancelled; the render stopped and its files are gone");
        return Ok(());
    }
    let output = match result.and_then(|o| published.map(|_| o)) {
        Ok(o) => o,
        Err(e) => {
            let _ = ctx.blobs.remove_temp(&thumb).await;
            let _ = ctx.blobs.remove_temp(&tmp).await;
            let _ = ctx.streams.append(&rec.id, attempt, &Piece::Error(error_json(&e)), 0.0).await;
            return Err(e);
        }
    };
    ctx.streams.append(&rec.id, attempt, &Piece::End, 0.0).await?;
    let live = *live_tx.borrow();
    t.stage("generate", s);
    t.stages_ms.extend(output.stats.stage_ms.iter().cloned());
    ctx.cache.incr(counters::RENDER_RUNS, 1).await?;
    if let (false, Some(f)) = (had_features, output.features.as_ref()) {
        ctx.cache.incr(counters::AUDIO_FEATURE_RUNS, 1).await?;
        features_entry.engines.retain(|(k, _)| *k != rec.engine);
        features_entry.engines.push((rec.engine, f.clone()));
        ctx.cache.put(&fkey, &features_entry).await?;
    }
    // A split session's parts planned only their own frames: nothing whole to cache.
    if !had_motion && !output.motion.is_empty() {
        ctx.cache.incr(counters::MOTION_RUNS, 1).await?;
        ctx.cache.put(&mkey, &output.motion).await?;
    }

    let name = BlobStore::video_name(&rec.image, &rec.audio, &rec.options_hash);
    let thumb_name = name.replace(".mp4", ".jpg");
    let thumbnail = store_thumbnail(ctx, &tmp, &thumb, &thumb_name).await;
    let bytes = match ctx.blobs.put_file(&name, &tmp).await {
        Ok(b) => b,
        Err(e) => {
            let _ = ctx.blobs.remove_temp(&tmp).await;
            return Err(e.into());
        }
    };
    if super::avatar::erased_meanwhile(ctx, &rec.image).await {
        return Ok(());
    }
    let video = VideoRef {
        file: name,
        bytes,
        duration_s: output.stats.video_seconds,
        frames: output.stats.frames as u64,
        thumbnail,
    };
    ctx.cache.put(&Key::video(&rec.image, &rec.audio, &rec.options_hash), &video).await?;

    let total_ms = start.elapsed().as_millis() as i64;
    ctx.cache.incr(counters::GENERATE_MS, total_ms).await?;
    ctx.cache.incr(counters::GENERATE_AUDIO_MS, (output.stats.audio_seconds * 1e3) as i64).await?;
    rec.status = SessionStatus::Ready;
    rec.progress = 1.0;
    rec.finished_ms = Some(now_ms());
    rec.audio_seconds = output.stats.audio_seconds;
    rec.stages_ms = t.stages_ms;
    rec.cache_hits = t.hits;
    rec.cache_misses = t.misses;
    rec.video = Some(video);
    rec.error = None;
    rec.first_frame_ms = live.first_frame_ms;
    let since_request = now_ms().saturating_sub(rec.created_ms).max(1) as f64 / 1e3;
    crate::telemetry::record_generate(
        rec.engine.as_str(),
        live.first_frame_ms.map(Duration::from_millis),
        output.stats.audio_seconds / since_request,
    );
    rec.frames_done = output.stats.frames as u64;
    rec.frames_total = output.stats.frames as u64;
    // What the cache saved it: the avatar's measured image side, when its analysis was a hit.
    let saved = match rec.cache_hits.iter().any(|h| h == Kind::Coeffs3dmm.name()) {
        true => ctx
            .cache
            .peek::<AvatarRecord>(&Key::avatar(&rec.image, mode.as_str()))
            .await?
            .as_ref()
            .and_then(crate::performance::image_seconds)
            .unwrap_or(0.0),
        false => 0.0,
    };
    rec.saved_s = Some(saved);
    let own = rec.finished_ms.unwrap_or_else(now_ms).saturating_sub(rec.created_ms) as f64 / 1e3;
    crate::performance::record(&ctx.cache, crate::performance::speedup(own, saved)).await;
    save(ctx, &rec).await?;
    crate::api::callbacks::announce_session(&ctx.cache, &ctx.config, &ctx.blobs, &rec).await;
    Ok(())
}

/// `cancel:{session}`: set by `DELETE /api/vip/session/{id}` (the record's status can be
/// overwritten by a progress write in flight; this flag cannot).
pub fn cancel_key(ns: &vipavatar_cache::Namespace, id: &SessionId) -> String {
    ns.name(&format!("cancel:{id}"))
}

async fn cancel_requested(cache: &vipavatar_cache::Cache, id: &SessionId) -> bool {
    let mut conn = cache.connection();
    redis::cmd("EXISTS").arg(cancel_key(cache.namespace(), id)).query_async::<bool>(&mut conn).await.unwrap_or(false)
}

/// Whether the session was cancelled (or its face erased, or its record is gone) meanwhile.
async fn session_cancelled(ctx: &JobContext, rec: &SessionRecord) -> bool {
    let now = ctx.cache.peek::<SessionRecord>(&Key::session(&rec.id)).await.ok().flatten();
    now.is_none_or(|r| r.status == SessionStatus::Cancelled)
        || cancel_requested(&ctx.cache, &rec.id).await
        || crate::erase::is_erased(&ctx.cache, &rec.image).await
}

/// Set `flag` once the session is cancelled (checked a few times a second while it renders).
fn spawn_cancel_watch(ctx: &JobContext, rec: &SessionRecord, flag: Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
    let (cache, id, image) = (ctx.cache.clone(), rec.id.clone(), rec.image.clone());
    crate::spawn_named(&format!("cancel-watch-{id}"), async move {
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let rec = cache.peek::<SessionRecord>(&Key::session(&id)).await;
            let gone = matches!(&rec, Ok(None) | Ok(Some(SessionRecord { status: SessionStatus::Cancelled, .. })));
            if gone || cancel_requested(&cache, &id).await || crate::erase::is_erased(&cache, &image).await {
                flag.store(true, Ordering::Relaxed);
                return;
            }
        }
    })
}

/// Store the first frame as the session's thumbnail: the JPEG the render wrote, or (a split
/// render writes none) one taken from the finished MP4 by ffmpeg. `None` if neither worked.
async fn store_thumbnail(ctx: &JobContext, mp4: &std::path::Path, jpg: &std::path::Path, name: &str) -> Option<String> {
    if !tokio::fs::try_exists(jpg).await.unwrap_or(false) {
        let status = tokio::process::Command::new("ffmpeg")
            .args(["-nostdin", "-loglevel", "error", "-y", "-i"])
            .arg(mp4)
            .args(["-frames:v", "1", "-q:v", "3"])
            .arg(jpg)
            .status()
            .await;
        if !status.is_ok_and(|s| s.success()) {
            let _ = ctx.blobs.remove_temp(jpg).await;
            tracing::warn!(%name, "could not take a thumbnail from the video");
            return None;
        }
    }
    match ctx.blobs.put_file(name, jpg).await {
        Ok(_) => Some(name.to_string()),
        Err(e) => {
            let _ = ctx.blobs.remove_temp(jpg).await;
            tracing::warn!(error = %e, %name, "could not store the thumbnail");
            None
        }
    }
}

/// Job consumers in live worker processes that offer `engine` (a part job may go to any of them).
async fn live_consumers(ctx: &JobContext, engine: EngineKind) -> usize {
    let live = super::registry::live_workers(&ctx.cache).await;
    live.iter().filter(|w| w.engines.iter().any(|e| e.engine == engine.as_str())).map(|w| w.workers).sum()
}

/// The session's decoded audio: the samples the API left under `audio_pcm:`, or (when they
/// expired) the stored original decoded again.
pub(super) async fn load_audio(ctx: &JobContext, t: &mut Tracker, audio: &AudioHash) -> Result<AudioClip, JobError> {
    if let Some(samples) = ctx.cache.get::<Vec<f32>>(&Key::audio_pcm(audio)).await? {
        t.hit(Kind::AudioPcm);
        return Ok(AudioClip { samples, sample_rate: SAMPLE_RATE });
    }
    t.miss(Kind::AudioPcm);
    let bytes = ctx
        .blobs
        .read(&BlobStore::audio_name(audio))
        .await?
        .map(|b| b.to_vec())
        .ok_or_else(|| internal(format!("the audio {audio} of this session is no longer stored")))?;
    let limits = AudioLimits { max_seconds: ctx.config.limits.max_audio_seconds, ..AudioLimits::default() };
    Ok(tokio::task::spawn_blocking(move || decode_audio(&bytes, &limits)).await.map_err(internal)??)
}

/// What the progress writer publishes into the session while it renders.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Live {
    pub progress: f32,
    pub frames_done: u64,
    pub first_frame_ms: Option<u64>,
}

/// Append the encoder's fragments to the session's stream in order; notes when the first media
/// fragment went out (milliseconds since the request).
fn spawn_publisher(
    ctx: &JobContext,
    rec: &SessionRecord,
    attempt: u32,
    mut rx: mpsc::UnboundedReceiver<Fragment>,
    live: Arc<watch::Sender<Live>>,
) -> tokio::task::JoinHandle<Result<usize, JobError>> {
    let (streams, id, created) = (ctx.streams.clone(), rec.id.clone(), rec.created_ms);
    let name = format!("stream-{id}");
    crate::spawn_named(&name, async move {
        let mut count = 0;
        while let Some(fragment) = rx.recv().await {
            // The video is the first track (`-map 0:v:0`); its samples are frames.
            let (piece, seconds) = match fragment {
                Fragment::Init(b) => (Piece::Init(b), 0.0),
                Fragment::Media(b) => {
                    let frames = track_samples(&b, 1).unwrap_or(0);
                    (Piece::Media(b), frames as f64 / FPS as f64)
                }
            };
            let media = matches!(piece, Piece::Media(_));
            streams.append(&id, attempt, &piece, seconds).await?;
            count += 1;
            if media && live.borrow().first_frame_ms.is_none() {
                let ms = now_ms().saturating_sub(created);
                live.send_modify(|l| l.first_frame_ms = Some(ms));
            }
        }
        Ok(count)
    })
}

fn error_json(e: &JobError) -> String {
    serde_json::to_string(e.body()).unwrap_or_default()
}

/// Write progress into the session at most a few times a second while rendering.
fn spawn_progress_writer(
    ctx: &JobContext,
    mut rec: SessionRecord,
    mut rx: watch::Receiver<Live>,
) -> tokio::task::JoinHandle<()> {
    let cache = ctx.cache.clone();
    let name = format!("progress-{}", rec.id);
    let fut = async move {
        while rx.changed().await.is_ok() {
            let live = *rx.borrow_and_update();
            rec.progress = live.progress;
            rec.frames_done = live.frames_done;
            rec.first_frame_ms = live.first_frame_ms;
            if let Err(e) = cache.put(&Key::session(&rec.id), &rec).await {
                tracing::warn!(error = %e, "could not store progress");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    };
    crate::spawn_named(&name, fut)
}

/// Mark a session failed with its error (after a final error or the last retry).
pub async fn fail_generate(ctx: &JobContext, id: &SessionId, err: &JobError) -> Result<(), JobError> {
    let Some(mut rec) = ctx.cache.peek::<SessionRecord>(&Key::session(id)).await? else {
        return Ok(());
    };
    rec.status = SessionStatus::Failed;
    rec.error = Some(err.body().clone());
    rec.finished_ms = Some(now_ms());
    save(ctx, &rec).await?;
    crate::api::callbacks::announce_session(&ctx.cache, &ctx.config, &ctx.blobs, &rec).await;
    // Anyone watching the live stream learns it ended badly.
    ctx.streams.append(id, rec.attempts, &Piece::Error(error_json(err)), 0.0).await?;
    Ok(())
}

/// The stored video for (image, audio, options) if its file still exists.
pub async fn cached_video(
    cache: &vipavatar_cache::Cache,
    blobs: &BlobStore,
    image: &ImageHash,
    audio: &AudioHash,
    options: &vipavatar_cache::OptionsHash,
) -> Result<Option<VideoRef>, ApiError> {
    let Some(video) = cache.get::<VideoRef>(&Key::video(image, audio, options)).await? else {
        return Ok(None);
    };
    let exists = blobs.exists(&video.file).await.unwrap_or(false);
    Ok(exists.then_some(video))
}

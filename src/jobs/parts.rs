//! Long audio in parallel: a clip longer than `split_seconds` is cut at quiet frames into parts.
//! The session's own job (the coordinator) renders the first part and queues a `part` job for
//! each other; a worker that claims a part renders its frames (their motion planned from the
//! clip's start, so every part follows the one plan of the whole clip) as bare H.264 into
//! `stream:{session}:{attempt}:{part}`. The coordinator feeds the parts in order into one muxer
//! that adds the whole soundtrack and writes the faststart MP4 and the session's live stream.
//! A part nobody took yet, or whose renderer died before sending anything, the coordinator
//! renders itself, so one worker alone still finishes every session.

use super::avatar::{ensure_analysis, ensure_prepared, Avatar};
use super::generate::{load_audio, Live};
use super::{internal, Job, JobContext, JobError, Queue, Tracker};
use crate::errors::{ApiError, Code, ErrorBody};
use crate::records::SessionRecord;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use vipavatar_cache::{Key, Piece, SessionId};
use vipavatar_pipeline::audio::AudioClip;
use vipavatar_pipeline::engine::{AvatarInput, Engine, GenerateOptions, PreparedAvatar};
use vipavatar_pipeline::video::{
    generate_part, ByteSink, FragmentSink, GenerateOutput, GenerateRequest, GenerateStats, PartMuxer, FPS,
};

/// Everything a part render needs, shared by the parts one worker renders.
#[derive(Clone)]
pub(super) struct PartInput {
    pub engine: Arc<dyn Engine>,
    pub avatar: Arc<Avatar>,
    pub prepared: Arc<PreparedAvatar>,
    pub clip: Arc<AudioClip>,
    pub options: GenerateOptions,
    /// The whole clip's cached motion, if any.
    pub motion: Option<Arc<Vec<u8>>>,
}

/// Render `frames` (on the model thread, or beside it: `run_session`) as bare H.264 into `sink`; `progress(frames done)`.
async fn render_part(
    ctx: &JobContext,
    input: &PartInput,
    frames: Range<usize>,
    sink: ByteSink,
    progress: impl Fn(usize) + Send + 'static,
) -> Result<GenerateStats, JobError> {
    let p = input.clone();
    let out = ctx.blobs.temp_path("part");
    let output = ctx
        .model
        .run_session(input.engine.as_ref(), move || {
            let req = GenerateRequest {
                engine: p.engine.as_ref(),
                avatar: AvatarInput { image: &p.avatar.image, analysis: &p.avatar.analysis },
                prepared: &p.prepared,
                audio: &p.clip,
                options: &p.options,
                features: None,
                motion: p.motion.as_deref().map(|m| m.as_slice()),
                output: &out,
                thumbnail: None,
                contact_sheet: None,
                close_loop: false,
            };
            generate_part(&req, frames, sink, &mut |pr| {
                if pr.stage == "render" {
                    progress(pr.done)
                }
            })
        })
        .await?;
    Ok(output.stats)
}

/// The coordinator's side: render or relay every part in order into one muxer writing `out`
/// and the live stream (`live`); the result stands for the whole clip's render.
#[allow(clippy::too_many_arguments)]
pub(super) async fn render_split(
    ctx: &JobContext,
    rec: &SessionRecord,
    attempt: u32,
    input: PartInput,
    parts: Vec<Range<usize>>,
    out: PathBuf,
    live: FragmentSink,
    progress: Arc<watch::Sender<Live>>,
) -> Result<GenerateOutput, JobError> {
    let t0 = Instant::now();
    for (index, r) in parts.iter().enumerate().skip(1) {
        let job = Job::Part { session: rec.id.clone(), attempt, index, start: r.start, end: r.end };
        ctx.queue.enqueue(Queue::Vip, &job).await?;
    }
    tracing::info!(session = %rec.id, parts = parts.len(), "split the audio into parts");
    let muxer = PartMuxer::new(&out, &input.clip, Some(live))?;
    let feed = muxer.feed()?;
    // Every byte goes through one forwarder thread, so parts reach the muxer in order whether
    // they were rendered here or relayed from Redis.
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let forwarder = std::thread::Builder::new()
        .name("part-mux-feed".into())
        .spawn(move || {
            while let Some(bytes) = rx.blocking_recv() {
                if !feed.push(bytes) {
                    return false;
                }
            }
            true
        })
        .map_err(internal)?;
    let mut done = 0usize;
    let mut stage_ms = Vec::new();
    let mut first: Option<GenerateStats> = None;
    for (index, r) in parts.iter().enumerate() {
        let t = Instant::now();
        let before = done;
        let mine = index == 0
            || ctx.streams.claim_part(&rec.id, attempt, index, &ctx.consumer, ctx.config.jobs.lease()).await?;
        let how = if mine {
            let stats = render_here(ctx, &input, r.clone(), &tx, &progress, before).await?;
            first.get_or_insert(stats);
            "rendered"
        } else {
            match relay(ctx, &rec.id, attempt, index, &tx).await? {
                Relayed::Done => "relayed",
                Relayed::Abandoned => {
                    tracing::warn!(session = %rec.id, index, "part renderer died before sending anything; rendering it here");
                    let stats = render_here(ctx, &input, r.clone(), &tx, &progress, before).await?;
                    first.get_or_insert(stats);
                    "rendered"
                }
            }
        };
        done += r.len();
        progress.send_modify(|l| l.frames_done = done as u64);
        stage_ms.push((format!("part{index}.{how}"), vipavatar_pipeline::ms_since(t)));
    }
    drop(tx);
    let fed = tokio::task::spawn_blocking(move || forwarder.join().unwrap_or(false)).await.map_err(internal)?;
    let t = Instant::now();
    let finished = tokio::task::spawn_blocking(move || muxer.finish()).await.map_err(internal)?;
    finished?;
    if !fed {
        return Err(internal("the muxer stopped reading the parts"));
    }
    stage_ms.push(("mux_finish".into(), vipavatar_pipeline::ms_since(t)));
    let first = first.ok_or_else(|| internal("no part of the split session was rendered here"))?;
    let total_ms = vipavatar_pipeline::ms_since(t0);
    let audio_seconds = input.clip.duration_s();
    Ok(GenerateOutput {
        stats: GenerateStats {
            frames: done,
            width: first.width,
            height: first.height,
            audio_seconds,
            video_seconds: done as f64 / FPS as f64,
            stage_ms,
            total_ms,
            realtime_factor: audio_seconds / (total_ms / 1e3).max(1e-9),
            first_frame_ms: first.first_frame_ms,
            first_fragment_ms: None,
        },
        features: None,
        motion: Vec::new(),
    })
}

async fn render_here(
    ctx: &JobContext,
    input: &PartInput,
    frames: Range<usize>,
    tx: &mpsc::UnboundedSender<Vec<u8>>,
    progress: &Arc<watch::Sender<Live>>,
    before: usize,
) -> Result<GenerateStats, JobError> {
    let tx = tx.clone();
    let sink: ByteSink = Box::new(move |b| {
        let _ = tx.send(b);
    });
    let (p, total) = (progress.clone(), input.clip.num_frames().max(1));
    render_part(ctx, input, frames, sink, move |n| {
        let done = (before + n) as u64;
        p.send_modify(|l| {
            l.frames_done = done;
            l.progress = super::generate::render_progress(done as f32 / total as f32);
        })
    })
    .await
}

/// How relaying a part ended.
enum Relayed {
    /// Every piece reached the muxer.
    Done,
    /// Its renderer died before sending anything: the caller renders it.
    Abandoned,
}

/// Copy a part that another worker renders into the muxer, as it arrives.
async fn relay(
    ctx: &JobContext,
    id: &SessionId,
    attempt: u32,
    index: usize,
    tx: &mpsc::UnboundedSender<Vec<u8>>,
) -> Result<Relayed, JobError> {
    let mut reader = ctx.streams.part_reader(id, attempt, index).await?;
    let (mut starts, mut fed) = (0, false);
    let mut quiet_since = Instant::now();
    let lease = ctx.config.jobs.lease();
    loop {
        let entries = reader.next(Duration::from_millis(500), 64).await?;
        if entries.is_empty() {
            if quiet_since.elapsed() >= lease && !ctx.streams.part_claimed(id, attempt, index).await? {
                if fed {
                    return Err(internal(format!("the renderer of part {index} died half-way")));
                }
                // Take it over (unless its job was reclaimed by another worker meanwhile).
                if ctx.streams.claim_part(id, attempt, index, &ctx.consumer, lease).await? {
                    return Ok(Relayed::Abandoned);
                }
            }
            continue;
        }
        quiet_since = Instant::now();
        for e in entries {
            match e.piece {
                // A renderer announces itself; a second one after bytes were fed would double
                // them.
                Piece::Init(_) => {
                    starts += 1;
                    if starts > 1 && fed {
                        return Err(internal(format!("part {index} was restarted half-way")));
                    }
                }
                Piece::Media(b) => {
                    fed = true;
                    if tx.send(b).is_err() {
                        return Err(internal("the muxer stopped reading the parts"));
                    }
                }
                Piece::End => return Ok(Relayed::Done),
                Piece::Error(json) => {
                    let body: ErrorBody = serde_json::from_str(&json)
                        .unwrap_or_else(|_| ApiError::new(Code::Internal, format!("part {index} failed")).body());
                    // The same client-or-server rule as every other job error.
                    return Err(ApiError::from(body).into());
                }
            }
        }
    }
}

/// A `part` job: render one part of a split session if nobody else has taken it.
pub(super) async fn run_part(
    ctx: &JobContext,
    id: &SessionId,
    attempt: u32,
    index: usize,
    frames: Range<usize>,
) -> Result<(), JobError> {
    let Some(rec) = ctx.cache.peek::<SessionRecord>(&Key::session(id)).await? else {
        return Ok(());
    };
    if rec.is_finished() || rec.attempts != attempt {
        return Ok(());
    }
    let lease = ctx.config.jobs.lease();
    if !ctx.streams.claim_part(id, attempt, index, &ctx.consumer, lease).await? {
        return Ok(());
    }
    let keeper = {
        let (streams, id) = (ctx.streams.clone(), id.clone());
        crate::spawn_named(&format!("part-claim-{id}-{index}"), async move {
            loop {
                tokio::time::sleep(lease / 3).await;
                let _ = streams.hold_part(&id, attempt, index, Some(lease)).await;
            }
        })
    };
    let result = part_body(ctx, &rec, attempt, index, frames).await;
    keeper.abort();
    let piece = match &result {
        Ok(()) => Piece::End,
        Err(e) => Piece::Error(serde_json::to_string(e.body()).unwrap_or_default()),
    };
    ctx.streams.append_part(id, attempt, index, &piece).await?;
    ctx.streams.hold_part(id, attempt, index, None).await?;
    if let Err(e) = result {
        // The coordinator fails or retries the session; this job is done either way.
        tracing::warn!(session = %id, index, code = %e.body().code, message = %e.body().message, "part failed");
    }
    Ok(())
}

async fn part_body(
    ctx: &JobContext,
    rec: &SessionRecord,
    attempt: u32,
    index: usize,
    frames: Range<usize>,
) -> Result<(), JobError> {
    let id = &rec.id;
    ctx.streams.append_part(id, attempt, index, &Piece::Init(ctx.consumer.as_bytes().to_vec())).await?;
    let mut t = Tracker::default();
    let avatar = ensure_analysis(ctx, &mut t, &rec.image, rec.options.preprocess).await?;
    let engine = ctx.engines.get(Some(rec.engine))?;
    let prepared = ensure_prepared(ctx, &mut t, &engine, &rec.image, &avatar, rec.options.size).await?;
    let clip = load_audio(ctx, &mut t, &rec.audio).await?;
    let motion = ctx.cache.get::<Vec<u8>>(&Key::motion(&rec.audio, &rec.image, &rec.options_hash)).await?;
    let input = PartInput {
        engine,
        avatar,
        prepared: Arc::new(prepared),
        clip: Arc::new(clip),
        options: rec.options.clone(),
        motion: motion.map(Arc::new),
    };
    // Pieces go to Redis in order from one task; the render does not wait for them.
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let (streams, sid) = (ctx.streams.clone(), id.clone());
    let publisher = crate::spawn_named(&format!("part-{id}-{index}"), async move {
        while let Some(b) = rx.recv().await {
            streams.append_part(&sid, attempt, index, &Piece::Media(b)).await?;
        }
        Ok::<(), vipavatar_cache::CacheError>(())
    });
    let sink: ByteSink = Box::new(move |b| {
        let _ = tx.send(b);
    });
    let rendered = render_part(ctx, &input, frames, sink, |_| {}).await;
    let published = publisher.await.map_err(internal)?;
    rendered?;
    published?;
    Ok(())
}

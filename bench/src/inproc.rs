//! In-process cases: the worker's own job functions ([`run_generate`], [`ensure_analysis`],
//! [`ensure_prepared`], [`cached_video`]) against the real cache on a real redis-server, called
//! directly (no HTTP, no queue). The no-cache baseline calls the same pipeline functions the jobs
//! call (precompute, prepare, `generate_video`) with nothing taken from or written to the cache;
//! the one-shot reference is `vipavatar generate`'s own function (`generate_local`).

use crate::inputs::{image_variant, wav, Clip, Variants};
use crate::report::{peak_rss_mb, reset_peak_rss, Case, Group, Mode, Sample, Throughput};
use anyhow::{anyhow, bail};
use std::sync::Arc;
use std::time::Instant;
use vipavatar::blobs::BlobStore;
use vipavatar::jobs::avatar::{ensure_analysis, ensure_prepared};
use vipavatar::jobs::generate::{cached_video, run_generate};
use vipavatar::jobs::{JobContext, JobError, Tracker};
use vipavatar::records::{now_ms, SessionRecord, SessionRequest, SessionStatus};
use vipavatar_cache::{AudioHash, ImageHash, Key, OptionsHash, SessionId};
use vipavatar_pipeline::audio::{decode_audio, AudioLimits};
use vipavatar_pipeline::engine::{AvatarInput, Engine, GenerateOptions};
use vipavatar_pipeline::video::{generate_local, generate_video, GenerateRequest, LocalGenerate};

fn job_err(e: JobError) -> anyhow::Error {
    let b = e.body();
    anyhow!("{} ({})", b.message, b.code)
}

/// One engine, one clip: the four cases, interleaved run by run.
pub struct InProcess<'a> {
    pub ctx: &'a Arc<JobContext>,
    pub engine: Arc<dyn Engine>,
    pub image: &'a [u8],
    pub clip: &'a Clip,
    pub variants: &'a Variants,
    pub options: GenerateOptions,
}

impl InProcess<'_> {
    fn limits(&self) -> AudioLimits {
        AudioLimits { max_seconds: self.ctx.config.limits.max_audio_seconds, ..AudioLimits::default() }
    }

    fn options_hash(&self) -> anyhow::Result<OptionsHash> {
        Ok(OptionsHash::parse(&self.options.options_hash(self.engine.kind()))?)
    }

    /// Store the originals as the upload handlers do; returns their hashes.
    async fn store(&self, image: &[u8], audio: &[u8]) -> anyhow::Result<(ImageHash, AudioHash)> {
        let (ih, ah) = (ImageHash::of(image), AudioHash::of(audio));
        let blobs = &self.ctx.blobs;
        blobs.put_if_absent(&BlobStore::image_name(&ih), image.to_vec().into()).await?;
        blobs.put_if_absent(&BlobStore::audio_name(&ah), audio.to_vec().into()).await?;
        Ok((ih, ah))
    }

    /// A queued session as `POST /api/vip/generate` writes it.
    async fn session(&self, image: ImageHash, audio: AudioHash) -> anyhow::Result<SessionId> {
        let id = SessionId::parse(&uuid::Uuid::new_v4().simple().to_string())?;
        let req = SessionRequest {
            image,
            audio,
            engine: self.engine.kind(),
            options: self.options.clone(),
            options_hash: self.options_hash()?,
            audio_seconds: self.clip.seconds,
        };
        let rec = SessionRecord::queued(id.clone(), req);
        self.ctx.cache.put(&Key::session(&id), &rec).await?;
        Ok(id)
    }

    /// The generate job for (image, audio), timed from the request's audio decode (which the
    /// API does once, leaving the samples under `audio_pcm:`) to the job's end.
    async fn generate(&self, image: &[u8], audio: &[u8]) -> anyhow::Result<Sample> {
        self.generate_counted(image, audio).await.map(|(s, _)| s)
    }

    /// [`InProcess::generate`], with the session's frame count.
    async fn generate_counted(&self, image: &[u8], audio: &[u8]) -> anyhow::Result<(Sample, u64)> {
        let (ih, ah) = self.store(image, audio).await?;
        let id = self.session(ih, ah.clone()).await?;
        let (start, start_ms) = (Instant::now(), now_ms());
        let (bytes, limits) = (audio.to_vec(), self.limits());
        let clip = tokio::task::spawn_blocking(move || decode_audio(&bytes, &limits)).await??;
        self.ctx.cache.put(&Key::audio_pcm(&ah), &clip.samples[..]).await?;
        let decode_ms = vipavatar_pipeline::ms_since(start);
        run_generate(self.ctx, &id, 1).await.map_err(job_err)?;
        let wall_ms = vipavatar_pipeline::ms_since(start);
        let mut rec: SessionRecord =
            self.ctx.cache.peek(&Key::session(&id)).await?.ok_or_else(|| anyhow!("session {id} vanished"))?;
        if rec.status != SessionStatus::Ready {
            bail!("session {id} ended {:?}: {:?}", rec.status, rec.error);
        }
        rec.stages_ms.insert(0, ("audio_decode".into(), decode_ms));
        let first_frame_ms = rec.first_frame_ms.map(|ms| (rec.created_ms + ms).saturating_sub(start_ms) as f64);
        let frames = rec.frames_total;
        Ok((Sample { wall_ms, stages_ms: rec.stages_ms, peak_rss_mb: 0.0, first_frame_ms }, frames))
    }

    /// A repeat request: hash the audio and find the finished video (what the API does before
    /// queueing anything).
    async fn hot(&self, image: &ImageHash, audio: &[u8]) -> anyhow::Result<Sample> {
        let start = Instant::now();
        let ah = AudioHash::of(audio);
        let found = cached_video(&self.ctx.cache, &self.ctx.blobs, image, &ah, &self.options_hash()?).await?;
        let wall_ms = vipavatar_pipeline::ms_since(start);
        if found.is_none() {
            bail!("the hot case found no cached video");
        }
        Ok(Sample { wall_ms, stages_ms: Vec::new(), peak_rss_mb: 0.0, first_frame_ms: None })
    }

    /// The pipeline with the cache out of the way: precompute + prepare + audio + generate, every
    /// stage recomputed, on the worker's model thread.
    async fn nocache(&self, image: &[u8], audio: &[u8]) -> anyhow::Result<Sample> {
        let (image, audio) = (image.to_vec(), audio.to_vec());
        let (pre, engine, opts, limits) =
            (self.ctx.engines.precomputer().clone(), self.engine.clone(), self.options.clone(), self.limits());
        let out = self.ctx.blobs.temp_path("mp4");
        let out2 = out.clone();
        let start = Instant::now();
        let stages = self
            .ctx
            .model
            .run(move || {
                let mut stages = Vec::new();
                let (img, analysis) = pre.run(&image, opts.preprocess)?;
                stages.extend(analysis.timings_ms.iter().cloned());
                let avatar = AvatarInput { image: &img, analysis: &analysis };
                let t = Instant::now();
                let prepared = engine.prepare(&avatar, opts.size)?;
                stages.push(("prepare".to_string(), vipavatar_pipeline::ms_since(t)));
                let t = Instant::now();
                let clip = decode_audio(&audio, &limits)?;
                stages.push(("audio_decode".to_string(), vipavatar_pipeline::ms_since(t)));
                let req = GenerateRequest {
                    engine: engine.as_ref(),
                    avatar,
                    prepared: &prepared,
                    audio: &clip,
                    options: &opts,
                    features: None,
                    motion: None,
                    output: &out2,
                    thumbnail: None,
                    contact_sheet: None,
                    close_loop: false,
                };
                let result = generate_video(&req, &mut |_| {})?;
                stages.extend(result.stats.stage_ms);
                Ok(stages)
            })
            .await;
        let wall_ms = vipavatar_pipeline::ms_since(start);
        let _ = self.ctx.blobs.remove_temp(&out).await;
        Ok(Sample { wall_ms, stages_ms: stages?, peak_rss_mb: 0.0, first_frame_ms: None })
    }

    /// `vipavatar generate` from files: loads the precompute models, computes everything, writes
    /// the MP4 and its thumbnail. The inputs are written to scratch files first (untimed).
    async fn oneshot(&self, image: &[u8], audio: &[u8]) -> anyhow::Result<Sample> {
        let dir = self.ctx.blobs.scratch().dir().join(uuid::Uuid::new_v4().simple().to_string());
        std::fs::create_dir_all(&dir)?;
        let (img, wav_path, out) = (dir.join("image"), dir.join("audio.wav"), dir.join("out.mp4"));
        std::fs::write(&img, image)?;
        std::fs::write(&wav_path, audio)?;
        let mut job = LocalGenerate::new(&img, &wav_path, &out);
        job.options = self.options.clone();
        job.checkpoints = self.ctx.config.checkpoints.clone();
        job.audio_limits = self.limits();
        let engine = self.engine.clone();
        let start = Instant::now();
        let stats = self.ctx.model.run(move || generate_local(engine.as_ref(), &job, &mut |_| {})).await;
        let wall_ms = vipavatar_pipeline::ms_since(start);
        let _ = std::fs::remove_dir_all(&dir);
        Ok(Sample { wall_ms, stages_ms: stats?.stage_ms, peak_rss_mb: 0.0, first_frame_ms: None })
    }

    /// One untimed no-cache request, so first-call costs (allocator, thread pools, page cache) do
    /// not land in the first timed case.
    pub async fn warm_up(&self) -> anyhow::Result<()> {
        self.nocache(self.image, &wav(self.clip, 0)).await.map(|_| ())
    }

    /// Rendering throughput on this context's device: one VIP session alone, then `n` started
    /// together, each on its own cached avatar with new audio.
    pub async fn throughput(&self, n: usize) -> anyhow::Result<Throughput> {
        let mut avatars = Vec::with_capacity(n);
        for _ in 0..n {
            let img = image_variant(self.image, self.variants.next())?;
            let (ih, _) = self.store(&img, &wav(self.clip, 0)).await?;
            let mut t = Tracker::default();
            let avatar = ensure_analysis(self.ctx, &mut t, &ih, self.options.preprocess).await.map_err(job_err)?;
            ensure_prepared(self.ctx, &mut t, &self.engine, &ih, &avatar, self.options.size).await.map_err(job_err)?;
            avatars.push(img);
        }
        let (one, frames) = self.generate_counted(&avatars[0], &wav(self.clip, self.variants.next())).await?;
        let audios: Vec<Vec<u8>> = (0..n).map(|_| wav(self.clip, self.variants.next())).collect();
        let start = Instant::now();
        let runs = avatars.iter().zip(&audios).map(|(img, audio)| self.generate_counted(img, audio));
        let all = futures_util::future::try_join_all(runs).await?;
        let all_ms = vipavatar_pipeline::ms_since(start);
        let all_frames = all.iter().map(|(_, f)| f).sum();
        Ok(Throughput::new(n, self.clip.seconds, frames, one.wall_ms, all_frames, all_ms))
    }

    /// Run `runs` rounds of cold, warm, hot, no-cache (interleaved so drift hits all alike).
    pub async fn run(&self, runs: usize) -> anyhow::Result<Group> {
        // The VIP avatar: analysed and prepared once, untimed.
        let warm_image = image_variant(self.image, self.variants.next())?;
        let (wh, _) = self.store(&warm_image, &wav(self.clip, 0)).await?;
        let mut t = Tracker::default();
        let avatar = ensure_analysis(self.ctx, &mut t, &wh, self.options.preprocess).await.map_err(job_err)?;
        ensure_prepared(self.ctx, &mut t, &self.engine, &wh, &avatar, self.options.size).await.map_err(job_err)?;
        // The repeat request's video, made once, untimed.
        let hot_audio = wav(self.clip, self.variants.next());
        self.generate(&warm_image, &hot_audio).await?;
        // The no-cache request: the same bytes every time (nothing is cached for them anyway).
        let (nc_image, nc_audio) =
            (image_variant(self.image, self.variants.next())?, wav(self.clip, self.variants.next()));

        let cases = Case::ALL.iter().chain([Case::Oneshot].iter());
        let mut samples: Vec<(Case, Vec<Sample>)> = cases.map(|c| (*c, Vec::new())).collect();
        for _ in 0..runs {
            for (case, out) in samples.iter_mut() {
                reset_peak_rss();
                let mut s = match case {
                    Case::Cold => {
                        let img = image_variant(self.image, self.variants.next())?;
                        self.generate(&img, &wav(self.clip, self.variants.next())).await?
                    }
                    Case::Warm => self.generate(&warm_image, &wav(self.clip, self.variants.next())).await?,
                    Case::Hot => self.hot(&wh, &hot_audio).await?,
                    Case::Nocache => self.nocache(&nc_image, &nc_audio).await?,
                    Case::Oneshot => self.oneshot(&nc_image, &nc_audio).await?,
                };
                s.peak_rss_mb = peak_rss_mb();
                tracing::debug!(case = case.label(), wall_ms = s.wall_ms, "in-process sample");
                out.push(s);
            }
        }
        Ok(Group::new(Mode::InProcess, self.clip.seconds, &samples))
    }
}

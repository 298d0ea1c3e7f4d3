//! End-to-end cases: the real service ([`Application`]: actix API + Redis queue + one in-process
//! worker) on a loopback port, driven over HTTP. Each sample runs from the first POST until
//! the status route says the video is ready. The service has no switch to turn the cache off, so
//! the no-cache baseline deletes every cache key and stored file of its image and audio before
//! each request: the server then does exactly what a cache-less server would (upload,
//! precompute, prepare, features, motion, render, encode).

use crate::http::{file_part, Client};
use crate::inputs::{image_variant, wav, Clip, Variants};
use crate::report::{peak_rss_mb, reset_peak_rss, Case, Group, Mode, Sample};
use anyhow::{anyhow, bail, Context};
use reqwest::multipart::Form;
use serde_json::Value;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use vipavatar::{Application, Config};
use vipavatar_cache::{AudioHash, ImageHash};
use vipavatar_pipeline::engine::EngineKind;

/// The running service.
pub struct Server {
    client: Client,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    redis_url: String,
    namespace: String,
    data_dir: PathBuf,
    poll: Duration,
}

impl Server {
    /// Build the service (port 0, one worker) and wait until `/readyz` answers 200.
    pub async fn start(config: Config, poll: Duration) -> anyhow::Result<Self> {
        let redis_url = config
            .redis_url
            .as_deref()
            .map(str::to_string)
            .ok_or_else(|| anyhow!("the end-to-end bench needs a Redis URL"))?;
        let app = Application::build(config.clone(), 1).await.context("start the service")?;
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], app.port()));
        let task = vipavatar::spawn_named("bench-server", app.run_until_stopped());
        let server = Self {
            client: Client::new(addr)?,
            task,
            redis_url,
            namespace: config.namespace.as_str().to_string(),
            data_dir: config.data_dir.clone(),
            poll,
        };
        let start = Instant::now();
        loop {
            match server.client.get_json("/readyz").await {
                Ok((200, _)) => return Ok(server),
                Ok((_, body)) if start.elapsed() > Duration::from_secs(300) => {
                    bail!("service not ready after 300 s: {body}")
                }
                Err(e) if start.elapsed() > Duration::from_secs(300) => return Err(e),
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// Stop serving (the worker and HTTP tasks end with the runtime).
    pub fn stop(self) {
        self.task.abort();
    }

    async fn upload(&self, image: &[u8]) -> anyhow::Result<String> {
        let image = file_part("portrait.png", mime_of(image), image)?;
        let form = Form::new().part("image_file", image).text("preprocess_mode", "crop");
        let (status, body) = self.client.post_form("/api/avatar/upload", form).await?;
        if status != 200 && status != 202 {
            bail!("upload answered {status}: {body}");
        }
        str_field(&body, "image_id")
    }

    async fn wait_avatar(&self, id: &str) -> anyhow::Result<Value> {
        let start = Instant::now();
        loop {
            let (status, body) = self.client.get_json(&format!("/api/avatar/status/{id}")).await?;
            match (status, body["status"].as_str()) {
                (200, Some("ready")) => return Ok(body),
                (200, Some("processing")) if start.elapsed() < Duration::from_secs(600) => {
                    tokio::time::sleep(self.poll).await
                }
                _ => bail!("avatar {id}: {status} {body}"),
            }
        }
    }

    /// Wait (untimed) until the avatar's idle loop is rendered. The precompute queues that job
    /// behind the request's own generate job; a sample started while it renders would queue
    /// behind another sample's background work (one worker), not measure its own path.
    async fn wait_idle(&self, id: &str) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            match self.client.get_status(&format!("/api/avatar/thumbnail/{id}")).await? {
                409 if start.elapsed() < Duration::from_secs(600) => tokio::time::sleep(self.poll).await,
                409 => bail!("the idle loop of {id} was not rendered after 600 s"),
                _ => return Ok(()),
            }
        }
    }

    /// POST generate; the session id and whether the video came from the cache.
    async fn generate(&self, image_id: &str, audio: &[u8], engine: EngineKind) -> anyhow::Result<(String, bool)> {
        let form = Form::new()
            .text("image_id", image_id.to_string())
            .text("engine", engine.as_str())
            .part("audio_file", file_part("speech.wav", "audio/wav", audio)?);
        let (status, body) = self.client.post_form("/api/vip/generate", form).await?;
        if status != 200 && status != 202 {
            bail!("generate answered {status}: {body}");
        }
        Ok((str_field(&body, "session_id")?, body["cached"].as_bool() == Some(true)))
    }

    async fn wait_session(&self, id: &str) -> anyhow::Result<Value> {
        let start = Instant::now();
        loop {
            let (status, body) = self.client.get_json(&format!("/api/vip/status/{id}")).await?;
            match (status, body["status"].as_str()) {
                (200, Some("ready")) => return Ok(body),
                (200, Some("queued" | "processing")) if start.elapsed() < Duration::from_secs(900) => {
                    tokio::time::sleep(self.poll).await
                }
                _ => bail!("session {id}: {status} {body}"),
            }
        }
    }

    /// Delete every cache key and stored file that belongs to `image` or `audio`.
    async fn forget(&self, image: &ImageHash, audio: &AudioHash) -> anyhow::Result<()> {
        let client = redis::Client::open(self.redis_url.as_str())?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        for hash in [image.as_str(), audio.as_str()] {
            let pattern = format!("{}:*{hash}*", self.namespace);
            for keys in vipavatar_cache::scan(&mut conn, &pattern).await?.chunks(1000) {
                redis::cmd("DEL").arg(keys).query_async::<()>(&mut conn).await?;
            }
        }
        let _ = std::fs::remove_file(self.data_dir.join("images").join(image.as_str()));
        let _ = std::fs::remove_file(self.data_dir.join("audio").join(audio.as_str()));
        if let Ok(dir) = std::fs::read_dir(self.data_dir.join("videos")) {
            for e in dir.flatten() {
                if e.file_name().to_string_lossy().contains(image.as_str()) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        Ok(())
    }
}

fn mime_of(image: &[u8]) -> &'static str {
    if image.starts_with(&[0xFF, 0xD8]) {
        "image/jpeg"
    } else {
        "image/png"
    }
}

fn str_field(body: &Value, name: &str) -> anyhow::Result<String> {
    body[name].as_str().map(String::from).ok_or_else(|| anyhow!("no `{name}` in {body}"))
}

/// Stage times (seconds in the JSON) of a status body's `pointer` map, as milliseconds.
fn stages(body: &Value, pointer: &str) -> Vec<(String, f64)> {
    body.pointer(pointer)
        .and_then(Value::as_object)
        .map(|m| m.iter().filter_map(|(k, v)| v.as_f64().map(|s| (k.clone(), s * 1e3))).collect())
        .unwrap_or_default()
}

/// One engine, one clip, over HTTP.
pub struct EndToEnd<'a> {
    pub server: &'a Server,
    pub engine: EngineKind,
    pub image: &'a [u8],
    pub clip: &'a Clip,
    pub variants: &'a Variants,
}

impl EndToEnd<'_> {
    /// Upload + generate + wait; stages of the precompute job and the generate job.
    async fn upload_and_generate(&self, image: &[u8], audio: &[u8]) -> anyhow::Result<Sample> {
        let start = Instant::now();
        let image_id = self.server.upload(image).await?;
        let (sid, _) = self.server.generate(&image_id, audio, self.engine).await?;
        let session = self.server.wait_session(&sid).await?;
        let wall_ms = vipavatar_pipeline::ms_since(start);
        let avatar = self.server.wait_avatar(&image_id).await?;
        self.server.wait_idle(&image_id).await?;
        let mut st = stages(&avatar, "/timings");
        st.extend(stages(&session, "/performance/stages"));
        Ok(Sample { wall_ms, stages_ms: st, peak_rss_mb: 0.0, first_frame_ms: None })
    }

    /// POST, then watch the live stream to its end (the time to its first media fragment),
    /// then wait for the status to say ready.
    async fn generate(&self, image_id: &str, audio: &[u8]) -> anyhow::Result<Sample> {
        let start = Instant::now();
        let (sid, _) = self.server.generate(image_id, audio, self.engine).await?;
        let live = self.server.client.get_stream(&format!("/api/vip/stream/{sid}"), start).await?;
        if live.status != 200 || !live.complete {
            bail!("the live stream of {sid} answered {} (complete: {})", live.status, live.complete);
        }
        let session = self.server.wait_session(&sid).await?;
        let wall_ms = vipavatar_pipeline::ms_since(start);
        Ok(Sample {
            wall_ms,
            stages_ms: stages(&session, "/performance/stages"),
            peak_rss_mb: 0.0,
            first_frame_ms: live.first_media_ms,
        })
    }

    async fn hot(&self, image_id: &str, audio: &[u8]) -> anyhow::Result<Sample> {
        let start = Instant::now();
        let (_, cached) = self.server.generate(image_id, audio, self.engine).await?;
        let wall_ms = vipavatar_pipeline::ms_since(start);
        if !cached {
            bail!("the repeated request was not answered from the video cache");
        }
        Ok(Sample { wall_ms, stages_ms: Vec::new(), peak_rss_mb: 0.0, first_frame_ms: None })
    }

    /// Run `runs` rounds of cold, warm, hot, no-cache (interleaved).
    pub async fn run(&self, runs: usize) -> anyhow::Result<Group> {
        let warm_image = image_variant(self.image, self.variants.next())?;
        let warm_id = self.server.upload(&warm_image).await?;
        self.server.wait_avatar(&warm_id).await?;
        self.server.wait_idle(&warm_id).await?;
        let hot_audio = wav(self.clip, self.variants.next());
        self.generate(&warm_id, &hot_audio).await?;
        let (nc_image, nc_audio) =
            (image_variant(self.image, self.variants.next())?, wav(self.clip, self.variants.next()));
        let (nc_ih, nc_ah) = (ImageHash::of(&nc_image), AudioHash::of(&nc_audio));

        let mut samples: Vec<(Case, Vec<Sample>)> = Case::ALL.iter().map(|c| (*c, Vec::new())).collect();
        for _ in 0..runs {
            for (case, out) in samples.iter_mut() {
                if *case == Case::Nocache {
                    self.server.forget(&nc_ih, &nc_ah).await?;
                }
                reset_peak_rss();
                let mut s = match case {
                    Case::Cold => {
                        let img = image_variant(self.image, self.variants.next())?;
                        self.upload_and_generate(&img, &wav(self.clip, self.variants.next())).await?
                    }
                    Case::Warm => self.generate(&warm_id, &wav(self.clip, self.variants.next())).await?,
                    Case::Hot => self.hot(&warm_id, &hot_audio).await?,
                    Case::Nocache | Case::Oneshot => self.upload_and_generate(&nc_image, &nc_audio).await?,
                };
                s.peak_rss_mb = peak_rss_mb();
                tracing::debug!(case = case.label(), wall_ms = s.wall_ms, "end-to-end sample");
                out.push(s);
            }
        }
        Ok(Group::new(Mode::EndToEnd, self.clip.seconds, &samples))
    }
}

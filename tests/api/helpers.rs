//! Test harness: one real redis-server per test binary, one app per test (port 0, its own key
//! namespace and data directory), and typed helpers for the API.

use reqwest::multipart::{Form, Part};
use reqwest::StatusCode;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use vipavatar::config::{ApiKeys, EngineChoice};
use vipavatar::Config;
use vipavatar_cache::server::TestRedis;

/// The binary's one redis-server (`vipavatar_cache::server::TestRedis`).
fn redis() -> &'static TestRedis {
    static REDIS: OnceLock<TestRedis> = OnceLock::new();
    REDIS.get_or_init(|| TestRedis::start("api-test"))
}

pub fn redis_url() -> String {
    redis().url().to_string()
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `../shared/testdata`, or `None` (with one printed line) when it is absent outside CI.
pub fn testdata() -> Option<PathBuf> {
    let dir = repo().join("../shared/testdata");
    if dir.is_dir() {
        return Some(dir);
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{} is missing (required in CI)", dir.display());
    }
    println!("skipped: {} is absent", dir.display());
    None
}

pub fn read(path: impl AsRef<Path>) -> Vec<u8> {
    std::fs::read(path.as_ref()).unwrap_or_else(|e| panic!("read {}: {e}", path.as_ref().display()))
}

/// A base config for one test: its own namespace and data dir, the classic engine on the CPU,
/// short leases so reclaim tests are quick.
pub fn test_config() -> Config {
    let ns = format!("t{}", uuid::Uuid::new_v4().simple());
    let mut c = Config::from_env().expect("config defaults");
    c.redis_url = Some(redis_url().into());
    c.bind = "127.0.0.1:0".into();
    c.data_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("api").join(&ns);
    c.checkpoints = repo().join("checkpoints");
    c.namespace = vipavatar_cache::Namespace::parse(&ns).expect("namespace");
    c.api_keys = ApiKeys::default();
    c.engine = EngineChoice::Classic;
    c.device = "cpu".into();
    c.jobs.job_lease_secs = 3;
    c.jobs.job_backoff_ms = 100;
    c
}

pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    pub config: Config,
    /// Sent as X-API-Key on every request when set.
    pub api_key: Option<String>,
}

/// The app with one in-process worker and default config.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(1, |_| {}).await
}

/// The app with `workers` in-process workers and `tweak` applied to the test config.
pub async fn spawn_app_with(workers: usize, tweak: impl FnOnce(&mut Config)) -> TestApp {
    let mut config = test_config();
    tweak(&mut config);
    let app = vipavatar::Application::build(config.clone(), workers).await.expect("build the app");
    let address = format!("http://127.0.0.1:{}", app.port());
    tokio::spawn(app.run_until_stopped());
    let api_key = config.api_keys.keys().first().cloned();
    let t = TestApp { address, client: reqwest::Client::new(), config, api_key };
    t.wait_ready().await;
    t
}

pub fn png_part(bytes: Vec<u8>) -> Part {
    Part::bytes(bytes).file_name("portrait.png").mime_str("image/png").expect("mime")
}

pub fn wav_part(bytes: Vec<u8>) -> Part {
    Part::bytes(bytes).file_name("speech.wav").mime_str("audio/wav").expect("mime")
}

/// Status code and JSON body of a response.
pub async fn json(resp: reqwest::Response) -> (StatusCode, Value) {
    let status = resp.status();
    let text = resp.text().await.expect("body");
    let body = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{status}: body is not JSON: {text:?}"));
    (status, body)
}

/// Assert an error response: status, code and the `{message, code, type}` shape.
pub fn assert_error(got: &(StatusCode, Value), status: u16, code: &str) {
    let (s, body) = got;
    assert_eq!(s.as_u16(), status, "unexpected status; body {body}");
    assert_eq!(body["code"], code, "unexpected code; body {body}");
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()), "message missing: {body}");
    assert!(body["type"].as_str().is_some(), "type missing: {body}");
    assert_eq!(body.as_object().map(|o| o.len()), Some(3), "error body must have exactly message, code, type: {body}");
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    fn with_key(&self, rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.api_key {
            Some(k) => rb.header("X-API-Key", k),
            None => rb,
        }
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.with_key(self.client.get(self.url(path))).send().await.expect("request")
    }

    pub async fn get_json(&self, path: &str) -> (StatusCode, Value) {
        json(self.get(path).await).await
    }

    pub async fn post_form(&self, path: &str, form: Form) -> (StatusCode, Value) {
        json(self.with_key(self.client.post(self.url(path)).multipart(form)).send().await.expect("request")).await
    }

    async fn wait_ready(&self) {
        let start = Instant::now();
        loop {
            let r = self.with_key(self.client.get(self.url("/readyz"))).send().await;
            if let Ok(r) = r {
                if r.status() == StatusCode::OK {
                    return;
                }
                let body = r.text().await.unwrap_or_default();
                if body.contains("failed to load") {
                    panic!("the models did not load (run checkpoints/fetch.sh): {body}");
                }
                if start.elapsed() > Duration::from_secs(120) {
                    panic!("app not ready: {body}");
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn upload(&self, image: Vec<u8>, mode: Option<&str>) -> (StatusCode, Value) {
        let mut form = Form::new().part("image_file", png_part(image));
        if let Some(m) = mode {
            form = form.text("preprocess_mode", m.to_string());
        }
        self.post_form("/api/avatar/upload", form).await
    }

    /// Poll the avatar until it leaves `processing`; returns the final status body.
    pub async fn wait_avatar(&self, image_id: &str) -> Value {
        let start = Instant::now();
        loop {
            let (s, body) = self.get_json(&format!("/api/avatar/status/{image_id}")).await;
            assert_eq!(s, StatusCode::OK, "{body}");
            if body["status"] != "processing" {
                return body;
            }
            assert!(start.elapsed() < Duration::from_secs(180), "avatar still processing: {body}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Upload and wait until ready; returns the image id.
    pub async fn ready_avatar(&self, image: Vec<u8>) -> String {
        let (s, body) = self.upload(image, None).await;
        assert!(s == StatusCode::ACCEPTED || s == StatusCode::OK, "{s}: {body}");
        let id = body["image_id"].as_str().expect("image_id").to_string();
        let status = self.wait_avatar(&id).await;
        assert_eq!(status["status"], "ready", "{status}");
        id
    }

    /// Wait until the avatar's idle loop is rendered and recorded (its thumbnail answers 200).
    pub async fn wait_idle_rendered(&self, image_id: &str) {
        let start = Instant::now();
        while self.get(&format!("/api/avatar/thumbnail/{image_id}")).await.status() != 200 {
            assert!(start.elapsed() < Duration::from_secs(120), "idle loop of {image_id} not rendered");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub async fn generate(&self, image_id: &str, audio: Vec<u8>, fields: &[(&str, &str)]) -> (StatusCode, Value) {
        let mut form = Form::new().text("image_id", image_id.to_string()).part("audio_file", wav_part(audio));
        for (k, v) in fields {
            form = form.text(k.to_string(), v.to_string());
        }
        self.post_form("/api/vip/generate", form).await
    }

    pub async fn session(&self, id: &str) -> Value {
        let (s, body) = self.get_json(&format!("/api/vip/status/{id}")).await;
        assert_eq!(s, StatusCode::OK, "{body}");
        body
    }

    /// Poll a session until ready or failed.
    pub async fn wait_session(&self, id: &str, limit: Duration) -> Value {
        let start = Instant::now();
        loop {
            let body = self.session(id).await;
            if body["status"] == "ready" || body["status"] == "failed" {
                return body;
            }
            assert!(start.elapsed() < limit, "session not finished after {limit:?}: {body}");
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    }

    /// A shared statistics counter (`computed:precompute`, `hits:3dmm_coeffs`, ...).
    pub async fn counter(&self, name: &str) -> i64 {
        let client = redis::Client::open(redis_url()).expect("redis url");
        let mut conn = client.get_multiplexed_async_connection().await.expect("redis");
        let v: Option<i64> = redis::cmd("HGET")
            .arg(format!("{}:stats", self.config.namespace.as_str()))
            .arg(name)
            .query_async(&mut conn)
            .await
            .expect("HGET");
        v.unwrap_or(0)
    }
}

/// Run ffprobe on a file: (format duration, video frames, width, height, has audio).
pub fn probe_mp4(path: &Path) -> (f64, u64, u64, u64, bool) {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-count_frames",
            "-show_entries",
            "format=duration,format_name:stream=codec_type,nb_read_frames,width,height",
        ])
        .args(["-of", "json"])
        .arg(path)
        .output()
        .expect("ffprobe");
    assert!(out.status.success(), "ffprobe failed: {}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).expect("ffprobe json");
    assert!(v["format"]["format_name"].as_str().unwrap_or_default().contains("mp4"), "{v}");
    let duration = v["format"]["duration"].as_str().and_then(|s| s.parse().ok()).expect("duration");
    let streams = v["streams"].as_array().cloned().unwrap_or_default();
    let video = streams.iter().find(|s| s["codec_type"] == "video").expect("video stream");
    let frames = video["nb_read_frames"].as_str().and_then(|s| s.parse().ok()).expect("frames");
    let has_audio = streams.iter().any(|s| s["codec_type"] == "audio");
    (duration, frames, video["width"].as_u64().unwrap_or(0), video["height"].as_u64().unwrap_or(0), has_audio)
}

/// Duration of an audio file in seconds (ffprobe).
pub fn audio_seconds(path: &Path) -> f64 {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-show_entries", "format=duration", "-of", "default=nw=1:nk=1"])
        .arg(path)
        .output()
        .expect("ffprobe");
    String::from_utf8_lossy(&out.stdout).trim().parse().expect("duration")
}

/// Make a file with ffmpeg (`args` between the input options and the output path).
/// 16 s of speech (400 frames): the shared 8 s clip twice, as `{dir}/speech.wav`.
pub fn speech_16s(data: &Path, dir: &Path) -> PathBuf {
    let audio = dir.join("speech.wav");
    let src = data.join("audio/RD_Radio31_000.wav");
    ffmpeg(
        &["-i", src.to_str().unwrap(), "-i", src.to_str().unwrap(), "-filter_complex", "concat=n=2:v=0:a=1"],
        &audio,
    );
    audio
}

/// A ready avatar of `people_0.png` and a generate of [`speech_16s`] (400 frames) for it, which
/// must be queued (202): `(image_id, audio path, session_id, the generate answer)`.
pub async fn start_16s_session(app: &TestApp, data: &Path, dir: &Path) -> (String, PathBuf, String, Value) {
    let id = app.ready_avatar(read(data.join("images/people_0.png"))).await;
    let audio = speech_16s(data, dir);
    let (s, body) = app.generate(&id, read(&audio), &[]).await;
    assert_eq!(s, 202, "{body}");
    let sid = body["session_id"].as_str().unwrap().to_string();
    (id, audio, sid, body)
}

pub fn ffmpeg(args: &[&str], out: &Path) {
    let status = Command::new("ffmpeg")
        .args(["-nostdin", "-hide_banner", "-loglevel", "error", "-y"])
        .args(args)
        .arg(out)
        .status()
        .expect("ffmpeg");
    assert!(status.success(), "ffmpeg {args:?} failed");
}

/// A scratch directory for this test.
pub fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("scratch")
        .join(format!("{name}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// Per-frame MD5s of a file's decoded video (ffmpeg's framemd5 muxer), in order.
pub fn video_frame_md5s(path: &Path) -> Vec<String> {
    let out = Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-i"])
        .arg(path)
        .args(["-map", "0:v:0", "-f", "framemd5", "-"])
        .output()
        .expect("ffmpeg");
    assert!(out.status.success(), "ffmpeg framemd5 failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit(',').next().map(|m| m.trim().to_string()))
        .collect()
}

/// Top-level MP4 box types of `bytes`, in order (panics on a malformed box).
pub fn mp4_boxes(bytes: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at + 8 <= bytes.len() {
        let size = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        assert!(size >= 8 && at + size <= bytes.len(), "box at {at} has size {size} of {}", bytes.len());
        out.push(String::from_utf8_lossy(&bytes[at + 4..at + 8]).into_owned());
        at += size;
    }
    assert_eq!(at, bytes.len(), "trailing bytes after the last box");
    out
}

/// Read a live stream: every body chunk with the session's `frames_done` when it arrived, and
/// whether the body ended cleanly (`Err`: the connection was cut).
pub async fn read_stream(app: &TestApp, sid: &str) -> (Vec<u8>, Vec<(usize, u64)>, Result<(), String>) {
    use futures_util::StreamExt;
    let resp = app.get(&format!("/api/vip/stream/{sid}")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "video/mp4");
    let mut body = resp.bytes_stream();
    let (mut bytes, mut marks) = (Vec::new(), Vec::new());
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(c) => {
                bytes.extend_from_slice(&c);
                let s = app.session(sid).await;
                marks.push((bytes.len(), s["frames_done"].as_u64().unwrap_or(0)));
            }
            Err(e) => return (bytes, marks, Err(e.to_string())),
        }
    }
    (bytes, marks, Ok(()))
}

//! The one `Config` struct (every field a `--flag` and an environment variable) and the small
//! validated values it holds (engine choice, API keys with a redacted `Debug`).

use clap::{Args, ValueEnum};
use std::path::PathBuf;
use std::time::Duration;
use vipavatar_cache::{Namespace, Ttls};

/// The environment variables (and default) that several commands read, declared once.
pub const CHECKPOINTS_ENV: &str = "VIPAVATAR_CHECKPOINTS";
pub const DEFAULT_CHECKPOINTS: &str = "./checkpoints";
pub const ENGINE_ENV: &str = "VIPAVATAR_ENGINE";

/// Which engine serves requests that do not name one (declared with the other option enums).
pub use vipavatar_pipeline::engine::EngineChoice;

/// Accepted `X-API-Key` values. `Debug` never prints them.
#[derive(Clone, Default)]
pub struct ApiKeys(Vec<String>);

impl ApiKeys {
    /// Comma-separated list; blanks are ignored. An empty list means "auth off".
    pub fn parse(s: &str) -> Result<Self, String> {
        Ok(Self(s.split(',').map(str::trim).filter(|k| !k.is_empty()).map(String::from).collect()))
    }
    pub fn is_enabled(&self) -> bool {
        !self.0.is_empty()
    }
    pub fn keys(&self) -> &[String] {
        &self.0
    }
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKeys([{} redacted])", self.0.len())
    }
}

/// `REDIS_URL`: it may carry a password, so `Debug` (and every message built with
/// [`RedisUrl::redacted`]) shows `***` in its place.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl(String);

impl RedisUrl {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The URL with the password (or a lone user-info secret) replaced by `***`.
    pub fn redacted(&self) -> String {
        redact_url(&self.0)
    }

    fn parse(s: &str) -> Result<Self, String> {
        Ok(Self(s.to_string()))
    }
}

impl std::ops::Deref for RedisUrl {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl From<String> for RedisUrl {
    fn from(s: String) -> Self {
        Self(s)
    }
}

impl From<&str> for RedisUrl {
    fn from(s: &str) -> Self {
        Self(s.to_string())
    }
}

impl std::fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RedisUrl({:?})", self.redacted())
    }
}

/// `url` with the user-info secret replaced by `***` (a URL without one is returned as is).
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map(|(u, _)| format!("{u}:***")).unwrap_or_else(|| "***".into());
            format!("{scheme}://{user}@{host}{path}")
        }
        None => url.to_string(),
    }
}

/// A credential or signing key. `Debug` and `Display` never print it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn parse(s: &str) -> Result<Self, String> {
        Ok(Self(s.to_string()))
    }
    /// The value itself, for the one place that needs it (a signer, a client builder).
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

fn parse_namespace(s: &str) -> Result<Namespace, String> {
    Namespace::parse(s).map_err(|e| e.to_string())
}

/// Service configuration shared by `serve`, `worker` and the tests.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Redis to use; unset = start a private redis-server child with its data in the data dir.
    #[arg(long, env = "REDIS_URL", value_parser = RedisUrl::parse)]
    pub redis_url: Option<RedisUrl>,

    /// Address the HTTP API listens on (port 0 picks a free port).
    #[arg(long, env = "VIPAVATAR_BIND", default_value = "127.0.0.1:8000")]
    pub bind: String,

    /// Where originals, audio, videos and the private Redis live (share it between machines).
    #[arg(long, env = "VIPAVATAR_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// Model files (see checkpoints/manifest.json).
    #[arg(long, env = CHECKPOINTS_ENV, default_value = DEFAULT_CHECKPOINTS)]
    pub checkpoints: PathBuf,

    /// Default engine for requests that do not choose one.
    #[arg(long, env = ENGINE_ENV, value_enum, default_value = "auto")]
    pub engine: EngineChoice,

    /// Compute devices, one model owner each; workers are spread over them round-robin:
    /// auto (every GPU, else the CPU) | cpu | cuda | cuda:N | cuda:all | a comma list (`cuda:0,cuda:1`).
    #[arg(long, env = "VIPAVATAR_DEVICE", default_value = "auto")]
    pub device: String,

    /// Comma-separated accepted X-API-Key values; unset or empty = no authentication.
    #[arg(long, env = "API_KEYS", value_parser = ApiKeys::parse, default_value = "", hide_default_value = true)]
    pub api_keys: ApiKeys,

    /// Prefix of every Redis key, stream and counter of this deployment.
    #[arg(long, env = "VIPAVATAR_NAMESPACE", value_parser = parse_namespace, default_value = "vipavatar")]
    pub namespace: Namespace,

    #[command(flatten)]
    pub limits: Limits,

    #[command(flatten)]
    pub ttl: TtlArgs,

    #[command(flatten)]
    pub jobs: JobArgs,

    #[command(flatten)]
    pub edge: EdgeArgs,

    #[command(flatten)]
    pub storage: StorageArgs,

    #[command(flatten)]
    pub fetch: FetchArgs,

    #[command(flatten)]
    pub webhooks: WebhookArgs,
}

/// Signed webhook deliveries (`callback_url`).
#[derive(Debug, Clone, Args)]
pub struct WebhookArgs {
    /// Standard Webhooks signing secret (`whsec_<base64>`, or any string); unset: requests with
    /// a `callback_url` are refused. Never logged.
    #[arg(long, env = "VIPAVATAR_WEBHOOK_SECRET", value_parser = Secret::parse, hide_env_values = true)]
    pub webhook_secret: Option<Secret>,
    /// Attempts per delivery before it is given up.
    #[arg(long, env = "VIPAVATAR_WEBHOOK_MAX_ATTEMPTS", default_value_t = 8)]
    pub webhook_max_attempts: u32,
    /// Wait before the second attempt in milliseconds; doubles per attempt.
    #[arg(long, env = "VIPAVATAR_WEBHOOK_BACKOFF_MS", default_value_t = 1000)]
    pub webhook_backoff_ms: u64,
    /// Longest wait for a receiver's answer, in seconds.
    #[arg(long, env = "VIPAVATAR_WEBHOOK_TIMEOUT_SECS", default_value_t = 10)]
    pub webhook_timeout_secs: u64,
}

/// Server-side fetches of client-given URLs (`image_url`, `audio_url`, `callback_url`).
#[derive(Debug, Clone, Args)]
pub struct FetchArgs {
    /// Let fetches reach loopback, private, link-local and metadata addresses (never in
    /// production: any client could make the server read internal services).
    #[arg(long, env = "VIPAVATAR_FETCH_ALLOW_PRIVATE")]
    pub fetch_allow_private: bool,
    /// Comma list of networks (`10.1.0.0/16`, `192.168.1.7`) or host names that fetches may
    /// reach although they are private.
    #[arg(long, env = "VIPAVATAR_FETCH_ALLOW", default_value = "")]
    pub fetch_allow: String,
    /// Redirects followed per fetch (each target checked again).
    #[arg(long, env = "VIPAVATAR_FETCH_MAX_REDIRECTS", default_value_t = 3)]
    pub fetch_max_redirects: usize,
    /// Connection timeout per fetch, in milliseconds.
    #[arg(long, env = "VIPAVATAR_FETCH_CONNECT_TIMEOUT_MS", default_value_t = 5000)]
    pub fetch_connect_timeout_ms: u64,
    /// Longest silence while reading a fetched body, in seconds.
    #[arg(long, env = "VIPAVATAR_FETCH_READ_TIMEOUT_SECS", default_value_t = 15)]
    pub fetch_read_timeout_secs: u64,
    /// Longest whole fetch, in seconds.
    #[arg(long, env = "VIPAVATAR_FETCH_TIMEOUT_SECS", default_value_t = 60)]
    pub fetch_timeout_secs: u64,
}

/// Where blobs (originals, audio, videos, thumbnails, idle loops) live.
#[derive(Debug, Clone, Args)]
pub struct StorageArgs {
    /// Blob storage: unset = the data directory; a path = that local directory;
    /// `s3://bucket/prefix` = an S3-compatible object store (AWS S3, MinIO, R2, ...).
    #[arg(long, env = "VIPAVATAR_STORAGE")]
    pub storage: Option<String>,
    /// S3 endpoint URL (unset: AWS, or `AWS_ENDPOINT`); `http://` allows plain HTTP.
    #[arg(long, env = "VIPAVATAR_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    /// Endpoint written into presigned download URLs, when clients reach the store at another
    /// address than this service does (unset: the endpoint).
    #[arg(long, env = "VIPAVATAR_S3_PUBLIC_ENDPOINT")]
    pub s3_public_endpoint: Option<String>,
    /// S3 region (unset: `AWS_REGION`, else us-east-1).
    #[arg(long, env = "VIPAVATAR_S3_REGION")]
    pub s3_region: Option<String>,
    /// S3 access key id (unset: `AWS_ACCESS_KEY_ID` or the instance's role).
    #[arg(long, env = "VIPAVATAR_S3_ACCESS_KEY_ID", value_parser = Secret::parse)]
    pub s3_access_key_id: Option<Secret>,
    /// S3 secret access key (unset: `AWS_SECRET_ACCESS_KEY`); never logged.
    #[arg(long, env = "VIPAVATAR_S3_SECRET_ACCESS_KEY", value_parser = Secret::parse, hide_env_values = true)]
    pub s3_secret_access_key: Option<Secret>,
    /// Lifetime of the presigned download URLs handed out with object storage, in seconds.
    #[arg(long, env = "VIPAVATAR_PRESIGN_TTL_SECS", default_value_t = 3600)]
    pub presign_ttl_secs: u64,
    /// This service's public base URL (`https://avatars.example.com`): download URLs in status
    /// answers become absolute links to it (unset: relative, or the presigned URL with S3).
    #[arg(long, env = "VIPAVATAR_PUBLIC_URL")]
    pub public_url: Option<String>,
}

/// Timeouts at the edges of a request: the client's body, and every Redis call.
#[derive(Debug, Clone, Args)]
pub struct EdgeArgs {
    /// A request body that sends nothing for this long is answered 408 `body_timeout`.
    #[arg(long, env = "VIPAVATAR_BODY_TIMEOUT_SECS", default_value_t = 15)]
    pub body_timeout_secs: u64,
    /// Longest wait for one Redis reply (or connection attempt) before a request fails with
    /// 503 `redis_unavailable`.
    #[arg(long, env = "VIPAVATAR_REDIS_TIMEOUT_MS", default_value_t = 2000)]
    pub redis_timeout_ms: u64,
    /// Serve `/metrics` without an API key even when `API_KEYS` is set.
    #[arg(long, env = "VIPAVATAR_METRICS_OPEN")]
    pub metrics_open: bool,
}

impl EdgeArgs {
    pub fn body_timeout(&self) -> Duration {
        Duration::from_secs(self.body_timeout_secs.max(1))
    }
    pub fn redis_timeout(&self) -> Duration {
        Duration::from_millis(self.redis_timeout_ms.max(50))
    }
}

/// Request size limits.
#[derive(Debug, Clone, Args)]
pub struct Limits {
    /// Largest accepted image upload in bytes.
    #[arg(long, env = "VIPAVATAR_MAX_IMAGE_BYTES", default_value_t = 20 * 1024 * 1024)]
    pub max_image_bytes: u64,
    /// Largest accepted image in pixels (width*height), checked from the header.
    #[arg(long, env = "VIPAVATAR_MAX_IMAGE_PIXELS", default_value_t = 4096 * 4096)]
    pub max_image_pixels: u64,
    /// Largest accepted audio upload in bytes.
    #[arg(long, env = "VIPAVATAR_MAX_AUDIO_BYTES", default_value_t = 50 * 1024 * 1024)]
    pub max_audio_bytes: u64,
    /// Longest accepted audio in seconds.
    #[arg(long, env = "VIPAVATAR_MAX_AUDIO_SECONDS", default_value_t = 300.0)]
    pub max_audio_seconds: f64,
}

/// Cache lifetimes per tier, in seconds (0 = never expires).
#[derive(Debug, Clone, Args)]
pub struct TtlArgs {
    /// Tier 1 (face detection, landmarks, crops, source state).
    #[arg(long, env = "VIPAVATAR_TTL_TIER1_SECS", default_value_t = 30 * 24 * 3600)]
    pub ttl_tier1_secs: u64,
    /// Tier 1 `3dmm_coeffs` (0 = never expires).
    #[arg(long, env = "VIPAVATAR_TTL_COEFFS_SECS", default_value_t = 0)]
    pub ttl_coeffs_secs: u64,
    /// Tier 2 (gestures, visemes, audio features, motion, videos).
    #[arg(long, env = "VIPAVATAR_TTL_TIER2_SECS", default_value_t = 7 * 24 * 3600)]
    pub ttl_tier2_secs: u64,
    /// Tier 3 (sessions).
    #[arg(long, env = "VIPAVATAR_TTL_SESSION_SECS", default_value_t = 3600)]
    pub ttl_session_secs: u64,
}

impl TtlArgs {
    pub fn ttls(&self) -> Ttls {
        Ttls::from_secs(self.ttl_tier1_secs, self.ttl_coeffs_secs, self.ttl_tier2_secs, self.ttl_session_secs)
    }
}

/// Job queue behaviour.
#[derive(Debug, Clone, Args)]
pub struct JobArgs {
    /// A claimed job whose worker has not sent a heartbeat for this long is reclaimed by another.
    #[arg(long, env = "VIPAVATAR_JOB_LEASE_SECS", default_value_t = 60)]
    pub job_lease_secs: u64,
    /// Attempts per job (a crashed worker's attempt counts) before the session fails.
    #[arg(long, env = "VIPAVATAR_JOB_MAX_ATTEMPTS", default_value_t = 3)]
    pub job_max_attempts: u32,
    /// First retry delay in milliseconds; doubles per attempt.
    #[arg(long, env = "VIPAVATAR_JOB_BACKOFF_MS", default_value_t = 1000)]
    pub job_backoff_ms: u64,
    /// Audio longer than this (seconds) is split at quiet points into parts of at most about
    /// this length that several workers render at once; 0 never splits.
    #[arg(long, env = "VIPAVATAR_SPLIT_SECONDS", default_value_t = 30.0)]
    pub split_seconds: f64,
    #[command(flatten)]
    pub x264: X264Args,
    /// Keep an ffmpeg started ahead of the next encode (each finished video starts one with the
    /// same command line), so no video waits for ffmpeg to start (60-100 ms here).
    #[arg(long, env = "VIPAVATAR_FFMPEG_AHEAD", default_value_t = true, action = clap::ArgAction::Set)]
    pub ffmpeg_ahead: bool,
    /// Temporary files in `{data}/tmp` that no live process owns are removed; unowned (legacy)
    /// ones, and this process's own while none of its jobs runs, once older than this.
    #[arg(long, env = "VIPAVATAR_TMP_MAX_AGE_SECS", default_value_t = 3600)]
    pub tmp_max_age_secs: u64,
    /// How often `{data}/tmp` is swept (also once at start-up).
    #[arg(long, env = "VIPAVATAR_TMP_SWEEP_SECS", default_value_t = 600)]
    pub tmp_sweep_secs: u64,
    /// Upload and generate answer 429 `overloaded` (with Retry-After) instead of queueing more
    /// while the queues hold more than this many waiting jobs (0: no limit).
    #[arg(long, env = "VIPAVATAR_MAX_QUEUED", default_value_t = 1000)]
    pub max_queued: u64,
    /// Tests only: the N-th call (1-based) on each device's model thread panics, to exercise the
    /// panic boundary and the engine rebuild. Unset in production.
    #[arg(long, env = "VIPAVATAR_TEST_PANIC_MODEL_CALL", hide = true)]
    pub test_panic_model_call: Option<u64>,
}

impl JobArgs {
    /// Set this process's encoder behaviour: x264's settings, and whether each encode leaves an
    /// ffmpeg started for the next (what a worker process, or the bench acting as one, does).
    pub fn apply_encoding(&self) {
        vipavatar_pipeline::video::warm::keep(self.ffmpeg_ahead);
        self.x264.apply();
    }

    pub fn lease(&self) -> Duration {
        Duration::from_secs(self.job_lease_secs.max(1))
    }
}

impl Config {
    /// Parse from the environment and defaults only (tests build on this and override fields).
    pub fn from_env() -> Result<Self, clap::Error> {
        #[derive(clap::Parser)]
        struct Only {
            #[command(flatten)]
            config: Config,
        }
        use clap::Parser;
        Only::try_parse_from(["vipavatar"]).map(|o| o.config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_keys_are_redacted_and_parsed() {
        let keys = ApiKeys::parse(" a1 , ,b2,").unwrap();
        assert_eq!(keys.keys(), ["a1", "b2"]);
        let dbg = format!("{keys:?}");
        assert!(!dbg.contains("a1") && !dbg.contains("b2"), "{dbg}");
        assert!(!ApiKeys::parse("").unwrap().is_enabled());
    }

    #[test]
    fn storage_credentials_never_reach_debug() {
        let mut c = Config::from_env().unwrap();
        c.storage.s3_access_key_id = Some(Secret::parse("AKIDEXAMPLE123").unwrap());
        c.storage.s3_secret_access_key = Some(Secret::parse("wJalrXUtnFEMIsecret").unwrap());
        c.webhooks.webhook_secret = Some(Secret::parse("whsec_c2VjcmV0LXNpZ25pbmcta2V5").unwrap());
        let dbg = format!("{c:?}");
        for secret in ["AKIDEXAMPLE123", "wJalrXUtnFEMIsecret", "c2VjcmV0LXNpZ25pbmcta2V5"] {
            assert!(!dbg.contains(secret), "{dbg}");
        }
        assert!(dbg.contains("redacted"), "{dbg}");
    }

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(redact_url("redis://default:s3cret@db.example:6379/2"), "redis://default:***@db.example:6379/2");
        assert_eq!(redact_url("rediss://:s3cret@db.example"), "rediss://:***@db.example");
        assert_eq!(redact_url("redis://s3cret@db.example"), "redis://***@db.example");
        assert_eq!(redact_url("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(redact_url("redis+unix:///tmp/r.sock"), "redis+unix:///tmp/r.sock");
        assert!(!redact_url("redis://u:p@ss@h/0").contains("p@ss"));
    }

    #[test]
    fn x264_settings_parse_and_a_wrong_preset_is_refused() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            x264: X264Args,
        }
        use clap::Parser;
        let d = Cli::try_parse_from(["t"]).expect("defaults").x264;
        assert_eq!((d.x264_preset.as_str(), d.x264_threads), ("veryfast", 1));
        let set = Cli::try_parse_from(["t", "--x264-preset", "superfast", "--x264-threads", "0"]).expect("flags").x264;
        assert_eq!((set.x264_preset.as_str(), set.x264_threads), ("superfast", 0));
        assert!(Cli::try_parse_from(["t", "--x264-preset", "lightning"]).is_err(), "not an x264 preset");
    }

    #[test]
    fn config_debug_redacts_the_redis_password() {
        let mut config = Config::from_env().expect("defaults parse");
        config.redis_url = Some("redis://default:s3cret@db.example:6379/2".into());
        let dbg = format!("{config:?}");
        assert!(!dbg.contains("s3cret"), "{dbg}");
        assert!(dbg.contains("redis://default:***@db.example:6379/2"), "{dbg}");
        assert_eq!(config.redis_url.as_deref(), Some("redis://default:s3cret@db.example:6379/2"));
    }
}

/// x264 presets, fastest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum X264Preset {
    Ultrafast,
    Superfast,
    Veryfast,
    Faster,
    Fast,
    Medium,
    Slow,
}

impl X264Preset {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ultrafast => "ultrafast",
            Self::Superfast => "superfast",
            Self::Veryfast => "veryfast",
            Self::Faster => "faster",
            Self::Fast => "fast",
            Self::Medium => "medium",
            Self::Slow => "slow",
        }
    }
}

/// x264's speed settings for every encode of the process (`serve`, `worker`, `generate`).
#[derive(Debug, Clone, Copy, Args)]
pub struct X264Args {
    /// x264 speed preset (`superfast`: faster, files about a third larger).
    #[arg(long, env = "VIPAVATAR_X264_PRESET", value_enum, default_value = "veryfast")]
    pub x264_preset: X264Preset,
    /// x264 threads per encode (0: x264 decides; 1 leaves the other cores to the renderer).
    #[arg(long, env = "VIPAVATAR_X264_THREADS", default_value_t = 1)]
    pub x264_threads: u32,
}

impl X264Args {
    /// Make these the settings of every later encode in this process.
    pub fn apply(&self) {
        vipavatar_pipeline::video::set_x264(vipavatar_pipeline::video::X264 {
            preset: self.x264_preset.as_str(),
            threads: self.x264_threads,
        });
    }
}

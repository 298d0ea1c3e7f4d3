//! `vipavatar bench` (the `vipavatar-bench` binary, which `vipavatar bench` runs): proves the
//! precompute/generate split pays off. For each engine that can be loaded, for each audio
//! length, it measures in one process four request kinds — cold (new image and new audio),
//! warm (cached image and new audio: the VIP path), hot (same image, audio and options: the
//! finished video from the cache) and no-cache (the same pipeline with nothing cached) — both
//! in-process (the worker's job functions on the real cache, [`inproc`]) and end
//! to end (HTTP + Redis queue + worker, [`e2e`]), on a private redis-server child, and prints a
//! table ([`report`]) or `--json`. It is its own crate so the service library carries neither
//! the benchmark nor an HTTP client; it drives the service through the `vipavatar` library.

pub mod e2e;
pub mod http;
pub mod inproc;
pub mod inputs;
pub mod report;
pub mod standin;

use anyhow::{anyhow, Context};
use clap::{Parser, ValueEnum};
use report::{BenchReport, EngineReport};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use vipavatar::config::{ApiKeys, Config};
use vipavatar::engines::Engines;
use vipavatar::jobs::{JobContext, ModelThread};
use vipavatar::redis_server::RedisChild;
use vipavatar::startup::Services;
use vipavatar_pipeline::engine::{EngineKind, GenerateOptions};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EngineSel {
    All,
    Classic,
    Sadtalker,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModeSel {
    Both,
    InProcess,
    EndToEnd,
}

/// Options of `vipavatar bench`. The defaults (3 runs of 3 s and 8 s audio, one pass of 60 s,
/// both modes, every engine) take a few minutes on a 2-core machine with the classic engine.
#[derive(Debug, Clone, Parser)]
#[command(name = "vipavatar bench", version)]
#[command(about = "Benchmark cold / warm (VIP) / hot / no-cache requests, in-process and end to end.")]
#[command(after_help = "Defaults: 3 timed runs per case for 3 s and 8 s audio, one pass of 60 s audio, both modes, \
every engine (an engine that cannot be loaded is reported as unavailable): about 2 minutes on a 2-core machine with \
the classic engine. Times are medians; p90 is nearest-rank (with 3 runs, the slowest run). Speedups are ratios of \
medians from the same process, so they hold up on a noisy machine better than absolute times.")]
pub struct BenchArgs {
    /// Timed runs per case for audio shorter than 30 s.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Timed runs per case for audio of 30 s or more.
    #[arg(long, default_value_t = 1)]
    pub long_runs: usize,
    /// Audio lengths in seconds, comma-separated (trimmed or concatenated from the test audio).
    #[arg(long, value_delimiter = ',', default_value = "3,8,60")]
    pub audio: Vec<f64>,
    /// The audio length whose in-process speedups are each engine's headline numbers.
    #[arg(long, default_value_t = 8.0)]
    pub headline_seconds: f64,
    #[arg(long, value_enum, default_value = "all")]
    pub engine: EngineSel,
    #[arg(long, value_enum, default_value = "both")]
    pub mode: ModeSel,
    /// Test data folder (images/ and audio/ with .wav files).
    #[arg(long, env = "VIPAVATAR_TESTDATA", default_value = "../shared/testdata")]
    pub testdata: PathBuf,
    /// Portrait to animate (PNG or JPEG); default `{testdata}/images/people_0.png`.
    #[arg(long)]
    pub image: Option<PathBuf>,
    #[arg(long, env = vipavatar::config::CHECKPOINTS_ENV, default_value = vipavatar::config::DEFAULT_CHECKPOINTS)]
    pub checkpoints: PathBuf,
    /// Scratch folder for the private redis-server, originals and videos; default a fresh
    /// temporary folder, removed afterwards.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Status polling interval of the end-to-end cases, in milliseconds.
    #[arg(long, default_value_t = 10)]
    pub poll_ms: u64,
    /// Print the report as JSON instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Also write the JSON report to this file (with the table on stdout).
    #[arg(long)]
    pub json_out: Option<PathBuf>,
    /// Time the sadtalker engine on stand-in checkpoints that the bench writes itself (the
    /// official file names and tensor layout, seeded random weights; about 800 MB in the scratch
    /// folder, kept there with --data-dir): timings are real, the videos are noise. The other
    /// model files come from --checkpoints. On a CPU use short audio, e.g. `--audio 1,2`.
    #[arg(long)]
    pub sadtalker_stand_in: bool,
    /// Also measure rendering throughput on one device: one VIP session alone, then N started
    /// together (shortest --audio length, in-process), frames per second of each. 0: skip.
    #[arg(long, default_value_t = 0)]
    pub concurrent: usize,
}

impl BenchArgs {
    /// A small configuration (for tests): one run, one audio length, every engine, both modes.
    pub fn tiny(testdata: &Path, checkpoints: &Path, seconds: f64) -> Self {
        Self {
            runs: 1,
            long_runs: 1,
            audio: vec![seconds],
            headline_seconds: seconds,
            engine: EngineSel::All,
            mode: ModeSel::Both,
            testdata: testdata.to_path_buf(),
            image: None,
            checkpoints: checkpoints.to_path_buf(),
            data_dir: None,
            poll_ms: 10,
            json: true,
            json_out: None,
            sadtalker_stand_in: false,
            concurrent: 0,
        }
    }
}

/// Run the benchmark and print the table (or JSON).
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let report = run_bench(&args).await?;
    if let Some(path) = &args.json_out {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("write {}", path.display()))?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report::render_table(&report));
    }
    Ok(())
}

/// Removes the scratch folder when the benchmark made it.
struct Scratch {
    dir: PathBuf,
    remove: bool,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.remove {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn base_config(
    args: &BenchArgs,
    redis_url: &str,
    data_dir: &Path,
    namespace: &str,
    max_audio: f64,
) -> anyhow::Result<Config> {
    let mut c = Config::from_env().map_err(|e| anyhow!("configuration: {e}"))?;
    c.redis_url = Some(redis_url.into());
    c.bind = "127.0.0.1:0".into();
    c.data_dir = data_dir.to_path_buf();
    c.checkpoints = args.checkpoints.clone();
    c.api_keys = ApiKeys::default();
    c.namespace = vipavatar_cache::Namespace::parse(namespace)?;
    c.limits.max_audio_seconds = c.limits.max_audio_seconds.max(max_audio + 1.0);
    c.limits.max_audio_bytes = c.limits.max_audio_bytes.max((max_audio as u64 + 1) * 32_000 + 1024);
    Ok(c)
}

/// The worker context of the in-process cases: the same pieces `spawn_workers` assembles.
async fn job_context(config: Config) -> anyhow::Result<(Arc<JobContext>, Arc<Engines>)> {
    let services = Services::connect(&config, false).await?;
    let mut rx = vipavatar::engines::load_in_background(config.clone());
    let loaded = rx.wait_for(|e| e.is_some()).await.map_err(|_| anyhow!("model loading stopped"))?.clone();
    let engines = match loaded {
        Some(Ok(e)) => e,
        Some(Err(why)) => return Err(anyhow!("models did not load: {why}")),
        None => return Err(anyhow!("models did not load")),
    };
    let model = ModelThread::spawn("bench-model")?;
    // As in a worker process (`start_workers`).
    config.jobs.apply_encoding();
    let device = vipavatar::engines::first_device(&config)?;
    let ctx = JobContext {
        config,
        cache: services.cache.clone(),
        queue: services.queue.clone(),
        blobs: services.blobs.clone(),
        streams: services.streams.clone(),
        engines: Arc::new(vipavatar::devices::DeviceModels::new(0, device, engines.clone())),
        model,
        consumer: "bench".into(),
    };
    Ok((Arc::new(ctx), engines))
}

/// Run every selected engine, mode and audio length; the report.
pub async fn run_bench(args: &BenchArgs) -> anyhow::Result<BenchReport> {
    anyhow::ensure!(args.runs >= 1 && args.long_runs >= 1, "--runs and --long-runs must be at least 1");
    let image_path = args.image.clone().unwrap_or_else(|| args.testdata.join("images").join("people_0.png"));
    let image =
        std::fs::read(&image_path).with_context(|| format!("read the benchmark image {}", image_path.display()))?;
    inputs::image_variant(&image, 1)?; // PNG or JPEG, checked before anything starts
    let (audio_dir, lengths) = (args.testdata.join("audio"), args.audio.clone());
    let clips = tokio::task::spawn_blocking(move || inputs::build_clips(&audio_dir, &lengths)).await??;
    let max_audio = clips.iter().map(|c| c.seconds).fold(0.0, f64::max);

    let scratch = match &args.data_dir {
        Some(d) => Scratch { dir: d.clone(), remove: false },
        None => Scratch {
            dir: std::env::temp_dir().join(format!("vipavatar-bench-{}", uuid::Uuid::new_v4().simple())),
            remove: true,
        },
    };
    std::fs::create_dir_all(&scratch.dir).with_context(|| format!("create {}", scratch.dir.display()))?;
    let mut args = args.clone();
    if args.sadtalker_stand_in {
        let (models, dir) = (args.checkpoints.clone(), scratch.dir.join("standin-checkpoints"));
        args.checkpoints = tokio::task::spawn_blocking(move || standin::prepare(&models, &dir)).await??;
    }
    let args = &args;
    let redis = RedisChild::start(&scratch.dir).await?;
    let result = measure(args, &image, &clips, &scratch.dir, redis.url(), max_audio).await;
    redis.stop().await;
    let engines = result?;

    let mut sources: Vec<String> = Vec::new();
    for s in clips.iter().flat_map(|c| c.sources.iter()) {
        if !sources.contains(s) {
            sources.push(s.clone());
        }
    }
    let mut claims = BTreeMap::new();
    claims.insert(
        "speedup_vip_over_nocache".to_string(),
        "4-6x (cached image + new audio vs an uncached run)".to_string(),
    );
    claims.insert("speedup_hot_over_nocache".to_string(), "20-40x (cached audio vs an uncached run)".to_string());
    Ok(BenchReport {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        version: env!("CARGO_PKG_VERSION").to_string(),
        runs: args.runs,
        long_runs: args.long_runs,
        image: image_path.display().to_string(),
        audio_sources: sources,
        cpus: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        percentile_method: "nearest-rank (p90 = value at rank ceil(0.9 n); with 3 runs, the slowest)".into(),
        notes: vec![
            "models are loaded once, before timing, for every case but one-shot (the no-cache baseline does not pay model loading; one-shot = `vipavatar generate`, which loads the precompute models per call like a plain SadTalker run)".into(),
            "in-process: cold/warm/no-cache time the generate job (run_generate or, for no-cache, the same pipeline calls with no cache); hot times the API's video-cache lookup only".into(),
            "end-to-end: from the first POST (upload for cold/no-cache, generate otherwise) until /api/vip/status says ready, polling every --poll-ms; no-cache deletes the request's cache keys and files first; after each upload it waits (untimed) until the avatar's idle loop is rendered, so no sample queues behind an earlier sample's background job".into(),
            "cacheIO+ = wall time minus the measured compute stages: Redis round trips, blob I/O, (de)serialisation, thread hand-offs; end-to-end also HTTP, queue and polling".into(),
            "new image / new audio = the same content with different bytes (a PNG text chunk; flipped low bits in the first 64 samples), so the work is identical and only the cache differs".into(),
            "RSS = VmHWM, reset before each sample where the kernel allows (clear_refs 5); the service runs in this process".into(),
        ],
        reference_claims: claims,
        engines,
    })
}

async fn measure(
    args: &BenchArgs,
    image: &[u8],
    clips: &[inputs::Clip],
    dir: &Path,
    redis_url: &str,
    max_audio: f64,
) -> anyhow::Result<Vec<EngineReport>> {
    let salt = uuid::Uuid::new_v4().simple().to_string();
    let cfg = base_config(args, redis_url, &dir.join("inproc"), &format!("bench-in-{}", &salt[..8]), max_audio)?;
    let (ctx, engines) = job_context(cfg).await?;
    let want_e2e = args.mode != ModeSel::InProcess;
    let server = if want_e2e {
        let cfg = base_config(args, redis_url, &dir.join("e2e"), &format!("bench-e2e-{}", &salt[..8]), max_audio)?;
        Some(e2e::Server::start(cfg, Duration::from_millis(args.poll_ms.max(1))).await?)
    } else {
        None
    };
    let variants = inputs::Variants::new();
    let kinds: Vec<EngineKind> = match args.engine {
        EngineSel::All => vec![EngineKind::Classic, EngineKind::Sadtalker],
        EngineSel::Classic => vec![EngineKind::Classic],
        EngineSel::Sadtalker => vec![EngineKind::Sadtalker],
    };
    let mut reports = Vec::new();
    let result: anyhow::Result<()> = async {
        for kind in kinds {
            let engine = match engines.get(Some(kind)) {
                Ok(e) => e,
                Err(e) => {
                    reports.push(EngineReport::unavailable(kind.as_str(), e.message.to_string()));
                    continue;
                }
            };
            let stand_in = args.sadtalker_stand_in && kind == EngineKind::Sadtalker;
            let mut rep = EngineReport {
                engine: kind.as_str().into(),
                available: true,
                unavailable_reason: None,
                weights: stand_in.then(|| standin::WEIGHTS_NOTE.to_string()),
                speedup_vip_over_nocache: None,
                speedup_hot_over_nocache: None,
                headline: None,
                groups: Vec::new(),
                throughput: None,
            };
            let in_process = |clip| inproc::InProcess {
                ctx: &ctx,
                engine: engine.clone(),
                image,
                clip,
                variants: &variants,
                options: GenerateOptions::default(),
            };
            let shortest = clips.iter().min_by(|a, b| a.seconds.total_cmp(&b.seconds));
            if let Some(shortest) = shortest {
                in_process(shortest).warm_up().await.context("warm-up request")?;
            }
            for clip in clips {
                let runs = if clip.seconds >= 30.0 { args.long_runs } else { args.runs };
                if args.mode != ModeSel::EndToEnd {
                    eprintln!("bench: {} in-process {:.0} s audio, {runs} run(s)", kind.as_str(), clip.seconds);
                    rep.groups.push(
                        in_process(clip)
                            .run(runs)
                            .await
                            .with_context(|| format!("{} in-process {:.0} s", kind.as_str(), clip.seconds))?,
                    );
                }
                if let Some(server) = &server {
                    eprintln!("bench: {} end-to-end {:.0} s audio, {runs} run(s)", kind.as_str(), clip.seconds);
                    let b = e2e::EndToEnd { server, engine: kind, image, clip, variants: &variants };
                    rep.groups.push(
                        b.run(runs)
                            .await
                            .with_context(|| format!("{} end-to-end {:.0} s", kind.as_str(), clip.seconds))?,
                    );
                }
            }
            if let (n @ 1.., Some(shortest)) = (args.concurrent, shortest) {
                eprintln!("bench: {} throughput, 1 vs {n} sessions, {:.0} s audio", kind.as_str(), shortest.seconds);
                let throughput = in_process(shortest).throughput(n).await;
                rep.throughput = Some(throughput.with_context(|| format!("{} throughput", kind.as_str()))?);
            }
            rep.set_headline(args.headline_seconds);
            reports.push(rep);
        }
        Ok(())
    }
    .await;
    if let Some(s) = server {
        s.stop();
    }
    result.map(|_| reports)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared() -> Option<PathBuf> {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata");
        if dir.is_dir() {
            return Some(dir);
        }
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{} is missing (required in CI)", dir.display());
        }
        println!("skipped: {} is absent", dir.display());
        None
    }

    /// One run of 3 s audio through both modes: the JSON carries the documented fields, and a
    /// cache hit (which skips rendering) beats recomputing everything.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tiny_bench_reports_fields_and_hot_beats_nocache() {
        let Some(testdata) = shared() else { return };
        let checkpoints = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../checkpoints");
        let report = run_bench(&BenchArgs::tiny(&testdata, &checkpoints, 3.0)).await.expect("bench");
        let json = serde_json::to_value(&report).expect("json");
        let engines = json["engines"].as_array().expect("engines");
        let classic = engines.iter().find(|e| e["engine"] == "classic").expect("classic engine");
        assert_eq!(classic["available"], true);
        for field in ["speedup_vip_over_nocache", "speedup_hot_over_nocache"] {
            assert!(classic[field].as_f64().is_some_and(|v| v > 0.0), "{field}: {classic}");
        }
        // SadTalker is reported, available or not, never silently dropped.
        let sad = engines.iter().find(|e| e["engine"] == "sadtalker").expect("sadtalker entry");
        if sad["available"] == false {
            assert!(sad["unavailable_reason"].as_str().is_some_and(|r| !r.is_empty()), "{sad}");
            assert!(sad["speedup_vip_over_nocache"].is_null());
        }
        let groups = classic["groups"].as_array().expect("groups");
        let modes: Vec<&str> = groups.iter().filter_map(|g| g["mode"].as_str()).collect();
        assert_eq!(modes, ["in_process", "end_to_end"]);
        for g in groups {
            assert!((g["audio_seconds"].as_f64().unwrap_or(0.0) - 3.0).abs() < 0.01, "{g}");
            let cases = g["cases"].as_array().expect("cases");
            let names: Vec<&str> = cases.iter().filter_map(|c| c["case"].as_str()).collect();
            let want: &[&str] = match g["mode"].as_str() {
                Some("in_process") => &["cold", "warm", "hot", "nocache", "oneshot"],
                _ => &["cold", "warm", "hot", "nocache"],
            };
            assert_eq!(names, want, "{g}");
            for c in cases {
                for f in ["median_ms", "p90_ms", "x_realtime", "speedup_over_nocache", "peak_rss_mb"] {
                    assert!(c[f].as_f64().is_some_and(|v| v > 0.0), "{f} in {c}");
                }
                for b in report::BUCKETS {
                    assert!(c["stages_ms"][b].as_f64().is_some(), "stage {b} missing in {c}");
                }
            }
            let median = |name: &str| {
                cases.iter().find(|c| c["case"] == name).and_then(|c| c["median_ms"].as_f64()).unwrap_or(0.0)
            };
            assert!(median("hot") < median("nocache"), "a cache hit must beat recomputing everything: {g}");
            // The no-cache run really rendered: its breakdown has render and encode time.
            let nc = cases.iter().find(|c| c["case"] == "nocache").expect("nocache");
            assert!(nc["stages_ms"]["render"].as_f64().unwrap_or(0.0) > 0.0, "{nc}");
            assert!(nc["stages_ms"]["detect"].as_f64().unwrap_or(0.0) > 0.0, "{nc}");
        }
        assert!(report::render_table(&report).contains("no-cache"));
    }
}

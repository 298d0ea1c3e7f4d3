//! The command line: `serve | worker | precompute | generate | openapi | bench`.

use crate::config::{Config, EngineChoice, CHECKPOINTS_ENV, DEFAULT_CHECKPOINTS, ENGINE_ENV};
use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use vipavatar_pipeline::engine::{Enhancer, GenerateOptions, PreprocessMode, Quality};

#[derive(Debug, Parser)]
#[command(
    name = "vipavatar",
    version,
    about = "Talking-head video service: precompute an avatar once, generate many videos fast"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP API and N workers (private redis-server unless REDIS_URL is set).
    Serve(ServeArgs),
    /// Run workers only, sharing the Redis at REDIS_URL with the API nodes.
    Worker(ServeArgs),
    /// Analyse one image and print what precompute found.
    Precompute(PrecomputeArgs),
    /// Generate one video from files, without a server.
    Generate(GenerateArgs),
    /// Print the OpenAPI document (or check the committed one).
    Openapi(OpenapiArgs),
    /// Benchmark cold / warm (VIP) / hot / no-cache requests, in-process and end to end
    /// (runs `vipavatar-bench`; `vipavatar bench --help` lists its options).
    Bench(BenchArgs),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub config: Config,
    /// Workers in this process (default: one per GPU, else one). `serve --workers 0` = API only.
    #[arg(long, env = "VIPAVATAR_WORKERS")]
    pub workers: Option<usize>,
}

#[derive(Debug, Args)]
pub struct PrecomputeArgs {
    /// The portrait (PNG, JPEG or WebP).
    pub image: PathBuf,
    #[arg(long, value_enum, default_value = "crop")]
    pub preprocess: PreprocessMode,
    /// Print the full analysis as JSON.
    #[arg(long)]
    pub json: bool,
    #[arg(long, env = CHECKPOINTS_ENV, default_value = DEFAULT_CHECKPOINTS)]
    pub checkpoints: PathBuf,
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[arg(long)]
    pub image: PathBuf,
    #[arg(long)]
    pub audio: PathBuf,
    #[arg(short, long)]
    pub output: PathBuf,
    #[arg(long, value_enum, env = ENGINE_ENV, default_value = "auto")]
    pub engine: EngineChoice,
    #[command(flatten)]
    pub x264: crate::config::X264Args,
    /// Output face size: 256 or 512.
    #[arg(long, default_value_t = 256)]
    pub size: u32,
    #[arg(long, value_enum, default_value = "crop")]
    pub preprocess: PreprocessMode,
    /// Motion variation 0..=45.
    #[arg(long, default_value_t = 0)]
    pub pose_style: u32,
    /// Keep the head still.
    #[arg(long)]
    pub still: bool,
    /// Mouth/expression amplitude 0..=3.
    #[arg(long, default_value_t = 1.0)]
    pub expression_scale: f32,
    #[arg(long, value_enum, default_value = "none")]
    pub enhancer: Enhancer,
    #[arg(long, value_enum, default_value = "medium")]
    pub quality: Quality,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Also write a contact sheet PNG (every 5th frame).
    #[arg(long)]
    pub contact_sheet: Option<PathBuf>,
    #[arg(long, env = CHECKPOINTS_ENV, default_value = DEFAULT_CHECKPOINTS)]
    pub checkpoints: PathBuf,
    /// Print the stats as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `vipavatar bench ...`: every argument goes to the `vipavatar-bench` binary (crate `bench/`),
/// which owns the benchmark and its options, so the service library carries neither.
#[derive(Debug, Args)]
#[command(disable_help_flag = true)]
pub struct BenchArgs {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
    pub args: Vec<std::ffi::OsString>,
}

#[derive(Debug, Args)]
pub struct OpenapiArgs {
    /// Compare with this committed file instead of printing; non-zero exit on drift.
    #[arg(long)]
    pub check: Option<PathBuf>,
}

/// Run the parsed command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => {
            let workers = args.workers.unwrap_or_else(crate::startup::default_workers);
            let app = crate::Application::build(args.config, workers).await?;
            app.run_until_stopped().await
        }
        Command::Worker(args) => {
            let workers = args.workers.unwrap_or_else(crate::startup::default_workers).max(1);
            crate::startup::run_workers(args.config, workers).await
        }
        Command::Precompute(args) => tokio::task::spawn_blocking(move || precompute(args)).await?,
        Command::Generate(args) => tokio::task::spawn_blocking(move || generate(args)).await?,
        Command::Openapi(args) => openapi(args),
        Command::Bench(args) => bench(args),
    }
}

/// Replace this process with `vipavatar-bench` (next to this executable, else on `PATH`), its
/// `argv[0]` reading `<this program> bench` so its usage text and JSON `command` stay as before.
fn bench(args: BenchArgs) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    let sibling = std::env::current_exe().ok().map(|p| p.with_file_name("vipavatar-bench")).filter(|p| p.is_file());
    let program = sibling.map(PathBuf::into_os_string).unwrap_or_else(|| "vipavatar-bench".into());
    let mut argv0 = std::env::args_os().next().unwrap_or_else(|| "vipavatar".into());
    argv0.push(" bench");
    let err = std::process::Command::new(&program).arg0(argv0).args(&args.args).exec();
    let program = program.to_string_lossy();
    Err(anyhow::anyhow!("cannot run {program}: {err} (`cargo build` builds it, or `cargo build -p vipavatar-bench`)"))
}

fn precompute(args: PrecomputeArgs) -> anyhow::Result<()> {
    use vipavatar_pipeline::precompute::{ImageLimits, Precomputer};
    let bytes = std::fs::read(&args.image).with_context(|| format!("read {}", args.image.display()))?;
    let pre = Precomputer::load(&args.checkpoints, ImageLimits::default())?;
    let (_, a) = pre.run(&bytes, args.preprocess)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&a)?);
        return Ok(());
    }
    let f = &a.face;
    println!(
        "image        {}x{}{}",
        a.width,
        a.height,
        a.upscaled.map(|s| format!(" (upscaled x{s:.2})")).unwrap_or_default()
    );
    println!("faces        {} (largest chosen)", a.faces_found);
    println!(
        "face box     [{:.1}, {:.1}, {:.1}, {:.1}] score {:.3}",
        f.bbox[0], f.bbox[1], f.bbox[2], f.bbox[3], f.score
    );
    let pts: Vec<String> = f.points.iter().map(|p| format!("({:.1}, {:.1})", p[0], p[1])).collect();
    println!("5 points     {}", pts.join(" "));
    println!("landmarks    {} points ({})", a.landmarks.0.len(), a.landmark_model.as_str());
    println!("crop box     {:?} ({} mode)", a.crop.face_box, a.preprocess.as_str());
    println!("pose         yaw {:.1} pitch {:.1} roll {:.1} (degrees)", a.pose.yaw, a.pose.pitch, a.pose.roll);
    let t: Vec<String> = a.timings_ms.iter().map(|(n, ms)| format!("{n} {ms:.1} ms")).collect();
    println!("timings      {}", t.join(", "));
    Ok(())
}

fn generate(args: GenerateArgs) -> anyhow::Result<()> {
    use vipavatar_pipeline::video::{generate_local, LocalGenerate};
    args.x264.apply();
    let options = GenerateOptions {
        size: args.size,
        preprocess: args.preprocess,
        still_mode: args.still,
        expression_scale: args.expression_scale,
        pose_style: args.pose_style,
        enhancer: args.enhancer,
        quality: args.quality,
        seed: args.seed,
    };
    options.validate()?;
    let mut config = Config::from_env()?;
    config.checkpoints = args.checkpoints.clone();
    config.engine = args.engine;
    vipavatar_pipeline::device::select_devices(&config.device)?;
    let engine = crate::engines::engine_for(config.engine, &config)?;
    let mut job = LocalGenerate::new(&args.image, &args.audio, &args.output);
    job.options = options;
    job.checkpoints = args.checkpoints;
    job.contact_sheet = args.contact_sheet;
    let mut last = 0usize;
    let stats = generate_local(engine.as_ref(), &job, &mut |p| {
        if p.stage == "render" && p.total > 0 {
            let pct = p.done * 100 / p.total;
            if pct >= last + 10 || p.done == p.total {
                last = pct;
                eprintln!("render {pct}% ({}/{})", p.done, p.total);
            }
        }
    })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&stats)?);
    } else {
        println!(
            "wrote {} ({} frames, {}x{}, {:.2} s video for {:.2} s audio) in {:.2} s ({:.2}x real time)",
            args.output.display(),
            stats.frames,
            stats.width,
            stats.height,
            stats.video_seconds,
            stats.audio_seconds,
            stats.total_ms / 1e3,
            stats.realtime_factor
        );
    }
    Ok(())
}

fn openapi(args: OpenapiArgs) -> anyhow::Result<()> {
    let doc = crate::api::openapi_json();
    match args.check {
        None => {
            print!("{doc}");
            Ok(())
        }
        Some(path) => {
            let committed = std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
            if committed == doc {
                Ok(())
            } else {
                anyhow::bail!("{} is out of date: run `vipavatar openapi > {}`", path.display(), path.display())
            }
        }
    }
}

//! Wall-time measurements of the classic engine (no assertions on time; run explicitly):
//! `cargo test -p vipavatar-pipeline --test main classic_bench -- --ignored --nocapture --test-threads 1`

use crate::common;

use crate::classic_support as sup;
use std::time::Instant;
use vipavatar_pipeline::engine::{GenerateOptions, PreprocessMode};
use vipavatar_pipeline::video::{generate_local, LocalGenerate};

fn bench(image: &str, mode: PreprocessMode, size: u32) {
    let (Some(data), Some(checkpoints)) = (sup::testdata(), common::checkpoints()) else { return };
    let dir = sup::scratch(&format!("bench-{}", mode.as_str()));
    let mut job =
        LocalGenerate::new(data.join("images").join(image), data.join("audio/RD_Radio31_000.wav"), dir.join("out.mp4"));
    job.checkpoints = checkpoints;
    job.options = GenerateOptions { preprocess: mode, size, ..Default::default() };
    let engine = sup::engine();
    // Warm-up (page cache, model files), then three timed runs.
    generate_local(&engine, &job, &mut |_| {}).expect("generate");
    let mut walls = Vec::new();
    let mut last = None;
    for _ in 0..3 {
        let t = Instant::now();
        last = Some(generate_local(&engine, &job, &mut |_| {}).expect("generate"));
        walls.push(t.elapsed().as_secs_f64());
    }
    walls.sort_by(f64::total_cmp);
    let stats = last.expect("stats");
    let median = walls[1];
    eprintln!(
        "{image} {} {size}: {}x{} {} frames, wall median {median:.2} s (min {:.2}) = {:.1}x real time",
        mode.as_str(),
        stats.width,
        stats.height,
        stats.frames,
        walls[0],
        stats.audio_seconds / median
    );
    for (stage, ms) in &stats.stage_ms {
        eprintln!("    {stage:<22} {ms:8.1} ms");
    }
    // The cached-avatar path (what a repeat request for a prepared avatar runs).
    let video_ms: f64 = stats
        .stage_ms
        .iter()
        .filter(|(s, _)| ["features", "motion", "render", "encode_finish"].contains(&s.as_str()))
        .map(|(_, ms)| ms)
        .sum();
    eprintln!("    generate_video only: {video_ms:.0} ms = {:.1}x real time", stats.audio_seconds * 1e3 / video_ms);
}

#[test]
#[ignore = "timing run; see the module doc"]
fn bench_people_crop_256() {
    bench("people_0.png", PreprocessMode::Crop, 256);
}

#[test]
#[ignore = "timing run; see the module doc"]
fn bench_people_crop_512() {
    bench("people_0.png", PreprocessMode::Crop, 512);
}

#[test]
#[ignore = "timing run; see the module doc"]
fn bench_full_body_full() {
    bench("full_body_1.jpg", PreprocessMode::Full, 256);
}

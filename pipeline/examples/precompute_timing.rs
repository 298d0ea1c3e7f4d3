//! Warm precompute timing: loads the models once, then runs each image N times and prints the
//! median wall time and per-stage medians. `cargo run --release -p vipavatar-pipeline --example
//! precompute_timing -- checkpoints 5 image...`

use std::time::Instant;
use vipavatar_pipeline::engine::PreprocessMode;
use vipavatar_pipeline::precompute::{ImageLimits, Precomputer};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (ck, n, images) = match args.as_slice() {
        [ck, n, images @ ..] if !images.is_empty() => (ck, n.parse::<usize>()?, images),
        _ => return Err("usage: precompute_timing <checkpoints> <runs> <image>...".into()),
    };
    let t = Instant::now();
    let p = Precomputer::load(std::path::Path::new(ck), ImageLimits::default())?;
    println!("model load: {:.0} ms", t.elapsed().as_secs_f64() * 1e3);
    for path in images {
        let bytes = std::fs::read(path)?;
        p.run(&bytes, PreprocessMode::Crop)?; // warm-up
        let mut totals = Vec::new();
        let mut stages: Vec<(String, Vec<f64>)> = Vec::new();
        for _ in 0..n {
            let t = Instant::now();
            let (_, a) = p.run(&bytes, PreprocessMode::Crop)?;
            totals.push(t.elapsed().as_secs_f64() * 1e3);
            for (i, (name, ms)) in a.timings_ms.iter().enumerate() {
                if stages.len() <= i {
                    stages.push((name.clone(), Vec::new()));
                }
                stages[i].1.push(*ms);
            }
        }
        let per: Vec<String> = stages.into_iter().map(|(s, v)| format!("{s} {:.1}", median(v))).collect();
        println!("{path}: median {:.1} ms over {n} runs ({})", median(totals), per.join(", "));
    }
    Ok(())
}

//! Face-mesh network timing: one crop through `face_landmark.tflite`, N runs, median ms.
//! `cargo run --release -p vipavatar-pipeline --example facemesh_timing -- checkpoints 50`

use std::time::Instant;
use vipavatar_pipeline::face::landmarks::facemesh::{FaceMesh, FILE};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (ck, n) = match args.as_slice() {
        [ck, n] => (ck, n.parse::<usize>()?),
        _ => return Err("usage: facemesh_timing <checkpoints> <runs>".into()),
    };
    let model = FaceMesh::load(&std::path::Path::new(ck).join(FILE))?;
    let side = model.side();
    let crop: Vec<f32> = (0..side * side * 3).map(|i| ((i * 7919) % 255) as f32 / 255.0).collect();
    model.run_crop(&crop)?;
    let mut times: Vec<f64> = (0..n)
        .map(|_| {
            let t = Instant::now();
            model.run_crop(&crop).map(|_| t.elapsed().as_secs_f64() * 1e3)
        })
        .collect::<Result<_, _>>()?;
    times.sort_by(f64::total_cmp);
    println!(
        "face mesh, one {side}x{side} crop: median {:.2} ms, min {:.2} ms over {n} runs ({} torch threads)",
        times[n / 2],
        times[0],
        tch::get_num_threads()
    );
    Ok(())
}

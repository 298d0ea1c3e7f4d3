//! Passes shared by concurrent sessions (`SharedRenderer`), on the fixture's reduced-width
//! renderer: three sessions on two different sources, queued while the renderer is busy, meet in
//! one pass; every session's frames come back in order and equal what it renders alone. A pass
//! that panics fails its sessions with a typed error and the renderer serves the next pass.

use crate::common;
use crate::sadtalker_common;
use std::time::{Duration, Instant};
use tch::{Kind, Tensor};
use vipavatar_pipeline::sadtalker::facerender::renderer::PreparedSource;
use vipavatar_pipeline::sadtalker::facerender::{
    DrivingWindows, FaceRenderConfig, FaceRenderer, MappingWeights, RenderSettings, RendererWeights, SharedRenderer,
    SourceState, WindowOptions,
};
use vipavatar_pipeline::PipelineError;

/// Frames of a pass of several sessions go through differently blocked float32 kernels than a
/// lone pass; the same bounds as the renderer's batch-size test (`sadtalker_facerender`).
const ROUNDING_MAX: f64 = 1e-3;
const ROUNDING_MEAN: f64 = 1e-5;

/// Frames per request of each session (the pass fits all three first requests).
const STEP: i64 = 2;
const PASS: usize = 8;

fn renderer(dir: &std::path::Path) -> FaceRenderer {
    let config = FaceRenderConfig::from_yaml_file(&dir.join("facerender_small.yaml")).expect("small config");
    let weights = dir.join("facerender.weights.safetensors");
    let files = RendererWeights {
        checkpoint: &weights,
        mapping: MappingWeights::Safetensors { path: &weights, prefix: "mapping" },
    };
    FaceRenderer::load(&config, &files, &RenderSettings::default()).expect("load renderer")
}

/// One session: a source and its driving windows (no pose overrides, as the engine renders).
struct Session {
    state: SourceState,
    windows: DrivingWindows,
}

/// Render every frame of `targets` through the shared renderer, `STEP` frames per request.
fn render_shared(shared: &SharedRenderer, source: &PreparedSource, targets: &Tensor) -> Tensor {
    let total = targets.size()[0];
    let mut out = Vec::new();
    let mut start = 0;
    while start < total {
        let len = STEP.min(total - start);
        out.push(shared.render(source, &targets.narrow(0, start, len), PASS).expect("shared pass"));
        start += len;
    }
    Tensor::cat(&out, 0)
}

#[test]
fn sadtalker_shared_passes_batch_sessions_and_equal_lone_renders() {
    let Some(dir) = sadtalker_common::fixture_dir() else { return };
    let io = common::read_safetensors(&dir.join("facerender.io.safetensors"));
    let r = renderer(&dir);
    let coeff = Vec::<f32>::try_from(io["in.gfd.first_coeff_3dmm"].to_kind(Kind::Float).flatten(0, -1)).unwrap();
    let image = &io["in.source_image"];
    let windows = |case: &str, scale: f32| {
        DrivingWindows::build(&io[&format!("in.gfd.{case}.coeff_3dmm")], &coeff, &WindowOptions::new(scale)).unwrap()
    };
    // Two sources (the picture and its mirror image), three sessions.
    let a = r.prepare_source(image, &coeff).unwrap();
    let b = r.prepare_source(&image.flip([3]), &coeff).unwrap();
    let sessions = [
        Session { state: r.prepare_source(image, &coeff).unwrap(), windows: windows("case1", 1.0) },
        Session { state: b, windows: windows("case2", 1.5) },
        Session { state: a, windows: windows("case2", 1.0) },
    ];
    for s in &sessions {
        assert!(s.windows.num_frames() > STEP, "each session needs more than one request");
    }
    let alone: Vec<Tensor> = sessions.iter().map(|s| r.render_all(&s.state, &s.windows, Some(1)).unwrap()).collect();
    assert!(
        (&alone[1] - &alone[2]).abs().max().double_value(&[]) > 1e-3,
        "the sources differ, so the sessions' frames must too"
    );

    let sources: Vec<PreparedSource> = sessions.iter().map(|s| r.prepare_generator_source(&s.state).unwrap()).collect();
    let shared = SharedRenderer::new(r);
    let frames: Vec<Tensor> = std::thread::scope(|scope| {
        let shared = &shared;
        // tch tensors are `Send`, not `Sync`: each thread gets its own handles.
        let handles: Vec<_> = sessions
            .iter()
            .zip(&sources)
            .map(|(s, src)| (src.shallow_clone(), s.windows.targets.shallow_clone()))
            .map(|(src, targets)| scope.spawn(move || render_shared(shared, &src, &targets)))
            .collect();
        // Hold the renderer until every session has queued its first frames: the next pass takes
        // all three.
        shared.with(|_| {
            let until = Instant::now() + Duration::from_secs(60);
            while shared.waiting() < sessions.len() && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        handles.into_iter().map(|h| h.join().expect("session thread")).collect()
    });

    let stats = shared.stats();
    let total: i64 = sessions.iter().map(|s| s.windows.num_frames()).sum();
    eprintln!("sadtalker shared passes: {stats:?} for {total} frames of {} sessions", sessions.len());
    assert_eq!(stats.frames, total as u64, "every frame is rendered once");
    assert!(stats.shared_passes >= 1, "no pass carried more than one session: {stats:?}");
    assert!(stats.passes < (total / STEP + sessions.len() as i64) as u64, "passes were not shared: {stats:?}");
    for (i, (got, want)) in frames.iter().zip(&alone).enumerate() {
        assert_eq!(got.size(), want.size(), "session {i}");
        let d = (got - want).abs();
        let (max, mean) = (d.max().double_value(&[]), d.mean(Kind::Double).double_value(&[]));
        eprintln!("session {i}: shared vs alone: max abs diff {max:.3e}, mean {mean:.3e}");
        assert!(max <= ROUNDING_MAX && mean <= ROUNDING_MEAN, "session {i} differs by {max} (mean {mean})");
    }

    // A pass that panics (windows of the wrong width reach the mapping net) fails with a typed
    // error; the renderer serves the next pass.
    let src = &sources[0];
    let bad = Tensor::zeros([1, 5, 27], (Kind::Float, tch::Device::Cpu));
    let err = shared.render(src, &bad, PASS).unwrap_err();
    assert!(matches!(err, PipelineError::ModelPanic(_)), "{err}");
    let again = shared.render(src, &sessions[0].windows.targets.narrow(0, 0, 1), PASS).unwrap();
    let d = (&again - alone[0].narrow(0, 0, 1)).abs().max().double_value(&[]);
    assert!(d <= ROUNDING_MAX, "the pass after a panic differs by {d}");
    // More frames than a pass may carry is an error, not a pass.
    assert!(shared.render(src, &sessions[0].windows.targets, 1).is_err());
}

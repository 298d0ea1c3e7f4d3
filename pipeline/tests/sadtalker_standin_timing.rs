//! The sadtalker engine's one-shot and VIP cases at the tensor level, on stand-in checkpoints
//! (the official layout with seeded random weights: a pass costs the same whatever the weights
//! hold, so the times are real; the frames are noise). What the GPU check times, since the engine
//! itself (face detection, crops, video) needs OpenCV, which the GPU host lacks:
//! - one-shot: load the audio networks, the 3DMM recon net and the renderer from the files, the
//!   image side (recon net on a 224 face, source state), then the audio side;
//! - VIP: the audio side alone (models loaded, image side cached): mel features, audio2exp +
//!   audio2pose, coefficient windows, rendering (batches from free memory), frames to 8-bit.
//!
//! Neither includes face detection / landmarks (one-shot only) or video encoding (both).
//!
//! Run: `cargo test -p vipavatar-pipeline --test main sadtalker_standin_timing -- --ignored
//! --nocapture` (`VIPAVATAR_BENCH_SECONDS`, default 1; `VIPAVATAR_DEVICE`).

use std::time::Instant;
use tch::{Device, Kind, Tensor};
use vipavatar_pipeline::audio::AudioClip;
use vipavatar_pipeline::image::RgbImage;
use vipavatar_pipeline::sadtalker::facerender::{
    DrivingWindows, FaceRenderConfig, FaceRenderer, MappingWeights, RenderSettings, RendererWeights, SourceState,
    WindowOptions,
};
use vipavatar_pipeline::sadtalker::paths::{CHECKPOINT_256, MAPPING_CROP};
use vipavatar_pipeline::sadtalker::standin::write_stand_ins;
use vipavatar_pipeline::sadtalker::{Audio2Coeff, FaceRecon, MelFeatures, MotionOptions, SplitCoeffs};

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// Recon net on the aligned face, then the renderer's source state of the crop.
fn image_side(recon: &FaceRecon, renderer: &FaceRenderer, face: &RgbImage, crop: &Tensor) -> (SourceState, Vec<f32>) {
    let coeffs = recon.coeffs_of_image(face).expect("recon");
    let coeff_3dmm = SplitCoeffs::new(&coeffs).coeff_3dmm([256.0, 256.0, 1.0, 128.0, 128.0]);
    let coeff: Vec<f32> = Vec::try_from(coeff_3dmm.to_device(Device::Cpu).flatten(0, -1)).expect("coefficients");
    (renderer.prepare_source(crop, &coeff).expect("source state"), coeff)
}

/// Audio -> motion -> rendered 8-bit frames on the CPU; the frame count.
fn audio_side(
    audio: &Audio2Coeff,
    renderer: &FaceRenderer,
    state: &SourceState,
    coeff: &[f32],
    clip: &AudioClip,
) -> i64 {
    let mel = MelFeatures::from_clip(clip).expect("mel");
    let motion = audio.generate(&mel, coeff, &MotionOptions::default()).expect("motion");
    let windows =
        DrivingWindows::build(&motion.to_tensor(Device::Cpu), coeff, &WindowOptions::new(1.0)).expect("windows");
    let mut frames = 0;
    renderer
        .render(state, &windows, None, &mut |b| {
            let bytes = (b.frames * 255.0).round().clamp(0.0, 255.0).to_kind(Kind::Uint8).to_device(Device::Cpu);
            frames += bytes.size()[0];
            Ok(())
        })
        .expect("render");
    frames
}

#[test]
#[ignore = "stand-in one-shot / VIP timings (writes 800 MB of stand-in files); run with --ignored --nocapture"]
fn sadtalker_standin_timing_one_shot_and_vip() {
    let seconds: f64 = std::env::var("VIPAVATAR_BENCH_SECONDS").ok().and_then(|v| v.parse().ok()).unwrap_or(1.0);
    let device = vipavatar_pipeline::device::device_from_env().expect("device");
    let dir = std::env::temp_dir().join(format!("vipavatar-standin-timing-{}", std::process::id()));
    let t = Instant::now();
    write_stand_ins(&dir, 7).expect("stand-ins");
    eprintln!("sadtalker stand-in: checkpoints written in {:.0} ms", ms(t));
    let (checkpoint, mapping) = (dir.join(CHECKPOINT_256), dir.join(MAPPING_CROP));

    // Inputs: a random 224 face and 256 crop, and a modulated tone.
    tch::manual_seed(3);
    let face_bytes: Vec<u8> = Vec::try_from(Tensor::randint(256, [224 * 224 * 3], (Kind::Uint8, Device::Cpu))).unwrap();
    let face = RgbImage::from_raw(224, 224, face_bytes).unwrap();
    let crop = Tensor::rand([1, 3, 256, 256], (Kind::Float, Device::Cpu)).to_device(device);
    let rate = 16_000u32;
    let samples = (0..(seconds * rate as f64) as usize)
        .map(|i| {
            let t = i as f32 / rate as f32;
            0.3 * (2.0 * std::f32::consts::PI * 180.0 * t).sin()
                * (0.5 + 0.5 * (2.0 * std::f32::consts::PI * 3.0 * t).sin())
        })
        .collect();
    let clip = AudioClip { samples, sample_rate: rate };

    let total = Instant::now();
    let audio = Audio2Coeff::from_checkpoints(&checkpoint, &checkpoint, device).expect("audio networks");
    let recon = FaceRecon::from_checkpoint(&checkpoint, device).expect("recon net");
    let weights = RendererWeights { checkpoint: &checkpoint, mapping: MappingWeights::Pickle(&mapping) };
    let settings = RenderSettings { device, ..RenderSettings::default() };
    let renderer = FaceRenderer::load(&FaceRenderConfig::official(70), &weights, &settings).expect("renderer");
    let load_ms = ms(total);
    let t = Instant::now();
    let (state, coeff) = image_side(&recon, &renderer, &face, &crop);
    let image_ms = ms(t);
    let t = Instant::now();
    let frames = audio_side(&audio, &renderer, &state, &coeff, &clip);
    let (audio_ms, one_shot_ms) = (ms(t), ms(total));

    let t = Instant::now();
    let again = audio_side(&audio, &renderer, &state, &coeff, &clip);
    let vip_ms = ms(t);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(frames, again);
    assert_eq!(frames as usize, clip.num_frames(), "one frame per 40 ms of audio");
    eprintln!(
        "sadtalker stand-in timing ({seconds} s audio, {frames} frames, 256 px, {device:?}): one-shot {one_shot_ms:.0} ms \
         (load {load_ms:.0}, image side {image_ms:.0}, audio side {audio_ms:.0}); VIP {vip_ms:.0} ms; one-shot / VIP {:.2}x",
        one_shot_ms / vip_ms
    );
}

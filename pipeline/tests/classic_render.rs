//! Classic engine on real photos and speech, measured on the rendered (encoded, decoded) frames:
//! lip sync against the speech envelope, closed mouth in silence, stillness outside the animated
//! region, stream layout and A/V durations; contact sheets for a human look.

use crate::classic_support as sup;
use vipavatar_pipeline::audio::{decode_audio, AudioClip, AudioLimits};
use vipavatar_pipeline::classic::{build_canvas, ClassicEngine};
use vipavatar_pipeline::engine::{GenerateOptions, PreprocessMode};
use vipavatar_pipeline::image::RgbImage;

/// Mean absolute difference of two frames outside `region` (x, y, w, h), and the share of those
/// pixels that differ by more than 24 levels in any channel.
fn outside_diff(a: &RgbImage, b: &RgbImage, region: [i32; 4]) -> (f64, f64) {
    let [rx, ry, rw, rh] = region;
    let (mut sum, mut big, mut n) = (0.0f64, 0.0f64, 0.0f64);
    for y in 0..a.height as i32 {
        for x in 0..a.width as i32 {
            if x >= rx && x < rx + rw && y >= ry && y < ry + rh {
                continue;
            }
            let (p, q) = (a.pixel(x as u32, y as u32), b.pixel(x as u32, y as u32));
            let d: Vec<f64> = (0..3).map(|k| (p[k] as f64 - q[k] as f64).abs()).collect();
            sum += d.iter().sum::<f64>() / 3.0;
            if d.iter().any(|&v| v > 24.0) {
                big += 1.0;
            }
            n += 1.0;
        }
    }
    (sum / n.max(1.0), big / n.max(1.0))
}

fn probe_matches_clip(out: &std::path::Path, clip: &AudioClip, w: u32, h: u32) {
    let p = sup::ffprobe(out);
    assert_eq!(p.video_codec, "h264");
    assert_eq!(p.pix_fmt, "yuv420p");
    assert_eq!((p.width, p.height), (w, h));
    assert_eq!(p.frame_rate, "25/1");
    assert_eq!(p.audio_codec, "aac");
    assert_eq!(p.video_frames, clip.num_frames(), "one video frame per 40 ms of audio");
    assert!(
        (p.video_seconds - clip.duration_s()).abs() <= 0.04,
        "video {} s vs audio {} s",
        p.video_seconds,
        clip.duration_s()
    );
    assert!(
        (p.audio_seconds - clip.duration_s()).abs() <= 0.04,
        "aac {} s vs audio {} s",
        p.audio_seconds,
        clip.duration_s()
    );
    assert!(sup::is_faststart(out), "moov before mdat");
}

/// Speech + inserted silence + speech, all from espeak-ng.
fn speech_with_gap(gap_s: f64) -> (AudioClip, std::ops::Range<usize>) {
    let limits = AudioLimits::default();
    let a = decode_audio(&sup::espeak("Hello there. How are you doing today?"), &limits).expect("decode");
    let b = decode_audio(&sup::espeak("I am fine, thank you very much."), &limits).expect("decode");
    let gap = (gap_s * 16000.0) as usize;
    let mut samples = a.samples.clone();
    let start = samples.len();
    samples.extend(std::iter::repeat_n(0.0, gap));
    samples.extend(&b.samples);
    // Frames fully inside the silence, with 0.2 s margins for the release and the lead.
    let f0 = (start as f64 / 640.0).ceil() as usize + 5;
    let f1 = ((start + gap) as f64 / 640.0).floor() as usize - 5;
    (AudioClip { samples, sample_rate: 16000 }, f0..f1)
}

#[test]
fn people_crop_lipsync_streams_and_still_background() {
    let Some(av) = sup::avatar("people_0.png", PreprocessMode::Crop, 256) else {
        return;
    };
    let Some(clip) = sup::shared_audio("RD_Radio31_000.wav") else {
        return;
    };
    let dir = sup::scratch("people-crop");
    let out = dir.join("out.mp4");
    let sheet = sup::artifacts().join("classic_people_0_crop256.png");
    let res = sup::generate(&av, &clip, &GenerateOptions::default(), &out, Some(&sheet));
    eprintln!("people_0 crop 256, 8 s: {:.1}x real time, stages {:?}", res.stats.realtime_factor, res.stats.stage_ms);
    probe_matches_clip(&out, &clip, 256, 256);
    assert!(sheet.is_file(), "contact sheet written");
    let jpg = std::fs::read(out.with_extension("jpg")).expect("thumbnail written");
    let thumb = vipavatar_pipeline::image::decode(&jpg, 1 << 24).expect("thumbnail decodes");
    assert_eq!((thumb.width, thumb.height), (256, 256));

    let frames = sup::decode_frames(&out);
    // The unanimated crop, built independently of the renderer.
    let (canvas, _, _) = build_canvas(&av.image, &av.analysis.crop, PreprocessMode::Crop, 256).expect("canvas");
    let lm = ClassicEngine::frame_landmarks(&av.prepared).expect("landmarks");
    let mouth: Vec<f64> = frames.iter().map(|f| sup::mouth_dark_pixels(f, &canvas, &lm)).collect();
    let env = sup::frame_envelope(&clip, frames.len());
    let r = sup::pearson(&mouth, &env);
    eprintln!("mouth-opening vs envelope r = {r:.3}");
    assert!(r >= 0.6, "mouth opening follows the speech envelope: r = {r:.3}");

    let region = ClassicEngine::animated_region(&av.prepared).expect("region");
    let outside = (256 * 256 - region[2] * region[3]) as f64 / (256.0 * 256.0);
    for (i, f) in frames.iter().enumerate() {
        let (mad, big) = outside_diff(f, &canvas, region);
        assert!(
            mad < 2.5 && big < 0.002,
            "frame {i}: outside the face region mean diff {mad:.2}, {:.3}% large",
            big * 100.0
        );
    }
    eprintln!("{:.0}% of the crop lies outside the animated region", outside * 100.0);
}

#[test]
fn espeak_silence_closes_the_mouth_and_speech_opens_it() {
    let Some(av) = sup::avatar("people_0.png", PreprocessMode::Crop, 256) else {
        return;
    };
    let (clip, silent) = speech_with_gap(1.2);
    let dir = sup::scratch("espeak-gap");
    let out = dir.join("out.mp4");
    let sheet = sup::artifacts().join("classic_people_0_espeak_gap.png");
    sup::generate(&av, &clip, &GenerateOptions { seed: 3, ..Default::default() }, &out, Some(&sheet));
    probe_matches_clip(&out, &clip, 256, 256);
    let frames = sup::decode_frames(&out);
    let (canvas, _, _) = build_canvas(&av.image, &av.analysis.crop, PreprocessMode::Crop, 256).expect("canvas");
    let lm = ClassicEngine::frame_landmarks(&av.prepared).expect("landmarks");
    let mouth: Vec<f64> = frames.iter().map(|f| sup::mouth_dark_pixels(f, &canvas, &lm)).collect();
    let closed = sup::mouth_dark_pixels(&canvas, &canvas, &lm);
    let speech_max = mouth.iter().copied().fold(0.0, f64::max);
    eprintln!("closed {closed}, per frame {:?}", mouth.iter().map(|v| *v as i64).collect::<Vec<_>>());
    assert!(speech_max > closed + 40.0, "the mouth opens while speaking: max {speech_max} vs closed {closed}");
    // Encoding noise and the idle head sway move a few dark pixels in and out of the box.
    let tolerance = (0.1 * (speech_max - closed)).max(6.0);
    for t in silent.clone() {
        assert!(
            mouth[t] <= closed + tolerance,
            "frame {t} in the silence shows an open mouth: {} vs closed {closed}",
            mouth[t]
        );
    }
    let env = sup::frame_envelope(&clip, frames.len());
    let r = sup::pearson(&mouth, &env);
    eprintln!("espeak: r = {r:.3}, silence frames {silent:?}");
    assert!(r >= 0.6, "espeak speech: r = {r:.3}");
}

#[test]
fn full_mode_keeps_the_background_stable() {
    let Some(av) = sup::avatar("full_body_1.jpg", PreprocessMode::Full, 256) else {
        return;
    };
    let clip = decode_audio(&sup::espeak("Good morning, everyone."), &AudioLimits::default()).expect("decode");
    let dir = sup::scratch("full-mode");
    let out = dir.join("out.mp4");
    let sheet = sup::artifacts().join("classic_full_body_1_full.png");
    let opts = GenerateOptions { preprocess: PreprocessMode::Full, ..Default::default() };
    let res = sup::generate(&av, &clip, &opts, &out, Some(&sheet));
    eprintln!("full_body_1 full: {:.1}x real time", res.stats.realtime_factor);
    let (w, h) = (av.image.width & !1, av.image.height & !1);
    probe_matches_clip(&out, &clip, w, h);
    let frames = sup::decode_frames(&out);
    let (canvas, _, _) = build_canvas(&av.image, &av.analysis.crop, PreprocessMode::Full, 256).expect("canvas");
    let region = ClassicEngine::animated_region(&av.prepared).expect("region");
    assert!(
        (region[2] * region[3]) as f64 / (w * h) as f64 <= 0.5,
        "the animated region {region:?} is a part of the {w}x{h} frame"
    );
    for (i, f) in frames.iter().enumerate() {
        let (mad, big) = outside_diff(f, &canvas, region);
        assert!(mad < 2.5 && big < 0.002, "frame {i}: background mean diff {mad:.2}, {:.3}% large", big * 100.0);
    }
    // Across the animated region's border there is no seam: the ring of pixels just inside the
    // border matches the original as closely as the background does.
    let [rx, ry, rw, rh] = region;
    let inner = [rx + 2, ry + 2, rw - 4, rh - 4];
    let last = frames.last().expect("frames");
    let mut diff = 0.0;
    let mut n = 0.0;
    for y in ry..ry + rh {
        for x in rx..rx + rw {
            let in_inner = x >= inner[0] && x < inner[0] + inner[2] && y >= inner[1] && y < inner[1] + inner[3];
            if in_inner {
                continue;
            }
            let (p, q) = (last.pixel(x as u32, y as u32), canvas.pixel(x as u32, y as u32));
            diff += (0..3).map(|k| (p[k] as f64 - q[k] as f64).abs()).sum::<f64>() / 3.0;
            n += 1.0;
        }
    }
    assert!(diff / n < 3.0, "seam at the region border: mean diff {:.2}", diff / n);
}

#[test]
fn resize_and_512_sizes() {
    let Some(av) = sup::avatar("art_0.png", PreprocessMode::Resize, 512) else {
        return;
    };
    let clip = decode_audio(&sup::espeak("One two three."), &AudioLimits::default()).expect("decode");
    let dir = sup::scratch("resize-512");
    let out = dir.join("out.mp4");
    let opts = GenerateOptions { preprocess: PreprocessMode::Resize, size: 512, ..Default::default() };
    sup::generate(&av, &clip, &opts, &out, Some(&sup::artifacts().join("classic_art_0_resize512.png")));
    probe_matches_clip(&out, &clip, 512, 512);
}

/// Every shared portrait with every shared clip (English speech, two Mandarin clips, singing):
/// the rendered mouth opening follows the speech envelope (r >= 0.6 each; the table printed is
/// the README's). Contact sheets of each pair go to `target/test-artifacts/`.
#[test]
fn every_shared_image_lip_syncs_every_shared_clip() {
    let images = ["art_0.png", "full4.jpeg", "happy.png", "sad.png", "full_body_1.jpg", "people_0.png"];
    let clips = ["RD_Radio31_000.wav", "chinese_poem1.wav", "bus_chinese.wav", "imagine.wav"];
    let stem = |s: &str| s.split('.').next().unwrap_or(s).to_string();
    let mut low = Vec::new();
    let mut table = format!("| portrait | {} |\n", clips.map(stem).join(" | "));
    for image in images {
        let Some(av) = sup::avatar(image, PreprocessMode::Crop, 256) else {
            return;
        };
        let (canvas, _, _) = build_canvas(&av.image, &av.analysis.crop, PreprocessMode::Crop, 256).expect("canvas");
        let lm = ClassicEngine::frame_landmarks(&av.prepared).expect("landmarks");
        table += &format!("| {} |", stem(image));
        for audio in clips {
            let Some(clip) = sup::shared_audio(audio) else {
                return;
            };
            let dir = sup::scratch("matrix");
            let out = dir.join("out.mp4");
            let sheet = sup::artifacts().join(format!("classic_{}_{}.png", stem(image), stem(audio)));
            sup::generate(&av, &clip, &GenerateOptions::default(), &out, Some(&sheet));
            let frames = sup::decode_frames(&out);
            assert_eq!(frames.len(), clip.num_frames());
            let mouth: Vec<f64> = frames.iter().map(|f| sup::mouth_dark_pixels(f, &canvas, &lm)).collect();
            let r = sup::pearson(&mouth, &sup::frame_envelope(&clip, frames.len()));
            table += &format!(" {r:.3} |");
            if r < 0.6 {
                low.push(format!("{image} + {audio}: r = {r:.3}"));
            }
        }
        table += "\n";
    }
    eprintln!("mouth opening vs speech envelope, r per pair:\n{table}");
    assert!(low.is_empty(), "mouth opening vs envelope below 0.6: {low:?}");
}

/// The decoded pictures of a video's coded frames, as they are (no frame-rate conversion), as
/// one byte string each.
fn coded_frames(path: &std::path::Path) -> Vec<Vec<u8>> {
    let out = std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(path)
        .args(["-map", "0:v:0", "-fps_mode", "passthrough", "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1"])
        .output()
        .expect("run ffmpeg");
    assert!(out.status.success(), "decode {}", path.display());
    out.stdout.chunks(256 * 256 * 3).map(|c| c.to_vec()).collect()
}

/// Mean absolute difference of two frames over every pixel and channel.
fn mean_abs_diff(a: &RgbImage, b: &RgbImage) -> f64 {
    a.data.iter().zip(&b.data).map(|(x, y)| (*x as f64 - *y as f64).abs()).sum::<f64>() / a.data.len() as f64
}

#[test]
fn split_parts_join_into_the_whole_video_without_a_jump() {
    use std::sync::{Arc, Mutex};
    use vipavatar_pipeline::engine::AvatarInput;
    use vipavatar_pipeline::video::{
        generate_part, generate_streamed, split_parts, Fragment, GenerateRequest, PartMuxer,
    };
    let Some(av) = sup::avatar("people_0.png", PreprocessMode::Crop, 256) else {
        return;
    };
    let Some(clip) = sup::shared_audio("RD_Radio31_000.wav") else {
        return;
    };
    let dir = sup::scratch("split-parts");
    // High quality keeps the encoder's noise well below a frame step.
    let opts = GenerateOptions { quality: vipavatar_pipeline::engine::Quality::High, ..GenerateOptions::default() };
    // Parts of about a third of the clip each, as the service would cut them.
    let parts = split_parts(&clip, clip.duration_s() / 2.5).expect("the clip splits");
    assert_eq!(parts.len(), 3, "{parts:?}");

    let engine = sup::engine();
    let part_out = dir.join("unused.mp4");
    let req = GenerateRequest {
        engine: &engine,
        avatar: AvatarInput { image: &av.image, analysis: &av.analysis },
        prepared: &av.prepared,
        audio: &clip,
        options: &opts,
        features: None,
        motion: None,
        output: &part_out,
        thumbnail: None,
        contact_sheet: None,
        close_loop: false,
    };
    let streams: Vec<Vec<u8>> = parts
        .iter()
        .map(|r| {
            let bytes = Arc::new(Mutex::new(Vec::new()));
            let b = bytes.clone();
            let out =
                generate_part(&req, r.clone(), Box::new(move |chunk| b.lock().unwrap().extend(chunk)), &mut |_| {})
                    .expect("render a part");
            assert_eq!(out.stats.frames, r.len());
            assert!(out.motion.is_empty() && out.features.is_none(), "a part leaves nothing for the cache");
            let v = bytes.lock().unwrap().clone();
            v
        })
        .collect();
    assert!(!part_out.exists(), "a part writes no MP4 of its own");
    // The reference: the whole clip through the live path (the same encoder settings).
    let whole_path = dir.join("whole.mp4");
    generate_streamed(&GenerateRequest { output: &whole_path, ..req }, Some(Box::new(|_| {})), &mut |_| {})
        .expect("whole video");

    let joined_path = dir.join("joined.mp4");
    let live = Arc::new(Mutex::new(Vec::<u8>::new()));
    let l = live.clone();
    let muxer =
        PartMuxer::new(&joined_path, &clip, Some(Box::new(move |f: Fragment| l.lock().unwrap().extend(f.bytes()))))
            .expect("start the muxer");
    let feed = muxer.feed().expect("feed");
    for s in &streams {
        for piece in s.chunks(7000) {
            assert!(feed.push(piece.to_vec()));
        }
    }
    drop(feed);
    muxer.finish().expect("join the parts");
    probe_matches_clip(&joined_path, &clip, 256, 256);
    assert!(sup::is_faststart(&joined_path));

    let whole = sup::decode_frames(&whole_path);
    let joined = sup::decode_frames(&joined_path);
    assert_eq!(joined.len(), whole.len());
    let diffs: Vec<f64> = whole.iter().zip(&joined).map(|(a, b)| mean_abs_diff(a, b)).collect();
    let worst = diffs.iter().copied().fold(0.0, f64::max);
    let at = diffs.iter().position(|d| *d == worst).unwrap_or(0);
    eprintln!(
        "joined vs whole video: worst frame mean abs diff {worst:.2} at frame {at}, mean {:.2}",
        diffs.iter().sum::<f64>() / diffs.len() as f64
    );
    assert!(worst < 2.0, "the joined parts show the whole clip's frames (worst mean abs diff {worst:.2})");
    // ... in the same order: each joined frame is closer to the same whole frame than to its
    // neighbours (a part shifted by a frame would not be).
    let shifted: Vec<f64> = (1..whole.len()).map(|i| mean_abs_diff(&whole[i - 1], &joined[i])).collect();
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    eprintln!("mean diff aligned {:.2}, shifted by one frame {:.2}", mean(&diffs), mean(&shifted));
    assert!(mean(&diffs) < 0.8 * mean(&shifted), "the joined frames are not aligned with the whole video's");
    // No jump at a border: the step into a part's first frame is like any other frame step.
    let steps: Vec<f64> = joined.windows(2).map(|w| mean_abs_diff(&w[0], &w[1])).collect();
    let borders: Vec<usize> = parts.iter().skip(1).map(|r| r.start).collect();
    let mut ordinary: Vec<f64> =
        steps.iter().enumerate().filter(|(i, _)| !borders.contains(&(i + 1))).map(|(_, s)| *s).collect();
    ordinary.sort_by(f64::total_cmp);
    let p95 = ordinary[ordinary.len() * 95 / 100];
    for b in &borders {
        let step = steps[b - 1];
        eprintln!(
            "border at frame {b}: step {step:.2} (ordinary p95 {p95:.2}, whole video there {:.2})",
            mean_abs_diff(&whole[b - 1], &whole[*b])
        );
        assert!(step <= 1.5 * p95 + 0.5, "a jump at the part border {b}: {step:.2} vs ordinary p95 {p95:.2}");
    }
    // The live stream carries the same frames.
    let live_path = dir.join("live.mp4");
    std::fs::write(&live_path, live.lock().unwrap().as_slice()).expect("write the live stream");
    let (streamed, file) = (coded_frames(&live_path), coded_frames(&joined_path));
    assert_eq!(streamed.len(), clip.num_frames());
    assert!(streamed == file, "the live stream's frames differ from the file's");
}

#[test]
fn an_idle_render_stops_between_chunks_when_asked() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use vipavatar_pipeline::video::{render_idle, STOPPED};
    let Some(av) = sup::avatar("people_0.png", PreprocessMode::Crop, 256) else { return };
    let dir = sup::scratch("idle-stop");
    let (out, thumb) = (dir.join("idle.mp4"), dir.join("idle.jpg"));
    let engine = sup::engine();
    let checks = AtomicUsize::new(0);
    // Asked to stop at its third chunk.
    let stop = || checks.fetch_add(1, Ordering::Relaxed) >= 2;
    let r = render_idle(&engine, av.input(), &av.prepared, &GenerateOptions::default(), &out, &thumb, &stop);
    match r {
        Err(vipavatar_pipeline::PipelineError::Internal(m)) => assert_eq!(m, STOPPED),
        other => panic!("expected a stop, got {other:?}"),
    }
    assert_eq!(checks.load(Ordering::Relaxed), 3, "checked once per chunk until it stopped");
    // Never asked: the whole loop.
    let stats = render_idle(&engine, av.input(), &av.prepared, &GenerateOptions::default(), &out, &thumb, &|| false)
        .expect("render")
        .expect("the classic engine has an idle loop");
    assert!(stats.frames > 100 && out.is_file() && thumb.is_file());
}

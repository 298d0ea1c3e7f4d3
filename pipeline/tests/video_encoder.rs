//! The ffmpeg MP4 encoder, thumbnail and contact sheet on synthetic frames: stream layout checked
//! with ffprobe, frames decoded back and compared, typed errors for bad frame streams.

use crate::classic_support as sup;
use vipavatar_pipeline::audio::AudioClip;
use vipavatar_pipeline::engine::{FrameSink, Quality};
use vipavatar_pipeline::image::RgbImage;
use vipavatar_pipeline::video::{write_jpeg, ContactSheet, EncoderConfig, Mp4Encoder};
use vipavatar_pipeline::PipelineError;

/// A frame with a gradient background and a square that moves with `t`.
fn frame(w: u32, h: u32, t: usize) -> RgbImage {
    let mut img = RgbImage::new(w, h);
    for y in 0..h {
        for x in 0..w {
            let i = ((y * w + x) * 3) as usize;
            let inside = x >= 20 + 3 * t as u32 && x < 60 + 3 * t as u32 && (40..80).contains(&y);
            let px = if inside { [230, 40, 40] } else { [(x * 255 / w) as u8, (y * 255 / h) as u8, 128] };
            img.data[i..i + 3].copy_from_slice(&px);
        }
    }
    img
}

fn tone(seconds: f64) -> AudioClip {
    let n = (seconds * 16000.0) as usize;
    AudioClip {
        samples: (0..n).map(|i| 0.3 * (2.0 * std::f32::consts::PI * 330.0 * i as f32 / 16000.0).sin()).collect(),
        sample_rate: 16000,
    }
}

fn psnr(a: &RgbImage, b: &RgbImage) -> f64 {
    let mse =
        a.data.iter().zip(&b.data).map(|(x, y)| (*x as f64 - *y as f64).powi(2)).sum::<f64>() / a.data.len() as f64;
    10.0 * (255.0f64.powi(2) / mse.max(1e-9)).log10()
}

#[test]
fn encodes_h264_aac_faststart_with_matching_durations() {
    let dir = sup::scratch("encoder");
    let out = dir.join("clip.mp4");
    let clip = tone(2.0);
    let n = clip.num_frames();
    assert_eq!(n, 50);
    let mut enc = Mp4Encoder::new(EncoderConfig::new(&out, Quality::High), &clip).expect("encoder");
    let frames: Vec<RgbImage> = (0..n).map(|t| frame(320, 240, t)).collect();
    for f in &frames {
        enc.push(f).expect("push");
    }
    assert_eq!(enc.finish().expect("finish"), n);
    let p = sup::ffprobe(&out);
    assert_eq!((p.video_codec.as_str(), p.pix_fmt.as_str(), p.width, p.height), ("h264", "yuv420p", 320, 240));
    assert_eq!(p.frame_rate, "25/1");
    assert_eq!(p.video_frames, n);
    assert_eq!(p.audio_codec, "aac");
    assert!((p.video_seconds - 2.0).abs() <= 0.04 && (p.audio_seconds - 2.0).abs() <= 0.04, "{p:?}");
    assert!(sup::is_faststart(&out));
    let back = sup::decode_frames(&out);
    assert_eq!(back.len(), n);
    for (t, (a, b)) in frames.iter().zip(&back).enumerate() {
        let q = psnr(a, b);
        assert!(q > 30.0, "frame {t}: PSNR {q:.1} dB");
    }
    // No sidecar files are left next to the output.
    let names: Vec<_> = std::fs::read_dir(dir.path()).expect("dir").map(|e| e.expect("entry").file_name()).collect();
    assert_eq!(names.len(), 1, "{names:?}");
}

#[test]
fn quality_presets_change_the_bitrate() {
    let dir = sup::scratch("quality");
    let clip = tone(1.0);
    let mut sizes = Vec::new();
    for q in [Quality::Low, Quality::High] {
        let out = dir.join(format!("{q:?}.mp4"));
        let mut enc = Mp4Encoder::new(EncoderConfig::new(&out, q), &clip).expect("encoder");
        for t in 0..clip.num_frames() {
            // Noisy content so the rate factor matters.
            let mut f = frame(256, 256, t);
            for (i, v) in f.data.iter_mut().enumerate() {
                *v = v.wrapping_add(((i * 7919 + t * 104_729) % 23) as u8);
            }
            enc.push(&f).expect("push");
        }
        enc.finish().expect("finish");
        sizes.push(std::fs::metadata(&out).expect("size").len());
    }
    assert!(sizes[1] > sizes[0] * 3 / 2, "High ({}) is much larger than Low ({})", sizes[1], sizes[0]);
}

#[test]
fn bad_frame_streams_are_typed_errors() {
    let dir = sup::scratch("bad-frames");
    let clip = tone(1.0);
    let mut odd = Mp4Encoder::new(EncoderConfig::new(&dir.join("odd.mp4"), Quality::Medium), &clip).expect("encoder");
    assert!(matches!(odd.push(&frame(321, 240, 0)), Err(PipelineError::Encode(_))));
    let mut changing =
        Mp4Encoder::new(EncoderConfig::new(&dir.join("change.mp4"), Quality::Medium), &clip).expect("encoder");
    changing.push(&frame(320, 240, 0)).expect("first frame");
    assert!(matches!(changing.push(&frame(240, 320, 1)), Err(PipelineError::Encode(_))));
    let empty = Mp4Encoder::new(EncoderConfig::new(&dir.join("empty.mp4"), Quality::Medium), &clip).expect("encoder");
    assert!(matches!(empty.finish(), Err(PipelineError::Encode(_))));
    // An output that cannot be written: ffmpeg fails, the error says so.
    let mut nowhere =
        Mp4Encoder::new(EncoderConfig::new(&dir.join("out.mp4"), Quality::Medium), &clip).expect("encoder");
    std::fs::create_dir_all(dir.join("blocked.mp4")).expect("dir in the way");
    let mut blocked =
        Mp4Encoder::new(EncoderConfig::new(&dir.join("blocked.mp4"), Quality::Medium), &clip).expect("encoder");
    let mut res = Ok(());
    for t in 0..25 {
        res = res.and_then(|_| blocked.push(&frame(64, 64, t)));
    }
    let finished = res.and_then(|_| blocked.finish().map(|_| ()));
    assert!(matches!(finished, Err(PipelineError::Encode(_))), "{finished:?}");
    nowhere.push(&frame(64, 64, 0)).expect("push");
    nowhere.finish().expect("a normal output still works");
}

#[test]
fn thumbnail_and_contact_sheet() {
    let dir = sup::scratch("sheet");
    let thumb = dir.join("t.jpg");
    write_jpeg(&frame(320, 240, 0), &thumb).expect("jpeg");
    let img = vipavatar_pipeline::image::decode(&std::fs::read(&thumb).expect("read"), 1 << 24).expect("decodes");
    assert_eq!((img.width, img.height), (320, 240));
    let mut sheet = ContactSheet::new(5, 128, 4);
    for t in 0..23 {
        sheet.offer(&frame(320, 240, t)).expect("offer");
    }
    assert_eq!(sheet.len(), 5, "frames 0, 5, 10, 15, 20");
    let png = dir.join("s.png");
    sheet.write_png(&png).expect("png");
    let img = vipavatar_pipeline::image::decode(&std::fs::read(&png).expect("read"), 1 << 24).expect("decodes");
    // 4 columns x 2 rows of 128x96 tiles with 2 px gaps.
    assert_eq!((img.width, img.height), (4 * 130 + 2, 2 * 98 + 2));
    assert!(ContactSheet::new(5, 128, 4).write_png(&dir.join("none.png")).is_err());
}

#[test]
fn a_kept_ffmpeg_encodes_the_next_video_with_the_same_command_line() {
    use vipavatar_pipeline::video::warm;
    let dir = sup::scratch("warm");
    warm::keep(true);
    let encode = |name: &str, seconds: f64, shift: usize| {
        let out = dir.join(name);
        let clip = tone(seconds);
        let config = EncoderConfig {
            keyframes: vipavatar_pipeline::video::chunk_starts(clip.num_frames()),
            ..EncoderConfig::new(&out, Quality::Medium)
        };
        let mut enc = Mp4Encoder::new(config, &clip).expect("encoder");
        let frames: Vec<RgbImage> = (0..clip.num_frames()).map(|t| frame(256, 256, t + shift)).collect();
        for f in &frames {
            enc.push(f).expect("push");
        }
        assert_eq!(enc.finish().expect("finish"), frames.len());
        (out, frames)
    };
    assert_eq!(warm::kept_in(dir.path()), 0);
    // The first encode starts its own ffmpeg and leaves one started for the next.
    let (first, _) = encode("first.mp4", 1.0, 0);
    assert_eq!(warm::kept_in(dir.path()), 1);
    // A clip of another length has the same command line (keyframes are an expression).
    let (second, frames) = encode("second.mp4", 2.4, 5);
    assert_eq!(warm::kept_in(dir.path()), 1, "the kept ffmpeg was used and replaced");
    for out in [&first, &second] {
        assert!(sup::is_faststart(out));
    }
    let p = sup::ffprobe(&second);
    assert_eq!((p.video_frames, p.audio_codec.as_str()), (frames.len(), "aac"));
    assert!((p.audio_seconds - 2.4).abs() <= 0.04, "the whole soundtrack went through the pipe: {p:?}");
    let back = sup::decode_frames(&second);
    for (t, (a, b)) in frames.iter().zip(&back).enumerate() {
        assert!(psnr(a, b) > 30.0, "frame {t} of the second video");
    }
    // Keyframes at the chunk starts only (0, 6, 31, 56), as the listed times gave them.
    let keys = sup::keyframes(&second);
    assert_eq!(keys, vipavatar_pipeline::video::chunk_starts(frames.len()), "keyframes");
    // Bare H.264 parts (stdout only, no file) go through a kept ffmpeg too.
    for round in 0..2 {
        let bytes = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
        let into = bytes.clone();
        let sink: vipavatar_pipeline::video::ByteSink = Box::new(move |b| into.lock().unwrap().extend(b));
        let config =
            EncoderConfig { elementary: Some(sink), ..EncoderConfig::new(&dir.join("part.mp4"), Quality::Medium) };
        let mut enc = Mp4Encoder::new(config, &tone(0.4)).expect("part encoder");
        for t in 0..10 {
            enc.push(&frame(256, 256, t)).expect("push");
        }
        assert_eq!(enc.finish().expect("finish part"), 10, "round {round}");
        let h264 = bytes.lock().unwrap().clone();
        assert!(h264.starts_with(&[0, 0, 0, 1]), "round {round}: an Annex B stream");
    }
    // Nothing is left behind but the two videos; turning keeping off stops the kept process.
    warm::keep(false);
    assert_eq!(warm::kept_in(dir.path()), 0);
    let mut names: Vec<_> = std::fs::read_dir(dir.path())
        .expect("dir")
        .map(|e| e.expect("entry").file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["first.mp4", "second.mp4"]);
}

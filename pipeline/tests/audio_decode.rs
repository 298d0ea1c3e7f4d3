//! Audio decoding through the real ffmpeg: every WAV sample format (incl. WAVE_FORMAT_EXTENSIBLE),
//! MP3 / OGG Vorbis / FLAC / M4A AAC made by ffmpeg's encoders, any rate and channel count to
//! 16 kHz mono, and typed errors for empty, non-audio, too short, too long and lying inputs.

use crate::common;

use std::process::Command;
use vipavatar_pipeline::audio::{decode_audio, AudioClip, AudioLimits};
use vipavatar_pipeline::PipelineError;

/// Sample encodings a WAV `fmt ` chunk can declare.
#[derive(Clone, Copy, Debug)]
enum Fmt {
    U8,
    S16,
    S24,
    S32,
    F32,
    F64,
}

impl Fmt {
    fn bits(self) -> u16 {
        match self {
            Fmt::U8 => 8,
            Fmt::S16 => 16,
            Fmt::S24 => 24,
            Fmt::S32 | Fmt::F32 => 32,
            Fmt::F64 => 64,
        }
    }
    fn is_float(self) -> bool {
        matches!(self, Fmt::F32 | Fmt::F64)
    }
    fn encode(self, v: f64, out: &mut Vec<u8>) {
        let v = v.clamp(-1.0, 1.0);
        match self {
            Fmt::U8 => out.push(((v * 127.0).round() + 128.0) as u8),
            Fmt::S16 => out.extend_from_slice(&((v * 32767.0).round() as i16).to_le_bytes()),
            Fmt::S24 => out.extend_from_slice(&((v * 8_388_607.0).round() as i32).to_le_bytes()[..3]),
            Fmt::S32 => out.extend_from_slice(&((v * 2_147_483_647.0).round() as i32).to_le_bytes()),
            Fmt::F32 => out.extend_from_slice(&(v as f32).to_le_bytes()),
            Fmt::F64 => out.extend_from_slice(&v.to_le_bytes()),
        }
    }
}

/// A WAV file: `frames` of `channels` interleaved samples from `signal(t, channel)`.
struct Wav {
    fmt: Fmt,
    rate: u32,
    channels: u16,
    seconds: f64,
    extensible: bool,
    /// Replace the `data` chunk size field (a header that lies).
    data_size: Option<u32>,
}

impl Wav {
    fn new(fmt: Fmt, rate: u32, channels: u16, seconds: f64) -> Self {
        Self { fmt, rate, channels, seconds, extensible: false, data_size: None }
    }

    fn bytes(&self, signal: impl Fn(f64, u16) -> f64) -> Vec<u8> {
        let frames = (self.seconds * self.rate as f64).round() as usize;
        let mut data = Vec::new();
        for i in 0..frames {
            for c in 0..self.channels {
                self.fmt.encode(signal(i as f64 / self.rate as f64, c), &mut data);
            }
        }
        let block = self.channels * self.fmt.bits() / 8;
        let tag: u16 = if self.extensible {
            0xFFFE
        } else if self.fmt.is_float() {
            3
        } else {
            1
        };
        let mut fmt = Vec::new();
        fmt.extend_from_slice(&tag.to_le_bytes());
        fmt.extend_from_slice(&self.channels.to_le_bytes());
        fmt.extend_from_slice(&self.rate.to_le_bytes());
        fmt.extend_from_slice(&(self.rate * block as u32).to_le_bytes());
        fmt.extend_from_slice(&block.to_le_bytes());
        fmt.extend_from_slice(&self.fmt.bits().to_le_bytes());
        if self.extensible {
            fmt.extend_from_slice(&22u16.to_le_bytes()); // cbSize
            fmt.extend_from_slice(&self.fmt.bits().to_le_bytes()); // valid bits
            let mask: u32 = (1u32 << self.channels) - 1;
            fmt.extend_from_slice(&mask.to_le_bytes());
            let sub: u16 = if self.fmt.is_float() { 3 } else { 1 };
            fmt.extend_from_slice(&sub.to_le_bytes());
            // The rest of the KSDATAFORMAT_SUBTYPE GUID.
            fmt.extend_from_slice(&[
                0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x80, 0x00, 0x00, 0xAA, 0x00, 0x38, 0x9B, 0x71,
            ]);
        }
        let mut out = Vec::new();
        out.extend_from_slice(b"RIFF");
        out.extend_from_slice(&((4 + 8 + fmt.len() + 8 + data.len()) as u32).to_le_bytes());
        out.extend_from_slice(b"WAVE");
        out.extend_from_slice(b"fmt ");
        out.extend_from_slice(&(fmt.len() as u32).to_le_bytes());
        out.extend_from_slice(&fmt);
        out.extend_from_slice(b"data");
        out.extend_from_slice(&self.data_size.unwrap_or(data.len() as u32).to_le_bytes());
        out.extend_from_slice(&data);
        out
    }
}

fn sine(freq: f64, amp: f64) -> impl Fn(f64, u16) -> f64 {
    move |t, _| amp * (2.0 * std::f64::consts::PI * freq * t).sin()
}

fn peak(clip: &AudioClip) -> f32 {
    clip.samples.iter().fold(0.0f32, |m, v| m.max(v.abs()))
}

/// Rising zero crossings per second over the middle of the clip.
fn frequency(clip: &AudioClip) -> f64 {
    let s = &clip.samples[clip.samples.len() / 10..clip.samples.len() * 9 / 10];
    let rising = s.windows(2).filter(|w| w[0] < 0.0 && w[1] >= 0.0).count();
    rising as f64 / (s.len() as f64 / 16000.0)
}

fn rms(clip: &AudioClip) -> f64 {
    (clip.samples.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / clip.samples.len().max(1) as f64).sqrt()
}

#[test]
fn every_wav_sample_format_decodes_to_16k_mono() {
    let limits = AudioLimits::default();
    for fmt in [Fmt::U8, Fmt::S16, Fmt::S24, Fmt::S32, Fmt::F32, Fmt::F64] {
        for extensible in [false, true] {
            let wav = Wav { extensible, ..Wav::new(fmt, 44_100, 2, 1.0) };
            let clip = decode_audio(&wav.bytes(sine(440.0, 0.5)), &limits)
                .unwrap_or_else(|e| panic!("{fmt:?} extensible={extensible}: {e}"));
            assert_eq!(clip.sample_rate, 16_000);
            assert!((clip.samples.len() as i64 - 16_000).abs() <= 32, "{fmt:?}: {} samples", clip.samples.len());
            let p = peak(&clip);
            assert!((p - 0.5).abs() < 0.04, "{fmt:?} extensible={extensible}: peak {p}");
            let f = frequency(&clip);
            assert!((f - 440.0).abs() < 3.0, "{fmt:?}: {f} Hz");
        }
    }
}

#[test]
fn channels_are_mixed_and_rates_resampled() {
    // Channel 0 a 300 Hz tone, five silent channels, 8 kHz: the average keeps it at 1/6.
    let wav = Wav::new(Fmt::S16, 8_000, 6, 2.0);
    let clip = decode_audio(
        &wav.bytes(|t, c| if c == 0 { 0.6 * (2.0 * std::f64::consts::PI * 300.0 * t).sin() } else { 0.0 }),
        &AudioLimits::default(),
    )
    .expect("6-channel 8 kHz");
    assert!((clip.duration_s() - 2.0).abs() < 0.01);
    assert!((frequency(&clip) - 300.0).abs() < 3.0);
    let p = peak(&clip);
    assert!((p - 0.1).abs() < 0.01, "downmixed peak {p}");
    // 96 kHz mono.
    let clip = decode_audio(&Wav::new(Fmt::S24, 96_000, 1, 1.5).bytes(sine(1000.0, 0.3)), &AudioLimits::default())
        .expect("96 kHz");
    assert!((clip.duration_s() - 1.5).abs() < 0.01);
    assert!((frequency(&clip) - 1000.0).abs() < 5.0);
}

#[test]
fn shared_recordings_decode_with_their_durations() {
    let Some(dir) = common::shared_testdata() else { return };
    for (name, seconds) in
        [("RD_Radio31_000.wav", 8.0), ("chinese_poem1.wav", 5.47), ("bus_chinese.wav", 3.38), ("imagine.wav", 5.61)]
    {
        let bytes = std::fs::read(dir.join("audio").join(name)).expect("read");
        let clip = decode_audio(&bytes, &AudioLimits::default()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!((clip.duration_s() - seconds).abs() < 0.02, "{name}: {} s", clip.duration_s());
        assert!(rms(&clip) > 0.01, "{name} is not silent");
    }
    // imagine.wav really is WAVE_FORMAT_EXTENSIBLE.
    let bytes = std::fs::read(dir.join("audio/imagine.wav")).expect("read");
    let fmt = bytes.windows(4).position(|w| w == b"fmt ").expect("fmt chunk");
    let tag = u16::from_le_bytes([bytes[fmt + 8], bytes[fmt + 9]]);
    assert_eq!(tag, 0xFFFE);
}

/// Encode `wav` with the ffmpeg CLI into `ext` (a real encoder per format).
fn transcode(wav: &[u8], ext: &str, codec: &[&str]) -> Vec<u8> {
    let dir = std::env::temp_dir().join(format!("vipavatar-audio-test-{}-{ext}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let src = dir.join("in.wav");
    let dst = dir.join(format!("out.{ext}"));
    std::fs::write(&src, wav).expect("write wav");
    let status = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-i"])
        .arg(&src)
        .args(codec)
        .arg(&dst)
        .status()
        .expect("run ffmpeg");
    assert!(status.success(), "ffmpeg could not make {ext}");
    let bytes = std::fs::read(&dst).expect("read encoded");
    let _ = std::fs::remove_dir_all(&dir);
    bytes
}

#[test]
fn compressed_formats_decode() {
    let out = Command::new("espeak-ng")
        .args(["-v", "en-us", "--stdout", "The quick brown fox jumps over the lazy dog."])
        .output()
        .expect("espeak-ng");
    assert!(out.status.success());
    let wav = out.stdout;
    let reference =
        decode_audio(&wav, &AudioLimits::default()).expect("espeak wav (22.05 kHz, header with unknown length)");
    for (ext, codec) in [
        ("mp3", vec!["-c:a", "libmp3lame", "-b:a", "64k"]),
        ("ogg", vec!["-c:a", "libvorbis"]),
        ("flac", vec!["-c:a", "flac"]),
        ("m4a", vec!["-c:a", "aac", "-b:a", "64k"]),
    ] {
        let bytes = transcode(&wav, ext, &codec);
        let clip = decode_audio(&bytes, &AudioLimits::default()).unwrap_or_else(|e| panic!("{ext}: {e}"));
        let d = clip.duration_s() - reference.duration_s();
        assert!(d.abs() < 0.12, "{ext}: {} s vs {} s", clip.duration_s(), reference.duration_s());
        let ratio = rms(&clip) / rms(&reference);
        assert!((0.8..1.25).contains(&ratio), "{ext}: loudness ratio {ratio}");
    }
}

#[test]
fn non_audio_is_a_typed_error() {
    let limits = AudioLimits::default();
    let png = {
        let mut buf = opencv::core::Vector::<u8>::new();
        let img = vipavatar_pipeline::image::RgbImage::new(64, 64);
        opencv::imgcodecs::imencode(".png", &img.to_bgr_mat().expect("mat"), &mut buf, &opencv::core::Vector::new())
            .expect("png");
        buf.iter().collect::<Vec<u8>>()
    };
    let mut noise = Vec::new();
    let mut x: u32 = 12345;
    for _ in 0..50_000 {
        x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        noise.push((x >> 24) as u8);
    }
    let wav = Wav::new(Fmt::S16, 16_000, 1, 1.0).bytes(sine(200.0, 0.5));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("text", b"hello, this is not audio at all\n".repeat(100)),
        ("png image", png),
        ("random bytes", noise),
        ("RIFF header only", wav[..44].to_vec()),
        ("WAV header cut short", wav[..30].to_vec()),
    ];
    for (name, bytes) in cases {
        match decode_audio(&bytes, &limits) {
            Err(e @ PipelineError::NotAudio(_)) => {
                assert_eq!(e.code(), "not_audio");
                assert!(e.is_user_error());
            }
            other => panic!("{name}: expected NotAudio, got {other:?}"),
        }
    }
}

#[test]
fn too_short_and_too_long_are_rejected() {
    let short = Wav::new(Fmt::S16, 16_000, 1, 0.2).bytes(sine(200.0, 0.5));
    match decode_audio(&short, &AudioLimits::default()) {
        Err(PipelineError::AudioTooShort { seconds, min }) => {
            assert!((seconds - 0.2).abs() < 0.01 && min == 0.5, "{seconds} {min}");
        }
        other => panic!("0.2 s: expected AudioTooShort, got {other:?}"),
    }
    // The same clip is fine when the limit allows it.
    let clip =
        decode_audio(&short, &AudioLimits { min_seconds: 0.1, ..AudioLimits::default() }).expect("0.2 s allowed");
    assert_eq!(clip.num_frames(), 5);

    let eight = Wav::new(Fmt::S16, 16_000, 2, 8.0).bytes(sine(200.0, 0.3));
    match decode_audio(&eight, &AudioLimits { max_seconds: 5.0, ..AudioLimits::default() }) {
        Err(e @ PipelineError::AudioTooLong { .. }) => {
            let PipelineError::AudioTooLong { seconds, max } = e else { unreachable!() };
            assert!(seconds > 5.0 && max == 5.0, "{seconds}");
        }
        other => panic!("8 s over a 5 s limit: expected AudioTooLong, got {other:?}"),
    }
    // Over the default 300 s limit: 301 s of 8-bit 8 kHz silence (2.4 MB).
    let long = Wav::new(Fmt::U8, 8_000, 1, 301.0).bytes(|_, _| 0.0);
    match decode_audio(&long, &AudioLimits::default()) {
        Err(PipelineError::AudioTooLong { seconds, max }) => assert!(seconds >= 300.0 && max == 300.0),
        other => panic!("301 s: expected AudioTooLong, got {other:?}"),
    }
}

#[test]
fn a_wav_header_that_lies_about_its_length() {
    let limits = AudioLimits::default();
    let signal = sine(250.0, 0.4);
    // Claims 100 s of data, holds 2 s: the real length counts (and it is not "too long").
    let claims_more = Wav { data_size: Some(100 * 16_000 * 2), ..Wav::new(Fmt::S16, 16_000, 1, 2.0) }.bytes(&signal);
    let clip = decode_audio(&claims_more, &limits).expect("over-long header");
    assert!((clip.duration_s() - 2.0).abs() < 0.01, "{} s", clip.duration_s());
    // The streaming convention: size unknown (0xFFFFFFFF).
    let unknown = Wav { data_size: Some(u32::MAX), ..Wav::new(Fmt::S16, 16_000, 1, 2.0) }.bytes(&signal);
    let clip = decode_audio(&unknown, &limits).expect("unknown-size header");
    assert!((clip.duration_s() - 2.0).abs() < 0.01, "{} s", clip.duration_s());
    // Claims 1 s, holds 2 s: whatever is decoded, it is a sane clip, never a panic.
    let claims_less = Wav { data_size: Some(16_000 * 2), ..Wav::new(Fmt::S16, 16_000, 1, 2.0) }.bytes(&signal);
    let clip = decode_audio(&claims_less, &limits).expect("short header");
    assert!(clip.duration_s() > 0.95 && clip.duration_s() < 2.05, "{} s", clip.duration_s());
    assert!((frequency(&clip) - 250.0).abs() < 3.0);
    // Odd byte count (half a sample at the end).
    let mut odd = Wav::new(Fmt::S16, 16_000, 1, 1.0).bytes(&signal);
    odd.push(0x7f);
    assert!(decode_audio(&odd, &limits).is_ok());
}

#[test]
fn silence_decodes_as_silence() {
    let clip =
        decode_audio(&Wav::new(Fmt::S16, 16_000, 1, 2.0).bytes(|_, _| 0.0), &AudioLimits::default()).expect("silence");
    assert_eq!(clip.samples.len(), 32_000);
    assert!(clip.samples.iter().all(|&v| v == 0.0));
}

//! SadTalker's audio front end in float64: pre-emphasis, centred zero-padded STFT (n_fft 800,
//! hop 200, periodic Hann), Slaney mel basis (librosa 0.9.2 `filters.mel`, 80 bands, 55-7600 Hz),
//! dB conversion and symmetric clipping normalisation to [-4, 4], then the per-video-frame
//! 16-step mel windows at 25 fps.

use crate::{PipelineError, Result};
use rustfft::num_complex::Complex;
use rustfft::FftPlanner;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

/// Audio sample rate the networks were trained on.
pub const SAMPLE_RATE: usize = 16_000;
/// Video frame rate of the generated motion.
pub const FPS: usize = 25;
/// Audio samples per video frame (16000 / 25).
pub const SAMPLES_PER_FRAME: usize = SAMPLE_RATE / FPS;
/// Mel bands.
pub const N_MELS: usize = 80;
/// Mel frames per video-frame window (`syncnet_mel_step_size`).
pub const MEL_STEP: usize = 16;
/// FFT size (= window length).
pub const N_FFT: usize = 800;
/// STFT hop in samples.
pub const HOP: usize = 200;
/// Frequency bins of the one-sided spectrum.
pub const N_BINS: usize = N_FFT / 2 + 1;

const PREEMPHASIS: f64 = 0.97;
const FMIN: f64 = 55.0;
const FMAX: f64 = 7600.0;
const MIN_LEVEL_DB: f64 = -100.0;
const REF_LEVEL_DB: f64 = 20.0;
const MAX_ABS_VALUE: f64 = 4.0;

/// `parse_audio_length`: number of 25 fps frames and the sample count the clip is cut/padded to.
pub fn frame_count(num_samples: usize) -> (usize, usize) {
    let num_frames = num_samples / SAMPLES_PER_FRAME;
    (num_frames, num_frames * SAMPLES_PER_FRAME)
}

/// `crop_pad_audio`: cut to `len` samples or pad with zeros.
pub fn crop_pad(wav: &[f32], len: usize) -> Vec<f32> {
    let mut out: Vec<f32> = wav.iter().take(len).copied().collect();
    out.resize(len, 0.0);
    out
}

/// `y[n] = x[n] - 0.97 x[n-1]` with `x[-1] = 0`, in float64.
pub fn preemphasis(wav: &[f32]) -> Vec<f64> {
    let mut prev = 0.0f64;
    wav.iter()
        .map(|&s| {
            let s = f64::from(s);
            let y = s - PREEMPHASIS * prev;
            prev = s;
            y
        })
        .collect()
}

/// Periodic Hann window of `N_FFT` samples, computed like scipy's `get_window('hann', fftbins=True)`.
fn hann_window() -> Vec<f64> {
    let m = N_FFT + 1;
    let step = (2.0 * std::f64::consts::PI) / (m - 1) as f64;
    (0..N_FFT).map(|n| 0.5 + 0.5 * (n as f64 * step - std::f64::consts::PI).cos()).collect()
}

/// Magnitude of the centred STFT (zero padding of `N_FFT / 2` on both sides), frame-major:
/// `out[t * N_BINS + k]` for `1 + len / HOP` frames.
pub fn stft_magnitude(y: &[f64]) -> (Vec<f64>, usize) {
    let pad = N_FFT / 2;
    let mut padded = vec![0.0f64; y.len() + 2 * pad];
    padded[pad..pad + y.len()].copy_from_slice(y);
    let n_frames = 1 + (padded.len() - N_FFT) / HOP;
    let window = hann_window();
    let fft = FftPlanner::<f64>::new().plan_fft_forward(N_FFT);
    let mut scratch = vec![Complex::new(0.0, 0.0); fft.get_inplace_scratch_len()];
    let mut buf = vec![Complex::new(0.0, 0.0); N_FFT];
    let mut out = Vec::with_capacity(n_frames * N_BINS);
    for t in 0..n_frames {
        let frame = &padded[t * HOP..t * HOP + N_FFT];
        for ((b, &s), &w) in buf.iter_mut().zip(frame).zip(&window) {
            *b = Complex::new(s * w, 0.0);
        }
        fft.process_with_scratch(&mut buf, &mut scratch);
        out.extend(buf[..N_BINS].iter().map(|c| c.norm()));
    }
    (out, n_frames)
}

fn hz_to_mel(hz: f64) -> f64 {
    let f_sp = 200.0 / 3.0;
    let min_log_hz = 1000.0;
    let min_log_mel = min_log_hz / f_sp;
    let logstep = 6.4f64.ln() / 27.0;
    if hz >= min_log_hz {
        min_log_mel + (hz / min_log_hz).ln() / logstep
    } else {
        hz / f_sp
    }
}

fn mel_to_hz(mel: f64) -> f64 {
    let f_sp = 200.0 / 3.0;
    let min_log_hz = 1000.0;
    let min_log_mel = min_log_hz / f_sp;
    let logstep = 6.4f64.ln() / 27.0;
    if mel >= min_log_mel {
        min_log_hz * (logstep * (mel - min_log_mel)).exp()
    } else {
        f_sp * mel
    }
}

/// The Slaney-normalised mel filter bank of librosa 0.9.2 `filters.mel(sr=16000, n_fft=800,
/// n_mels=80, fmin=55, fmax=7600)`, float32 as librosa returns it, row-major (80, 401).
pub fn mel_basis() -> Vec<f32> {
    // np.fft.rfftfreq(800, 1/16000)
    let val = 1.0 / (N_FFT as f64 * (1.0 / SAMPLE_RATE as f64));
    let fft_freqs: Vec<f64> = (0..N_BINS).map(|k| k as f64 * val).collect();
    // np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2) mapped back to Hz.
    let (lo, hi) = (hz_to_mel(FMIN), hz_to_mel(FMAX));
    let n_pts = N_MELS + 2;
    let step = (hi - lo) / (n_pts - 1) as f64;
    let mel_f: Vec<f64> =
        (0..n_pts).map(|i| if i == n_pts - 1 { hi } else { i as f64 * step + lo }).map(mel_to_hz).collect();
    let mut weights = vec![0.0f32; N_MELS * N_BINS];
    for m in 0..N_MELS {
        let fdiff_lo = mel_f[m + 1] - mel_f[m];
        let fdiff_hi = mel_f[m + 2] - mel_f[m + 1];
        let enorm = 2.0 / (mel_f[m + 2] - mel_f[m]);
        for (k, &f) in fft_freqs.iter().enumerate() {
            let lower = -(mel_f[m] - f) / fdiff_lo;
            let upper = (mel_f[m + 2] - f) / fdiff_hi;
            // librosa stores the triangle in float32, then scales it in place by `enorm`.
            let tri = lower.min(upper).max(0.0) as f32;
            weights[m * N_BINS + k] = (f64::from(tri) * enorm) as f32;
        }
    }
    weights
}

/// A normalised log-mel spectrogram, frame-major: `values[t * N_MELS + m]` in [-4, 4].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MelSpectrogram {
    pub n_frames: usize,
    pub values: Vec<f64>,
}

/// `audio.melspectrogram(wav).T` in float64.
pub fn melspectrogram(wav: &[f32]) -> MelSpectrogram {
    let (mag, n_frames) = stft_magnitude(&preemphasis(wav));
    let basis: Vec<f64> = mel_basis().into_iter().map(f64::from).collect();
    // Each triangular filter is non-zero on a short band; skipping the zero terms leaves every
    // sum unchanged (the magnitudes are finite) and makes this ~10x cheaper.
    let bands: Vec<(usize, &[f64])> = basis
        .chunks_exact(N_BINS)
        .map(|row| {
            let lo = row.iter().position(|&w| w != 0.0).unwrap_or(0);
            let hi = row.iter().rposition(|&w| w != 0.0).map_or(lo, |i| i + 1);
            (lo, &row[lo..hi])
        })
        .collect();
    let min_level = (MIN_LEVEL_DB / 20.0 * std::f64::consts::LN_10).exp();
    let mut values = Vec::with_capacity(n_frames * N_MELS);
    for frame in mag.chunks_exact(N_BINS) {
        for &(lo, weights) in &bands {
            let mel: f64 = weights.iter().zip(&frame[lo..]).map(|(w, m)| w * m).sum();
            let db = 20.0 * min_level.max(mel).log10() - REF_LEVEL_DB;
            let norm = (2.0 * MAX_ABS_VALUE) * ((db - MIN_LEVEL_DB) / (-MIN_LEVEL_DB)) - MAX_ABS_VALUE;
            values.push(norm.clamp(-MAX_ABS_VALUE, MAX_ABS_VALUE));
        }
    }
    MelSpectrogram { n_frames, values }
}

/// First mel frame of video frame `i`'s window: `int(80 * ((i - 2) / 25))` (truncation to zero).
pub fn window_start(frame: usize) -> i64 {
    (80.0 * ((frame as f64 - 2.0) / FPS as f64)) as i64
}

/// The per-frame audio features of a clip: mel spectrogram of the clip cut/padded to whole frames.
/// This is what the `audio_features:` cache entry holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MelFeatures {
    /// Number of 25 fps video frames.
    pub num_frames: usize,
    pub mel: MelSpectrogram,
}

impl MelFeatures {
    /// Features of a decoded clip (must already be 16 kHz mono).
    pub fn from_clip(clip: &crate::audio::AudioClip) -> Result<Self> {
        if clip.sample_rate as usize != SAMPLE_RATE {
            return Err(PipelineError::Internal(format!(
                "mel features need {SAMPLE_RATE} Hz audio, the clip is {} Hz",
                clip.sample_rate
            )));
        }
        Self::from_samples(&clip.samples)
    }

    /// Features of 16 kHz mono samples (`get_data` minus the blink / reference parts).
    pub fn from_samples(samples: &[f32]) -> Result<Self> {
        let (num_frames, len) = frame_count(samples.len());
        if num_frames == 0 {
            return Err(PipelineError::AudioTooShort {
                seconds: samples.len() as f64 / SAMPLE_RATE as f64,
                min: SAMPLES_PER_FRAME as f64 / SAMPLE_RATE as f64,
            });
        }
        if samples.iter().any(|s| !s.is_finite()) {
            return Err(PipelineError::NotAudio("the decoded samples contain NaN or infinity".into()));
        }
        let wav = crop_pad(samples, len);
        Ok(Self { num_frames, mel: melspectrogram(&wav) })
    }

    /// The 16-step windows as `(num_frames, 80, 16)` float32 values (mel-major inside a window),
    /// with window indices clamped into the spectrogram.
    pub fn windows(&self) -> Vec<f32> {
        let last = self.mel.n_frames.saturating_sub(1) as i64;
        let mut out = vec![0.0f32; self.num_frames * N_MELS * MEL_STEP];
        for (i, window) in out.chunks_exact_mut(N_MELS * MEL_STEP).enumerate() {
            let start = window_start(i);
            for s in 0..MEL_STEP {
                let t = (start + s as i64).clamp(0, last) as usize;
                let row = &self.mel.values[t * N_MELS..(t + 1) * N_MELS];
                for (m, &v) in row.iter().enumerate() {
                    window[m * MEL_STEP + s] = v as f32;
                }
            }
        }
        out
    }

    /// `indiv_mels` as a `(1, T, 1, 80, 16)` float32 tensor.
    pub fn windows_tensor(&self, device: Device) -> Tensor {
        Tensor::from_slice(&self.windows())
            .reshape([1, self.num_frames as i64, 1, N_MELS as i64, MEL_STEP as i64])
            .to_kind(Kind::Float)
            .to_device(device)
    }
}

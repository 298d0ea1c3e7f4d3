//! Trained visemes: the Gaussian viseme prototypes of HeadAudio (the npm package
//! `@met4citizen/headaudio@0.1.0`, MIT; `dist/model-en-mixed.bin`: 39 prototypes of the 15 Oculus
//! visemes, each a mean and an inverse covariance over 12 MFCCs) and the MFCC front end they were
//! trained on, written for this project from the package's description of it: pre-emphasis, a
//! 32-tap windowed-sinc low-pass, 512-sample Hamming frames every 256 samples at 16 kHz, 40 mel
//! bands from 30 Hz to 7.8 kHz, DCT coefficients 1-12 with a sine lifter, tanh compression, and
//! Mahalanobis distances to every prototype. `pipeline/tests/classic_visemes.rs` checks features
//! and distances against the package's own processor (fixture `fixtures/visemes`).

use crate::error::{PipelineError, Result};
use rustfft::num_complex::Complex;
use rustfft::{Fft, FftPlanner};
use std::path::Path;
use std::sync::Arc;

/// The model file in `checkpoints/` (see `checkpoints/manifest.json`).
pub const FILE: &str = "visemes/model-en-mixed.bin";
/// Sample rate the front end runs at (the clip's, see `crate::audio::SAMPLE_RATE`).
pub const SAMPLE_RATE: u32 = 16_000;
/// Frame length and hop in samples.
pub const WINDOW: usize = 512;
pub const HOP: usize = 256;
/// MFCCs per feature vector (c0 left out).
pub const COEFFS: usize = 12;
const BANDS: usize = 40;
const LIFTER: f64 = 22.0;
const PRE_EMPHASIS: f64 = 0.97;
const TAPS: usize = 32;
/// Cut-off of the low-pass in cycles per sample (7.2 kHz at 16 kHz).
const CUTOFF: f64 = 0.45;
const LOWER_PACKED: usize = COEFFS * (COEFFS + 1) / 2;
/// Bytes per prototype record: a 2-word header, the mean, the packed inverse covariance.
const RECORD_BYTES: usize = 4 * (2 + COEFFS + LOWER_PACKED);

/// The 15 visemes in the model's numbering; 14 is silence.
pub const NAMES: [&str; 15] = ["aa", "E", "I", "O", "U", "PP", "SS", "TH", "DD", "FF", "kk", "nn", "RR", "CH", "sil"];
pub const SILENCE: usize = 14;

/// One Gaussian prototype.
#[derive(Debug, Clone)]
pub struct Prototype {
    pub viseme: usize,
    mean: [f32; COEFFS],
    /// Lower triangle of the inverse covariance, row by row.
    inv_lower: [f32; LOWER_PACKED],
}

impl Prototype {
    /// Squared Mahalanobis distance of a feature vector.
    pub fn distance(&self, v: &[f32; COEFFS]) -> f32 {
        let diff: [f32; COEFFS] = std::array::from_fn(|i| v[i] - self.mean[i]);
        let mut d = 0.0;
        let mut k = 0;
        for i in 0..COEFFS {
            for j in 0..i {
                d += 2.0 * self.inv_lower[k] * diff[i] * diff[j];
                k += 1;
            }
            d += self.inv_lower[k] * diff[i] * diff[i];
            k += 1;
        }
        d
    }
}

/// The loaded prototype model.
#[derive(Debug, Clone)]
pub struct VisemeModel {
    prototypes: Vec<Prototype>,
}

impl VisemeModel {
    pub fn load(path: &Path) -> Result<Self> {
        let fail = |reason: String| PipelineError::Checkpoint { file: path.display().to_string(), reason };
        let bytes = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
        Self::parse(&bytes).map_err(fail)
    }

    /// Records of [`RECORD_BYTES`]: header (big-endian phoneme code, group at byte 5, viseme at
    /// byte 7), then little-endian f32 mean and packed inverse covariance.
    pub fn parse(bytes: &[u8]) -> std::result::Result<Self, String> {
        if bytes.is_empty() || !bytes.len().is_multiple_of(RECORD_BYTES) {
            return Err(format!("{} bytes is not a whole number of {RECORD_BYTES}-byte prototypes", bytes.len()));
        }
        let floats = |r: &[u8], from: usize, n: usize| -> Vec<f32> {
            (0..n).map(|i| f32::from_le_bytes(r[from + 4 * i..from + 4 * i + 4].try_into().expect("4 bytes"))).collect()
        };
        let prototypes = bytes
            .chunks_exact(RECORD_BYTES)
            .enumerate()
            .map(|(i, r)| {
                let viseme = r[7] as usize;
                if viseme >= NAMES.len() {
                    return Err(format!("prototype {i} names viseme {viseme}"));
                }
                let mean = floats(r, 8, COEFFS);
                let inv = floats(r, 8 + 4 * COEFFS, LOWER_PACKED);
                if mean.iter().chain(&inv).any(|v| !v.is_finite()) {
                    return Err(format!("prototype {i} holds a non-finite value"));
                }
                Ok(Prototype {
                    viseme,
                    mean: mean.try_into().expect("COEFFS values"),
                    inv_lower: inv.try_into().expect("packed values"),
                })
            })
            .collect::<std::result::Result<Vec<_>, String>>()?;
        Ok(Self { prototypes })
    }

    pub fn prototypes(&self) -> &[Prototype] {
        &self.prototypes
    }

    /// Distance to every prototype, in file order.
    pub fn distances(&self, v: &[f32; COEFFS]) -> Vec<f32> {
        self.prototypes.iter().map(|p| p.distance(v)).collect()
    }

    /// The nearest prototype's distance per viseme ([`NAMES`] order; infinite when the model has
    /// no prototype of a viseme).
    pub fn viseme_distances(&self, v: &[f32; COEFFS]) -> [f32; 15] {
        let mut best = [f32::INFINITY; 15];
        for p in &self.prototypes {
            best[p.viseme] = best[p.viseme].min(p.distance(v));
        }
        best
    }
}

/// The MFCC front end. Frames are pure functions of the clip's samples (the filters look back at
/// most 32 samples, zeros before the clip), so any chunking of a clip gives the same vectors.
pub struct Front {
    fir: [f64; TAPS],
    hamming: Vec<f32>,
    /// Per mel band: first FFT bin and its weights.
    bands: Vec<(usize, Vec<f32>)>,
    dct: Vec<[f32; BANDS]>,
    lifter: [f32; COEFFS],
    fft: Arc<dyn Fft<f32>>,
}

impl Default for Front {
    fn default() -> Self {
        Self::new()
    }
}

impl Front {
    pub fn new() -> Self {
        let hamming_at =
            |i: usize, n: usize| 0.54 - 0.46 * (2.0 * std::f64::consts::PI * i as f64 / (n - 1) as f64).cos();
        let mid = (TAPS - 1) as f64 / 2.0;
        let fir = std::array::from_fn(|i| {
            let x = i as f64 - mid;
            let sinc = if x == 0.0 {
                2.0 * CUTOFF
            } else {
                (2.0 * std::f64::consts::PI * CUTOFF * x).sin() / (std::f64::consts::PI * x)
            };
            // The package keeps its taps as f32.
            (sinc * hamming_at(i, TAPS)) as f32 as f64
        });
        let mel = |f: f64| 2595.0 * (1.0 + f / 700.0).log10();
        let mel_inv = |m: f64| 700.0 * (10f64.powf(m / 2595.0) - 1.0);
        let (lo, hi) = (mel(30.0), mel(7800.0));
        let bins: Vec<usize> = (0..BANDS + 2)
            .map(|i| {
                let hz = mel_inv(lo + (hi - lo) / (BANDS + 1) as f64 * i as f64) as f32;
                (hz as f64 / SAMPLE_RATE as f64 * WINDOW as f64).floor() as usize
            })
            .collect();
        let bands = (0..BANDS)
            .map(|b| {
                let (a, m, z) = (bins[b], bins[b + 1], bins[b + 2]);
                let up = (a..m).map(|k| (k - a) as f32 / (m - a) as f32);
                let down = (m..z).map(|k| (z - k) as f32 / (z - m) as f32);
                (a, up.chain(down).collect())
            })
            .collect();
        let scale = (2.0 / BANDS as f64).sqrt();
        let dct = (1..=COEFFS)
            .map(|i| {
                std::array::from_fn(|j| {
                    (scale * (std::f64::consts::PI * i as f64 * (j as f64 + 0.5) / BANDS as f64).cos()) as f32
                })
            })
            .collect();
        let lifter = std::array::from_fn(|i| {
            (1.0 + LIFTER / 2.0 * (std::f64::consts::PI * (i + 1) as f64 / LIFTER).sin()) as f32
        });
        Self {
            fir,
            hamming: (0..WINDOW).map(|i| hamming_at(i, WINDOW) as f32).collect(),
            bands,
            dct,
            lifter,
            fft: FftPlanner::new().plan_fft_forward(WINDOW),
        }
    }

    /// How many whole frames a clip of `len` samples has.
    pub fn frames(len: usize) -> usize {
        if len < WINDOW {
            0
        } else {
            (len - WINDOW) / HOP + 1
        }
    }

    /// Centre of frame `k` in seconds.
    pub fn centre_s(k: usize) -> f32 {
        (k * HOP + WINDOW / 2) as f32 / SAMPLE_RATE as f32
    }

    /// The pre-emphasised, low-passed signal at samples `range` of `x`.
    pub fn filter(&self, x: &[f32], range: std::ops::Range<usize>) -> Vec<f32> {
        let pre = |i: usize| -> f64 {
            let prev = if i > 0 { x[i - 1] as f64 } else { 0.0 };
            x[i] as f64 - PRE_EMPHASIS * prev
        };
        // Pre-emphasised samples from TAPS - 1 before the range (zeros before the clip).
        let first = range.start as isize - (TAPS as isize - 1);
        let p: Vec<f64> = (first..range.end as isize).map(|i| if i < 0 { 0.0 } else { pre(i as usize) }).collect();
        p.windows(TAPS).map(|w| w.iter().zip(&self.fir).map(|(a, b)| a * b).sum::<f64>() as f32).collect()
    }

    /// Feature vector and log10 energy of frame `k` of `x` (16 kHz); None past the clip's end.
    pub fn frame(&self, x: &[f32], k: usize) -> Option<([f32; COEFFS], f32)> {
        if k >= Self::frames(x.len()) {
            return None;
        }
        Some(self.features(&self.filter(x, k * HOP..k * HOP + WINDOW)))
    }

    /// Feature vector and log10 energy of one window of filtered samples ([`Self::filter`]).
    pub fn features(&self, block: &[f32]) -> ([f32; COEFFS], f32) {
        let mut buf: Vec<Complex<f32>> =
            block.iter().zip(&self.hamming).map(|(s, w)| Complex::new(s * w, 0.0)).collect();
        buf.resize(WINDOW, Complex::new(0.0, 0.0));
        self.fft.process(&mut buf);
        let power: Vec<f32> = buf[..WINDOW / 2].iter().map(|c| c.norm_sqr() / WINDOW as f32).collect();
        let energy = (power.iter().map(|&p| p as f64).sum::<f64>() + 1e-10).log10() as f32;
        let bands: Vec<f32> = self
            .bands
            .iter()
            .map(|(first, w)| {
                let sum: f64 = w.iter().zip(&power[*first..]).map(|(a, b)| (*a as f64) * (*b as f64)).sum();
                (sum + 1e-10).log10() as f32
            })
            .collect();
        let v = std::array::from_fn(|i| {
            let c: f32 = self.dct[i].iter().zip(&bands).map(|(a, b)| a * b).sum();
            (c * self.lifter[i]).tanh()
        });
        (v, energy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances_are_mahalanobis() {
        // Identity inverse covariance: the squared euclidean distance.
        let mut inv = [0.0f32; LOWER_PACKED];
        let mut k = 0;
        for i in 0..COEFFS {
            k += i;
            inv[k] = 1.0;
            k += 1;
        }
        let p = Prototype { viseme: 0, mean: [0.5; COEFFS], inv_lower: inv };
        let mut v = [0.5f32; COEFFS];
        v[3] = 1.5;
        v[7] = -0.5;
        assert!((p.distance(&v) - 2.0).abs() < 1e-6);
        // A cross term counts twice.
        let mut corr = p.clone();
        corr.inv_lower[1] = 0.25; // entry (1, 0): row 1 starts at packed index 1

        let mut w = [0.5f32; COEFFS];
        w[0] = 1.5;
        w[1] = 1.5;
        assert!((corr.distance(&w) - (1.0 + 1.0 + 2.0 * 0.25)).abs() < 1e-6, "{}", corr.distance(&w));
    }

    #[test]
    fn bad_model_bytes_are_errors() {
        assert!(VisemeModel::parse(&[]).is_err());
        assert!(VisemeModel::parse(&[0u8; RECORD_BYTES + 1]).is_err());
        let mut bad = vec![0u8; RECORD_BYTES];
        bad[7] = 15;
        assert!(VisemeModel::parse(&bad).unwrap_err().contains("viseme 15"));
        bad[7] = 3;
        bad[8..12].copy_from_slice(&f32::NAN.to_le_bytes());
        assert!(VisemeModel::parse(&bad).is_err());
        bad[8..12].copy_from_slice(&0.0f32.to_le_bytes());
        assert_eq!(VisemeModel::parse(&bad).unwrap().prototypes().len(), 1);
    }

    #[test]
    fn frames_are_independent_of_what_follows() {
        let front = Front::new();
        let x: Vec<f32> = (0..4000).map(|i| (i as f32 * 0.07).sin() * 0.3 + (i as f32 * 0.011).cos() * 0.1).collect();
        assert_eq!(Front::frames(x.len()), 14);
        let whole = front.frame(&x, 5).unwrap();
        let cut = front.frame(&x[..5 * HOP + WINDOW], 5).unwrap();
        assert_eq!(whole, cut);
        assert!(front.frame(&x, 14).is_none());
    }
}

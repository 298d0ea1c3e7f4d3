//! Audio -> per-frame (25 fps) mouth state, without a neural network.
//!
//! Two signals, as the classic lip-sync tools do it:
//! * **Opening** from the speech envelope: per-frame loudness mapped between the clip's noise
//!   floor and its speech level, gated to 0 in silence, then smoothed with a fast attack and a
//!   slower release so the mouth neither jitters nor lags.
//! * **Shape** by template matching in the spirit of uLipSync / Rhubarb's phonetic mode: each
//!   10 ms analysis frame gets formants F1/F2 (LPC envelope peaks, speaker-normalised per clip
//!   with Lobanov z-scores), voicing (autocorrelation), spectral centroid and high-band ratio;
//!   every viseme has a template in that feature space and a softmax over the template scores
//!   gives the 14 viseme weights.
//!
//! A/V offset: frame `t` (shown at `t/25 s`) is driven by audio centred [`LEAD_MS`] after the
//! middle of the frame, so the mouth leads the sound by about 20 ms (after smoothing ~10 ms).
//! Viewers accept video slightly ahead of audio far more readily than behind it.

use super::dsp;
use super::visemes::NUM_VISEMES;
use crate::audio::AudioClip;
use serde::{Deserialize, Serialize};

/// Video frame rate everything is computed for.
pub const FPS: u32 = 25;
/// Analysis lead of the mouth over the sound, in milliseconds.
pub const LEAD_MS: f32 = 20.0;
/// Attack / release smoothing factors per frame for the opening (1 = no smoothing).
const ATTACK: f32 = 0.7;
const RELEASE: f32 = 0.5;
/// Weight smoothing per frame.
const SHAPE_SMOOTH: f32 = 0.55;

/// Per-frame mouth drive extracted from one audio clip (cached as `audio_features`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LipSyncTrack {
    pub fps: u32,
    /// Mouth opening 0..1 per frame.
    pub open: Vec<f32>,
    /// Viseme weights per frame, summing to 1 (see `visemes::VISEME_NAMES`).
    pub weights: Vec<[f32; NUM_VISEMES]>,
    /// Frame loudness in dBFS.
    pub loudness_db: Vec<f32>,
    /// Emphasis peaks `(frame, strength 0..1)` for head nods and brow raises.
    pub accents: Vec<(u32, f32)>,
    /// Frames where speech resumes after a pause.
    pub onsets: Vec<u32>,
}

impl LipSyncTrack {
    pub fn len(&self) -> usize {
        self.open.len()
    }
    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }
}

/// Features of one 10 ms analysis frame.
#[derive(Debug, Clone, Copy, Default)]
struct Frame {
    energy: f32,
    voicing: f32,
    centroid: f32,
    high_ratio: f32,
    formants: Option<(f32, f32)>,
}

const HOP: usize = 160;
const WIN: usize = 400;
const NFFT: usize = 512;

/// Analyse a clip into a [`LipSyncTrack`] with `clip.num_frames()` frames.
pub fn analyse(clip: &AudioClip) -> LipSyncTrack {
    let sr = clip.sample_rate as f32;
    let frames = analysis_frames(&clip.samples, sr);
    let n = clip.num_frames();
    let spf = clip.sample_rate as usize / FPS as usize; // samples per video frame
    let lead = (LEAD_MS / 1000.0 * sr) as usize;

    // Loudness per video frame over a 40 ms window centred LEAD_MS after the frame's middle.
    let loudness_db: Vec<f32> = (0..n)
        .map(|t| {
            let len = clip.samples.len();
            let end = (t * spf + lead + spf).min(len);
            // At the very end of the clip the window slides back rather than shrinking.
            let start = end.saturating_sub(spf).min(t * spf + lead);
            db(rms(&clip.samples[start..end]))
        })
        .collect();
    let target = opening_targets(&loudness_db);
    let open = attack_release(&target);

    // Shape features: analysis frames whose centres fall in the same window.
    let z = SpeakerNorm::fit(&frames);
    let mut weights = Vec::with_capacity(n);
    let mut prev = [1.0 / NUM_VISEMES as f32; NUM_VISEMES];
    for (t, &goal) in target.iter().enumerate() {
        let centre_s = (t as f32 + 0.5) / FPS as f32 + LEAD_MS / 1000.0;
        let first = ((centre_s - 0.02) * sr / HOP as f32 - WIN as f32 / (2.0 * HOP as f32)).max(0.0) as usize;
        let last = (first + 4).min(frames.len());
        let feats = pool(&frames[first.min(frames.len())..last]);
        let rel = local_rel_db(&loudness_db, t);
        let w = if goal > 0.0 { classify(&feats, &z, rel) } else { prev };
        let mut s = [0.0f32; NUM_VISEMES];
        let mut sum = 0.0;
        for k in 0..NUM_VISEMES {
            s[k] = prev[k] + SHAPE_SMOOTH * (w[k] - prev[k]);
            sum += s[k];
        }
        for v in s.iter_mut() {
            *v /= sum.max(1e-6);
        }
        weights.push(s);
        prev = s;
    }
    let (accents, onsets) = prosody(&loudness_db, &open);
    LipSyncTrack { fps: FPS, open, weights, loudness_db, accents, onsets }
}

fn rms(x: &[f32]) -> f32 {
    if x.is_empty() {
        return 0.0;
    }
    (x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32).sqrt()
}

fn db(rms: f32) -> f32 {
    20.0 * rms.max(1e-6).log10()
}

fn analysis_frames(samples: &[f32], sr: f32) -> Vec<Frame> {
    let window: Vec<f32> =
        (0..WIN).map(|i| 0.5 - 0.5 * (2.0 * std::f32::consts::PI * i as f32 / (WIN - 1) as f32).cos()).collect();
    let count = if samples.len() >= WIN { (samples.len() - WIN) / HOP + 1 } else { 0 };
    let bin_hz = sr / NFFT as f32;
    let min_lag = (sr / 400.0) as usize;
    let max_lag = (sr / 70.0) as usize;
    (0..count)
        .map(|j| {
            let raw = &samples[j * HOP..j * HOP + WIN];
            let energy = raw.iter().map(|v| v * v).sum::<f32>() / WIN as f32;
            if energy < 1e-9 {
                return Frame::default();
            }
            let win: Vec<f32> = raw.iter().zip(&window).map(|(s, w)| s * w).collect();
            let p = dsp::power_spectrum(&win, NFFT);
            let (mut tot, mut wsum, mut high) = (0.0f32, 0.0f32, 0.0f32);
            for (k, v) in p.iter().enumerate().skip(3) {
                let f = k as f32 * bin_hz;
                tot += v;
                wsum += v * f;
                if f >= 2500.0 {
                    high += v;
                }
            }
            let voicing = dsp::voicing(&win, min_lag, max_lag);
            // Pre-emphasised frame for LPC (flattens the glottal tilt so formants stand out).
            let pre: Vec<f32> =
                (0..WIN).map(|i| (raw[i] - if i > 0 { 0.97 * raw[i - 1] } else { 0.0 }) * window[i]).collect();
            let formants = if voicing > 0.4 { dsp::lpc(&pre, 14).and_then(|a| dsp::formants(&a, sr)) } else { None };
            Frame {
                energy,
                voicing,
                centroid: if tot > 0.0 { wsum / tot } else { 0.0 },
                high_ratio: if tot > 0.0 { high / tot } else { 0.0 },
                formants,
            }
        })
        .collect()
}

/// Energy-weighted average of a few analysis frames.
fn pool(frames: &[Frame]) -> Frame {
    let total: f32 = frames.iter().map(|f| f.energy).sum();
    if total <= 0.0 {
        return Frame::default();
    }
    let mut out = Frame { energy: total / frames.len() as f32, ..Frame::default() };
    let (mut f1, mut f2, mut fw) = (0.0f32, 0.0f32, 0.0f32);
    for f in frames {
        let w = f.energy / total;
        out.voicing += w * f.voicing;
        out.centroid += w * f.centroid;
        out.high_ratio += w * f.high_ratio;
        if let Some((a, b)) = f.formants {
            f1 += w * a;
            f2 += w * b;
            fw += w;
        }
    }
    if fw > 0.2 {
        out.formants = Some((f1 / fw, f2 / fw));
    }
    out
}

/// Per-clip formant normalisation (Lobanov), pulled towards population values for short clips.
struct SpeakerNorm {
    m1: f32,
    s1: f32,
    m2: f32,
    s2: f32,
}

impl SpeakerNorm {
    fn fit(frames: &[Frame]) -> Self {
        let pts: Vec<(f32, f32)> = frames.iter().filter_map(|f| f.formants).collect();
        let n = pts.len() as f32;
        let (p1, ps1, p2, ps2) = (550.0f32, 170.0f32, 1550.0f32, 450.0f32);
        if pts.is_empty() {
            return Self { m1: p1, s1: ps1, m2: p2, s2: ps2 };
        }
        let mean = |sel: &dyn Fn(&(f32, f32)) -> f32| pts.iter().map(sel).sum::<f32>() / n;
        let m1 = mean(&|p| p.0);
        let m2 = mean(&|p| p.1);
        let s1 = (pts.iter().map(|p| (p.0 - m1).powi(2)).sum::<f32>() / n).sqrt();
        let s2 = (pts.iter().map(|p| (p.1 - m2).powi(2)).sum::<f32>() / n).sqrt();
        let w = n / (n + 40.0);
        Self {
            m1: w * m1 + (1.0 - w) * p1,
            s1: (w * s1 + (1.0 - w) * ps1).max(60.0),
            m2: w * m2 + (1.0 - w) * p2,
            s2: (w * s2 + (1.0 - w) * ps2).max(150.0),
        }
    }
}

/// Loudness -> opening target: 0 below the gate, 1 at the clip's speech level.
fn opening_targets(db: &[f32]) -> Vec<f32> {
    let mut sorted: Vec<f32> = db.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return vec![0.0; db.len()];
    }
    sorted.sort_by(f32::total_cmp);
    let pct = |p: f32| sorted[((sorted.len() - 1) as f32 * p).round() as usize];
    let speech = pct(0.95);
    let noise = pct(0.10);
    if speech < -50.0 {
        return vec![0.0; db.len()]; // nothing louder than a quiet room: silence
    }
    let lo = (speech - 30.0).max(-58.0).max(noise + 6.0).min(speech - 6.0);
    let hi = pct(0.98);
    // Between the gate and the speech level the opening follows the amplitude (not the dB
    // value) with a gentle compression, so quiet syllables still move the lips.
    let amp = |d: f32| 10f32.powf(d / 20.0);
    let (a_lo, a_hi) = (amp(lo), amp(hi));
    db.iter()
        .map(|&v| {
            if v < lo + 3.0 {
                return 0.0;
            }
            ((amp(v) - a_lo) / (a_hi - a_lo).max(1e-9)).clamp(0.0, 1.0).powf(0.8)
        })
        .collect()
}

/// Asymmetric one-pole smoothing: opens fast, closes a bit slower.
fn attack_release(target: &[f32]) -> Vec<f32> {
    let mut out = Vec::with_capacity(target.len());
    let mut y = 0.0f32;
    for &x in target {
        let k = if x > y { ATTACK } else { RELEASE };
        y += k * (x - y);
        if x == 0.0 && y < 0.03 {
            y = 0.0; // settle fully closed in silence
        }
        out.push(y);
    }
    out
}

/// Frame loudness relative to the loudest frame within +-0.5 s.
fn local_rel_db(db: &[f32], t: usize) -> f32 {
    let lo = t.saturating_sub(12);
    let hi = (t + 13).min(db.len());
    let max = db[lo..hi].iter().copied().fold(f32::MIN, f32::max);
    db[t] - max
}

/// One viseme template: expected value and tolerance per feature (`None` = don't care).
struct Template {
    z1: Option<(f32, f32)>,
    z2: Option<(f32, f32)>,
    voicing: (f32, f32),
    /// log2(centroid / 1 kHz)
    centroid: Option<(f32, f32)>,
    high: Option<(f32, f32)>,
    rel_db: Option<(f32, f32)>,
}

const fn t(
    z1: Option<(f32, f32)>,
    z2: Option<(f32, f32)>,
    voicing: (f32, f32),
    centroid: Option<(f32, f32)>,
    high: Option<(f32, f32)>,
    rel_db: Option<(f32, f32)>,
) -> Template {
    Template { z1, z2, voicing, centroid, high, rel_db }
}

/// Templates in `VISEME_NAMES` order (PP FF TH DD kk CH SS nn RR aa E ih oh ou).
const TEMPLATES: [Template; NUM_VISEMES] = [
    t(None, None, (0.3, 0.4), Some((0.0, 0.8)), Some((0.1, 0.15)), Some((-18.0, 6.0))), // PP
    t(None, None, (0.2, 0.3), Some((2.0, 0.6)), Some((0.5, 0.25)), Some((-15.0, 6.0))), // FF
    t(None, None, (0.3, 0.3), Some((1.5, 0.6)), Some((0.4, 0.25)), Some((-14.0, 6.0))), // TH
    t(None, None, (0.4, 0.35), Some((1.8, 0.6)), Some((0.5, 0.25)), Some((-8.0, 6.0))), // DD
    t(None, None, (0.4, 0.35), Some((1.0, 0.5)), Some((0.3, 0.2)), Some((-8.0, 6.0))),  // kk
    t(None, None, (0.15, 0.3), Some((1.7, 0.35)), Some((0.65, 0.2)), None),             // CH
    t(None, None, (0.1, 0.3), Some((2.5, 0.4)), Some((0.8, 0.15)), None),               // SS
    t(Some((-0.8, 0.7)), None, (0.9, 0.3), Some((-0.6, 0.6)), Some((0.02, 0.05)), Some((-8.0, 5.0))), // nn
    t(Some((-0.3, 0.7)), Some((-0.6, 0.7)), (0.9, 0.3), Some((-0.2, 0.6)), None, Some((-6.0, 5.0))), // RR
    t(Some((1.2, 0.6)), Some((-0.1, 0.7)), (0.9, 0.3), None, None, Some((0.0, 6.0))),   // aa
    t(Some((0.3, 0.6)), Some((0.8, 0.6)), (0.9, 0.3), None, None, Some((0.0, 6.0))),    // E
    t(Some((-0.9, 0.6)), Some((1.3, 0.6)), (0.9, 0.3), None, None, Some((-2.0, 6.0))),  // ih
    t(Some((0.5, 0.6)), Some((-1.1, 0.6)), (0.9, 0.3), None, None, Some((0.0, 6.0))),   // oh
    t(Some((-0.9, 0.6)), Some((-1.3, 0.6)), (0.9, 0.3), None, None, Some((-2.0, 6.0))), // ou
];

/// Softmax over template scores for one pooled frame.
fn classify(f: &Frame, z: &SpeakerNorm, rel_db: f32) -> [f32; NUM_VISEMES] {
    let zf = f.formants.map(|(f1, f2)| ((f1 - z.m1) / z.s1, (f2 - z.m2) / z.s2));
    let centroid = (f.centroid.max(50.0) / 1000.0).log2();
    let term = |x: f32, spec: Option<(f32, f32)>| spec.map_or(0.0, |(m, s)| ((x - m) / s).powi(2));
    let mut score = [0.0f32; NUM_VISEMES];
    for (k, tp) in TEMPLATES.iter().enumerate() {
        let mut d = term(f.voicing, Some(tp.voicing));
        d += term(centroid, tp.centroid) + term(f.high_ratio, tp.high) + term(rel_db, tp.rel_db);
        match zf {
            Some((z1, z2)) => d += term(z1, tp.z1) + term(z2, tp.z2),
            // No formants: vowel templates cannot be confirmed; a mild penalty per formant term.
            None => d += tp.z1.map_or(0.0, |_| 1.5) + tp.z2.map_or(0.0, |_| 1.5),
        }
        score[k] = -0.5 * d;
    }
    let max = score.iter().copied().fold(f32::MIN, f32::max);
    let mut sum = 0.0;
    for s in score.iter_mut() {
        *s = (*s - max).exp();
        sum += *s;
    }
    for s in score.iter_mut() {
        *s /= sum;
    }
    score
}

/// Emphasis peaks and speech onsets from the loudness curve.
fn prosody(db: &[f32], open: &[f32]) -> (Vec<(u32, f32)>, Vec<u32>) {
    let n = db.len();
    let smooth: Vec<f32> = (0..n)
        .map(|t| {
            let lo = t.saturating_sub(1);
            let hi = (t + 2).min(n);
            db[lo..hi].iter().sum::<f32>() / (hi - lo) as f32
        })
        .collect();
    let speech = {
        let mut s: Vec<f32> = smooth.clone();
        s.sort_by(f32::total_cmp);
        s.get(((s.len().max(1) - 1) as f32 * 0.95) as usize).copied().unwrap_or(-120.0)
    };
    let mut accents: Vec<(u32, f32)> = Vec::new();
    for t in 0..n {
        if open[t] < 0.3 || smooth[t] < speech - 9.0 {
            continue;
        }
        let lo = t.saturating_sub(6);
        let hi = (t + 7).min(n);
        if smooth[lo..hi].iter().any(|&v| v > smooth[t]) {
            continue;
        }
        let before = smooth[t.saturating_sub(8)..t].iter().copied().fold(f32::MAX, f32::min);
        if before == f32::MAX || smooth[t] - before < 6.0 {
            continue;
        }
        if accents.last().is_some_and(|(f, _)| t as u32 - f < 10) {
            continue;
        }
        accents.push((t as u32, ((smooth[t] - (speech - 10.0)) / 10.0).clamp(0.2, 1.0)));
    }
    let mut onsets = Vec::new();
    let mut quiet = 10usize; // the clip start counts as after a pause
    for (t, &o) in open.iter().enumerate() {
        if o > 0.15 && quiet >= 10 {
            onsets.push(t as u32);
        }
        quiet = if o < 0.05 { quiet + 1 } else { 0 };
    }
    (accents, onsets)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone_bursts(sr: u32, secs: f32, on: &[(f32, f32)]) -> AudioClip {
        let n = (sr as f32 * secs) as usize;
        let samples = (0..n)
            .map(|i| {
                let ts = i as f32 / sr as f32;
                let active = on.iter().any(|&(a, b)| ts >= a && ts < b);
                if active {
                    0.3 * (2.0 * std::f32::consts::PI * 160.0 * ts).sin().powi(3)
                } else {
                    0.0
                }
            })
            .collect();
        AudioClip { samples, sample_rate: sr }
    }

    #[test]
    fn mouth_opens_with_sound_and_closes_in_silence() {
        let clip = tone_bursts(16000, 3.0, &[(0.5, 1.2), (2.0, 2.6)]);
        let tr = analyse(&clip);
        assert_eq!(tr.len(), clip.num_frames());
        let at = |s: f32| tr.open[(s * FPS as f32) as usize];
        assert!(at(0.8) > 0.6, "open while sounding: {}", at(0.8));
        assert_eq!(at(0.2), 0.0, "closed before");
        assert_eq!(at(1.7), 0.0, "closed in the gap");
        assert!(at(2.3) > 0.6);
        for w in &tr.weights {
            assert!((w.iter().sum::<f32>() - 1.0).abs() < 1e-3);
        }
        assert_eq!(tr.onsets.len(), 2, "{:?}", tr.onsets);
    }

    #[test]
    fn silence_is_all_closed() {
        let clip = AudioClip { samples: vec![0.0; 32000], sample_rate: 16000 };
        let tr = analyse(&clip);
        assert!(tr.open.iter().all(|&o| o == 0.0));
        assert!(tr.accents.is_empty());
    }
}

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
//!   gives the 14 viseme weights. With the trained viseme model ([`super::prototypes`]), a
//!   share of the weights comes from its Gaussian prototypes over MFCCs instead.
//!
//! A/V offset: frame `t` (shown at `t/25 s`) is driven by audio centred [`LEAD_MS`] after the
//! middle of the frame, so the mouth leads the sound by about 20 ms (after smoothing ~10 ms).
//! Viewers accept video slightly ahead of audio far more readily than behind it.

use super::dsp;
use super::prototypes::{Front, VisemeModel, HOP as HOP_TRAINED, SILENCE, WINDOW as WINDOW_TRAINED};
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

/// Statistics are refreshed every `BLOCK` video frames (1 s)...
pub const BLOCK: usize = 25;
/// ...over everything up to `LOOKAHEAD` frames past the end of the block being produced, so a
/// block needs at most 2 s of audio beyond its first frame and never the whole clip.
pub const LOOKAHEAD: usize = 25;
/// Frames of loudness an accent test looks ahead (peak search and the relative-level window).
const PEAK_AHEAD: usize = 13;

/// Analyse a whole clip into a [`LipSyncTrack`] with `clip.num_frames()` frames (the streaming
/// analyser run to the end: the same numbers however the clip is chunked).
pub fn analyse(clip: &AudioClip, trained: Option<&VisemeModel>) -> LipSyncTrack {
    let mut s = LipSyncStream::new(clip, trained);
    s.advance(s.total());
    s.into_track()
}

/// Per-block normalisation: loudness percentiles and the speaker's formant statistics over the
/// audio up to the block's end plus [`LOOKAHEAD`].
struct BlockStats {
    gate: Gate,
    speech_smooth: f32,
    norm: SpeakerNorm,
}

/// Incremental lip-sync analysis: frame `t` depends only on audio up to the end of its 1 s block
/// plus [`LOOKAHEAD`], and every state (smoothing, accents, onsets) carries across calls, so
/// `advance` in any steps yields exactly the frames of one call to the end.
pub struct LipSyncStream<'a> {
    samples: &'a [f32],
    sr: f32,
    n: usize,
    spf: usize,
    lead: usize,
    /// Loudness per video frame, computed on demand.
    db: Vec<f32>,
    /// 10 ms analysis frames, computed on demand.
    frames: Vec<Frame>,
    window: Vec<f32>,
    stats: Option<(usize, BlockStats)>,
    track: LipSyncTrack,
    open_y: f32,
    prev_w: [f32; NUM_VISEMES],
    quiet: usize,
    /// The trained prototypes, whose weights are blended into the templates' ([`TRAINED_SHARE`]).
    trained: Option<Trained<'a>>,
}

/// The trained viseme model with its front end and the per-frame weights made so far.
struct Trained<'a> {
    model: &'a VisemeModel,
    front: Front,
    /// The filtered signal made so far (each frame reads 512 samples of it, overlapping).
    filtered: Vec<f32>,
    /// Per MFCC frame: weights of the 14 shapes (classic order).
    frames: Vec<[f32; NUM_VISEMES]>,
}

/// HeadAudio's viseme numbering (see `prototypes::NAMES`, silence left out) to this engine's
/// (`VISEME_NAMES`).
const FROM_TRAINED: [usize; 14] = [9, 10, 11, 12, 13, 0, 6, 2, 3, 1, 4, 7, 8, 5];
/// Temperature of the soft assignment over Mahalanobis distances: weight `exp(-d / (2 T))`.
const TRAINED_T: f32 = 4.0;
/// Share of the trained prototypes in the shape weights; the formant templates give the rest.
/// Chosen on the shared clips (see README, "Trained visemes"): alone, the prototypes (an English
/// model) lowered the Mandarin clips' lip-sync correlation; at 0.3 every measured pair but one
/// was at or above the templates alone.
const TRAINED_SHARE: f32 = 0.3;

impl Trained<'_> {
    fn weights(&mut self, x: &[f32], k: usize) -> [f32; NUM_VISEMES] {
        while self.frames.len() <= k {
            let j = self.frames.len();
            let end = j * HOP_TRAINED + WINDOW_TRAINED;
            let w = match end <= x.len() {
                // A model without speech prototypes (only silence) has nothing to say.
                true if self.model.prototypes().iter().all(|p| p.viseme == SILENCE) => {
                    [1.0 / NUM_VISEMES as f32; NUM_VISEMES]
                }
                true => {
                    if self.filtered.len() < end {
                        let more = self.front.filter(x, self.filtered.len()..end);
                        self.filtered.extend(more);
                    }
                    let (v, _) = self.front.features(&self.filtered[end - WINDOW_TRAINED..end]);
                    let d = self.model.viseme_distances(&v);
                    let min = d[..14].iter().copied().fold(f32::INFINITY, f32::min);
                    let mut w = [0.0f32; NUM_VISEMES];
                    let mut sum = 0.0;
                    for (i, &to) in FROM_TRAINED.iter().enumerate() {
                        w[to] = (-0.5 * (d[i] - min) / TRAINED_T).exp();
                        sum += w[to];
                    }
                    w.map(|v| v / sum.max(1e-12))
                }
                false => [1.0 / NUM_VISEMES as f32; NUM_VISEMES],
            };
            self.frames.push(w);
        }
        self.frames[k]
    }
}

impl<'a> LipSyncStream<'a> {
    /// The stream of `clip`; with a trained viseme model, the shapes blend its prototypes in.
    pub fn new(clip: &'a AudioClip, trained: Option<&'a VisemeModel>) -> Self {
        let n = clip.num_frames();
        Self {
            samples: &clip.samples,
            sr: clip.sample_rate as f32,
            n,
            spf: clip.sample_rate as usize / FPS as usize,
            lead: (LEAD_MS / 1000.0 * clip.sample_rate as f32) as usize,
            db: Vec::with_capacity(n),
            frames: Vec::new(),
            window: (0..WIN)
                .map(|i| 0.5 - 0.5 * (2.0 * std::f32::consts::PI * i as f32 / (WIN - 1) as f32).cos())
                .collect(),
            stats: None,
            track: LipSyncTrack {
                fps: FPS,
                open: Vec::with_capacity(n),
                weights: Vec::with_capacity(n),
                loudness_db: Vec::with_capacity(n),
                accents: Vec::new(),
                onsets: Vec::new(),
            },
            open_y: 0.0,
            prev_w: [1.0 / NUM_VISEMES as f32; NUM_VISEMES],
            // The clip start counts as after a pause.
            quiet: 10,
            trained: trained.map(|model| Trained {
                model,
                front: Front::new(),
                filtered: Vec::new(),
                frames: Vec::new(),
            }),
        }
    }

    /// Video frames the whole clip yields.
    pub fn total(&self) -> usize {
        self.n
    }

    /// Frames analysed so far.
    pub fn done(&self) -> usize {
        self.track.open.len()
    }

    /// The track so far.
    pub fn track(&self) -> &LipSyncTrack {
        &self.track
    }

    pub fn into_track(self) -> LipSyncTrack {
        self.track
    }

    /// Analyse frames up to `until` (clamped to the clip).
    pub fn advance(&mut self, until: usize) {
        let until = until.min(self.n);
        while self.done() < until {
            self.step();
        }
    }

    /// Loudness of frame `t` over a 40 ms window centred LEAD_MS after the frame's middle.
    fn ensure_db(&mut self, upto: usize) {
        let upto = upto.min(self.n);
        let len = self.samples.len();
        while self.db.len() < upto {
            let t = self.db.len();
            let end = (t * self.spf + self.lead + self.spf).min(len);
            // At the very end of the clip the window slides back rather than shrinking.
            let start = end.saturating_sub(self.spf).min(t * self.spf + self.lead);
            self.db.push(db(rms(&self.samples[start..end])));
        }
    }

    /// Analysis frames whose window starts before sample `upto_sample`; returns their count.
    fn ensure_frames(&mut self, upto_sample: usize) -> usize {
        let count = if self.samples.len() >= WIN { (self.samples.len() - WIN) / HOP + 1 } else { 0 };
        let want = (upto_sample.div_ceil(HOP)).min(count);
        while self.frames.len() < want {
            let j = self.frames.len();
            let f = analysis_frame(&self.samples[j * HOP..j * HOP + WIN], &self.window, self.sr);
            self.frames.push(f);
        }
        want
    }

    fn block_stats(&mut self, block: usize) -> &BlockStats {
        if self.stats.as_ref().map(|(b, _)| *b) != Some(block) {
            let end_frame = ((block + 1) * BLOCK + LOOKAHEAD).min(self.n);
            self.ensure_db(end_frame);
            let analysed = self.ensure_frames(end_frame * self.spf + self.lead);
            let db = &self.db[..end_frame];
            let smooth: Vec<f32> = (0..db.len()).map(|t| smooth_at(db, t)).collect();
            let stats = BlockStats {
                gate: Gate::fit(db),
                speech_smooth: percentile(&smooth, 0.95).unwrap_or(-120.0),
                norm: SpeakerNorm::fit(&self.frames[..analysed]),
            };
            self.stats = Some((block, stats));
        }
        &self.stats.as_ref().expect("stats were just set").1
    }

    /// One video frame: opening, viseme weights, and any accent or onset at it.
    fn step(&mut self) {
        let t = self.done();
        self.ensure_db(t + PEAK_AHEAD + 1);
        let db_t = self.db[t];
        let stats = self.block_stats(t / BLOCK);
        let goal = stats.gate.target(db_t);
        let speech_smooth = stats.speech_smooth;
        // Shape features: analysis frames whose centres fall in the frame's window.
        let centre_s = (t as f32 + 0.5) / FPS as f32 + LEAD_MS / 1000.0;
        let first = ((centre_s - 0.02) * self.sr / HOP as f32 - WIN as f32 / (2.0 * HOP as f32)).max(0.0) as usize;
        self.ensure_frames((first + 4) * HOP + 1);
        let last = (first + 4).min(self.frames.len());
        let feats = pool(&self.frames[first.min(self.frames.len())..last]);
        let rel = local_rel_db(&self.db, t);
        let norm = &self.stats.as_ref().expect("stats").1.norm;
        let w = match (goal > 0.0, self.trained.as_mut()) {
            (false, _) => self.prev_w,
            (true, None) => classify(&feats, norm, rel),
            (true, Some(tr)) => {
                // MFCC frames centred within 20 ms of the frame's analysis centre.
                let hop_s = HOP_TRAINED as f32 / self.sr;
                let half = WINDOW_TRAINED as f32 / 2.0 / self.sr;
                let lo = ((centre_s - 0.02 - half) / hop_s).ceil().max(0.0) as usize;
                let hi = ((centre_s + 0.02 - half) / hop_s).floor().max(0.0) as usize;
                let count = Front::frames(self.samples.len());
                let mut acc = [0.0f32; NUM_VISEMES];
                let mut n = 0.0;
                for k in lo..=hi.min(count.saturating_sub(1)) {
                    let w = tr.weights(self.samples, k);
                    for i in 0..NUM_VISEMES {
                        acc[i] += w[i];
                    }
                    n += 1.0;
                }
                if n == 0.0 {
                    self.prev_w
                } else {
                    let t = classify(&feats, norm, rel);
                    std::array::from_fn(|i| TRAINED_SHARE * acc[i] / n + (1.0 - TRAINED_SHARE) * t[i])
                }
            }
        };
        let mut s = [0.0f32; NUM_VISEMES];
        let mut sum = 0.0;
        for k in 0..NUM_VISEMES {
            s[k] = self.prev_w[k] + SHAPE_SMOOTH * (w[k] - self.prev_w[k]);
            sum += s[k];
        }
        for v in s.iter_mut() {
            *v /= sum.max(1e-6);
        }
        self.prev_w = s;
        // Asymmetric one-pole smoothing: opens fast, closes a bit slower.
        let k = if goal > self.open_y { ATTACK } else { RELEASE };
        self.open_y += k * (goal - self.open_y);
        if goal == 0.0 && self.open_y < 0.03 {
            self.open_y = 0.0; // settle fully closed in silence
        }
        let open = self.open_y;
        if let Some(strength) = accent_at(&self.db, t, open, speech_smooth, self.track.accents.last()) {
            self.track.accents.push((t as u32, strength));
        }
        if open > 0.15 && self.quiet >= 10 {
            self.track.onsets.push(t as u32);
        }
        self.quiet = if open < 0.05 { self.quiet + 1 } else { 0 };
        self.track.open.push(open);
        self.track.weights.push(s);
        self.track.loudness_db.push(self.db[t]);
    }
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

/// Features of one analysis window of `WIN` samples.
fn analysis_frame(raw: &[f32], window: &[f32], sr: f32) -> Frame {
    let bin_hz = sr / NFFT as f32;
    let min_lag = (sr / 400.0) as usize;
    let max_lag = (sr / 70.0) as usize;
    let energy = raw.iter().map(|v| v * v).sum::<f32>() / WIN as f32;
    if energy < 1e-9 {
        return Frame::default();
    }
    let win: Vec<f32> = raw.iter().zip(window).map(|(s, w)| s * w).collect();
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
    let pre: Vec<f32> = (0..WIN).map(|i| (raw[i] - if i > 0 { 0.97 * raw[i - 1] } else { 0.0 }) * window[i]).collect();
    let formants = if voicing > 0.4 { dsp::lpc(&pre, 14).and_then(|a| dsp::formants(&a, sr)) } else { None };
    Frame {
        energy,
        voicing,
        centroid: if tot > 0.0 { wsum / tot } else { 0.0 },
        high_ratio: if tot > 0.0 { high / tot } else { 0.0 },
        formants,
    }
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

/// The `p` quantile (nearest rank) of the finite values.
fn percentile(values: &[f32], p: f32) -> Option<f32> {
    Percentiles::of(values).at(p)
}

/// The finite values, sorted once, for several nearest-rank quantiles.
struct Percentiles(Vec<f32>);

impl Percentiles {
    fn of(values: &[f32]) -> Self {
        let mut sorted: Vec<f32> = values.iter().copied().filter(|v| v.is_finite()).collect();
        sorted.sort_by(f32::total_cmp);
        Self(sorted)
    }

    fn at(&self, p: f32) -> Option<f32> {
        let n = self.0.len();
        (n > 0).then(|| self.0[((n - 1) as f32 * p).round() as usize])
    }
}

/// Loudness -> opening target: 0 below the gate, 1 at the speech level of the audio seen so far.
struct Gate {
    /// `None`: nothing louder than a quiet room yet, every target is 0.
    range: Option<(f32, f32, f32)>,
}

impl Gate {
    fn fit(db: &[f32]) -> Self {
        let q = Percentiles::of(db);
        let (Some(speech), Some(noise), Some(hi)) = (q.at(0.95), q.at(0.10), q.at(0.98)) else {
            return Self { range: None };
        };
        if speech < -50.0 {
            return Self { range: None };
        }
        let lo = (speech - 30.0).max(-58.0).max(noise + 6.0).min(speech - 6.0);
        Self { range: Some((lo, amp(lo), amp(hi))) }
    }

    /// Between the gate and the speech level the opening follows the amplitude (not the dB
    /// value) with a gentle compression, so quiet syllables still move the lips.
    fn target(&self, v: f32) -> f32 {
        let Some((lo, a_lo, a_hi)) = self.range else { return 0.0 };
        if v < lo + 3.0 {
            return 0.0;
        }
        ((amp(v) - a_lo) / (a_hi - a_lo).max(1e-9)).clamp(0.0, 1.0).powf(0.8)
    }
}

fn amp(d: f32) -> f32 {
    10f32.powf(d / 20.0)
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

/// Loudness averaged over frames `t-1..=t+1`.
fn smooth_at(db: &[f32], t: usize) -> f32 {
    let lo = t.saturating_sub(1);
    let hi = (t + 2).min(db.len());
    db[lo..hi].iter().sum::<f32>() / (hi - lo) as f32
}

/// An emphasis peak at `t`: a local loudness maximum (+-6 frames) well above the preceding
/// 8 frames, while the mouth is open, at least 10 frames after the previous accent.
fn accent_at(db: &[f32], t: usize, open: f32, speech: f32, last: Option<&(u32, f32)>) -> Option<f32> {
    let here = smooth_at(db, t);
    if open < 0.3 || here < speech - 9.0 {
        return None;
    }
    let lo = t.saturating_sub(6);
    let hi = (t + 7).min(db.len());
    if (lo..hi).any(|u| smooth_at(db, u) > here) {
        return None;
    }
    let before = (t.saturating_sub(8)..t).map(|u| smooth_at(db, u)).fold(f32::MAX, f32::min);
    if before == f32::MAX || here - before < 6.0 {
        return None;
    }
    if last.is_some_and(|(f, _)| t as u32 - f < 10) {
        return None;
    }
    Some(((here - (speech - 10.0)) / 10.0).clamp(0.2, 1.0))
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
        let tr = analyse(&clip, None);
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
    fn a_model_of_silence_alone_leaves_finite_weights() {
        // One prototype record (368 bytes) of viseme 14, zero mean, zero inverse covariance.
        let mut record = vec![0u8; 368];
        record[7] = 14;
        let model = VisemeModel::parse(&record).unwrap();
        let clip = tone_bursts(16000, 2.0, &[(0.3, 1.5)]);
        let tr = analyse(&clip, Some(&model));
        assert!(tr.weights.iter().flatten().all(|w| w.is_finite()));
        assert!(tr.open.iter().any(|&o| o > 0.5));
    }

    #[test]
    fn silence_is_all_closed() {
        let clip = AudioClip { samples: vec![0.0; 32000], sample_rate: 16000 };
        let tr = analyse(&clip, None);
        assert!(tr.open.iter().all(|&o| o == 0.0));
        assert!(tr.accents.is_empty());
    }
}

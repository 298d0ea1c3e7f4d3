//! What the benchmark reports: per-case samples reduced to median / p90 (nearest rank), x-realtime,
//! speedups over the no-cache baseline, a per-stage breakdown and peak RSS; the JSON shape and the
//! text table.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// The four request kinds the benchmark compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Case {
    /// New image + new audio: everything computed (and written to the cache).
    Cold,
    /// Cached image + new audio: the VIP path.
    Warm,
    /// Cached image + same audio + same options: the finished video from the cache.
    Hot,
    /// The same pipeline with the cache out of the way: every stage recomputed per request.
    Nocache,
    /// For reference, in-process only: `vipavatar generate` (`generate_local`), a plain one-shot
    /// run that also loads the precompute models, as a plain SadTalker run does.
    Oneshot,
}

impl Case {
    /// The four cases both modes measure.
    pub const ALL: [Case; 4] = [Case::Cold, Case::Warm, Case::Hot, Case::Nocache];

    pub fn label(self) -> &'static str {
        match self {
            Case::Cold => "cold",
            Case::Warm => "warm (VIP)",
            Case::Hot => "hot",
            Case::Nocache => "no-cache",
            Case::Oneshot => "one-shot",
        }
    }
}

/// Where the time was measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// The worker's job functions called directly: pipeline + real Redis cache, no HTTP, no queue.
    InProcess,
    /// HTTP API + Redis queue + one worker: from the first POST until the video is ready.
    EndToEnd,
}

impl Mode {
    pub fn label(self) -> &'static str {
        match self {
            Mode::InProcess => "in-process (worker job functions + real Redis cache, no HTTP)",
            Mode::EndToEnd => "end-to-end (HTTP POST -> Redis queue -> worker -> status says ready)",
        }
    }
}

/// One timed request.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    pub wall_ms: f64,
    /// Raw stage names as the service reports them (see [`bucket`]).
    pub stages_ms: Vec<(String, f64)>,
    /// VmHWM after this sample, peak since the reset before it (MiB).
    pub peak_rss_mb: f64,
    /// Time to the first watchable frame: in process the first encoded fragment in Redis, end
    /// to end the first media fragment received by an HTTP client after the POST.
    pub first_frame_ms: Option<f64>,
}

/// Columns of the per-stage breakdown, in table order. `cache_io_other` is the wall time not
/// covered by a measured compute stage: Redis round trips, blob reads/writes, (de)serialisation,
/// thread hand-offs, and end-to-end also HTTP, the queue and polling.
/// `precompute` is only reported by the one-shot case (model loading + the whole image side).
pub const BUCKETS: [&str; 12] = [
    "decode",
    "detect",
    "landmarks",
    "crop",
    "coeffs",
    "prepare",
    "precompute",
    "audio",
    "motion",
    "render",
    "encode",
    "cache_io_other",
];

/// The breakdown column of one raw stage name; `None` for parents and waits that would count
/// time twice (`generate`, `total`, `wait_avatar`, `render` when it has `render.*` children).
pub fn bucket(stage: &str, has_render_children: bool) -> Option<&'static str> {
    Some(match stage {
        "decode" | "decode_image" | "upscale" => "decode",
        "detect" => "detect",
        "landmarks" => "landmarks",
        "crop" => "crop",
        "pose" | "coeffs" | "3dmm" | "recon" => "coeffs",
        "prepare" => "prepare",
        "precompute" => "precompute",
        "audio_decode" | "audio_load" | "features" => "audio",
        "motion" => "motion",
        "render.sink" | "encode_finish" | "encode" => "encode",
        // The sadtalker engine's paste-back / frame conversion after each renderer batch.
        "output" => "render",
        "render" if !has_render_children => "render",
        s if s.starts_with("render.") => "render",
        _ => return None,
    })
}

/// Sum a sample's stages into [`BUCKETS`]; the remainder of the wall time is `cache_io_other`.
pub fn breakdown(sample: &Sample) -> BTreeMap<&'static str, f64> {
    let children = sample.stages_ms.iter().any(|(n, _)| n.starts_with("render."));
    let mut out: BTreeMap<&'static str, f64> = BUCKETS.iter().map(|b| (*b, 0.0)).collect();
    let mut covered = 0.0;
    for (name, ms) in &sample.stages_ms {
        if let Some(b) = bucket(name, children) {
            *out.entry(b).or_insert(0.0) += ms;
            covered += ms;
        }
    }
    out.insert("cache_io_other", (sample.wall_ms - covered).max(0.0));
    out
}

/// Median (mean of the two middle values for an even count); 0 for no values.
pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// 90th percentile by nearest rank: the value at rank ceil(0.9 n) of the sorted values (with 3
/// runs that is the slowest run).
pub fn p90_nearest_rank(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return 0.0;
    }
    let rank = ((0.9 * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

/// One case reduced over its runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CaseResult {
    pub case: Case,
    pub runs: usize,
    /// Every run's wall time, in run order.
    pub wall_ms: Vec<f64>,
    pub median_ms: f64,
    pub p90_ms: f64,
    /// Audio seconds per wall-clock second at the median.
    pub x_realtime: f64,
    /// No-cache median / this median.
    pub speedup_over_nocache: Option<f64>,
    /// Median per breakdown column (ms).
    pub stages_ms: BTreeMap<String, f64>,
    /// Highest VmHWM seen in this case's runs (MiB).
    pub peak_rss_mb: f64,
    /// Time to the first watchable frame, per run (cases that stream only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub first_frame_ms: Vec<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_frame_median_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_frame_p90_ms: Option<f64>,
    /// Every run's stages as the service reported them (ms), for digging into the breakdown.
    pub raw_stages_ms: Vec<Vec<(String, f64)>>,
}

impl CaseResult {
    pub fn from_samples(case: Case, samples: &[Sample], audio_seconds: f64) -> Self {
        let wall: Vec<f64> = samples.iter().map(|s| s.wall_ms).collect();
        let med = median(&wall);
        let parts: Vec<BTreeMap<&'static str, f64>> = samples.iter().map(breakdown).collect();
        let stages_ms = BUCKETS
            .iter()
            .map(|b| {
                let vals: Vec<f64> = parts.iter().map(|p| p.get(b).copied().unwrap_or(0.0)).collect();
                (b.to_string(), median(&vals))
            })
            .collect();
        let first: Vec<f64> = samples.iter().filter_map(|s| s.first_frame_ms).collect();
        let has_first = !first.is_empty();
        Self {
            first_frame_median_ms: has_first.then(|| median(&first)),
            first_frame_p90_ms: has_first.then(|| p90_nearest_rank(&first)),
            first_frame_ms: first,
            case,
            runs: samples.len(),
            wall_ms: wall.clone(),
            median_ms: med,
            p90_ms: p90_nearest_rank(&wall),
            x_realtime: audio_seconds / (med / 1e3).max(1e-9),
            speedup_over_nocache: None,
            stages_ms,
            peak_rss_mb: samples.iter().map(|s| s.peak_rss_mb).fold(0.0, f64::max),
            raw_stages_ms: samples.iter().map(|s| s.stages_ms.clone()).collect(),
        }
    }
}

/// All cases of one engine, mode and audio length.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Group {
    pub mode: Mode,
    pub audio_seconds: f64,
    pub frames: u64,
    pub cases: Vec<CaseResult>,
    /// No-cache median / warm median.
    pub speedup_vip_over_nocache: Option<f64>,
    /// No-cache median / hot median.
    pub speedup_hot_over_nocache: Option<f64>,
    /// One-shot median / warm median (in-process only).
    pub speedup_vip_over_oneshot: Option<f64>,
}

impl Group {
    pub fn new(mode: Mode, audio_seconds: f64, samples: &[(Case, Vec<Sample>)]) -> Self {
        let mut cases: Vec<CaseResult> =
            samples.iter().map(|(c, s)| CaseResult::from_samples(*c, s, audio_seconds)).collect();
        let base = cases.iter().find(|c| c.case == Case::Nocache).map(|c| c.median_ms);
        for c in &mut cases {
            c.speedup_over_nocache = base.map(|b| b / c.median_ms.max(1e-6));
        }
        let speedup = |case| cases.iter().find(|c| c.case == case).and_then(|c| c.speedup_over_nocache);
        let median_of = |case| cases.iter().find(|c| c.case == case).map(|c| c.median_ms);
        let over_oneshot = median_of(Case::Oneshot).zip(median_of(Case::Warm)).map(|(o, w)| o / w.max(1e-6));
        Self {
            mode,
            audio_seconds,
            frames: (audio_seconds * 25.0) as u64,
            speedup_vip_over_nocache: speedup(Case::Warm),
            speedup_hot_over_nocache: speedup(Case::Hot),
            speedup_vip_over_oneshot: over_oneshot,
            cases,
        }
    }
}

/// Which group the per-engine headline speedups come from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Headline {
    pub mode: Mode,
    pub audio_seconds: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EngineReport {
    pub engine: String,
    pub available: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unavailable_reason: Option<String>,
    /// Set when the engine ran on stand-in weights (`--sadtalker-stand-in`): what that means.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<String>,
    /// Headline (see `headline`): no-cache median / warm median.
    pub speedup_vip_over_nocache: Option<f64>,
    /// Headline: no-cache median / hot median.
    pub speedup_hot_over_nocache: Option<f64>,
    pub headline: Option<Headline>,
    pub groups: Vec<Group>,
    /// `--concurrent N`: frames per second of one session alone and of N at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throughput: Option<Throughput>,
}

/// Rendering throughput on one device: one VIP session alone, then `sessions` VIP sessions
/// started together (each its own cached avatar, each new audio), in one run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Throughput {
    pub sessions: usize,
    pub audio_seconds: f64,
    /// Frames of one session.
    pub frames_per_session: u64,
    pub one_session_ms: f64,
    /// Wall time from starting the sessions until the last one is ready.
    pub concurrent_ms: f64,
    pub one_session_fps: f64,
    pub concurrent_fps: f64,
    /// concurrent_fps / one_session_fps.
    pub ratio: f64,
}

impl Throughput {
    pub fn new(sessions: usize, audio_seconds: f64, frames: u64, one_ms: f64, all_frames: u64, all_ms: f64) -> Self {
        let fps = |f: u64, ms: f64| if ms > 0.0 { f as f64 * 1000.0 / ms } else { 0.0 };
        let (one, all) = (fps(frames, one_ms), fps(all_frames, all_ms));
        Self {
            sessions,
            audio_seconds,
            frames_per_session: frames,
            one_session_ms: one_ms,
            concurrent_ms: all_ms,
            one_session_fps: one,
            concurrent_fps: all,
            ratio: if one > 0.0 { all / one } else { 0.0 },
        }
    }
}

impl EngineReport {
    pub fn unavailable(engine: &str, reason: String) -> Self {
        Self {
            engine: engine.into(),
            available: false,
            unavailable_reason: Some(reason),
            weights: None,
            speedup_vip_over_nocache: None,
            speedup_hot_over_nocache: None,
            headline: None,
            groups: Vec::new(),
            throughput: None,
        }
    }

    /// Fill the headline from the in-process group at `seconds` (else the first in-process group).
    pub fn set_headline(&mut self, seconds: f64) {
        let inproc = || self.groups.iter().filter(|g| g.mode == Mode::InProcess);
        let g = inproc()
            .find(|g| (g.audio_seconds - seconds).abs() < 0.5)
            .or_else(|| inproc().next())
            .or(self.groups.first());
        if let Some(g) = g {
            self.speedup_vip_over_nocache = g.speedup_vip_over_nocache;
            self.speedup_hot_over_nocache = g.speedup_hot_over_nocache;
            self.headline = Some(Headline { mode: g.mode, audio_seconds: g.audio_seconds });
        }
    }
}

/// The whole run (what `--json` prints).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchReport {
    pub command: String,
    pub version: String,
    pub runs: usize,
    pub long_runs: usize,
    pub image: String,
    pub audio_sources: Vec<String>,
    pub cpus: usize,
    pub percentile_method: String,
    pub notes: Vec<String>,
    /// The reference implementation's claims, for comparison.
    pub reference_claims: BTreeMap<String, String>,
    pub engines: Vec<EngineReport>,
}

fn fmt_ms(ms: f64) -> String {
    if ms >= 100.0 {
        format!("{ms:.0}")
    } else if ms >= 10.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.2}")
    }
}

fn fmt_x(x: Option<f64>) -> String {
    match x {
        Some(v) if v >= 100.0 => format!("{v:.0}x"),
        Some(v) => format!("{v:.1}x"),
        None => "-".into(),
    }
}

/// The text report: one table per engine, mode and audio length, then a summary.
pub fn render_table(r: &BenchReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "vipavatar bench {} — {} CPU(s); runs per case: {} ({} for audio >= 30 s)",
        r.version, r.cpus, r.runs, r.long_runs
    );
    let _ = writeln!(s, "image {}; audio from {}", r.image, r.audio_sources.join(", "));
    let _ = writeln!(
        s,
        "median; p90 = {}; x-RT = audio s / wall s; speedup = no-cache median / case median",
        r.percentile_method
    );
    for e in &r.engines {
        if !e.available {
            let _ =
                writeln!(s, "\nengine {}: unavailable — {}", e.engine, e.unavailable_reason.as_deref().unwrap_or(""));
            continue;
        }
        if let Some(w) = &e.weights {
            let _ = writeln!(s, "\nengine {}: {w}", e.engine);
        }
        for g in &e.groups {
            let _ = writeln!(
                s,
                "\nengine {} | {} | {:.1} s audio ({} frames)",
                e.engine,
                g.mode.label(),
                g.audio_seconds,
                g.frames
            );
            let _ = write!(
                s,
                "{:<11}{:>4} {:>9} {:>9} {:>8} {:>8} |",
                "case", "runs", "median ms", "p90 ms", "x-RT", "speedup"
            );
            for b in BUCKETS {
                let name = match b {
                    "cache_io_other" => "cacheIO+",
                    "landmarks" => "lmarks",
                    "precompute" => "precomp",
                    other => other,
                };
                let _ = write!(s, " {name:>8}");
            }
            let _ = writeln!(s, " | {:>7} | {:>9} {:>9}", "RSS MiB", "1st frame", "p90");
            for c in &g.cases {
                let _ = write!(
                    s,
                    "{:<11}{:>4} {:>9} {:>9} {:>8} {:>8} |",
                    c.case.label(),
                    c.runs,
                    fmt_ms(c.median_ms),
                    fmt_ms(c.p90_ms),
                    format!("{:.1}", c.x_realtime),
                    fmt_x(c.speedup_over_nocache)
                );
                for b in BUCKETS {
                    let _ = write!(s, " {:>8}", fmt_ms(c.stages_ms.get(b).copied().unwrap_or(0.0)));
                }
                let first = |v: Option<f64>| v.map(fmt_ms).unwrap_or_else(|| "-".into());
                let _ = writeln!(
                    s,
                    " | {:>7.0} | {:>9} {:>9}",
                    c.peak_rss_mb,
                    first(c.first_frame_median_ms),
                    first(c.first_frame_p90_ms)
                );
            }
        }
    }
    let _ = writeln!(s, "\nsummary (medians, ms; speedups over no-cache)");
    let _ = writeln!(
        s,
        "{:<10} {:<11} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>11}",
        "engine", "mode", "audio s", "cold", "warm", "hot", "no-cache", "VIP x", "hot x", "warm 1st fr"
    );
    for e in &r.engines {
        if !e.available {
            let _ = writeln!(s, "{:<10} unavailable", e.engine);
            continue;
        }
        if let Some(w) = &e.weights {
            let _ = writeln!(s, "\nengine {}: {w}", e.engine);
        }
        for g in &e.groups {
            let m = |case| {
                g.cases.iter().find(|c| c.case == case).map(|c| fmt_ms(c.median_ms)).unwrap_or_else(|| "-".into())
            };
            let mode = match g.mode {
                Mode::InProcess => "in-process",
                Mode::EndToEnd => "end-to-end",
            };
            let first = g
                .cases
                .iter()
                .find(|c| c.case == Case::Warm)
                .and_then(|c| c.first_frame_median_ms)
                .map(fmt_ms)
                .unwrap_or_else(|| "-".into());
            let _ = writeln!(
                s,
                "{:<10} {:<11} {:>7.1} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>11}",
                e.engine,
                mode,
                g.audio_seconds,
                m(Case::Cold),
                m(Case::Warm),
                m(Case::Hot),
                m(Case::Nocache),
                fmt_x(g.speedup_vip_over_nocache),
                fmt_x(g.speedup_hot_over_nocache),
                first
            );
        }
    }
    for e in &r.engines {
        if let Some(t) = &e.throughput {
            let _ = writeln!(
                s,
                "{}: throughput, {:.1} s audio ({} frames per session): 1 session {:.3} frames/s ({}); {} sessions at once \
                 {:.3} frames/s ({}); {:.2}x",
                e.engine,
                t.audio_seconds,
                t.frames_per_session,
                t.one_session_fps,
                fmt_ms(t.one_session_ms),
                t.sessions,
                t.concurrent_fps,
                fmt_ms(t.concurrent_ms),
                t.ratio
            );
        }
    }
    for (k, v) in &r.reference_claims {
        let _ = writeln!(s, "reference claim: {k}: {v}");
    }
    for n in &r.notes {
        let _ = writeln!(s, "note: {n}");
    }
    s
}

/// Peak resident set size of this process so far (VmHWM, MiB); 0 when unreadable.
pub fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// Reset VmHWM to the current RSS (Linux: write 5 to clear_refs), so the next reading is the
/// peak of what follows. False when the kernel refuses (then readings are process-wide peaks).
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_and_median() {
        assert_eq!(p90_nearest_rank(&[3.0, 1.0, 2.0]), 3.0);
        assert_eq!(p90_nearest_rank(&(1..=10).map(f64::from).collect::<Vec<_>>()), 9.0);
        assert_eq!(p90_nearest_rank(&[7.0]), 7.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&[5.0, 1.0, 3.0]), 3.0);
    }

    #[test]
    fn breakdown_counts_children_not_parents() {
        let s = Sample {
            wall_ms: 100.0,
            stages_ms: [
                ("generate", 60.0),
                ("render", 40.0),
                ("render.render", 30.0),
                ("render.sink", 10.0),
                ("detect", 20.0),
                ("total", 99.0),
            ]
            .iter()
            .map(|(n, v)| (n.to_string(), *v))
            .collect(),
            peak_rss_mb: 0.0,
            first_frame_ms: None,
        };
        let b = breakdown(&s);
        assert_eq!(b["render"], 30.0);
        assert_eq!(b["encode"], 10.0);
        assert_eq!(b["detect"], 20.0);
        assert_eq!(b["cache_io_other"], 40.0);
    }
}

//! ffmpeg processes started ahead of need. Starting ffmpeg costs 60-100 ms of CPU here before it
//! reads a byte (it loads about 200 shared libraries), and that start sat on every video's
//! critical path: the renderer's first frames waited for it. While keeping is on ([`keep`]), each
//! finished encode starts a successor with the same command line (frame size, options, the
//! output's folder), which waits on its empty stdin; the next encode with that command line takes
//! it, and only renames the file it wrote at the end. A kept ffmpeg that is never used exits when
//! this process does (its stdin closes), and nothing is written before its first frame arrives.

use super::encoder::{tee_escape, Started};
use crate::error::Result;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Stands for the output path in a [`Line`]'s arguments.
pub(crate) const OUTPUT: &str = "@vipavatar-warm-output@";
/// Kept processes per command line (two workers may encode the same kind of video at once).
const PER_LINE: usize = 2;
/// Kept processes in all; the oldest goes first.
const MAX_KEPT: usize = 4;

/// An ffmpeg command line without its output path: what a kept process is matched on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Line {
    /// The arguments, with [`OUTPUT`] where the output path goes.
    pub args: Vec<OsString>,
    pub stdout: bool,
    pub audio: bool,
    /// The folder of the output (a kept process writes there, so the final rename stays on one
    /// file system).
    pub dir: PathBuf,
}

impl Line {
    /// Whether ffmpeg writes a file (an MP4 at the output path) rather than only to stdout.
    pub fn writes_file(&self) -> bool {
        self.args.iter().any(|a| a.to_str().is_some_and(|s| s.contains(OUTPUT)))
    }

    /// Start ffmpeg with this command line writing `output`.
    pub(crate) fn spawn(&self, output: &Path) -> Result<Started> {
        let mut cmd = Command::new("ffmpeg");
        cmd.args(self.args.iter().map(|a| with_output(a, output)));
        Started::spawn(cmd, self.stdout, self.audio)
    }
}

struct Kept {
    line: Line,
    started: Started,
    output: PathBuf,
}

static KEEP: Mutex<(bool, Vec<Kept>)> = Mutex::new((false, Vec::new()));
static NEXT: AtomicU64 = AtomicU64::new(0);

/// Turn keeping on (a long-lived process: the service's workers) or off (dropping every kept
/// process). Off by default, so one-shot commands start nothing they will not use.
pub fn keep(on: bool) {
    let mut kept = KEEP.lock().unwrap_or_else(|p| p.into_inner());
    kept.0 = on;
    if !on {
        kept.1.clear();
    }
}

/// How many started processes are kept now for outputs in `dir`.
pub fn kept_in(dir: &Path) -> usize {
    KEEP.lock().map(|k| k.1.iter().filter(|k| k.line.dir == dir).count()).unwrap_or(0)
}

/// A kept process for `line` that is still running, and the file it will write (none when it
/// writes only to stdout).
pub(crate) fn take(line: &Line) -> Option<(Started, Option<PathBuf>)> {
    let mut kept = KEEP.lock().unwrap_or_else(|p| p.into_inner());
    while let Some(i) = kept.1.iter().position(|k| &k.line == line) {
        let mut k = kept.1.remove(i);
        if k.started.alive() {
            return Some((k.started, line.writes_file().then_some(k.output)));
        }
    }
    None
}

/// Start one more process for `line`, when keeping is on and fewer than [`PER_LINE`] are kept
/// for it. A failed start is only logged: the next encode starts its own.
pub(crate) fn refill(line: &Line) {
    let wanted = |kept: &(bool, Vec<Kept>)| kept.0 && kept.1.iter().filter(|k| &k.line == line).count() < PER_LINE;
    if !wanted(&KEEP.lock().unwrap_or_else(|p| p.into_inner())) {
        return;
    }
    // Started outside the lock, so other encoders can take theirs meanwhile.
    let output = line.dir.join(format!(".warm-{}-{}.mp4", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)));
    let started = match line.spawn(&output) {
        Ok(started) => started,
        Err(e) => return tracing::warn!(error = %e, "could not start an ffmpeg ahead of need"),
    };
    let mut kept = KEEP.lock().unwrap_or_else(|p| p.into_inner());
    if !wanted(&kept) {
        return; // dropping `started` stops it
    }
    if kept.1.len() >= MAX_KEPT {
        kept.1.remove(0);
    }
    kept.1.push(Kept { line: line.clone(), started, output });
}

/// `arg` with [`OUTPUT`] replaced by `output` (escaped for the tee muxer inside a tee spec).
fn with_output(arg: &OsStr, output: &Path) -> OsString {
    if arg == OsStr::new(OUTPUT) {
        return output.as_os_str().to_owned();
    }
    match arg.to_str() {
        Some(s) if s.contains(OUTPUT) => s.replace(OUTPUT, &tee_escape(output)).into(),
        _ => arg.to_owned(),
    }
}

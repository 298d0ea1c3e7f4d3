//! H.264 + AAC MP4 encoding through an `ffmpeg` child process: raw RGB frames are streamed to its
//! stdin from a writer thread (so rendering and encoding overlap), the audio comes from a small
//! raw f32 file next to the output, and the MP4 gets `+faststart`. With a live stream, one encode
//! feeds ffmpeg's tee muxer: the faststart file and a fragmented MP4 on stdout (a keyframe and a
//! fragment at every chunk start), split into fragments by a reader thread as they are written.
//! A part of a split session is encoded to a bare H.264 stream instead (no audio, no container),
//! which [`super::join`] muxes with the whole soundtrack.

use super::fmp4::{Fragment, FragmentSplitter};
use super::generate::{CHUNK_FRAMES, FIRST_CHUNK_FRAMES};
use super::warm;
use crate::audio::AudioClip;
use crate::engine::{FrameSink, Quality};
use crate::error::{PipelineError, Result};
use crate::image::RgbImage;
use std::ffi::OsString;
use std::io::{PipeWriter, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::JoinHandle;

/// Video frame rate of every output.
pub const FPS: u32 = 25;
/// Frames buffered between the renderer and the encoder.
const QUEUE: usize = 4;

/// x264 constant rate factor per quality preset.
pub fn crf(quality: Quality) -> u32 {
    match quality {
        Quality::Low => 28,
        Quality::Medium => 23,
        Quality::High => 18,
    }
}

/// Receives the live stream's pieces, in order, on the encoder's reader thread.
pub type FragmentSink = Box<dyn FnMut(Fragment) + Send>;

/// Receives a bare H.264 (Annex B) stream in arbitrary pieces, in order.
pub type ByteSink = Box<dyn FnMut(Vec<u8>) + Send>;

/// x264's speed settings: server configuration, the same for every encode of a process (set
/// once with [`set_x264`]; parts of one split video must match).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct X264 {
    /// An x264 preset name (`veryfast`, `superfast`, ...).
    pub preset: &'static str,
    /// Threads per encode; 0 lets x264 decide.
    pub threads: u32,
}

impl X264 {
    /// One thread per encode: a session's frames are coded one at a time as they are rendered,
    /// and extra (slice) threads only compete with the renderer for the cores (8 s in process on
    /// 2 cores: 547 -> 485 ms).
    pub const DEFAULT: Self = Self { preset: "veryfast", threads: 1 };
}

static X264_SETTINGS: std::sync::RwLock<X264> = std::sync::RwLock::new(X264::DEFAULT);

/// Set the x264 settings of every later encode in this process.
pub fn set_x264(settings: X264) {
    *X264_SETTINGS.write().unwrap_or_else(|p| p.into_inner()) = settings;
}

/// The x264 settings new encoders start with.
pub fn x264() -> X264 {
    *X264_SETTINGS.read().unwrap_or_else(|p| p.into_inner())
}

/// What the encoder needs to know up front.
pub struct EncoderConfig {
    pub output: PathBuf,
    pub quality: Quality,
    /// x264's speed settings (the process's, from [`x264`]).
    pub x264: X264,
    /// The live fragmented stream, if wanted.
    pub stream: Option<FragmentSink>,
    /// Frame indices that start a keyframe (and, live, a fragment); empty: x264 decides.
    pub keyframes: Vec<usize>,
    /// No lookahead, B-frames or macroblock tree: each frame leaves the encoder at once
    /// (always on for a live stream).
    pub zero_latency: bool,
    /// A constant quantizer instead of a constant rate factor, so the same picture is encoded
    /// the same wherever it occurs (the two ends of a loop).
    pub constant_quantizer: bool,
    /// Write a bare H.264 stream to this sink instead of an MP4 (`output`, `stream` and the
    /// soundtrack are then unused): one part of a split session.
    pub elementary: Option<ByteSink>,
}

impl EncoderConfig {
    pub fn new(output: &Path, quality: Quality) -> Self {
        Self {
            output: output.to_path_buf(),
            quality,
            x264: x264(),
            stream: None,
            keyframes: Vec::new(),
            zero_latency: false,
            constant_quantizer: false,
            elementary: None,
        }
    }
}

/// Escape a path for a tee muxer slave (its separators are `|`, `[`, `]` and `\`).
pub(crate) fn tee_escape(path: &Path) -> String {
    let mut out = String::new();
    for c in path.to_string_lossy().chars() {
        if matches!(c, '|' | '[' | ']' | '\\' | '\'') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// What reads ffmpeg's stdout: runs on its own thread, returns how many pieces it handed on.
pub(crate) type StdoutReader = Box<dyn FnOnce(ChildStdout) -> Result<usize> + Send>;

/// A running ffmpeg process: a writer thread feeds its stdin from a bounded queue (buffers come
/// back for reuse), a thread collects its stderr, and an optional thread reads its stdout.
pub(crate) struct Ffmpeg {
    child: Child,
    tx: Option<SyncSender<Vec<u8>>>,
    recycled: Receiver<Vec<u8>>,
    writer: Option<JoinHandle<std::io::Result<()>>>,
    stderr: Option<JoinHandle<Vec<u8>>>,
    reader: Option<JoinHandle<Result<usize>>>,
    audio: Option<JoinHandle<std::io::Result<()>>>,
}

/// An ffmpeg child as started, before any thread serves its pipes (what [`super::warm`] keeps
/// ready). Killed if dropped before [`Ffmpeg::attach`] takes it.
pub(crate) struct Started {
    child: Option<Child>,
    /// The write end of the soundtrack pipe, ffmpeg's `pipe:3`, when one was asked for.
    audio: Option<PipeWriter>,
}

/// The file descriptor that carries the soundtrack into ffmpeg, and its input name.
const AUDIO_FD: i32 = 3;
pub(crate) const AUDIO_INPUT: &str = "pipe:3";

impl Started {
    /// Start `cmd` with stdin and stderr piped, stdout piped when `stdout`, and a soundtrack
    /// pipe on fd 3 when `audio`.
    pub(crate) fn spawn(mut cmd: Command, stdout: bool, audio: bool) -> Result<Self> {
        cmd.stdin(Stdio::piped()).stdout(if stdout { Stdio::piped() } else { Stdio::null() }).stderr(Stdio::piped());
        let pipe = if audio {
            let (read, write) = std::io::pipe().map_err(|e| PipelineError::io("create the soundtrack pipe", e))?;
            let fd = read.as_raw_fd();
            // SAFETY: only async-signal-safe calls (dup2, fcntl) between fork and exec. The pipe is
            // close-on-exec; its copy on fd 3 is not (when it already is fd 3, the flag is cleared).
            unsafe {
                cmd.pre_exec(move || {
                    let ok = if fd == AUDIO_FD {
                        libc::fcntl(fd, libc::F_SETFD, 0) == 0
                    } else {
                        libc::dup2(fd, AUDIO_FD) == AUDIO_FD
                    };
                    if ok {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
            Some((read, write))
        } else {
            None
        };
        let child = cmd.spawn().map_err(|e| PipelineError::io("start ffmpeg (is it installed?)", e))?;
        // The child has its copy of the read end; ours would keep the pipe open after ffmpeg died.
        let audio = pipe.map(|(read, write)| {
            drop(read);
            write
        });
        Ok(Self { child: Some(child), audio })
    }

    /// Whether the process is still running (a kept one that died is not used).
    pub(crate) fn alive(&mut self) -> bool {
        self.child.as_mut().map(|c| matches!(c.try_wait(), Ok(None))).unwrap_or(false)
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Ffmpeg {
    /// Serve a started ffmpeg: a writer thread for stdin, a thread for stderr, `reader` on its
    /// stdout, and a thread writing `soundtrack` (bytes for its `pipe:3`) when given.
    pub(crate) fn attach(
        mut started: Started,
        reader: Option<StdoutReader>,
        soundtrack: Option<Vec<u8>>,
    ) -> Result<Self> {
        let mut child = started.child.take().ok_or_else(|| PipelineError::Internal("ffmpeg was taken".into()))?;
        let audio = match (soundtrack, started.audio.take()) {
            (Some(bytes), Some(mut pipe)) => Some(
                std::thread::Builder::new()
                    .name("ffmpeg-audio".into())
                    .spawn(move || pipe.write_all(&bytes))
                    .map_err(|e| PipelineError::io("spawn the ffmpeg soundtrack writer", e))?,
            ),
            (None, None) => None,
            _ => return Err(PipelineError::Internal("the soundtrack and its pipe do not match".into())),
        };
        let reader = match (reader, child.stdout.take()) {
            (Some(read), Some(out)) => Some(
                std::thread::Builder::new()
                    .name("ffmpeg-stdout".into())
                    .spawn(move || read(out))
                    .map_err(|e| PipelineError::io("spawn the ffmpeg output reader", e))?,
            ),
            _ => None,
        };
        let stdin = child.stdin.take().ok_or_else(|| PipelineError::Encode("ffmpeg has no stdin".into()))?;
        let stderr_pipe = child.stderr.take();
        let stderr = std::thread::Builder::new()
            .name("ffmpeg-stderr".into())
            .spawn(move || {
                let mut buf = Vec::new();
                if let Some(mut e) = stderr_pipe {
                    let _ = e.read_to_end(&mut buf);
                }
                buf
            })
            .map_err(|e| PipelineError::io("spawn ffmpeg stderr reader", e))?;
        let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(QUEUE);
        let (back_tx, recycled) = mpsc::channel::<Vec<u8>>();
        let writer = std::thread::Builder::new()
            .name("ffmpeg-writer".into())
            .spawn(move || write_frames(stdin, rx, back_tx))
            .map_err(|e| PipelineError::io("spawn ffmpeg writer", e))?;
        Ok(Self { child, tx: Some(tx), recycled, writer: Some(writer), stderr: Some(stderr), reader, audio })
    }

    /// An empty buffer, reused from an earlier write when one came back.
    pub(crate) fn buffer(&self) -> Vec<u8> {
        let mut buf = self.recycled.try_recv().unwrap_or_default();
        buf.clear();
        buf
    }

    /// Queue `buf` for ffmpeg's stdin; on `false` ffmpeg stopped reading (see [`Self::fail`]).
    pub(crate) fn send(&self, buf: Vec<u8>) -> bool {
        self.tx.as_ref().map(|tx| tx.send(buf).is_ok()).unwrap_or(false)
    }

    /// A second handle on the stdin queue (for a feeder on another thread).
    pub(crate) fn sender(&self) -> Option<SyncSender<Vec<u8>>> {
        self.tx.clone()
    }

    /// Close stdin, wait for ffmpeg and every thread, and check that all of them succeeded.
    pub(crate) fn finish(mut self) -> Result<()> {
        drop(self.tx.take());
        let write_result = self.writer.take().map(|w| w.join());
        let status = self.child.wait().map_err(|e| PipelineError::io("wait for ffmpeg", e))?;
        let log = self.log();
        if !status.success() {
            return Err(PipelineError::Encode(format!("ffmpeg exited with {status}: {log}")));
        }
        match write_result {
            Some(Ok(Ok(()))) | None => {}
            Some(Ok(Err(e))) => return Err(PipelineError::Encode(format!("writing to ffmpeg failed: {e}; {log}"))),
            Some(Err(_)) => return Err(PipelineError::Encode("the ffmpeg writer thread panicked".into())),
        }
        match self.audio.take().map(|a| a.join()) {
            Some(Ok(Ok(()))) | None => {}
            Some(Ok(Err(e))) => {
                return Err(PipelineError::Encode(format!("writing the soundtrack failed: {e}; {log}")))
            }
            Some(Err(_)) => return Err(PipelineError::Encode("the ffmpeg soundtrack thread panicked".into())),
        }
        match self.reader.take().map(|r| r.join()) {
            None | Some(Ok(Ok(_))) => Ok(()),
            Some(Ok(Err(e))) => Err(e),
            Some(Err(_)) => Err(PipelineError::Encode("the ffmpeg output reader thread panicked".into())),
        }
    }

    /// ffmpeg stopped accepting input: stop it and say why.
    pub(crate) fn fail(mut self) -> PipelineError {
        self.stop();
        PipelineError::Encode(format!("ffmpeg stopped accepting input: {}", self.log()))
    }

    fn log(&mut self) -> String {
        let stderr = self.stderr.take().and_then(|h| h.join().ok()).unwrap_or_default();
        String::from_utf8_lossy(&stderr).trim().chars().take(600).collect()
    }

    fn stop(&mut self) {
        drop(self.tx.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = self.writer.take().map(|w| w.join());
        let _ = self.audio.take().map(|a| a.join());
        let _ = self.reader.take().map(|r| r.join());
    }
}

impl Drop for Ffmpeg {
    fn drop(&mut self) {
        if self.tx.is_some() {
            self.stop();
        }
    }
}

/// MP4 encoder; starts ffmpeg on the first frame (when the frame size is known), or takes an
/// already started one with the same command line from [`super::warm`].
pub struct Mp4Encoder {
    config: EncoderConfig,
    /// The soundtrack as ffmpeg reads it (raw little-endian f32), none for a bare H.264 part.
    soundtrack: Option<Vec<u8>>,
    running: Option<Running>,
    frames: usize,
}

/// The ffmpeg of a started encode and what [`Mp4Encoder::finish`] needs afterwards.
struct Running {
    ffmpeg: Ffmpeg,
    width: u32,
    height: u32,
    /// The command line with the output path left out (the key of [`super::warm`]).
    line: warm::Line,
    /// Where a kept ffmpeg writes the MP4 (renamed to the output at the end).
    warm_output: Option<PathBuf>,
}

/// `audio` as ffmpeg reads the soundtrack (`-f f32le`): raw little-endian f32.
pub(crate) fn soundtrack_bytes(audio: &AudioClip) -> Vec<u8> {
    audio.samples.iter().flat_map(|s| s.to_le_bytes()).collect()
}

/// The x264 settings every encode shares (parts of one video must match, so they live here).
pub(crate) fn x264_args(cmd: &mut Command, config: &EncoderConfig) {
    let threads = config.x264.threads.to_string();
    cmd.args(["-c:v", "libx264", "-preset", config.x264.preset, "-threads", &threads]);
    cmd.args([if config.constant_quantizer { "-qp" } else { "-crf" }, &crf(config.quality).to_string()]).args([
        "-pix_fmt",
        "yuv420p",
        "-r",
        &FPS.to_string(),
    ]);
    if !config.keyframes.is_empty() {
        // Chunk starts as an expression, so the command line is the same whatever the clip's
        // length (and a kept ffmpeg fits every clip); any other list as times.
        let chunked = config.keyframes.iter().enumerate().all(|(i, &f)| f == chunk_start(i));
        let spec = if chunked {
            format!("expr:eq(n,0)+gte(n,{FIRST_CHUNK_FRAMES})*not(mod(n-{FIRST_CHUNK_FRAMES},{CHUNK_FRAMES}))")
        } else {
            let times: Vec<String> =
                config.keyframes.iter().map(|&f| format!("{:.3}", f as f64 / FPS as f64)).collect();
            times.join(",")
        };
        cmd.args(["-force_key_frames", &spec]).args(["-g", "100000", "-sc_threshold", "0"]);
    }
    if config.stream.is_some() || config.elementary.is_some() || config.zero_latency {
        // Live: a fragment is complete as soon as the next chunk's keyframe is encoded.
        cmd.args(["-tune", "zerolatency"]);
    }
}

/// First frame of chunk `i` (the pattern of [`super::generate::chunk_starts`]).
fn chunk_start(i: usize) -> usize {
    match i {
        0 => 0,
        i => FIRST_CHUNK_FRAMES + (i - 1) * CHUNK_FRAMES,
    }
}

/// The soundtrack's encoder: ffmpeg's AAC with its fast coder, which costs a third of the
/// default (two-loop) coder's CPU (60 s of speech: 0.36 s instead of 1.0 s here), time that
/// otherwise competes with rendering.
pub(crate) const AAC: [&str; 6] = ["-c:a", "aac", "-aac_coder", "fast", "-b:a", "96k"];

/// The tee output of a live encode: the faststart file and a fragmented MP4 on stdout.
pub(crate) fn tee_output(output: &Path) -> String {
    format!(
        "[f=mp4:movflags=+faststart]{}|[f=mp4:movflags=+frag_keyframe+empty_moov+default_base_moof:flush_packets=1]pipe:1",
        tee_escape(output)
    )
}

impl Mp4Encoder {
    /// Prepare an encoder writing `config.output` with `audio` as its soundtrack.
    pub fn new(config: EncoderConfig, audio: &AudioClip) -> Result<Self> {
        let soundtrack = match config.elementary {
            Some(_) => None,
            None => Some(soundtrack_bytes(audio)),
        };
        Ok(Self { config, soundtrack, running: None, frames: 0 })
    }

    /// Frames accepted so far.
    pub fn frames(&self) -> usize {
        self.frames
    }

    /// ffmpeg's arguments for `width` x `height` frames, with the [`warm::OUTPUT`] placeholder
    /// where the MP4's path goes (filled in when the process is started).
    fn args(&self, width: u32, height: u32) -> Vec<OsString> {
        let output = Path::new(warm::OUTPUT);
        let mut cmd = Command::new("ffmpeg");
        cmd.args(["-nostdin", "-hide_banner", "-loglevel", "error", "-y"])
            // Frames arrive as I420 (see `super::yuv`): x264 takes them without a conversion.
            .args(["-f", "rawvideo", "-pix_fmt", "yuv420p", "-s", &format!("{width}x{height}")])
            .args(["-framerate", &FPS.to_string(), "-i", "pipe:0"]);
        if self.config.elementary.is_some() {
            // Bare H.264 carries no timestamps: the frames must be coded in display order,
            // which zero latency (no B-frames) guarantees.
            x264_args(&mut cmd, &self.config);
            cmd.args(["-bf", "0", "-an", "-flush_packets", "1", "-f", "h264", "pipe:1"]);
        } else {
            cmd.args(["-f", "f32le", "-ar", &crate::audio::SAMPLE_RATE.to_string(), "-ac", "1", "-i"])
                .arg(AUDIO_INPUT)
                .args(["-map", "0:v:0", "-map", "1:a:0"]);
            x264_args(&mut cmd, &self.config);
            cmd.args(AAC);
            if self.config.stream.is_some() {
                cmd.args(["-flags", "+global_header", "-f", "tee"]).arg(tee_output(output));
            } else {
                cmd.args(["-movflags", "+faststart", "-f", "mp4"]).arg(output);
            }
        }
        cmd.get_args().map(|a| a.to_os_string()).collect()
    }

    fn start(&mut self, width: u32, height: u32) -> Result<()> {
        if width & 1 != 0 || height & 1 != 0 || width == 0 || height == 0 {
            return Err(PipelineError::Encode(format!("frame size {width}x{height} must be even and non-zero")));
        }
        let line = warm::Line {
            args: self.args(width, height),
            stdout: self.config.stream.is_some() || self.config.elementary.is_some(),
            audio: self.soundtrack.is_some(),
            dir: self.config.output.parent().map(Path::to_path_buf).unwrap_or_default(),
        };
        let (started, warm_output) = match warm::take(&line) {
            Some((started, path)) => (started, path),
            None => (line.spawn(&self.config.output)?, None),
        };
        let reader: Option<StdoutReader> = match (self.config.elementary.take(), self.config.stream.take()) {
            (Some(sink), _) => Some(Box::new(move |out| read_bytes(out, sink))),
            (None, Some(sink)) => Some(Box::new(move |out| read_fragments(out, sink))),
            (None, None) => None,
        };
        let ffmpeg = Ffmpeg::attach(started, reader, self.soundtrack.take())?;
        self.running = Some(Running { ffmpeg, width, height, line, warm_output });
        Ok(())
    }

    /// Close the video stream, wait for ffmpeg and check that it succeeded.
    pub fn finish(mut self) -> Result<usize> {
        let Some(run) = self.running.take() else {
            return Err(PipelineError::Encode("no frames were rendered".into()));
        };
        let finished = run.ffmpeg.finish();
        if let Some(path) = &run.warm_output {
            if finished.is_ok() {
                std::fs::rename(path, &self.config.output)
                    .map_err(|e| PipelineError::io(format!("move the video to {}", self.config.output.display()), e))?;
            } else {
                let _ = std::fs::remove_file(path);
            }
        }
        // The next encode with this command line finds an ffmpeg already started.
        warm::refill(&run.line);
        finished?;
        Ok(self.frames)
    }
}

impl FrameSink for Mp4Encoder {
    fn push(&mut self, frame: &RgbImage) -> Result<()> {
        if self.running.is_none() {
            self.start(frame.width, frame.height)?;
        }
        let Some(Running { ffmpeg, width, height, .. }) = self.running.as_ref() else {
            return Err(PipelineError::Encode("encoder is not running".into()));
        };
        if (frame.width, frame.height) != (*width, *height) {
            return Err(PipelineError::Encode(format!(
                "frame {}x{} differs from the stream's {}x{}",
                frame.width, frame.height, width, height
            )));
        }
        let mut buf = ffmpeg.buffer();
        super::yuv::rgb_to_i420(&frame.data, frame.width as usize, frame.height as usize, &mut buf);
        if !ffmpeg.send(buf) {
            let run = self.running.take().expect("running was just checked");
            if let Some(path) = &run.warm_output {
                let _ = std::fs::remove_file(path);
            }
            return Err(run.ffmpeg.fail());
        }
        self.frames += 1;
        Ok(())
    }
}

impl Drop for Mp4Encoder {
    fn drop(&mut self) {
        if let Some(run) = self.running.take() {
            drop(run.ffmpeg);
            if let Some(path) = &run.warm_output {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

fn write_frames(mut stdin: ChildStdin, rx: Receiver<Vec<u8>>, back: mpsc::Sender<Vec<u8>>) -> std::io::Result<()> {
    for buf in rx {
        stdin.write_all(&buf)?;
        let _ = back.send(buf);
    }
    stdin.flush()
}

/// Read ffmpeg's fragmented stdout and hand each finished piece to `sink`.
pub(crate) fn read_fragments(mut out: ChildStdout, mut sink: FragmentSink) -> Result<usize> {
    let mut splitter = FragmentSplitter::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut count = 0;
    loop {
        let n = out.read(&mut buf).map_err(|e| PipelineError::io("read the live stream from ffmpeg", e))?;
        if n == 0 {
            break;
        }
        for piece in splitter.push(&buf[..n]).map_err(|e| PipelineError::Encode(format!("live stream: {e}")))? {
            sink(piece);
            count += 1;
        }
    }
    if let Some(last) = splitter.finish() {
        sink(last);
        count += 1;
    }
    Ok(count)
}

/// Hand ffmpeg's stdout to `sink` as it arrives.
fn read_bytes(mut out: ChildStdout, mut sink: ByteSink) -> Result<usize> {
    let mut count = 0;
    loop {
        let mut buf = vec![0u8; 64 * 1024];
        let n = out.read(&mut buf).map_err(|e| PipelineError::io("read the H.264 stream from ffmpeg", e))?;
        if n == 0 {
            return Ok(count);
        }
        buf.truncate(n);
        sink(buf);
        count += 1;
    }
}

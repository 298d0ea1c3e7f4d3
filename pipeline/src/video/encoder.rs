//! H.264 + AAC MP4 encoding through an `ffmpeg` child process: raw RGB frames are streamed to its
//! stdin from a writer thread (so rendering and encoding overlap), the audio comes from a small
//! raw f32 file next to the output, and the MP4 gets `+faststart`. With a live stream, one encode
//! feeds ffmpeg's tee muxer: the faststart file and a fragmented MP4 on stdout (a keyframe and a
//! fragment at every chunk start), split into fragments by a reader thread as they are written.

use super::fmp4::{Fragment, FragmentSplitter};
use crate::audio::AudioClip;
use crate::engine::{FrameSink, Quality};
use crate::error::{PipelineError, Result};
use crate::image::RgbImage;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
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

/// What the encoder needs to know up front.
pub struct EncoderConfig {
    pub output: PathBuf,
    pub quality: Quality,
    /// x264 preset (default `veryfast`).
    pub preset: String,
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
}

impl EncoderConfig {
    pub fn new(output: &Path, quality: Quality) -> Self {
        Self {
            output: output.to_path_buf(),
            quality,
            preset: "veryfast".into(),
            stream: None,
            keyframes: Vec::new(),
            zero_latency: false,
            constant_quantizer: false,
        }
    }
}

/// Escape a path for a tee muxer slave (its separators are `|`, `[`, `]` and `\`).
fn tee_escape(path: &Path) -> String {
    let mut out = String::new();
    for c in path.to_string_lossy().chars() {
        if matches!(c, '|' | '[' | ']' | '\\' | '\'') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A running ffmpeg process fed by a writer thread.
struct Running {
    child: Child,
    width: u32,
    height: u32,
    tx: Option<SyncSender<Vec<u8>>>,
    recycled: Receiver<Vec<u8>>,
    writer: Option<JoinHandle<std::io::Result<()>>>,
    stderr: Option<JoinHandle<Vec<u8>>>,
    /// Live stream reader: fragments published, or why the stream broke.
    reader: Option<JoinHandle<Result<usize>>>,
}

/// MP4 encoder; starts ffmpeg on the first frame (when the frame size is known).
pub struct Mp4Encoder {
    config: EncoderConfig,
    audio_path: PathBuf,
    running: Option<Running>,
    frames: usize,
}

impl Mp4Encoder {
    /// Prepare an encoder writing `config.output` with `audio` as its soundtrack.
    pub fn new(config: EncoderConfig, audio: &AudioClip) -> Result<Self> {
        let mut audio_path = config.output.clone().into_os_string();
        audio_path.push(".audio.f32");
        let audio_path = PathBuf::from(audio_path);
        let bytes: Vec<u8> = audio.samples.iter().flat_map(|s| s.to_le_bytes()).collect();
        std::fs::write(&audio_path, bytes).map_err(|e| PipelineError::io("write the soundtrack for ffmpeg", e))?;
        Ok(Self { config, audio_path, running: None, frames: 0 })
    }

    /// Frames accepted so far.
    pub fn frames(&self) -> usize {
        self.frames
    }

    fn start(&mut self, width: u32, height: u32) -> Result<()> {
        if width & 1 != 0 || height & 1 != 0 || width == 0 || height == 0 {
            return Err(PipelineError::Encode(format!("frame size {width}x{height} must be even and non-zero")));
        }
        let mut cmd = Command::new("ffmpeg");
        cmd.args(["-nostdin", "-hide_banner", "-loglevel", "error", "-y"])
            .args(["-f", "rawvideo", "-pix_fmt", "rgb24", "-s", &format!("{width}x{height}")])
            .args(["-framerate", &FPS.to_string(), "-i", "pipe:0"])
            .args(["-f", "f32le", "-ar", &crate::audio::SAMPLE_RATE.to_string(), "-ac", "1", "-i"])
            .arg(&self.audio_path)
            .args(["-map", "0:v:0", "-map", "1:a:0"])
            .args(["-c:v", "libx264", "-preset", &self.config.preset])
            .args([if self.config.constant_quantizer { "-qp" } else { "-crf" }, &crf(self.config.quality).to_string()])
            .args(["-pix_fmt", "yuv420p", "-r", &FPS.to_string()]);
        if !self.config.keyframes.is_empty() {
            let times: Vec<String> =
                self.config.keyframes.iter().map(|&f| format!("{:.3}", f as f64 / FPS as f64)).collect();
            cmd.args(["-force_key_frames", &times.join(",")]).args(["-g", "100000", "-sc_threshold", "0"]);
        }
        cmd.args(["-c:a", "aac", "-b:a", "96k"]);
        let live = self.config.stream.is_some();
        if live || self.config.zero_latency {
            // Live: a fragment is complete as soon as the next chunk's keyframe is encoded.
            cmd.args(["-tune", "zerolatency"]);
        }
        if live {
            cmd.args(["-flags", "+global_header", "-f", "tee"]).arg(format!(
                "[f=mp4:movflags=+faststart]{}|[f=mp4:movflags=+frag_keyframe+empty_moov+default_base_moof:flush_packets=1]pipe:1",
                tee_escape(&self.config.output)
            ));
        } else {
            cmd.args(["-movflags", "+faststart", "-f", "mp4"]).arg(&self.config.output);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(if live { Stdio::piped() } else { Stdio::null() })
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| PipelineError::io("start ffmpeg (is it installed?)", e))?;
        let reader = match (self.config.stream.take(), child.stdout.take()) {
            (Some(sink), Some(out)) => Some(
                std::thread::Builder::new()
                    .name("ffmpeg-fragments".into())
                    .spawn(move || read_fragments(out, sink))
                    .map_err(|e| PipelineError::io("spawn the fragment reader", e))?,
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
        self.running = Some(Running {
            child,
            width,
            height,
            tx: Some(tx),
            recycled,
            writer: Some(writer),
            stderr: Some(stderr),
            reader,
        });
        Ok(())
    }

    /// Close the video stream, wait for ffmpeg and check that it succeeded.
    pub fn finish(mut self) -> Result<usize> {
        let Some(mut run) = self.running.take() else {
            return Err(PipelineError::Encode("no frames were rendered".into()));
        };
        drop(run.tx.take());
        let write_result = run.writer.take().map(|w| w.join());
        let status = run.child.wait().map_err(|e| PipelineError::io("wait for ffmpeg", e))?;
        let stderr = run.stderr.take().and_then(|h| h.join().ok()).unwrap_or_default();
        let log = String::from_utf8_lossy(&stderr).trim().chars().take(600).collect::<String>();
        if !status.success() {
            return Err(PipelineError::Encode(format!("ffmpeg exited with {status}: {log}")));
        }
        match write_result {
            Some(Ok(Ok(()))) | None => {}
            Some(Ok(Err(e))) => {
                return Err(PipelineError::Encode(format!("writing frames to ffmpeg failed: {e}; {log}")))
            }
            Some(Err(_)) => return Err(PipelineError::Encode("the frame writer thread panicked".into())),
        }
        match run.reader.take().map(|r| r.join()) {
            None | Some(Ok(Ok(_))) => {}
            Some(Ok(Err(e))) => return Err(e),
            Some(Err(_)) => return Err(PipelineError::Encode("the fragment reader thread panicked".into())),
        }
        Ok(self.frames)
    }

    fn fail(&mut self) -> PipelineError {
        // The writer stopped: ffmpeg died. Collect its reason.
        if let Some(mut run) = self.running.take() {
            drop(run.tx.take());
            let _ = run.child.kill();
            let _ = run.child.wait();
            let _ = run.writer.take().map(|w| w.join());
            let _ = run.reader.take().map(|r| r.join());
            let stderr = run.stderr.take().and_then(|h| h.join().ok()).unwrap_or_default();
            let log = String::from_utf8_lossy(&stderr).trim().chars().take(600).collect::<String>();
            return PipelineError::Encode(format!("ffmpeg stopped accepting frames: {log}"));
        }
        PipelineError::Encode("encoder is not running".into())
    }
}

impl FrameSink for Mp4Encoder {
    fn push(&mut self, frame: &RgbImage) -> Result<()> {
        if self.running.is_none() {
            self.start(frame.width, frame.height)?;
        }
        let Some(run) = self.running.as_mut() else {
            return Err(PipelineError::Encode("encoder is not running".into()));
        };
        if (frame.width, frame.height) != (run.width, run.height) {
            return Err(PipelineError::Encode(format!(
                "frame {}x{} differs from the stream's {}x{}",
                frame.width, frame.height, run.width, run.height
            )));
        }
        let mut buf = run.recycled.try_recv().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(&frame.data);
        let sent = run.tx.as_ref().map(|tx| tx.send(buf).is_ok()).unwrap_or(false);
        if !sent {
            return Err(self.fail());
        }
        self.frames += 1;
        Ok(())
    }
}

impl Drop for Mp4Encoder {
    fn drop(&mut self) {
        if let Some(mut run) = self.running.take() {
            drop(run.tx.take());
            let _ = run.child.kill();
            let _ = run.child.wait();
            let _ = run.writer.take().map(|w| w.join());
            let _ = run.reader.take().map(|r| r.join());
        }
        let _ = std::fs::remove_file(&self.audio_path);
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
fn read_fragments(mut out: std::process::ChildStdout, mut sink: FragmentSink) -> Result<usize> {
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

//! One face renderer shared by every session rendering on its device, with passes batched across
//! sessions. A session queues its next frames ([`SharedRenderer::render`]) and takes the renderer;
//! whoever holds it runs one generator pass over the frames of every session waiting in the queue
//! (in arrival order, up to the device's batch size) and leaves each session its own frames. A
//! session that finds the renderer busy sleeps until that turn ends, then takes its frames if the
//! pass carried them, or runs the next pass itself. No extra thread: the sessions' own threads
//! take turns running the passes (flat combining), and while one pass runs, the other sessions
//! turn their last frames into video and queue their next ones for the pass after it.
//!
//! A pass of one session renders exactly as before; a pass over several gives every frame its
//! own source row ([`PreparedSource::rows`]), whose per-voxel arithmetic is the lone pass's. A
//! session's frames come back in order because it queues its next frames only after the last
//! came back. On the CPU the batch size is one frame, so sessions take turns frame by frame and
//! nothing is batched (batching is slower there, see [`FaceRenderer::batch_size`]).

use super::keypoints::PoseOverride;
use super::renderer::{FaceRenderer, PreparedSource};
use crate::{PipelineError, Result};
use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, TryLockError};
use std::time::Duration;
use tch::{Kind, Tensor};

/// What the shared passes did so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PassStats {
    pub passes: u64,
    pub frames: u64,
    /// Passes that rendered frames of more than one session.
    pub shared_passes: u64,
}

/// A session's frames waiting for a pass. tch tensors are `Send` but not `Sync`, so the request
/// and the result each sit behind a lock.
struct Waiting {
    frames: i64,
    /// The session's frames per pass at most (its device batch size).
    most: i64,
    request: Mutex<Option<Request>>,
    result: Mutex<Option<Result<Tensor>>>,
}

struct Request {
    source: PreparedSource,
    targets: Tensor,
}

/// See the module docs.
pub struct SharedRenderer {
    renderer: Mutex<FaceRenderer>,
    queue: Mutex<VecDeque<Arc<Waiting>>>,
    /// Counts the turns with the renderer; sessions that found it busy wait for the next count.
    turns: Mutex<u64>,
    turn_done: Condvar,
    passes: AtomicU64,
    frames: AtomicU64,
    shared_passes: AtomicU64,
}

impl std::fmt::Debug for SharedRenderer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedRenderer").field("stats", &self.stats()).finish_non_exhaustive()
    }
}

/// A lock whose holder panicked is taken over: a pass only reads the weights, and every waiting
/// session of a pass that panicked was given its error before the panic left the pass.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl SharedRenderer {
    pub fn new(renderer: FaceRenderer) -> Self {
        Self {
            renderer: Mutex::new(renderer),
            queue: Mutex::new(VecDeque::new()),
            turns: Mutex::new(0),
            turn_done: Condvar::new(),
            passes: AtomicU64::new(0),
            frames: AtomicU64::new(0),
            shared_passes: AtomicU64::new(0),
        }
    }

    /// Use the renderer alone (source preparation; no pass runs meanwhile).
    pub fn with<T>(&self, f: impl FnOnce(&FaceRenderer) -> T) -> T {
        let out = f(&lock(&self.renderer));
        self.turn_ended();
        out
    }

    /// Wake the sessions that found the renderer busy (their frames may be done, or it is free).
    fn turn_ended(&self) {
        *lock(&self.turns) += 1;
        self.turn_done.notify_all();
    }

    pub fn stats(&self) -> PassStats {
        PassStats {
            passes: self.passes.load(Ordering::Relaxed),
            frames: self.frames.load(Ordering::Relaxed),
            shared_passes: self.shared_passes.load(Ordering::Relaxed),
        }
    }

    /// Sessions whose frames wait for a pass.
    pub fn waiting(&self) -> usize {
        lock(&self.queue).len()
    }

    /// Render the frames of driving windows `targets` (n, nc, 27) against `source`, in a pass of
    /// at most `most` frames that may carry other sessions' frames too; (n, 3, S, S) float32 on
    /// the renderer's device. `n` must not exceed `most`.
    pub fn render(&self, source: &PreparedSource, targets: &Tensor, most: usize) -> Result<Tensor> {
        let frames = targets.size().first().copied().unwrap_or(0);
        if frames < 1 || frames > most.max(1) as i64 {
            return Err(PipelineError::Internal(format!("{frames} frames for a pass of at most {most}")));
        }
        let waiting = Arc::new(Waiting {
            frames,
            most: most.max(1) as i64,
            request: Mutex::new(Some(Request { source: source.shallow_clone(), targets: targets.shallow_clone() })),
            result: Mutex::new(None),
        });
        lock(&self.queue).push_back(waiting.clone());
        loop {
            let seen = *lock(&self.turns);
            if let Some(out) = lock(&waiting.result).take() {
                return out;
            }
            let renderer = match self.renderer.try_lock() {
                Ok(r) => r,
                Err(TryLockError::Poisoned(p)) => p.into_inner(),
                Err(TryLockError::WouldBlock) => {
                    // Another session's pass (which may carry these frames) or a source
                    // preparation: wait for its turn to end. The timeout only guards against a
                    // wake-up lost to a bug; every turn ends with one.
                    let turns = lock(&self.turns);
                    let wait = self.turn_done.wait_timeout_while(turns, Duration::from_millis(200), |t| *t == seen);
                    drop(wait.unwrap_or_else(std::sync::PoisonError::into_inner));
                    continue;
                }
            };
            self.pass(&renderer);
            drop(renderer);
            self.turn_ended();
        }
    }

    /// One pass over the sessions at the head of the queue (called holding the renderer).
    fn pass(&self, renderer: &FaceRenderer) {
        let taken: Vec<(Arc<Waiting>, Request)> = {
            let mut queue = lock(&self.queue);
            let mut taken = Vec::new();
            let (mut frames, mut most) = (0, None);
            while let Some(next) = queue.front() {
                // The pass is as big as its first session's device batch size allows.
                let most = *most.get_or_insert(next.most);
                if !taken.is_empty() && frames + next.frames > most {
                    break;
                }
                let Some(next) = queue.pop_front() else { break };
                frames += next.frames;
                let request = lock(&next.request).take();
                if let Some(request) = request {
                    taken.push((next, request));
                }
            }
            taken
        };
        if taken.is_empty() {
            return;
        }
        let requests: Vec<&Request> = taken.iter().map(|(_, r)| r).collect();
        let outcome = catch_unwind(AssertUnwindSafe(|| run_pass(renderer, &requests)));
        let frames: i64 = taken.iter().map(|(w, _)| w.frames).sum();
        self.passes.fetch_add(1, Ordering::Relaxed);
        self.frames.fetch_add(frames as u64, Ordering::Relaxed);
        if taken.len() > 1 {
            self.shared_passes.fetch_add(1, Ordering::Relaxed);
        }
        match outcome {
            Ok(Ok(outputs)) => {
                for ((w, _), out) in taken.iter().zip(outputs) {
                    *lock(&w.result) = Some(Ok(out));
                }
            }
            Ok(Err(e)) => {
                let why = e.to_string();
                for (w, _) in &taken {
                    *lock(&w.result) = Some(Err(PipelineError::Internal(format!("a render pass failed: {why}"))));
                }
            }
            Err(panic) => {
                let what = panic_text(panic.as_ref());
                tracing::error!(panic = %what, sessions = taken.len(), "a shared render pass panicked");
                for (w, _) in &taken {
                    *lock(&w.result) = Some(Err(PipelineError::ModelPanic(format!("render pass: {what}"))));
                }
            }
        }
    }
}

/// The generator pass for `requests` in order: each session's frames, (n, 3, S, S) float32.
fn run_pass(renderer: &FaceRenderer, requests: &[&Request]) -> Result<Vec<Tensor>> {
    let keypoints = |r: &Request| renderer.driving_keypoints(&r.source, &r.targets, &PoseOverride::default()).value;
    if let [one] = requests {
        let kp = keypoints(one);
        return Ok(vec![renderer.render_keypoints(&one.source, &kp).prediction.to_kind(Kind::Float)]);
    }
    let kp: Vec<Tensor> = requests.iter().map(|r| keypoints(r)).collect();
    let sizes: Vec<i64> = kp.iter().map(|k| k.size()[0]).collect();
    let parts: Vec<(&PreparedSource, i64)> = requests.iter().zip(&sizes).map(|(r, n)| (&r.source, *n)).collect();
    let source = PreparedSource::rows(&parts);
    let kp = Tensor::f_cat(&kp, 0).map_err(|e| PipelineError::Internal(format!("driving keypoints: {e}")))?;
    let frames = renderer.render_keypoints(&source, &kp).prediction.to_kind(Kind::Float);
    frames
        .f_split_with_sizes(sizes.as_slice(), 0)
        .map_err(|e| PipelineError::Internal(format!("splitting a pass: {e}")))
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

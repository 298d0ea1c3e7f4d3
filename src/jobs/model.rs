//! One OS thread per compute device owns the model work: async code sends it closures over a
//! bounded channel and awaits the reply, so tensors never block the async runtime. A panic inside
//! a closure becomes a typed error ([`PipelineError::ModelPanic`], the per-job panic boundary),
//! not a dead thread; the owner's `after_panic` hook then runs on the same thread (the device
//! owner rebuilds its engines there, see `crate::devices`).
//!
//! Sessions of an engine that shares its models between sessions itself
//! ([`Engine::concurrent_sessions`]: the sadtalker renderer batches frames across sessions) run
//! beside the owner thread instead, each on a blocking thread with the same panic boundary
//! ([`ModelThread::run_session`]), so that they meet in the engine's passes.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use vipavatar_pipeline::engine::Engine;
use vipavatar_pipeline::PipelineError;

type Task = Box<dyn FnOnce() -> bool + Send>;

/// Runs on the model thread after a call panicked.
pub type AfterPanic = Box<dyn FnMut() + Send>;

/// How a model thread behaves beyond running closures.
#[derive(Default)]
pub struct ThreadOptions {
    /// Called on the thread after a call panicked (before the next call runs).
    pub after_panic: Option<AfterPanic>,
    /// Tests only: the N-th call (1-based) panics before running its closure.
    pub panic_at_call: Option<u64>,
}

#[derive(Clone)]
pub struct ModelThread {
    tx: mpsc::Sender<Task>,
    name: String,
    calls: Arc<AtomicU64>,
    panic_at_call: Option<u64>,
}

impl ModelThread {
    /// Spawn the thread; it exits when every handle is dropped.
    pub fn spawn(name: &str) -> std::io::Result<Self> {
        Self::spawn_with(name, ThreadOptions::default())
    }

    /// Spawn the thread with an after-panic hook (and, in tests, a planned panic).
    pub fn spawn_with(name: &str, options: ThreadOptions) -> std::io::Result<Self> {
        let (tx, mut rx) = mpsc::channel::<Task>(4);
        let mut after_panic = options.after_panic;
        std::thread::Builder::new().name(name.to_string()).spawn(move || {
            while let Some(task) = rx.blocking_recv() {
                let panicked = task();
                if let (true, Some(hook)) = (panicked, after_panic.as_mut()) {
                    if catch_unwind(AssertUnwindSafe(&mut *hook)).is_err() {
                        tracing::error!("the after-panic hook panicked itself");
                    }
                }
            }
        })?;
        Ok(Self {
            tx,
            name: name.to_string(),
            calls: Arc::new(AtomicU64::new(0)),
            panic_at_call: options.panic_at_call,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Run `f` on the model thread and wait for its result.
    pub async fn run<T, F>(&self, f: F) -> Result<T, PipelineError>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T, PipelineError> + Send + 'static,
    {
        let (reply, wait) = oneshot::channel();
        let span = tracing::Span::current();
        let call = self.calls.fetch_add(1, Ordering::Relaxed) + 1;
        let planned_panic = self.panic_at_call == Some(call);
        let task: Task = Box::new(move || {
            let _enter = span.enter();
            let (out, panicked) = guarded(move || {
                if planned_panic {
                    panic!("planned test panic at model call {call}");
                }
                f()
            });
            let _ = reply.send(out);
            panicked
        });
        let gone = || PipelineError::Internal(format!("model thread {} has stopped", self.name));
        self.tx.send(task).await.map_err(|_| gone())?;
        wait.await.map_err(|_| gone())?
    }

    /// Run a whole session of `engine`: on the model thread, or, when the engine shares its
    /// models between sessions itself, on a blocking thread of its own beside it.
    pub async fn run_session<T, F>(&self, engine: &dyn Engine, f: F) -> Result<T, PipelineError>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T, PipelineError> + Send + 'static,
    {
        if !engine.concurrent_sessions() {
            return self.run(f).await;
        }
        let span = tracing::Span::current();
        let session = tokio::task::spawn_blocking(move || {
            let _enter = span.enter();
            guarded(f).0
        });
        session.await.map_err(|e| PipelineError::Internal(format!("session thread: {e}")))?
    }
}

/// `f`'s result, a panic turned into [`PipelineError::ModelPanic`]; and whether it panicked.
fn guarded<T>(f: impl FnOnce() -> Result<T, PipelineError>) -> (Result<T, PipelineError>, bool) {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(out) => (out, false),
        Err(panic) => {
            let what = super::panic_message(panic.as_ref());
            tracing::error!(panic = %what, "a model call panicked");
            (Err(PipelineError::ModelPanic(what)), true)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_closures_and_turns_panics_into_errors() {
        let t = ModelThread::spawn("model-test").unwrap();
        assert_eq!(t.run(|| Ok(2 + 2)).await.unwrap(), 4);
        let name = t.run(|| Ok(std::thread::current().name().map(String::from))).await.unwrap();
        assert_eq!(name.as_deref(), Some("model-test"));
        let err = t.run::<(), _>(|| panic!("boom")).await.unwrap_err();
        assert!(matches!(err, PipelineError::ModelPanic(_)), "{err}");
        assert!(err.to_string().contains("boom"), "{err}");
        // The thread survives a panic.
        assert_eq!(t.run(|| Ok(1)).await.unwrap(), 1);
    }

    #[tokio::test]
    async fn after_panic_hook_runs_on_the_thread_and_planned_panics_hit_one_call() {
        let hooks = Arc::new(AtomicU64::new(0));
        let h = hooks.clone();
        let options = ThreadOptions {
            after_panic: Some(Box::new(move || {
                assert_eq!(std::thread::current().name(), Some("model-hook"));
                h.fetch_add(1, Ordering::SeqCst);
            })),
            panic_at_call: Some(2),
        };
        let t = ModelThread::spawn_with("model-hook", options).unwrap();
        assert_eq!(t.run(|| Ok(1)).await.unwrap(), 1);
        let err = t.run(|| Ok(2)).await.unwrap_err();
        assert_eq!(err.code(), "model_panicked");
        assert_eq!(t.run(|| Ok(3)).await.unwrap(), 3);
        assert_eq!(hooks.load(Ordering::SeqCst), 1, "the hook runs once, after the panicking call");
    }

    /// An engine that only says whether its sessions run side by side.
    struct Sessions(bool);

    impl Engine for Sessions {
        fn kind(&self) -> vipavatar_pipeline::engine::EngineKind {
            vipavatar_pipeline::engine::EngineKind::Sadtalker
        }
        fn check_options(&self, _: &vipavatar_pipeline::engine::GenerateOptions) -> Result<(), PipelineError> {
            Ok(())
        }
        fn prepare(
            &self,
            _: &vipavatar_pipeline::engine::AvatarInput<'_>,
            _: u32,
        ) -> Result<vipavatar_pipeline::engine::PreparedAvatar, PipelineError> {
            Err(PipelineError::Internal("not a real engine".into()))
        }
        fn audio_features(&self, _: &vipavatar_pipeline::audio::AudioClip) -> Result<Vec<u8>, PipelineError> {
            Err(PipelineError::Internal("not a real engine".into()))
        }
        fn motion(
            &self,
            _: &vipavatar_pipeline::engine::PreparedAvatar,
            _: &[u8],
            _: &vipavatar_pipeline::engine::GenerateOptions,
        ) -> Result<Vec<u8>, PipelineError> {
            Err(PipelineError::Internal("not a real engine".into()))
        }
        fn render(
            &self,
            _: &vipavatar_pipeline::engine::AvatarInput<'_>,
            _: &vipavatar_pipeline::engine::PreparedAvatar,
            _: &[u8],
            _: &vipavatar_pipeline::engine::GenerateOptions,
            _: &mut dyn vipavatar_pipeline::engine::FrameSink,
            _: &mut dyn FnMut(usize, usize),
        ) -> Result<vipavatar_pipeline::engine::RenderStats, PipelineError> {
            Err(PipelineError::Internal("not a real engine".into()))
        }
        fn concurrent_sessions(&self) -> bool {
            self.0
        }
        fn stream<'a>(
            &'a self,
            _: vipavatar_pipeline::engine::AvatarInput<'a>,
            _: &'a vipavatar_pipeline::engine::PreparedAvatar,
            _: vipavatar_pipeline::engine::MotionInput<'a>,
            _: &'a vipavatar_pipeline::engine::GenerateOptions,
        ) -> Result<vipavatar_pipeline::engine::StreamParts<'a>, PipelineError> {
            Err(PipelineError::Internal("not a real engine".into()))
        }
    }

    /// A session that tells the other it started, then waits (up to 5 s) to hear the same.
    fn meets(
        tx: std::sync::mpsc::Sender<()>,
        rx: std::sync::mpsc::Receiver<()>,
    ) -> impl FnOnce() -> Result<bool, PipelineError> {
        move || {
            let _ = tx.send(());
            Ok(rx.recv_timeout(std::time::Duration::from_secs(5)).is_ok())
        }
    }

    #[tokio::test]
    async fn sessions_of_a_sharing_engine_run_side_by_side_and_others_take_turns() {
        let t = ModelThread::spawn("model-sessions").unwrap();
        for shares in [true, false] {
            let engine = Sessions(shares);
            let (a_tx, a_rx) = std::sync::mpsc::channel();
            let (b_tx, b_rx) = std::sync::mpsc::channel();
            // On one thread the first session waits out its 5 s alone (the second then finds
            // the first one's word, long after it ended).
            let (a, b) =
                tokio::join!(t.run_session(&engine, meets(a_tx, b_rx)), t.run_session(&engine, meets(b_tx, a_rx)));
            let met = (a.unwrap(), b.unwrap());
            assert_eq!(met.0 && met.1, shares, "concurrent_sessions = {shares}: {met:?}");
        }
        // The panic boundary holds beside the model thread too.
        let err = t.run_session::<(), _>(&Sessions(true), || panic!("session boom")).await.unwrap_err();
        assert!(matches!(err, PipelineError::ModelPanic(_)), "{err}");
        let name = t.run_session(&Sessions(true), || Ok(std::thread::current().name().map(String::from))).await;
        assert_ne!(
            name.unwrap().as_deref(),
            Some("model-sessions"),
            "a sharing engine's session ran on the model thread"
        );
    }
}

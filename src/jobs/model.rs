//! One OS thread per compute device owns the model work: async code sends it closures over a
//! bounded channel and awaits the reply, so tensors never block the async runtime. A panic inside
//! a closure becomes a typed error ([`PipelineError::ModelPanic`], the per-job panic boundary),
//! not a dead thread; the owner's `after_panic` hook then runs on the same thread (the device
//! owner rebuilds its engines there, see `crate::devices`).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
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
            let run = move || {
                if planned_panic {
                    panic!("planned test panic at model call {call}");
                }
                f()
            };
            let (out, panicked) = match catch_unwind(AssertUnwindSafe(run)) {
                Ok(out) => (out, false),
                Err(panic) => {
                    let what = super::panic_message(panic.as_ref());
                    tracing::error!(panic = %what, "a model call panicked");
                    (Err(PipelineError::ModelPanic(what)), true)
                }
            };
            let _ = reply.send(out);
            panicked
        });
        let gone = || PipelineError::Internal(format!("model thread {} has stopped", self.name));
        self.tx.send(task).await.map_err(|_| gone())?;
        wait.await.map_err(|_| gone())?
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
}

//! One OS thread per worker owns the model work: async code sends it closures over a bounded
//! channel and awaits the reply, so tensors never block the async runtime. A panic inside a
//! closure becomes a typed error (the per-job panic boundary), not a dead thread.

use std::panic::{catch_unwind, AssertUnwindSafe};
use tokio::sync::{mpsc, oneshot};
use vipavatar_pipeline::PipelineError;

type Task = Box<dyn FnOnce() + Send>;

#[derive(Clone)]
pub struct ModelThread {
    tx: mpsc::Sender<Task>,
    name: String,
}

impl ModelThread {
    /// Spawn the thread; it exits when every handle is dropped.
    pub fn spawn(name: &str) -> std::io::Result<Self> {
        let (tx, mut rx) = mpsc::channel::<Task>(4);
        std::thread::Builder::new().name(name.to_string()).spawn(move || {
            while let Some(task) = rx.blocking_recv() {
                task();
            }
        })?;
        Ok(Self { tx, name: name.to_string() })
    }

    /// Run `f` on the model thread and wait for its result.
    pub async fn run<T, F>(&self, f: F) -> Result<T, PipelineError>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T, PipelineError> + Send + 'static,
    {
        let (reply, wait) = oneshot::channel();
        let span = tracing::Span::current();
        let task: Task = Box::new(move || {
            let _enter = span.enter();
            let out = catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|panic| {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                Err(PipelineError::Internal(format!("model code panicked: {what}")))
            });
            let _ = reply.send(out);
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
        assert!(err.to_string().contains("boom"), "{err}");
        // The thread survives a panic.
        assert_eq!(t.run(|| Ok(1)).await.unwrap(), 1);
    }
}

//! vipavatar: the talking-head video service (HTTP API, Redis-backed cache and job queue,
//! workers) and its CLI. `main.rs` only parses arguments and calls [`cli::run`].

pub mod api;
pub mod blobs;
pub mod cli;
pub mod config;
pub mod devices;
pub mod engines;
pub mod erase;
pub mod errors;
pub mod fetch;
pub mod jobs;
pub mod performance;
pub mod process;
pub mod records;
pub mod redis_server;
pub mod redis_watch;
pub mod startup;
pub mod state;
pub mod telemetry;
pub mod webhooks;

pub use config::Config;
pub use startup::Application;
/// Validated identifiers (content hashes and session ids).
pub use vipavatar_cache::{AudioHash, ImageHash, SessionId};

/// Spawn a task whose logs carry its name (`task=...`).
pub fn spawn_named<F>(name: &str, fut: F) -> tokio::task::JoinHandle<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    use tracing::Instrument;
    tokio::spawn(fut.instrument(tracing::info_span!("task", name = %name)))
}

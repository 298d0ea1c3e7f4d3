//! Shared state of the HTTP API (cloned into every actix worker).

use crate::blobs::BlobStore;
use crate::config::Config;
use crate::engines::EngineState;
use crate::jobs::JobQueue;
use crate::redis_watch::RedisHealth;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::watch;
use vipavatar_cache::{Cache, FragmentStreams};

#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub cache: Cache,
    pub queue: JobQueue,
    pub blobs: BlobStore,
    /// Live video streams (fragments in Redis).
    pub streams: FragmentStreams,
    /// Server-side fetches of client-given URLs, behind the address guard.
    pub fetcher: crate::fetch::Fetcher,
    pub engines: watch::Receiver<EngineState>,
    /// This process's device owners and their workers (empty for an API-only node).
    pub devices: crate::devices::LocalDevices,
    pub started: Instant,
    /// Workers running in this process (0 for an API-only node).
    pub local_workers: usize,
    /// Whether Redis answered its last PING (requests fail fast while it does not).
    pub redis: RedisHealth,
}

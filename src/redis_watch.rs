//! Whether Redis is reachable, known without waiting: a background task PINGs it twice a second
//! (each PING bounded by the Redis timeout), and request paths that need Redis answer
//! `503 redis_unavailable` at once while it is known to be down, instead of each waiting out
//! its own timeout. Also builds the connection manager with those timeouts.

use crate::errors::{ApiError, Code};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How often the watcher PINGs.
const EVERY: Duration = Duration::from_millis(500);

/// Connection manager settings for request paths: every reply and every (re)connection attempt
/// bounded by `timeout`, one quick retry, so a call never waits much longer than `2 * timeout`.
pub fn manager_config(timeout: Duration) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_response_timeout(timeout)
        .set_connection_timeout(timeout)
        .set_number_of_retries(1)
        .set_factor(50)
        .set_max_delay(200)
}

/// Open a connection manager with [`manager_config`], retrying for up to `patience` (Redis may
/// still be starting).
pub async fn connect(
    client: &redis::Client,
    timeout: Duration,
    patience: Duration,
) -> redis::RedisResult<ConnectionManager> {
    let start = Instant::now();
    loop {
        match client.get_connection_manager_with_config(manager_config(timeout)).await {
            Ok(c) => return Ok(c),
            Err(e) if start.elapsed() >= patience => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Shared "Redis answered the last PING" flag.
#[derive(Clone, Debug)]
pub struct RedisHealth(Arc<AtomicBool>);

impl Default for RedisHealth {
    fn default() -> Self {
        Self(Arc::new(AtomicBool::new(true)))
    }
}

impl RedisHealth {
    pub fn is_up(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// `Err(503 redis_unavailable)` while Redis is known to be down.
    pub fn check(&self) -> Result<(), ApiError> {
        if self.is_up() {
            Ok(())
        } else {
            Err(ApiError::new(Code::RedisUnavailable, "the job store (Redis) is unreachable; try again shortly")
                .retry_after(5))
        }
    }

    /// PING every half second until `shutdown`; log each change of state once.
    pub fn watch(conn: ConnectionManager, timeout: Duration, mut shutdown: watch::Receiver<bool>) -> Self {
        let health = Self::default();
        let flag = health.clone();
        crate::spawn_named("redis-watch", async move {
            let mut conn = conn;
            loop {
                let ping = tokio::time::timeout(timeout, redis::cmd("PING").query_async::<String>(&mut conn)).await;
                let up = matches!(ping, Ok(Ok(_)));
                let was = flag.0.swap(up, Ordering::Relaxed);
                match (was, up) {
                    (true, false) => {
                        let why = match ping {
                            Ok(Err(e)) => e.to_string(),
                            _ => format!("no answer within {} ms", timeout.as_millis()),
                        };
                        tracing::warn!(%why, "redis is unreachable; requests that need it answer 503 until it is back")
                    }
                    (false, true) => tracing::info!("redis is reachable again"),
                    _ => {}
                }
                tokio::select! {
                    _ = tokio::time::sleep(EVERY) => {}
                    _ = shutdown.changed() => return,
                }
            }
        });
        health
    }
}

//! The private `redis-server` child that `serve` starts when `REDIS_URL` is unset: a unix socket
//! (or a loopback port when the socket path would be too long), AOF on, data in the data dir.
//! Stopped with `SHUTDOWN` (which flushes the AOF) when the service exits.

use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

pub struct RedisChild {
    child: tokio::process::Child,
    url: String,
    dir: PathBuf,
}

/// Longest unix socket path the kernel accepts is 107 bytes; leave room.
const MAX_SOCKET_PATH: usize = 100;

impl RedisChild {
    /// Start `redis-server` with its files in `{data_dir}/redis` and wait until it answers PING.
    pub async fn start(data_dir: &Path) -> anyhow::Result<Self> {
        let dir = std::path::absolute(data_dir.join("redis")).context("resolve the data directory")?;
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let socket = dir.join("redis.sock");
        let mut cmd = tokio::process::Command::new("redis-server");
        cmd.arg("--dir").arg(&dir);
        cmd.args(["--appendonly", "yes", "--save", "", "--daemonize", "no", "--protected-mode", "yes"]);
        cmd.arg("--logfile").arg(dir.join("redis.log"));
        let url = if socket.as_os_str().len() <= MAX_SOCKET_PATH {
            let _ = std::fs::remove_file(&socket);
            cmd.args(["--port", "0", "--unixsocketperm", "700"]).arg("--unixsocket").arg(&socket);
            format!("redis+unix://{}", socket.display())
        } else {
            let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            cmd.args(["--bind", "127.0.0.1", "--port", &port.to_string()]);
            format!("redis://127.0.0.1:{port}")
        };
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).kill_on_drop(true);
        let child = cmd.spawn().context("start redis-server (install the redis-server package or set REDIS_URL)")?;
        let mut me = Self { child, url, dir };
        me.wait_ready().await?;
        tracing::info!(url = %me.url, dir = %me.dir.display(), "started private redis-server (AOF on)");
        Ok(me)
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let start = Instant::now();
        let client = redis::Client::open(self.url.as_str())?;
        loop {
            if let Some(status) = self.child.try_wait()? {
                let log = std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                bail!("redis-server exited with {status}: {}", tail.into_iter().rev().collect::<Vec<_>>().join(" | "));
            }
            if let Ok(mut conn) = client.get_multiplexed_async_connection().await {
                if redis::cmd("PING").query_async::<String>(&mut conn).await.is_ok() {
                    return Ok(());
                }
            }
            if start.elapsed() > Duration::from_secs(15) {
                bail!("redis-server did not answer within 15 s (log: {})", self.dir.join("redis.log").display());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Ask the server to shut down (flushing the AOF), then make sure the process is gone.
    pub async fn stop(mut self) {
        if let Ok(client) = redis::Client::open(self.url.as_str()) {
            if let Ok(mut conn) = client.get_multiplexed_async_connection().await {
                // The connection drops as the server exits, so an error reply is expected.
                let _ = redis::cmd("SHUTDOWN").query_async::<()>(&mut conn).await;
            }
        }
        match tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await {
            Ok(Ok(status)) => tracing::info!(%status, "private redis-server stopped"),
            _ => {
                tracing::warn!("private redis-server did not stop; killing it");
                let _ = self.child.kill().await;
            }
        }
    }
}

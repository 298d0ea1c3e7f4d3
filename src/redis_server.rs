//! The private `redis-server` child that `serve` starts when `REDIS_URL` is unset: a unix socket
//! (or a loopback port when the socket path would be too long), AOF on, data in the data dir.
//!
//! Its life is tied to the service: the data dir is locked (`flock`) first, so a second service
//! on the same dir exits; a stale child of the same dir (from a killed service) is stopped before
//! a new one starts; the child gets `PR_SET_PDEATHSIG` so it dies with us; a supervisor restarts
//! it (same files, same AOF, with backoff) when it exits unexpectedly; `stop` asks it to
//! `SHUTDOWN` (which flushes the AOF) and kills it if it does not answer.

use anyhow::{bail, Context};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use vipavatar_cache::server::{Listen, ServerOptions};

/// Longest unix socket path the kernel accepts is 107 bytes; leave room.
const MAX_SOCKET_PATH: usize = 100;
/// Name of the lock file in the data dir and of the child's pid file in `{data}/redis`.
const LOCK_FILE: &str = ".vipavatar.lock";
const PID_FILE: &str = "redis-server.pid";
/// Restart delays: doubling from the first to the last, reset after a minute of good health.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// An exclusive `flock` on `{data_dir}/.vipavatar.lock`, held while the service runs.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
    path: PathBuf,
}

impl DataDirLock {
    /// Lock `data_dir` or fail with a message naming the process that holds it.
    pub fn acquire(data_dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("create the data directory {}", data_dir.display()))?;
        let path = std::path::absolute(data_dir.join(LOCK_FILE)).context("resolve the data directory")?;
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("open {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                bail!(
                    "the data directory {} is in use by another vipavatar process (pid {}); stop it or choose another VIPAVATAR_DATA_DIR",
                    data_dir.display(),
                    holder.trim()
                );
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(e).with_context(|| format!("lock {}", path.display())),
        }
        file.set_len(0)?;
        write!(file, "{}", std::process::id())?;
        Ok(Self { _file: file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

pub struct RedisChild {
    url: String,
    dir: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    supervisor: Option<JoinHandle<()>>,
    _lock: DataDirLock,
}

impl RedisChild {
    /// Lock the data dir, stop a stale child of it, start `redis-server` with its files in
    /// `{data_dir}/redis`, wait until it answers PING, and supervise it.
    pub async fn start(data_dir: &Path) -> anyhow::Result<Self> {
        let lock = DataDirLock::acquire(data_dir)?;
        let dir = std::path::absolute(data_dir.join("redis")).context("resolve the data directory")?;
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        stop_stale(&dir).await;
        let socket = dir.join("redis.sock");
        let listen = if socket.as_os_str().len() <= MAX_SOCKET_PATH {
            Listen::Socket(socket)
        } else {
            Listen::Port(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
        };
        // The same command every time the supervisor restarts it.
        let spec = ServerOptions { dir: dir.clone(), listen, persistent: true };
        let child = spawn(&spec).await?;
        tracing::info!(url = %spec.url(), dir = %dir.display(), pid = child.id(), "started private redis-server (AOF on)");
        let (stop_tx, stop_rx) = oneshot::channel();
        let url = spec.url();
        let supervisor = crate::spawn_named("redis-supervisor", supervise(spec, child, stop_rx));
        Ok(Self { url, dir, stop: Some(stop_tx), supervisor: Some(supervisor), _lock: lock })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Ask the server to shut down (flushing the AOF), then make sure the process is gone.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.supervisor.take() {
            let _ = task.await;
        }
    }
}

/// Start the child and wait until it answers.
async fn spawn(spec: &ServerOptions) -> anyhow::Result<tokio::process::Child> {
    if let Listen::Socket(socket) = &spec.listen {
        let _ = std::fs::remove_file(socket);
    }
    let mut cmd = tokio::process::Command::from(spec.command());
    cmd.kill_on_drop(true);
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: only async-signal-safe calls (prctl, getppid, _exit) between fork and exec.
    // PR_SET_PDEATHSIG fires when the thread that forked exits; tokio's worker threads (where this
    // runs) live as long as the runtime, and the stale-child check covers the rest.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("start redis-server (install the redis-server package or set REDIS_URL)")?;
    if let Some(pid) = child.id() {
        let _ = std::fs::write(spec.dir.join(PID_FILE), pid.to_string());
    }
    wait_ready(spec, &mut child).await?;
    Ok(child)
}

async fn wait_ready(spec: &ServerOptions, child: &mut tokio::process::Child) -> anyhow::Result<()> {
    let start = Instant::now();
    let client = redis::Client::open(spec.url())?;
    loop {
        if let Some(status) = child.try_wait()? {
            let log = std::fs::read_to_string(spec.log_file()).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            bail!("redis-server exited with {status}: {}", tail.into_iter().rev().collect::<Vec<_>>().join(" | "));
        }
        if let Ok(Ok(mut conn)) =
            tokio::time::timeout(Duration::from_secs(1), client.get_multiplexed_async_connection()).await
        {
            if let Ok(Ok(_)) =
                tokio::time::timeout(Duration::from_secs(1), redis::cmd("PING").query_async::<String>(&mut conn)).await
            {
                return Ok(());
            }
        }
        if start.elapsed() > Duration::from_secs(15) {
            bail!("redis-server did not answer within 15 s (log: {})", spec.log_file().display());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Wait for the child; restart it when it exits unless asked to stop; stop it on request.
async fn supervise(spec: ServerOptions, mut child: tokio::process::Child, mut stop: oneshot::Receiver<()>) {
    let mut backoff = FIRST_BACKOFF;
    let mut started = Instant::now();
    loop {
        tokio::select! {
            status = child.wait() => {
                let status = status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                if started.elapsed() > Duration::from_secs(60) {
                    backoff = FIRST_BACKOFF;
                }
                tracing::error!(%status, retry_in_ms = backoff.as_millis() as u64, "private redis-server exited unexpectedly; restarting it");
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = &mut stop => return,
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    let restarted = tokio::select! {
                        r = spawn(&spec) => r,
                        _ = &mut stop => return,
                    };
                    match restarted {
                        Ok(c) => {
                            tracing::warn!(pid = c.id(), dir = %spec.dir.display(), "private redis-server restarted (same AOF)");
                            child = c;
                            started = Instant::now();
                            break;
                        }
                        Err(e) => tracing::error!(error = %format!("{e:#}"), retry_in_ms = backoff.as_millis() as u64, "restarting the private redis-server failed"),
                    }
                }
            }
            _ = &mut stop => {
                shutdown(&spec, &mut child).await;
                return;
            }
        }
    }
}

/// `SHUTDOWN` (flushes the AOF) with a short deadline, then SIGKILL if it is still there.
async fn shutdown(spec: &ServerOptions, child: &mut tokio::process::Child) {
    let mut asked = false;
    if let Ok(client) = redis::Client::open(spec.url()) {
        let ask = async {
            if let Ok(mut conn) = client.get_multiplexed_async_connection().await {
                // The connection drops as the server exits, so an error reply is expected.
                let _ = redis::cmd("SHUTDOWN").query_async::<()>(&mut conn).await;
            }
        };
        asked = tokio::time::timeout(Duration::from_secs(2), ask).await.is_ok();
    }
    // A server that took the SHUTDOWN is flushing its AOF: give it time. One that did not answer
    // (hung, or stopped) is killed at once.
    let grace = if asked { Duration::from_secs(10) } else { Duration::from_millis(300) };
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(Ok(status)) => tracing::info!(%status, "private redis-server stopped"),
        _ => {
            tracing::warn!("private redis-server did not stop; killing it");
            let _ = child.kill().await;
        }
    }
    let _ = std::fs::remove_file(spec.dir.join(PID_FILE));
}

/// A redis-server left running on `dir` by a service that died: stop it (SIGTERM, which
/// flushes the AOF; SIGKILL after 10 s). Only a redis-server working in this dir is touched.
async fn stop_stale(dir: &Path) {
    let Some(pid) = std::fs::read_to_string(dir.join(PID_FILE)).ok().and_then(|s| s.trim().parse::<i32>().ok()) else {
        return;
    };
    if !is_redis_of(pid, dir) {
        let _ = std::fs::remove_file(dir.join(PID_FILE));
        return;
    }
    tracing::warn!(pid, dir = %dir.display(), "stopping a stale private redis-server left by an earlier run");
    // SAFETY: plain kill(2) on a pid we just checked.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let start = Instant::now();
    while is_redis_of(pid, dir) {
        if start.elapsed() > Duration::from_secs(10) {
            tracing::warn!(pid, "the stale redis-server ignored SIGTERM; killing it");
            unsafe { libc::kill(pid, libc::SIGKILL) };
            tokio::time::sleep(Duration::from_millis(200)).await;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = std::fs::remove_file(dir.join(PID_FILE));
}

/// Whether `pid` is a live (not zombie) redis-server working in `dir` (redis-server changes
/// into its `--dir`; it rewrites its command line, so that cannot be used).
fn is_redis_of(pid: i32, dir: &Path) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()).unwrap_or("");
    if state.is_empty() || state == "Z" || state == "X" {
        return false;
    }
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
    let is_redis = comm.trim().starts_with("redis-server")
        || exe.file_name().is_some_and(|n| n.to_string_lossy().starts_with("redis-server"));
    is_redis && std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd == dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_dir_fails_with_the_holder() {
        let dir = std::env::temp_dir().join(format!("vipavatar-lock-{}", uuid::Uuid::new_v4().simple()));
        let first = DataDirLock::acquire(&dir).unwrap();
        let err = DataDirLock::acquire(&dir).unwrap_err().to_string();
        assert!(err.contains("in use by another vipavatar process"), "{err}");
        assert!(err.contains(&std::process::id().to_string()), "{err}");
        drop(first);
        DataDirLock::acquire(&dir).expect("free again once the holder is gone");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn only_a_redis_of_this_dir_counts_as_stale() {
        assert!(!is_redis_of(std::process::id() as i32, Path::new("/nowhere")));
        assert!(!is_redis_of(i32::MAX, Path::new("/nowhere")));
    }
}

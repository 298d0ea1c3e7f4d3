//! `vipavatar serve` without REDIS_URL starts its own redis-server (AOF on, data in the data
//! dir), serves from it, and stops it on exit; the child is supervised (restarted when killed),
//! dies with the service (even on kill -9), a stale one from an earlier run is stopped, the data
//! dir is locked against a second service, orphaned temporaries are swept at start-up, and
//! SIGTERM is prompt and clean even while Redis hangs.

use crate::helpers::repo;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A `vipavatar serve` process on a data dir, with its stderr collected.
struct Serve {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    url: String,
}

fn serve_command(data: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vipavatar"));
    cmd.args(["serve", "--workers", "0", "--bind", "127.0.0.1:0"])
        .env_remove("REDIS_URL")
        .env_remove("API_KEYS")
        .env("VIPAVATAR_DATA_DIR", data)
        .env("VIPAVATAR_CHECKPOINTS", repo().join("checkpoints"))
        .env("VIPAVATAR_ENGINE", "classic")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

impl Serve {
    /// Start and wait until `/healthz` answers (the log line `listening port=N` tells the port).
    async fn start(data: &Path) -> Self {
        let mut child = serve_command(data).spawn().expect("start vipavatar serve");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(port) = line
                    .split("port=")
                    .nth(1)
                    .and_then(|r| r.split_whitespace().next())
                    .and_then(|p| p.parse::<u16>().ok())
                {
                    let _ = tx.send(port);
                }
                lines.lock().unwrap().push(line);
            }
        });
        let port = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("serve never logged its port: {:?}", log.lock().unwrap()));
        let me = Self { child, log, url: format!("http://127.0.0.1:{port}") };
        me.wait_status("/healthz", 200, Duration::from_secs(30)).await;
        me
    }

    async fn status(&self, path: &str) -> Option<u16> {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
        client.get(format!("{}{path}", self.url)).send().await.ok().map(|r| r.status().as_u16())
    }

    async fn wait_status(&self, path: &str, want: u16, limit: Duration) {
        let start = Instant::now();
        while self.status(path).await != Some(want) {
            assert!(start.elapsed() < limit, "{path} never answered {want}; log: {:?}", self.log.lock().unwrap());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn logged(&self, what: &str) -> bool {
        self.log.lock().unwrap().iter().any(|l| l.contains(what))
    }

    fn signal(&self, sig: &str) {
        assert!(Command::new("kill").args([sig, &self.child.id().to_string()]).status().unwrap().success());
    }

    /// Wait for the process to exit; its status and how long it took.
    fn wait_exit(&mut self, limit: Duration) -> (std::process::ExitStatus, Duration) {
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return (s, start.elapsed());
            }
            assert!(start.elapsed() < limit, "serve did not exit within {limit:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn data_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", uuid::Uuid::new_v4().simple()))
}

fn redis_pid(data: &Path) -> Option<i32> {
    std::fs::read_to_string(data.join("redis/redis-server.pid")).ok()?.trim().parse().ok()
}

/// A live, non-zombie process.
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().next().map(String::from)))
        .is_some_and(|state| state != "Z" && state != "X")
}

fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "{what} (after {limit:?})");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn kill(sig: &str, pid: i32) {
    assert!(Command::new("kill").args([sig, &pid.to_string()]).status().unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_manages_a_private_redis() {
    let data = data_dir("private");
    let serve = Serve::start(&data).await;
    serve.wait_status("/readyz", 200, Duration::from_secs(60)).await;
    // The Redis it started is real, persistent (AOF) and lives in the data dir.
    let socket = data.join("redis/redis.sock");
    let redis = redis::Client::open(format!("redis+unix://{}", socket.display())).unwrap();
    let mut conn = redis.get_multiplexed_async_connection().await.expect("the private redis answers on its socket");
    let aof: Vec<String> = redis::cmd("CONFIG").arg("GET").arg("appendonly").query_async(&mut conn).await.unwrap();
    assert_eq!(aof, ["appendonly", "yes"]);
    assert_eq!(serve.status("/api/cache/stats").await, Some(200));
    assert!(data.join("redis/appendonlydir").is_dir(), "AOF files belong in the data dir");

    // At RUST_LOG=info, probe and status polls are not logged; other requests are.
    for path in
        ["/healthz", "/readyz", "/api/avatar/status/0000000000000000000000000000000000000000000000000000000000000000"]
    {
        serve.status(path).await;
    }
    wait_until(Duration::from_secs(5), "the stats request was not logged at INFO", || {
        serve.logged("path=/api/cache/stats")
    });
    for quiet in ["path=/healthz", "path=/readyz", "path=/api/avatar/status/"] {
        assert!(!serve.logged(quiet), "{quiet} logged at INFO: {:?}", serve.log.lock().unwrap());
    }

    // SIGTERM: the service exits cleanly and takes its redis-server with it.
    let mut serve = serve;
    serve.signal("-TERM");
    let (exit, _) = serve.wait_exit(Duration::from_secs(60));
    assert!(exit.success(), "{exit}");
    let gone = redis::Client::open(format!("redis+unix://{}", socket.display()))
        .unwrap()
        .get_multiplexed_async_connection()
        .await;
    assert!(gone.is_err(), "the private redis-server is still running after serve exited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_private_redis_is_supervised_locked_and_tied_to_the_service() {
    let data = data_dir("managed");
    let redis_dir = data.join("redis");
    std::fs::create_dir_all(data.join("tmp")).unwrap();
    std::fs::create_dir_all(&redis_dir).unwrap();

    // Left by a killed earlier run: a redis-server on this dir, and half-written temporaries of
    // an owner whose lock nobody holds any more.
    let mut stale = Command::new("redis-server")
        .args(["--port", "0", "--save", "", "--appendonly", "no", "--dir"])
        .arg(&redis_dir)
        .arg("--unixsocket")
        .arg(redis_dir.join("stale.sock"))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    std::fs::write(redis_dir.join("redis-server.pid"), stale.id().to_string()).unwrap();
    let dead_lock = data.join("tmp/00000000deadbeef.owner");
    std::fs::write(&dead_lock, b"").unwrap();
    std::fs::File::options()
        .write(true)
        .open(&dead_lock)
        .unwrap()
        .set_modified(std::time::SystemTime::now() - Duration::from_secs(600))
        .unwrap();
    let orphan = data.join("tmp/00000000deadbeef-0123456789abcdef0123456789abcdef.mp4.audio.f32");
    std::fs::write(&orphan, vec![0u8; 4096]).unwrap();

    let mut serve = Serve::start(&data).await;
    wait_until(Duration::from_secs(15), "the stale redis-server was not stopped", || {
        stale.try_wait().unwrap().is_some()
    });
    assert!(!orphan.exists() && !dead_lock.exists(), "orphaned temporaries survived the start-up sweep");
    assert!(serve.logged("removed orphaned temporary files"), "{:?}", serve.log.lock().unwrap());
    assert_eq!(serve.status("/api/cache/stats").await, Some(200));

    // A second service on the same dir exits at once with a clear message, and leaves the
    // first one's Redis alone.
    let first_pid = redis_pid(&data).expect("pid file");
    let second = serve_command(&data).output().expect("run a second serve");
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success());
    assert!(err.contains("in use by another vipavatar process"), "{err}");
    assert_eq!(redis_pid(&data), Some(first_pid));
    assert_eq!(serve.status("/api/cache/stats").await, Some(200));

    // kill -9 of the Redis child: reaped, restarted on the same files, logged, serving again.
    kill("-KILL", first_pid);
    wait_until(Duration::from_secs(15), "redis-server was not restarted", || {
        redis_pid(&data).is_some_and(|p| p != first_pid && alive(p))
    });
    assert!(!alive(first_pid), "the killed redis-server is left as a zombie");
    serve.wait_status("/api/cache/stats", 200, Duration::from_secs(15)).await;
    assert!(serve.logged("restarting it") && serve.logged("restarted"), "{:?}", serve.log.lock().unwrap());

    // SIGTERM while Redis hangs: prompt, clean (exit 0, no panic), and the child is gone.
    let hung = redis_pid(&data).unwrap();
    kill("-STOP", hung);
    tokio::time::sleep(Duration::from_secs(1)).await;
    serve.signal("-TERM");
    let (exit, took) = serve.wait_exit(Duration::from_secs(30));
    let _ = Command::new("kill").args(["-CONT", &hung.to_string()]).status();
    assert!(exit.success(), "{exit}: {:?}", serve.log.lock().unwrap());
    assert!(took < Duration::from_secs(10), "SIGTERM during an outage took {took:?}");
    assert!(!serve.logged("panicked"), "{:?}", serve.log.lock().unwrap());
    wait_until(Duration::from_secs(5), "redis-server outlived the service", || !alive(hung));

    // kill -9 of the service: its Redis dies with it (PR_SET_PDEATHSIG).
    let mut serve = Serve::start(&data).await;
    let pid = redis_pid(&data).unwrap();
    assert!(alive(pid));
    serve.signal("-KILL");
    serve.wait_exit(Duration::from_secs(10));
    wait_until(Duration::from_secs(10), "redis-server outlived a kill -9 of the service", || !alive(pid));
    let _ = stale.wait();
}

//! Redis outages on request paths: with the test's own redis-server stopped (SIGSTOP: it hangs)
//! or killed (it refuses), status, cache stats and upload answer `503 redis_unavailable` with
//! `Retry-After` within the Redis timeout instead of hanging, the probes tell the truth, and the
//! service recovers by itself when Redis is back.

use crate::helpers::{assert_error, ffmpeg, json, png_part, read, scratch, spawn_app_with, TestApp};
use reqwest::multipart::Form;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};
use vipavatar_cache::server::{wait_for_socket, ServerOptions};

/// A redis-server of this test alone, on a unix socket in a scratch dir; killed on drop.
struct OwnRedis {
    child: Child,
    dir: PathBuf,
}

impl OwnRedis {
    fn start(dir: &Path) -> Self {
        let options = ServerOptions::ephemeral(dir);
        let _ = std::fs::remove_file(dir.join("redis.sock"));
        let child = options.command().spawn().expect("redis-server");
        wait_for_socket(&dir.join("redis.sock"));
        Self { child, dir: dir.to_path_buf() }
    }

    fn url(&self) -> String {
        format!("redis+unix://{}", self.dir.join("redis.sock").display())
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill").args([sig, &self.child.id().to_string()]).status().unwrap().success();
        assert!(ok, "kill {sig}");
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-CONT", &self.child.id().to_string()]).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every Redis-backed route answers 503 `redis_unavailable` with Retry-After, each well within
/// `limit`.
async fn assert_unavailable(app: &TestApp, image: &[u8], limit: Duration) {
    let id = "b".repeat(64);
    let session = "c".repeat(32);
    for path in
        ["/api/cache/stats".to_string(), format!("/api/avatar/status/{id}"), format!("/api/vip/status/{session}")]
    {
        let started = Instant::now();
        let resp = app.client.get(app.url(&path)).send().await.unwrap();
        let took = started.elapsed();
        assert!(resp.headers().get("retry-after").is_some(), "{path}: no Retry-After");
        assert_error(&json(resp).await, 503, "redis_unavailable");
        assert!(took < limit, "{path} took {took:?} during the outage");
    }
    let started = Instant::now();
    let got = app.post_form("/api/avatar/upload", Form::new().part("image_file", png_part(image.to_vec()))).await;
    assert_error(&got, 503, "redis_unavailable");
    assert!(started.elapsed() < limit, "upload took {:?} during the outage", started.elapsed());
    let (s, ready) = app.get_json("/readyz").await;
    assert_eq!(s, 503, "{ready}");
    assert_eq!(ready["redis"], false);
    assert_eq!(app.get_json("/healthz").await.0, 200, "liveness does not depend on Redis");
}

async fn wait_recovered(app: &TestApp) {
    let start = Instant::now();
    loop {
        if app.get("/api/cache/stats").await.status() == 200 {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "the service did not recover after Redis came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outages_fail_fast_and_recover() {
    let dir = scratch("outage");
    let png = dir.join("face.png");
    ffmpeg(&["-f", "lavfi", "-i", "color=c=gray:s=256x256", "-frames:v", "1"], &png);
    let image = read(&png);
    let mut redis = OwnRedis::start(&dir);
    let url = redis.url();
    let app = spawn_app_with(0, |c| {
        c.redis_url = Some(url.into());
        c.edge.redis_timeout_ms = 500;
    })
    .await;
    assert_eq!(app.get("/api/cache/stats").await.status(), 200);

    // A hung Redis (accepts, never answers): the first requests wait out the 500 ms timeout,
    // later ones are refused at once.
    redis.signal("-STOP");
    assert_unavailable(&app, &image, Duration::from_millis(2500)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_unavailable(&app, &image, Duration::from_millis(300)).await;
    redis.signal("-CONT");
    wait_recovered(&app).await;

    // A dead Redis (connection refused), then a new one on the same socket.
    let _ = redis.child.kill();
    let _ = redis.child.wait();
    assert_unavailable(&app, &image, Duration::from_millis(2500)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_unavailable(&app, &image, Duration::from_millis(300)).await;
    redis = OwnRedis::start(&dir);
    wait_recovered(&app).await;
    let (s, body) = app.get_json("/api/cache/stats").await;
    assert_eq!(s, 200, "{body}");
    drop(redis);
}

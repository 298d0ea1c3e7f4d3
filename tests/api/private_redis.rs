//! `vipavatar serve` without REDIS_URL starts its own redis-server (AOF on, data in the data
//! dir), serves from it, and stops it on exit.

use crate::helpers::repo;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_manages_a_private_redis() {
    let data = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("private-{}", uuid::Uuid::new_v4().simple()));
    let mut child = Command::new(env!("CARGO_BIN_EXE_vipavatar"))
        .args(["serve", "--workers", "0", "--bind", "127.0.0.1:0"])
        .env_remove("REDIS_URL")
        .env_remove("API_KEYS")
        .env("VIPAVATAR_DATA_DIR", &data)
        .env("VIPAVATAR_CHECKPOINTS", repo().join("checkpoints"))
        .env("VIPAVATAR_ENGINE", "classic")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start vipavatar serve");
    // The log line `listening port=N` tells where it bound.
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(port) = line.split("port=").nth(1).and_then(|r| r.split_whitespace().next()).and_then(|p| p.parse::<u16>().ok()) {
                let _ = tx.send(port);
            }
        }
    });
    let port = rx.recv_timeout(Duration::from_secs(60)).expect("serve never logged its port");
    let url = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let start = Instant::now();
    loop {
        if client.get(format!("{url}/readyz")).send().await.is_ok_and(|r| r.status() == 200) {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "private serve never became ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The Redis it started is real, persistent (AOF) and lives in the data dir.
    let socket = data.join("redis/redis.sock");
    let redis = redis::Client::open(format!("redis+unix://{}", socket.display())).unwrap();
    let mut conn = redis.get_multiplexed_async_connection().await.expect("the private redis answers on its socket");
    let aof: Vec<String> = redis::cmd("CONFIG").arg("GET").arg("appendonly").query_async(&mut conn).await.unwrap();
    assert_eq!(aof, ["appendonly", "yes"]);
    let stats = client.get(format!("{url}/api/cache/stats")).send().await.unwrap();
    assert_eq!(stats.status(), 200);
    assert!(data.join("redis/appendonlydir").is_dir(), "AOF files belong in the data dir");

    // SIGTERM: the service exits cleanly and takes its redis-server with it.
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let start = Instant::now();
    let exit = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "serve did not exit on SIGTERM");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(exit.success(), "{exit}");
    let gone = redis::Client::open(format!("redis+unix://{}", socket.display())).unwrap().get_multiplexed_async_connection().await;
    assert!(gone.is_err(), "the private redis-server is still running after serve exited");
}

//! Object storage end to end against a real S3 server (`s3s-fs`, installed by scripts/setup.sh,
//! SigV4 on): upload -> generate -> download through the bucket, presigned URLs fetched (and a
//! tampered one refused), and an API node plus a worker process with separate data directories
//! sharing nothing but Redis and the bucket.

use crate::helpers::*;
use crate::workers::WorkerProcess;
use reqwest::StatusCode;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use vipavatar::config::Secret;
use vipavatar::Config;

pub const ACCESS_KEY: &str = "vipavatar-test-key";
pub const SECRET_KEY: &str = "vipavatar-test-secret-0123456789";
pub const BUCKET: &str = "vipavatar-test";

/// A running `s3s-fs` serving `root` (each folder a bucket) with SigV4 keys; killed on drop.
pub struct S3Server {
    pub endpoint: String,
    pub root: PathBuf,
    child: Child,
}

fn s3s_fs_binary() -> PathBuf {
    let home = std::env::var("HOME").unwrap_or_default();
    let candidates = [PathBuf::from(&home).join(".cargo/bin/s3s-fs"), PathBuf::from("/usr/local/bin/s3s-fs")];
    if let Some(found) = candidates.iter().find(|p| p.is_file()) {
        return found.clone();
    }
    let on_path = std::env::var("PATH").unwrap_or_default();
    on_path.split(':').map(|d| Path::new(d).join("s3s-fs")).find(|p| p.is_file()).unwrap_or_else(|| {
        panic!("s3s-fs is not installed: scripts/setup.sh installs it (cargo install s3s-fs@0.14.1 --features binary --locked)")
    })
}

impl S3Server {
    pub fn start() -> Self {
        let root = scratch("s3");
        std::fs::create_dir_all(root.join(BUCKET)).expect("bucket dir");
        let mut child = Command::new(s3s_fs_binary())
            .args(["--host", "127.0.0.1", "--port", "0", "--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(&root)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start s3s-fs");
        // It logs "server is running at http://127.0.0.1:PORT" once listening.
        let out = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Some(at) = line.find("server is running at http://") {
                    let addr = line[at + "server is running at ".len()..].trim().to_string();
                    let _ = tx.send(addr);
                }
            }
        });
        let endpoint = rx.recv_timeout(Duration::from_secs(20)).expect("s3s-fs did not start");
        Self { endpoint, root, child }
    }

    /// Point a config at this server's test bucket under `prefix`.
    pub fn configure(&self, c: &mut Config, prefix: &str) {
        c.storage.storage = Some(format!("s3://{BUCKET}/{prefix}"));
        c.storage.s3_endpoint = Some(self.endpoint.clone());
        c.storage.s3_region = Some("us-east-1".into());
        c.storage.s3_access_key_id = Some(Secret::parse(ACCESS_KEY).unwrap());
        c.storage.s3_secret_access_key = Some(Secret::parse(SECRET_KEY).unwrap());
    }

    /// Every object under `prefix` in the test bucket, as names relative to the prefix.
    pub fn objects(&self, prefix: &str) -> Vec<String> {
        let base = self.root.join(BUCKET).join(prefix);
        let mut out = Vec::new();
        let mut stack = vec![base.clone()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let p = entry.path();
                if p.is_dir() {
                    stack.push(p);
                } else if !p.file_name().unwrap_or_default().to_string_lossy().starts_with('.') {
                    out.push(p.strip_prefix(&base).unwrap().to_string_lossy().into_owned());
                }
            }
        }
        out.sort();
        out
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// A client that does not follow redirects (to see the 307 itself).
fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

/// Files (not folders) under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_generate_and_download_go_through_the_bucket() {
    let Some(data) = testdata() else { return };
    let s3 = S3Server::start();
    let app = spawn_app_with(1, |c| s3.configure(c, "one/node")).await;
    let dir = scratch("s3-one");

    let id = app.ready_avatar(read(data.join("images/happy.png"))).await;
    let (s, body) = app.generate(&id, read(data.join("audio/bus_chinese.wav")), &[]).await;
    assert_eq!(s, 202, "{body}");
    let sid = body["session_id"].as_str().unwrap().to_string();
    let done = app.wait_session(&sid, Duration::from_secs(180)).await;
    assert_eq!(done["status"], "ready", "{done}");

    // The status's download_url is a presigned URL of the bucket: fetched without any key.
    let url = done["download_url"].as_str().unwrap();
    assert!(url.starts_with(&s3.endpoint) && url.contains("X-Amz-Signature="), "{url}");
    let resp = reqwest::get(url).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mp4 = dir.join("out.mp4");
    let video = resp.bytes().await.unwrap();
    std::fs::write(&mp4, &video).unwrap();
    let (duration, frames, ..) = probe_mp4(&mp4);
    assert!(duration > 3.0 && frames > 80, "{duration} s, {frames} frames");

    // download answers 307 to a presigned URL; a Range request on it gets 206.
    let r = no_redirects().get(app.url(&format!("/api/vip/download/{sid}"))).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::TEMPORARY_REDIRECT);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    assert!(location.contains("X-Amz-Signature="), "{location}");
    let part = reqwest::Client::new().get(&location).header("Range", "bytes=0-99").send().await.unwrap();
    assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(part.bytes().await.unwrap(), video.slice(0..100));

    // A tampered signature is refused by the server: SigV4 is really checked.
    // (one hex digit changed, so the signature keeps its well-formed 64-digit shape).
    let at = location.find("X-Amz-Signature=").unwrap() + "X-Amz-Signature=".len();
    let flipped = if location.as_bytes()[at] == b'0' { "1" } else { "0" };
    let tampered = format!("{}{flipped}{}", &location[..at], &location[at + 1..]);
    assert_eq!(reqwest::get(&tampered).await.unwrap().status(), StatusCode::FORBIDDEN);

    // Everything is in the bucket under the prefix; the data directory holds no blob.
    let audio_hash = blake3::hash(&read(data.join("audio/bus_chinese.wav"))).to_hex().to_string();
    app.wait_idle_rendered(&id).await;
    let objects = s3.objects("one/node");
    assert!(objects.contains(&format!("images/{id}")), "{objects:?}");
    assert!(objects.contains(&format!("audio/{audio_hash}")), "{objects:?}");
    // One video, named by the avatar (erase lists by that prefix) and a digest of audio + options.
    let videos: Vec<_> =
        objects.iter().filter(|o| o.starts_with(&format!("videos/{id}-")) && o.ends_with(".mp4")).collect();
    assert_eq!(videos.len(), 1, "{objects:?}");
    assert!(objects.iter().any(|o| o.starts_with(&format!("idle/{id}-")) && o.ends_with(".mp4")), "{objects:?}");
    for folder in ["images", "audio", "videos", "idle"] {
        assert!(!app.config.data_dir.join(folder).exists(), "{folder}/ was created in the data dir");
    }

    // The thumbnail redirects to its object too: a JPEG.
    let thumb = app.client.get(app.url(&format!("/api/avatar/thumbnail/{id}"))).send().await.unwrap();
    assert_eq!(thumb.status(), 200, "followed the redirect");
    assert_eq!(&thumb.bytes().await.unwrap()[..2], &[0xFF, 0xD8]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_node_and_a_worker_share_only_redis_and_the_bucket() {
    let Some(data) = testdata() else { return };
    let s3 = S3Server::start();
    let app = spawn_app_with(0, |c| {
        s3.configure(c, "two-nodes");
        c.storage.public_url = Some("https://avatars.example.com/".into());
    })
    .await;
    let dir = scratch("s3-two");
    let mut worker_config = app.config.clone();
    worker_config.data_dir = dir.join("worker-data");
    worker_config.storage.public_url = None;
    let worker = WorkerProcess::start(&worker_config, &dir.join("worker.log"));

    let id = app.ready_avatar(read(data.join("images/happy.png"))).await;
    let (s, body) = app.generate(&id, read(data.join("audio/chinese_poem1.wav")), &[]).await;
    assert_eq!(s, 202, "{body}");
    let sid = body["session_id"].as_str().unwrap().to_string();
    let done = app.wait_session(&sid, Duration::from_secs(240)).await;
    assert_eq!(done["status"], "ready", "{done}");
    assert!(done["performance"]["worker"].as_str().unwrap().contains(&format!("-{}-", worker.pid())), "{done}");
    // With VIPAVATAR_PUBLIC_URL the download_url is an absolute link to this service.
    assert_eq!(done["download_url"], format!("https://avatars.example.com/api/vip/download/{sid}"));

    // The API node never had the video on its disk: it redirects to the bucket.
    let r = no_redirects().get(app.url(&format!("/api/vip/download/{sid}"))).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::TEMPORARY_REDIRECT);
    let video = reqwest::get(r.headers()["location"].to_str().unwrap()).await.unwrap().bytes().await.unwrap();
    let mp4 = dir.join("out.mp4");
    std::fs::write(&mp4, &video).unwrap();
    let (duration, ..) = probe_mp4(&mp4);
    assert!(duration > 1.0, "{duration}");
    assert!(s3.objects("two-nodes").iter().any(|o| o.starts_with("videos/")));
    // Neither node keeps blobs on its disk; the worker's scratch space is empty once its jobs
    // (the idle loop is the last) are done.
    app.wait_idle_rendered(&id).await;
    for data_dir in [&app.config.data_dir, &worker_config.data_dir] {
        let kept: Vec<_> = files_under(data_dir)
            .into_iter()
            .filter(|p| p.extension().is_none_or(|e| e != "owner"))
            .filter(|p| !p.to_string_lossy().contains("/redis"))
            .collect();
        assert!(kept.is_empty(), "{} holds {kept:?}", data_dir.display());
    }
}

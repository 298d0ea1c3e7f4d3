//! Separate worker processes sharing one Redis: a worker killed mid-job has its entry reclaimed
//! by another and the session completes; a job that keeps failing is retried a bounded number
//! of times and then fails with its stored error; a long clip renders in parts on two workers.

use crate::helpers::*;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use vipavatar::Config;

/// `vipavatar worker` with the test app's Redis, namespace, data, storage and models.
pub struct WorkerProcess {
    pub child: Child,
}

impl WorkerProcess {
    pub fn start(config: &Config, log: &Path) -> Self {
        let log = std::fs::File::create(log).expect("log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vipavatar"));
        let s = &config.storage;
        let storage_env = [
            ("VIPAVATAR_STORAGE", s.storage.clone()),
            ("VIPAVATAR_S3_ENDPOINT", s.s3_endpoint.clone()),
            ("VIPAVATAR_S3_REGION", s.s3_region.clone()),
            ("VIPAVATAR_S3_ACCESS_KEY_ID", s.s3_access_key_id.as_ref().map(|k| k.expose().to_string())),
            ("VIPAVATAR_S3_SECRET_ACCESS_KEY", s.s3_secret_access_key.as_ref().map(|k| k.expose().to_string())),
        ];
        for (key, value) in storage_env {
            match value {
                Some(v) => cmd.env(key, v),
                None => cmd.env_remove(key),
            };
        }
        let child = cmd
            .args(["worker", "--workers", "1"])
            .env("REDIS_URL", config.redis_url.as_deref().unwrap())
            .env("VIPAVATAR_NAMESPACE", config.namespace.as_str())
            .env("VIPAVATAR_DATA_DIR", &config.data_dir)
            .env("VIPAVATAR_CHECKPOINTS", &config.checkpoints)
            .env("VIPAVATAR_ENGINE", "classic")
            .env("VIPAVATAR_DEVICE", "cpu")
            .env("VIPAVATAR_JOB_LEASE_SECS", config.jobs.job_lease_secs.to_string())
            .env("VIPAVATAR_JOB_MAX_ATTEMPTS", config.jobs.job_max_attempts.to_string())
            .env("VIPAVATAR_JOB_BACKOFF_MS", config.jobs.job_backoff_ms.to_string())
            .env("VIPAVATAR_SPLIT_SECONDS", config.jobs.split_seconds.to_string())
            .env("RUST_LOG", "info")
            .env_remove("API_KEYS")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start vipavatar worker");
        Self { child }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_job_is_replaced_and_the_session_completes() {
    let Some(data) = testdata() else { return };
    let app = spawn_app_with(0, |c| c.jobs.job_lease_secs = 2).await;
    let dir = scratch("kill");
    // 64 s of speech (1600 frames): rendering takes seconds even on a fast machine, while the
    // session's progress is stored several times a second, so the kill lands mid-render.
    let long = dir.join("long.wav");
    let src = data.join("audio/bus_chinese.wav");
    ffmpeg(&["-stream_loop", "20", "-i", src.to_str().unwrap(), "-t", "64"], &long);

    let mut a = WorkerProcess::start(&app.config, &dir.join("worker-a.log"));
    let id = app.ready_avatar(read(data.join("images/happy.png"))).await;
    let (s, body) = app.generate(&id, read(&long), &[]).await;
    assert_eq!(s, 202, "{body}");
    let sid = body["session_id"].as_str().unwrap().to_string();

    // Wait until worker A is rendering, then kill it without warning.
    let start = Instant::now();
    loop {
        let st = app.session(&sid).await;
        assert_ne!(st["status"], "ready", "finished before the kill; make the audio longer: {st}");
        let p = st["progress"].as_f64().unwrap_or(0.0);
        if st["status"] == "processing" && p > 0.11 {
            let worker = st["performance"]["worker"].as_str().unwrap_or_default().to_string();
            assert!(worker.contains(&format!("-{}-", a.pid())), "worker {worker} is not process {}", a.pid());
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(240), "worker A never started rendering: {st}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    a.child.kill().expect("kill worker A");
    a.child.wait().expect("reap worker A");
    let killed_at = app.session(&sid).await;
    assert_eq!(killed_at["status"], "processing", "{killed_at}");

    // Two new worker processes; one of them reclaims the entry after the lease.
    let b = WorkerProcess::start(&app.config, &dir.join("worker-b.log"));
    let c = WorkerProcess::start(&app.config, &dir.join("worker-c.log"));
    let done = app.wait_session(&sid, Duration::from_secs(400)).await;
    assert_eq!(done["status"], "ready", "{done}");
    let worker = done["performance"]["worker"].as_str().unwrap_or_default();
    assert!(
        worker.contains(&format!("-{}-", b.pid())) || worker.contains(&format!("-{}-", c.pid())),
        "finished by {worker}, not by B ({}) or C ({})",
        b.pid(),
        c.pid()
    );
    assert!(done["performance"]["attempts"].as_u64().unwrap() >= 2, "{done}");
    assert!(app.counter("jobs:reclaimed").await >= 1);
    let mp4 = dir.join("out.mp4");
    let r = app.get(done["download_url"].as_str().unwrap()).await;
    std::fs::write(&mp4, r.bytes().await.unwrap()).unwrap();
    let (duration, ..) = probe_mp4(&mp4);
    assert!((duration - audio_seconds(&long)).abs() <= 0.04 + 1e-3, "{duration}");
    let (_, stats) = app.get_json("/api/cache/stats").await;
    assert_eq!(stats["queue_status"]["processing"], 0, "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_keeps_failing_is_retried_then_failed_with_its_error() {
    let Some(data) = testdata() else { return };
    let app = spawn_app_with(0, |c| c.jobs.job_max_attempts = 3).await;
    let dir = scratch("retry");
    let worker = WorkerProcess::start(&app.config, &dir.join("worker.log"));
    let id = app.ready_avatar(read(data.join("images/happy.png"))).await;
    drop(worker);

    // Queue a job, then lose the stored audio (the original and the decoded samples the API
    // left for the worker) before any worker runs it.
    let audio = read(data.join("audio/chinese_poem1.wav"));
    let (s, body) = app.generate(&id, audio.clone(), &[]).await;
    assert_eq!(s, 202, "{body}");
    let sid = body["session_id"].as_str().unwrap().to_string();
    let hash = blake3::hash(&audio).to_hex();
    let stored = app.config.data_dir.join("audio").join(hash.as_str());
    std::fs::remove_file(&stored).expect("the audio was stored before the job was queued");
    let client = redis::Client::open(redis_url()).expect("redis url");
    let mut conn = client.get_multiplexed_async_connection().await.expect("redis");
    let pcm = format!("{}:audio_pcm:{hash}", app.config.namespace.as_str());
    let removed: u64 = redis::cmd("DEL").arg(&pcm).query_async(&mut conn).await.expect("DEL");
    assert_eq!(removed, 1, "the API left the decoded samples under {pcm}");

    // A client watching the stream of the queued session sees it end with an error.
    let watcher = {
        let (address, sid) = (app.address.clone(), sid.clone());
        tokio::spawn(async move {
            let resp = reqwest::get(format!("{address}/api/vip/stream/{sid}")).await.expect("stream request");
            (resp.status(), resp.bytes().await.map(|b| b.len()))
        })
    };
    let _worker = WorkerProcess::start(&app.config, &dir.join("worker2.log"));
    let done = app.wait_session(&sid, Duration::from_secs(120)).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["error"]["code"], "internal", "{done}");
    assert!(done["error"]["message"].as_str().unwrap().contains("no longer stored"), "{done}");
    assert_eq!(done["performance"]["attempts"], 3, "{done}");
    assert_eq!(app.counter("jobs:retried").await, 2);
    assert_eq!(app.counter("jobs:failed").await, 1);
    let (_, stats) = app.get_json("/api/cache/stats").await;
    assert_eq!(stats["queue_status"]["failed"], 1);
    assert_error(&json(app.get(&format!("/api/vip/download/{sid}")).await).await, 409, "video_failed");
    let (status, body) =
        tokio::time::timeout(Duration::from_secs(30), watcher).await.expect("the stream ended").unwrap();
    assert_eq!(status, 200);
    assert!(body.is_err(), "the failed session's stream ended as if complete: {body:?}");
    assert_error(&json(app.get(&format!("/api/vip/stream/{sid}")).await).await, 409, "video_failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_node_streams_what_a_worker_process_renders() {
    let Some(data) = testdata() else { return };
    let app = spawn_app_with(0, |_| {}).await;
    let dir = scratch("remote-stream");
    let _worker = WorkerProcess::start(&app.config, &dir.join("worker.log"));
    let id = app.ready_avatar(read(data.join("images/happy.png"))).await;
    let (s, body) = app.generate(&id, read(data.join("audio/chinese_poem1.wav")), &[]).await;
    assert_eq!(s, 202, "{body}");
    let sid = body["session_id"].as_str().unwrap().to_string();
    let (live, _, end) = read_stream(&app, &sid).await;
    assert!(end.is_ok(), "{end:?}");
    let done = app.wait_session(&sid, Duration::from_secs(120)).await;
    assert_eq!(done["status"], "ready", "{done}");
    let boxes = mp4_boxes(&live);
    assert_eq!(&boxes[..2], ["ftyp", "moov"]);
    let path = dir.join("live.mp4");
    std::fs::write(&path, &live).unwrap();
    assert_eq!(video_frame_md5s(&path).len() as u64, done["frames_total"].as_u64().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vip_drains_first_and_silent_claims_are_taken_over() {
    use vipavatar::jobs::{Job, JobQueue, Queue};
    use vipavatar::SessionId;
    let config = test_config();
    let client = redis::Client::open(redis_url()).unwrap();
    let conn = client.get_connection_manager().await.unwrap();
    let mut blocking = client.get_connection_manager().await.unwrap();
    let queue = JobQueue::new(conn, config.namespace.clone());
    queue.ensure_groups().await.unwrap();
    queue.ensure_groups().await.expect("idempotent");
    let job = |n: u8| Job::Generate { session: SessionId::parse(&format!("{n:032x}")).unwrap() };
    queue.enqueue(Queue::Standard, &job(1)).await.unwrap();
    queue.enqueue(Queue::Vip, &job(2)).await.unwrap();
    queue.enqueue(Queue::Standard, &job(3)).await.unwrap();
    let depth = queue.depth().await.unwrap();
    assert_eq!((depth.vip, depth.standard, depth.processing), (1, 2, 0));

    let lease = Duration::from_millis(300);
    let block = Duration::from_millis(100);
    let first = queue.claim(&mut blocking, "w1", lease, block).await.unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!((first[0].queue, first[0].job.clone().unwrap()), (Queue::Vip, job(2)), "vip is served first");
    queue.ack(&first[0]).await.unwrap();
    let second = queue.claim(&mut blocking, "w1", lease, block).await.unwrap();
    assert_eq!(second[0].job.clone().unwrap(), job(1));
    assert!(!second[0].reclaimed);
    // w1 goes silent holding job 1; after the lease w2 takes it over before anything new.
    tokio::time::sleep(lease + Duration::from_millis(200)).await;
    let taken = queue.claim(&mut blocking, "w2", lease, block).await.unwrap();
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].job.clone().unwrap(), job(1));
    assert!(taken[0].reclaimed);
    assert_eq!(taken[0].entry, second[0].entry);
    // A heartbeat keeps a claim: w2 heartbeats, so w3 cannot take job 1 even after the lease.
    let next = queue.claim(&mut blocking, "w2", lease, block).await.unwrap();
    assert_eq!(next[0].job.clone().unwrap(), job(3));
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let held = [(taken[0].queue, taken[0].entry.clone()), (next[0].queue, next[0].entry.clone())];
        queue.heartbeat("w2", &held).await.unwrap();
    }
    assert!(queue.claim(&mut blocking, "w3", lease, block).await.unwrap().is_empty(), "a live claim was stolen");
    assert_eq!(queue.depth().await.unwrap().processing, 2);
    queue.ack(&taken[0]).await.unwrap();
    queue.ack(&next[0]).await.unwrap();
    let depth = queue.depth().await.unwrap();
    assert_eq!((depth.vip, depth.standard, depth.processing), (0, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_node_without_models_serves_what_a_worker_process_renders() {
    let Some(data) = testdata() else { return };
    // The API node cannot read any model file: it must not need one.
    let app = spawn_app_with(0, |c| c.checkpoints = "/nonexistent/vipavatar-checkpoints".into()).await;
    let id_before = {
        let (s, body) = app.upload(read(data.join("images/people_0.png")), None).await;
        assert!(s == 202 || s == 200, "{s}: {body}");
        body["image_id"].as_str().unwrap().to_string()
    };
    // No live worker yet: generate is 503 no_worker with Retry-After.
    let audio = read(data.join("audio/chinese_poem1.wav"));
    let form =
        reqwest::multipart::Form::new().text("image_id", id_before.clone()).part("audio_file", wav_part(audio.clone()));
    let r = app.client.post(app.url("/api/vip/generate")).multipart(form).send().await.unwrap();
    assert!(r.headers().get("retry-after").is_some(), "no Retry-After on {:?}", r.headers());
    assert_error(&json(r).await, 503, "no_worker");

    let dir = scratch("api-only");
    let mut worker_config = app.config.clone();
    worker_config.checkpoints = repo().join("checkpoints");
    let _w = WorkerProcess::start(&worker_config, &dir.join("worker.log"));
    let status = app.wait_avatar(&id_before).await;
    assert_eq!(status["status"], "ready", "{status}");
    let (s, body) = app.generate(&id_before, audio.clone(), &[]).await;
    assert_eq!(s, 202, "{body}");
    let done = app.wait_session(body["session_id"].as_str().unwrap(), Duration::from_secs(180)).await;
    assert_eq!(done["status"], "ready", "{done}");
    // The worker offers classic only: sadtalker has no live worker.
    let got = app.generate(&id_before, audio.clone(), &[("engine", "sadtalker")]).await;
    assert_error(&got, 503, "no_worker");
    // Its checkpoints have no GFPGANv1.4.pth, so it does not offer gfpgan: the API node says so.
    if !repo().join("checkpoints/GFPGANv1.4.pth").is_file() {
        let got = app.generate(&id_before, audio, &[("enhancer", "gfpgan")]).await;
        assert_error(&got, 422, "unsupported_option");
        assert!(got.1["message"].as_str().unwrap_or("").contains("gfpgan"), "{got:?}");
    }
    let (_, info) = app.get_json("/").await;
    assert_eq!(info["live_workers"].as_array().map(Vec::len), Some(1), "{info}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_clip_renders_in_parts_on_two_worker_processes() {
    let Some(data) = testdata() else { return };
    let app = spawn_app_with(0, |c| c.jobs.split_seconds = 4.0).await;
    let dir = scratch("parts");
    let _a = WorkerProcess::start(&app.config, &dir.join("worker-a.log"));
    let _b = WorkerProcess::start(&app.config, &dir.join("worker-b.log"));
    // 16 s of speech: four parts of about 4 s.
    let (_, audio, sid, _) = start_16s_session(&app, &data, &dir).await;
    let (live, _, end) = read_stream(&app, &sid).await;
    assert!(end.is_ok(), "the stream was cut: {end:?}");
    let done = app.wait_session(&sid, Duration::from_secs(300)).await;
    assert_eq!(done["status"], "ready", "{done}");
    assert_eq!((done["frames_total"].as_u64(), done["frames_done"].as_u64()), (Some(400), Some(400)), "{done}");
    let stages = done["performance"]["stages"].as_object().expect("stages");
    let parts: Vec<&String> = stages.keys().filter(|k| k.starts_with("part")).collect();
    assert_eq!(parts.len(), 4, "{stages:?}");
    assert!(parts.iter().any(|k| k.ends_with(".relayed")), "no part came from the other worker: {stages:?}");

    let r = app.get(done["download_url"].as_str().unwrap()).await;
    let file = dir.join("download.mp4");
    std::fs::write(&file, r.bytes().await.unwrap()).unwrap();
    let (duration, _, _, _, has_audio) = probe_mp4(&file);
    assert!(has_audio && (duration - 16.0).abs() < 0.1, "{duration}");
    let boxes = mp4_boxes(&std::fs::read(&file).unwrap());
    assert!(boxes.iter().position(|b| b == "moov") < boxes.iter().position(|b| b == "mdat"), "faststart: {boxes:?}");
    let path = dir.join("live.mp4");
    std::fs::write(&path, &live).unwrap();
    let (a, b) = (video_frame_md5s(&path), video_frame_md5s(&file));
    assert_eq!(a.len(), 400);
    assert!(a == b, "the joined stream's frames differ from the download's");
    // The joined video is the unsplit one's: the same request with splitting off gives frames
    // that differ by encoder noise only.
    let whole = spawn_app_with(1, |c| {
        c.jobs.split_seconds = 0.0;
    })
    .await;
    let id2 = whole.ready_avatar(read(data.join("images/people_0.png"))).await;
    let (s, body) = whole.generate(&id2, read(&audio), &[]).await;
    assert_eq!(s, 202, "{body}");
    let done = whole.wait_session(body["session_id"].as_str().unwrap(), Duration::from_secs(300)).await;
    assert!(done["performance"]["stages"].as_object().unwrap().keys().all(|k| !k.starts_with("part")), "{done}");
    let r = whole.get(done["download_url"].as_str().unwrap()).await;
    let unsplit = dir.join("unsplit.mp4");
    std::fs::write(&unsplit, r.bytes().await.unwrap()).unwrap();
    let (x, y) = (gray_frames(&file), gray_frames(&unsplit));
    assert_eq!(x.len(), y.len());
    let diff =
        |p: &[u8], q: &[u8]| p.iter().zip(q).map(|(a, b)| (*a as f64 - *b as f64).abs()).sum::<f64>() / p.len() as f64;
    let aligned: f64 = x.iter().zip(&y).map(|(p, q)| diff(p, q)).sum::<f64>() / x.len() as f64;
    let shifted: f64 = x.iter().skip(1).zip(&y).map(|(p, q)| diff(p, q)).sum::<f64>() / (x.len() - 1) as f64;
    assert!(aligned < 0.8 * shifted, "split vs unsplit: aligned diff {aligned:.2}, shifted by a frame {shifted:.2}");
}

/// Every frame of a video as 8-bit gray, 64x64 (enough to compare two renders).
fn gray_frames(path: &Path) -> Vec<Vec<u8>> {
    let out = Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-i"])
        .arg(path)
        .args([
            "-map",
            "0:v:0",
            "-fps_mode",
            "passthrough",
            "-vf",
            "scale=64:64",
            "-f",
            "rawvideo",
            "-pix_fmt",
            "gray",
            "pipe:1",
        ])
        .output()
        .expect("ffmpeg");
    assert!(out.status.success());
    out.stdout.chunks(64 * 64).map(|c| c.to_vec()).collect()
}

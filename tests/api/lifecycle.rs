//! The avatar's lifecycle: the paged list, erasing a face (afterwards a scan of every Redis key
//! and every object in the bucket finds nothing of it, while another face is untouched), a
//! session's thumbnail, and cancelling a running session (it stops, and leaves no video, no
//! temporary file and no stream behind).

use crate::helpers::*;
use crate::storage::S3Server;
use reqwest::StatusCode;
use serde_json::Value;
use std::time::{Duration, Instant};

/// Every Redis key of the app's namespace.
async fn all_keys(app: &TestApp) -> Vec<String> {
    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("KEYS").arg(format!("{}:*", app.config.namespace.as_str())).query_async(&mut conn).await.unwrap()
}

/// Every value, member and stream entry of the namespace's keys, as text.
async fn all_members(app: &TestApp) -> String {
    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut out = String::new();
    for key in all_keys(app).await {
        let kind: String = redis::cmd("TYPE").arg(&key).query_async(&mut conn).await.unwrap();
        let members: Vec<String> = match kind.as_str() {
            "set" => redis::cmd("SMEMBERS").arg(&key).query_async(&mut conn).await.unwrap(),
            "zset" => redis::cmd("ZRANGE").arg(&key).arg(0).arg(-1).query_async(&mut conn).await.unwrap(),
            "hash" => redis::cmd("HGETALL").arg(&key).query_async(&mut conn).await.unwrap(),
            "list" => redis::cmd("LRANGE").arg(&key).arg(0).arg(-1).query_async(&mut conn).await.unwrap(),
            "stream" => {
                let r: redis::streams::StreamRangeReply =
                    redis::cmd("XRANGE").arg(&key).arg("-").arg("+").query_async(&mut conn).await.unwrap();
                r.ids.iter().flat_map(|e| e.map.values().map(|v| format!("{v:?}"))).collect()
            }
            "string" => {
                let v: Vec<u8> = redis::cmd("GET").arg(&key).query_async(&mut conn).await.unwrap();
                vec![String::from_utf8_lossy(&v).into_owned()]
            }
            _ => Vec::new(),
        };
        out.push_str(&members.join("\n"));
        out.push('\n');
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasing_a_face_leaves_nothing_of_it_in_redis_or_the_bucket() {
    let Some(data) = testdata() else { return };
    let s3 = S3Server::start();
    let app = spawn_app_with(1, |c| s3.configure(c, "erase")).await;
    let (face, other) = (read(data.join("images/happy.png")), read(data.join("images/sad.png")));
    let id = app.ready_avatar(face.clone()).await;
    let keep = app.ready_avatar(other).await;
    let speech = read(data.join("audio/bus_chinese.wav"));
    let audio_hash = blake3::hash(&speech).to_hex().to_string();
    let (s, gen) = app.generate(&id, speech, &[]).await;
    assert_eq!(s, 202, "{gen}");
    let sid = gen["session_id"].as_str().unwrap().to_string();
    assert_eq!(app.wait_session(&sid, Duration::from_secs(180)).await["status"], "ready");
    app.wait_idle_rendered(&id).await;
    app.wait_idle_rendered(&keep).await;

    // The session's thumbnail: a JPEG (through the bucket's redirect).
    let thumb = app.get(&format!("/api/vip/thumbnail/{sid}")).await;
    assert_eq!(thumb.status(), 200);
    assert_eq!(thumb.headers()["content-type"], "image/jpeg");
    assert_eq!(&thumb.bytes().await.unwrap()[..2], &[0xFF, 0xD8]);

    // The list: both faces, newest first, with their modes and bytes.
    let (s, list) = app.get_json("/api/avatars?per_page=1").await;
    assert_eq!(s, 200, "{list}");
    assert_eq!(list["total"], 2);
    assert_eq!(list["avatars"].as_array().unwrap().len(), 1);
    assert_eq!(list["avatars"][0]["image_id"], keep, "newest first: {list}");
    let (_, page2) = app.get_json("/api/avatars?page=2&per_page=1").await;
    let entry = &page2["avatars"][0];
    assert_eq!(entry["image_id"], id);
    assert_eq!(entry["modes"][0]["status"], "ready");
    assert!(entry["bytes"].as_u64().unwrap() > face.len() as u64, "original + video + idle loop: {entry}");
    assert_error(&app.get_json("/api/avatars?per_page=0").await, 400, "invalid_field");

    let before = all_keys(&app).await;
    assert!(before.iter().any(|k| k.contains(&id)), "{before:?}");
    let (s, erased) = json(app.client.delete(app.url(&format!("/api/avatar/{id}"))).send().await.unwrap()).await;
    assert_eq!(s, 200, "{erased}");
    assert_eq!(erased["sessions"], 1, "{erased}");
    assert!(erased["blobs"].as_u64().unwrap() >= 5, "original, audio, video, thumbnail, idle loop + jpg: {erased}");

    // Nothing of it anywhere: key names, set/hash members, objects.
    let keys = all_keys(&app).await;
    for needle in [id.as_str(), sid.as_str(), audio_hash.as_str()] {
        assert!(!keys.iter().any(|k| k.contains(needle)), "{needle} still in {keys:?}");
    }
    let members = all_members(&app).await;
    assert!(!members.contains(&id) && !members.contains(&sid), "{members}");
    let objects = s3.objects("erase");
    assert!(!objects.iter().any(|o| o.contains(&id) || o.contains(&audio_hash)), "{objects:?}");
    // The other face is untouched.
    assert!(objects.contains(&format!("images/{keep}")), "{objects:?}");
    assert_eq!(app.wait_avatar(&keep).await["status"], "ready");
    assert!(keys.iter().any(|k| k.contains(&keep)));
    let (_, list) = app.get_json("/api/avatars").await;
    assert_eq!(list["total"], 1, "{list}");

    assert_error(&app.get_json(&format!("/api/avatar/status/{id}")).await, 404, "image_not_found");
    assert_error(&app.get_json(&format!("/api/vip/status/{sid}")).await, 404, "session_not_found");
    let again = json(app.client.delete(app.url(&format!("/api/avatar/{id}"))).send().await.unwrap()).await;
    assert_error(&again, 404, "image_not_found");
    // Uploading it again starts from nothing.
    let (s, up) = app.upload(face, None).await;
    assert_eq!((s, up["cached"].clone()), (StatusCode::ACCEPTED, Value::Bool(false)), "{up}");
    assert_eq!(app.wait_avatar(&id).await["status"], "ready");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_running_session_stops_it_and_leaves_nothing() {
    let Some(data) = testdata() else { return };
    let app = spawn_app_with(1, |c| c.jobs.split_seconds = 0.0).await;
    let dir = scratch("cancel");
    // 48 s of speech: seconds of rendering, so the cancel lands mid-render.
    let long = dir.join("long.wav");
    let src = data.join("audio/bus_chinese.wav");
    ffmpeg(&["-stream_loop", "14", "-i", src.to_str().unwrap(), "-t", "48"], &long);
    let id = app.ready_avatar(read(data.join("images/happy.png"))).await;
    let (s, gen) = app.generate(&id, read(&long), &[]).await;
    assert_eq!(s, 202, "{gen}");
    let sid = gen["session_id"].as_str().unwrap().to_string();
    let start = Instant::now();
    loop {
        let st = app.session(&sid).await;
        assert_ne!(st["status"], "ready", "finished before the cancel: {st}");
        if st["status"] == "processing" && st["frames_done"].as_u64().unwrap_or(0) > 0 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(120), "never started rendering: {st}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cancelled_at = Instant::now();
    let url = app.url(&format!("/api/vip/session/{sid}"));
    let (s, body) = json(app.client.delete(&url).send().await.unwrap()).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["status"], "cancelled");

    // The worker stops within a chunk (one second of video) and acks the job.
    let start = Instant::now();
    loop {
        let (_, stats) = app.get_json("/api/cache/stats").await;
        if stats["queue_status"]["processing"] == 0 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "the worker did not stop: {stats}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stopped_after = cancelled_at.elapsed();
    let st = app.session(&sid).await;
    assert_eq!(st["status"], "cancelled", "{st}");
    assert!(st["frames_done"].as_u64().unwrap() < st["frames_total"].as_u64().unwrap(), "it stopped early: {st}");
    println!("cancel -> worker free: {stopped_after:?}");
    // Nothing half-written: no video blob, no temporaries, no live stream, no video: key.
    let videos = std::fs::read_dir(app.config.data_dir.join("videos")).map(|d| d.count()).unwrap_or(0);
    assert_eq!(videos, 0, "no video stored");
    let tmp: Vec<_> = std::fs::read_dir(app.config.data_dir.join("tmp"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".owner"))
        .collect();
    assert!(tmp.is_empty(), "temporaries left: {tmp:?}");
    let keys = all_keys(&app).await;
    assert!(!keys.iter().any(|k| k.contains(":stream:") || k.contains(":video:")), "{keys:?}");
    assert_error(&app.get_json(&format!("/api/vip/download/{sid}")).await, 409, "session_cancelled");
    assert_error(&json(app.client.delete(&url).send().await.unwrap()).await, 409, "session_finished");
    // The same request again renders anew (it does not join the cancelled session).
    let (s, again) = app.generate(&id, read(&long), &[]).await;
    assert_eq!(s, 202, "{again}");
    assert_ne!(again["session_id"], sid.as_str());
    assert_eq!(again["joined"], false);
}

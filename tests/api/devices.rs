//! Model owners per device: workers spread over the configured devices never share an engine
//! instance, and a model call that panics fails its own job only; the owner rebuilds its engines
//! and the next job on that device succeeds. What a worker advertises follows its model files
//! (`gfpgan` only with `GFPGANv1.4.pth`).

use crate::helpers::*;
use serde_json::Value;
use std::collections::HashSet;
use std::time::Duration;

fn devices(info: &Value) -> Vec<Value> {
    info["devices"].as_array().cloned().unwrap_or_default()
}

/// The device owners appear once their engines loaded (just after readiness).
async fn loaded_devices(app: &TestApp, want: usize) -> Vec<Value> {
    for _ in 0..100 {
        let (s, info) = app.get_json("/").await;
        assert_eq!(s, 200, "{info}");
        let d = devices(&info);
        if d.len() >= want {
            return d;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("fewer than {want} device owners appeared");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_on_two_devices_never_share_an_engine_instance() {
    // Two CPU owners stand in for two GPUs (`cuda:0,cuda:1` or `cuda:all` on a GPU host).
    let app = spawn_app_with(2, |c| c.device = "cpu,cpu".into()).await;
    let devs = loaded_devices(&app, 2).await;
    assert_eq!(devs.len(), 2, "{devs:?}");
    let labels: Vec<&str> = devs.iter().map(|d| d["device"].as_str().unwrap()).collect();
    assert_eq!(labels, ["cpu#0", "cpu#1"]);
    let instances: HashSet<u64> = devs.iter().map(|d| d["instance"].as_u64().unwrap()).collect();
    assert_eq!(instances.len(), 2, "the two devices share an engine instance: {devs:?}");
    let mut workers = HashSet::new();
    for d in &devs {
        let w = d["workers"].as_array().unwrap();
        assert_eq!(w.len(), 1, "one worker per device: {d}");
        assert!(workers.insert(w[0].as_str().unwrap().to_string()), "a worker is on two devices: {devs:?}");
        assert_eq!(d["healthy"], true);
    }

    // One device, two workers: both use the one owner.
    let one = spawn_app_with(2, |c| c.device = "cpu".into()).await;
    let devs = loaded_devices(&one, 1).await;
    assert_eq!(devs.len(), 1, "{devs:?}");
    assert_eq!(devs[0]["workers"].as_array().unwrap().len(), 2, "{devs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_model_call_fails_its_job_alone_and_the_next_job_succeeds() {
    let Some(data) = testdata() else { return };
    // Model calls on the device: 1 = analysis and 2 = prepare (the upload), 3 = the idle loop
    // (its own job right after), 4 = the first generate, which panics.
    let app = spawn_app_with(1, |c| c.jobs.test_panic_model_call = Some(4)).await;
    let id = app.ready_avatar(read(data.join("images/people_0.png"))).await;
    let start = std::time::Instant::now();
    while app.get(&format!("/api/avatar/idle/{id}")).await.status() != 200 {
        assert!(start.elapsed() < Duration::from_secs(120), "the idle loop was not rendered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before = loaded_devices(&app, 1).await[0].clone();
    assert_eq!(before["rebuilds"], 0);
    let audio = read(data.join("audio/chinese_poem1.wav"));

    let (s, body) = app.generate(&id, audio.clone(), &[]).await;
    assert_eq!(s, 202, "{body}");
    let first = app.wait_session(body["session_id"].as_str().unwrap(), Duration::from_secs(120)).await;
    assert_eq!(first["status"], "failed", "{first}");
    assert_eq!(first["error"]["code"], "model_panicked", "{first}");
    assert_eq!(first["error"]["type"], "internal", "{first}");
    assert_eq!(app.counter("jobs:retried").await, 0, "a panic fails the job at once");

    // The owner rebuilds its engines (on its thread, right after the failed call answered); the
    // process stays ready and the next job renders.
    let mut after = loaded_devices(&app, 1).await[0].clone();
    for _ in 0..300 {
        if after["rebuilds"] != 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        after = loaded_devices(&app, 1).await[0].clone();
    }
    assert_eq!(after["rebuilds"], 1, "{after}");
    let (s, ready) = app.get_json("/readyz").await;
    assert_eq!(s, 200, "{ready}");
    assert_ne!(after["instance"], before["instance"], "the engines were not rebuilt: {after}");
    assert_eq!(after["healthy"], true);
    let (s, body) = app.generate(&id, audio, &[("pose_style", "2")]).await;
    assert_eq!(s, 202, "{body}");
    let second = app.wait_session(body["session_id"].as_str().unwrap(), Duration::from_secs(180)).await;
    assert_eq!(second["status"], "ready", "{second}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_advertise_their_engines_in_redis_with_a_ttl() {
    let app = spawn_app_with(1, |_| {}).await;
    let mut live = Vec::new();
    for _ in 0..100 {
        let (_, info) = app.get_json("/").await;
        live = info["live_workers"].as_array().cloned().unwrap_or_default();
        if !live.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(live.len(), 1, "{live:?}");
    let ad = &live[0];
    assert_eq!(ad["workers"], 1);
    assert_eq!(ad["default_engine"], "classic");
    assert_eq!(ad["devices"], serde_json::json!(["cpu#0"]));
    let classic =
        ad["engines"].as_array().unwrap().iter().find(|e| e["engine"] == "classic").expect("classic offered").clone();
    assert_eq!(classic["sizes"], serde_json::json!([256, 512]), "{classic}");
    // gfpgan only where its weights file is (the repository's checkpoints do not carry it).
    let gfpgan = repo().join("checkpoints/GFPGANv1.4.pth").is_file();
    let enhancers = if gfpgan { serde_json::json!(["none", "gfpgan"]) } else { serde_json::json!(["none"]) };
    assert_eq!(classic["enhancers"], enhancers, "{classic}");
    assert!(classic["preprocess"].as_array().unwrap().contains(&"crop".into()), "{classic}");
    let (s, ready) = app.get_json("/readyz").await;
    assert_eq!(s, 200, "{ready}");
    assert_eq!(ready["live_workers"][0]["id"], ad["id"], "{ready}");

    // The advertisement is a key with a TTL in the app's namespace (it expires without heartbeats).
    let mut conn = redis::Client::open(redis_url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let key = format!("{}:worker:{}", app.config.namespace.as_str(), ad["id"].as_str().unwrap());
    let ttl: i64 = redis::cmd("PTTL").arg(&key).query_async(&mut conn).await.unwrap();
    assert!(ttl > 0 && ttl <= 15_000, "{key} has PTTL {ttl}");
}

/// A checkpoints folder with the repository's files (links) and a `GFPGANv1.4.pth` that is
/// present but is not a checkpoint.
fn checkpoints_with_unloadable_gfpgan() -> std::path::PathBuf {
    let dir = scratch("gfpgan-checkpoints");
    for entry in std::fs::read_dir(repo().join("checkpoints")).expect("checkpoints") {
        let entry = entry.expect("entry");
        if entry.file_name() != "GFPGANv1.4.pth" {
            std::os::unix::fs::symlink(entry.path(), dir.join(entry.file_name())).expect("link");
        }
    }
    std::fs::write(dir.join("GFPGANv1.4.pth"), b"present, but not a checkpoint").expect("write");
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gfpgan_is_offered_where_its_file_is_and_a_file_that_does_not_load_fails_the_job() {
    let Some(data) = testdata() else { return };
    let dir = checkpoints_with_unloadable_gfpgan();
    let app = spawn_app_with(1, |c| c.checkpoints = dir.clone()).await;
    let mut classic = Value::Null;
    for _ in 0..100 {
        let (_, info) = app.get_json("/").await;
        let engines = info["live_workers"][0]["engines"].as_array().cloned().unwrap_or_default();
        if let Some(c) = engines.into_iter().find(|e| e["engine"] == "classic") {
            classic = c;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(classic["enhancers"], serde_json::json!(["none", "gfpgan"]), "{classic}");

    // The option is accepted (the file is there); the engine reads it on first use, and a file
    // that does not load fails the session with a checkpoint error naming it.
    let id = app.ready_avatar(read(data.join("images/people_0.png"))).await;
    let audio = read(data.join("audio/chinese_poem1.wav"));
    let (s, body) = app.generate(&id, audio, &[("enhancer", "gfpgan")]).await;
    assert_eq!(s, 202, "{body}");
    let done = app.wait_session(body["session_id"].as_str().unwrap(), Duration::from_secs(180)).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["error"]["code"], "checkpoint_error", "{done}");
    assert!(done["error"]["message"].as_str().unwrap_or("").contains("GFPGANv1.4.pth"), "{done}");
}

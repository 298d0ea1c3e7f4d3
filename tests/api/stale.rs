//! Stale engine blobs heal: a cached `motion:` or `source_state:` entry whose engine blob no longer
//! decodes (here: an older `STATE_VERSION`, the envelope still valid) is counted as stale,
//! evicted and recomputed once, and the session (or the idle loop) succeeds without a retry.

use crate::helpers::*;
use std::time::Duration;
use vipavatar::jobs::avatar::SourceStateEntry;
use vipavatar::startup::CACHE_SCHEMA_VERSION;
use vipavatar_cache::codec::{self, Decoded};

async fn conn() -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis_url()).unwrap().get_multiplexed_async_connection().await.unwrap()
}

async fn keys(app: &TestApp, kind: &str) -> Vec<String> {
    let pattern = format!("{}:{kind}:*", app.config.namespace.as_str());
    redis::cmd("KEYS").arg(pattern).query_async(&mut conn().await).await.unwrap()
}

/// Rewrite the value at `key` (decoded as `T`), keeping its TTL.
async fn rewrite<T: serde::de::DeserializeOwned + serde::Serialize>(key: &str, f: impl FnOnce(&mut T)) {
    let mut c = conn().await;
    let raw: Vec<u8> = redis::cmd("GET").arg(key).query_async(&mut c).await.unwrap();
    let Decoded::Value(mut v) = codec::decode::<T>(&raw, CACHE_SCHEMA_VERSION) else { panic!("{key} does not decode") };
    f(&mut v);
    let bytes = codec::encode(&v, CACHE_SCHEMA_VERSION).unwrap();
    let _: () = redis::cmd("SET").arg(key).arg(bytes).arg("KEEPTTL").query_async(&mut c).await.unwrap();
}

/// An engine blob as an older build wrote it: bincode `(version, value)` with version 0.
fn older_version(blob: &mut [u8]) {
    assert!(blob.len() > 4, "engine blob too short");
    blob[..4].copy_from_slice(&0u32.to_le_bytes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_motion_and_source_state_entries_are_recomputed_and_the_session_succeeds() {
    let Some(data) = testdata() else { return };
    let app = spawn_app().await;
    let id = app.ready_avatar(read(data.join("images/people_0.png"))).await;
    // The idle loop reads the same source state: let it finish first, so that only the session
    // below meets the stale entries.
    app.wait_idle_rendered(&id).await;
    let audio = read(data.join("audio/chinese_poem1.wav"));
    let (s, body) = app.generate(&id, audio.clone(), &[]).await;
    assert_eq!(s, 202, "{body}");
    let first = app.wait_session(body["session_id"].as_str().unwrap(), Duration::from_secs(180)).await;
    assert_eq!(first["status"], "ready", "{first}");

    let motion = keys(&app, "motion").await;
    let state = keys(&app, "source_state").await;
    assert_eq!((motion.len(), state.len()), (1, 1), "{motion:?} {state:?}");
    rewrite::<Vec<u8>>(&motion[0], |m| older_version(m)).await;
    rewrite::<SourceStateEntry>(&state[0], |e| older_version(e.state.as_mut().expect("classic source state"))).await;
    // Without the finished video the same request renders again from the (stale) entries.
    for k in keys(&app, "video").await {
        let _: () = redis::cmd("DEL").arg(k).query_async(&mut conn().await).await.unwrap();
    }
    let (prepare, motion_runs) = (app.counter("computed:prepare").await, app.counter("computed:motion").await);

    let (s, body) = app.generate(&id, audio, &[]).await;
    assert_eq!(s, 202, "{body}");
    assert_eq!(body["cached"], false, "{body}");
    let second = app.wait_session(body["session_id"].as_str().unwrap(), Duration::from_secs(180)).await;
    assert_eq!(second["status"], "ready", "{second}");
    assert_eq!(app.counter("stale:motion").await, 1);
    assert_eq!(app.counter("stale:source_state").await, 1);
    assert_eq!(app.counter("computed:prepare").await, prepare + 1, "the avatar state was not prepared again");
    assert_eq!(app.counter("computed:motion").await, motion_runs + 1, "the motion was not computed again");
    assert_eq!(app.counter("jobs:retried").await, 0, "healing is not a retry");
    assert_eq!(app.counter("jobs:failed").await, 0);

    // The idle job heals the same entry when it is the one that meets it.
    let state = keys(&app, "source_state").await;
    assert_eq!(state.len(), 1, "{state:?}");
    rewrite::<SourceStateEntry>(&state[0], |e| older_version(e.state.as_mut().expect("classic source state"))).await;
    for k in keys(&app, "idle").await {
        let _: () = redis::cmd("DEL").arg(k).query_async(&mut conn().await).await.unwrap();
    }
    let start = std::time::Instant::now();
    while app.get(&format!("/api/avatar/idle/{id}")).await.status() != 200 {
        assert!(start.elapsed() < Duration::from_secs(120), "the idle loop was not rendered again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(app.counter("stale:source_state").await, 2);
    assert_eq!(app.counter("computed:prepare").await, prepare + 2, "the idle job did not prepare the avatar again");
    assert_eq!(app.counter("jobs:retried").await, 0, "healing is not a retry");
    assert_eq!(app.counter("jobs:failed").await, 0);
}

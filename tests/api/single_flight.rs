//! Single flight: identical generate requests (same image, audio and options) arriving together,
//! on two API nodes sharing one Redis, render the video once; every client gets a session that
//! finishes with a playable MP4. A claim whose session finished is taken over by the next request
//! once that video is gone.

use crate::helpers::*;
use std::collections::BTreeSet;
use std::time::Duration;

async fn download_and_probe(app: &TestApp, sid: &str, to: &std::path::Path) -> u64 {
    let r = app.get(&format!("/api/vip/download/{sid}")).await;
    assert_eq!(r.status(), 200, "download of {sid}");
    std::fs::write(to, r.bytes().await.unwrap()).unwrap();
    let (duration, frames, _, _, has_audio) = probe_mp4(to);
    assert!(has_audio && duration > 1.0, "{duration} s, audio {has_audio}");
    frames
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_concurrent_generates_render_once_across_nodes() {
    let Some(data) = testdata() else { return };
    let dir = scratch("single-flight");
    let a = spawn_app().await;
    // A second API node (no worker) on the same Redis namespace and data directory.
    let (ns, data_dir) = (a.config.namespace.clone(), a.config.data_dir.clone());
    let b = spawn_app_with(0, move |c| {
        c.namespace = ns;
        c.data_dir = data_dir;
    })
    .await;
    let id = a.ready_avatar(read(data.join("images/people_0.png"))).await;
    let audio = read(data.join("audio/RD_Radio31_000.wav"));
    let renders = a.counter("computed:render").await;

    let fields = [("pose_style", "2"), ("seed", "7")];
    let (r1, r2, r3, r4) = tokio::join!(
        a.generate(&id, audio.clone(), &fields),
        b.generate(&id, audio.clone(), &fields),
        a.generate(&id, audio.clone(), &fields),
        b.generate(&id, audio.clone(), &fields),
    );
    let answers = [r1, r2, r3, r4];
    let mut sessions = BTreeSet::new();
    for (s, body) in &answers {
        assert!(*s == 202 || *s == 200, "{s}: {body}");
        if body["cached"] == false {
            sessions.insert(body["session_id"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(sessions.len(), 1, "identical requests in flight must share one session: {answers:?}");
    let joined = answers.iter().filter(|(_, b)| b["joined"] == true).count();
    assert!(joined >= 1, "{answers:?}");

    let mut frames = BTreeSet::new();
    for (i, (_, body)) in answers.iter().enumerate() {
        let sid = body["session_id"].as_str().unwrap();
        let node = if i % 2 == 0 { &a } else { &b };
        let done = node.wait_session(sid, Duration::from_secs(300)).await;
        assert_eq!(done["status"], "ready", "{done}");
        frames.insert(download_and_probe(node, sid, &dir.join(format!("{i}.mp4"))).await);
    }
    assert_eq!(frames.len(), 1, "every client gets the same video: {frames:?}");
    assert_eq!(a.counter("computed:render").await, renders + 1, "the video was rendered more than once");

    // Done: the same request again is the cached video, no new render.
    let (s, body) = b.generate(&id, audio, &fields).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!((body["cached"].as_bool(), body["joined"].as_bool()), (Some(true), Some(false)), "{body}");
    assert_eq!(a.counter("computed:render").await, renders + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_claim_is_taken_over_when_its_video_is_gone() {
    let Some(data) = testdata() else { return };
    let app = spawn_app().await;
    let id = app.ready_avatar(read(data.join("images/people_0.png"))).await;
    let audio = read(data.join("audio/bus_chinese.wav"));
    let (s, first) = app.generate(&id, audio.clone(), &[]).await;
    assert_eq!(s, 202, "{first}");
    let sid = first["session_id"].as_str().unwrap().to_string();
    let done = app.wait_session(&sid, Duration::from_secs(300)).await;
    assert_eq!(done["status"], "ready", "{done}");

    // The claim still names the finished session; with its video gone (evicted) the next
    // request must not join it: it takes the claim over and renders anew.
    let mut conn = redis::Client::open(redis_url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let ns = app.config.namespace.as_str();
    let videos: Vec<String> = redis::cmd("KEYS").arg(format!("{ns}:video:*")).query_async(&mut conn).await.unwrap();
    let claims: Vec<String> = redis::cmd("KEYS").arg(format!("{ns}:inflight:*")).query_async(&mut conn).await.unwrap();
    assert_eq!((videos.len(), claims.len()), (1, 1), "{videos:?} {claims:?}");
    let holder: String = redis::cmd("GET").arg(&claims[0]).query_async(&mut conn).await.unwrap();
    assert_eq!(holder, sid, "the claim names the session that rendered");
    let _: () = redis::cmd("DEL").arg(&videos[0]).query_async(&mut conn).await.unwrap();

    let renders = app.counter("computed:render").await;
    let (s, again) = app.generate(&id, audio, &[]).await;
    assert_eq!(s, 202, "{again}");
    assert_eq!(again["joined"], false, "{again}");
    let sid2 = again["session_id"].as_str().unwrap().to_string();
    assert_ne!(sid2, sid);
    let done = app.wait_session(&sid2, Duration::from_secs(300)).await;
    assert_eq!(done["status"], "ready", "{done}");
    assert_eq!(app.counter("computed:render").await, renders + 1);
    let holder: String = redis::cmd("GET").arg(&claims[0]).query_async(&mut conn).await.unwrap();
    assert_eq!(holder, sid2, "the new session took the claim over");
}

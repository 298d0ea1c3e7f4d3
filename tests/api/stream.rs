//! Live streams: a session's fragmented MP4 plays before the session is ready, holds exactly the
//! frames of the downloaded file, replays from its first fragment for a late client, and unknown
//! or malformed ids are typed errors.

use crate::helpers::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_stream_plays_early_and_matches_the_download() {
    let Some(data) = testdata() else { return };
    let dir = scratch("stream");
    let app = spawn_app().await;
    // 16 s of speech (400 frames): long enough that the stream visibly starts before the end.
    let (id, audio, sid, body) = start_16s_session(&app, &data, &dir).await;
    assert_eq!(body["stream_url"], format!("/api/vip/stream/{sid}"));

    let (live, marks, end) = read_stream(&app, &sid).await;
    assert!(end.is_ok(), "the stream was cut: {end:?}");
    let (_, frames_when_first_bytes) = marks[0];
    let done = app.wait_session(&sid, Duration::from_secs(300)).await;
    assert_eq!(done["status"], "ready", "{done}");
    let total = done["frames_total"].as_u64().unwrap();
    assert_eq!(total, 400, "{done}");
    assert_eq!(done["frames_done"], total);
    assert!(frames_when_first_bytes < total, "the first bytes came only when all {total} frames were done");
    let first_ms = done["first_frame_ms"].as_u64().expect("first_frame_ms");
    let total_ms = done["performance"]["total_time"].as_f64().unwrap() * 1e3;
    assert!((first_ms as f64) < total_ms, "first frame {first_ms} ms, total {total_ms} ms");

    // A fragmented MP4: init segment, then one moof + mdat per chunk (6 frames, then 1 s each).
    let boxes = mp4_boxes(&live);
    assert_eq!(&boxes[..2], ["ftyp", "moov"], "{boxes:?}");
    let moofs = boxes.iter().filter(|b| *b == "moof").count();
    assert_eq!(boxes.iter().filter(|b| *b == "mdat").count(), moofs);
    assert!(moofs >= 16, "{moofs} fragments for 400 frames: {boxes:?}");
    let live_path = dir.join("live.mp4");
    std::fs::write(&live_path, &live).unwrap();

    // Its decoded frames are the downloaded file's frames.
    let r = app.get(done["download_url"].as_str().unwrap()).await;
    assert_eq!(r.status(), 200);
    let file = r.bytes().await.unwrap();
    let file_path = dir.join("download.mp4");
    std::fs::write(&file_path, &file).unwrap();
    let file_boxes = mp4_boxes(&file);
    assert!(
        file_boxes.iter().position(|b| b == "moov") < file_boxes.iter().position(|b| b == "mdat"),
        "faststart: {file_boxes:?}"
    );
    let (a, b) = (video_frame_md5s(&live_path), video_frame_md5s(&file_path));
    assert_eq!(a.len(), 400);
    assert!(a == b, "the stream's frames differ from the download's");
    let (duration, _, _, _, has_audio) = probe_mp4(&live_path);
    assert!(has_audio && (duration - 16.0).abs() < 0.1, "{duration}");

    // A late client gets the whole stream from its first fragment.
    let (late, _, end) = read_stream(&app, &sid).await;
    assert!(end.is_ok(), "{end:?}");
    assert!(late == live, "the late client's stream differs ({} vs {} bytes)", late.len(), live.len());

    // The same request again comes from the video cache: its stream is the finished file.
    let (s, again) = app.generate(&id, read(&audio), &[]).await;
    assert_eq!((s.as_u16(), &again["cached"]), (200, &serde_json::Value::Bool(true)), "{again}");
    let (bytes, _, end) = read_stream(&app, again["session_id"].as_str().unwrap()).await;
    assert!(end.is_ok() && bytes == file, "a cached session's stream is its MP4");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_and_malformed_stream_ids_are_typed_errors() {
    let app = spawn_app_with(0, |_| {}).await;
    let unknown = "0123456789abcdef0123456789abcdef";
    assert_error(&json(app.get(&format!("/api/vip/stream/{unknown}")).await).await, 404, "session_not_found");
    assert_error(&json(app.get("/api/vip/stream/not-a-session").await).await, 400, "invalid_session_id");
}

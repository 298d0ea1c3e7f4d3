//! The live stream as HLS: the playlist grows while the session renders and ends with the video,
//! its init segment and segments joined are the downloaded file's frames, and unknown sessions,
//! bad segment names and sessions without a stream are typed errors.

use crate::helpers::*;
use std::time::{Duration, Instant};

/// `(init URI, [(EXTINF seconds, URI)], target duration, ended)` of a media playlist.
fn parse_playlist(text: &str) -> (Option<String>, Vec<(f64, String)>, f64, bool) {
    let (mut map, mut segments, mut target, mut pending) = (None, Vec::new(), 0.0, None);
    for line in text.lines() {
        if let Some(uri) = line.strip_prefix("#EXT-X-MAP:URI=") {
            map = Some(uri.trim_matches('"').to_string());
        } else if let Some(t) = line.strip_prefix("#EXT-X-TARGETDURATION:") {
            target = t.parse().unwrap();
        } else if let Some(d) = line.strip_prefix("#EXTINF:") {
            pending = Some(d.trim_end_matches(',').parse::<f64>().unwrap());
        } else if !line.starts_with('#') && !line.is_empty() {
            segments.push((pending.take().expect("a segment without #EXTINF"), line.to_string()));
        }
    }
    (map, segments, target, text.contains("#EXT-X-ENDLIST"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hls_playlist_follows_the_render_and_its_segments_are_the_video() {
    let Some(data) = testdata() else { return };
    let dir = scratch("hls");
    let app = spawn_app().await;
    let (id, audio, sid, body) = start_16s_session(&app, &data, &dir).await;
    let hls = format!("/api/vip/stream/{sid}/index.m3u8");
    assert_eq!(body["hls_url"], hls);

    // Asked at once, the playlist waits for the first segment and comes before the end.
    let r = app.get(&hls).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/vnd.apple.mpegurl");
    let first = r.text().await.unwrap();
    let (map, segments, _, ended) = parse_playlist(&first);
    assert!(first.starts_with("#EXTM3U\n"), "{first}");
    assert_eq!(map.as_deref(), Some("init.mp4"), "{first}");
    assert!(!segments.is_empty() && !ended, "a live playlist with its first segment: {first}");
    assert!((segments[0].0 - 0.24).abs() < 1e-6, "the first segment is the 6-frame chunk: {first}");

    // Reloaded, it grows until it ends; its segments then add up to the whole clip.
    let start = Instant::now();
    let last = loop {
        let text = app.get(&hls).await.text().await.unwrap();
        let parsed = parse_playlist(&text);
        assert!(parsed.1.len() >= segments.len(), "the playlist never shrinks: {text}");
        if parsed.3 {
            break parsed;
        }
        assert!(start.elapsed() < Duration::from_secs(300), "the playlist never ended: {text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (_, segments, target, _) = last;
    let seconds: f64 = segments.iter().map(|(d, _)| d).sum();
    assert!((seconds - 16.0).abs() < 0.05, "segments add up to {seconds} s");
    assert!(segments.iter().all(|(d, _)| *d <= target), "a segment is longer than the target duration");

    // init + segments, fetched by their relative URIs, decode to the download's frames.
    let base = format!("/api/vip/stream/{sid}/");
    let mut joined = app.get(&format!("{base}init.mp4")).await.bytes().await.unwrap().to_vec();
    for (_, uri) in &segments {
        let r = app.get(&format!("{base}{uri}")).await;
        assert_eq!(r.status(), 200, "{uri}");
        joined.extend_from_slice(&r.bytes().await.unwrap());
    }
    let joined_path = dir.join("hls.mp4");
    std::fs::write(&joined_path, &joined).unwrap();
    let done = app.wait_session(&sid, Duration::from_secs(60)).await;
    let file = app.get(done["download_url"].as_str().unwrap()).await.bytes().await.unwrap();
    let file_path = dir.join("download.mp4");
    std::fs::write(&file_path, &file).unwrap();
    let (a, b) = (video_frame_md5s(&joined_path), video_frame_md5s(&file_path));
    assert_eq!(a.len(), 400);
    assert!(a == b, "the segments' frames differ from the download's");

    // Typed errors: a bad segment name, a segment of nothing, an unknown session, and a session
    // whose video came from the cache (it has no stream: download it).
    for bad in ["seg/..%2F..%2Fx.m4s", "seg/12-0.m4s", "seg/abc.m4s", "seg/1-0"] {
        assert_error(&json(app.get(&format!("{base}{bad}")).await).await, 404, "stream_unavailable");
    }
    let unknown = "0123456789abcdef0123456789abcdef";
    let got = json(app.get(&format!("/api/vip/stream/{unknown}/index.m3u8")).await).await;
    assert_error(&got, 404, "session_not_found");
    let (s, again) = app.generate(&id, read(&audio), &[]).await;
    assert_eq!(s, 200, "{again}");
    let cached = again["hls_url"].as_str().unwrap();
    assert_error(&json(app.get(cached).await).await, 404, "stream_unavailable");
}

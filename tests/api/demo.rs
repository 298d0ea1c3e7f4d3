//! The demo page in a real browser: chromedriver drives headless Chromium (Debian's `chromium` and
//! `chromium-driver`) through WebDriver (fantoccini). With `API_KEYS` set, the page loads without a
//! key, sends the key typed into its field, uploads a portrait and 16 s of speech, and plays the
//! live stream: the `<video>` element's `currentTime` advances while the session is not yet ready,
//! its frame is a real picture, and a screenshot of the playing page is saved.

use crate::helpers::*;
use fantoccini::{ClientBuilder, Locator};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use vipavatar::config::ApiKeys;

fn runs(program: &str) -> bool {
    Command::new(program).arg("--version").output().is_ok_and(|o| o.status.success())
}

/// chromedriver, and the browser binary it should start.
fn browser() -> Option<(&'static str, PathBuf)> {
    let driver = ["chromedriver", "/usr/lib/chromium/chromedriver"].into_iter().find(|d| runs(d))?;
    let binary =
        ["/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"].into_iter().find(|b| runs(b))?;
    Some((driver, PathBuf::from(binary)))
}

/// A chromedriver child on a free port, killed when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_driver(program: &str, log: &Path) -> Driver {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new(program)
        .arg(format!("--port={port}"))
        .arg(format!("--log-path={}", log.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    Driver { child, url: format!("http://127.0.0.1:{port}") }
}

/// `document.getElementById(id).textContent`.
async fn text(c: &fantoccini::Client, id: &str) -> String {
    let v =
        c.execute("return document.getElementById(arguments[0]).textContent", vec![json!(id)]).await.expect("execute");
    v.as_str().unwrap_or_default().trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_page_plays_the_stream_before_the_session_is_ready() {
    let Some((driver_bin, chromium)) = browser() else {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "chromium and chromium-driver are required in CI");
        println!("skipped: chromium or chromedriver (Debian package chromium-driver) is not installed");
        return;
    };
    let Some(data) = testdata() else { return };
    let dir = scratch("demo");
    let audio = speech_16s(&data, &dir);
    let portrait = data.join("images/people_0.png").canonicalize().unwrap();

    let app = spawn_app_with(1, |c| c.api_keys = ApiKeys::parse("demo-key").unwrap()).await;
    // The page is open; the API behind it is not.
    let page = reqwest::get(app.url("/demo")).await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    assert_eq!(reqwest::get(app.url("/demo/app.js")).await.unwrap().status(), 200);
    assert_eq!(reqwest::get(app.url("/api/cache/stats")).await.unwrap().status(), 401);

    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("demo");
    std::fs::create_dir_all(&out).unwrap();
    let driver = start_driver(driver_bin, &out.join("chromedriver.log"));
    let profile = dir.join("profile");
    let caps = json!({
        "goog:chromeOptions": {
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--autoplay-policy=no-user-gesture-required", "--window-size=1280,1700",
                     format!("--user-data-dir={}", profile.display())],
        }
    });
    let caps: serde_json::Map<String, Value> = caps.as_object().unwrap().clone();
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let start = Instant::now();
    let c = loop {
        match ClientBuilder::new(connector.clone()).capabilities(caps.clone()).connect(&driver.url).await {
            Ok(c) => break c,
            Err(e) if start.elapsed() < Duration::from_secs(20) => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("chromedriver session: {e}"),
        }
    };

    c.goto(&app.url("/demo")).await.unwrap();
    assert_eq!(c.title().await.unwrap(), "vipavatar demo");
    // Generating without inputs is refused by the page with a clear message.
    c.find(Locator::Id("generate")).await.unwrap().click().await.unwrap();
    assert_eq!(text(&c, "error").await, "Choose a portrait image first.");

    c.find(Locator::Id("api-key")).await.unwrap().send_keys("demo-key").await.unwrap();
    // An API error is shown with its message and code: audio given as the portrait.
    c.find(Locator::Id("image")).await.unwrap().send_keys(audio.to_str().unwrap()).await.unwrap();
    c.find(Locator::Id("audio")).await.unwrap().send_keys(audio.to_str().unwrap()).await.unwrap();
    c.find(Locator::Id("generate")).await.unwrap().click().await.unwrap();
    let start = Instant::now();
    while c.execute("return document.getElementById('error').hidden", vec![]).await.unwrap() == json!(true) {
        assert!(start.elapsed() < Duration::from_secs(10), "no error shown for a non-image upload");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let shown = text(&c, "error").await;
    assert!(shown.starts_with("Upload failed: ") && shown.ends_with("(unsupported_media_type, HTTP 415)"), "{shown}");

    c.find(Locator::Id("image")).await.unwrap().send_keys(portrait.to_str().unwrap()).await.unwrap();
    c.find(Locator::Id("generate")).await.unwrap().click().await.unwrap();

    // Watch the video element; read the session's status through the API right after each
    // reading of currentTime (status only moves forward, so "not ready" then means "not ready"
    // when currentTime was read).
    let read_video = "const v = document.getElementById('video'); \
                      return [window.vipDemo.sessionId, v.currentTime, v.paused, document.getElementById('error').hidden ? '' : document.getElementById('error').textContent];";
    let start = Instant::now();
    let mut playing: Vec<(f64, String, u64)> = Vec::new(); // (currentTime, status, frames_done) while not ready
    let sid = loop {
        let v = c.execute(read_video, vec![]).await.unwrap();
        let err = v[3].as_str().unwrap_or_default();
        assert!(err.is_empty(), "the page shows an error: {err}");
        if let Some(sid) = v[0].as_str() {
            let t = v[1].as_f64().unwrap_or(0.0);
            let s = app.session(sid).await;
            let status = s["status"].as_str().unwrap_or_default().to_string();
            if status == "ready" {
                break sid.to_string();
            }
            if t > 0.0 {
                playing.push((t, status, s["frames_done"].as_u64().unwrap_or(0)));
                if playing.len() == 1 {
                    let png = c.screenshot().await.unwrap();
                    std::fs::write(out.join("demo-playing.png"), &png).unwrap();
                }
            }
        }
        assert!(start.elapsed() < Duration::from_secs(240), "the session did not finish");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!("currentTime while rendering (time, status, frames done): {playing:?}");
    assert!(!playing.is_empty(), "the video never played before the session was ready");
    let (first, last) = (&playing[0], &playing[playing.len() - 1]);
    assert!(first.1 == "processing" || first.1 == "queued", "{first:?}");
    assert!(last.0 > first.0, "currentTime did not advance while the session rendered: {playing:?}");

    // The frame on screen is a picture, not a black or flat box.
    let spread = c
        .execute(
            "const v = document.getElementById('video'); const cv = document.createElement('canvas'); \
             cv.width = 64; cv.height = 64; const g = cv.getContext('2d'); g.drawImage(v, 0, 0, 64, 64); \
             const d = g.getImageData(0, 0, 64, 64).data; let s = 0, s2 = 0, n = 0; \
             for (let i = 0; i < d.length; i += 4) { const y = (d[i] + d[i+1] + d[i+2]) / 3; s += y; s2 += y * y; n++; } \
             const m = s / n; return [m, Math.sqrt(s2 / n - m * m)];",
            vec![],
        )
        .await
        .unwrap();
    let (mean, sd) = (spread[0].as_f64().unwrap(), spread[1].as_f64().unwrap());
    assert!(sd > 20.0 && mean > 30.0, "the video frame looks blank: mean {mean}, sd {sd}");

    // The page reaches `ready` itself and fills its panels; its codec came from the init segment.
    let start = Instant::now();
    while !text(&c, "session-state").await.contains("ready") {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "page never showed ready: {}",
            text(&c, "session-state").await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let done = app.session(&sid).await;
    assert_eq!(text(&c, "t-frames").await, format!("{} / {}", done["frames_total"], done["frames_total"]));
    assert_eq!(text(&c, "t-server-first").await, format!("{} ms", done["first_frame_ms"]));
    for id in ["t-page-first", "t-page-bytes", "t-total"] {
        assert!(text(&c, id).await.ends_with('s'), "{id} not filled: {:?}", text(&c, id).await);
    }
    let codec = text(&c, "t-codec").await;
    assert!(codec.starts_with("video/mp4; codecs=\"avc1.") && codec.contains("mp4a.40."), "{codec}");
    let stages = c.execute("return document.querySelectorAll('#stages tbody tr').length", vec![]).await.unwrap();
    assert!(stages.as_u64().unwrap() >= 3, "stage table: {stages}");
    let start = Instant::now();
    while !text(&c, "cache-summary").await.starts_with("Hit rate") {
        assert!(start.elapsed() < Duration::from_secs(10), "cache stats: {}", text(&c, "cache-summary").await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The download link fetches the finished MP4 with the key (a plain link could not send it).
    c.find(Locator::Id("download")).await.unwrap().click().await.unwrap();
    let start = Instant::now();
    loop {
        let href = c.execute("return document.getElementById('download').href", vec![]).await.unwrap();
        if href.as_str().is_some_and(|h| h.starts_with("blob:")) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "download link not resolved: {href} / {}",
            text(&c, "error").await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let png = c.screenshot().await.unwrap();
    std::fs::write(out.join("demo-ready.png"), &png).unwrap();
    c.close().await.unwrap();

    let shot = std::fs::read(out.join("demo-playing.png")).unwrap();
    assert!(shot.starts_with(b"\x89PNG") && shot.len() > 20_000, "screenshot is not a real PNG ({} bytes)", shot.len());
    println!("screenshots: {} and demo-ready.png", out.join("demo-playing.png").display());
    drop(driver);
}

//! Swagger UI in a real browser: headless Chromium (Debian's `chromium`) loads /docs, renders the
//! operations, and saves a screenshot.

use crate::helpers::spawn_app_with;
use std::process::Command;

fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| Command::new(b).arg("--version").output().is_ok_and(|o| o.status.success()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swagger_ui_lists_the_operations() {
    let Some(browser) = chromium() else {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "chromium is required in CI");
        println!("skipped: chromium is not installed");
        return;
    };
    let app = spawn_app_with(0, |_| {}).await;
    // /docs redirects to the UI.
    let r = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(app.url("/docs"))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_redirection(), "{}", r.status());

    let out_dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("docs");
    std::fs::create_dir_all(&out_dir).unwrap();
    let shot = out_dir.join("swagger-ui.png");
    let _ = std::fs::remove_file(&shot);
    let profile = out_dir.join(format!("profile-{}", std::process::id()));
    let url = app.url("/docs/");
    let common = move |cmd: &mut Command| {
        cmd.args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars"])
            .args(["--virtual-time-budget=15000", "--window-size=1280,2400"])
            .arg(format!("--user-data-dir={}", profile.display()));
    };
    let (browser, url2, shot2) = (browser.to_string(), url.clone(), shot.clone());
    let common2 = common;
    let (dom, shot_ok) = tokio::task::spawn_blocking(move || {
        let mut dump = Command::new(&browser);
        common2(&mut dump);
        let dom = dump.arg("--dump-dom").arg(&url2).output().expect("run chromium");
        let mut snap = Command::new(&browser);
        common2(&mut snap);
        let snap = snap.arg(format!("--screenshot={}", shot2.display())).arg(&url2).output().expect("run chromium");
        (String::from_utf8_lossy(&dom.stdout).to_string(), snap.status.success())
    })
    .await
    .unwrap();
    assert!(dom.contains("swagger-ui"), "Swagger UI did not render: {}", &dom[..dom.len().min(500)]);
    for path in [
        "/api/avatar/upload",
        "/api/avatar/status/{image_id}",
        "/api/vip/generate",
        "/api/vip/status/{session_id}",
        "/api/vip/download/{session_id}",
        "/api/cache/stats",
        "/healthz",
    ] {
        let shown = dom.contains(&format!("data-path=\"{path}\"")) || dom.contains(&format!(">{path}<"));
        assert!(shown, "operation {path} not listed in the rendered Swagger UI");
    }
    assert!(dom.contains("opblock-tag"), "no operation groups rendered");
    assert!(shot_ok, "chromium screenshot failed");
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "screenshot is not a real PNG ({} bytes)", png.len());
    println!("screenshot: {}", shot.display());
}

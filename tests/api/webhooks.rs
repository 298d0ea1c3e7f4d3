//! Signed webhooks end to end: a real local receiver that refuses the first deliveries; the
//! workers retry with backoff until it accepts, every attempt of a delivery carries the same
//! `webhook-id` and a Standard Webhooks signature this test verifies itself; the body is the
//! status endpoint's plus the request's metadata; each attempt is recorded in the session or
//! avatar. A delivery that never succeeds stops after the configured attempts.

use crate::helpers::*;
use crate::remote::{Received, Remote};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use reqwest::multipart::Form;
use serde_json::{json, Value};
use sha2::Sha256;
use std::time::{Duration, Instant};
use vipavatar::config::Secret;

const SECRET: &str = "whsec_dGVzdC1zZWNyZXQtZm9yLXZpcGF2YXRhci13ZWJob29rcw==";

/// What a receiver does: HMAC-SHA256 over "id.timestamp.body" with the decoded secret.
fn verify(r: &Received) -> bool {
    let key = base64::engine::general_purpose::STANDARD.decode(SECRET.trim_start_matches("whsec_")).unwrap();
    let (Some(id), Some(ts), Some(sig)) =
        (r.header("webhook-id"), r.header("webhook-timestamp"), r.header("webhook-signature"))
    else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{ts}.").as_bytes());
    mac.update(&r.body);
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    sig.split(' ').any(|s| s.strip_prefix("v1,") == Some(expected.as_str()))
}

fn event(r: &Received) -> Value {
    serde_json::from_slice(&r.body).expect("webhook body is JSON")
}

async fn wait_deliveries(remote: &Remote, kind: &str, accepted: usize, limit: Duration) -> Vec<Received> {
    let start = Instant::now();
    loop {
        let of_kind: Vec<Received> = remote.received().into_iter().filter(|r| event(r)["type"] == kind).collect();
        if of_kind.iter().filter(|r| r.answered == 204).count() >= accepted {
            return of_kind;
        }
        assert!(start.elapsed() < limit, "no accepted {kind} webhook within {limit:?}: {of_kind:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_signed_retried_until_accepted_and_recorded() {
    let Some(data) = testdata() else { return };
    // The receiver refuses the first two deliveries it gets (the avatar's first two attempts).
    let remote = Remote::start(scratch("hooks"), 2).await;
    let app = spawn_app_with(1, |c| {
        c.fetch.fetch_allow_private = true;
        c.webhooks.webhook_secret = Some(Secret::parse(SECRET).unwrap());
        c.webhooks.webhook_backoff_ms = 200;
        c.webhooks.webhook_max_attempts = 5;
    })
    .await;
    let hook = remote.url("/hook");

    let form = Form::new()
        .part("image_file", png_part(read(data.join("images/happy.png"))))
        .text("callback_url", hook.clone())
        .text("metadata", r#"{"customer": "c-17", "order": 42}"#);
    let (s, up) = app.post_form("/api/avatar/upload", form).await;
    assert_eq!(s, 202, "{up}");
    let image_id = up["image_id"].as_str().unwrap().to_string();
    let avatar = wait_deliveries(&remote, "avatar.ready", 1, Duration::from_secs(120)).await;
    assert_eq!(avatar.iter().map(|r| r.answered).collect::<Vec<_>>(), [503, 503, 204], "refused twice, then accepted");
    let ids: Vec<_> = avatar.iter().map(|r| r.header("webhook-id").unwrap().to_string()).collect();
    assert!(ids.iter().all(|i| *i == ids[0] && i.starts_with("msg_")), "retries keep the webhook-id: {ids:?}");
    for r in &avatar {
        assert!(verify(r), "bad signature on {r:?}");
        assert_eq!(r.header("content-type"), Some("application/json"));
    }
    let body = event(&avatar[2]);
    assert_eq!(body["metadata"], json!({"customer": "c-17", "order": 42}));
    assert_eq!(body["data"]["image_id"], image_id);
    assert_eq!(body["data"]["status"], "ready");
    assert!(body["timestamp"].as_str().unwrap().ends_with('Z'), "{body}");
    // A tampered body fails verification (the check above is not vacuous).
    let mut forged = avatar[2].clone();
    forged.body = forged.body.iter().map(|b| if *b == b'4' { b'5' } else { *b }).collect();
    assert!(!verify(&forged));
    // The attempts are recorded in the avatar.
    let start = Instant::now();
    loop {
        let status = app.wait_avatar(&image_id).await;
        if status["webhook"]["delivered"] == true {
            assert_eq!(status["webhook"], json!({"delivered": true, "attempts": 3, "last_status": 204}));
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Generate in JSON with a callback: one delivery, accepted at once; the body is the status.
    let audio = base64::engine::general_purpose::STANDARD.encode(read(data.join("audio/bus_chinese.wav")));
    let req = json!({"image_id": image_id, "audio_base64": audio, "callback_url": hook, "metadata": {"job": "j-9"}});
    let (s, gen) = json(app.client.post(app.url("/api/vip/generate")).json(&req).send().await.unwrap()).await;
    assert_eq!(s, 202, "{gen}");
    let sid = gen["session_id"].as_str().unwrap().to_string();
    let video = wait_deliveries(&remote, "video.ready", 1, Duration::from_secs(180)).await;
    assert_eq!(video.len(), 1, "{video:?}");
    assert!(verify(&video[0]));
    let body = event(&video[0]);
    assert_eq!(body["metadata"], json!({"job": "j-9"}));
    let status = app.session(&sid).await;
    for field in ["session_id", "status", "image_id", "download_url", "audio_duration", "video_duration"] {
        assert_eq!(body["data"][field], status[field], "{field}: {body} vs {status}");
    }
    let start = Instant::now();
    while app.session(&sid).await["webhook"]["delivered"] != true {
        assert!(start.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(app.session(&sid).await["webhook"], json!({"delivered": true, "attempts": 1, "last_status": 204}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_avatar_is_announced_and_a_refusing_receiver_is_given_up() {
    // A grey picture: large enough to be accepted, no face in it.
    let dir = scratch("hooks-noface");
    let no_face = dir.join("grey.png");
    ffmpeg(&["-f", "lavfi", "-i", "color=c=gray:s=320x320", "-frames:v", "1"], &no_face);
    let remote = Remote::start(scratch("hooks-fail"), 1000).await;
    let app = spawn_app_with(1, |c| {
        c.fetch.fetch_allow_private = true;
        c.webhooks.webhook_secret = Some(Secret::parse(SECRET).unwrap());
        c.webhooks.webhook_backoff_ms = 100;
        c.webhooks.webhook_max_attempts = 3;
    })
    .await;
    let form = Form::new().part("image_file", png_part(read(&no_face))).text("callback_url", remote.url("/hook"));
    let (s, up) = app.post_form("/api/avatar/upload", form).await;
    assert_eq!(s, 202, "{up}");
    let image_id = up["image_id"].as_str().unwrap().to_string();
    let start = Instant::now();
    let status = loop {
        let status = app.wait_avatar(&image_id).await;
        if status["webhook"]["attempts"] == 3 {
            break status;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "{status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status["status"], "failed");
    assert_eq!(status["webhook"], json!({"delivered": false, "attempts": 3, "last_status": 503}));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let got = remote.received();
    assert_eq!(got.len(), 3, "exactly the configured attempts: {got:?}");
    assert!(got.iter().all(|r| event(r)["type"] == "avatar.failed" && verify(r)));
    assert_eq!(event(&got[0])["data"]["error"]["code"], "no_face_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callback_urls_are_checked_at_the_request() {
    let Some(data) = testdata() else { return };
    let signed = spawn_app_with(0, |c| c.webhooks.webhook_secret = Some(Secret::parse(SECRET).unwrap())).await;
    let image = read(data.join("images/happy.png"));
    let upload = |app: &TestApp, fields: Vec<(&'static str, String)>| {
        let mut form = Form::new().part("image_file", png_part(image.clone()));
        for (k, v) in fields {
            form = form.text(k, v);
        }
        let (client, url) = (app.client.clone(), app.url("/api/avatar/upload"));
        async move { json(client.post(url).multipart(form).send().await.unwrap()).await }
    };
    for url in ["http://127.0.0.1:9/hook", "http://169.254.169.254/", "ftp://example.com/x", "http://[::1]/"] {
        assert_error(&upload(&signed, vec![("callback_url", url.into())]).await, 400, "url_forbidden");
    }
    assert_error(&upload(&signed, vec![("callback_url", "no url".into())]).await, 400, "invalid_field");
    let bad_meta = vec![("callback_url", "https://example.com/hook".into()), ("metadata", "[1, 2]".into())];
    assert_error(&upload(&signed, bad_meta).await, 400, "invalid_field");
    // Without a signing secret, callbacks are refused rather than sent unsigned.
    let unsigned = spawn_app_with(0, |_| {}).await;
    let got = upload(&unsigned, vec![("callback_url", "https://example.com/hook".into())]).await;
    assert_error(&got, 400, "invalid_field");
    assert!(got.1["message"].as_str().unwrap().contains("VIPAVATAR_WEBHOOK_SECRET"), "{}", got.1);
    assert_eq!(signed.counter("computed:precompute").await, 0);
    let stored = std::fs::read_dir(signed.config.data_dir.join("images")).map(|d| d.count()).unwrap_or(0);
    assert_eq!(stored, 0, "refused requests store nothing");
    // `metadata` alone is no error: it only travels with webhooks, so it is not kept.
    let (s, body) = upload(&signed, vec![("metadata", r#"{"a": 1}"#.into())]).await;
    assert_ne!(s, 400, "{body}");
}

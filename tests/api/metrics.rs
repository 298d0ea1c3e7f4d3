//! `GET /metrics`: Prometheus text with request counts and latency histograms per route and
//! status, job durations, and the shared queue depth and cache lookups read from Redis; behind
//! the API key unless opened by configuration.

use crate::helpers::{assert_error, read, spawn_app_with, testdata};
use vipavatar::config::ApiKeys;

/// The value of the first sample whose line starts with `prefix` (name plus labels).
fn sample(text: &str, prefix: &str) -> Option<f64> {
    text.lines().find(|l| l.starts_with(prefix)).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_cover_requests_jobs_queues_and_the_cache() {
    let Some(data) = testdata() else { return };
    let app = spawn_app_with(1, |_| {}).await;
    let image = app.ready_avatar(read(data.join("images/people_0.png"))).await;
    assert_eq!(app.get(&format!("/api/avatar/status/{image}")).await.status(), 200);
    assert_eq!(app.get("/api/nothing").await.status(), 404);

    let resp = app.get("/metrics").await;
    assert_eq!(resp.status(), 200);
    let ct = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    let text = resp.text().await.unwrap();

    let upload =
        sample(&text, r#"vipavatar_http_requests_total{method="POST",route="/api/avatar/upload",status="202"}"#);
    assert!(upload.is_some_and(|n| n >= 1.0), "upload not counted:\n{text}");
    let polls = sample(
        &text,
        r#"vipavatar_http_requests_total{method="GET",route="/api/avatar/status/{image_id}",status="200"}"#,
    );
    assert!(polls.is_some_and(|n| n >= 1.0), "status polls are counted per route pattern, not per id:\n{text}");
    assert!(text.contains(r#"route="unmatched",status="404""#), "{text}");
    assert!(text.contains("# TYPE vipavatar_http_request_duration_seconds histogram"), "{text}");
    assert!(
        text.contains(r#"vipavatar_http_request_duration_seconds_bucket{method="POST",route="/api/avatar/upload",status="202",le="0.5"}"#),
        "{text}"
    );
    let jobs = sample(&text, r#"vipavatar_job_duration_seconds_count{kind="precompute",outcome="done"}"#);
    assert!(jobs.is_some_and(|n| n >= 1.0), "{text}");
    assert_eq!(sample(&text, "vipavatar_redis_up"), Some(1.0));
    assert_eq!(sample(&text, r#"vipavatar_queue_depth{queue="vip"}"#), Some(0.0), "{text}");
    assert_eq!(sample(&text, r#"vipavatar_computed_total{step="precompute"}"#), Some(1.0), "{text}");
    assert!(text.contains(r#"vipavatar_cache_lookups_total{kind="#), "{text}");
    assert_eq!(sample(&text, r#"vipavatar_jobs_total{outcome="done"}"#), Some(1.0), "{text}");

    // A rendered session adds its time to first frame and x-realtime, per engine.
    let (s, body) = app.generate(&image, read(data.join("audio/chinese_poem1.wav")), &[]).await;
    assert_eq!(s, 202, "{body}");
    let done = app.wait_session(body["session_id"].as_str().unwrap(), std::time::Duration::from_secs(120)).await;
    assert_eq!(done["status"], "ready", "{done}");
    let text = app.get("/metrics").await.text().await.unwrap();
    for name in ["vipavatar_first_frame_seconds_count", "vipavatar_realtime_factor_count"] {
        let n = sample(&text, &format!(r#"{name}{{engine="classic"}}"#));
        assert!(n.is_some_and(|n| n >= 1.0), "{name}:\n{text}");
    }
    assert!(text.contains("# TYPE vipavatar_first_frame_seconds histogram"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_need_the_key_unless_opened() {
    let mut closed = spawn_app_with(0, |c| c.api_keys = ApiKeys::parse("m-key").unwrap()).await;
    closed.api_key = None;
    assert_error(&closed.get_json("/metrics").await, 401, "missing_api_key");
    let r = closed.client.get(closed.url("/metrics")).header("X-API-Key", "m-key").send().await.unwrap();
    assert_eq!(r.status(), 200);

    let mut open = spawn_app_with(0, |c| {
        c.api_keys = ApiKeys::parse("m-key").unwrap();
        c.edge.metrics_open = true;
    })
    .await;
    open.api_key = None;
    assert_eq!(open.get("/metrics").await.status(), 200);
    assert_error(&open.get_json("/api/cache/stats").await, 401, "missing_api_key");
}

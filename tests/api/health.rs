//! Service info, liveness, readiness and JSON errors for unknown routes.

use crate::helpers::{assert_error, json, spawn_app_with};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_health_and_readiness() {
    let app = spawn_app_with(1, |_| {}).await;
    let (s, body) = app.get_json("/").await;
    assert_eq!(s, 200);
    assert_eq!(body["name"], "vipavatar");
    assert_eq!(body["default_engine"], "classic");
    assert!(body["engines"].as_array().unwrap().iter().any(|e| e == "classic"), "{body}");
    assert_eq!(body["workers"], 1);
    let (s, body) = app.get_json("/healthz").await;
    assert_eq!((s.as_u16(), body["status"].as_str()), (200, Some("ok")));
    let (s, body) = app.get_json("/readyz").await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["redis"], true);
    assert_eq!(body["engines_loaded"], true);

    // An API-only node loads no models and is ready without them.
    let api = spawn_app_with(0, |_| {}).await;
    let (_, body) = api.get_json("/").await;
    assert_eq!(body["engines"], serde_json::json!([]), "{body}");
    assert_eq!(body["workers"], 0);
    let (s, body) = api.get_json("/readyz").await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["engines_loaded"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_and_methods_get_the_error_body() {
    let app = spawn_app_with(0, |_| {}).await;
    assert_error(&app.get_json("/nope").await, 404, "route_not_found");
    let r = app.client.put(app.url("/api/avatar/upload")).send().await.unwrap();
    assert_eq!(r.headers().get("allow").and_then(|v| v.to_str().ok()), Some("POST"));
    assert_error(&json(r).await, 405, "method_not_allowed");
    // Path/query extractor failures are JSON too.
    assert_error(&app.get_json("/api/avatar/status/abc?preprocess_mode=sideways").await, 400, "invalid_image_id");
    let id = "a".repeat(64);
    assert_error(
        &app.get_json(&format!("/api/avatar/status/{id}?preprocess_mode=sideways")).await,
        400,
        "invalid_field",
    );
}

//! X-API-Key authentication: on when API_KEYS is set (401 with the error body), off otherwise;
//! the probes /healthz and /readyz always open.

use crate::helpers::{assert_error, json, spawn_app_with};
use vipavatar::config::ApiKeys;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_required_when_configured() {
    let mut app = spawn_app_with(0, |c| c.api_keys = ApiKeys::parse("k-one,k-two").unwrap()).await;
    let key = app.api_key.take();
    assert_eq!(key.as_deref(), Some("k-one"));

    // No key, wrong key (including a prefix of a right one): 401 with the standard body.
    assert_error(&app.get_json("/api/cache/stats").await, 401, "missing_api_key");
    for wrong in ["nope", "k-on", "k-onex", "K-ONE"] {
        let r = app.client.get(app.url("/api/cache/stats")).header("X-API-Key", wrong).send().await.unwrap();
        assert_error(&json(r).await, 401, "invalid_api_key");
    }
    let r = app.client.post(app.url("/api/avatar/upload")).send().await.unwrap();
    assert_error(&json(r).await, 401, "missing_api_key");

    // Either configured key works.
    for good in ["k-one", "k-two"] {
        let r = app.client.get(app.url("/api/cache/stats")).header("X-API-Key", good).send().await.unwrap();
        assert_eq!(r.status(), 200, "{good}");
    }
    // The probes stay open (orchestrators cannot send a key); the rest does not.
    assert_eq!(app.get_json("/healthz").await.0, 200);
    let (s, ready) = app.get_json("/readyz").await;
    assert_eq!(s, 200, "{ready}");
    assert_eq!(ready["status"], "ready");
    assert_error(&app.get_json("/").await, 401, "missing_api_key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_when_no_keys() {
    let app = spawn_app_with(0, |_| {}).await;
    assert_eq!(app.get_json("/api/cache/stats").await.0, 200);
    let r = app.client.get(app.url("/api/cache/stats")).header("X-API-Key", "anything").send().await.unwrap();
    assert_eq!(r.status(), 200);
}

//! The committed `openapi/openapi.json` matches the code (run `vipavatar openapi >
//! openapi/openapi.json` after changing the API; UPDATE_OPENAPI=1 rewrites it here), the served
//! document is the same, and every contract path is in it.

use crate::helpers::{repo, spawn_app_with};
use std::process::Command;

#[test]
fn committed_spec_matches_the_code() {
    let path = repo().join("openapi/openapi.json");
    let current = vipavatar::api::openapi_json();
    if std::env::var("UPDATE_OPENAPI").as_deref() == Ok("1") {
        std::fs::write(&path, &current).expect("write openapi.json");
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == current,
        "openapi/openapi.json is out of date: run `cargo run -- openapi > openapi/openapi.json` (or UPDATE_OPENAPI=1 cargo test --test api openapi)"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_vipavatar")).arg("openapi").output().expect("run vipavatar openapi");
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), current, "`vipavatar openapi` prints the same document");
    let check = Command::new(env!("CARGO_BIN_EXE_vipavatar")).args(["openapi", "--check"]).arg(&path).status().unwrap();
    assert!(check.success(), "`vipavatar openapi --check` must pass on the committed file");
}

#[test]
fn spec_lists_the_contract() {
    let doc: serde_json::Value = serde_json::from_str(&vipavatar::api::openapi_json()).unwrap();
    for (path, method) in [
        ("/api/avatar/upload", "post"),
        ("/api/avatar/status/{image_id}", "get"),
        ("/api/vip/generate", "post"),
        ("/api/vip/status/{session_id}", "get"),
        ("/api/vip/download/{session_id}", "get"),
        ("/api/cache/stats", "get"),
        ("/", "get"),
        ("/healthz", "get"),
        ("/readyz", "get"),
    ] {
        assert!(doc["paths"][path][method].is_object(), "{method} {path} missing from the spec");
    }
    let upload = &doc["paths"]["/api/avatar/upload"]["post"]["requestBody"]["content"]["multipart/form-data"];
    assert!(upload.is_object(), "upload must be multipart: {upload}");
    let schemas = &doc["components"]["schemas"];
    for field in ["message", "code", "type"] {
        assert!(schemas["ErrorBody"]["properties"][field].is_object(), "ErrorBody.{field}");
    }
    for field in [
        "image_id",
        "audio_file",
        "enhancer",
        "quality",
        "still_mode",
        "expression_scale",
        "pose_style",
        "size",
        "engine",
    ] {
        assert!(schemas["GenerateForm"]["properties"][field].is_object(), "GenerateForm.{field}");
    }
    // The option enums are documented with exactly the values the server parses.
    use vipavatar_pipeline::engine::{EngineChoice, Enhancer, PreprocessMode, Quality};
    for (name, values) in [
        ("Enhancer", Enhancer::NAMES),
        ("Quality", Quality::NAMES),
        ("EngineChoice", EngineChoice::NAMES),
        ("PreprocessMode", PreprocessMode::NAMES),
    ] {
        assert_eq!(schemas[name]["enum"], serde_json::json!(values), "{name}");
    }
    assert_eq!(doc["components"]["securitySchemes"]["api_key"]["name"], "X-API-Key");
}

/// Every operation lists the statuses it can answer, with the error schema, and id parameters
/// carry their pattern; the key is optional (servers without API_KEYS) and the probes are open.
#[test]
fn spec_lists_every_status_and_id_pattern() {
    let doc: serde_json::Value = serde_json::from_str(&vipavatar::api::openapi_json()).unwrap();
    let statuses = |path: &str, method: &str| -> Vec<String> {
        let r = doc["paths"][path][method]["responses"].as_object().unwrap_or_else(|| panic!("{method} {path}"));
        for (status, resp) in r {
            // `/readyz` answers its 503 with the readiness report itself.
            if (status.starts_with('4') || status.starts_with('5')) && path != "/readyz" {
                let schema = &resp["content"]["application/json"]["schema"]["$ref"];
                assert_eq!(schema, "#/components/schemas/ErrorBody", "{method} {path} {status}: {resp}");
            }
        }
        r.keys().cloned().collect()
    };
    let want: &[(&str, &str, &[&str])] = &[
        ("/api/avatar/upload", "post", &["200", "202", "400", "401", "408", "413", "415", "422", "429", "503"]),
        ("/api/avatar/{image_id}", "delete", &["200", "400", "401", "404", "503"]),
        ("/api/avatars", "get", &["200", "400", "401", "503"]),
        ("/api/avatar/status/{image_id}", "get", &["200", "400", "401", "404", "503"]),
        ("/api/avatar/idle/{image_id}", "get", &["200", "206", "307", "400", "401", "404", "409", "416", "503"]),
        ("/api/avatar/thumbnail/{image_id}", "get", &["200", "307", "400", "401", "404", "409", "503"]),
        ("/api/vip/generate", "post", &["200", "202", "400", "401", "404", "408", "413", "415", "422", "429", "503"]),
        ("/api/vip/thumbnail/{session_id}", "get", &["200", "307", "400", "401", "404", "409", "503"]),
        ("/api/vip/session/{session_id}", "delete", &["200", "400", "401", "404", "409", "503"]),
        ("/api/vip/status/{session_id}", "get", &["200", "400", "401", "404", "503"]),
        ("/api/vip/download/{session_id}", "get", &["200", "206", "307", "400", "401", "404", "409", "416", "503"]),
        ("/api/vip/stream/{session_id}", "get", &["200", "400", "401", "404", "409", "503"]),
        ("/api/vip/stream/{session_id}/index.m3u8", "get", &["200", "400", "401", "404", "409", "503"]),
        ("/api/vip/stream/{session_id}/init.mp4", "get", &["200", "400", "401", "404", "503"]),
        ("/api/vip/stream/{session_id}/seg/{segment}", "get", &["200", "400", "401", "404", "503"]),
        ("/api/cache/stats", "get", &["200", "401", "503"]),
        ("/", "get", &["200", "401"]),
        ("/metrics", "get", &["200", "401"]),
        ("/healthz", "get", &["200"]),
        ("/readyz", "get", &["200", "503"]),
    ];
    let mut listed = 0;
    for (path, ops) in doc["paths"].as_object().unwrap() {
        listed += ops.as_object().unwrap().len();
        for (method, op) in ops.as_object().unwrap() {
            for p in op["parameters"].as_array().into_iter().flatten() {
                let pattern = match p["name"].as_str() {
                    Some("image_id") => "^[0-9a-f]{64}$",
                    Some("session_id") => "^[0-9a-f]{32}$",
                    _ => continue,
                };
                assert_eq!(p["schema"]["pattern"], pattern, "{method} {path}: {p}");
            }
        }
    }
    assert_eq!(listed, want.len(), "a new operation needs its row here");
    for (path, method, codes) in want {
        assert_eq!(statuses(path, method), *codes, "{method} {path}");
    }
    assert_eq!(doc["components"]["schemas"]["GenerateForm"]["properties"]["image_id"]["pattern"], "^[0-9a-f]{64}$");
    for form in ["GenerateForm", "UploadForm", "GenerateJson", "UploadJson"] {
        assert_eq!(doc["components"]["schemas"][form]["additionalProperties"], false, "{form} lists every field");
    }
    assert_eq!(doc["security"], serde_json::json!([{"api_key": []}, {}]), "the key is optional without API_KEYS");
    for open in ["/healthz", "/readyz"] {
        assert_eq!(doc["paths"][open]["get"]["security"], serde_json::json!([{}]), "{open} is open");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_spec_is_the_committed_one() {
    let app = spawn_app_with(0, |_| {}).await;
    let (s, served) = app.get_json("/openapi.json").await;
    assert_eq!(s, 200);
    let committed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(repo().join("openapi/openapi.json")).unwrap()).unwrap();
    assert_eq!(served, committed);
}

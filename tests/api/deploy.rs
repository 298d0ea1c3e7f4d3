//! Deployment files: docker-compose.yml's structure (Redis with AOF and a volume, MinIO and its
//! bucket, an API-only node and a GPU worker sharing no volume, healthchecks) and the Dockerfile's stages, checked
//! against the set-up script's package list and the binary's own configuration.

use crate::helpers::repo;
use serde_yaml::Value;
use std::process::Command;

fn compose() -> Value {
    let text = std::fs::read_to_string(repo().join("docker-compose.yml")).expect("docker-compose.yml");
    serde_yaml::from_str(&text).expect("docker-compose.yml is valid YAML")
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence().map(|s| s.iter().filter_map(|x| x.as_str().map(String::from)).collect()).unwrap_or_default()
}

fn env<'a>(service: &'a Value, key: &str) -> Option<&'a str> {
    service["environment"][key].as_str()
}

/// `name:/path` volume mounts of a service.
fn mounts(service: &Value) -> Vec<(String, String)> {
    strings(&service["volumes"])
        .iter()
        .filter_map(|m| m.split_once(':').map(|(a, b)| (a.to_string(), b.split(':').next().unwrap_or(b).to_string())))
        .collect()
}

#[test]
fn compose_file_has_redis_api_and_gpu_worker() {
    let doc = compose();
    let services = &doc["services"];
    let (redis, api, worker) = (&services["redis"], &services["api"], &services["worker"]);
    let minio = &services["minio"];
    for (name, s) in [("redis", redis), ("minio", minio), ("api", api), ("worker", worker)] {
        assert!(s.is_mapping(), "service {name} missing");
        let test = strings(&s["healthcheck"]["test"]);
        assert!(test.first().is_some_and(|t| t == "CMD" || t == "CMD-SHELL"), "{name} needs a healthcheck");
    }

    // Redis: AOF on, data on a named volume.
    let cmd = strings(&redis["command"]).join(" ");
    assert!(cmd.contains("--appendonly yes"), "redis must run with AOF: {cmd}");
    let volumes = doc["volumes"].as_mapping().expect("top-level volumes");
    let redis_mounts = mounts(redis);
    assert!(redis_mounts.iter().any(|(v, p)| p == "/data" && volumes.contains_key(v.as_str())), "{redis_mounts:?}");

    // API node: serve without workers; worker: workers only, with a GPU reservation.
    assert_eq!(strings(&api["command"]), ["serve", "--workers", "0"]);
    assert_eq!(strings(&worker["command"]).first().map(String::as_str), Some("worker"));
    let dev = &worker["deploy"]["resources"]["reservations"]["devices"][0];
    assert_eq!(dev["driver"].as_str(), Some("nvidia"));
    assert!(strings(&dev["capabilities"]).contains(&"gpu".to_string()), "{dev:?}");

    // Both use the compose Redis and the MinIO bucket (created before they start), and share
    // no volume: each mounts only its own scratch space at its data dir.
    let bucket_cmd = strings(&services["minio-bucket"]["entrypoint"]).join(" ");
    assert!(bucket_cmd.contains("mc mb --ignore-existing m/vipavatar"), "{bucket_cmd}");
    for (name, s) in [("api", api), ("worker", worker)] {
        assert_eq!(env(s, "REDIS_URL"), Some("redis://redis:6379"), "{name}");
        assert_eq!(s["depends_on"]["redis"]["condition"].as_str(), Some("service_healthy"), "{name}");
        assert_eq!(
            s["depends_on"]["minio-bucket"]["condition"].as_str(),
            Some("service_completed_successfully"),
            "{name}"
        );
        assert_eq!(env(s, "VIPAVATAR_STORAGE"), Some("s3://vipavatar/media"), "{name}");
        assert_eq!(env(s, "VIPAVATAR_S3_ENDPOINT"), Some("http://minio:9000"), "{name}");
        let data_dir = env(s, "VIPAVATAR_DATA_DIR").expect("VIPAVATAR_DATA_DIR");
        assert!(mounts(s).iter().any(|(_, p)| p == data_dir), "{name} mounts scratch space at its data dir");
        assert!(s["build"].is_string() || s["image"].is_string(), "{name} needs an image");
    }
    let (api_vols, worker_vols): (Vec<_>, Vec<_>) = (mounts(api), mounts(worker));
    assert!(
        api_vols.iter().all(|(v, _)| worker_vols.iter().all(|(w, _)| w != v)),
        "the API node and the worker must not share a volume: {api_vols:?} / {worker_vols:?}"
    );
    assert!(api["ports"].as_sequence().is_some_and(|p| !p.is_empty()), "api publishes its port");
}

#[test]
fn compose_environment_names_are_real_settings() {
    let help = Command::new(env!("CARGO_BIN_EXE_vipavatar"))
        .args(["serve", "--help"])
        .output()
        .expect("vipavatar serve --help");
    let help = String::from_utf8_lossy(&help.stdout);
    let doc = compose();
    for name in ["api", "worker"] {
        let envs = doc["services"][name]["environment"].as_mapping().expect("environment map");
        for key in envs.keys().filter_map(|k| k.as_str()) {
            assert!(help.contains(&format!("env: {key}")), "{name}: {key} is not a vipavatar setting");
        }
    }
}

#[test]
fn dockerfile_builds_with_the_setup_script_and_runs_as_non_root() {
    let text = std::fs::read_to_string(repo().join("Dockerfile")).expect("Dockerfile");
    let froms: Vec<&str> = text.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(froms.len(), 2, "build + runtime stages: {froms:?}");
    assert!(froms[0].contains(" AS build") && froms[1].contains(" AS runtime"), "{froms:?}");
    let (build, runtime) = text.split_once("\nFROM ${RUNTIME_IMAGE}").expect("runtime stage");
    assert!(build.contains("scripts/setup.sh"), "the build stage must use scripts/setup.sh");
    assert!(build.contains("scripts/packages.txt"), "runtime packages come from scripts/packages.txt");
    for needed in
        ["torch/lib", "/usr/local/bin/vipavatar", "/app/checkpoints", "USER vipavatar", "HEALTHCHECK", "EXPOSE 8000"]
    {
        assert!(runtime.contains(needed), "runtime stage lacks {needed}");
    }
    assert!(!runtime.contains("USER root"));

    // The runtime section the Dockerfile extracts exists and has what the service runs.
    let packages = std::fs::read_to_string(repo().join("scripts/packages.txt")).expect("packages.txt");
    let section: Vec<&str> = packages
        .lines()
        .skip_while(|l| !l.starts_with("# runtime"))
        .take_while(|l| !l.starts_with("# tests"))
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .collect();
    for pkg in ["ffmpeg", "redis-server"] {
        assert!(section.contains(&pkg), "scripts/packages.txt runtime section lacks {pkg}: {section:?}");
    }
}

//! `GET /metrics`: Prometheus text format. This process's request and job metrics (from the
//! recorder in [`crate::telemetry`]) plus, read from Redis at scrape time, what every instance
//! shares: queue depth per stream, cache lookups per kind and result, job outcomes and the
//! expensive steps actually computed. Behind the API key unless `VIPAVATAR_METRICS_OPEN` is set.

use crate::errors::ErrorBody;
use crate::state::AppState;
use actix_web::{web, HttpResponse};
use std::fmt::Write;
use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(paths(metrics))]
pub struct MetricsApi;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/metrics", web::get().to(metrics));
}

/// Metrics in the Prometheus text format.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "health",
    responses(
        (status = 200, description = "Prometheus text exposition format 0.0.4", content_type = "text/plain", body = String),
        (status = 401, description = "Missing or wrong X-API-Key (unless VIPAVATAR_METRICS_OPEN)", body = ErrorBody),
    )
)]
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    let mut out = crate::telemetry::render();
    shared(&state, &mut out).await;
    HttpResponse::Ok().content_type("text/plain; version=0.0.4; charset=utf-8").body(out)
}

/// One metric family: `# HELP`, `# TYPE` and its samples (`labels` is the text inside `{}`).
fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, f64)]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, value) in samples {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {value}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    }
}

/// Label values here are kind names and fixed words; escape anyway.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

async fn shared(state: &AppState, out: &mut String) {
    let up = state.redis.is_up();
    family(
        out,
        "vipavatar_redis_up",
        "gauge",
        "Whether Redis answered its last PING",
        &[(String::new(), f64::from(u8::from(up)))],
    );
    family(
        out,
        "vipavatar_local_workers",
        "gauge",
        "Workers running in this process",
        &[(String::new(), state.local_workers as f64)],
    );
    if !up {
        return;
    }
    if let Ok(d) = state.queue.depth().await {
        let samples = [("vip", d.vip), ("standard", d.standard), ("processing", d.processing)]
            .map(|(q, n)| (format!("queue=\"{q}\""), n as f64));
        family(
            out,
            "vipavatar_queue_depth",
            "gauge",
            "Jobs waiting per stream (processing: claimed, not finished)",
            &samples,
        );
    }
    let Ok(counters) = state.cache.counters().await else { return };
    let mut lookups = Vec::new();
    let mut jobs = Vec::new();
    let mut computed = Vec::new();
    for (key, value) in &counters {
        let v = (*value).max(0) as f64;
        let Some((prefix, name)) = key.split_once(':') else { continue };
        match prefix {
            "hits" => lookups.push((format!("kind=\"{}\",result=\"hit\"", label(name)), v)),
            "misses" => lookups.push((format!("kind=\"{}\",result=\"miss\"", label(name)), v)),
            "stale" => lookups.push((format!("kind=\"{}\",result=\"stale\"", label(name)), v)),
            "jobs" => jobs.push((format!("outcome=\"{}\"", label(name)), v)),
            "computed" => computed.push((format!("step=\"{}\"", label(name)), v)),
            _ => {}
        }
    }
    family(
        out,
        "vipavatar_cache_lookups_total",
        "counter",
        "Cache lookups per kind and result, all instances (stale ones are misses too)",
        &lookups,
    );
    family(out, "vipavatar_jobs_total", "counter", "Job outcomes, all instances", &jobs);
    family(out, "vipavatar_computed_total", "counter", "Expensive steps that actually ran, all instances", &computed);
}

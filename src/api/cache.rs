//! `/api/cache`: cache effectiveness and queue state, shared by every instance (read from Redis).

use crate::errors::{ApiError, ErrorBody};
use crate::jobs::counters;
use crate::state::AppState;
use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::{OpenApi, ToSchema};

#[derive(OpenApi)]
#[openapi(
    paths(stats),
    components(schemas(
        CacheStatsResponse,
        CacheStatistics,
        CachePerformance,
        QueueStatus,
        MemoryStats,
        PerformanceSummary,
        ErrorBody
    ))
)]
pub struct CacheApi;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/stats", web::get().to(stats));
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CachePerformance {
    /// hits / (hits + misses) over every data kind (0 before any lookup).
    pub cache_hit_rate: f64,
    pub hits: BTreeMap<String, u64>,
    pub misses: BTreeMap<String, u64>,
    /// Values written by another format version (counted as misses too).
    pub stale: BTreeMap<String, u64>,
    /// How often each expensive step actually ran (precompute, prepare, audio_features, motion, render).
    pub computed: BTreeMap<String, u64>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CacheStatistics {
    /// Number of entries per key kind (`3dmm_coeffs`, `face_crop`, `gestures`, `visemes`, ...).
    #[schema(example = json!({"3dmm_coeffs": 1, "face_crop": 1, "gestures": 1, "visemes": 1}))]
    pub cached_data: BTreeMap<String, u64>,
    pub performance: CachePerformance,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct QueueStatus {
    /// Jobs waiting in the vip queue.
    pub vip: u64,
    /// Jobs waiting in the standard queue.
    pub standard: u64,
    /// Jobs claimed by a worker and not finished.
    pub processing: u64,
    /// Jobs that failed for good (all time).
    pub failed: u64,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MemoryStats {
    /// Redis `used_memory` in bytes.
    pub redis_used_bytes: u64,
    pub redis_used_human: String,
    /// Resident memory of this API process in bytes (0 where unknown).
    pub process_rss_bytes: u64,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CacheStatsResponse {
    pub cache_statistics: CacheStatistics,
    pub queue_status: QueueStatus,
    pub memory: MemoryStats,
    pub performance_summary: PerformanceSummary,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PerformanceSummary {
    /// Mean of the finished sessions' `performance.speedup` (0 before any).
    pub average_speedup: f64,
    /// Finished sessions counted in it.
    pub sessions: u64,
}

/// Cache and queue statistics.
#[utoipa::path(
    get,
    path = "/stats",
    tag = "cache",
    responses(
        (status = 200, description = "Statistics shared by every instance", body = CacheStatsResponse),
        (status = 401, description = "Missing or wrong X-API-Key", body = ErrorBody),
        (status = 503, description = "Redis unavailable", body = ErrorBody),
    )
)]
pub async fn stats(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let s = state.cache.stats().await?;
    let all = state.cache.counters().await?;
    let depth = state.queue.depth().await?;
    let computed = all
        .iter()
        .filter_map(|(k, v)| k.strip_prefix("computed:").map(|name| (name.to_string(), (*v).max(0) as u64)))
        .collect();
    let to_owned = |m: BTreeMap<&'static str, u64>| m.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    let info: String = redis::cmd("INFO").arg("memory").query_async(&mut state.cache.connection()).await?;
    let field = |name: &str| {
        info.lines().find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':'))).map(|v| v.trim().to_string())
    };
    Ok(HttpResponse::Ok().json(CacheStatsResponse {
        cache_statistics: CacheStatistics {
            cached_data: to_owned(s.entries),
            performance: CachePerformance {
                cache_hit_rate: s.hit_rate,
                hits: to_owned(s.hits),
                misses: to_owned(s.misses),
                stale: to_owned(s.stale),
                computed,
            },
        },
        queue_status: QueueStatus {
            vip: depth.vip,
            standard: depth.standard,
            processing: depth.processing,
            failed: all.get(counters::JOBS_FAILED).copied().unwrap_or(0).max(0) as u64,
        },
        memory: MemoryStats {
            redis_used_bytes: field("used_memory").and_then(|v| v.parse().ok()).unwrap_or(0),
            redis_used_human: field("used_memory_human").unwrap_or_default(),
            process_rss_bytes: process_rss(),
        },
        performance_summary: {
            let (average_speedup, sessions) = crate::performance::average(&all);
            PerformanceSummary { average_speedup, sessions }
        },
    }))
}

/// Resident set size from /proc (Linux); 0 elsewhere.
fn process_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

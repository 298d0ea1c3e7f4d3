//! Service info (`/`), liveness (`/healthz`) and readiness (`/readyz`: Redis reachable, models
//! loaded, and every local device owner healthy); both probes are always open (no API key).

use crate::jobs::registry::{EngineOffer, WorkerAd};
use crate::state::AppState;
use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::{OpenApi, ToSchema};

#[derive(OpenApi)]
#[openapi(
    paths(info, healthz, readyz),
    components(schemas(ServiceInfo, DeviceInfo, WorkerAd, EngineOffer, Health, Readiness))
)]
pub struct HealthApi;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/", web::get().to(info))
        .route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz));
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ServiceInfo {
    pub name: String,
    pub version: String,
    /// Engines loaded in this process (empty while loading).
    pub engines: Vec<String>,
    pub default_engine: Option<String>,
    /// Workers running in this process.
    pub workers: usize,
    /// This process's model owners, one per compute device, and the workers using each.
    pub devices: Vec<DeviceInfo>,
    /// Every live worker process of this deployment (advertised in Redis with a heartbeat) and
    /// the engines, sizes and options it serves.
    pub live_workers: Vec<WorkerAd>,
    pub uptime_seconds: f64,
    pub docs: String,
    pub openapi: String,
}

/// One model owner: a thread that owns one device's engines.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DeviceInfo {
    /// `cpu#0`, `cuda:1#1`: the device and the owner's place in the list.
    pub device: String,
    /// Process-unique id of the owner's current engine set (changes when it is rebuilt).
    pub instance: u64,
    /// False when the engines could not be rebuilt after a panic.
    pub healthy: bool,
    /// How often the engines were rebuilt after a panic.
    pub rebuilds: u64,
    /// Consumer names of the workers that send their model work to this owner.
    pub workers: Vec<String>,
}

fn device_infos(state: &AppState) -> Vec<DeviceInfo> {
    let local = state.devices.read().map(|d| d.clone()).unwrap_or_default();
    local
        .iter()
        .map(|d| DeviceInfo {
            device: d.models.label(),
            instance: d.models.instance(),
            healthy: d.models.is_healthy(),
            rebuilds: d.models.rebuilds(),
            workers: d.workers.clone(),
        })
        .collect()
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Health {
    pub status: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Readiness {
    /// `ready` or `not_ready`.
    pub status: String,
    pub redis: bool,
    pub engines_loaded: bool,
    /// Live worker processes of this deployment and the engines each serves (see `/`).
    pub live_workers: Vec<WorkerAd>,
    /// Why it is not ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Service information.
#[utoipa::path(get, path = "/", tag = "health", responses((status = 200, body = ServiceInfo)))]
pub async fn info(state: web::Data<AppState>) -> HttpResponse {
    let engines = crate::engines::loaded(&state.engines).ok();
    HttpResponse::Ok().json(ServiceInfo {
        name: "vipavatar".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        engines: engines
            .as_ref()
            .map(|e| e.kinds().iter().map(|k| k.as_str().to_string()).collect())
            .unwrap_or_default(),
        default_engine: engines.as_ref().map(|e| e.default_kind().as_str().to_string()),
        workers: state.local_workers,
        devices: device_infos(&state),
        live_workers: crate::jobs::registry::live_workers(&state.cache).await,
        uptime_seconds: state.started.elapsed().as_secs_f64(),
        docs: "/docs/".into(),
        openapi: "/openapi.json".into(),
    })
}

/// Liveness: the process answers (no dependencies checked; never needs an API key).
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, body = Health)), security(()))]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(Health { status: "ok".into() })
}

/// Readiness: Redis answers PING and the models are loaded (never needs an API key).
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "health",
    responses((status = 200, body = Readiness), (status = 503, description = "Not ready", body = Readiness)),
    security(())
)]
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let mut conn = state.cache.connection();
    let ping =
        tokio::time::timeout(std::time::Duration::from_secs(2), redis::cmd("PING").query_async::<String>(&mut conn))
            .await;
    let redis_ok = matches!(ping, Ok(Ok(_)));
    // An API-only node loads no models (workers elsewhere do the model work).
    let engines = if state.local_workers == 0 { Ok(()) } else { crate::engines::loaded(&state.engines).map(|_| ()) };
    let broken = device_infos(&state).into_iter().find(|d| !d.healthy);
    let reason = match (&engines, redis_ok, broken) {
        (_, false, _) => Some("redis is not reachable".to_string()),
        (Err(e), _, _) => Some(e.message.to_string()),
        (_, _, Some(d)) => Some(format!("the engines on {} could not be rebuilt after a panic", d.device)),
        _ => None,
    };
    let body = Readiness {
        status: if reason.is_none() { "ready" } else { "not_ready" }.into(),
        redis: redis_ok,
        engines_loaded: state.local_workers > 0 && engines.is_ok(),
        live_workers: crate::jobs::registry::live_workers(&state.cache).await,
        reason,
    };
    if body.status == "ready" {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().insert_header(("Retry-After", "5")).json(body)
    }
}

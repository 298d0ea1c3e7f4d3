//! Worker advertisements: every worker process writes, with a heartbeat, a key with a TTL in its
//! namespace (`{namespace}:worker:{id}`) saying which engines, sizes and options it serves; a key
//! that stops being refreshed expires, so what is in Redis is the set of live workers. `/` lists
//! them, and an API-only node picks engines from them ([`pick_engine`]).

use crate::devices::DeviceOwner;
use crate::errors::{ApiError, Code};
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tokio::sync::watch;
use utoipa::ToSchema;
use vipavatar_cache::{Cache, Namespace};
use vipavatar_pipeline::engine::{EngineKind, Enhancer, GenerateOptions, PreprocessMode};

/// How often a worker process refreshes its advertisement; the key lives three times as long.
pub const HEARTBEAT: Duration = Duration::from_secs(5);

/// What one engine of a worker process serves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EngineOffer {
    pub engine: String,
    /// Output sizes it renders (256, 512).
    pub sizes: Vec<u32>,
    /// `crop`, `resize`, `full`.
    pub preprocess: Vec<String>,
    /// `none`, and `gfpgan` when the worker has `GFPGANv1.4.pth`.
    pub enhancers: Vec<String>,
}

/// One live worker process, as it advertises itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WorkerAd {
    /// `{host}-{pid}`.
    pub id: String,
    /// Workers (job consumers) in the process.
    pub workers: usize,
    /// Its model owners (`cpu#0`, `cuda:1#1`).
    pub devices: Vec<String>,
    pub default_engine: String,
    pub engines: Vec<EngineOffer>,
    /// When it last refreshed this, in ms since the epoch.
    pub heartbeat_ms: i64,
}

fn key(ns: &Namespace, id: &str) -> String {
    ns.name(&format!("worker:{id}"))
}

/// The offers of the engines on `owner`: every size / mode / enhancer its option check accepts
/// (so `gfpgan` only where the engine found `GFPGANv1.4.pth` in its checkpoints directory).
pub fn offers(owner: &DeviceOwner) -> Vec<EngineOffer> {
    let engines = owner.models.engines();
    engines
        .kinds()
        .into_iter()
        .filter_map(|kind| engines.get(Some(kind)).ok())
        .map(|engine| {
            let ok = |o: GenerateOptions| engine.check_options(&o).is_ok();
            let base = GenerateOptions::default();
            EngineOffer {
                engine: engine.kind().as_str().to_string(),
                sizes: [256, 512].into_iter().filter(|&size| ok(GenerateOptions { size, ..base.clone() })).collect(),
                preprocess: [PreprocessMode::Crop, PreprocessMode::Resize, PreprocessMode::Full]
                    .into_iter()
                    .filter(|&preprocess| ok(GenerateOptions { preprocess, ..base.clone() }))
                    .map(|m| m.as_str().to_string())
                    .collect(),
                enhancers: [Enhancer::None, Enhancer::Gfpgan]
                    .into_iter()
                    .filter(|&enhancer| ok(GenerateOptions { enhancer, ..base.clone() }))
                    .map(|e| e.as_str().to_string())
                    .collect(),
            }
        })
        .collect()
}

/// Advertise `ad` every [`HEARTBEAT`] until `shutdown`, then remove the key.
pub async fn advertise(cache: Cache, mut ad: WorkerAd, mut shutdown: watch::Receiver<bool>) {
    let (name, ttl_ms) = (key(cache.namespace(), &ad.id), (HEARTBEAT * 3).as_millis() as u64);
    let mut conn = cache.connection();
    loop {
        ad.heartbeat_ms = crate::records::now_ms() as i64;
        let body = serde_json::to_string(&ad).unwrap_or_default();
        if let Err(e) = conn.pset_ex::<_, _, ()>(&name, body, ttl_ms).await {
            tracing::warn!(error = %e, "could not refresh the worker advertisement");
        }
        tokio::select! {
            _ = tokio::time::sleep(HEARTBEAT) => {}
            _ = shutdown.wait_for(|s| *s) => break,
        }
    }
    let _ = conn.del::<_, ()>(&name).await;
}

/// The engine a generate request runs on. A node with workers checks its own engines; an
/// API-only node (no workers, no models) picks from what live workers advertise: 503 `no_worker`
/// (with `Retry-After`) when none serves the engine, 422 when none serves the size or enhancer.
pub async fn pick_engine(
    state: &crate::state::AppState,
    requested: Option<EngineKind>,
    opts: &GenerateOptions,
) -> Result<EngineKind, ApiError> {
    if state.local_workers > 0 {
        let engine = crate::engines::loaded(&state.engines)?.get(requested)?;
        engine.check_options(opts)?;
        return Ok(engine.kind());
    }
    let live = live_workers(&state.cache).await;
    let parse = |s: &str| serde_json::from_value::<EngineKind>(serde_json::Value::String(s.to_string())).ok();
    let kind = match requested.or(state.config.engine.fixed()) {
        Some(k) => k,
        None => live.iter().find_map(|w| parse(&w.default_engine)).ok_or_else(|| no_worker("any engine"))?,
    };
    let offers: Vec<&EngineOffer> =
        live.iter().flat_map(|w| w.engines.iter()).filter(|e| e.engine == kind.as_str()).collect();
    if offers.is_empty() {
        return Err(no_worker(&format!("engine `{}`", kind.as_str())));
    }
    let enhancer = opts.enhancer.as_str();
    if !offers.iter().any(|e| e.sizes.contains(&opts.size) && e.enhancers.iter().any(|x| x == enhancer)) {
        return Err(ApiError::new(
            Code::UnsupportedOption,
            format!("no live worker serves engine `{}` at size {} with enhancer {enhancer}", kind.as_str(), opts.size),
        ));
    }
    Ok(kind)
}

fn no_worker(what: &str) -> ApiError {
    ApiError::new(Code::NoWorker, format!("no live worker serves {what}; try again when one has started"))
        .retry_after(5)
}

/// Every live worker process of the namespace.
pub async fn live_workers(cache: &Cache) -> Vec<WorkerAd> {
    let mut conn = cache.connection();
    let pattern = key(cache.namespace(), "*");
    let Ok(names) = vipavatar_cache::scan(&mut conn, &pattern).await else { return Vec::new() };
    let mut ads = Vec::new();
    for n in names {
        if let Ok(Some(body)) = conn.get::<_, Option<String>>(&n).await {
            if let Ok(ad) = serde_json::from_str::<WorkerAd>(&body) {
                ads.push(ad);
            }
        }
    }
    ads.sort_by(|a, b| a.id.cmp(&b.id));
    ads
}

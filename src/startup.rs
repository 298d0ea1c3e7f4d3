//! Building the running service: connect Redis (or start a private one), start one model owner
//! per device (each loads its engines on its own thread) and N workers spread over them, and
//! the HTTP server; and stopping it all in order.

use crate::api;
use crate::blobs::BlobStore;
use crate::config::{redact_url, Config};
use crate::devices::{assign, plan, DeviceOwner, LocalDevice, LocalDevices};
use crate::engines::EngineState;
use crate::jobs::worker::run_worker;
use crate::jobs::{JobContext, JobQueue};
use crate::redis_server::RedisChild;
use crate::redis_watch::{self, RedisHealth};
use crate::state::AppState;
use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpServer};
use anyhow::Context;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use vipavatar_cache::{Cache, CacheConfig, FragmentStreams};

/// Layout version of everything the service stores through the cache; bump it when a stored
/// struct changes so old values read as misses.
/// 4: the avatar analysis records its landmark model (the face mesh became the default).
/// 5: the avatar analysis keeps the whole face mesh (the classic engine warps with it).
pub const CACHE_SCHEMA_VERSION: u16 = 5;

/// Redis, cache, queue and files: what both the API and the workers use.
pub struct Services {
    pub client: redis::Client,
    pub cache: Cache,
    pub queue: JobQueue,
    pub blobs: BlobStore,
    /// Live video streams (fragments in Redis).
    pub streams: FragmentStreams,
    pub redis_child: Option<RedisChild>,
}

impl Services {
    /// Connect (starting a private redis-server when allowed and `REDIS_URL` is unset).
    pub async fn connect(config: &Config, allow_private_redis: bool) -> anyhow::Result<Self> {
        let (url, redis_child) = match &config.redis_url {
            Some(u) => (u.as_str().to_string(), None),
            None if allow_private_redis => {
                let child = RedisChild::start(&config.data_dir).await?;
                (child.url().to_string(), Some(child))
            }
            None => anyhow::bail!("REDIS_URL must be set: workers share the Redis of the API nodes"),
        };
        let shown = redact_url(&url);
        let client = redis::Client::open(url.as_str()).with_context(|| format!("invalid REDIS_URL {shown:?}"))?;
        let conn = tokio::time::timeout(
            Duration::from_secs(20),
            redis_watch::connect(&client, config.edge.redis_timeout(), Duration::from_secs(15)),
        )
        .await
        .context("timed out connecting to Redis")?
        .with_context(|| format!("cannot connect to Redis at {shown}"))?;
        let cache = Cache::new(
            conn.clone(),
            CacheConfig {
                namespace: config.namespace.clone(),
                ttls: config.ttl.ttls(),
                schema_version: CACHE_SCHEMA_VERSION,
            },
        );
        let streams = FragmentStreams::new(client.clone(), conn.clone(), config.namespace.clone(), &config.ttl.ttls());
        let queue = JobQueue::new(conn, config.namespace.clone());
        queue.ensure_groups().await.context("create the job streams")?;
        let blobs = BlobStore::from_config(config)
            .with_context(|| format!("open the blob storage (data directory {})", config.data_dir.display()))?;
        tracing::info!(storage = %blobs.describe(), "blob storage");
        Ok(Self { client, cache, queue, blobs, streams, redis_child })
    }
}

/// Default worker count: one per CUDA device, else one.
pub fn default_workers() -> usize {
    let n = if vipavatar_pipeline::device::cuda_available() { tch::Cuda::device_count() } else { 0 };
    n.max(1) as usize
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "host".into())
}

/// The models of a process and its workers, as [`start_workers`] leaves them.
pub struct Started {
    /// One engine set for the API's option checks: the first device owner's (an API-only node
    /// loads its own).
    pub engines: watch::Receiver<EngineState>,
    /// The device owners of this process (empty for an API-only node).
    pub devices: LocalDevices,
    pub workers: Vec<JoinHandle<()>>,
}

type OwnersState = Option<Result<Vec<DeviceOwner>, String>>;

/// Start one model owner per configured device (no more than `n`) and `n` workers spread over
/// them round-robin; each worker waits for its owner, and owns one blocking Redis connection.
/// Without workers, one engine set is loaded in the background for the API's option checks.
pub fn start_workers(
    n: usize,
    config: &Config,
    services: &Services,
    shutdown: &watch::Receiver<bool>,
) -> anyhow::Result<Started> {
    let devices: LocalDevices = LocalDevices::default();
    if n == 0 {
        // An API-only node loads no model: it routes by what live workers advertise.
        let (_, none) =
            watch::channel::<EngineState>(Some(Err("this node runs no workers and loads no models".into())));
        return Ok(Started { engines: none, devices, workers: Vec::new() });
    }
    let plan = plan(config, n).map_err(|e| anyhow::anyhow!("VIPAVATAR_DEVICE: {e}"))?;
    // Workers encode video after video: each encode leaves an ffmpeg started for the next one.
    config.jobs.apply_encoding();
    let slots = assign(n, plan.len());
    let consumers: Vec<String> = (0..n).map(|i| format!("{}-{}-w{i}", host_name(), std::process::id())).collect();
    let (engines_tx, engines_rx) = watch::channel::<EngineState>(None);
    let (owners_tx, owners_rx) = watch::channel::<OwnersState>(None);
    let (cfg, local, names, assigned) = (config.clone(), devices.clone(), consumers.clone(), slots.clone());
    let (ad_cache, ad_shutdown) = (services.cache.clone(), shutdown.clone());
    crate::spawn_named("load-devices", async move {
        let starts = plan.iter().enumerate().map(|(i, d)| DeviceOwner::start(i, *d, &cfg));
        let result: Result<Vec<DeviceOwner>, String> =
            futures_util::future::join_all(starts).await.into_iter().collect();
        match &result {
            Ok(owners) => {
                let _ = engines_tx.send(Some(Ok(owners[0].models.engines())));
                let ad = crate::jobs::registry::WorkerAd {
                    id: format!("{}-{}", host_name(), std::process::id()),
                    workers: names.len(),
                    devices: owners.iter().map(|o| o.models.label()).collect(),
                    default_engine: owners[0].models.default_kind().as_str().to_string(),
                    engines: crate::jobs::registry::offers(&owners[0]),
                    heartbeat_ms: 0,
                };
                crate::spawn_named("advertise", crate::jobs::registry::advertise(ad_cache, ad, ad_shutdown));
                if let Ok(mut l) = local.write() {
                    *l = owners
                        .iter()
                        .enumerate()
                        .map(|(o, owner)| LocalDevice {
                            models: owner.models.clone(),
                            workers: names
                                .iter()
                                .zip(&assigned)
                                .filter(|(_, s)| **s == o)
                                .map(|(c, _)| c.clone())
                                .collect(),
                        })
                        .collect();
                }
            }
            Err(why) => {
                tracing::error!(error = %why, "loading the models failed");
                let _ = engines_tx.send(Some(Err(why.clone())));
            }
        }
        let _ = owners_tx.send(Some(result));
    });
    let mut workers: Vec<JoinHandle<()>> = consumers
        .into_iter()
        .zip(slots)
        .enumerate()
        .map(|(i, (consumer, slot))| {
            let (config, client, cache, queue, blobs) = (
                config.clone(),
                services.client.clone(),
                services.cache.clone(),
                services.queue.clone(),
                services.blobs.clone(),
            );
            let streams = services.streams.clone();
            let (mut owners, shutdown) = (owners_rx.clone(), shutdown.clone());
            crate::spawn_named(&format!("worker-{i}"), async move {
                let loaded = match owners.wait_for(|o| o.is_some()).await {
                    Ok(state) => state.clone(),
                    Err(_) => return,
                };
                let Some(Ok(owners)) = loaded else {
                    return tracing::error!(%consumer, "models did not load; this worker takes no jobs");
                };
                let owner = owners[slot].clone();
                let blocking = match client.get_connection_manager().await {
                    Ok(c) => c,
                    Err(e) => return tracing::error!(error = %e, "cannot open the worker's Redis connection"),
                };
                tracing::info!(%consumer, device = %owner.models.label(), "worker assigned");
                let ctx = Arc::new(JobContext {
                    config,
                    cache,
                    queue,
                    blobs,
                    streams,
                    engines: owner.models,
                    model: owner.thread,
                    consumer,
                });
                run_worker(ctx, blocking, shutdown).await;
            })
        })
        .collect();
    // Webhook deliveries: one deliverer per worker process.
    let consumer = format!("{}-{}-webhooks", host_name(), std::process::id());
    let fetcher = crate::fetch::Fetcher::new(&config.fetch)?;
    let deliverer = crate::webhooks::deliver::Deliverer::new(config, services.cache.clone(), fetcher, consumer)?;
    workers.push(crate::spawn_named("webhooks", deliverer.run(shutdown.clone())));
    Ok(Started { engines: engines_rx, devices, workers })
}

/// Sweep `{data}/tmp` now (see [`crate::blobs::Scratch::sweep_tmp`]), then every `VIPAVATAR_TMP_SWEEP_SECS`
/// until `shutdown`.
pub async fn sweep_tmp_periodically(
    blobs: &BlobStore,
    config: &Config,
    shutdown: &watch::Receiver<bool>,
) -> JoinHandle<()> {
    let max_age = Duration::from_secs(config.jobs.tmp_max_age_secs);
    let every = Duration::from_secs(config.jobs.tmp_sweep_secs.max(1));
    let sweep = move |blobs: BlobStore| async move {
        match tokio::task::spawn_blocking(move || blobs.scratch().sweep_tmp(max_age)).await {
            Ok(Ok(s)) if s.files > 0 => {
                tracing::info!(files = s.files, bytes = s.bytes, "removed orphaned temporary files")
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "sweeping temporary files failed"),
            Err(e) => tracing::warn!(error = %e, "sweeping temporary files panicked"),
        }
    };
    sweep(blobs.clone()).await;
    let (blobs, mut shutdown) = (blobs.clone(), shutdown.clone());
    crate::spawn_named("tmp-sweeper", async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => sweep(blobs.clone()).await,
                _ = shutdown.changed() => return,
            }
        }
    })
}

/// The API server plus in-process workers.
pub struct Application {
    port: u16,
    server: actix_web::dev::Server,
    workers: Vec<JoinHandle<()>>,
    shutdown: watch::Sender<bool>,
    redis_child: Option<RedisChild>,
}

impl Application {
    pub async fn build(config: Config, workers: usize) -> anyhow::Result<Self> {
        crate::telemetry::handle();
        let mut services = Services::connect(&config, true).await?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let mut worker_handles = vec![sweep_tmp_periodically(&services.blobs, &config, &shutdown_rx).await];
        let started = start_workers(workers, &config, &services, &shutdown_rx)?;
        worker_handles.extend(started.workers);
        let redis = RedisHealth::watch(services.cache.connection(), config.edge.redis_timeout(), shutdown_rx.clone());
        let state = AppState {
            config: Arc::new(config.clone()),
            cache: services.cache.clone(),
            queue: services.queue.clone(),
            blobs: services.blobs.clone(),
            streams: services.streams.clone(),
            fetcher: crate::fetch::Fetcher::new(&config.fetch)?,
            engines: started.engines,
            devices: started.devices,
            started: Instant::now(),
            local_workers: workers,
            redis,
        };
        let listener = std::net::TcpListener::bind(&config.bind).with_context(|| format!("bind {}", config.bind))?;
        let port = listener.local_addr()?.port();
        let server = HttpServer::new(move || {
            App::new()
                .app_data(web::Data::new(state.clone()))
                .wrap(from_fn(api::edge::body_timeout))
                .wrap(from_fn(api::edge::redis_gate))
                .wrap(from_fn(api::require_api_key))
                .wrap(api::error_handlers())
                .wrap(from_fn(api::log_request))
                .configure(api::configure)
        })
        .listen(listener)?
        .disable_signals()
        .shutdown_timeout(10)
        .run();
        tracing::info!(port, workers, "listening");
        Ok(Self { port, server, workers: worker_handles, shutdown, redis_child: services.redis_child.take() })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serve until SIGINT/SIGTERM (or the server stops), then stop workers and private Redis.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let handle = self.server.handle();
        let server = crate::spawn_named("http-server", self.server);
        tokio::select! {
            _ = shutdown_signal() => tracing::info!("shutting down"),
            r = server => { r??; }
        }
        handle.stop(true).await;
        stop_workers(&self.shutdown, self.workers).await;
        if let Some(child) = self.redis_child {
            child.stop().await;
        }
        Ok(())
    }
}

/// Ask workers to stop after their current job; give them a while, then abandon them (their
/// jobs are reclaimed by other workers after the lease).
pub async fn stop_workers(shutdown: &watch::Sender<bool>, workers: Vec<JoinHandle<()>>) {
    let _ = shutdown.send(true);
    for w in workers {
        let abort = w.abort_handle();
        if tokio::time::timeout(Duration::from_secs(60), w).await.is_err() {
            abort.abort();
        }
    }
}

/// Workers only (`vipavatar worker`): several processes on several machines share one Redis.
pub async fn run_workers(config: Config, n: usize) -> anyhow::Result<()> {
    let services = Services::connect(&config, false).await?;
    let (shutdown, rx) = watch::channel(false);
    let mut workers = vec![sweep_tmp_periodically(&services.blobs, &config, &rx).await];
    workers.extend(start_workers(n.max(1), &config, &services, &rx)?.workers);
    tracing::info!(workers = n, "worker process running");
    shutdown_signal().await;
    tracing::info!("shutting down workers");
    stop_workers(&shutdown, workers).await;
    Ok(())
}

/// SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

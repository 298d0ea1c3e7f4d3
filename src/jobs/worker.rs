//! The worker loop: claim (stale entries first, then vip, then standard), heartbeat the lease
//! while working, retry with exponential backoff up to the attempt limit, then fail the job with
//! its stored error; ack either way. A panic in a job is caught and counted as a failed attempt.

use super::avatar::{fail_precompute, run_idle, run_precompute};
use super::generate::{fail_generate, run_generate};
use super::parts::run_part;
use super::{counters, Delivery, Job, JobContext, JobError, Queue};
use crate::errors::{ApiError, Code};
use futures_util::FutureExt;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tracing::Instrument;

/// Run until `shutdown` turns true; the current job is finished first.
pub async fn run_worker(
    ctx: Arc<JobContext>,
    mut blocking: redis::aio::ConnectionManager,
    mut shutdown: watch::Receiver<bool>,
) {
    let lease = ctx.config.jobs.lease();
    tracing::info!(consumer = %ctx.consumer, lease_s = lease.as_secs(), "worker started");
    while !*shutdown.borrow() {
        let claimed = tokio::select! {
            r = ctx.queue.claim(&mut blocking, &ctx.consumer, lease, Duration::from_millis(1000)) => r,
            _ = shutdown.changed() => break,
        };
        let deliveries = match claimed {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "claiming a job failed; retrying shortly");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let held: Arc<Mutex<Vec<(Queue, String)>>> =
            Arc::new(Mutex::new(deliveries.iter().map(|d| (d.queue, d.entry.clone())).collect()));
        let heartbeat = spawn_heartbeat(&ctx, held.clone());
        for d in deliveries {
            process(&ctx, &d).await;
            if let Ok(mut h) = held.lock() {
                h.retain(|(q, e)| !(*q == d.queue && *e == d.entry));
            }
        }
        heartbeat.abort();
    }
    tracing::info!(consumer = %ctx.consumer, "worker stopped");
}

fn spawn_heartbeat(ctx: &Arc<JobContext>, held: Arc<Mutex<Vec<(Queue, String)>>>) -> tokio::task::JoinHandle<()> {
    let ctx = ctx.clone();
    let every = (ctx.config.jobs.lease() / 3).max(Duration::from_millis(200));
    let name = format!("heartbeat-{}", ctx.consumer);
    crate::spawn_named(&name, async move {
        loop {
            tokio::time::sleep(every).await;
            let entries = held.lock().map(|h| h.clone()).unwrap_or_default();
            if let Err(e) = ctx.queue.heartbeat(&ctx.consumer, &entries).await {
                tracing::warn!(error = %e, "heartbeat failed");
            }
        }
    })
}

fn backoff(ctx: &JobContext, attempt: u32) -> Duration {
    let base = ctx.config.jobs.job_backoff_ms;
    Duration::from_millis(base.saturating_mul(1u64 << attempt.saturating_sub(1).min(10)))
}

/// Run one delivery to its end (done, failed, or dropped) and ack it.
async fn process(ctx: &JobContext, d: &Delivery) {
    let job = match &d.job {
        Ok(job) => job.clone(),
        Err(why) => {
            tracing::error!(entry = %d.entry, %why, "dropping an undecodable job");
            let _ = ctx.queue.ack(d).await;
            return;
        }
    };
    // Temporaries of this job survive tmp sweeps while it runs.
    let _files = ctx.blobs.hold();
    let span = tracing::info_span!("job", queue = d.queue.name(), entry = %d.entry, ?job);
    let started = std::time::Instant::now();
    let kind = match &job {
        Job::Precompute { .. } => "precompute",
        Job::Generate { .. } => "generate",
        Job::Idle { .. } => "idle",
        Job::Part { .. } => "part",
    };
    let outcome = async {
        let mut outcome = "failed";
        if d.reclaimed {
            let _ = ctx.cache.incr(counters::JOBS_RECLAIMED, 1).await;
        }
        let max = ctx.config.jobs.job_max_attempts.max(1);
        let mut healed = std::collections::HashSet::new();
        loop {
            let attempt = match ctx.queue.start_attempt(d).await {
                Ok(a) => a,
                Err(e) => {
                    // Leave the entry pending; it is reclaimed after the lease.
                    tracing::error!(error = %e, "cannot record the attempt; leaving the job for later");
                    return "abandoned";
                }
            };
            if attempt > max {
                let err = JobError::Final(
                    ApiError::new(Code::WorkerLost, format!("the job was interrupted {} times (worker lost)", attempt - 1))
                        .body(),
                );
                finish_failed(ctx, &job, &err).await;
                break;
            }
            let result = AssertUnwindSafe(run(ctx, &job, attempt)).catch_unwind().await.unwrap_or_else(|panic| {
                Err(super::internal(format!("job panicked: {}", super::panic_message(panic.as_ref()))))
            });
            match result {
                Ok(()) => {
                    let _ = ctx.cache.incr(counters::JOBS_DONE, 1).await;
                    outcome = "done";
                    break;
                }
                Err(JobError::Stale { blob, body }) if healed.insert(blob) => {
                    tracing::warn!(?blob, message = %body.message, "stale cache entry; evicting it and running again");
                    super::stale::evict(ctx, &job, blob).await;
                }
                Err(e @ JobError::Final(_)) => {
                    tracing::info!(code = %e.body().code, message = %e.body().message, "job failed (input error)");
                    finish_failed(ctx, &job, &e).await;
                    break;
                }
                Err(e @ JobError::Retry(_)) if attempt >= max => {
                    tracing::error!(code = %e.body().code, message = %e.body().message, attempt, "job failed; no attempts left");
                    finish_failed(ctx, &job, &e).await;
                    break;
                }
                Err(e) => {
                    let wait = backoff(ctx, attempt);
                    tracing::warn!(code = %e.body().code, message = %e.body().message, attempt, ?wait, "job failed; retrying");
                    let _ = ctx.cache.incr(counters::JOBS_RETRIED, 1).await;
                    tokio::time::sleep(wait).await;
                }
            }
        }
        if let Err(e) = ctx.queue.ack(d).await {
            tracing::error!(error = %e, "ack failed; the job may run again");
        }
        outcome
    }
    .instrument(span)
    .await;
    crate::telemetry::record_job(kind, outcome, started.elapsed());
}

async fn run(ctx: &JobContext, job: &Job, attempt: u32) -> Result<(), JobError> {
    match job {
        Job::Precompute { image, mode } => run_precompute(ctx, image, *mode).await,
        Job::Generate { session } => run_generate(ctx, session, attempt).await,
        Job::Idle { image, mode } => run_idle(ctx, image, *mode).await,
        Job::Part { session, attempt, index, start, end } => {
            run_part(ctx, session, *attempt, *index, *start..*end).await
        }
    }
}

async fn finish_failed(ctx: &JobContext, job: &Job, err: &JobError) {
    let _ = ctx.cache.incr(counters::JOBS_FAILED, 1).await;
    let stored = match job {
        Job::Precompute { image, mode } => fail_precompute(ctx, image, *mode, err).await,
        Job::Generate { session } => fail_generate(ctx, session, err).await,
        // The avatar itself is fine without its idle loop: log and move on.
        Job::Idle { image, .. } => {
            tracing::warn!(%image, error = %err.body().message, "the idle loop could not be rendered");
            Ok(())
        }
        // The coordinator of the session sees the part's error in its stream (or renders the
        // part itself).
        Job::Part { session, index, .. } => {
            tracing::warn!(%session, index, error = %err.body().message, "a part could not be rendered");
            Ok(())
        }
    };
    if let Err(e) = stored {
        tracing::error!(error = ?e.body(), "could not store the failure");
    }
}

//! Process metrics through the `metrics` facade, exported in the Prometheus text format by
//! `metrics-exporter-prometheus` (one global recorder per process): HTTP requests and latency per
//! route and status, job durations per kind and outcome, and time to first frame and x-realtime
//! per engine. `/metrics` adds the values shared in
//! Redis at scrape time (see `api::metrics`).

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use std::time::Duration;

pub const HTTP_REQUESTS: &str = "vipavatar_http_requests_total";
pub const HTTP_DURATION: &str = "vipavatar_http_request_duration_seconds";
pub const JOBS: &str = "vipavatar_job_duration_seconds";
pub const FIRST_FRAME: &str = "vipavatar_first_frame_seconds";
pub const REALTIME: &str = "vipavatar_realtime_factor";

const HTTP_BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
const JOB_BUCKETS: &[f64] = &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0];
const FIRST_FRAME_BUCKETS: &[f64] = &[0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0];
const REALTIME_BUCKETS: &[f64] = &[0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 12.0, 16.0, 24.0, 32.0, 64.0];

/// The process's recorder, installed on first use; `None` if another recorder was installed.
pub fn handle() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let installed = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(HTTP_DURATION.into()), HTTP_BUCKETS)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(JOBS.into()), JOB_BUCKETS))
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(FIRST_FRAME.into()), FIRST_FRAME_BUCKETS))
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(REALTIME.into()), REALTIME_BUCKETS))
                .and_then(|b| b.install_recorder());
            match installed {
                Ok(h) => {
                    metrics::describe_counter!(
                        HTTP_REQUESTS,
                        "HTTP requests answered, per method, route pattern and status"
                    );
                    metrics::describe_histogram!(
                        HTTP_DURATION,
                        "HTTP request latency in seconds, per method, route pattern and status"
                    );
                    metrics::describe_histogram!(
                        JOBS,
                        "Job run time in seconds (all attempts), per job kind and outcome"
                    );
                    metrics::describe_histogram!(
                        FIRST_FRAME,
                        "Seconds from a generate request to its first live fragment, per engine"
                    );
                    metrics::describe_histogram!(
                        REALTIME,
                        "Seconds of audio per second of generation (request to ready), per engine"
                    );
                    Some(h)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "metrics recorder not installed; /metrics shows only the shared values");
                    None
                }
            }
        })
        .as_ref()
}

/// Count one answered request.
pub fn record_request(method: &str, route: &str, status: u16, took: Duration) {
    let labels = [("method", method.to_string()), ("route", route.to_string()), ("status", status.to_string())];
    metrics::counter!(HTTP_REQUESTS, &labels).increment(1);
    metrics::histogram!(HTTP_DURATION, &labels).record(took.as_secs_f64());
}

/// Record one finished job (`outcome`: done, failed, abandoned).
pub fn record_job(kind: &'static str, outcome: &'static str, took: Duration) {
    metrics::histogram!(JOBS, "kind" => kind, "outcome" => outcome).record(took.as_secs_f64());
}

/// The recorder's families in the text format (empty without a recorder).
pub fn render() -> String {
    match handle() {
        Some(h) => {
            h.run_upkeep();
            h.render()
        }
        None => String::new(),
    }
}

/// Record one rendered session: time to its first live fragment and its x-realtime.
pub fn record_generate(engine: &'static str, first_frame: Option<Duration>, realtime: f64) {
    if let Some(t) = first_frame {
        metrics::histogram!(FIRST_FRAME, "engine" => engine).record(t.as_secs_f64());
    }
    if realtime.is_finite() {
        metrics::histogram!(REALTIME, "engine" => engine).record(realtime);
    }
}

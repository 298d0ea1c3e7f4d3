//! Process metrics through the `metrics` facade, exported in the Prometheus text format by
//! `metrics-exporter-prometheus` (one global recorder per process): HTTP requests and latency per
//! route and status, and job durations per kind and outcome. `/metrics` adds the values shared in
//! Redis at scrape time (see `api::metrics`).

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use std::time::Duration;

pub const HTTP_REQUESTS: &str = "vipavatar_http_requests_total";
pub const HTTP_DURATION: &str = "vipavatar_http_request_duration_seconds";
pub const JOBS: &str = "vipavatar_job_duration_seconds";

const HTTP_BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
const JOB_BUCKETS: &[f64] = &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0];

/// The process's recorder, installed on first use; `None` if another recorder was installed.
pub fn handle() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let installed = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(HTTP_DURATION.into()), HTTP_BUCKETS)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(JOBS.into()), JOB_BUCKETS))
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

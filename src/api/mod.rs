//! The HTTP API: one module per resource, each with its own `configure` and `OpenApi`, nested
//! here into one document; API-key auth, JSON error bodies for every failure (extractors and
//! unknown routes included), request logging, and Swagger UI at `/docs`.

pub mod avatar;
pub mod avatars;
pub mod body;
pub mod cache;
pub mod callbacks;
pub mod delivery;
pub mod demo;
pub mod edge;
pub mod health;
pub mod hls;
pub mod idle;
pub mod inputs;
pub mod media;
pub mod metrics;
pub mod multipart;
pub mod spec;
pub mod stream;
pub mod vip;
pub mod vip_docs;

use crate::errors::{ApiError, Code};
use crate::state::AppState;
use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header;
use actix_web::middleware::{ErrorHandlerResponse, ErrorHandlers, Next};
use actix_web::{web, HttpResponse, ResponseError};
use std::collections::BTreeMap;
use subtle::ConstantTimeEq;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_swagger_ui::SwaggerUi;
use vipavatar_cache::{ImageHash, Key, SessionId};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "vipavatar",
        description = "Talking-head video service: upload a portrait once (precomputed and cached), then generate many videos from speech audio quickly.",
        license(name = "MIT")
    ),
    nest(
        (path = "/api/avatar", api = avatar::AvatarApi),
        (path = "/api/avatars", api = avatars::AvatarsApi),
        (path = "/api/vip", api = vip::VipApi),
        (path = "/api/cache", api = cache::CacheApi),
    ),
    tags(
        (name = "avatar", description = "Upload portraits and follow their precompute"),
        (name = "vip", description = "Generate videos and download them"),
        (name = "cache", description = "Cache and queue statistics"),
        (name = "health", description = "Service info, liveness and readiness"),
    ),
    modifiers(&SecurityAddon)
)]
pub struct ApiDoc;

struct SecurityAddon;

impl Modify for SecurityAddon {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-API-Key",
                "Required on every route except /healthz and /readyz when the server sets API_KEYS (unset: no key needed)",
            ))),
        );
        openapi.security =
            Some(vec![utoipa::openapi::security::SecurityRequirement::new("api_key", Vec::<String>::new())]);
    }
}

/// The whole OpenAPI document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.merge(health::HealthApi::openapi());
    doc.merge(metrics::MetricsApi::openapi());
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    spec::complete(&mut doc);
    doc
}

/// The document as committed in `openapi/openapi.json` (pretty, trailing newline).
pub fn openapi_json() -> String {
    let mut s = openapi().to_pretty_json().unwrap_or_default();
    s.push('\n');
    s
}

/// Register every route, the docs, auth and error handling.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.app_data(
        web::PathConfig::default().error_handler(|e, _| ApiError::new(Code::BadRequest, e.to_string()).into()),
    )
    .app_data(web::QueryConfig::default().error_handler(|e, _| ApiError::new(Code::InvalidField, e.to_string()).into()))
    .app_data(web::JsonConfig::default().error_handler(|e, _| {
        let timed_out = match &e {
            actix_web::error::JsonPayloadError::Payload(p) => edge::payload_error(p),
            _ => None,
        };
        timed_out.unwrap_or_else(|| ApiError::new(Code::BadRequest, e.to_string())).into()
    }))
    .service(web::scope("/api/avatar").configure(avatar::configure))
    .service(web::scope("/api/avatars").configure(avatars::configure))
    .service(web::scope("/api/vip").configure(vip::configure))
    .service(web::scope("/api/cache").configure(cache::configure))
    .configure(health::configure)
    .configure(metrics::configure)
    .configure(demo::configure)
    .route(
        "/docs",
        web::get()
            .to(|| async { HttpResponse::PermanentRedirect().insert_header((header::LOCATION, "/docs/")).finish() }),
    )
    .service(SwaggerUi::new("/docs/{_:.*}").url("/openapi.json", openapi()))
    .default_service(web::to(edge::fallback));
}

/// Wrap the app: request log, API-key check, JSON bodies for actix's own errors.
pub fn error_handlers() -> ErrorHandlers<BoxBody> {
    ErrorHandlers::new().default_handler(json_error_body)
}

/// Replace a non-JSON error body (actix's plain-text 404/405/400s) with `{message, code, type}`.
fn json_error_body(res: ServiceResponse<BoxBody>) -> actix_web::Result<ErrorHandlerResponse<BoxBody>> {
    let is_json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json || !(res.status().is_client_error() || res.status().is_server_error()) {
        return Ok(ErrorHandlerResponse::Response(res.map_into_left_body()));
    }
    let code = match res.status().as_u16() {
        404 => Code::RouteNotFound,
        405 => Code::MethodNotAllowed,
        413 => Code::PayloadTooLarge,
        415 => Code::UnsupportedMediaType,
        s if s < 500 => Code::BadRequest,
        _ => Code::Internal,
    };
    let message = res
        .response()
        .error()
        .map(|e| e.to_string())
        .unwrap_or_else(|| res.status().canonical_reason().unwrap_or("error").to_string());
    let (req, old) = res.into_parts();
    let mut new = ApiError::new(code, message).error_response();
    *new.status_mut() = old.status();
    Ok(ErrorHandlerResponse::Response(ServiceResponse::new(req, new).map_into_right_body()))
}

/// Routes that never need an API key: the probes (orchestrators cannot send one; they tell
/// nothing secret). The demo page's static files ([`demo::PAGES`]) are open too.
pub const OPEN_ROUTES: &[&str] = &["/healthz", "/readyz"];

/// `X-API-Key` check (constant time) when `API_KEYS` is set; [`OPEN_ROUTES`] and the demo page's
/// static files stay open (the page sends the key the visitor types in on its API calls).
pub async fn require_api_key(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> actix_web::Result<ServiceResponse<BoxBody>> {
    let (keys, metrics_open) = req
        .app_data::<web::Data<AppState>>()
        .map(|s| (s.config.api_keys.clone(), s.config.edge.metrics_open))
        .unwrap_or_default();
    let open =
        OPEN_ROUTES.contains(&req.path()) || demo::is_page(req.path()) || (metrics_open && req.path() == "/metrics");
    if !keys.is_enabled() || open {
        return Ok(next.call(req).await?.map_into_boxed_body());
    }
    let Some(given) = req.headers().get("x-api-key") else {
        return Err(ApiError::new(Code::MissingApiKey, "this server requires an X-API-Key header").into());
    };
    let given = blake3::hash(given.as_bytes());
    let mut ok = subtle::Choice::from(0u8);
    for key in keys.keys() {
        ok |= blake3::hash(key.as_bytes()).as_bytes().ct_eq(given.as_bytes());
    }
    if bool::from(ok) {
        Ok(next.call(req).await?.map_into_boxed_body())
    } else {
        Err(ApiError::new(Code::InvalidApiKey, "the X-API-Key is not valid").into())
    }
}

/// Polled routes (probes, scrapes and status polls) are logged at DEBUG so they do not flood the log.
fn is_polled(path: &str) -> bool {
    OPEN_ROUTES.contains(&path)
        || path == "/metrics"
        || path.starts_with("/api/avatar/status/")
        || path.starts_with("/api/vip/status/")
}

/// One log line per request through `tracing`: DEBUG for polled routes (unless they answer
/// 500), INFO otherwise (`RUST_LOG=vipavatar=debug` shows them all).
pub async fn log_request(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> actix_web::Result<ServiceResponse<impl MessageBody>> {
    let (method, path) = (req.method().clone(), req.path().to_string());
    let route = req.match_pattern().unwrap_or_else(|| "unmatched".into());
    let start = std::time::Instant::now();
    let res = next.call(req).await;
    let status = match &res {
        Ok(r) => r.status().as_u16(),
        Err(e) => e.as_response_error().status_code().as_u16(),
    };
    let took = start.elapsed();
    crate::telemetry::record_request(method.as_str(), &route, status, took);
    let ms = took.as_millis() as u64;
    // A not-ready 503 from a probe or poll is expected (model loading, a Redis outage the
    // watcher already logged); only internal errors of polled routes stay at INFO.
    if is_polled(&path) && status != 500 {
        tracing::debug!(%method, %path, status, ms, "request");
    } else {
        tracing::info!(%method, %path, status, ms, "request");
    }
    res
}

pub(crate) fn parse_image_id(s: &str) -> Result<ImageHash, ApiError> {
    ImageHash::parse(s.trim()).map_err(|e| ApiError::new(Code::InvalidImageId, e.to_string()))
}

/// Stage -> milliseconds pairs as stage -> seconds (later duplicates add up).
pub(crate) fn seconds_map(stages_ms: &[(String, f64)]) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for (name, ms) in stages_ms {
        *out.entry(name.clone()).or_insert(0.0) += ms / 1e3;
    }
    out
}

/// Refuse new work with 429 while more than `VIPAVATAR_MAX_QUEUED` jobs wait; `Retry-After`
/// is the time the live workers need for the excess at the measured average job time (1..=300 s).
pub(crate) async fn check_overload(state: &AppState) -> Result<(), ApiError> {
    let max = state.config.jobs.max_queued;
    if max == 0 {
        return Ok(());
    }
    let depth = state.queue.depth().await?;
    let waiting = depth.vip + depth.standard;
    if waiting <= max {
        return Ok(());
    }
    let c = state.cache.counters().await.unwrap_or_default();
    let (done, ms) = (
        c.get(crate::jobs::counters::JOBS_DONE).copied().unwrap_or(0),
        c.get(crate::jobs::counters::GENERATE_MS).copied().unwrap_or(0),
    );
    let per_job = if done > 0 { (ms as f64 / done as f64 / 1e3).max(0.5) } else { 2.0 };
    let workers =
        crate::jobs::registry::live_workers(&state.cache).await.iter().map(|w| w.workers).sum::<usize>().max(1);
    let wait = ((waiting - max) as f64 * per_job / workers as f64).ceil().clamp(1.0, 300.0) as u64;
    Err(ApiError::new(
        Code::Overloaded,
        format!("{waiting} jobs are waiting (the limit is {max}); try again in about {wait} s"),
    )
    .retry_after(wait))
}

/// Store-first-then-enqueue guard: unless disarmed, removes what the request stored.
pub(crate) struct Guard {
    state: AppState,
    /// Blob names to remove.
    blobs: Vec<String>,
    keys: Vec<Key>,
    /// Single-flight claims (`inflight:` key, holder) to release.
    claims: Vec<(Key, SessionId)>,
    armed: bool,
}

impl Guard {
    pub fn new(state: &AppState) -> Self {
        Self { state: state.clone(), blobs: Vec::new(), keys: Vec::new(), claims: Vec::new(), armed: true }
    }
    pub fn remove_blob(&mut self, name: String) {
        self.blobs.push(name);
    }
    pub fn remove_key(&mut self, key: Key) {
        self.keys.push(key);
    }
    /// Release `key` if `holder` still holds it (see `Cache::claim`).
    pub fn release_claim(&mut self, key: Key, holder: SessionId) {
        self.claims.push((key, holder));
    }
    pub fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if !self.armed || (self.blobs.is_empty() && self.keys.is_empty() && self.claims.is_empty()) {
            return;
        }
        let (state, files, keys) =
            (self.state.clone(), std::mem::take(&mut self.blobs), std::mem::take(&mut self.keys));
        let claims = std::mem::take(&mut self.claims);
        crate::spawn_named("undo-upload", async move {
            for (key, holder) in claims {
                let _ = state.cache.release(&key, holder.as_str()).await;
            }
            for key in keys {
                let _ = state.cache.delete(&key).await;
            }
            for name in files {
                let _ = state.blobs.remove(&name).await;
            }
            tracing::info!("undid a partially stored request");
        });
    }
}

//! The HTTP edge: a body read timeout (a client that stops sending gets 408 `body_timeout`),
//! 405 with `Allow` for a known route asked with the wrong method (else 404), and the mapping
//! of payload errors to API errors.

use crate::errors::{ApiError, Code};
use crate::state::AppState;
use actix_web::body::MessageBody;
use actix_web::dev::{Payload, ResourceDef, ServiceRequest, ServiceResponse};
use actix_web::error::PayloadError;
use actix_web::http::{header, Method};
use actix_web::middleware::Next;
use actix_web::web::{self, Bytes};
use actix_web::{HttpMessage, HttpRequest, HttpResponse, ResponseError};
use futures_util::Stream;
use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// Routes served outside the OpenAPI document (Swagger UI, the document itself, the demo page).
const EXTRA_ROUTES: &[(&str, &[Method])] = &[
    ("/openapi.json", &[Method::GET]),
    ("/docs", &[Method::GET]),
    ("/docs/{_:.*}", &[Method::GET]),
    ("/demo", &[Method::GET]),
    ("/demo/{_:.*}", &[Method::GET]),
];

/// Wrap the request body so that a client that goes silent for `VIPAVATAR_BODY_TIMEOUT_SECS`
/// ends the body with a timed-out error (answered 408 by whoever reads it).
pub async fn body_timeout(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> actix_web::Result<ServiceResponse<impl MessageBody>> {
    let limit =
        req.app_data::<web::Data<AppState>>().map(|s| s.config.edge.body_timeout()).unwrap_or(Duration::from_secs(15));
    let inner = req.take_payload();
    req.set_payload(Payload::Stream { payload: Box::pin(IdleTimeout::new(inner, limit)) });
    next.call(req).await
}

/// A payload stream that fails with `TimedOut` when the client sends nothing for `limit` while
/// the reader is waiting for it (time the reader spends elsewhere does not count).
struct IdleTimeout {
    inner: Payload,
    limit: Duration,
    sleep: Pin<Box<Sleep>>,
    waiting: bool,
    done: bool,
}

impl IdleTimeout {
    fn new(inner: Payload, limit: Duration) -> Self {
        Self { inner, limit, sleep: Box::pin(tokio::time::sleep(limit)), waiting: false, done: false }
    }
}

impl Stream for IdleTimeout {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_next(cx) {
            Poll::Ready(item) => {
                this.waiting = false;
                this.done = item.is_none();
                Poll::Ready(item)
            }
            Poll::Pending => {
                if !this.waiting {
                    this.waiting = true;
                    this.sleep.as_mut().reset(Instant::now() + this.limit);
                }
                match this.sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        this.done = true;
                        let why = format!("the client sent no body bytes for {} s", this.limit.as_secs());
                        Poll::Ready(Some(Err(PayloadError::Io(std::io::Error::new(std::io::ErrorKind::TimedOut, why)))))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

/// Answer `503 redis_unavailable` at once for `/api/` routes while Redis is known to be down
/// (every one of them reads or writes Redis).
pub async fn redis_gate(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> actix_web::Result<ServiceResponse<impl MessageBody>> {
    if req.path().starts_with("/api/") {
        if let Some(state) = req.app_data::<web::Data<AppState>>() {
            state.redis.check()?;
        }
    }
    next.call(req).await
}

/// The API error for a failed body read, where it has its own code (timeout, too large).
pub fn payload_error(e: &PayloadError) -> Option<ApiError> {
    match e {
        PayloadError::Io(io) if io.kind() == std::io::ErrorKind::TimedOut => {
            Some(ApiError::new(Code::BodyTimeout, format!("reading the request body timed out: {io}")))
        }
        PayloadError::Overflow => Some(ApiError::new(Code::PayloadTooLarge, "the request body is too large")),
        _ => None,
    }
}

/// Every known route pattern and the methods it answers.
fn routes() -> &'static [(ResourceDef, Vec<Method>)] {
    static ROUTES: OnceLock<Vec<(ResourceDef, Vec<Method>)>> = OnceLock::new();
    ROUTES.get_or_init(|| {
        let doc = super::openapi();
        let mut out: Vec<(ResourceDef, Vec<Method>)> = doc
            .paths
            .paths
            .iter()
            .map(|(path, item)| {
                let ops = [
                    (Method::GET, item.get.is_some()),
                    (Method::POST, item.post.is_some()),
                    (Method::PUT, item.put.is_some()),
                    (Method::DELETE, item.delete.is_some()),
                    (Method::PATCH, item.patch.is_some()),
                    (Method::OPTIONS, item.options.is_some()),
                    (Method::HEAD, item.head.is_some()),
                ];
                (ResourceDef::new(path.as_str()), ops.into_iter().filter(|(_, on)| *on).map(|(m, _)| m).collect())
            })
            .collect();
        out.extend(EXTRA_ROUTES.iter().map(|(p, m)| (ResourceDef::new(*p), m.to_vec())));
        out
    })
}

/// A route without path parameters.
fn is_literal(def: &ResourceDef) -> bool {
    !def.pattern().is_some_and(|p| p.contains('{'))
}

/// The methods `path` answers, or `None` when no route matches it.
///
/// A literal route wins over patterns that also match (`/api/avatar/upload` is the upload
/// route, not an image id for `DELETE /api/avatar/{image_id}`).
pub fn allowed_methods(path: &str) -> Option<Vec<Method>> {
    let matching: Vec<_> = routes().iter().filter(|(def, _)| def.is_match(path)).collect();
    let any_literal = matching.iter().any(|(def, _)| is_literal(def));
    let mut found: Option<Vec<Method>> = None;
    for (def, methods) in matching {
        if !any_literal || is_literal(def) {
            let all = found.get_or_insert_with(Vec::new);
            for m in methods {
                if !all.contains(m) {
                    all.push(m.clone());
                }
            }
        }
    }
    found
}

/// The app's default service: 405 with `Allow` for a known path, else 404.
pub async fn fallback(req: HttpRequest) -> HttpResponse {
    match allowed_methods(req.path()) {
        Some(methods) if !methods.is_empty() && !methods.contains(req.method()) => not_allowed(&req, &methods),
        _ => ApiError::new(Code::RouteNotFound, "no such route").error_response(),
    }
}

/// The 405 for a request that a pattern route caught although a literal route owns the path
/// (`DELETE /api/avatar/upload` is no erase of an image called "upload"); `None` otherwise.
pub fn literal_elsewhere(req: &HttpRequest) -> Option<HttpResponse> {
    let (_, methods) = routes().iter().find(|(def, _)| is_literal(def) && def.is_match(req.path()))?;
    (!methods.contains(req.method())).then(|| not_allowed(req, methods))
}

fn not_allowed(req: &HttpRequest, methods: &[Method]) -> HttpResponse {
    let allow = methods.iter().map(Method::as_str).collect::<Vec<_>>().join(", ");
    let err = ApiError::new(
        Code::MethodNotAllowed,
        format!("{} is not allowed on {}; allowed: {allow}", req.method(), req.path()),
    );
    let mut resp = err.error_response();
    if let Ok(v) = header::HeaderValue::from_str(&allow) {
        resp.headers_mut().insert(header::ALLOW, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_paths_list_their_methods() {
        assert_eq!(allowed_methods("/api/vip/generate"), Some(vec![Method::POST]));
        assert_eq!(allowed_methods(&format!("/api/avatar/status/{}", "a".repeat(64))), Some(vec![Method::GET]));
        assert_eq!(allowed_methods("/docs/index.html"), Some(vec![Method::GET]));
        assert_eq!(allowed_methods("/nope"), None);
    }
}

//! `GET /demo`: a plain HTML/JS demo page served from the binary (the files under `src/api/demo/`
//! are embedded with `include_str!`): upload a portrait, pick or record speech, generate, watch the
//! live stream while it renders (MediaSource), and see timings and cache statistics.
//!
//! The page itself is open (it holds no data); its API calls send the `X-API-Key` the visitor
//! types in, so the API stays protected when `API_KEYS` is set.

use actix_web::http::header;
use actix_web::{web, HttpResponse};

const INDEX_HTML: &str = include_str!("demo/index.html");
const APP_JS: &str = include_str!("demo/app.js");
const MP4_JS: &str = include_str!("demo/mp4.js");
const STYLE_CSS: &str = include_str!("demo/style.css");

/// The page and its assets: (path, content type, body). These paths need no API key.
pub const PAGES: &[(&str, &str, &str)] = &[
    ("/demo", "text/html; charset=utf-8", INDEX_HTML),
    ("/demo/", "text/html; charset=utf-8", INDEX_HTML),
    ("/demo/app.js", "text/javascript; charset=utf-8", APP_JS),
    ("/demo/mp4.js", "text/javascript; charset=utf-8", MP4_JS),
    ("/demo/style.css", "text/css; charset=utf-8", STYLE_CSS),
];

/// Whether `path` is one of the demo page's files.
pub fn is_page(path: &str) -> bool {
    PAGES.iter().any(|(p, _, _)| *p == path)
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    for (path, content_type, body) in PAGES {
        cfg.route(path, web::get().to(move || async move { page(content_type, body) }));
    }
}

/// Only same-origin scripts, styles and API calls; media from blob: URLs (MediaSource, the
/// recorder's preview) or the same origin.
const CSP: &str = "default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; \
                   object-src 'none'; base-uri 'none'; frame-ancestors 'none'";

fn page(content_type: &'static str, body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header((header::CONTENT_SECURITY_POLICY, CSP))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .body(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_links_only_its_own_assets() {
        for (path, _, _) in PAGES.iter().filter(|(p, _, _)| p.ends_with(".js") || p.ends_with(".css")) {
            assert!(INDEX_HTML.contains(&format!("\"{path}\"")), "index.html does not load {path}");
        }
        assert!(!INDEX_HTML.contains("http://") && !INDEX_HTML.contains("https://"), "no external resources");
        assert!(
            is_page("/demo") && is_page("/demo/app.js") && !is_page("/demo/nope.js") && !is_page("/api/cache/stats")
        );
    }
}

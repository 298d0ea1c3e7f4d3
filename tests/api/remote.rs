//! A real HTTP server on a local port playing "the client's site": it serves files, redirects,
//! a slow and an endless body (counting what it sent), and receives webhooks (recording each
//! delivery and refusing the first N with 503).

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One webhook delivery as received.
#[derive(Debug, Clone)]
pub struct Received {
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The status this server answered.
    pub answered: u16,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct Shared {
    dir: PathBuf,
    /// Bytes the endless body has sent.
    endless_sent: AtomicU64,
    /// Webhook deliveries to refuse (503) before accepting.
    refuse_first: AtomicUsize,
    received: Mutex<Vec<Received>>,
}

pub struct Remote {
    pub base: String,
    shared: Arc<Shared>,
    handle: actix_web::dev::ServerHandle,
}

impl Remote {
    /// Serve `dir` under `/files/`; refuse the first `refuse_first` webhooks.
    pub async fn start(dir: PathBuf, refuse_first: usize) -> Self {
        let shared = Arc::new(Shared { dir, refuse_first: AtomicUsize::new(refuse_first), ..Shared::default() });
        let data = web::Data::from(shared.clone());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .route("/files/{name}", web::get().to(file))
                .route("/redirect/{n}/{name}", web::get().to(redirect))
                .route("/to", web::get().to(redirect_to))
                .route("/endless", web::get().to(endless))
                .route("/slow", web::get().to(slow))
                .route("/hook", web::post().to(hook))
        })
        .workers(1)
        .listen(listener)
        .unwrap()
        .run();
        let handle = server.handle();
        tokio::spawn(server);
        Self { base: format!("http://127.0.0.1:{port}"), shared, handle }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn endless_sent(&self) -> u64 {
        self.shared.endless_sent.load(Ordering::Relaxed)
    }

    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().unwrap().clone()
    }
}

impl Drop for Remote {
    fn drop(&mut self) {
        let handle = self.handle.clone();
        tokio::spawn(async move { handle.stop(false).await });
    }
}

async fn file(shared: web::Data<Shared>, name: web::Path<String>) -> HttpResponse {
    match std::fs::read(shared.dir.join(name.as_str())) {
        Ok(b) => HttpResponse::Ok().content_type("application/octet-stream").body(b),
        Err(_) => HttpResponse::NotFound().finish(),
    }
}

/// `/redirect/{n}/{name}`: n more redirects, then the file.
async fn redirect(path: web::Path<(u32, String)>) -> HttpResponse {
    let (n, name) = path.into_inner();
    let next = if n <= 1 { format!("/files/{name}") } else { format!("/redirect/{}/{name}", n - 1) };
    HttpResponse::Found().insert_header(("Location", next)).finish()
}

/// `/to?url=...`: a redirect to anywhere.
async fn redirect_to(req: HttpRequest) -> HttpResponse {
    let target = url::form_urlencoded::parse(req.query_string().as_bytes())
        .find(|(k, _)| k == "url")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    HttpResponse::Found().insert_header(("Location", target)).finish()
}

/// A PNG signature followed by zeros forever, without Content-Length.
async fn endless(shared: web::Data<Shared>) -> HttpResponse {
    let shared = shared.into_inner();
    let chunk = web::Bytes::from(vec![0u8; 64 * 1024]);
    let head = web::Bytes::from_static(b"\x89PNG\r\n\x1a\n");
    let stream = futures_util::stream::unfold(0u64, move |n| {
        let (shared, chunk, head) = (shared.clone(), chunk.clone(), head.clone());
        async move {
            let c = if n == 0 { head } else { chunk };
            shared.endless_sent.fetch_add(c.len() as u64, Ordering::Relaxed);
            Some((Ok::<_, actix_web::Error>(c), n + 1))
        }
    });
    HttpResponse::Ok().content_type("image/png").streaming(stream)
}

/// Headers at once, then nothing for 30 s.
async fn slow() -> HttpResponse {
    let stream = futures_util::stream::once(async {
        tokio::time::sleep(Duration::from_secs(30)).await;
        Ok::<_, actix_web::Error>(web::Bytes::from_static(b"late"))
    });
    HttpResponse::Ok().content_type("image/png").streaming(stream)
}

async fn hook(shared: web::Data<Shared>, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    let refuse = shared.refuse_first.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
    let answered = if refuse { 503 } else { 204 };
    let headers = req
        .headers()
        .iter()
        .map(|(n, v)| (n.as_str().to_string(), v.to_str().unwrap_or_default().to_string()))
        .collect();
    shared.received.lock().unwrap().push(Received { headers, body: body.to_vec(), answered });
    if refuse {
        HttpResponse::ServiceUnavailable().finish()
    } else {
        HttpResponse::NoContent().finish()
    }
}

//! `GET /api/vip/stream/{session_id}`: a session's live fragmented MP4. The worker that renders
//! appends the fragments to `stream:{session_id}` in Redis; whichever API node a client reaches
//! reads them from the first one on, so a late client still gets the video from its first frame.

use super::vip::{load_session, parse_session_id, serve_video};
use crate::errors::{ApiError, ErrorBody};
use crate::records::SessionStatus;
use crate::state::AppState;
use actix_web::http::header;
use actix_web::web::Bytes;
use actix_web::{web, HttpRequest, HttpResponse};
use std::collections::VecDeque;
use std::time::{Duration, Instant};
use vipavatar_cache::{FragmentReader, Piece, SessionId};

/// How long one read waits for new fragments before the session's state is looked at.
const POLL: Duration = Duration::from_millis(1000);
/// Entries taken per read.
const BATCH: usize = 32;

/// Watch a session while it renders.
///
/// A fragmented MP4 (H.264 + AAC, a keyframe and a fragment per chunk) that a browser's
/// `<video>` element starts playing while the rest is still rendering. It always starts at the
/// first frame, however late the client connects, and ends when the video is complete. If the
/// session fails mid-stream the connection is closed without the final chunk, so the client sees
/// an incomplete body (the session status then carries the error). A session whose stream has
/// expired, or whose video came from the cache, answers the finished MP4.
#[utoipa::path(
    get,
    path = "/stream/{session_id}",
    tag = "vip",
    params(("session_id" = String, Path, description = "The id returned by generate")),
    responses(
        (status = 200, description = "The live fragmented MP4 (or the finished file)", content_type = "video/mp4", body = Vec<u8>),
        (status = 400, description = "Malformed session_id", body = ErrorBody),
        (status = 401, description = "Missing or wrong X-API-Key", body = ErrorBody),
        (status = 404, description = "Unknown or expired session", body = ErrorBody),
        (status = 409, description = "The session failed", body = ErrorBody),
    )
)]
pub async fn stream(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_session_id(&path)?;
    let rec = load_session(&state, &id).await?;
    // Failed (409, like the download), or ready without a stream: the video came from the
    // cache, or its stream expired.
    let finished_without_stream = rec.status == SessionStatus::Ready && !state.streams.exists(&id).await?;
    if matches!(rec.status, SessionStatus::Failed | SessionStatus::Cancelled) || finished_without_stream {
        return serve_video(&req, &state, &id, rec).await;
    }
    let reader = state.streams.reader(&id).await?;
    let live = Live {
        state: state.clone(),
        id,
        reader,
        attempt: None,
        pending: VecDeque::new(),
        end: None,
        started: Instant::now(),
    };
    let body = futures_util::stream::unfold(live, |mut live| async move {
        let item = live.next().await?;
        Some((item, live))
    });
    Ok(HttpResponse::Ok()
        .content_type("video/mp4")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(body))
}

/// How a stream ends once its pending bytes are out.
enum End {
    Complete,
    Failed(String),
}

struct Live {
    state: web::Data<AppState>,
    id: SessionId,
    reader: FragmentReader,
    /// The job attempt whose fragments this response carries.
    attempt: Option<u32>,
    pending: VecDeque<Bytes>,
    end: Option<End>,
    started: Instant,
}

impl Live {
    /// The next body chunk; `None` ends the body, an error aborts the connection.
    async fn next(&mut self) -> Option<Result<Bytes, std::io::Error>> {
        loop {
            if let Some(b) = self.pending.pop_front() {
                return Some(Ok(b));
            }
            match self.end.take() {
                Some(End::Complete) => return None,
                Some(End::Failed(why)) => {
                    tracing::info!(session = %self.id, reason = %why, "live stream ended with an error");
                    return Some(Err(std::io::Error::other(why)));
                }
                None => {}
            }
            if let Err(why) = self.read().await {
                self.end = Some(End::Failed(why));
            }
        }
    }

    /// Wait for more entries; an error message when the stream cannot go on.
    async fn read(&mut self) -> Result<(), String> {
        let entries = self.reader.next(POLL, BATCH).await.map_err(|e| format!("redis: {e}"))?;
        if entries.is_empty() {
            return self.check_session().await;
        }
        for e in entries {
            match self.attempt {
                None => self.attempt = Some(e.attempt),
                Some(a) if a != e.attempt => {
                    self.end = Some(End::Failed("the render restarted on another worker; reconnect".into()));
                    return Ok(());
                }
                Some(_) => {}
            }
            match e.piece {
                Piece::Init(b) | Piece::Media(b) => self.pending.push_back(Bytes::from(b)),
                Piece::End => {
                    self.end = Some(End::Complete);
                    return Ok(());
                }
                Piece::Error(json) => {
                    let why = serde_json::from_str::<ErrorBody>(&json).map(|b| b.message).unwrap_or(json);
                    self.end = Some(End::Failed(format!("the session failed: {why}")));
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Nothing new for a while: is the session still alive?
    async fn check_session(&mut self) -> Result<(), String> {
        let rec = load_session(&self.state, &self.id).await.map_err(|e| e.message)?;
        let limit =
            self.state.cache.ttls().for_kind(vipavatar_cache::Kind::Session).unwrap_or(Duration::from_secs(3600));
        if self.started.elapsed() > limit {
            return Err("the stream waited longer than a session lives".into());
        }
        match rec.status {
            SessionStatus::Failed => {
                Err(format!("the session failed: {}", rec.error.map(|e| e.message).unwrap_or_default()))
            }
            SessionStatus::Cancelled => Err("the session was cancelled".into()),
            // Ready without an end marker: the video came from the cache or the stream expired.
            SessionStatus::Ready if self.attempt.is_none() => Err("the session has no live stream; download it".into()),
            _ => Ok(()),
        }
    }
}

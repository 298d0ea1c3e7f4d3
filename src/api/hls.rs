//! `GET /api/vip/stream/{session_id}/index.m3u8` with `init.mp4` and `seg/{entry}.m4s`: a
//! session's live stream as HLS (fMP4 segments). The playlist lists the fragments written so far
//! from the stream's index in Redis (no media bytes are read for it); each fragment is one
//! segment, served by its stream entry id, so a segment's URL never changes what it names. The
//! playlist ends with `#EXT-X-ENDLIST` once the video is complete: a player that reloads it
//! follows the render live and holds the whole video at the end.

use super::vip::{load_session, parse_session_id};
use crate::errors::{ApiError, Code, ErrorBody};
use crate::records::{SessionRecord, SessionStatus};
use crate::state::AppState;
use actix_web::http::header;
use actix_web::{web, HttpResponse};
use std::fmt::Write;
use std::time::{Duration, Instant};
use vipavatar_cache::{IndexEntry, Piece, SessionId};

/// How long a playlist request waits for the first segment of a session that is still queued.
const WAIT_FIRST: Duration = Duration::from_secs(10);
/// How often the index is looked at while waiting.
const POLL: Duration = Duration::from_millis(40);

/// The session's live stream as an HLS media playlist.
///
/// Lists an `init.mp4` map and one fMP4 segment per fragment (about 1 s each; the first is
/// 0.24 s, so playback starts early). While the session renders the playlist grows (reload it);
/// `#EXT-X-ENDLIST` marks the complete video. A session still queued is waited for (up to 10 s)
/// until its first segment exists. A video that came from the cache has no stream: use
/// `download`. Segments need the same `X-API-Key` as every other route.
#[utoipa::path(
    get,
    path = "/stream/{session_id}/index.m3u8",
    tag = "vip",
    params(("session_id" = String, Path, description = "The id returned by generate")),
    responses(
        (status = 200, description = "HLS media playlist", content_type = "application/vnd.apple.mpegurl", body = String),
        (status = 400, description = "Malformed session_id", body = ErrorBody),
        (status = 401, description = "Missing or wrong X-API-Key", body = ErrorBody),
        (status = 404, description = "Unknown session, or no live stream (`stream_unavailable`)", body = ErrorBody),
        (status = 409, description = "The session failed", body = ErrorBody),
    )
)]
pub async fn playlist(state: web::Data<AppState>, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let id = parse_session_id(&path)?;
    let started = Instant::now();
    loop {
        let rec = load_session(&state, &id).await?;
        failed(&id, &rec)?;
        let entries = latest_attempt(state.streams.index(&id).await?);
        let has_media = entries.iter().any(|e| e.kind == "media");
        let ended = entries.iter().any(|e| e.kind == "end");
        if entries.iter().any(|e| e.kind == "error") {
            // The session fails right after its stream says so.
            let rec = load_session(&state, &id).await?;
            failed(&id, &rec)?;
            return Err(ApiError::new(Code::VideoFailed, format!("session {id} failed")));
        }
        if entries.is_empty() && rec.status == SessionStatus::Ready {
            return Err(no_stream(&id));
        }
        if has_media || ended || started.elapsed() > WAIT_FIRST {
            return Ok(HttpResponse::Ok()
                .content_type("application/vnd.apple.mpegurl")
                .insert_header((header::CACHE_CONTROL, "no-store"))
                .body(render_playlist(&entries, ended)));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The stream's init segment (`ftyp` + `moov`).
#[utoipa::path(
    get,
    path = "/stream/{session_id}/init.mp4",
    tag = "vip",
    params(("session_id" = String, Path, description = "The id returned by generate")),
    responses(
        (status = 200, description = "The fMP4 init segment", content_type = "video/mp4", body = Vec<u8>),
        (status = 400, description = "Malformed session_id", body = ErrorBody),
        (status = 401, description = "Missing or wrong X-API-Key", body = ErrorBody),
        (status = 404, description = "Unknown session, or no live stream (`stream_unavailable`)", body = ErrorBody),
    )
)]
pub async fn init(state: web::Data<AppState>, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let id = parse_session_id(&path)?;
    load_session(&state, &id).await?;
    let entries = latest_attempt(state.streams.index(&id).await?);
    let entry = entries.iter().find(|e| e.kind == "init").ok_or_else(|| no_stream(&id))?;
    serve_piece(&state, &id, &entry.entry).await
}

/// One media segment (`moof` + `mdat`) of the stream, named as the playlist lists it.
#[utoipa::path(
    get,
    path = "/stream/{session_id}/seg/{segment}",
    tag = "vip",
    params(
        ("session_id" = String, Path, description = "The id returned by generate"),
        ("segment" = String, Path, description = "A segment name from the playlist (`{entry}.m4s`)", pattern = r"^[0-9]+-[0-9]+\.m4s$"),
    ),
    responses(
        (status = 200, description = "One fMP4 media segment", content_type = "video/mp4", body = Vec<u8>),
        (status = 400, description = "Malformed session_id", body = ErrorBody),
        (status = 401, description = "Missing or wrong X-API-Key", body = ErrorBody),
        (status = 404, description = "Unknown session or segment (`stream_unavailable`)", body = ErrorBody),
    )
)]
pub async fn segment(state: web::Data<AppState>, path: web::Path<(String, String)>) -> Result<HttpResponse, ApiError> {
    let (session, segment) = path.into_inner();
    let id = parse_session_id(&session)?;
    load_session(&state, &id).await?;
    let entry = segment.strip_suffix(".m4s").filter(|e| is_entry_id(e)).ok_or_else(|| no_segment(&id, &segment))?;
    serve_piece(&state, &id, entry).await
}

async fn serve_piece(state: &AppState, id: &SessionId, entry: &str) -> Result<HttpResponse, ApiError> {
    let bytes = match state.streams.entry(id, entry).await?.map(|e| e.piece) {
        Some(Piece::Init(b)) | Some(Piece::Media(b)) => b,
        _ => return Err(no_segment(id, entry)),
    };
    // An entry id names one piece for good, whatever later attempts write.
    Ok(HttpResponse::Ok()
        .content_type("video/mp4")
        .insert_header((header::CACHE_CONTROL, "private, max-age=3600, immutable"))
        .body(bytes))
}

/// A Redis stream entry id: `{milliseconds}-{sequence}`.
fn is_entry_id(s: &str) -> bool {
    let digits = |p: &str| !p.is_empty() && p.len() <= 20 && p.bytes().all(|b| b.is_ascii_digit());
    s.split_once('-').is_some_and(|(a, b)| digits(a) && digits(b))
}

/// The entries of the newest attempt (a retried session starts its stream over).
fn latest_attempt(entries: Vec<IndexEntry>) -> Vec<IndexEntry> {
    let last = entries.iter().map(|e| e.attempt).max();
    entries.into_iter().filter(|e| Some(e.attempt) == last).collect()
}

fn failed(id: &SessionId, rec: &SessionRecord) -> Result<(), ApiError> {
    if rec.status != SessionStatus::Failed {
        return Ok(());
    }
    let why = rec.error.as_ref().map(|e| e.message.clone()).unwrap_or_default();
    Err(ApiError::new(Code::VideoFailed, format!("session {id} failed: {why}")))
}

fn no_stream(id: &SessionId) -> ApiError {
    ApiError::new(
        Code::StreamUnavailable,
        format!("session {id} has no live stream (its video came from the cache, or the stream expired): download it"),
    )
}

fn no_segment(id: &SessionId, segment: &str) -> ApiError {
    ApiError::new(Code::StreamUnavailable, format!("segment {segment:?} is not in the stream of session {id}"))
}

/// The media playlist for `entries` (one attempt's, in order); `ended`: the video is complete.
fn render_playlist(entries: &[IndexEntry], ended: bool) -> String {
    let media: Vec<&IndexEntry> = entries.iter().filter(|e| e.kind == "media").collect();
    let target = media.iter().map(|e| e.seconds).fold(1.0f64, f64::max).ceil() as u64;
    let mut out = String::from("#EXTM3U\n#EXT-X-VERSION:7\n");
    let _ = writeln!(out, "#EXT-X-TARGETDURATION:{target}");
    out.push_str("#EXT-X-MEDIA-SEQUENCE:0\n#EXT-X-PLAYLIST-TYPE:EVENT\n#EXT-X-INDEPENDENT-SEGMENTS\n");
    if entries.iter().any(|e| e.kind == "init") {
        out.push_str("#EXT-X-MAP:URI=\"init.mp4\"\n");
    }
    for e in media {
        let _ = writeln!(out, "#EXTINF:{:.3},\nseg/{}.m4s", e.seconds, e.entry);
    }
    if ended {
        out.push_str("#EXT-X-ENDLIST\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(entry: &str, kind: &str, attempt: u32, seconds: f64) -> IndexEntry {
        IndexEntry { entry: entry.into(), kind: kind.into(), attempt, seconds }
    }

    #[test]
    fn the_playlist_lists_the_newest_attempt_and_ends_with_the_video() {
        let index = vec![
            entry("1-0", "init", 1, 0.0),
            entry("2-0", "media", 1, 0.24),
            entry("5-0", "init", 2, 0.0),
            entry("6-0", "media", 2, 0.24),
            entry("7-0", "media", 2, 1.0),
        ];
        let live = latest_attempt(index);
        let text = render_playlist(&live, false);
        assert!(text.starts_with("#EXTM3U\n"), "{text}");
        assert!(text.contains("#EXT-X-TARGETDURATION:1\n"), "{text}");
        assert!(text.contains("#EXT-X-MAP:URI=\"init.mp4\"\n"), "{text}");
        assert!(text.contains("#EXTINF:0.240,\nseg/6-0.m4s\n#EXTINF:1.000,\nseg/7-0.m4s\n"), "{text}");
        assert!(!text.contains("2-0"), "the first attempt's segments are gone: {text}");
        assert!(!text.contains("ENDLIST"), "{text}");
        assert!(render_playlist(&live, true).ends_with("#EXT-X-ENDLIST\n"));
    }

    #[test]
    fn segment_names_are_entry_ids_only() {
        assert!(is_entry_id("1733057000123-0"));
        for bad in ["", "-", "1-", "-1", "1-2-3", "a-1", "1-0/../x", "123456789012345678901-0"] {
            assert!(!is_entry_id(bad), "{bad}");
        }
    }
}

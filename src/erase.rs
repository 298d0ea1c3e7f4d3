//! Erasing a face: everything derived from one uploaded image, in Redis and in blob storage.
//! A face is biometric data, so this is thorough rather than cheap: every Redis key whose name
//! holds the image hash (analysis, crops, engine state, gestures, visemes, motion, videos,
//! status records, idle loops, single-flight claims, callbacks, the session index), every
//! session made from it (record, live stream and part streams, callbacks) and those sessions'
//! audio (`audio_pcm`, `audio_features`, the stored original), the avatar index entry, and the
//! blobs: the original, its videos and thumbnails, its idle loops. Unfinished sessions are
//! cancelled first, and a tombstone (keyed by a digest of the hash, not the hash) makes jobs
//! still running for it drop their results instead of writing them back.

use crate::blobs::BlobStore;
use crate::records::{now_ms, SessionRecord, SessionStatus};
use redis::aio::ConnectionManager;
use redis::AsyncCommands;
use serde::Serialize;
use utoipa::ToSchema;
use vipavatar_cache::{AudioHash, Cache, ImageHash, Key, Namespace, SessionId};

/// What an erase removed.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct Erased {
    /// Redis keys deleted.
    pub redis_keys: u64,
    /// Blobs deleted from storage.
    pub blobs: u64,
    /// Sessions of this face (cancelled first when unfinished).
    pub sessions: u64,
}

/// `sessions_of:{image}`: the sessions made from a face.
pub fn sessions_key(ns: &Namespace, image: &ImageHash) -> String {
    ns.name(&format!("sessions_of:{image}"))
}

/// `avatars`: every uploaded face, scored by its first upload (milliseconds).
pub fn avatars_key(ns: &Namespace) -> String {
    ns.name("avatars")
}

fn tombstones_key(ns: &Namespace) -> String {
    ns.name("erased")
}

fn tombstone_field(image: &ImageHash) -> String {
    blake3::hash(format!("erased:{image}").as_bytes()).to_hex().to_string()
}

/// Whether `image` was erased while a job for it may still run (cleared by a new upload).
pub async fn is_erased(cache: &Cache, image: &ImageHash) -> bool {
    let mut conn = cache.connection();
    conn.hexists(tombstones_key(cache.namespace()), tombstone_field(image)).await.unwrap_or(false)
}

/// A new upload of `image`: it lives again.
pub async fn revive(cache: &Cache, image: &ImageHash) -> redis::RedisResult<()> {
    let mut conn = cache.connection();
    conn.hdel(tombstones_key(cache.namespace()), tombstone_field(image)).await
}

/// Delete every key matching `pattern` (the cache's SCAN loop, then UNLINK in batches); returns
/// how many.
async fn delete_matching(conn: &mut ConnectionManager, pattern: &str) -> redis::RedisResult<u64> {
    let keys = vipavatar_cache::store::scan(conn, pattern).await?;
    let mut deleted = 0;
    for batch in keys.chunks(1000) {
        let n: u64 = redis::cmd("UNLINK").arg(batch).query_async(conn).await?;
        deleted += n;
    }
    Ok(deleted)
}

/// Erase `image` and everything derived from it. `Ok(None)` when nothing of it was found.
pub async fn erase_avatar(cache: &Cache, blobs: &BlobStore, image: &ImageHash) -> anyhow::Result<Option<Erased>> {
    let ns = cache.namespace().clone();
    let mut conn = cache.connection();
    let mut erased = Erased::default();
    // The tombstone first, so a job finishing during the erase drops its results.
    let _: () = conn.hset(tombstones_key(&ns), tombstone_field(image), now_ms()).await?;

    // Its sessions: cancel the unfinished, remember their audio.
    let ids: Vec<String> = conn.smembers(sessions_key(&ns, image)).await?;
    let mut audio: Vec<AudioHash> = Vec::new();
    for id in ids.iter().filter_map(|s| SessionId::parse(s).ok()) {
        let key = Key::session(&id);
        if let Some(mut rec) = cache.peek::<SessionRecord>(&key).await? {
            if !rec.is_finished() {
                rec.status = SessionStatus::Cancelled;
                rec.finished_ms = Some(now_ms());
                cache.put(&key, &rec).await?;
            }
            if !audio.contains(&rec.audio) {
                audio.push(rec.audio.clone());
            }
            erased.sessions += 1;
        }
        erased.redis_keys += delete_matching(&mut conn, &format!("{}:*{id}*", ns.as_str())).await?;
    }
    for a in &audio {
        for key in [Key::audio_pcm(a), Key::audio_features(a)] {
            if cache.delete(&key).await? {
                erased.redis_keys += 1;
            }
        }
    }
    // Every key naming the image (the status records and the session index included).
    erased.redis_keys += delete_matching(&mut conn, &format!("{}:*{image}*", ns.as_str())).await?;
    let removed: u64 = conn.zrem(avatars_key(&ns), image.as_str()).await?;
    erased.redis_keys += removed;

    // Blobs: the original, its videos and thumbnails, its idle loops, its sessions' audio.
    let mut names = vec![BlobStore::image_name(image)];
    for prefix in [format!("videos/{image}-"), format!("idle/{image}-")] {
        names.extend(blobs.list(&prefix).await?.into_iter().map(|l| l.name));
    }
    names.extend(audio.iter().map(BlobStore::audio_name));
    for name in names {
        if blobs.exists(&name).await? {
            blobs.remove(&name).await?;
            erased.blobs += 1;
        }
    }
    if erased.redis_keys == 0 && erased.blobs == 0 {
        revive(cache, image).await?;
        return Ok(None);
    }
    Ok(Some(erased))
}

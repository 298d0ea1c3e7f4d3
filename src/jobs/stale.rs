//! Healing a stale engine blob: a cached entry whose engine blob no longer decodes (an older
//! `STATE_VERSION`, a truncated value) is counted as stale (`stale:{kind}` in the statistics,
//! like the cache's own stale envelopes), evicted, and the job runs again, computing it anew.

use super::{Job, JobContext};
use crate::records::SessionRecord;
use vipavatar_cache::Key;
use vipavatar_pipeline::engine::BlobKind;

/// The cache entry that holds `blob` for this job (evicting `source_state:` makes the next run
/// prepare the avatar again, which rewrites every part it lists).
async fn entry_of(ctx: &JobContext, job: &Job, blob: BlobKind) -> Option<Key> {
    let session = match (job, blob) {
        (Job::Generate { session }, _) => session,
        // The idle loop renders with the default engine at the default size.
        (Job::Idle { image, mode }, BlobKind::State(_)) => {
            let engine = ctx.engines.get(None).ok()?.kind();
            return Some(Key::source_state(image, mode.as_str(), super::avatar::default_size(), engine.as_str()));
        }
        _ => return None,
    };
    let rec = ctx.cache.peek::<SessionRecord>(&Key::session(session)).await.ok().flatten()?;
    Some(match blob {
        BlobKind::Motion => Key::motion(&rec.audio, &rec.image, &rec.options_hash),
        BlobKind::AudioFeatures => Key::audio_features(&rec.audio),
        BlobKind::State(_) => {
            Key::source_state(&rec.image, rec.options.preprocess.as_str(), rec.options.size, rec.engine.as_str())
        }
    })
}

/// Count and evict the stale entry behind `blob`; the caller runs the job again.
pub async fn evict(ctx: &JobContext, job: &Job, blob: BlobKind) {
    let Some(key) = entry_of(ctx, job, blob).await else {
        return tracing::warn!(?blob, "no cache entry to evict for this stale blob");
    };
    let counter = format!("stale:{}", key.kind().name());
    if let Err(e) = ctx.cache.incr(&counter, 1).await {
        tracing::warn!(error = %e, "could not count the stale entry");
    }
    match ctx.cache.delete(&key).await {
        Ok(_) => tracing::info!(key = %key, "evicted a stale cache entry"),
        Err(e) => tracing::warn!(key = %key, error = %e, "could not evict a stale cache entry"),
    }
}

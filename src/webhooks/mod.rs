//! Signed webhooks (Standard Webhooks): a request's `callback_url` (+ optional `metadata`) is
//! registered on its session or avatar (`callbacks:session:{id}`, `callbacks:avatar:{image}:{mode}`,
//! Redis lists); when that finishes, the finisher drains the list atomically and queues one
//! delivery per callback on the `webhooks` stream, which [`deliver`] works through: at least once,
//! exponential backoff, each attempt recorded in the session or avatar record.
//!
//! A delivery's body is `{"type": event, "timestamp", "data": <the status endpoint's body>,
//! "metadata": <as sent>}`, signed over `"{webhook-id}.{webhook-timestamp}.{body}"`.

pub mod deliver;
pub mod sign;

use crate::config::Config;
use crate::records::now_ms;
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use vipavatar_cache::{ImageHash, Namespace, SessionId};
use vipavatar_pipeline::engine::PreprocessMode;

/// The events a webhook announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    #[serde(rename = "avatar.ready")]
    AvatarReady,
    #[serde(rename = "avatar.failed")]
    AvatarFailed,
    #[serde(rename = "video.ready")]
    VideoReady,
    #[serde(rename = "video.failed")]
    VideoFailed,
}

impl Event {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AvatarReady => "avatar.ready",
            Self::AvatarFailed => "avatar.failed",
            Self::VideoReady => "video.ready",
            Self::VideoFailed => "video.failed",
        }
    }
}

/// What a callback was registered on (its record gets the delivery state).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    Session(SessionId),
    Avatar { image: ImageHash, mode: PreprocessMode },
}

/// One registered callback.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Callback {
    pub url: String,
    /// The client's `metadata` object, as JSON text.
    pub metadata: Option<String>,
}

/// One queued delivery (JSON in the `webhooks` stream and the retry set).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    /// `webhook-id`: the same for every attempt of this delivery.
    pub id: String,
    pub event: Event,
    pub target: Target,
    pub url: String,
    /// The signed body.
    pub body: String,
    /// 1-based attempt this entry is for.
    pub attempt: u32,
}

fn list_key(ns: &Namespace, target: &Target) -> String {
    match target {
        Target::Session(id) => ns.name(&format!("callbacks:session:{id}")),
        Target::Avatar { image, mode } => ns.name(&format!("callbacks:avatar:{image}:{}", mode.as_str())),
    }
}

pub fn stream_key(ns: &Namespace) -> String {
    ns.name("webhooks")
}

pub fn retry_key(ns: &Namespace) -> String {
    ns.name("webhooks:retry")
}

/// Register `cb` on `target` (kept as long as the target's record tier).
pub async fn register(
    conn: &mut redis::aio::ConnectionManager,
    config: &Config,
    target: &Target,
    cb: &Callback,
) -> redis::RedisResult<()> {
    let key = list_key(&config.namespace, target);
    let ttl = match target {
        Target::Session(_) => config.ttl.ttl_session_secs,
        Target::Avatar { .. } => config.ttl.ttl_tier1_secs,
    };
    let json = serde_json::to_string(cb).unwrap_or_default();
    let mut pipe = redis::pipe();
    pipe.rpush(&key, json).ignore();
    if ttl > 0 {
        pipe.expire(&key, ttl as i64).ignore();
    }
    pipe.query_async(conn).await
}

/// Take every callback registered on `target` (atomically: each is taken once).
pub async fn drain(
    conn: &mut redis::aio::ConnectionManager,
    ns: &Namespace,
    target: &Target,
) -> redis::RedisResult<Vec<Callback>> {
    let key = list_key(ns, target);
    let (items, _): (Vec<String>, i64) = redis::pipe().atomic().lrange(&key, 0, -1).del(&key).query_async(conn).await?;
    Ok(items.iter().filter_map(|s| serde_json::from_str(s).ok()).collect())
}

/// Remove every callback of `target` without delivering (the target was deleted).
pub async fn forget(
    conn: &mut redis::aio::ConnectionManager,
    ns: &Namespace,
    target: &Target,
) -> redis::RedisResult<()> {
    conn.del(list_key(ns, target)).await
}

/// RFC 3339 UTC time of `ms` since the epoch (`2026-12-01T15:04:05Z`).
pub fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Queue one delivery per callback of `target` with `data` (the status body) for `event`.
pub async fn announce(
    conn: &mut redis::aio::ConnectionManager,
    ns: &Namespace,
    target: Target,
    event: Event,
    data: &serde_json::Value,
) -> redis::RedisResult<usize> {
    let callbacks = drain(conn, ns, &target).await?;
    for cb in &callbacks {
        let metadata = cb.metadata.as_deref().and_then(|m| serde_json::from_str::<serde_json::Value>(m).ok());
        let body = serde_json::json!({
            "type": event.as_str(),
            "timestamp": rfc3339(now_ms()),
            "data": data,
            "metadata": metadata,
        });
        let delivery = Delivery {
            id: format!("msg_{}", uuid::Uuid::new_v4().simple()),
            event,
            target: target.clone(),
            url: cb.url.clone(),
            body: body.to_string(),
            attempt: 1,
        };
        let json = serde_json::to_string(&delivery).unwrap_or_default();
        let _: String = conn.xadd(stream_key(ns), "*", &[("delivery", json)]).await?;
    }
    Ok(callbacks.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_614_265_330_000), "2021-02-25T15:02:10Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00Z");
    }
}

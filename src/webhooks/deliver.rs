//! The webhook deliverer every worker process runs: takes deliveries from the `webhooks` stream
//! (consumer group `deliverers`; entries of a deliverer that died are reclaimed after the lease),
//! POSTs them signed through the guarded client, records the attempt in the session or avatar,
//! and on failure puts the next attempt in the retry set (`webhooks:retry`, scored by when it is
//! due, doubling the wait each time) until the attempts run out. An entry is acknowledged only
//! after its retry is queued, so a crash delivers again rather than never.

use super::sign::SigningKey;
use super::{retry_key, stream_key, Delivery, Target};
use crate::config::Config;
use crate::fetch::Fetcher;
use crate::records::{now_ms, AvatarRecord, SessionRecord, WebhookState};
use redis::aio::ConnectionManager;
use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};
use std::time::Duration;
use tokio::sync::watch;
use vipavatar_cache::{Cache, Key, Namespace};

const GROUP: &str = "deliverers";
const FIELD: &str = "delivery";

pub struct Deliverer {
    pub cache: Cache,
    pub conn: ConnectionManager,
    pub ns: Namespace,
    pub fetcher: Fetcher,
    pub key: Option<SigningKey>,
    pub max_attempts: u32,
    pub backoff: Duration,
    pub timeout: Duration,
    pub consumer: String,
    pub lease: Duration,
}

impl Deliverer {
    pub fn new(config: &Config, cache: Cache, fetcher: Fetcher, consumer: String) -> anyhow::Result<Self> {
        let w = &config.webhooks;
        let key = match w.webhook_secret.as_ref().filter(|s| !s.is_empty()) {
            Some(s) => {
                Some(SigningKey::parse(s.expose()).map_err(|e| anyhow::anyhow!("VIPAVATAR_WEBHOOK_SECRET: {e}"))?)
            }
            None => None,
        };
        Ok(Self {
            conn: cache.connection(),
            cache,
            ns: config.namespace.clone(),
            fetcher,
            key,
            max_attempts: w.webhook_max_attempts.max(1),
            backoff: Duration::from_millis(w.webhook_backoff_ms.max(1)),
            timeout: Duration::from_secs(w.webhook_timeout_secs.max(1)),
            consumer,
            lease: Duration::from_secs(w.webhook_timeout_secs.max(1) * 3 + 5),
        })
    }

    async fn ensure_group(&self) -> redis::RedisResult<()> {
        let r: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(stream_key(&self.ns))
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut self.conn.clone())
            .await;
        match r {
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            other => other,
        }
    }

    /// Deliver until `shutdown` turns true.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        while let Err(e) = self.ensure_group().await {
            tracing::warn!(error = %e, "cannot create the webhook stream group; retrying");
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.changed() => return,
            }
        }
        while !*shutdown.borrow() {
            let worked = match self.round().await {
                Ok(n) => n > 0,
                Err(e) => {
                    tracing::warn!(error = %e, "webhook round failed");
                    false
                }
            };
            if !worked {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    _ = shutdown.changed() => return,
                }
            }
        }
    }

    /// Move due retries into the stream, then deliver what is claimable; returns how much ran.
    async fn round(&self) -> redis::RedisResult<usize> {
        let mut conn = self.conn.clone();
        let due: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(retry_key(&self.ns))
            .arg("-inf")
            .arg(now_ms())
            .arg("LIMIT")
            .arg(0)
            .arg(16)
            .query_async(&mut conn)
            .await?;
        for member in &due {
            // ZREM decides which deliverer moves it (exactly one sees 1).
            let removed: i64 = redis::cmd("ZREM").arg(retry_key(&self.ns)).arg(member).query_async(&mut conn).await?;
            if removed == 1 {
                let _: String = redis::cmd("XADD")
                    .arg(stream_key(&self.ns))
                    .arg("*")
                    .arg(FIELD)
                    .arg(member)
                    .query_async(&mut conn)
                    .await?;
            }
        }
        let stale: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
            .arg(stream_key(&self.ns))
            .arg(GROUP)
            .arg(&self.consumer)
            .arg(self.lease.as_millis() as u64)
            .arg("0-0")
            .arg("COUNT")
            .arg(8)
            .query_async(&mut conn)
            .await?;
        let fresh: StreamReadReply = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(GROUP)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(8)
            .arg("STREAMS")
            .arg(stream_key(&self.ns))
            .arg(">")
            .query_async(&mut conn)
            .await?;
        let entries: Vec<StreamId> =
            stale.claimed.into_iter().chain(fresh.keys.into_iter().flat_map(|k| k.ids)).collect();
        let n = entries.len();
        for entry in entries {
            self.handle(&entry).await?;
        }
        Ok(n + due.len())
    }

    async fn handle(&self, entry: &StreamId) -> redis::RedisResult<()> {
        let parsed = entry.get::<String>(FIELD).and_then(|s| serde_json::from_str::<Delivery>(&s).ok());
        if let Some(d) = parsed {
            let status = self.post(&d).await;
            let ok = status.as_ref().is_ok_and(|s| (200..300).contains(s));
            let last_status = status.as_ref().ok().copied();
            match &status {
                Ok(s) if ok => {
                    tracing::info!(id = %d.id, event = d.event.as_str(), attempt = d.attempt, status = s, "webhook delivered")
                }
                Ok(s) => tracing::warn!(id = %d.id, attempt = d.attempt, status = s, "webhook refused"),
                Err(e) => tracing::warn!(id = %d.id, attempt = d.attempt, error = %e, "webhook failed"),
            }
            self.record(&d.target, WebhookState { delivered: ok, attempts: d.attempt, last_status }).await;
            if !ok && d.attempt < self.max_attempts {
                let wait = self.backoff.saturating_mul(1u32 << (d.attempt - 1).min(16));
                let next = Delivery { attempt: d.attempt + 1, ..d };
                let json = serde_json::to_string(&next).unwrap_or_default();
                let due = now_ms() + wait.as_millis() as u64;
                let _: i64 = redis::cmd("ZADD")
                    .arg(retry_key(&self.ns))
                    .arg(due)
                    .arg(json)
                    .query_async(&mut self.conn.clone())
                    .await?;
            }
        } else {
            tracing::error!(entry = %entry.id, "dropping an undecodable webhook delivery");
        }
        redis::pipe()
            .atomic()
            .cmd("XACK")
            .arg(stream_key(&self.ns))
            .arg(GROUP)
            .arg(&entry.id)
            .ignore()
            .cmd("XDEL")
            .arg(stream_key(&self.ns))
            .arg(&entry.id)
            .ignore()
            .query_async::<()>(&mut self.conn.clone())
            .await
    }

    /// One signed POST; the HTTP status, or why there was none.
    async fn post(&self, d: &Delivery) -> Result<u16, String> {
        let key = self.key.as_ref().ok_or("VIPAVATAR_WEBHOOK_SECRET is not set on this worker")?;
        let url = self.fetcher.check_url(&d.url).map_err(|e| e.to_string())?;
        let ts = now_ms() / 1000;
        let signature = key.sign(&d.id, ts, d.body.as_bytes());
        let resp = self
            .fetcher
            .hooks()
            .post(url)
            .timeout(self.timeout)
            .header("content-type", "application/json")
            .header("webhook-id", &d.id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", signature)
            .body(d.body.clone())
            .send()
            .await
            .map_err(|e| crate::fetch::classify(&d.url, e).to_string())?;
        Ok(resp.status().as_u16())
    }

    /// Store the latest attempt in the target's record (if it still exists).
    async fn record(&self, target: &Target, state: WebhookState) {
        let r = match target {
            Target::Session(id) => {
                let key = Key::session(id);
                match self.cache.peek::<SessionRecord>(&key).await {
                    Ok(Some(mut rec)) => {
                        rec.webhook = Some(state);
                        self.cache.put(&key, &rec).await
                    }
                    other => other.map(|_| ()),
                }
            }
            Target::Avatar { image, mode } => {
                let key = Key::avatar(image, mode.as_str());
                match self.cache.peek::<AvatarRecord>(&key).await {
                    Ok(Some(mut rec)) => {
                        rec.webhook = Some(state);
                        self.cache.put(&key, &rec).await
                    }
                    other => other.map(|_| ()),
                }
            }
        };
        if let Err(e) = r {
            tracing::warn!(error = %e, "could not record a webhook attempt");
        }
    }
}

//! Redis Streams job queue: a `vip` and a `standard` stream, one consumer group; `vip` is always
//! read first. Workers claim with XREADGROUP, keep their lease alive with a heartbeat (XCLAIM to
//! themselves, which resets the idle time), ack + delete on finish, and reclaim entries whose
//! worker went silent for longer than the lease (XAUTOCLAIM).

use super::Job;
use redis::aio::ConnectionManager;
use redis::streams::{StreamAutoClaimReply, StreamReadReply};
use std::time::Duration;
use vipavatar_cache::Namespace;

const GROUP: &str = "workers";
const FIELD: &str = "job";

/// Which stream a job goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queue {
    /// Generation for an avatar whose precompute is cached.
    Vip,
    /// Everything else (precompute, generation that must wait for its avatar).
    Standard,
}

impl Queue {
    pub const BOTH: [Queue; 2] = [Queue::Vip, Queue::Standard];
    pub fn name(self) -> &'static str {
        match self {
            Queue::Vip => "vip",
            Queue::Standard => "standard",
        }
    }
}

/// One claimed stream entry.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub queue: Queue,
    pub entry: String,
    /// The job, or why the entry could not be decoded (it is then acked and dropped).
    pub job: Result<Job, String>,
    /// True when this entry was taken over from a worker that went silent.
    pub reclaimed: bool,
}

/// Queue lengths for `/api/cache/stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueDepth {
    /// Entries waiting to be claimed.
    pub vip: u64,
    pub standard: u64,
    /// Entries claimed and not yet acknowledged.
    pub processing: u64,
}

#[derive(Clone)]
pub struct JobQueue {
    conn: ConnectionManager,
    ns: Namespace,
}

impl JobQueue {
    pub fn new(conn: ConnectionManager, ns: Namespace) -> Self {
        Self { conn, ns }
    }

    fn stream(&self, q: Queue) -> String {
        self.ns.name(&format!("queue:{}", q.name()))
    }

    fn attempts_key(&self) -> String {
        self.ns.name("job_attempts")
    }

    /// Create both streams and the consumer group (idempotent).
    pub async fn ensure_groups(&self) -> redis::RedisResult<()> {
        let mut conn = self.conn.clone();
        for q in Queue::BOTH {
            let r: redis::RedisResult<()> = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(self.stream(q))
                .arg(GROUP)
                .arg("0")
                .arg("MKSTREAM")
                .query_async(&mut conn)
                .await;
            match r {
                Err(e) if e.code() == Some("BUSYGROUP") => {}
                other => other?,
            }
        }
        Ok(())
    }

    /// Append `job` to `queue`; returns the entry id.
    pub async fn enqueue(&self, queue: Queue, job: &Job) -> redis::RedisResult<String> {
        let payload = serde_json::to_string(job)
            .map_err(|e| redis::RedisError::from((redis::ErrorKind::ClientError, "encode job", e.to_string())))?;
        let mut conn = self.conn.clone();
        redis::cmd("XADD").arg(self.stream(queue)).arg("*").arg(FIELD).arg(payload).query_async(&mut conn).await
    }

    fn delivery(queue: Queue, id: &redis::streams::StreamId, reclaimed: bool) -> Delivery {
        let job = match id.get::<String>(FIELD) {
            Some(s) => serde_json::from_str(&s).map_err(|e| format!("undecodable job {s:?}: {e}")),
            None => Err("entry without a job field".to_string()),
        };
        Delivery { queue, entry: id.id.clone(), job, reclaimed }
    }

    /// Take over one entry of `queue` idle for longer than `lease` (its worker died).
    async fn reclaim(&self, queue: Queue, consumer: &str, lease: Duration) -> redis::RedisResult<Option<Delivery>> {
        let mut conn = self.conn.clone();
        let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
            .arg(self.stream(queue))
            .arg(GROUP)
            .arg(consumer)
            .arg(lease.as_millis() as u64)
            .arg("0-0")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut conn)
            .await?;
        Ok(reply.claimed.first().map(|id| Self::delivery(queue, id, true)))
    }

    /// Claim the next job: stale entries first, then `vip`, then `standard`, waiting up to
    /// `block` on `blocking` (a connection of its own, since XREADGROUP BLOCK holds it).
    pub async fn claim(
        &self,
        blocking: &mut ConnectionManager,
        consumer: &str,
        lease: Duration,
        block: Duration,
    ) -> redis::RedisResult<Vec<Delivery>> {
        for q in Queue::BOTH {
            if let Some(d) = self.reclaim(q, consumer, lease).await? {
                tracing::warn!(queue = q.name(), entry = %d.entry, "reclaimed a job from a silent worker");
                return Ok(vec![d]);
            }
        }
        // Non-blocking look at vip first so it always drains before standard.
        let mut conn = self.conn.clone();
        let vip: StreamReadReply = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(GROUP)
            .arg(consumer)
            .arg("COUNT")
            .arg(1)
            .arg("STREAMS")
            .arg(self.stream(Queue::Vip))
            .arg(">")
            .query_async(&mut conn)
            .await?;
        let mut out = self.collect(vip);
        if !out.is_empty() {
            return Ok(out);
        }
        let both: StreamReadReply = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(GROUP)
            .arg(consumer)
            .arg("COUNT")
            .arg(1)
            .arg("BLOCK")
            .arg(block.as_millis().max(1) as u64)
            .arg("STREAMS")
            .arg(self.stream(Queue::Vip))
            .arg(self.stream(Queue::Standard))
            .arg(">")
            .arg(">")
            .query_async(blocking)
            .await?;
        out = self.collect(both);
        // vip before standard when both answered.
        out.sort_by_key(|d| d.queue != Queue::Vip);
        Ok(out)
    }

    fn collect(&self, reply: StreamReadReply) -> Vec<Delivery> {
        let mut out = Vec::new();
        for key in reply.keys {
            let queue = if key.key == self.stream(Queue::Vip) { Queue::Vip } else { Queue::Standard };
            out.extend(key.ids.iter().map(|id| Self::delivery(queue, id, false)));
        }
        out
    }

    /// Reset the idle time of entries this consumer holds (keeps the lease).
    pub async fn heartbeat(&self, consumer: &str, held: &[(Queue, String)]) -> redis::RedisResult<()> {
        let mut conn = self.conn.clone();
        for (q, entry) in held {
            let _: redis::Value = redis::cmd("XCLAIM")
                .arg(self.stream(*q))
                .arg(GROUP)
                .arg(consumer)
                .arg(0)
                .arg(entry)
                .arg("JUSTID")
                .query_async(&mut conn)
                .await?;
        }
        Ok(())
    }

    /// Count one more attempt at this entry (crashed attempts included); returns the count.
    pub async fn start_attempt(&self, d: &Delivery) -> redis::RedisResult<u32> {
        let mut conn = self.conn.clone();
        let n: i64 = redis::cmd("HINCRBY")
            .arg(self.attempts_key())
            .arg(format!("{}:{}", d.queue.name(), d.entry))
            .arg(1)
            .query_async(&mut conn)
            .await?;
        Ok(n.clamp(0, u32::MAX as i64) as u32)
    }

    /// Finish an entry: acknowledge, delete it from the stream and forget its attempts.
    pub async fn ack(&self, d: &Delivery) -> redis::RedisResult<()> {
        let stream = self.stream(d.queue);
        let mut conn = self.conn.clone();
        redis::pipe()
            .atomic()
            .cmd("XACK")
            .arg(&stream)
            .arg(GROUP)
            .arg(&d.entry)
            .ignore()
            .cmd("XDEL")
            .arg(&stream)
            .arg(&d.entry)
            .ignore()
            .cmd("HDEL")
            .arg(self.attempts_key())
            .arg(format!("{}:{}", d.queue.name(), d.entry))
            .ignore()
            .query_async::<()>(&mut conn)
            .await
    }

    /// Waiting and in-flight counts.
    pub async fn depth(&self) -> redis::RedisResult<QueueDepth> {
        let mut conn = self.conn.clone();
        let mut depth = QueueDepth::default();
        for q in Queue::BOTH {
            let len: u64 = redis::cmd("XLEN").arg(self.stream(q)).query_async(&mut conn).await?;
            let pending: redis::streams::StreamPendingReply =
                redis::cmd("XPENDING").arg(self.stream(q)).arg(GROUP).query_async(&mut conn).await.unwrap_or_default();
            let pending = pending.count() as u64;
            let waiting = len.saturating_sub(pending);
            match q {
                Queue::Vip => depth.vip = waiting,
                Queue::Standard => depth.standard = waiting,
            }
            depth.processing += pending;
        }
        Ok(depth)
    }
}

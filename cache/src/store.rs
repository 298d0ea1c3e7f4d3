//! The cache itself: namespaced get/put with TTL tiers, versioned values, and hit/miss counters
//! kept in Redis (hash `{namespace}:stats`) so every instance sees the same statistics.

use crate::codec::{self, Decoded};
use crate::keys::{Key, Kind, Namespace};
use crate::ttl::Ttls;
use redis::aio::ConnectionManager;
use redis::AsyncCommands;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("could not encode a {kind} value: {source}")]
    Encode { kind: Kind, source: bincode::Error },
}

pub type Result<T, E = CacheError> = std::result::Result<T, E>;

/// What a [`Cache`] needs besides its connection.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    pub namespace: Namespace,
    pub ttls: Ttls,
    /// The caller's data-layout version: values written under another version read as misses.
    pub schema_version: u16,
}

/// Cloneable handle (the connection manager multiplexes one connection).
#[derive(Clone)]
pub struct Cache {
    conn: ConnectionManager,
    config: CacheConfig,
}

/// Counts of entries and hit/miss statistics for `/api/cache/stats`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CacheStats {
    /// Number of keys of each kind (by `Kind::name`).
    pub entries: BTreeMap<&'static str, u64>,
    pub hits: BTreeMap<&'static str, u64>,
    pub misses: BTreeMap<&'static str, u64>,
    /// Values found but written by another version (also counted as misses).
    pub stale: BTreeMap<&'static str, u64>,
    /// hits / (hits + misses) over all kinds; 0 when nothing was looked up.
    pub hit_rate: f64,
}

const STATS: &str = "stats";

fn hit_field(kind: Kind) -> String {
    format!("hits:{}", kind.name())
}
fn miss_field(kind: Kind) -> String {
    format!("misses:{}", kind.name())
}
fn stale_field(kind: Kind) -> String {
    format!("stale:{}", kind.name())
}

impl Cache {
    pub fn new(conn: ConnectionManager, config: CacheConfig) -> Self {
        Self { conn, config }
    }

    pub fn namespace(&self) -> &Namespace {
        &self.config.namespace
    }

    pub fn ttls(&self) -> &Ttls {
        &self.config.ttls
    }

    /// A clone of the shared connection, for callers that issue their own commands.
    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    fn full(&self, key: &Key) -> String {
        self.config.namespace.key(key)
    }

    async fn read<T: DeserializeOwned>(&self, key: &Key) -> Result<Option<Result<T, String>>> {
        let mut conn = self.conn.clone();
        let raw: Option<Vec<u8>> = conn.get(self.full(key)).await?;
        Ok(raw.map(|bytes| match codec::decode(&bytes, self.config.schema_version) {
            Decoded::Value(v) => Ok(v),
            Decoded::Stale(why) => Err(why),
        }))
    }

    /// Look `key` up, counting a hit or a miss for its kind. A stale value is a miss.
    pub async fn get<T: DeserializeOwned>(&self, key: &Key) -> Result<Option<T>> {
        let found = self.read::<T>(key).await?;
        let kind = key.kind();
        let mut pipe = redis::pipe();
        let stats = self.config.namespace.name(STATS);
        let value = match found {
            Some(Ok(v)) => {
                pipe.hincr(&stats, hit_field(kind), 1).ignore();
                Some(v)
            }
            Some(Err(why)) => {
                tracing::warn!(key = %key, %why, "stale cache value treated as a miss");
                pipe.hincr(&stats, miss_field(kind), 1).ignore();
                pipe.hincr(&stats, stale_field(kind), 1).ignore();
                None
            }
            None => {
                pipe.hincr(&stats, miss_field(kind), 1).ignore();
                None
            }
        };
        let mut conn = self.conn.clone();
        pipe.query_async::<()>(&mut conn).await?;
        Ok(value)
    }

    /// Read without touching the statistics (status records, internal checks).
    pub async fn peek<T: DeserializeOwned>(&self, key: &Key) -> Result<Option<T>> {
        Ok(match self.read::<T>(key).await? {
            Some(Ok(v)) => Some(v),
            Some(Err(why)) => {
                tracing::warn!(key = %key, %why, "stale cache value ignored");
                None
            }
            None => None,
        })
    }

    /// Store `value` with its kind's TTL.
    pub async fn put<T: Serialize + ?Sized>(&self, key: &Key, value: &T) -> Result<()> {
        let bytes = codec::encode(value, self.config.schema_version)
            .map_err(|source| CacheError::Encode { kind: key.kind(), source })?;
        let mut conn = self.conn.clone();
        let full = self.full(key);
        match self.config.ttls.for_kind(key.kind()) {
            Some(ttl) => {
                let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
                conn.pset_ex::<_, _, ()>(full, bytes, ms).await?
            }
            None => conn.set::<_, _, ()>(full, bytes).await?,
        }
        Ok(())
    }

    /// Remove `key`; true when it existed.
    pub async fn delete(&self, key: &Key) -> Result<bool> {
        let mut conn = self.conn.clone();
        let n: u64 = conn.del(self.full(key)).await?;
        Ok(n > 0)
    }

    /// Claim `key` for `holder` (a plain string, the kind's TTL) unless it is held: `None` when
    /// this call claimed it, else the current holder. Atomic, so one caller wins across nodes.
    pub async fn claim(&self, key: &Key, holder: &str) -> Result<Option<String>> {
        let script = redis::Script::new(
            r"local cur = redis.call('GET', KEYS[1])
if cur then return cur end
if ARGV[2] == '0' then redis.call('SET', KEYS[1], ARGV[1]) else redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) end
return ''",
        );
        let ms = self.config.ttls.for_kind(key.kind()).map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX).max(1));
        let mut conn = self.conn.clone();
        let cur: String = script.key(self.full(key)).arg(holder).arg(ms.unwrap_or(0)).invoke_async(&mut conn).await?;
        Ok((!cur.is_empty()).then_some(cur))
    }

    /// Remove `key` only while `holder` holds it (see [`Cache::claim`]); true when removed.
    pub async fn release(&self, key: &Key, holder: &str) -> Result<bool> {
        let script = redis::Script::new(
            r"if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0",
        );
        let mut conn = self.conn.clone();
        let n: u64 = script.key(self.full(key)).arg(holder).invoke_async(&mut conn).await?;
        Ok(n > 0)
    }

    /// Whether `key` exists (no statistics).
    pub async fn exists(&self, key: &Key) -> Result<bool> {
        let mut conn = self.conn.clone();
        Ok(conn.exists(self.full(key)).await?)
    }

    /// Add `by` to a named counter in the shared statistics hash; returns the new value.
    pub async fn incr(&self, counter: &str, by: i64) -> Result<i64> {
        let mut conn = self.conn.clone();
        Ok(conn.hincr(self.config.namespace.name(STATS), counter, by).await?)
    }

    /// Every counter in the statistics hash (hits, misses, and the caller's own counters).
    pub async fn counters(&self) -> Result<BTreeMap<String, i64>> {
        let mut conn = self.conn.clone();
        Ok(conn.hgetall(self.config.namespace.name(STATS)).await?)
    }

    /// How many keys of `kind` exist (SCAN, so it does not block Redis).
    pub async fn count(&self, kind: Kind) -> Result<u64> {
        let mut conn = self.conn.clone();
        Ok(scan(&mut conn, &self.config.namespace.pattern(kind)).await?.len() as u64)
    }

    /// Entry counts per kind plus hit/miss statistics: one SCAN of the namespace, each key
    /// counted under the kind its prefix names (not one SCAN per kind).
    pub async fn stats(&self) -> Result<CacheStats> {
        let counters = self.counters().await?;
        let get = |field: String| counters.get(&field).copied().unwrap_or(0).max(0) as u64;
        let mut stats = CacheStats::default();
        for kind in Kind::ALL {
            stats.entries.insert(kind.name(), 0);
        }
        let mut conn = self.conn.clone();
        let prefix = self.config.namespace.name("");
        for key in scan(&mut conn, &format!("{prefix}*")).await? {
            let kind = key.strip_prefix(&prefix).and_then(|rest| rest.split_once(':')).map(|(kind, _)| kind);
            if let Some(n) = kind.and_then(|k| stats.entries.get_mut(k)) {
                *n += 1;
            }
        }
        let (mut hits, mut misses) = (0u64, 0u64);
        for kind in Kind::ALL {
            if matches!(kind, Kind::Session | Kind::Avatar | Kind::Inflight) {
                continue;
            }
            let (h, m, s) = (get(hit_field(kind)), get(miss_field(kind)), get(stale_field(kind)));
            hits += h;
            misses += m;
            stats.hits.insert(kind.name(), h);
            stats.misses.insert(kind.name(), m);
            stats.stale.insert(kind.name(), s);
        }
        stats.hit_rate = if hits + misses == 0 { 0.0 } else { hits as f64 / (hits + misses) as f64 };
        Ok(stats)
    }
}

/// Every key matching `pattern`, by SCAN cursor (so Redis is never blocked the way KEYS blocks
/// it). The one cursor loop of the workspace: cache counts, the worker registry, the bench.
pub async fn scan<C: redis::aio::ConnectionLike + Send>(
    conn: &mut C,
    pattern: &str,
) -> redis::RedisResult<Vec<String>> {
    let mut cursor: u64 = 0;
    let mut keys = Vec::new();
    loop {
        let (next, batch): (u64, Vec<String>) =
            redis::cmd("SCAN").arg(cursor).arg("MATCH").arg(pattern).arg("COUNT").arg(1000).query_async(conn).await?;
        keys.extend(batch);
        if next == 0 {
            return Ok(keys);
        }
        cursor = next;
    }
}

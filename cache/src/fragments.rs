//! Live video streams: the pieces of a session's fragmented MP4 in a Redis stream
//! (`stream:{session_id}`, tier 3). The worker that renders appends them; any API node reads them
//! from the first entry on (a late client gets the whole stream), blocking on a connection of
//! its own so the shared multiplexed connection never waits.

use crate::ids::SessionId;
use crate::keys::{Key, Kind, Namespace};
use crate::store::Result;
use crate::ttl::Ttls;
use redis::aio::{ConnectionManager, MultiplexedConnection};
use redis::Value;
use std::time::Duration;

/// One entry of a live stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// `ftyp` + `moov`.
    Init(Vec<u8>),
    /// One `moof` + `mdat`.
    Media(Vec<u8>),
    /// The stream is complete.
    End,
    /// The session failed; the payload is its JSON error body.
    Error(String),
}

impl Piece {
    fn kind(&self) -> &'static str {
        match self {
            Piece::Init(_) => "init",
            Piece::Media(_) => "media",
            Piece::End => "end",
            Piece::Error(_) => "error",
        }
    }
    fn payload(&self) -> &[u8] {
        match self {
            Piece::Init(b) | Piece::Media(b) => b,
            Piece::End => b"",
            Piece::Error(s) => s.as_bytes(),
        }
    }
}

/// XADD a piece to `KEYS[1]` and RPUSH `"{entry id} {kind} {attempt} {seconds}"` to its index
/// `KEYS[2]`, both with the stream's TTL (`ARGV[5]`, 0: none), in one step.
const APPEND_INDEXED: &str = r"
local id = redis.call('XADD', KEYS[1], '*', 'kind', ARGV[1], 'attempt', ARGV[2], 'data', ARGV[3])
redis.call('RPUSH', KEYS[2], id .. ' ' .. ARGV[1] .. ' ' .. ARGV[2] .. ' ' .. ARGV[4])
local ttl = tonumber(ARGV[5])
if ttl > 0 then
  redis.call('EXPIRE', KEYS[1], ttl)
  redis.call('EXPIRE', KEYS[2], ttl)
end
return id
";

/// One line of a stream's index: an entry's id, kind, attempt and media duration.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexEntry {
    /// The Redis stream entry id (for [`FragmentStreams::entry`]).
    pub entry: String,
    /// `init`, `media`, `end` or `error`.
    pub kind: String,
    pub attempt: u32,
    pub seconds: f64,
}

impl IndexEntry {
    fn parse(line: &str) -> Option<Self> {
        let mut f = line.split(' ');
        let (entry, kind, attempt, seconds) = (f.next()?, f.next()?, f.next()?, f.next()?);
        Some(Self {
            entry: entry.into(),
            kind: kind.into(),
            attempt: attempt.parse().ok()?,
            seconds: seconds.parse().ok()?,
        })
    }
}

/// A piece as read back, with the job attempt that wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamEntry {
    pub attempt: u32,
    pub piece: Piece,
}

/// Writes and opens the live streams of one namespace.
#[derive(Clone)]
pub struct FragmentStreams {
    client: redis::Client,
    conn: ConnectionManager,
    namespace: Namespace,
    ttl: Option<Duration>,
}

impl FragmentStreams {
    pub fn new(client: redis::Client, conn: ConnectionManager, namespace: Namespace, ttls: &Ttls) -> Self {
        Self { client, conn, namespace, ttl: ttls.for_kind(Kind::Stream) }
    }

    fn key(&self, id: &SessionId) -> String {
        self.namespace.key(&Key::stream(id))
    }

    fn part_key(&self, id: &SessionId, attempt: u32, part: usize) -> String {
        self.namespace.key(&Key::part_stream(id, attempt, part))
    }

    /// The index of a session's stream: one line per entry (`stream:{session_id}:index`).
    fn index_key(&self, id: &SessionId) -> String {
        format!("{}:index", self.key(id))
    }

    /// Drop whatever an earlier attempt wrote.
    pub async fn reset(&self, id: &SessionId) -> Result<()> {
        let mut conn = self.conn.clone();
        redis::cmd("DEL").arg(self.key(id)).arg(self.index_key(id)).query_async::<()>(&mut conn).await?;
        Ok(())
    }

    /// Append one piece (and refresh the stream's TTL). `seconds`: the media's duration, kept
    /// in the stream's index for playlists (0 for every other piece).
    pub async fn append(&self, id: &SessionId, attempt: u32, piece: &Piece, seconds: f64) -> Result<()> {
        let ttl = self.ttl.map(|t| t.as_secs().max(1)).unwrap_or(0);
        let mut conn = self.conn.clone();
        redis::Script::new(APPEND_INDEXED)
            .key(self.key(id))
            .key(self.index_key(id))
            .arg(piece.kind())
            .arg(attempt)
            .arg(piece.payload())
            .arg(format!("{seconds:.3}"))
            .arg(ttl)
            .invoke_async::<String>(&mut conn)
            .await?;
        Ok(())
    }

    /// The stream's entries so far, without their bytes, in order.
    pub async fn index(&self, id: &SessionId) -> Result<Vec<IndexEntry>> {
        let mut conn = self.conn.clone();
        let lines: Vec<String> =
            redis::cmd("LRANGE").arg(self.index_key(id)).arg(0).arg(-1).query_async(&mut conn).await?;
        Ok(lines.iter().filter_map(|l| IndexEntry::parse(l)).collect())
    }

    /// One entry of the stream by its id (from [`Self::index`]); `None` once it expired.
    pub async fn entry(&self, id: &SessionId, entry: &str) -> Result<Option<StreamEntry>> {
        let mut conn = self.conn.clone();
        let reply: Value = redis::cmd("XRANGE")
            .arg(self.key(id))
            .arg(entry)
            .arg(entry)
            .arg("COUNT")
            .arg(1)
            .query_async(&mut conn)
            .await?;
        let Value::Array(entries) = reply else { return Ok(None) };
        Ok(entries.into_iter().filter_map(parse_entry).next().and_then(|(_, fields)| entry_from(&fields)))
    }

    /// Append one piece to part `part` of attempt `attempt` of a split session.
    pub async fn append_part(&self, id: &SessionId, attempt: u32, part: usize, piece: &Piece) -> Result<()> {
        self.append_key(self.part_key(id, attempt, part), attempt, piece).await
    }

    async fn append_key(&self, key: String, attempt: u32, piece: &Piece) -> Result<()> {
        let mut pipe = redis::pipe();
        pipe.cmd("XADD")
            .arg(&key)
            .arg("*")
            .arg("kind")
            .arg(piece.kind())
            .arg("attempt")
            .arg(attempt)
            .arg("data")
            .arg(piece.payload())
            .ignore();
        if let Some(ttl) = self.ttl {
            pipe.cmd("EXPIRE").arg(&key).arg(ttl.as_secs().max(1)).ignore();
        }
        let mut conn = self.conn.clone();
        pipe.query_async::<()>(&mut conn).await?;
        Ok(())
    }

    /// Whether anything was written for this session.
    pub async fn exists(&self, id: &SessionId) -> Result<bool> {
        let mut conn = self.conn.clone();
        let n: u64 = redis::cmd("EXISTS").arg(self.key(id)).query_async(&mut conn).await?;
        Ok(n > 0)
    }

    /// A reader positioned before the first entry, on a connection of its own.
    pub async fn reader(&self, id: &SessionId) -> Result<FragmentReader> {
        let conn = self.client.get_multiplexed_async_connection().await?;
        Ok(FragmentReader { conn, key: self.key(id), last: "0-0".into() })
    }

    /// A reader of one part of a split session.
    pub async fn part_reader(&self, id: &SessionId, attempt: u32, part: usize) -> Result<FragmentReader> {
        let conn = self.client.get_multiplexed_async_connection().await?;
        Ok(FragmentReader { conn, key: self.part_key(id, attempt, part), last: "0-0".into() })
    }

    /// Take the part for `owner` unless someone holds it: `SET NX` with a lease of `ttl`.
    pub async fn claim_part(
        &self,
        id: &SessionId,
        attempt: u32,
        part: usize,
        owner: &str,
        ttl: Duration,
    ) -> Result<bool> {
        let mut conn = self.conn.clone();
        let set: Option<String> = redis::cmd("SET")
            .arg(format!("{}:claim", self.part_key(id, attempt, part)))
            .arg(owner)
            .arg("NX")
            .arg("PX")
            .arg(ttl.as_millis().max(1) as u64)
            .query_async(&mut conn)
            .await?;
        Ok(set.is_some())
    }

    /// Extend a held claim (its renderer is alive), or mark it done for good with the stream's
    /// TTL (`ttl: None`).
    pub async fn hold_part(&self, id: &SessionId, attempt: u32, part: usize, ttl: Option<Duration>) -> Result<()> {
        let key = format!("{}:claim", self.part_key(id, attempt, part));
        let ms = ttl.or(self.ttl).map(|t| t.as_millis().max(1) as u64).unwrap_or(3_600_000);
        let mut conn = self.conn.clone();
        redis::cmd("PEXPIRE").arg(key).arg(ms).query_async::<()>(&mut conn).await?;
        Ok(())
    }

    /// Whether anyone holds the part's claim (a lapsed claim means its renderer died).
    pub async fn part_claimed(&self, id: &SessionId, attempt: u32, part: usize) -> Result<bool> {
        let mut conn = self.conn.clone();
        let key = format!("{}:claim", self.part_key(id, attempt, part));
        let n: u64 = redis::cmd("EXISTS").arg(key).query_async(&mut conn).await?;
        Ok(n > 0)
    }
}

/// Reads one live stream in order.
pub struct FragmentReader {
    conn: MultiplexedConnection,
    key: String,
    last: String,
}

impl FragmentReader {
    /// The next entries, waiting up to `block` for new ones (empty: nothing new yet).
    pub async fn next(&mut self, block: Duration, count: usize) -> Result<Vec<StreamEntry>> {
        let reply: Value = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(count.max(1))
            .arg("BLOCK")
            .arg(block.as_millis().max(1) as u64)
            .arg("STREAMS")
            .arg(&self.key)
            .arg(&self.last)
            .query_async(&mut self.conn)
            .await?;
        let mut out = Vec::new();
        for (id, fields) in parse_xread(reply) {
            self.last = id;
            if let Some(entry) = entry_from(&fields) {
                out.push(entry);
            }
        }
        Ok(out)
    }
}

/// One stream entry: its id and its `(field, value)` pairs.
type Entry = (String, Vec<(String, Vec<u8>)>);

/// `XREAD` reply -> the entries of the one stream asked for.
fn parse_xread(reply: Value) -> Vec<Entry> {
    let streams = match reply {
        Value::Array(s) => s,
        Value::Map(m) => m.into_iter().map(|(k, v)| Value::Array(vec![k, v])).collect(),
        _ => return Vec::new(),
    };
    let mut out = Vec::new();
    for stream in streams {
        let Value::Array(parts) = stream else {
            continue;
        };
        let Some(Value::Array(entries)) = parts.into_iter().nth(1) else {
            continue;
        };
        out.extend(entries.into_iter().filter_map(parse_entry));
    }
    out
}

/// The bytes of a string reply.
fn bytes(v: &Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b.clone()),
        Value::SimpleString(s) => Some(s.clone().into_bytes()),
        _ => None,
    }
}

/// One stream entry of an `XREAD` / `XRANGE` reply -> `(id, [(field, value)])`.
fn parse_entry(entry: Value) -> Option<Entry> {
    let Value::Array(e) = entry else { return None };
    let (Some(id), Some(Value::Array(kv))) = (e.first().and_then(bytes), e.get(1)) else {
        return None;
    };
    let fields =
        kv.chunks(2).filter_map(|p| Some((String::from_utf8(bytes(p.first()?)?).ok()?, bytes(p.get(1)?)?))).collect();
    Some((String::from_utf8_lossy(&id).into_owned(), fields))
}

fn entry_from(fields: &[(String, Vec<u8>)]) -> Option<StreamEntry> {
    let get = |name: &str| fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let attempt = String::from_utf8(get("attempt")?).ok()?.parse().ok()?;
    let data = get("data").unwrap_or_default();
    let piece = match get("kind")?.as_slice() {
        b"init" => Piece::Init(data),
        b"media" => Piece::Media(data),
        b"end" => Piece::End,
        b"error" => Piece::Error(String::from_utf8_lossy(&data).into_owned()),
        _ => return None,
    };
    Some(StreamEntry { attempt, piece })
}

//! The cache against a real redis-server started by this test binary (one per binary, one
//! namespace per test).

use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use std::sync::OnceLock;
use vipavatar_cache::server::TestRedis;
use vipavatar_cache::*;

/// The binary's one redis-server (`vipavatar_cache::server::TestRedis`).
fn redis() -> &'static TestRedis {
    static REDIS: OnceLock<TestRedis> = OnceLock::new();
    REDIS.get_or_init(|| TestRedis::start("cache-test"))
}

async fn cache(ns: &str, ttls: Ttls, schema_version: u16) -> Cache {
    let client = redis::Client::open(redis().url()).unwrap();
    let conn = client.get_connection_manager().await.unwrap();
    Cache::new(conn, CacheConfig { namespace: Namespace::parse(ns).unwrap(), ttls, schema_version })
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Coeffs {
    values: Vec<f32>,
    mode: String,
}

fn unique(name: &str) -> String {
    format!("{name}-{}", std::process::id())
}

#[tokio::test]
async fn get_put_counts_hits_and_misses_in_redis() {
    let ns = unique("hits");
    let c = cache(&ns, Ttls::default(), 1).await;
    let img = ImageHash::of(b"portrait");
    let key = Key::coeffs_3dmm(&img, "crop");
    assert_eq!(c.get::<Coeffs>(&key).await.unwrap(), None);
    let v = Coeffs { values: vec![1.0, 2.5], mode: "crop".into() };
    c.put(&key, &v).await.unwrap();
    assert_eq!(c.get::<Coeffs>(&key).await.unwrap(), Some(v));
    assert_eq!(c.get::<Coeffs>(&key).await.unwrap().map(|v| v.values.len()), Some(2));

    // A second handle (another instance) sees the same counters.
    let other = cache(&ns, Ttls::default(), 1).await;
    let stats = other.stats().await.unwrap();
    assert_eq!(stats.hits["3dmm_coeffs"], 2);
    assert_eq!(stats.misses["3dmm_coeffs"], 1);
    assert_eq!(stats.entries["3dmm_coeffs"], 1);
    assert_eq!(stats.entries["face_crop"], 0);
    assert!((stats.hit_rate - 2.0 / 3.0).abs() < 1e-9);

    // peek does not count.
    other.peek::<Coeffs>(&key).await.unwrap().unwrap();
    assert_eq!(other.stats().await.unwrap().hits["3dmm_coeffs"], 2);
}

#[tokio::test]
async fn old_format_value_is_a_miss_not_a_crash() {
    let ns = unique("stale");
    let old = cache(&ns, Ttls::default(), 1).await;
    let new = cache(&ns, Ttls::default(), 2).await;
    let key = Key::visemes(&ImageHash::of(b"x"));
    old.put(&key, &vec![1u8, 2, 3]).await.unwrap();
    assert_eq!(new.get::<Vec<u8>>(&key).await.unwrap(), None);
    // Raw garbage under a key is a miss, too.
    let mut conn = new.connection();
    let full = new.namespace().key(&key);
    conn.set::<_, _, ()>(&full, b"garbage".as_slice()).await.unwrap();
    assert_eq!(new.get::<Vec<u8>>(&key).await.unwrap(), None);
    let stats = new.stats().await.unwrap();
    assert_eq!(stats.misses["visemes"], 2);
    assert_eq!(stats.stale["visemes"], 2);
}

#[tokio::test]
async fn ttl_tiers_are_applied_per_kind() {
    let ns = unique("ttl");
    let c = cache(&ns, Ttls::from_secs(100, 0, 50, 10), 1).await;
    let img = ImageHash::of(b"y");
    let sid = SessionId::parse(&"ab".repeat(16)).unwrap();
    c.put(&Key::face_detection(&img), &1u32).await.unwrap();
    c.put(&Key::coeffs_3dmm(&img, "full"), &1u32).await.unwrap();
    c.put(&Key::gestures(&img), &1u32).await.unwrap();
    c.put(&Key::session(&sid), &1u32).await.unwrap();
    let mut conn = c.connection();
    let ttl = |k: Key| {
        let full = c.namespace().key(&k);
        let mut conn = conn.clone();
        async move { conn.ttl::<_, i64>(full).await.unwrap() }
    };
    let t = ttl(Key::face_detection(&img)).await;
    assert!((90..=100).contains(&t), "tier 1 ttl {t}");
    assert_eq!(ttl(Key::coeffs_3dmm(&img, "full")).await, -1, "3dmm_coeffs must not expire");
    let t = ttl(Key::gestures(&img)).await;
    assert!((40..=50).contains(&t), "tier 2 ttl {t}");
    let t = ttl(Key::session(&sid)).await;
    assert!((1..=10).contains(&t), "tier 3 ttl {t}");
    // Keys carry the namespace.
    let keys: Vec<String> = conn.keys(format!("{ns}:*")).await.unwrap();
    assert_eq!(keys.len(), 4, "{keys:?}");
}

#[tokio::test]
async fn one_scan_counts_every_kind_and_ignores_other_names() {
    let ns = unique("scan");
    let c = cache(&ns, Ttls::default(), 1).await;
    // More keys than one SCAN batch (COUNT 1000), so the cursor loop runs several times.
    let mut pipe = redis::pipe();
    for i in 0..2500u32 {
        pipe.set(c.namespace().key(&Key::landmarks(&ImageHash::of(&i.to_le_bytes()))), 1u8).ignore();
    }
    for i in 0..3u32 {
        pipe.set(c.namespace().key(&Key::gestures(&ImageHash::of(&i.to_le_bytes()))), 1u8).ignore();
    }
    // Names of the namespace that are no cache kind (counters, queues) are not entries.
    pipe.set(c.namespace().name("landmarks"), 1u8).ignore();
    pipe.set(c.namespace().name("jobs:vip"), 1u8).ignore();
    let mut conn = c.connection();
    pipe.query_async::<()>(&mut conn).await.unwrap();

    let found = scan(&mut conn, &c.namespace().pattern(Kind::Landmarks)).await.unwrap();
    assert_eq!(found.len(), 2500);
    assert_eq!(c.count(Kind::Landmarks).await.unwrap(), 2500);
    let stats = c.stats().await.unwrap();
    assert_eq!(stats.entries["landmarks"], 2500);
    assert_eq!(stats.entries["gestures"], 3);
    assert_eq!(stats.entries["face_detection"], 0);
    assert_eq!(stats.entries.len(), Kind::ALL.len());
}

//! The speedups the seed-style fields report, all from measured times (never canned values):
//! the image-side seconds an avatar's precompute took (`performance_ready`), a session's
//! speedup `(its seconds + image-side seconds the cache saved it) / its seconds`
//! (`performance.speedup`), the expected speedup of a generate request (`performance_boost`),
//! and the average over finished sessions (`performance_summary.average_speedup`, from two
//! shared counters).

use crate::records::{AvatarRecord, AvatarStatus};
use vipavatar_cache::Cache;

/// Shared counters: the sum of finished sessions' speedups (in thousandths) and their number.
pub const SPEEDUP_MILLI_SUM: &str = "speedup:milli_sum";
pub const SPEEDUP_COUNT: &str = "speedup:sessions";

/// Seconds of image-side work a ready avatar's precompute measured (its `total` stage).
pub fn image_seconds(rec: &AvatarRecord) -> Option<f64> {
    if rec.status != AvatarStatus::Ready {
        return None;
    }
    rec.timings_ms.iter().filter(|(stage, _)| stage == "total").map(|(_, ms)| ms / 1e3).next_back()
}

/// `(seconds + saved) / seconds`, two decimals; 1 when nothing was saved.
pub fn speedup(seconds: f64, saved: f64) -> f64 {
    let seconds = seconds.max(1e-3);
    (((seconds + saved.max(0.0)) / seconds) * 100.0).round() / 100.0
}

/// Count one finished session's speedup into the shared average.
pub async fn record(cache: &Cache, speedup: f64) {
    let milli = (speedup * 1000.0).round() as i64;
    if cache.incr(SPEEDUP_MILLI_SUM, milli).await.is_ok() {
        let _ = cache.incr(SPEEDUP_COUNT, 1).await;
    }
}

/// The average speedup of finished sessions (0 before any) and how many there were.
pub fn average(counters: &std::collections::BTreeMap<String, i64>) -> (f64, u64) {
    let n = counters.get(SPEEDUP_COUNT).copied().unwrap_or(0).max(0) as u64;
    let sum = counters.get(SPEEDUP_MILLI_SUM).copied().unwrap_or(0).max(0) as f64 / 1000.0;
    let avg = if n > 0 { ((sum / n as f64) * 100.0).round() / 100.0 } else { 0.0 };
    (avg, n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn speedups_come_from_the_times() {
        assert_eq!(speedup(2.0, 0.0), 1.0);
        assert_eq!(speedup(2.0, 1.0), 1.5);
        assert_eq!(speedup(0.5, 4.5), 10.0);
        let mut c = std::collections::BTreeMap::new();
        assert_eq!(average(&c), (0.0, 0));
        c.insert(SPEEDUP_MILLI_SUM.to_string(), 4500);
        c.insert(SPEEDUP_COUNT.to_string(), 3);
        assert_eq!(average(&c), (1.5, 3));
    }
}

//! TTL per tier (DESIGN.md defaults), each configurable; `None` means the entry never expires.

use crate::keys::{Kind, Tier};
use std::time::Duration;

const DAY: u64 = 24 * 3600;

/// Time to live for each tier. `None` = no expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ttls {
    /// Tier 1 (detection, landmarks, crops, source state, avatar status): 30 days.
    pub long: Option<Duration>,
    /// Tier 1 `3dmm_coeffs`: never expires.
    pub permanent: Option<Duration>,
    /// Tier 2 (gestures, visemes, audio features, motion, video): 7 days.
    pub medium: Option<Duration>,
    /// Tier 3 (sessions): 1 hour.
    pub short: Option<Duration>,
}

impl Default for Ttls {
    fn default() -> Self {
        Self {
            long: Some(Duration::from_secs(30 * DAY)),
            permanent: None,
            medium: Some(Duration::from_secs(7 * DAY)),
            short: Some(Duration::from_secs(3600)),
        }
    }
}

impl Ttls {
    /// Build from seconds, where 0 means "never expires".
    pub fn from_secs(long: u64, permanent: u64, medium: u64, short: u64) -> Self {
        let d = |s: u64| (s > 0).then(|| Duration::from_secs(s));
        Self { long: d(long), permanent: d(permanent), medium: d(medium), short: d(short) }
    }

    pub fn for_tier(&self, tier: Tier) -> Option<Duration> {
        match tier {
            Tier::Long => self.long,
            Tier::Permanent => self.permanent,
            Tier::Medium => self.medium,
            Tier::Short => self.short,
        }
    }

    pub fn for_kind(&self, kind: Kind) -> Option<Duration> {
        self.for_tier(kind.tier())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_design() {
        let t = Ttls::default();
        assert_eq!(t.for_kind(Kind::FaceDetection), Some(Duration::from_secs(30 * DAY)));
        assert_eq!(t.for_kind(Kind::Coeffs3dmm), None);
        assert_eq!(t.for_kind(Kind::Motion), Some(Duration::from_secs(7 * DAY)));
        assert_eq!(t.for_kind(Kind::Session), Some(Duration::from_secs(3600)));
    }

    #[test]
    fn zero_seconds_means_no_expiry() {
        let t = Ttls::from_secs(10, 0, 0, 5);
        assert_eq!(t.long, Some(Duration::from_secs(10)));
        assert_eq!(t.permanent, None);
        assert_eq!(t.medium, None);
        assert_eq!(t.short, Some(Duration::from_secs(5)));
    }
}

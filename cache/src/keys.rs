//! The Redis key schema of DESIGN.md: one [`Kind`] per key family, each with its TTL tier.

use crate::ids::{AudioHash, ImageHash, OptionsHash, SessionId};
use std::fmt;

/// A key family. `name()` is the key prefix and the label used in statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    FaceDetection,
    Landmarks,
    Coeffs3dmm,
    FaceCrop,
    SourceState,
    Gestures,
    Visemes,
    AudioFeatures,
    Motion,
    Video,
    Session,
    /// Upload/precompute status of one image in one preprocess mode
    /// (`avatar:{image_hash}:{preprocess}`), tier 1. Not in DESIGN.md's table: added for the
    /// status endpoint.
    Avatar,
    /// Decoded 16 kHz PCM of one audio (`audio_pcm:{audio_hash}`), tier 3: the API decodes an
    /// upload once and the worker reads the samples instead of decoding again. Not in
    /// DESIGN.md's table.
    AudioPcm,
    /// `stream:{session_id}`: the fragments of a session's live fragmented MP4 (a Redis stream);
    /// `stream:{session_id}:{attempt}:{part}` (+ `:claim`): the parts of a split session.
    Stream,
    /// `idle:{image_hash}:{preprocess}:{size}`: where the avatar's idle loop and thumbnail are.
    Idle,
    /// `inflight:{image_hash}:{audio_hash}:{options_hash}`: the session rendering that `video:`
    /// right now (a plain string, claimed with SET NX), tier 3. Identical generate requests on
    /// any API node join it instead of rendering again. Not in DESIGN.md's table.
    Inflight,
}

/// How long entries of a kind live (DESIGN.md "tier" column).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// Tier 1, default 30 days.
    Long,
    /// Tier 1, never expires by default.
    Permanent,
    /// Tier 2, default 7 days.
    Medium,
    /// Tier 3, default 1 hour.
    Short,
}

impl Kind {
    pub const ALL: [Kind; 16] = [
        Kind::FaceDetection,
        Kind::Landmarks,
        Kind::Coeffs3dmm,
        Kind::FaceCrop,
        Kind::SourceState,
        Kind::Gestures,
        Kind::Visemes,
        Kind::AudioFeatures,
        Kind::Motion,
        Kind::Video,
        Kind::Session,
        Kind::Avatar,
        Kind::AudioPcm,
        Kind::Stream,
        Kind::Idle,
        Kind::Inflight,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::FaceDetection => "face_detection",
            Kind::Landmarks => "landmarks",
            Kind::Coeffs3dmm => "3dmm_coeffs",
            Kind::FaceCrop => "face_crop",
            Kind::SourceState => "source_state",
            Kind::Gestures => "gestures",
            Kind::Visemes => "visemes",
            Kind::AudioFeatures => "audio_features",
            Kind::Motion => "motion",
            Kind::Video => "video",
            Kind::Session => "session",
            Kind::Avatar => "avatar",
            Kind::AudioPcm => "audio_pcm",
            Kind::Stream => "stream",
            Kind::Idle => "idle",
            Kind::Inflight => "inflight",
        }
    }

    pub fn tier(self) -> Tier {
        match self {
            Kind::FaceDetection | Kind::Landmarks | Kind::FaceCrop | Kind::SourceState | Kind::Avatar | Kind::Idle => {
                Tier::Long
            }
            Kind::Coeffs3dmm => Tier::Permanent,
            Kind::Gestures | Kind::Visemes | Kind::AudioFeatures | Kind::Motion | Kind::Video => Tier::Medium,
            Kind::Session | Kind::AudioPcm | Kind::Stream | Kind::Inflight => Tier::Short,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A key without its namespace: `{kind}:{part}:{part}...`. Build one with the constructors.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    kind: Kind,
    rest: String,
}

impl Key {
    fn new(kind: Kind, parts: &[&str]) -> Self {
        Self { kind, rest: parts.join(":") }
    }
    pub fn kind(&self) -> Kind {
        self.kind
    }
    /// `face_detection:{image_hash}`
    pub fn face_detection(image: &ImageHash) -> Self {
        Self::new(Kind::FaceDetection, &[image.as_str()])
    }
    /// `landmarks:{image_hash}`
    pub fn landmarks(image: &ImageHash) -> Self {
        Self::new(Kind::Landmarks, &[image.as_str()])
    }
    /// `3dmm_coeffs:{image_hash}:{preprocess}`
    pub fn coeffs_3dmm(image: &ImageHash, preprocess: &str) -> Self {
        Self::new(Kind::Coeffs3dmm, &[image.as_str(), preprocess])
    }
    /// `face_crop:{image_hash}:{preprocess}:{size}`
    pub fn face_crop(image: &ImageHash, preprocess: &str, size: u32) -> Self {
        Self::new(Kind::FaceCrop, &[image.as_str(), preprocess, &size.to_string()])
    }
    /// `source_state:{image_hash}:{preprocess}:{size}:{engine}`
    pub fn source_state(image: &ImageHash, preprocess: &str, size: u32, engine: &str) -> Self {
        Self::new(Kind::SourceState, &[image.as_str(), preprocess, &size.to_string(), engine])
    }
    /// `gestures:{image_hash}`
    pub fn gestures(image: &ImageHash) -> Self {
        Self::new(Kind::Gestures, &[image.as_str()])
    }
    /// `visemes:{image_hash}`
    pub fn visemes(image: &ImageHash) -> Self {
        Self::new(Kind::Visemes, &[image.as_str()])
    }
    /// `audio_features:{audio_hash}`
    pub fn audio_features(audio: &AudioHash) -> Self {
        Self::new(Kind::AudioFeatures, &[audio.as_str()])
    }
    /// `motion:{audio_hash}:{image_hash}:{options_hash}`
    pub fn motion(audio: &AudioHash, image: &ImageHash, options: &OptionsHash) -> Self {
        Self::new(Kind::Motion, &[audio.as_str(), image.as_str(), options.as_str()])
    }
    /// `video:{image_hash}:{audio_hash}:{options_hash}`
    pub fn video(image: &ImageHash, audio: &AudioHash, options: &OptionsHash) -> Self {
        Self::new(Kind::Video, &[image.as_str(), audio.as_str(), options.as_str()])
    }
    /// `session:{session_id}`
    pub fn session(id: &SessionId) -> Self {
        Self::new(Kind::Session, &[id.as_str()])
    }
    /// `avatar:{image_hash}:{preprocess}`
    pub fn avatar(image: &ImageHash, preprocess: &str) -> Self {
        Self::new(Kind::Avatar, &[image.as_str(), preprocess])
    }
    /// `audio_pcm:{audio_hash}`
    pub fn audio_pcm(audio: &AudioHash) -> Self {
        Self::new(Kind::AudioPcm, &[audio.as_str()])
    }
    /// `stream:{session_id}`
    pub fn stream(id: &SessionId) -> Self {
        Self::new(Kind::Stream, &[id.as_str()])
    }
    /// `stream:{session_id}:{attempt}:{part}`: one part of a split session, as its renderer
    /// wrote it (bare H.264 pieces).
    pub fn part_stream(id: &SessionId, attempt: u32, part: usize) -> Self {
        Self::new(Kind::Stream, &[id.as_str(), &attempt.to_string(), &part.to_string()])
    }
    /// `inflight:{image_hash}:{audio_hash}:{options_hash}` (same parts as [`Key::video`])
    pub fn inflight(image: &ImageHash, audio: &AudioHash, options: &OptionsHash) -> Self {
        Self::new(Kind::Inflight, &[image.as_str(), audio.as_str(), options.as_str()])
    }
    /// `idle:{image_hash}:{preprocess}:{size}`
    pub fn idle(image: &ImageHash, preprocess: &str, size: u32) -> Self {
        Self::new(Kind::Idle, &[image.as_str(), preprocess, &size.to_string()])
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind.name(), self.rest)
    }
}

/// The prefix every key of one deployment (or one test) carries: `{namespace}:{key}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace(String);

impl Namespace {
    /// 1..=64 characters of `[A-Za-z0-9_.-]` (no glob or separator characters).
    pub fn parse(s: &str) -> Result<Self, crate::ids::IdError> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
        if ok {
            Ok(Self(s.to_string()))
        } else {
            Err(crate::ids::IdError {
                what: "namespace",
                expected: "1 to 64 characters from [A-Za-z0-9_.-]",
                value: s.chars().take(80).collect(),
            })
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The full Redis key for `key`.
    pub fn key(&self, key: &Key) -> String {
        format!("{}:{}", self.0, key)
    }
    /// Any other namespaced Redis name (streams, counters): `{namespace}:{name}`.
    pub fn name(&self, name: &str) -> String {
        format!("{}:{}", self.0, name)
    }
    /// SCAN pattern matching every key of `kind`.
    pub fn pattern(&self, kind: Kind) -> String {
        format!("{}:{}:*", self.0, kind.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img() -> ImageHash {
        ImageHash::of(b"image")
    }

    #[test]
    fn keys_follow_the_design_table() {
        let i = img();
        let a = AudioHash::of(b"audio");
        let o = OptionsHash::parse(&"0".repeat(32)).unwrap();
        let s = SessionId::parse(&"1".repeat(32)).unwrap();
        assert_eq!(Key::face_detection(&i).to_string(), format!("face_detection:{i}"));
        assert_eq!(Key::landmarks(&i).to_string(), format!("landmarks:{i}"));
        assert_eq!(Key::coeffs_3dmm(&i, "crop").to_string(), format!("3dmm_coeffs:{i}:crop"));
        assert_eq!(Key::face_crop(&i, "full", 512).to_string(), format!("face_crop:{i}:full:512"));
        assert_eq!(
            Key::source_state(&i, "crop", 256, "classic").to_string(),
            format!("source_state:{i}:crop:256:classic")
        );
        assert_eq!(Key::gestures(&i).to_string(), format!("gestures:{i}"));
        assert_eq!(Key::visemes(&i).to_string(), format!("visemes:{i}"));
        assert_eq!(Key::audio_features(&a).to_string(), format!("audio_features:{a}"));
        assert_eq!(Key::motion(&a, &i, &o).to_string(), format!("motion:{a}:{i}:{o}"));
        assert_eq!(Key::video(&i, &a, &o).to_string(), format!("video:{i}:{a}:{o}"));
        assert_eq!(Key::session(&s).to_string(), format!("session:{s}"));
        assert_eq!(Key::avatar(&i, "crop").to_string(), format!("avatar:{i}:crop"));
        assert_eq!(Key::audio_pcm(&a).to_string(), format!("audio_pcm:{a}"));
        assert_eq!(Key::stream(&s).to_string(), format!("stream:{s}"));
        assert_eq!(Key::idle(&i, "crop", 256).to_string(), format!("idle:{i}:crop:256"));
    }

    #[test]
    fn tiers_follow_the_design_table() {
        assert_eq!(Kind::Coeffs3dmm.tier(), Tier::Permanent);
        assert_eq!(Kind::FaceCrop.tier(), Tier::Long);
        assert_eq!(Kind::Visemes.tier(), Tier::Medium);
        assert_eq!(Kind::Video.tier(), Tier::Medium);
        assert_eq!(Kind::Session.tier(), Tier::Short);
    }

    #[test]
    fn namespace_rejects_glob_and_separator_characters() {
        assert!(Namespace::parse("prod-1.eu_west").is_ok());
        for bad in ["", "a:b", "a*", "a?b", "a[b]", "a b"] {
            assert!(Namespace::parse(bad).is_err(), "{bad:?} accepted");
        }
        let ns = Namespace::parse("t1").unwrap();
        assert_eq!(ns.key(&Key::gestures(&img())), format!("t1:gestures:{}", img()));
        assert_eq!(ns.pattern(Kind::Coeffs3dmm), "t1:3dmm_coeffs:*");
    }
}

//! Validated identifiers that appear in cache keys: content hashes and session ids.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Why a string is not a valid identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{value}` is not a valid {what}: expected {expected}")]
pub struct IdError {
    pub what: &'static str,
    pub expected: &'static str,
    pub value: String,
}

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn shorten(s: &str) -> String {
    s.chars().take(80).collect()
}

macro_rules! hex_id {
    ($(#[$doc:meta])* $name:ident, $what:literal, $len:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Accept exactly the canonical lower-case hex form.
            pub fn parse(s: &str) -> Result<Self, IdError> {
                if is_lower_hex(s, $len) {
                    Ok(Self(s.to_string()))
                } else {
                    Err(IdError {
                        what: $what,
                        expected: concat!($len, " lower-case hex characters"),
                        value: shorten(s),
                    })
                }
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                Self::parse(&s)
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }
    };
}

hex_id!(
    /// blake3 of the uploaded image bytes (64 hex characters); the public `image_id`.
    ImageHash, "image_id", 64
);
hex_id!(
    /// blake3 of the uploaded audio bytes (64 hex characters).
    AudioHash, "audio hash", 64
);
hex_id!(
    /// Hash of the generate options that change motion or pixels (32 hex characters).
    OptionsHash, "options hash", 32
);
hex_id!(
    /// One generate request (a UUID v4 in its 32-hex "simple" form).
    SessionId, "session_id", 32
);

impl ImageHash {
    /// blake3 of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self(blake3_hex(bytes))
    }
}

impl AudioHash {
    /// blake3 of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self(blake3_hex(bytes))
    }
}

fn blake3_hex(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_blake3_hex_and_parse_back() {
        let h = ImageHash::of(b"abc");
        assert_eq!(h.as_str().len(), 64);
        assert_eq!(ImageHash::parse(h.as_str()), Ok(h.clone()));
        assert_ne!(ImageHash::of(b"abd"), h);
    }

    #[test]
    fn parse_rejects_wrong_length_case_and_characters() {
        assert!(ImageHash::parse("abc").is_err());
        assert!(ImageHash::parse(&"A".repeat(64)).is_err());
        assert!(ImageHash::parse(&"g".repeat(64)).is_err());
        assert!(SessionId::parse(&"0".repeat(33)).is_err());
        let err = SessionId::parse("../etc/passwd").unwrap_err();
        assert_eq!(err.what, "session_id");
    }

    #[test]
    fn serde_round_trip_validates() {
        let id = SessionId::parse(&"ab".repeat(16)).unwrap();
        let bytes = bincode::serialize(&id).unwrap();
        assert_eq!(bincode::deserialize::<SessionId>(&bytes).unwrap(), id);
        let bad = bincode::serialize(&"zz".to_string()).unwrap();
        assert!(bincode::deserialize::<SessionId>(&bad).is_err());
    }
}

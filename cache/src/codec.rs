//! Versioned bincode envelope: `magic | envelope version | schema version | bincode payload`.
//! A value written by another version decodes as [`Decoded::Stale`] (a miss), never an error.

use serde::de::DeserializeOwned;
use serde::Serialize;

const MAGIC: &[u8; 4] = b"VAVC";
/// Version of the envelope layout itself.
pub const ENVELOPE_VERSION: u16 = 1;
const HEADER_LEN: usize = 8;

/// Outcome of decoding one stored value.
#[derive(Debug, PartialEq)]
pub enum Decoded<T> {
    Value(T),
    /// Written by another format/schema version, or not decodable as `T`: treat as a miss.
    Stale(String),
}

/// Encode `value` under `schema_version` (the caller's data-layout version).
pub fn encode<T: Serialize + ?Sized>(value: &T, schema_version: u16) -> Result<Vec<u8>, bincode::Error> {
    let payload = bincode::serialize(value)?;
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&ENVELOPE_VERSION.to_le_bytes());
    out.extend_from_slice(&schema_version.to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

/// Decode bytes written by [`encode`] with the same `schema_version`.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], schema_version: u16) -> Decoded<T> {
    let (Some(magic), Some(env), Some(schema)) = (bytes.get(0..4), bytes.get(4..6), bytes.get(6..8)) else {
        return Decoded::Stale(format!("value of {} bytes has no header", bytes.len()));
    };
    if magic != MAGIC {
        return Decoded::Stale("value has no vipavatar header".into());
    }
    let env = u16::from_le_bytes([env[0], env[1]]);
    let schema = u16::from_le_bytes([schema[0], schema[1]]);
    if env != ENVELOPE_VERSION || schema != schema_version {
        return Decoded::Stale(format!(
            "written with format {env}/{schema}, this build reads {ENVELOPE_VERSION}/{schema_version}"
        ));
    }
    match bincode::deserialize(&bytes[HEADER_LEN..]) {
        Ok(v) => Decoded::Value(v),
        Err(e) => Decoded::Stale(format!("payload does not decode: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct V1 {
        a: u32,
        b: String,
    }

    #[test]
    fn round_trip() {
        let v = V1 { a: 7, b: "x".into() };
        let bytes = encode(&v, 3).unwrap();
        assert_eq!(decode::<V1>(&bytes, 3), Decoded::Value(v));
    }

    #[test]
    fn other_schema_version_is_stale() {
        let bytes = encode(&V1 { a: 1, b: "y".into() }, 3).unwrap();
        assert!(matches!(decode::<V1>(&bytes, 4), Decoded::Stale(_)));
    }

    #[test]
    fn garbage_and_truncation_are_stale_not_panics() {
        assert!(matches!(decode::<V1>(b"", 1), Decoded::Stale(_)));
        assert!(matches!(decode::<V1>(b"hello world", 1), Decoded::Stale(_)));
        let bytes = encode(&V1 { a: 1, b: "long string".into() }, 1).unwrap();
        for cut in 0..bytes.len() {
            assert!(matches!(decode::<V1>(&bytes[..cut], 1), Decoded::Stale(_)), "cut at {cut}");
        }
        // A different type with the same header is stale, too.
        let other = encode(&(1u8,), 1).unwrap();
        assert!(matches!(decode::<V1>(&other, 1), Decoded::Stale(_)));
    }
}

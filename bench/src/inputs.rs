//! Benchmark inputs: speech clips of fixed lengths built from the test-data audio (decoded with
//! the pipeline's own decoder, trimmed or concatenated, written as 16 kHz 16-bit WAV), and
//! byte-level variants of an image or a clip that hash differently but decode to the same
//! pixels / (inaudibly different) samples, so the cache sees a genuinely new upload.

use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use vipavatar_pipeline::audio::{decode_audio, AudioLimits, SAMPLE_RATE};

/// A speech clip of a fixed length, 16 kHz mono.
#[derive(Debug, Clone)]
pub struct Clip {
    pub seconds: f64,
    pub samples: Vec<i16>,
    /// Which test-data files it was made of.
    pub sources: Vec<String>,
}

/// Every `.wav` under `dir`, sorted by name, decoded to 16 kHz mono.
fn decode_sources(dir: &Path) -> anyhow::Result<Vec<(String, Vec<f32>)>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x.eq_ignore_ascii_case("wav")))
        .collect();
    files.sort();
    let limits = AudioLimits { max_seconds: 3600.0, min_seconds: 0.5 };
    let mut out = Vec::new();
    for f in files {
        let bytes = std::fs::read(&f).with_context(|| format!("read {}", f.display()))?;
        let clip = decode_audio(&bytes, &limits).with_context(|| format!("decode {}", f.display()))?;
        let name = f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        out.push((name, clip.samples));
    }
    if out.is_empty() {
        bail!("no .wav files in {}", dir.display());
    }
    Ok(out)
}

/// Clips of each requested length: the shortest source at least that long, trimmed; otherwise
/// every source concatenated (in name order, repeated) and trimmed.
pub fn build_clips(audio_dir: &Path, lengths: &[f64]) -> anyhow::Result<Vec<Clip>> {
    let sources = decode_sources(audio_dir)?;
    let rate = SAMPLE_RATE as usize;
    let mut clips = Vec::new();
    for &seconds in lengths {
        let want = (seconds * rate as f64).round() as usize;
        if want < rate / 2 {
            bail!("audio length {seconds} s is too short (at least 0.5 s)");
        }
        let single = sources.iter().filter(|(_, s)| s.len() >= want).min_by_key(|(_, s)| s.len());
        let (samples, used): (Vec<f32>, Vec<String>) = match single {
            Some((name, s)) => (s[..want].to_vec(), vec![name.clone()]),
            None => {
                let mut all = Vec::with_capacity(want);
                let mut used = Vec::new();
                while all.len() < want {
                    for (name, s) in &sources {
                        if all.len() >= want {
                            break;
                        }
                        all.extend_from_slice(&s[..s.len().min(want - all.len())]);
                        if !used.contains(name) {
                            used.push(name.clone());
                        }
                    }
                }
                (all, used)
            }
        };
        let samples = samples.iter().map(|v| (v.clamp(-1.0, 1.0) * 32767.0).round() as i16).collect();
        clips.push(Clip { seconds: want as f64 / rate as f64, samples, sources: used });
    }
    Ok(clips)
}

/// Hands out distinct variant numbers (a per-run salt keeps them apart across runs).
#[derive(Debug)]
pub struct Variants {
    salt: u64,
    next: AtomicU64,
}

impl Variants {
    pub fn new() -> Self {
        let salt = u64::from_le_bytes(uuid::Uuid::new_v4().as_bytes()[..8].try_into().unwrap_or([7; 8]));
        Self { salt, next: AtomicU64::new(1) }
    }

    /// A fresh tag, never 0.
    pub fn next(&self) -> u64 {
        (self.salt ^ self.next.fetch_add(1, Ordering::Relaxed).wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1
    }
}

impl Default for Variants {
    fn default() -> Self {
        Self::new()
    }
}

/// The clip as a 16 kHz mono 16-bit PCM WAV. A non-zero `tag` flips the least significant bit
/// of the first 64 samples according to its bits (inaudible, but new bytes and a new hash).
pub fn wav(clip: &Clip, tag: u64) -> Vec<u8> {
    let data_len = clip.samples.len() * 2;
    let mut out = Vec::with_capacity(44 + data_len);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&((36 + data_len) as u32).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&1u16.to_le_bytes()); // mono
    out.extend_from_slice(&SAMPLE_RATE.to_le_bytes());
    out.extend_from_slice(&(SAMPLE_RATE * 2).to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&(data_len as u32).to_le_bytes());
    for (i, s) in clip.samples.iter().enumerate() {
        let v = if i < 64 && (tag >> i) & 1 == 1 { *s ^ 1 } else { *s };
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// CRC-32 (IEEE), as PNG chunks use.
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for b in bytes {
        crc ^= *b as u32;
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// The same image with a metadata comment naming `tag` (PNG `tEXt` chunk before `IEND`, JPEG
/// `COM` segment after `SOI`): identical pixels, different bytes. `tag` 0 returns the original.
pub fn image_variant(bytes: &[u8], tag: u64) -> anyhow::Result<Vec<u8>> {
    if tag == 0 {
        return Ok(bytes.to_vec());
    }
    let text = format!("vipavatar-bench\0variant {tag:016x}");
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        let iend = bytes.len().checked_sub(12).filter(|&i| bytes.get(i + 4..i + 8) == Some(b"IEND"));
        let Some(at) = iend else { bail!("PNG does not end with an IEND chunk") };
        let mut chunk = Vec::with_capacity(text.len() + 12);
        chunk.extend_from_slice(&(text.len() as u32).to_be_bytes());
        chunk.extend_from_slice(b"tEXt");
        chunk.extend_from_slice(text.as_bytes());
        chunk.extend_from_slice(&crc32(&chunk[4..]).to_be_bytes());
        let mut out = bytes[..at].to_vec();
        out.extend_from_slice(&chunk);
        out.extend_from_slice(&bytes[at..]);
        return Ok(out);
    }
    if bytes.starts_with(&[0xFF, 0xD8]) {
        let mut out = vec![0xFF, 0xD8, 0xFF, 0xFE];
        out.extend_from_slice(&((text.len() + 2) as u16).to_be_bytes());
        out.extend_from_slice(text.as_bytes());
        out.extend_from_slice(&bytes[2..]);
        return Ok(out);
    }
    bail!("the benchmark image must be a PNG or JPEG file")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variants_differ_in_bytes_not_in_meaning() {
        assert_eq!(crc32(b"IEND"), 0xAE42_6082);
        let clip = Clip { seconds: 1.0, samples: (0..16000).map(|i| (i % 200) as i16).collect(), sources: vec![] };
        let v = Variants::new();
        let (a, b) = (v.next(), v.next());
        assert_ne!(a, b);
        let (wa, wb) = (wav(&clip, a), wav(&clip, b));
        assert_ne!(wa, wb);
        assert_eq!(wa.len(), 44 + 32000);
        // At most the lowest bit of a sample changes.
        let diff = wa.iter().zip(&wb).filter(|(x, y)| x != y).count();
        assert!(diff > 0 && diff <= 64, "{diff}");
    }
}

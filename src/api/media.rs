//! Media sniffing from magic bytes: a wrong kind of file is a 415 before any decoding; bytes that
//! look right but do not decode are a 422 later.

use crate::errors::{ApiError, Code};
use vipavatar_pipeline::audio::audio_kind;
use vipavatar_pipeline::image::ImageFormat;

/// Accept PNG, JPEG and WebP (what the decoder reads).
pub fn check_image(field: &str, bytes: &[u8]) -> Result<(), ApiError> {
    if bytes.is_empty() {
        return Err(ApiError::new(Code::NotAnImage, format!("`{field}` is empty")));
    }
    match ImageFormat::sniff(bytes) {
        Some(_) => Ok(()),
        None => Err(ApiError::new(
            Code::UnsupportedMediaType,
            format!("`{field}` is not a PNG, JPEG or WebP image ({})", describe(bytes)),
        )),
    }
}

/// Accept the common audio containers ffmpeg decodes.
pub fn check_audio(field: &str, bytes: &[u8]) -> Result<(), ApiError> {
    if bytes.is_empty() {
        return Err(ApiError::new(Code::NotAudio, format!("`{field}` is empty")));
    }
    if audio_kind(bytes).is_some() {
        Ok(())
    } else {
        Err(ApiError::new(
            Code::UnsupportedMediaType,
            format!(
                "`{field}` is not a recognised audio file: WAV, MP3, OGG/Opus, FLAC, M4A/AAC, WebM, AIFF ({})",
                describe(bytes)
            ),
        ))
    }
}

fn describe(bytes: &[u8]) -> String {
    if ImageFormat::sniff(bytes).is_some() {
        return "it is an image".into();
    }
    if audio_kind(bytes).is_some() {
        return "it is audio".into();
    }
    let head: String = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("it starts with bytes {head}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_common_audio_and_rejects_images_and_text() {
        assert_eq!(audio_kind(b"RIFF\0\0\0\0WAVEfmt "), Some("wav"));
        assert_eq!(audio_kind(b"ID3\x04\0"), Some("mp3"));
        assert_eq!(audio_kind(&[0xFF, 0xFB, 0x90, 0x00]), Some("mp3"));
        assert_eq!(audio_kind(&[0xFF, 0xF1, 0x50, 0x80]), Some("aac"));
        assert_eq!(audio_kind(b"OggS\0\x02"), Some("ogg"));
        assert_eq!(audio_kind(b"\0\0\0\x20ftypM4A "), Some("mp4"));
        assert_eq!(audio_kind(b"\x89PNG\r\n\x1a\n"), None);
        assert_eq!(audio_kind(b"hello"), None);
        assert_eq!(check_audio("audio_file", b"\x89PNG\r\n\x1a\n").unwrap_err().code, Code::UnsupportedMediaType);
        assert_eq!(check_audio("audio_file", b"").unwrap_err().code, Code::NotAudio);
    }

    #[test]
    fn images_by_magic() {
        assert!(check_image("image_file", b"\x89PNG\r\n\x1a\n....").is_ok());
        assert!(check_image("image_file", &[0xFF, 0xD8, 0xFF, 0xE0]).is_ok());
        assert_eq!(check_image("image_file", b"GIF89a").unwrap_err().code, Code::UnsupportedMediaType);
        assert_eq!(check_image("image_file", b"RIFF\0\0\0\0WAVE").unwrap_err().code, Code::UnsupportedMediaType);
    }
}

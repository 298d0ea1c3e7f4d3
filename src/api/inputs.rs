//! An input file (the portrait, the speech) given one of three ways: a multipart file field
//! (`image_file`), a URL the server fetches (`image_url`, behind [`crate::fetch`]'s guard and
//! limits), or base64 text (`image_base64`, plain or a `data:` URL). Exactly one is accepted;
//! whichever it is, the bytes then go through the same checks as an upload.

use super::multipart::{FileLimit, Form};
use crate::errors::{ApiError, Code};
use crate::fetch::{FetchError, Fetcher};
use crate::state::AppState;
use base64::Engine as _;

/// The three field names of one input and its byte limit.
#[derive(Debug, Clone, Copy)]
pub struct Input {
    pub file: &'static str,
    pub url: &'static str,
    pub base64: &'static str,
    pub max_bytes: u64,
}

impl Input {
    pub fn image(max_bytes: u64) -> Self {
        Self { file: "image_file", url: "image_url", base64: "image_base64", max_bytes }
    }

    pub fn audio(max_bytes: u64) -> Self {
        Self { file: "audio_file", url: "audio_url", base64: "audio_base64", max_bytes }
    }

    /// The byte fields to stream with limits: the file, and the base64 text (4/3 larger).
    pub fn limits(&self) -> [FileLimit; 2] {
        [
            FileLimit { field: self.file, max_bytes: self.max_bytes },
            FileLimit { field: self.base64, max_bytes: self.max_bytes.div_ceil(3) * 4 + 128 },
        ]
    }
}

/// Where the input's bytes come from, decided (and base64 decoded) while reading the form.
pub enum Source {
    Bytes { field: &'static str, bytes: Vec<u8> },
    Url(String),
}

impl Source {
    pub fn field(&self, input: &Input) -> &'static str {
        match self {
            Self::Bytes { field, .. } => field,
            Self::Url(_) => input.url,
        }
    }
}

/// Take the one way the input was given out of the form (a URL is checked for its scheme and
/// literal address now; names are checked when fetched).
pub fn pick(form: &mut Form, input: &Input, fetcher: &Fetcher) -> Result<Source, ApiError> {
    let file = form.take_file_opt(input.file);
    // A blank base64 field is no input, as a blank text field is none.
    let b64 = form.take_file_opt(input.base64).filter(|b| !b.bytes.trim_ascii().is_empty());
    let url = form.text(input.url).map(str::to_string);
    let given = [file.is_some(), b64.is_some(), url.is_some()].iter().filter(|g| **g).count();
    if given > 1 {
        return Err(ApiError::new(
            Code::InvalidField,
            format!("send only one of `{}`, `{}` and `{}`", input.file, input.url, input.base64),
        ));
    }
    if let Some(f) = file {
        return Ok(Source::Bytes { field: input.file, bytes: f.bytes });
    }
    if let Some(b) = b64 {
        return Ok(Source::Bytes { field: input.base64, bytes: decode_base64(input, &b.bytes)? });
    }
    match url {
        Some(u) => {
            fetcher.check_url(&u).map_err(|e| fetch_error(input.url, e))?;
            Ok(Source::Url(u))
        }
        None => Err(ApiError::new(
            Code::MissingField,
            format!("one of `{}` (multipart file), `{}` or `{}` is required", input.file, input.url, input.base64),
        )),
    }
}

/// Standard or URL-safe base64, padded or not, whitespace ignored, an optional `data:...;base64,`
/// prefix; more than the byte limit once decoded is a 413.
fn decode_base64(input: &Input, text: &[u8]) -> Result<Vec<u8>, ApiError> {
    let field = input.base64;
    let text = std::str::from_utf8(text)
        .map_err(|_| ApiError::new(Code::InvalidBase64, format!("`{field}` is not text")))?
        .trim();
    let text = match text.strip_prefix("data:") {
        Some(rest) => rest.split_once(";base64,").map(|(_, b)| b).ok_or_else(|| {
            ApiError::new(Code::InvalidBase64, format!("`{field}`: a data: URL must be `data:<type>;base64,<data>`"))
        })?,
        None => text,
    };
    let clean: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let clean = clean.trim_end_matches('=');
    if (clean.len() as u64 / 4) * 3 > input.max_bytes {
        return Err(ApiError::new(
            Code::PayloadTooLarge,
            format!("`{field}` decodes to more than the limit of {} bytes", input.max_bytes),
        ));
    }
    let engine = if clean.contains(['-', '_']) {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
    } else {
        base64::engine::general_purpose::STANDARD_NO_PAD
    };
    let bytes = engine.decode(clean).map_err(|e| ApiError::new(Code::InvalidBase64, format!("`{field}`: {e}")))?;
    if bytes.is_empty() {
        return Err(ApiError::new(Code::InvalidBase64, format!("`{field}` is empty")));
    }
    Ok(bytes)
}

/// The input's bytes: as given, or fetched from its URL (limits and guard enforced).
pub async fn load(state: &AppState, input: &Input, source: Source) -> Result<Vec<u8>, ApiError> {
    let url = match source {
        Source::Bytes { bytes, .. } => return Ok(bytes),
        Source::Url(u) => u,
    };
    state.fetcher.get(&url, input.max_bytes).await.map_err(|e| fetch_error(input.url, e))
}

/// A fetch failure as the API error of `field`.
pub fn fetch_error(field: &str, e: FetchError) -> ApiError {
    match e {
        FetchError::Forbidden(why) => ApiError::new(Code::UrlForbidden, format!("`{field}`: {why}")),
        FetchError::Failed(why) => ApiError::new(Code::UrlFetchFailed, format!("`{field}`: {why}")),
        FetchError::Invalid(why) => ApiError::new(Code::InvalidField, format!("`{field}`: {why}")),
        FetchError::TooLarge(max) => ApiError::new(
            Code::PayloadTooLarge,
            format!("`{field}`: the fetched file is larger than the limit of {max} bytes"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_in_its_common_spellings_and_its_failures() {
        let input = Input::image(10);
        assert_eq!(decode_base64(&input, b"aGVsbG8=").unwrap(), b"hello");
        assert_eq!(decode_base64(&input, b"aGVs\nbG8").unwrap(), b"hello");
        assert_eq!(decode_base64(&input, b"data:image/png;base64,aGVsbG8=").unwrap(), b"hello");
        assert_eq!(decode_base64(&input, b"-_8").unwrap(), vec![0xfb, 0xff]);
        let code = |t: &[u8]| decode_base64(&input, t).unwrap_err().code;
        assert_eq!(code(b"not base64!"), Code::InvalidBase64);
        assert_eq!(code(b"data:image/png,abc"), Code::InvalidBase64);
        assert_eq!(code(b""), Code::InvalidBase64);
        assert_eq!(code(b"aGVsbG8gd29ybGQgaGVsbG8="), Code::PayloadTooLarge);
    }
}

//! The documented shapes of a generate request, the multipart form and the JSON body, for the
//! OpenAPI document only: `vip::generate` reads the fields itself (one reader for both bodies).

use super::avatar::PreprocessModeDoc;
use utoipa::ToSchema;

/// Multipart form of a generate request. Only `image_id` and the audio (exactly one of
/// `audio_file`, `audio_url`, `audio_base64`) are required; a field left out takes its default
/// (the fields are not nullable: send a value or nothing).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct GenerateForm {
    /// The id returned by `/api/avatar/upload`.
    #[schema(pattern = "^[0-9a-f]{64}$", min_length = 64, max_length = 64)]
    image_id: String,
    /// Speech: WAV, MP3, OGG/Opus, FLAC, M4A/AAC, WebM or AIFF.
    #[schema(value_type = String, format = Binary, required = false)]
    audio_file: Vec<u8>,
    /// An http(s) URL the server fetches the speech from (same limits and checks as a file).
    #[schema(required = false)]
    audio_url: String,
    /// The speech's bytes in base64 (standard or URL-safe, padding optional, a `data:` URL accepted).
    #[schema(required = false)]
    audio_base64: String,
    /// `none` (default) or `gfpgan` (only engines that support it).
    #[schema(required = false, schema_with = enhancer_schema)]
    enhancer: String,
    /// Encoder quality: `low`, `medium` (default) or `high`.
    #[schema(required = false, schema_with = quality_schema)]
    quality: String,
    /// Keep the head still (default false).
    #[schema(required = false)]
    still_mode: bool,
    /// Mouth/expression amplitude, 0..=3 (default 1).
    #[schema(required = false, minimum = 0, maximum = 3)]
    expression_scale: f32,
    /// Motion variation, 0..=45 (default 0).
    #[schema(required = false, minimum = 0, maximum = 45)]
    pose_style: u32,
    /// Output face size: 256 (default) or 512.
    #[schema(required = false, schema_with = size_schema)]
    size: u32,
    /// `auto` (server default), `classic` or `sadtalker`.
    #[schema(required = false, schema_with = engine_schema)]
    engine: String,
    /// Which upload of the image to animate (default: its most recent mode).
    #[schema(required = false)]
    preprocess_mode: PreprocessModeDoc,
    /// Seed of every random draw (default 0): same seed, same video.
    #[schema(required = false)]
    seed: u64,
    /// Where to POST signed webhooks when this finishes (http/https; Standard Webhooks).
    #[schema(required = false)]
    callback_url: String,
    /// A JSON object sent back in every webhook of this request (without `callback_url` there
    /// is no webhook, and it is not kept).
    #[schema(required = false, example = json!("{\"order\": 42}"))]
    metadata: String,
}

/// JSON body of a generate request: `image_id`, the audio as exactly one of `audio_url` and
/// `audio_base64`, and the same options as the multipart form.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct GenerateJson {
    /// The id returned by `/api/avatar/upload`.
    #[schema(pattern = "^[0-9a-f]{64}$", min_length = 64, max_length = 64)]
    image_id: String,
    /// An http(s) URL the server fetches the speech from.
    #[schema(required = false)]
    audio_url: String,
    /// The speech's bytes in base64.
    #[schema(required = false)]
    audio_base64: String,
    /// `none` (default) or `gfpgan` (only engines that support it).
    #[schema(required = false, schema_with = enhancer_schema)]
    enhancer: String,
    /// Encoder quality: `low`, `medium` (default) or `high`.
    #[schema(required = false, schema_with = quality_schema)]
    quality: String,
    /// Keep the head still (default false).
    #[schema(required = false)]
    still_mode: bool,
    /// Mouth/expression amplitude, 0..=3 (default 1).
    #[schema(required = false, minimum = 0, maximum = 3)]
    expression_scale: f32,
    /// Motion variation, 0..=45 (default 0).
    #[schema(required = false, minimum = 0, maximum = 45)]
    pose_style: u32,
    /// Output face size: 256 (default) or 512.
    #[schema(required = false, schema_with = size_schema)]
    size: u32,
    /// `auto` (server default), `classic` or `sadtalker`.
    #[schema(required = false, schema_with = engine_schema)]
    engine: String,
    /// Which upload of the image to animate (default: its most recent mode).
    #[schema(required = false)]
    preprocess_mode: PreprocessModeDoc,
    /// Seed of every random draw (default 0): same seed, same video.
    #[schema(required = false)]
    seed: u64,
    /// Where to POST signed webhooks when this finishes (http/https; Standard Webhooks).
    #[schema(required = false)]
    callback_url: String,
    /// A JSON object sent back in every webhook of this request (without `callback_url` there
    /// is no webhook, and it is not kept).
    #[schema(required = false, value_type = Object)]
    metadata: serde_json::Value,
}

/// A string form field that takes one of `values` (the first is the default and the example).
fn string_enum(values: &[&str], description: &str) -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some(values.iter().copied()))
        .description(Some(description))
        .examples(values.first().map(|v| serde_json::json!(v)))
        .build()
}

fn enhancer_schema() -> utoipa::openapi::Object {
    string_enum(&["none", "gfpgan"], "`none` (default) or `gfpgan` (only engines that support it).")
}

fn quality_schema() -> utoipa::openapi::Object {
    string_enum(&["medium", "low", "high"], "Encoder quality: `low`, `medium` (default) or `high`.")
}

fn engine_schema() -> utoipa::openapi::Object {
    string_enum(&["auto", "classic", "sadtalker"], "`auto` (server default), `classic` or `sadtalker`.")
}

fn size_schema() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::Integer)
        .enum_values(Some([256, 512]))
        .description(Some("Output face size: 256 (default) or 512."))
        .examples([serde_json::json!(256)])
        .build()
}

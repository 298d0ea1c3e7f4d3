//! The documented shapes of a generate request, the multipart form and the JSON body, for the
//! OpenAPI document only: `vip::generate` reads the fields itself (one reader for both bodies).

use super::body::request_bodies;
use crate::config::EngineChoice;
use vipavatar_pipeline::engine::{Enhancer, PreprocessMode, Quality};

request_bodies! {
    /// Multipart form of a generate request. Only `image_id` and the audio (exactly one of
    /// `audio_file`, `audio_url`, `audio_base64`) are required; a field left out takes its default
    /// (the fields are not nullable: send a value or nothing).
    form GenerateForm;
    /// JSON body of a generate request: `image_id`, the audio as exactly one of `audio_url` and
    /// `audio_base64`, and the same options as the multipart form.
    json GenerateJson;
    head {
        /// The id returned by `/api/avatar/upload`.
        #[schema(pattern = "^[0-9a-f]{64}$", min_length = 64, max_length = 64)]
        image_id: String,
    }
    form_only {
        /// Speech: WAV, MP3, OGG/Opus, FLAC, M4A/AAC, WebM or AIFF.
        #[schema(value_type = String, format = Binary, required = false)]
        audio_file: Vec<u8>,
    }
    shared {
        /// An http(s) URL the server fetches the speech from (same limits and checks as a file).
        #[schema(required = false)]
        audio_url: String,
        /// The speech's bytes in base64 (standard or URL-safe, padding optional, a `data:` URL
        /// accepted).
        #[schema(required = false)]
        audio_base64: String,
        /// `none` (default) or `gfpgan` (needs `GFPGANv1.4.pth` in the server's checkpoints, else 422).
        #[schema(required = false)]
        enhancer: Enhancer,
        /// Encoder quality: `low`, `medium` (default) or `high`.
        #[schema(required = false)]
        quality: Quality,
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
        #[schema(required = false)]
        engine: EngineChoice,
        /// Which upload of the image to animate (default: its most recent mode).
        #[schema(required = false)]
        preprocess_mode: PreprocessMode,
        /// Seed of every random draw (default 0): same seed, same video.
        #[schema(required = false)]
        seed: u64,
    }
}

fn size_schema() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::Integer)
        .enum_values(Some([256, 512]))
        .description(Some("Output face size: 256 (default) or 512."))
        .examples([serde_json::json!(256)])
        .build()
}

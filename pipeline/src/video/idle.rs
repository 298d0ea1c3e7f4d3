//! Rendering an avatar's idle loop: the engine's idle motion through the ordinary pipeline with a
//! silent soundtrack, plus the first frame as a JPEG thumbnail.

use super::generate::{generate_video_until, GenerateRequest, GenerateStats};
use crate::audio::{AudioClip, SAMPLE_RATE};
use crate::engine::{AvatarInput, Engine, GenerateOptions, PreparedAvatar};
use crate::error::Result;
use std::path::Path;

/// Render the idle loop to `output` (MP4) and `thumbnail` (JPEG); `None` when the engine has no
/// idle loop. Gives up between chunks once `stop()` is true (see [`super::generate::STOPPED`]).
pub fn render_idle(
    engine: &dyn Engine,
    avatar: AvatarInput<'_>,
    prepared: &PreparedAvatar,
    options: &GenerateOptions,
    output: &Path,
    thumbnail: &Path,
    stop: &(dyn Fn() -> bool + Sync),
) -> Result<Option<GenerateStats>> {
    let Some((motion, frames)) = engine.idle_motion(prepared)? else { return Ok(None) };
    // A silent soundtrack as long as the frames.
    let silence = AudioClip { samples: vec![0.0; frames * (SAMPLE_RATE as usize / 25) + 1], sample_rate: SAMPLE_RATE };
    let req = GenerateRequest {
        engine,
        avatar,
        prepared,
        audio: &silence,
        options,
        features: None,
        motion: Some(&motion),
        output,
        thumbnail: Some(thumbnail),
        contact_sheet: None,
        close_loop: true,
    };
    Ok(Some(generate_video_until(&req, &mut |_| {}, stop)?.stats))
}

//! `--sadtalker-stand-in`: a checkpoints folder for the bench whose SadTalker files are stand-ins
//! (official layout, random weights; `vipavatar_pipeline::sadtalker::standin`) and whose other
//! model files are links to the real ones.

use anyhow::Context;
use std::path::{Path, PathBuf};
use vipavatar_pipeline::sadtalker::paths::{CHECKPOINT_256, CHECKPOINT_512, MAPPING_CROP, MAPPING_FULL};
use vipavatar_pipeline::sadtalker::standin::{write_stand_ins, MARKER};

/// What every report of a stand-in run says about its numbers.
pub const WEIGHTS_NOTE: &str = "stand-in weights (the official SadTalker layout filled with random values): the \
     timings are real because a pass costs the same whatever the weights hold; nothing is claimed about image quality";

/// Seed of the stand-in weights (their values do not affect timings).
const SEED: i64 = 20_261_201;

/// Fill `dir` with stand-in SadTalker checkpoints (kept when already there) and links to every
/// other entry of `models`; returns `dir`.
pub fn prepare(models: &Path, dir: &Path) -> anyhow::Result<PathBuf> {
    let sadtalker = [CHECKPOINT_256, CHECKPOINT_512, MAPPING_CROP, MAPPING_FULL, MARKER];
    if !dir.join(MARKER).is_file() {
        eprintln!("bench: writing stand-in SadTalker checkpoints into {}", dir.display());
        let t = std::time::Instant::now();
        let written = write_stand_ins(dir, SEED)?;
        eprintln!(
            "bench: {} tensors, {:.0} MB in {:.1} s",
            written.tensors,
            written.bytes as f64 / 1e6,
            t.elapsed().as_secs_f64()
        );
    }
    let models = std::fs::canonicalize(models).with_context(|| format!("checkpoints {}", models.display()))?;
    for entry in std::fs::read_dir(&models).with_context(|| format!("read {}", models.display()))? {
        let entry = entry?;
        let name = entry.file_name();
        let link = dir.join(&name);
        if sadtalker.iter().any(|s| name == *s) || link.exists() {
            continue;
        }
        std::os::unix::fs::symlink(entry.path(), &link).with_context(|| format!("link {}", link.display()))?;
    }
    Ok(dir.to_path_buf())
}

//! Where the SadTalker engine's checkpoint files live and a cheap readiness check
//! ([`sadtalker_checkpoints_status`]) that `engine=auto` uses to decide between sadtalker and
//! classic. It reads only safetensors headers: presence, integrity of the byte ranges and the
//! tensor count of every network prefix; full name/shape validation happens when loading.

use super::weights::SafetensorsIndex;
use crate::{PipelineError, Result};
use std::path::{Path, PathBuf};

/// Official checkpoint with every network, renderer trained at 256 px.
pub const CHECKPOINT_256: &str = "SadTalker_V0.0.2_256.safetensors";
/// The same for the 512 px renderer.
pub const CHECKPOINT_512: &str = "SadTalker_V0.0.2_512.safetensors";
/// Mapping network for crop / resize preprocessing (coeff_nc 70), torch pickle.
pub const MAPPING_CROP: &str = "mapping_00229-model.pth.tar";
/// Mapping network for full preprocessing (coeff_nc 73), torch pickle.
pub const MAPPING_FULL: &str = "mapping_00109-model.pth.tar";

/// Tensor count per key prefix of the official safetensors checkpoints (official_layout.json).
pub const PREFIX_TENSORS: [(&str, usize); 5] =
    [("kp_extractor", 75), ("generator", 386), ("audio2exp", 93), ("audio2pose", 419), ("face_3drecon", 332)];

/// The checkpoint files found in a checkpoints directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SadTalkerPaths {
    pub dir: PathBuf,
    pub checkpoint_256: Option<PathBuf>,
    pub checkpoint_512: Option<PathBuf>,
    pub mapping_crop: Option<PathBuf>,
    pub mapping_full: Option<PathBuf>,
}

impl SadTalkerPaths {
    /// The checkpoint for an output size, else the other one (both hold identical audio2exp,
    /// audio2pose and face_3drecon networks).
    pub fn any_checkpoint(&self) -> Option<&Path> {
        self.checkpoint_256.as_deref().or(self.checkpoint_512.as_deref())
    }

    /// The checkpoint whose renderer matches `size` (256 or 512).
    pub fn checkpoint_for_size(&self, size: u32) -> Result<&Path> {
        let (found, name) = match size {
            256 => (self.checkpoint_256.as_deref(), CHECKPOINT_256),
            512 => (self.checkpoint_512.as_deref(), CHECKPOINT_512),
            other => {
                return Err(PipelineError::InvalidOption {
                    field: "size",
                    reason: format!("{other} is not 256 or 512"),
                })
            }
        };
        found.ok_or_else(|| PipelineError::Unsupported {
            engine: "sadtalker",
            what: format!("size {size}: {name} is not in {}", self.dir.display()),
        })
    }
}

/// Check that `dir` holds at least one usable official SadTalker safetensors checkpoint.
/// Every present checkpoint must have a sound header with all five network prefixes at their
/// official tensor counts; the mapping networks are reported when present.
pub fn sadtalker_checkpoints_status(dir: &Path) -> Result<SadTalkerPaths> {
    if !dir.is_dir() {
        return Err(PipelineError::Checkpoint {
            file: dir.display().to_string(),
            reason: "the checkpoints directory does not exist".into(),
        });
    }
    let present = |name: &str| {
        let p = dir.join(name);
        p.is_file().then_some(p)
    };
    let paths = SadTalkerPaths {
        dir: dir.to_path_buf(),
        checkpoint_256: present(CHECKPOINT_256),
        checkpoint_512: present(CHECKPOINT_512),
        mapping_crop: present(MAPPING_CROP),
        mapping_full: present(MAPPING_FULL),
    };
    if paths.any_checkpoint().is_none() {
        return Err(PipelineError::Checkpoint {
            file: dir.join(CHECKPOINT_256).display().to_string(),
            reason: format!("not found (neither {CHECKPOINT_256} nor {CHECKPOINT_512} is present)"),
        });
    }
    for file in [&paths.checkpoint_256, &paths.checkpoint_512].into_iter().flatten() {
        check_official_layout(file)?;
    }
    Ok(paths)
}

/// Header-level check of one official checkpoint file.
pub fn check_official_layout(file: &Path) -> Result<()> {
    let index = SafetensorsIndex::open(file)?;
    for (prefix, expected) in PREFIX_TENSORS {
        let found = index.count_with_prefix(prefix);
        if found != expected {
            return Err(PipelineError::Checkpoint {
                file: file.display().to_string(),
                reason: format!("{found} tensors under `{prefix}.`, the official layout has {expected}"),
            });
        }
    }
    Ok(())
}

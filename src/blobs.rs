//! Files under the data directory: original images and audio (kept so any evicted cache entry
//! can be rebuilt), finished videos, and temporary files. Writes are atomic (temp + rename).

use std::io;
use std::path::{Path, PathBuf};
use vipavatar_cache::{AudioHash, ImageHash, OptionsHash};

#[derive(Debug, Clone)]
pub struct BlobStore {
    root: PathBuf,
}

impl BlobStore {
    /// Create the folder layout under `root` if needed.
    pub fn open(root: &Path) -> io::Result<Self> {
        for sub in ["images", "audio", "videos", "tmp"] {
            std::fs::create_dir_all(root.join(sub))?;
        }
        Ok(Self { root: root.to_path_buf() })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn image_path(&self, image: &ImageHash) -> PathBuf {
        self.root.join("images").join(image.as_str())
    }

    pub fn audio_path(&self, audio: &AudioHash) -> PathBuf {
        self.root.join("audio").join(audio.as_str())
    }

    /// Relative name (stored in `video:` entries) of the video for one (image, audio, options).
    pub fn video_name(image: &ImageHash, audio: &AudioHash, options: &OptionsHash) -> String {
        format!("videos/{image}-{audio}-{options}.mp4")
    }

    /// Absolute path of a relative name from [`Self::video_name`]; refuses names leaving the root.
    pub fn resolve(&self, relative: &str) -> io::Result<PathBuf> {
        let p = Path::new(relative);
        if p.is_absolute() || p.components().any(|c| !matches!(c, std::path::Component::Normal(_))) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("bad stored path {relative}")));
        }
        Ok(self.root.join(p))
    }

    /// A fresh temporary path (same filesystem as the final locations, so rename is atomic).
    pub fn temp_path(&self, extension: &str) -> PathBuf {
        self.root.join("tmp").join(format!("{}.{extension}", uuid::Uuid::new_v4().simple()))
    }

    /// Store `bytes` at `path` unless a file is already there; true when it was written now.
    pub async fn put_if_absent(&self, path: &Path, bytes: &[u8]) -> io::Result<bool> {
        if tokio::fs::try_exists(path).await? {
            return Ok(false);
        }
        let tmp = self.temp_path("part");
        tokio::fs::write(&tmp, bytes).await?;
        if let Err(e) = tokio::fs::rename(&tmp, path).await {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(e);
        }
        Ok(true)
    }

    pub async fn read(&self, path: &Path) -> io::Result<Option<Vec<u8>>> {
        match tokio::fs::read(path).await {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn remove(&self, path: &Path) -> io::Result<()> {
        match tokio::fs::remove_file(path).await {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_refuses_escapes() {
        let store = BlobStore { root: PathBuf::from("/data") };
        assert_eq!(store.resolve("videos/a.mp4").unwrap(), PathBuf::from("/data/videos/a.mp4"));
        for bad in ["/etc/passwd", "../x", "videos/../../x", "./x"] {
            assert!(store.resolve(bad).is_err(), "{bad}");
        }
    }
}

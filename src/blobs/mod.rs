//! Blob storage: original images and audio (kept so any evicted cache entry can be rebuilt),
//! finished videos, idle loops and thumbnails, behind one small [`Store`] trait with two
//! backends: a local directory ([`local::LocalStore`], the default: the data directory) and an
//! S3-compatible object store ([`s3::S3Store`], `VIPAVATAR_STORAGE=s3://bucket/prefix`).
//! Blobs are named by relative names (`images/{hash}`, `videos/{image}-{audio}-{options}.mp4`)
//! that the cache records store. Renders write into this process's [`Scratch`] directory first
//! and hand the finished file to the store.

pub mod local;
pub mod s3;
pub mod scratch;

pub use scratch::{JobFiles, Scratch, Sweep};

use crate::config::Config;
use bytes::Bytes;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use vipavatar_cache::{AudioHash, ImageHash, OptionsHash};

/// One stored blob as a listing shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Listed {
    pub name: String,
    pub bytes: u64,
}

/// What every blob backend does. Names are relative (`images/...`); [`check_name`] has
/// refused any that could leave the store.
#[async_trait::async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Store `bytes` under `name` unless something is there already; true when written now.
    async fn put_if_absent(&self, name: &str, bytes: Bytes) -> io::Result<bool>;
    /// Move the finished local file `file` in under `name` (the file is gone afterwards);
    /// returns its size.
    async fn put_file(&self, name: &str, file: &Path) -> io::Result<u64>;
    /// The blob's bytes, or `None` when absent.
    async fn get(&self, name: &str) -> io::Result<Option<Bytes>>;
    /// The blob's size, or `None` when absent.
    async fn size(&self, name: &str) -> io::Result<Option<u64>>;
    /// Remove the blob (absent is fine).
    async fn delete(&self, name: &str) -> io::Result<()>;
    /// Every blob whose name starts with `prefix` (a folder such as `videos/` plus a stem).
    async fn list(&self, prefix: &str) -> io::Result<Vec<Listed>>;
    /// A URL anyone can GET the blob from for `ttl` (object storage); `None`: serve it from
    /// [`Store::local_path`].
    async fn presign(&self, name: &str, ttl: Duration) -> io::Result<Option<String>>;
    /// Where the blob lies on this machine's disk (local directory backend only).
    fn local_path(&self, name: &str) -> Option<PathBuf>;
    /// For logs: `local:/data` or `s3://bucket/prefix` (no credentials).
    fn describe(&self) -> String;
}

/// Refuse names that are absolute, empty, or leave the store (`..`, `.`).
pub fn check_name(name: &str) -> io::Result<()> {
    let p = Path::new(name);
    let bad = name.is_empty()
        || p.is_absolute()
        || p.components().any(|c| !matches!(c, std::path::Component::Normal(_)))
        || name.contains('\\');
    if bad {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("bad stored name {name}")));
    }
    Ok(())
}

/// The blob store and this process's scratch directory, cloned into the API and the workers.
#[derive(Debug, Clone)]
pub struct BlobStore {
    store: Arc<dyn Store>,
    scratch: Scratch,
    presign_ttl: Duration,
}

impl BlobStore {
    /// The store `config.storage` names, with scratch space under the data directory.
    pub fn from_config(config: &Config) -> anyhow::Result<Self> {
        let scratch = Scratch::open(&config.data_dir)?;
        let store: Arc<dyn Store> = match config.storage.storage.as_deref().map(str::trim) {
            None | Some("") => Arc::new(local::LocalStore::open(&config.data_dir)?),
            Some(s) if s.starts_with("s3://") => Arc::new(s3::S3Store::open(s, &config.storage)?),
            Some(s) if s.contains("://") => {
                anyhow::bail!("VIPAVATAR_STORAGE: {s:?} is neither a path nor s3://bucket/prefix")
            }
            Some(dir) => Arc::new(local::LocalStore::open(Path::new(dir))?),
        };
        let presign_ttl = Duration::from_secs(config.storage.presign_ttl_secs.clamp(1, 7 * 24 * 3600));
        Ok(Self { store, scratch, presign_ttl })
    }

    /// A local-directory store rooted at `root` (also its scratch space).
    pub fn open_local(root: &Path) -> io::Result<Self> {
        let store = Arc::new(local::LocalStore::open(root)?);
        Ok(Self { store, scratch: Scratch::open(root)?, presign_ttl: Duration::from_secs(3600) })
    }

    pub fn scratch(&self) -> &Scratch {
        &self.scratch
    }

    pub fn describe(&self) -> String {
        self.store.describe()
    }

    /// Whether downloads are redirects to presigned URLs (object storage).
    pub fn is_remote(&self) -> bool {
        self.store.local_path("images/x").is_none()
    }

    pub fn image_name(image: &ImageHash) -> String {
        format!("images/{image}")
    }

    pub fn audio_name(audio: &AudioHash) -> String {
        format!("audio/{audio}")
    }

    /// Relative name (stored in `video:` entries) of the video for one (image, audio, options):
    /// the image (so an avatar's videos list by prefix) and 128 bits of BLAKE3 (the project's
    /// content hash) over audio and options. Short on purpose: keys stay far below the limits of
    /// S3-compatible stores that map a key onto one file name (s3s-fs allows about 150 bytes).
    pub fn video_name(image: &ImageHash, audio: &AudioHash, options: &OptionsHash) -> String {
        let digest = blake3::hash(format!("{audio}-{options}").as_bytes()).to_hex();
        format!("videos/{image}-{}.mp4", &digest[..32])
    }

    /// Relative names of an avatar's idle loop (MP4) and its thumbnail (JPEG).
    pub fn idle_names(image: &ImageHash, mode: &str, size: u32) -> (String, String) {
        let stem = format!("idle/{image}-{mode}-{size}");
        (format!("{stem}.mp4"), format!("{stem}.jpg"))
    }

    pub async fn put_if_absent(&self, name: &str, bytes: Bytes) -> io::Result<bool> {
        check_name(name)?;
        self.store.put_if_absent(name, bytes).await
    }

    pub async fn put_file(&self, name: &str, file: &Path) -> io::Result<u64> {
        check_name(name)?;
        self.store.put_file(name, file).await
    }

    pub async fn read(&self, name: &str) -> io::Result<Option<Bytes>> {
        check_name(name)?;
        self.store.get(name).await
    }

    pub async fn exists(&self, name: &str) -> io::Result<bool> {
        check_name(name)?;
        Ok(self.store.size(name).await?.is_some())
    }

    pub async fn remove(&self, name: &str) -> io::Result<()> {
        check_name(name)?;
        self.store.delete(name).await
    }

    pub async fn list(&self, prefix: &str) -> io::Result<Vec<Listed>> {
        self.store.list(prefix).await
    }

    /// A presigned GET URL for the blob (object storage), valid for `VIPAVATAR_PRESIGN_TTL_SECS`.
    pub async fn presign(&self, name: &str) -> io::Result<Option<String>> {
        check_name(name)?;
        self.store.presign(name, self.presign_ttl).await
    }

    pub fn local_path(&self, name: &str) -> io::Result<Option<PathBuf>> {
        check_name(name)?;
        Ok(self.store.local_path(name))
    }

    /// A fresh temporary path in this process's scratch directory.
    pub fn temp_path(&self, extension: &str) -> PathBuf {
        self.scratch.temp_path(extension)
    }

    /// Remove a temporary file (absent is fine).
    pub async fn remove_temp(&self, path: &Path) -> io::Result<()> {
        self.scratch.remove(path).await
    }

    /// Remove a temporary and the files derived from it (`{name}.*`, e.g. `.mp4.audio.f32`).
    pub async fn remove_temp_family(&self, path: &Path) -> io::Result<()> {
        self.scratch.remove(path).await?;
        let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
            return Ok(());
        };
        let prefix = format!("{name}.");
        let mut entries = tokio::fs::read_dir(dir).await?;
        while let Some(e) = entries.next_entry().await? {
            if e.file_name().to_str().is_some_and(|n| n.starts_with(&prefix)) {
                self.scratch.remove(&e.path()).await?;
            }
        }
        Ok(())
    }

    /// Mark a job of this process as running until the guard drops (its temporaries survive).
    pub fn hold(&self) -> JobFiles {
        self.scratch.hold()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_leave_the_store_are_refused() {
        assert!(check_name("videos/a.mp4").is_ok());
        for bad in ["/etc/passwd", "../x", "videos/../../x", "./x", "", "a\\..\\b"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}

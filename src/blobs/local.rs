//! The local-directory blob backend: each blob is a file under the root (the data directory by
//! default), written atomically (temporary file + rename).

use super::{Listed, Store};
use bytes::Bytes;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The folders blobs live in.
const FOLDERS: [&str; 4] = ["images", "audio", "videos", "idle"];

#[derive(Debug)]
pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    /// Create the folder layout under `root` if needed.
    pub fn open(root: &Path) -> io::Result<Self> {
        for sub in FOLDERS.iter().chain(std::iter::once(&"tmp")) {
            std::fs::create_dir_all(root.join(sub))?;
        }
        Ok(Self { root: root.to_path_buf() })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// A temporary next to the blobs (same filesystem, so the rename is atomic); unowned, so a
    /// crash's leftover is swept once old (see `Scratch::sweep_tmp`).
    fn incoming(&self) -> PathBuf {
        self.root.join("tmp").join(format!("{}.part", uuid::Uuid::new_v4().simple()))
    }

    async fn rename_in(&self, tmp: &Path, name: &str) -> io::Result<()> {
        let dest = self.path(name);
        if let Some(parent) = dest.parent() {
            tokio::fs::create_dir_all(parent).await?;
        }
        if let Err(e) = tokio::fs::rename(tmp, &dest).await {
            let _ = tokio::fs::remove_file(tmp).await;
            return Err(e);
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Store for LocalStore {
    async fn put_if_absent(&self, name: &str, bytes: Bytes) -> io::Result<bool> {
        if tokio::fs::try_exists(self.path(name)).await? {
            return Ok(false);
        }
        let tmp = self.incoming();
        tokio::fs::write(&tmp, &bytes).await?;
        self.rename_in(&tmp, name).await?;
        Ok(true)
    }

    async fn put_file(&self, name: &str, file: &Path) -> io::Result<u64> {
        let size = tokio::fs::metadata(file).await?.len();
        match tokio::fs::rename(file, self.path(name)).await {
            Ok(()) => Ok(size),
            // Another filesystem (VIPAVATAR_STORAGE is a directory elsewhere): copy, then rename.
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
                let tmp = self.incoming();
                tokio::fs::copy(file, &tmp).await?;
                self.rename_in(&tmp, name).await?;
                let _ = tokio::fs::remove_file(file).await;
                Ok(size)
            }
            Err(e) => Err(e),
        }
    }

    async fn get(&self, name: &str) -> io::Result<Option<Bytes>> {
        match tokio::fs::read(self.path(name)).await {
            Ok(b) => Ok(Some(b.into())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn size(&self, name: &str) -> io::Result<Option<u64>> {
        match tokio::fs::metadata(self.path(name)).await {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn delete(&self, name: &str) -> io::Result<()> {
        match tokio::fs::remove_file(self.path(name)).await {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    async fn list(&self, prefix: &str) -> io::Result<Vec<Listed>> {
        let (folder, stem) = prefix.split_once('/').unwrap_or((prefix, ""));
        let mut out = Vec::new();
        let mut dir = match tokio::fs::read_dir(self.root.join(folder)).await {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e),
        };
        while let Some(entry) = dir.next_entry().await? {
            let file = entry.file_name().to_string_lossy().into_owned();
            if file.starts_with(stem) && entry.file_type().await?.is_file() {
                out.push(Listed { name: format!("{folder}/{file}"), bytes: entry.metadata().await?.len() });
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn presign(&self, _name: &str, _ttl: Duration) -> io::Result<Option<String>> {
        Ok(None)
    }

    fn local_path(&self, name: &str) -> Option<PathBuf> {
        Some(self.path(name))
    }

    fn describe(&self) -> String {
        format!("local:{}", self.root.display())
    }
}

//! This process's temporary files under `{data}/tmp` (renders write here before their result
//! goes to the blob store, whichever backend it is).
//!
//! Temporaries are owned: each process holds an `flock` on `tmp/{owner}.owner` and names its
//! temporaries `tmp/{owner}-{uuid}.{ext}` (derived files such as `.mp4.audio.f32` keep the
//! prefix). [`Scratch::sweep_tmp`] removes the files of owners that are gone (their lock is
//! free), unowned files older than the maximum age, and this process's own files older than that
//! only while none of its jobs is in flight.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// This process's claim on its temporaries: the held lock file, removed on drop.
#[derive(Debug)]
struct Owner {
    id: String,
    lock: Option<(File, PathBuf)>,
    /// Jobs of this process that are running now (their temporaries must survive a sweep).
    jobs: AtomicUsize,
}

impl Drop for Owner {
    fn drop(&mut self) {
        if let Some((_, path)) = self.lock.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// `{data}/tmp` and this process's claim on its files there.
#[derive(Debug, Clone)]
pub struct Scratch {
    root: PathBuf,
    owner: Arc<Owner>,
}

/// What one sweep of `tmp/` removed.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Sweep {
    pub files: usize,
    pub bytes: u64,
}

/// Keeps the temporaries of this process's jobs from being swept while it lives.
pub struct JobFiles(Arc<Owner>);

impl Drop for JobFiles {
    fn drop(&mut self) {
        self.0.jobs.fetch_sub(1, Ordering::Relaxed);
    }
}

const OWNER_EXT: &str = ".owner";
/// A lock file this young counts as alive (its process may be between creating and locking it).
const OWNER_GRACE: Duration = Duration::from_secs(60);

/// Which owner ids are alive, each looked up once per sweep.
struct Owners {
    tmp: PathBuf,
    live: Vec<String>,
    dead: Vec<String>,
}

impl Owners {
    fn alive(&mut self, id: &str) -> bool {
        if self.live.iter().any(|l| l == id) {
            return true;
        }
        if self.dead.iter().any(|d| d == id) {
            return false;
        }
        let path = self.tmp.join(format!("{id}{OWNER_EXT}"));
        let young = std::fs::metadata(&path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|m| SystemTime::now().duration_since(m).ok())
            .is_some_and(|age| age < OWNER_GRACE);
        let alive = young || File::open(&path).is_ok_and(|f| f.try_lock().is_err());
        if alive {
            self.live.push(id.to_string());
        } else {
            self.dead.push(id.to_string());
        }
        alive
    }
}

fn is_owner_id(s: &str) -> bool {
    s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

impl Scratch {
    /// Create `{root}/tmp` if needed and take a fresh owner id for temporaries.
    pub fn open(root: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(root.join("tmp"))?;
        let id = uuid::Uuid::new_v4().simple().to_string()[..16].to_string();
        let path = root.join("tmp").join(format!("{id}{OWNER_EXT}"));
        let file = File::create(&path)?;
        file.try_lock().map_err(|e| io::Error::other(format!("lock {}: {e}", path.display())))?;
        let owner = Owner { id, lock: Some((file, path)), jobs: AtomicUsize::new(0) };
        Ok(Self { root: root.to_path_buf(), owner: Arc::new(owner) })
    }

    /// Mark a job of this process as running until the guard drops.
    pub fn hold(&self) -> JobFiles {
        self.owner.jobs.fetch_add(1, Ordering::Relaxed);
        JobFiles(self.owner.clone())
    }

    /// Remove temporaries no live job owns (see the module doc); `max_age` bounds unowned files.
    pub fn sweep_tmp(&self, max_age: Duration) -> io::Result<Sweep> {
        let tmp = self.root.join("tmp");
        let now = SystemTime::now();
        let mut names: Vec<String> = Vec::new();
        for entry in std::fs::read_dir(&tmp)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        let mut owners = Owners { tmp: tmp.clone(), live: vec![self.owner.id.clone()], dead: Vec::new() };
        let mut swept = Sweep::default();
        let own_jobs = self.owner.jobs.load(Ordering::Relaxed);
        for name in &names {
            let path = tmp.join(name);
            if let Some(id) = name.strip_suffix(OWNER_EXT).filter(|id| is_owner_id(id)) {
                if !owners.alive(id) {
                    let _ = std::fs::remove_file(&path);
                }
                continue;
            }
            let Ok(meta) = std::fs::metadata(&path) else { continue };
            let age = meta.modified().ok().and_then(|m| now.duration_since(m).ok()).unwrap_or_default();
            let prefix = name.split_once('-').map(|(p, _)| p).filter(|p| is_owner_id(p));
            let remove = match prefix {
                Some(id) if id == self.owner.id => own_jobs == 0 && age > max_age,
                Some(id) => !owners.alive(id),
                None => age > max_age,
            };
            if remove && std::fs::remove_file(&path).is_ok() {
                swept.files += 1;
                swept.bytes += meta.len();
            }
        }
        Ok(swept)
    }

    /// The directory itself (`{data}/tmp`).
    pub fn dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// A fresh temporary path (same filesystem as the final locations, so rename is atomic),
    /// named after this process's owner id.
    pub fn temp_path(&self, extension: &str) -> PathBuf {
        self.root.join("tmp").join(format!("{}-{}.{extension}", self.owner.id, uuid::Uuid::new_v4().simple()))
    }

    /// Remove a temporary (absent is fine).
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

    fn scratch() -> PathBuf {
        std::env::temp_dir().join(format!("vipavatar-blobs-{}", uuid::Uuid::new_v4().simple()))
    }

    fn old(path: &Path) {
        let f = File::options().write(true).open(path).unwrap();
        f.set_modified(SystemTime::now() - Duration::from_secs(7200)).unwrap();
    }

    #[test]
    fn sweep_keeps_live_owners_and_removes_the_dead_and_the_old() {
        let root = scratch();
        let store = Scratch::open(&root).unwrap();
        let other = Scratch::open(&root).unwrap();
        // A killed process: its lock file stays but nobody holds the lock.
        let dead_id = "00000000deadbeef";
        let dead_lock = root.join("tmp").join(format!("{dead_id}{OWNER_EXT}"));
        std::fs::write(&dead_lock, b"").unwrap();
        old(&dead_lock);
        let dead_file = root.join("tmp").join(format!("{dead_id}-{}.mp4", uuid::Uuid::new_v4().simple()));
        std::fs::write(&dead_file, b"half a video").unwrap();
        std::fs::write(PathBuf::from(format!("{}.audio.f32", dead_file.display())), b"pcm").unwrap();
        let mine = store.temp_path("mp4");
        std::fs::write(&mine, b"in flight").unwrap();
        old(&mine);
        let theirs = other.temp_path("mp4");
        std::fs::write(&theirs, b"another process, alive").unwrap();
        old(&theirs);
        let legacy_old = root.join("tmp/0123456789abcdef0123456789abcdef.mp4");
        std::fs::write(&legacy_old, b"old").unwrap();
        old(&legacy_old);
        let legacy_new = root.join("tmp/fedcba9876543210fedcba9876543210.mp4");
        std::fs::write(&legacy_new, b"new").unwrap();

        let job = store.hold();
        let swept = store.sweep_tmp(Duration::from_secs(3600)).unwrap();
        assert_eq!(swept.files, 3, "dead owner's two files and the old unowned one");
        assert!(!dead_file.exists() && !legacy_old.exists());
        assert!(!dead_lock.exists(), "dead owner's lock file removed");
        assert!(mine.exists(), "a file of a job in flight here survives");
        assert!(theirs.exists(), "a file of a live process survives");
        assert!(legacy_new.exists(), "a young unowned file survives");
        drop(job);
        store.sweep_tmp(Duration::from_secs(3600)).unwrap();
        assert!(!mine.exists(), "an old own file goes once no job of ours is running");
        assert!(theirs.exists());
        let _ = std::fs::remove_dir_all(&root);
    }
}

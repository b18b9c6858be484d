//! Content hashes of build-context files, remembered across builds by their stat data
//! (size, mtime ns, ctime ns, inode, mode), so a rebuild re-reads only files that changed.
//!
//! One JSON file per context directory under `<cache dir>/context/<sha256 of canonical path>.json`,
//! written atomically and bounded to [`MAX_ENTRIES`]. An entry whose change time is too close
//! to the moment it was hashed is "racy" (a write in the same timestamp tick would be invisible)
//! and is hashed again next time, as git does for its index.

use std::collections::{HashMap, HashSet};
use std::fs::Metadata;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::error::ContextError;
use crate::digest::{Algorithm, Digest, Hasher};

/// Most entries kept for one context directory (the ones used by the last build come first).
pub const MAX_ENTRIES: usize = 200_000;
/// A hash is trusted only if the file's ctime is at least this much older than the hash.
const RACY_WINDOW_NS: i128 = 100_000_000;

/// What a file looked like when it was hashed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct StatKey {
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    inode: u64,
    mode: u32,
}

impl StatKey {
    fn of(meta: &Metadata) -> StatKey {
        StatKey {
            size: meta.len(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            ctime_ns: i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec()),
            inode: meta.ino(),
            mode: meta.mode(),
        }
    }
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct CachedHash {
    stat: StatKey,
    /// When the content was read (ns since the epoch).
    hashed_at_ns: i128,
    sha256: Digest,
}

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct StatCacheFile {
    version: u32,
    context: PathBuf,
    files: HashMap<PathBuf, CachedHash>,
}

const FILE_VERSION: u32 = 1;

/// How much work hashing took in this build.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HashStats {
    /// Files whose digest was asked for.
    pub checked: u64,
    /// Files whose content had to be read.
    pub hashed: u64,
    /// Bytes read to hash them.
    pub bytes: u64,
}

/// Hashes context files, reusing digests of files whose stat data did not change.
#[derive(Debug)]
pub struct StatCache {
    path: PathBuf,
    context: PathBuf,
    files: HashMap<PathBuf, CachedHash>,
    used: HashSet<PathBuf>,
    dirty: bool,
    stats: HashStats,
}

fn now_ns() -> i128 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128)
}

impl StatCache {
    /// Loads the stat cache of `context` kept under `cache_dir` (empty when missing or corrupt).
    pub fn open(cache_dir: &Path, context: &Path) -> StatCache {
        let context = std::fs::canonicalize(context).unwrap_or_else(|_| context.to_path_buf());
        let name = Digest::sha256_of(context.as_os_str().as_encoded_bytes());
        let path = cache_dir
            .join("context")
            .join(format!("{}.json", name.hex()));
        let files = std::fs::read(&path)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<StatCacheFile>(&bytes).ok())
            .filter(|file| file.version == FILE_VERSION && file.context == context)
            .map(|file| file.files)
            .unwrap_or_default();
        StatCache {
            path,
            context,
            files,
            used: HashSet::new(),
            dirty: false,
            stats: HashStats::default(),
        }
    }

    /// The canonical context directory this cache is for.
    pub fn context(&self) -> &Path {
        &self.context
    }

    pub fn stats(&self) -> HashStats {
        self.stats
    }

    /// The sha256 of the regular file at `path` (with `meta` its `symlink_metadata`), read
    /// only when its stat data differs from the cached one.
    pub fn file_digest(&mut self, path: &Path, meta: &Metadata) -> Result<Digest, ContextError> {
        self.stats.checked += 1;
        let stat = StatKey::of(meta);
        self.used.insert(path.to_path_buf());
        if let Some(cached) = self.files.get(path)
            && cached.stat == stat
            && cached.stat.ctime_ns + RACY_WINDOW_NS < cached.hashed_at_ns
        {
            return Ok(cached.sha256.clone());
        }
        let hashed_at_ns = now_ns();
        let (sha256, read) = hash_file(path)?;
        self.stats.hashed += 1;
        self.stats.bytes += read;
        // Trust the hash next time only if the file did not change while it was read.
        let after = std::fs::symlink_metadata(path).map_err(ContextError::io(path))?;
        if StatKey::of(&after) == stat {
            self.files.insert(
                path.to_path_buf(),
                CachedHash {
                    stat,
                    hashed_at_ns,
                    sha256: sha256.clone(),
                },
            );
            self.dirty = true;
        } else {
            self.files.remove(path);
        }
        Ok(sha256)
    }

    /// Takes in what another cache of the same context learned (another build thread).
    pub fn absorb(&mut self, other: StatCache) {
        self.files.extend(other.files);
        self.used.extend(other.used);
        self.dirty |= other.dirty;
        self.stats.checked += other.stats.checked;
        self.stats.hashed += other.stats.hashed;
        self.stats.bytes += other.stats.bytes;
    }

    /// Writes the cache back (atomically) when something changed. Entries used by this build
    /// are kept first; at most [`MAX_ENTRIES`] are written.
    pub fn save(&mut self) -> Result<(), ContextError> {
        if !self.dirty && self.files.len() <= MAX_ENTRIES {
            return Ok(());
        }
        let mut files: HashMap<PathBuf, CachedHash> = HashMap::new();
        for (path, hash) in &self.files {
            if self.used.contains(path) && files.len() < MAX_ENTRIES {
                files.insert(path.clone(), hash.clone());
            }
        }
        for (path, hash) in &self.files {
            if files.len() >= MAX_ENTRIES {
                break;
            }
            files.entry(path.clone()).or_insert_with(|| hash.clone());
        }
        let file = StatCacheFile {
            version: FILE_VERSION,
            context: self.context.clone(),
            files,
        };
        let bytes = serde_json::to_vec(&file).map_err(|e| ContextError::Io {
            path: self.path.clone(),
            source: std::io::Error::other(e),
        })?;
        write_atomic(&self.path, &bytes).map_err(ContextError::io(&self.path))?;
        self.dirty = false;
        Ok(())
    }
}

/// Streams a file through sha256; returns the digest and the bytes read.
fn hash_file(path: &Path) -> Result<(Digest, u64), ContextError> {
    let mut file = std::fs::File::open(path).map_err(ContextError::io(path))?;
    let mut hasher = Hasher::new(Algorithm::Sha256);
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(ContextError::io(path))?;
        if n == 0 {
            return Ok((hasher.finish(), total));
        }
        total += n as u64;
        hasher.update(&buf[..n]);
    }
}

/// Writes `bytes` to `path` atomically ([`crate::fsutil`]), creating its directory first.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| std::io::Error::other("path has no parent directory"))?;
    std::fs::create_dir_all(dir)?;
    crate::fsutil::write_file_atomic(path, bytes, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lets a just-written file age past the racy window, so its hash is trusted.
    fn wait_past_racy_window() {
        std::thread::sleep(std::time::Duration::from_millis(150));
    }

    #[test]
    fn unchanged_files_are_not_read_again_and_changed_ones_are() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = dir.path().join("ctx");
        let cache_dir = dir.path().join("cache");
        std::fs::create_dir_all(&ctx).unwrap();
        let file = ctx.join("a.txt");
        std::fs::write(&file, "one").unwrap();
        wait_past_racy_window();

        let mut cache = StatCache::open(&cache_dir, &ctx);
        let meta = std::fs::symlink_metadata(&file).unwrap();
        let first = cache.file_digest(&file, &meta).unwrap();
        assert_eq!(first, Digest::sha256_of(b"one"));
        cache.save().unwrap();

        let mut again = StatCache::open(&cache_dir, &ctx);
        let meta = std::fs::symlink_metadata(&file).unwrap();
        assert_eq!(again.file_digest(&file, &meta).unwrap(), first);
        assert_eq!(
            again.stats().hashed,
            0,
            "an unchanged file must not be read"
        );

        std::fs::write(&file, "two").unwrap();
        let meta = std::fs::symlink_metadata(&file).unwrap();
        assert_eq!(
            again.file_digest(&file, &meta).unwrap(),
            Digest::sha256_of(b"two")
        );
        assert_eq!(again.stats().hashed, 1);
    }

    #[test]
    fn a_freshly_changed_file_is_hashed_again() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, "x").unwrap();
        let mut cache = StatCache::open(dir.path(), dir.path());
        let meta = std::fs::symlink_metadata(&file).unwrap();
        cache.file_digest(&file, &meta).unwrap();
        // Changed within the racy window: the stat data alone cannot be trusted.
        cache.file_digest(&file, &meta).unwrap();
        assert_eq!(cache.stats().hashed, 2);
    }
}

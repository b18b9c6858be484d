//! Content hashes of build-context files, remembered across builds by their stat data
//! (size, mtime ns, ctime ns, inode, mode), so a rebuild re-reads only files that changed.
//!
//! One file per context directory under `<cache dir>/context/<sha256 of canonical path>.stat`,
//! written atomically and bounded to [`MAX_ENTRIES`]. Its format (see [`encode`]) is a small
//! versioned binary one, read in one pass without parsing text: paths relative to the context,
//! raw sha256 bytes. A file of another version (such as the JSON files of version 1, which are
//! deleted on the next save) or a corrupt one is ignored and rebuilt. An entry whose change time
//! is too close to the moment it was hashed is "racy" (a write in the same timestamp tick would be
//! invisible) and is hashed again next time, as git does for its index.

use std::borrow::Cow;
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fs::Metadata;
use std::hash::BuildHasherDefault;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::error::ContextError;
use crate::digest::{Algorithm, Digest, Hasher};

/// Most entries kept for one context directory (the ones used by the last build come first).
pub const MAX_ENTRIES: usize = 200_000;
/// A hash is trusted only if the file's ctime is at least this much older than the hash.
const RACY_WINDOW_NS: i128 = 100_000_000;

/// First bytes of a stat cache file, then the format version (u32, little endian).
const FILE_MAGIC: &[u8; 16] = b"imgbuild-statc\0\n";
const FILE_VERSION: u32 = 2;
/// Bytes of one entry besides its path: length, size, mtime, ctime, inode, mode, hashed-at, sha256.
const ENTRY_FIXED_LEN: usize = 4 + 8 + 16 + 16 + 8 + 4 + 16 + 32;

/// What a file looked like when it was hashed.
#[derive(Debug, Clone, PartialEq, Eq)]
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

#[derive(Debug, Clone)]
struct CachedHash {
    stat: StatKey,
    /// When the content was read (ns since the epoch).
    hashed_at_ns: i128,
    /// The raw sha256 bytes (made a [`Digest`] only when used).
    sha256: [u8; 32],
    /// Asked for by this build (kept first when the cache is trimmed).
    used: bool,
}

/// A cheap hash for path keys (FxHash's word-at-a-time mixing): the keys are file names of the
/// user's own build context, so SipHash's protection against chosen collisions buys nothing here.
#[derive(Debug, Default, Clone, Copy)]
struct PathKeyHasher(u64);

impl std::hash::Hasher for PathKeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x517c_c1b7_2722_0a95;
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(word)).wrapping_mul(K);
        }
        for &byte in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ u64::from(byte)).wrapping_mul(K);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Cached hashes by path key: the path relative to the context (no leading `/`), or the
/// absolute path of a file outside it.
type FileMap = HashMap<Box<[u8]>, CachedHash, BuildHasherDefault<PathKeyHasher>>;

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
    /// The context as the caller named it (paths handed to [`StatCache::file_digest`] start
    /// with it), without trailing `/`.
    given_context: PathBuf,
    files: FileMap,
    dirty: bool,
    stats: HashStats,
}

fn now_ns() -> i128 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128)
}

impl StatCache {
    /// Loads the stat cache of `context` kept under `cache_dir` (empty when missing, corrupt or
    /// of another format version).
    pub fn open(cache_dir: &Path, context: &Path) -> StatCache {
        let given_context = trim_trailing_slashes(context);
        let context = std::fs::canonicalize(context).unwrap_or_else(|_| context.to_path_buf());
        let path = cache_file_path(&cache_dir.join("context"), &context, "stat");
        let files = std::fs::read(&path)
            .ok()
            .and_then(|bytes| decode(&bytes, &context))
            .unwrap_or_default();
        StatCache {
            path,
            context,
            given_context,
            files,
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

    /// The key of `path`: relative to the context when it is inside it, else absolute.
    fn key_of<'p>(&self, path: &'p Path) -> Cow<'p, [u8]> {
        let bytes = path.as_os_str().as_encoded_bytes();
        for base in [&self.given_context, &self.context] {
            let base = base.as_os_str().as_encoded_bytes();
            if let Some(rest) = bytes.strip_prefix(base)
                && let Some(relative) = rest.strip_prefix(b"/")
                && !relative.is_empty()
                && !relative.starts_with(b"/")
            {
                return Cow::Borrowed(relative);
            }
        }
        if bytes.starts_with(b"/") {
            return Cow::Borrowed(bytes);
        }
        match std::path::absolute(path) {
            Ok(absolute) => Cow::Owned(absolute.into_os_string().into_encoded_bytes()),
            Err(_) => Cow::Borrowed(bytes),
        }
    }

    /// The sha256 of the regular file at `path` (with `meta` its `symlink_metadata`), read
    /// only when its stat data differs from the cached one.
    pub fn file_digest(&mut self, path: &Path, meta: &Metadata) -> Result<Digest, ContextError> {
        self.stats.checked += 1;
        let stat = StatKey::of(meta);
        let key = self.key_of(path);
        if let Some(cached) = self.files.get_mut(&*key) {
            cached.used = true;
            if cached.stat == stat
                && cached.stat.ctime_ns + RACY_WINDOW_NS < cached.hashed_at_ns
                && let Some(digest) = sha256_digest(&cached.sha256)
            {
                return Ok(digest);
            }
        }
        let key: Box<[u8]> = key.into();
        let hashed_at_ns = now_ns();
        let (sha256, read) = hash_file(path)?;
        self.stats.hashed += 1;
        self.stats.bytes += read;
        // Trust the hash next time only if the file did not change while it was read.
        let after = std::fs::symlink_metadata(path).map_err(ContextError::io(path))?;
        let mut raw = [0u8; 32];
        let raw_ok = hex::decode_to_slice(sha256.hex(), &mut raw).is_ok();
        if raw_ok && StatKey::of(&after) == stat {
            self.files.insert(
                key,
                CachedHash {
                    stat,
                    hashed_at_ns,
                    sha256: raw,
                    used: true,
                },
            );
            self.dirty = true;
        } else {
            self.files.remove(&key);
        }
        Ok(sha256)
    }

    /// Takes in what another cache of the same context learned (another build thread): of two
    /// entries for one file the more recently hashed one is kept.
    pub fn absorb(&mut self, other: StatCache) {
        for (key, theirs) in other.files {
            match self.files.entry(key) {
                Entry::Vacant(slot) => {
                    slot.insert(theirs);
                }
                Entry::Occupied(mut slot) => {
                    let ours = slot.get_mut();
                    let used = ours.used || theirs.used;
                    if theirs.hashed_at_ns > ours.hashed_at_ns {
                        *ours = theirs;
                    }
                    ours.used = used;
                }
            }
        }
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
        let used = self.files.iter().filter(|(_, hash)| hash.used);
        let unused = self.files.iter().filter(|(_, hash)| !hash.used);
        let kept: Vec<(&[u8], &CachedHash)> = used
            .chain(unused)
            .take(MAX_ENTRIES)
            .map(|(key, hash)| (&**key, hash))
            .collect();
        let bytes = encode(&self.context, &kept);
        write_atomic(&self.path, &bytes).map_err(ContextError::io(&self.path))?;
        // The version 1 (JSON) file of this context, if any, is superseded.
        let _ = std::fs::remove_file(cache_file_path(
            self.path.parent().unwrap_or(Path::new("")),
            &self.context,
            "json",
        ));
        self.dirty = false;
        Ok(())
    }
}

/// `<dir>/<sha256 of the context path>.<extension>`.
fn cache_file_path(dir: &Path, context: &Path, extension: &str) -> PathBuf {
    let name = Digest::sha256_of(context.as_os_str().as_encoded_bytes());
    dir.join(format!("{}.{extension}", name.hex()))
}

fn trim_trailing_slashes(path: &Path) -> PathBuf {
    let bytes = path.as_os_str().as_encoded_bytes();
    let mut end = bytes.len();
    while end > 0 && bytes[end - 1] == b'/' {
        end -= 1;
    }
    PathBuf::from(std::ffi::OsStr::from_bytes(&bytes[..end]))
}

/// The stat cache file of `context` holding `entries`:
///
/// ```text
/// FILE_MAGIC, version u32, context path length u32, context path bytes, entry count u32,
/// then per entry: path length u32, path bytes, size u64, mtime ns i128, ctime ns i128,
///                 inode u64, mode u32, hashed-at ns i128, sha256 (32 raw bytes)
/// ```
///
/// All integers little endian. Nothing may follow the last entry.
fn encode(context: &Path, entries: &[(&[u8], &CachedHash)]) -> Vec<u8> {
    let context = context.as_os_str().as_encoded_bytes();
    let paths: usize = entries.iter().map(|(key, _)| key.len()).sum();
    let mut out = Vec::with_capacity(32 + context.len() + paths + entries.len() * ENTRY_FIXED_LEN);
    out.extend_from_slice(FILE_MAGIC);
    out.extend_from_slice(&FILE_VERSION.to_le_bytes());
    put_bytes(&mut out, context);
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for (key, hash) in entries {
        put_bytes(&mut out, key);
        out.extend_from_slice(&hash.stat.size.to_le_bytes());
        out.extend_from_slice(&hash.stat.mtime_ns.to_le_bytes());
        out.extend_from_slice(&hash.stat.ctime_ns.to_le_bytes());
        out.extend_from_slice(&hash.stat.inode.to_le_bytes());
        out.extend_from_slice(&hash.stat.mode.to_le_bytes());
        out.extend_from_slice(&hash.hashed_at_ns.to_le_bytes());
        out.extend_from_slice(&hash.sha256);
    }
    out
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Reads a file written by [`encode`] for `context`; None when it is of another version, for
/// another context, or malformed in any way.
fn decode(bytes: &[u8], context: &Path) -> Option<FileMap> {
    let mut input = Reader(bytes);
    if input.take(FILE_MAGIC.len())? != FILE_MAGIC || input.u32()? != FILE_VERSION {
        return None;
    }
    if input.bytes()? != context.as_os_str().as_encoded_bytes() {
        return None;
    }
    let count = input.u32()? as usize;
    if count > MAX_ENTRIES || count > input.0.len() / ENTRY_FIXED_LEN {
        return None;
    }
    let mut files = FileMap::with_capacity_and_hasher(count, Default::default());
    for _ in 0..count {
        let key: Box<[u8]> = input.bytes()?.into();
        let stat = StatKey {
            size: input.u64()?,
            mtime_ns: input.i128()?,
            ctime_ns: input.i128()?,
            inode: input.u64()?,
            mode: input.u32()?,
        };
        let hashed_at_ns = input.i128()?;
        let sha256 = input.array()?;
        let hash = CachedHash {
            stat,
            hashed_at_ns,
            sha256,
            used: false,
        };
        if files.insert(key, hash).is_some() {
            return None;
        }
    }
    input.0.is_empty().then_some(files)
}

const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

/// The [`Digest`] of raw sha256 bytes.
fn sha256_digest(raw: &[u8; 32]) -> Option<Digest> {
    let mut text = String::with_capacity(7 + 64);
    text.push_str("sha256:");
    for byte in raw {
        text.push(char::from(HEX_DIGITS[usize::from(byte >> 4)]));
        text.push(char::from(HEX_DIGITS[usize::from(byte & 0xf)]));
    }
    Digest::parse(&text).ok()
}

/// A cursor over a stat cache file; every read fails (None) past the end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> Option<&'a [u8]> {
        if self.0.len() < len {
            return None;
        }
        let (head, rest) = self.0.split_at(len);
        self.0 = rest;
        Some(head)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }

    fn u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Option<u64> {
        self.array().map(u64::from_le_bytes)
    }

    fn i128(&mut self) -> Option<i128> {
        self.array().map(i128::from_le_bytes)
    }

    /// A length-prefixed byte string.
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let len = self.u32()? as usize;
        self.take(len)
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

    /// A context `ctx` holding `a.txt` ("one"), aged past the racy window, and a cache dir
    /// beside it, under `dir`: (ctx, cache dir, the file).
    fn context_with_one_file(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
        let ctx = dir.join("ctx");
        std::fs::create_dir_all(&ctx).unwrap();
        let file = ctx.join("a.txt");
        std::fs::write(&file, "one").unwrap();
        wait_past_racy_window();
        (ctx, dir.join("cache"), file)
    }

    #[test]
    fn unchanged_files_are_not_read_again_and_changed_ones_are() {
        let dir = tempfile::tempdir().unwrap();
        let (ctx, cache_dir, file) = context_with_one_file(dir.path());

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

    /// The one stat cache file under `cache_dir` (panics unless there is exactly one).
    fn only_cache_file(cache_dir: &Path) -> PathBuf {
        let files: Vec<PathBuf> = std::fs::read_dir(cache_dir.join("context"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(files.len(), 1, "{files:?}");
        files[0].clone()
    }

    #[test]
    fn the_cache_file_round_trips_every_field() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = std::fs::canonicalize(dir.path()).unwrap();
        let mut files = FileMap::default();
        let entries = [
            (
                &b"src/a.rs"[..],
                7u64,
                -5i128,
                1_700_000_000_123_456_789i128,
                42u64,
                0o100644u32,
            ),
            (
                &b"/elsewhere/b"[..],
                u64::MAX,
                i128::MAX,
                i128::MIN,
                u64::MAX,
                u32::MAX,
            ),
        ];
        for (index, (key, size, mtime_ns, ctime_ns, inode, mode)) in entries.into_iter().enumerate()
        {
            files.insert(
                key.into(),
                CachedHash {
                    stat: StatKey {
                        size,
                        mtime_ns,
                        ctime_ns,
                        inode,
                        mode,
                    },
                    hashed_at_ns: 99 + index as i128,
                    sha256: Digest::sha256_of(key).hex().as_bytes()[..32]
                        .try_into()
                        .unwrap(),
                    used: index == 0,
                },
            );
        }
        let encodable: Vec<(&[u8], &CachedHash)> =
            files.iter().map(|(key, hash)| (&**key, hash)).collect();
        let bytes = encode(&ctx, &encodable);
        let decoded = decode(&bytes, &ctx).expect("a file just encoded must decode");
        assert_eq!(decoded.len(), files.len());
        for (key, hash) in &files {
            let back = &decoded[key];
            assert_eq!(back.stat, hash.stat);
            assert_eq!(back.hashed_at_ns, hash.hashed_at_ns);
            assert_eq!(back.sha256, hash.sha256);
        }
        // Written for another context directory: not this one's cache.
        assert!(decode(&bytes, Path::new("/some/other/context")).is_none());
        // Every truncation and a trailing byte are rejected.
        for len in 0..bytes.len() {
            assert!(decode(&bytes[..len], &ctx).is_none(), "truncated to {len}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode(&longer, &ctx).is_none());
    }

    #[test]
    fn a_corrupt_or_old_format_cache_file_is_ignored_and_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        let (ctx, cache_dir, file) = context_with_one_file(dir.path());
        let meta = std::fs::symlink_metadata(&file).unwrap();

        let mut cache = StatCache::open(&cache_dir, &ctx);
        cache.file_digest(&file, &meta).unwrap();
        cache.save().unwrap();
        let cache_file = only_cache_file(&cache_dir);
        let good = std::fs::read(&cache_file).unwrap();

        // A version 1 (JSON) file next to it is removed by the next save.
        let json_file = cache_file.with_extension("json");
        let mut corrupt_versions: Vec<Vec<u8>> = vec![
            br#"{"version":1,"context":"/x","files":{}}"#.to_vec(),
            Vec::new(),
            good[..good.len() - 1].to_vec(),
        ];
        let mut other_version = good.clone();
        other_version[FILE_MAGIC.len()] ^= 0xff;
        corrupt_versions.push(other_version);
        let mut huge_count = good.clone();
        let count_at = FILE_MAGIC.len() + 4 + 4 + cache.context().as_os_str().len();
        huge_count[count_at..count_at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        corrupt_versions.push(huge_count);

        for corrupt in corrupt_versions {
            std::fs::write(&cache_file, &corrupt).unwrap();
            std::fs::write(&json_file, b"{}").unwrap();
            let mut cache = StatCache::open(&cache_dir, &ctx);
            let digest = cache.file_digest(&file, &meta).unwrap();
            assert_eq!(digest, Digest::sha256_of(b"one"));
            assert_eq!(
                cache.stats().hashed,
                1,
                "a corrupt cache must not be trusted"
            );
            cache.save().unwrap();
            assert!(!json_file.exists(), "the old JSON file must be removed");
            assert_eq!(std::fs::read(&cache_file).unwrap().len(), good.len());

            let mut rebuilt = StatCache::open(&cache_dir, &ctx);
            rebuilt.file_digest(&file, &meta).unwrap();
            assert_eq!(rebuilt.stats().hashed, 0, "the rebuilt cache must be used");
        }
    }

    #[test]
    fn a_relative_context_name_and_its_canonical_path_share_entries() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = dir.path().join("ctx");
        let cache_dir = dir.path().join("cache");
        std::fs::create_dir_all(ctx.join("sub")).unwrap();
        let file = ctx.join("sub/f");
        std::fs::write(&file, "x").unwrap();
        wait_past_racy_window();
        let meta = std::fs::symlink_metadata(&file).unwrap();

        // Named with a trailing slash and a `..` detour: same canonical context, same keys.
        let odd_name = ctx.join("sub/../");
        let mut cache = StatCache::open(&cache_dir, &odd_name);
        cache.file_digest(&odd_name.join("sub/f"), &meta).unwrap();
        cache.save().unwrap();

        let mut again = StatCache::open(&cache_dir, &ctx);
        again.file_digest(&file, &meta).unwrap();
        assert_eq!(again.stats().hashed, 0);
    }

    #[test]
    fn entries_used_by_this_build_are_kept_when_absorbing_another_threads_cache() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = dir.path().join("ctx");
        let cache_dir = dir.path().join("cache");
        std::fs::create_dir_all(&ctx).unwrap();
        let (a, b) = (ctx.join("a"), ctx.join("b"));
        std::fs::write(&a, "a").unwrap();
        std::fs::write(&b, "b").unwrap();
        wait_past_racy_window();
        let (meta_a, meta_b) = (
            std::fs::symlink_metadata(&a).unwrap(),
            std::fs::symlink_metadata(&b).unwrap(),
        );
        let mut main = StatCache::open(&cache_dir, &ctx);
        let mut worker = StatCache::open(&cache_dir, &ctx);
        main.file_digest(&a, &meta_a).unwrap();
        worker.file_digest(&b, &meta_b).unwrap();
        main.absorb(worker);
        assert_eq!(main.stats().hashed, 2);
        main.save().unwrap();

        let mut again = StatCache::open(&cache_dir, &ctx);
        again.file_digest(&a, &meta_a).unwrap();
        again.file_digest(&b, &meta_b).unwrap();
        assert_eq!(again.stats().hashed, 0);
    }
}

//! `unpack`: extracts a (possibly compressed) layer tar into a directory, safely.
//!
//! Safety model: every path is resolved with openat2(RESOLVE_IN_ROOT) against a directory fd
//! of `dest`, so `..`, absolute symlinks and symlinked parents all stay inside `dest`; the last
//! component is always created/removed with *at calls that never follow it (O_NOFOLLOW,
//! O_EXCL, AT_SYMLINK_NOFOLLOW, linkat without AT_SYMLINK_FOLLOW). Entry names containing `..`
//! are rejected outright, and absolute entry names are taken relative to `dest`.
//!
//! Whiteouts: `Flatten` applies them (deleting lower content) to build a merged root file
//! system; `Overlay` turns them into overlayfs form (0/0 char devices, `trusted.overlay.opaque`)
//! for use as a lowerdir.
//!
//! Speed: decompression runs on the calling thread while a second (scoped) thread parses the
//! tar and writes files, connected by a bounded channel of chunks, so a gzip layer's inflate
//! and its file creation overlap on two cores. Consecutive entries in the same directory reuse
//! one parent directory fd instead of resolving the parent again.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, SyncSender};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Timespec, Timestamps, XattrFlags};
use rustix::io::Errno;

use super::LayerError;
use super::archive::decompress;

/// How whiteouts are materialized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnpackMode {
    /// Apply whiteouts by deleting: for building one merged root file system.
    Flatten,
    /// Convert whiteouts to overlayfs form: for use as an overlay lowerdir.
    Overlay,
}

/// What an unpack did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnpackStats {
    /// Tar entries materialized (whiteouts not counted).
    pub entries: u64,
    /// Bytes of regular file content written.
    pub bytes: u64,
    /// Whiteouts and opaque markers applied or converted.
    pub whiteouts: u64,
}

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
const OVERLAY_OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// Extracts the layer read from `reader` (gzip, zstd or plain tar, detected) into `dest`.
pub fn unpack(reader: impl Read, dest: &Path, mode: UnpackMode) -> Result<UnpackStats, LayerError> {
    let unpacker = Unpacker::new(dest, mode)?;
    let mut stream = decompress(reader).map_err(LayerError::ReadTar)?;
    std::thread::scope(|scope| {
        let (chunks, received) = mpsc::sync_channel(READ_AHEAD_CHUNKS);
        let writer = scope.spawn(move || unpacker.apply_all(ChunkReader::new(received)));
        pump_chunks(&mut stream, &chunks);
        // The end of the stream (or the error just sent) is the last message.
        drop(chunks);
        writer.join().unwrap_or_else(|_| {
            Err(LayerError::Unpack {
                path: String::new(),
                dest: dest.to_path_buf(),
                source: io::Error::other("the unpacking thread panicked"),
            })
        })
    })
}

/// Files of an earlier snapshot that an unpack may hard-link instead of writing anew: the
/// caller vouches that each listed path (relative, as in the tar) holds the same content as
/// this layer's file there. A file is linked only if its size, mode, owner and mtime match the
/// tar entry too, and only through a path with no symlink in it; anything else is written.
#[derive(Debug, Clone)]
pub struct ReusableFiles {
    /// The earlier snapshot's root (never written to: its files are only linked).
    pub root: PathBuf,
    pub paths: HashSet<String>,
}

/// Extracts an uncompressed tar stream into `dest` on the calling thread (for callers that
/// already run this on a thread of its own, like `write_layer_unpacking`), linking files from
/// `reuse` where it can.
pub(crate) fn unpack_tar_stream(
    stream: impl Read,
    dest: &Path,
    mode: UnpackMode,
    reuse: Option<ReusableFiles>,
) -> Result<UnpackStats, LayerError> {
    let mut unpacker = Unpacker::new(dest, mode)?;
    if let Some(reuse) = reuse
        && let Ok(root) = rustix::fs::open(
            &reuse.root,
            OFlags::DIRECTORY | OFlags::PATH | OFlags::CLOEXEC,
            Mode::empty(),
        )
    {
        unpacker.reuse = Some((root, reuse.paths));
    }
    unpacker.apply_all(stream)
}

impl Unpacker {
    /// An unpacker into `dest`, which is created if missing.
    fn new(dest: &Path, mode: UnpackMode) -> Result<Unpacker, LayerError> {
        let dest_err = |source| LayerError::Unpack {
            path: String::new(),
            dest: dest.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dest).map_err(dest_err)?;
        let root = rustix::fs::open(
            dest,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| dest_err(e.into()))?;
        Ok(Unpacker {
            root,
            dest: dest.to_path_buf(),
            mode,
            is_root: rustix::process::geteuid().is_root(),
            created: HashSet::new(),
            dir_times: Vec::new(),
            stats: UnpackStats::default(),
            parent_cache: None,
            euid: rustix::process::geteuid().as_raw(),
            egid: rustix::process::getegid().as_raw(),
            reuse: None,
            reuse_parent: None,
        })
    }
}

/// Bytes per chunk handed from the decompressing thread to the writing thread.
const READ_AHEAD_CHUNK: usize = 256 * 1024;
/// Chunks in flight between them (bounded memory: 2 MiB).
const READ_AHEAD_CHUNKS: usize = 8;

/// Reads `stream` to its end in chunks and sends them; a read error is sent as the last message
/// so the reader never mistakes a broken stream for its end. Stops early, silently, when the
/// receiving side is gone (it finished or failed; its result says which).
fn pump_chunks(stream: &mut impl Read, chunks: &SyncSender<io::Result<Vec<u8>>>) {
    loop {
        let mut chunk = vec![0u8; READ_AHEAD_CHUNK];
        let mut filled = 0;
        let outcome = loop {
            match stream.read(&mut chunk[filled..]) {
                Ok(0) => break Ok(true),
                Ok(n) => {
                    filled += n;
                    if filled == chunk.len() {
                        break Ok(false);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        chunk.truncate(filled);
        let (message, last) = match outcome {
            Ok(at_end) => (Ok(chunk), at_end),
            Err(e) => (Err(e), true),
        };
        if chunks.send(message).is_err() || last {
            return;
        }
    }
}

/// `Read` over the chunks sent by `pump_chunks`: the channel closing is the end of the stream.
pub(crate) struct ChunkReader {
    chunks: Receiver<io::Result<Vec<u8>>>,
    current: Vec<u8>,
    offset: usize,
}

impl ChunkReader {
    pub(crate) fn new(chunks: Receiver<io::Result<Vec<u8>>>) -> ChunkReader {
        ChunkReader {
            chunks,
            current: Vec::new(),
            offset: 0,
        }
    }
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.offset == self.current.len() {
            match self.chunks.recv() {
                Ok(Ok(chunk)) => {
                    self.current = chunk;
                    self.offset = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len() - self.offset);
        buf[..n].copy_from_slice(&self.current[self.offset..self.offset + n]);
        self.offset += n;
        Ok(n)
    }
}

/// Metadata of one entry, with PAX overrides applied.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    xattrs: Vec<(String, Vec<u8>)>,
}

struct Unpacker {
    root: OwnedFd,
    dest: PathBuf,
    mode: UnpackMode,
    is_root: bool,
    /// Paths (relative to dest) created by this layer: opaque markers spare them.
    created: HashSet<PathBuf>,
    /// Directory mtimes, applied last (creating children changes them).
    dir_times: Vec<(PathBuf, i64)>,
    stats: UnpackStats,
    /// The parent directory of the last entry and an fd of it, reused while entries stay in
    /// the same directory. An entry only ever changes its own path, never its parent's, so the
    /// fd stays valid for the next entry with the same parent; whiteouts and opaque markers
    /// (which delete other paths) drop it.
    /// Whether new files in that directory get exactly the owner and mode they are created
    /// with (see [`creates_plainly`]).
    parent_cache: Option<(PathBuf, OwnedFd, bool)>,
    euid: u32,
    egid: u32,
    /// An earlier snapshot's root and the paths in it that may be linked ([`ReusableFiles`]).
    reuse: Option<(OwnedFd, HashSet<String>)>,
    /// The directory of the earlier snapshot that matches the last linked file's parent, kept
    /// while entries stay in that directory (files come sorted, so most do).
    reuse_parent: Option<(PathBuf, OwnedFd)>,
}

/// Which metadata `set_fd_meta` still has to apply (a new file may already have it).
struct MetaToApply {
    owner: bool,
    mode: bool,
    mtime: bool,
}

/// The process umask, read once (None where /proc does not show it).
fn process_umask() -> Option<u32> {
    static UMASK: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();
    *UMASK.get_or_init(|| {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let value = status
            .lines()
            .find_map(|line| line.strip_prefix("Umask:"))?;
        u32::from_str_radix(value.trim(), 8).ok()
    })
}

/// Whether files created in directory `dir` get our group and the mode asked for (less the
/// umask): not so in a setgid directory (its group) or one with a default ACL (its mask).
fn creates_plainly(dir: &OwnedFd) -> bool {
    let setgid = rustix::fs::fstat(dir).map_or(true, |st| st.st_mode & 0o2000 != 0);
    let mut no_value: [u8; 0] = [];
    let default_acl = match rustix::fs::fgetxattr(dir, "system.posix_acl_default", &mut no_value) {
        Err(Errno::NODATA | Errno::NOTSUP) => false,
        Ok(_) | Err(_) => true,
    };
    !setgid && !default_acl
}

/// Whether a file created with `mode` gets exactly that mode (no special bits, which open(2)
/// may drop, and nothing the umask removes): then no fchmod is needed.
fn created_with_exact_mode(mode: u32) -> bool {
    mode & 0o7000 == 0 && process_umask().is_some_and(|umask| mode & umask == 0)
}

/// Splits a tar path into normalized components: leading `/` and `.` dropped, `..` rejected.
fn normalize(raw: &[u8]) -> Result<Vec<&[u8]>, LayerError> {
    let mut parts = Vec::new();
    for part in raw.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                return Err(LayerError::UnsafePath {
                    path: String::from_utf8_lossy(raw).into_owned(),
                    reason: "'..' components are not allowed in layer entries".to_string(),
                });
            }
            _ => parts.push(part),
        }
    }
    Ok(parts)
}

fn join(parts: &[&[u8]]) -> PathBuf {
    let mut path = PathBuf::new();
    for part in parts {
        path.push(OsStr::from_bytes(part));
    }
    path
}

/// Path argument for *at calls on the root itself.
fn at_path(path: &Path) -> &Path {
    if path.as_os_str().is_empty() {
        Path::new(".")
    } else {
        path
    }
}

fn timestamps(mtime: i64) -> Timestamps {
    let t = Timespec {
        tv_sec: mtime,
        tv_nsec: 0,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

impl Unpacker {
    /// Applies every entry of the tar read from `stream`, then the directory times.
    fn apply_all(mut self, stream: impl Read) -> Result<UnpackStats, LayerError> {
        let mut archive = tar::Archive::new(stream);
        for entry in archive.entries().map_err(LayerError::ReadTar)? {
            let entry = entry.map_err(LayerError::ReadTar)?;
            self.apply(entry)?;
        }
        self.finish()
    }

    fn err(&self, path: &Path, source: impl Into<io::Error>) -> LayerError {
        LayerError::Unpack {
            path: path.display().to_string(),
            dest: self.dest.clone(),
            source: source.into(),
        }
    }

    /// Opens directory `path` (relative to dest), resolving every component inside dest.
    fn open_dir(&self, path: &Path) -> Result<OwnedFd, Errno> {
        rustix::fs::openat2(
            &self.root,
            at_path(path),
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        )
    }

    /// Opens directory `path`, creating it and missing parents (0755, root-owned) as needed.
    fn ensure_dir(&mut self, path: &Path) -> Result<OwnedFd, LayerError> {
        match self.open_dir(path) {
            Ok(fd) => return Ok(fd),
            Err(Errno::NOENT) if !path.as_os_str().is_empty() => {}
            Err(e) => return Err(self.err(path, e)),
        }
        let parent = path.parent().unwrap_or(Path::new(""));
        let name = path.file_name().unwrap_or(path.as_os_str());
        let parent_fd = self.ensure_dir(parent)?;
        match rustix::fs::mkdirat(&parent_fd, name, Mode::from_raw_mode(0o755)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(self.err(path, e)),
        }
        self.created.insert(path.to_path_buf());
        self.open_dir(path).map_err(|e| self.err(path, e))
    }

    fn apply(&mut self, mut entry: tar::Entry<'_, impl Read>) -> Result<(), LayerError> {
        let entry_type = entry.header().entry_type();
        if matches!(
            entry_type,
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader
        ) {
            return Ok(());
        }
        let raw = entry.path_bytes().into_owned();
        let display = String::from_utf8_lossy(&raw).into_owned();
        let parts = normalize(&raw)?;
        let Some((&name, parent_parts)) = parts.split_last() else {
            // "./" or "/": the destination itself; its metadata is left alone.
            if entry_type.is_dir() {
                return Ok(());
            }
            return Err(LayerError::UnsafePath {
                path: display,
                reason: "a non-directory entry names the layer root".to_string(),
            });
        };
        let parent = join(parent_parts);
        let path = join(&parts);

        // Reused only for the same parent; dropped for anything else (see `parent_cache`).
        let cached_parent = match self.parent_cache.take() {
            Some((cached, fd, setgid)) if cached == parent => Some((fd, setgid)),
            _ => None,
        };
        if name == OPAQUE_MARKER {
            return self.apply_opaque(&parent);
        }
        if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
            if hidden.is_empty() || hidden == b"." || hidden == b".." {
                return Err(LayerError::UnsafePath {
                    path: display,
                    reason: "whiteout of an invalid name".to_string(),
                });
            }
            return self.apply_whiteout(&parent, OsStr::from_bytes(hidden));
        }

        let meta = self.meta(&mut entry, &display)?;
        let (parent_fd, parent_is_plain) = match cached_parent {
            Some(cached) => cached,
            None => {
                let fd = self.ensure_dir(&parent)?;
                let plain = creates_plainly(&fd);
                (fd, plain)
            }
        };
        let name = OsStr::from_bytes(name);
        // A directory entry's own fd, and whether it creates plainly.
        let mut entered_dir = None;
        match entry_type {
            tar::EntryType::Directory => {
                // Most directories are new: made with their final mode, owned by us, and
                // known to create their own entries plainly, sparing a stat, a fchmod, a
                // fchown and, for the first entry inside, a reopen and its checks.
                let exact_mode = parent_is_plain && created_with_exact_mode(meta.mode);
                let owner_is_ours =
                    parent_is_plain && meta.uid == self.euid && meta.gid == self.egid;
                let create_mode = if exact_mode { meta.mode } else { 0o700 };
                let created =
                    match rustix::fs::mkdirat(&parent_fd, name, Mode::from_raw_mode(create_mode)) {
                        Ok(()) => true,
                        Err(Errno::EXIST) => {
                            let is_dir = matches!(
                                rustix::fs::statat(&parent_fd, name, AtFlags::SYMLINK_NOFOLLOW),
                                Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory
                            );
                            if !is_dir {
                                remove_all_at(&parent_fd, name).map_err(|e| self.err(&path, e))?;
                                rustix::fs::mkdirat(&parent_fd, name, Mode::from_raw_mode(0o700))
                                    .map_err(|e| self.err(&path, e))?;
                            }
                            false
                        }
                        Err(e) => return Err(self.err(&path, e)),
                    };
                let fd = rustix::fs::openat(
                    &parent_fd,
                    name,
                    OFlags::DIRECTORY | OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| self.err(&path, e))?;
                let apply = MetaToApply {
                    owner: !(created && owner_is_ours),
                    mode: !(created && exact_mode),
                    mtime: false,
                };
                self.set_fd_meta(&fd, &path, &meta, apply)?;
                self.dir_times.push((path.clone(), meta.mtime));
                // A new directory in a plain parent is plain unless it is setgid or carries a
                // default ACL of its own.
                let dir_is_plain = if created {
                    parent_is_plain
                        && meta.mode & 0o2000 == 0
                        && !meta
                            .xattrs
                            .iter()
                            .any(|(key, _)| key == "system.posix_acl_default")
                } else {
                    creates_plainly(&fd)
                };
                entered_dir = Some((fd, dir_is_plain));
            }
            // A file an earlier snapshot already has: linked, its data skipped.
            tar::EntryType::Regular | tar::EntryType::Continuous
                if self.link_reused(&path, &parent, name, entry.size(), &meta, &parent_fd) => {}
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                // Most files can be created with their final mode and owner, sparing a
                // fchmod and a fchown each.
                let exact_mode = parent_is_plain && created_with_exact_mode(meta.mode);
                let create_mode = if exact_mode { meta.mode } else { 0o600 };
                let owner_is_ours =
                    parent_is_plain && meta.uid == self.euid && meta.gid == self.egid;
                let create = || {
                    rustix::fs::openat(
                        &parent_fd,
                        name,
                        OFlags::CREATE
                            | OFlags::EXCL
                            | OFlags::WRONLY
                            | OFlags::NOFOLLOW
                            | OFlags::CLOEXEC,
                        Mode::from_raw_mode(create_mode),
                    )
                };
                // Usually nothing is there yet: try first, replace only what exists.
                let fd = match create() {
                    Err(Errno::EXIST) => {
                        remove_all_at(&parent_fd, name).map_err(|e| self.err(&path, e))?;
                        create()
                    }
                    created => created,
                }
                .map_err(|e| self.err(&path, e))?;
                // io::copy reads straight into a BufWriter's buffer: large reads and writes.
                let mut writer = io::BufWriter::with_capacity(256 * 1024, File::from(fd));
                let copied = io::copy(&mut entry, &mut writer).map_err(|e| self.err(&path, e))?;
                let file = writer.into_inner().map_err(|e| {
                    self.err(
                        &path,
                        io::Error::new(e.error().kind(), e.error().to_string()),
                    )
                })?;
                self.stats.bytes += copied;
                let apply = MetaToApply {
                    owner: !owner_is_ours,
                    mode: !exact_mode,
                    mtime: true,
                };
                self.set_fd_meta(&file, &path, &meta, apply)?;
            }
            tar::EntryType::Link => {
                let target_raw = entry
                    .link_name_bytes()
                    .map(|b| b.into_owned())
                    .unwrap_or_default();
                let target_parts = normalize(&target_raw)?;
                let Some((&target_name, target_parent)) = target_parts.split_last() else {
                    return Err(LayerError::UnsafePath {
                        path: display,
                        reason: "hard link to the layer root".to_string(),
                    });
                };
                let target_dir = self
                    .open_dir(&join(target_parent))
                    .map_err(|e| self.err(&join(&target_parts), e))?;
                remove_all_at(&parent_fd, name).map_err(|e| self.err(&path, e))?;
                rustix::fs::linkat(
                    &target_dir,
                    OsStr::from_bytes(target_name),
                    &parent_fd,
                    name,
                    AtFlags::empty(),
                )
                .map_err(|e| self.err(&path, e))?;
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .map(|b| b.into_owned())
                    .unwrap_or_default();
                remove_all_at(&parent_fd, name).map_err(|e| self.err(&path, e))?;
                rustix::fs::symlinkat(OsStr::from_bytes(&target), &parent_fd, name)
                    .map_err(|e| self.err(&path, e))?;
                self.set_at_meta(&parent_fd, name, &path, &meta, false)?;
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                let file_type = match entry_type {
                    tar::EntryType::Char => FileType::CharacterDevice,
                    tar::EntryType::Block => FileType::BlockDevice,
                    _ => FileType::Fifo,
                };
                let header = entry.header();
                let major = header.device_major().ok().flatten().unwrap_or(0);
                let minor = header.device_minor().ok().flatten().unwrap_or(0);
                remove_all_at(&parent_fd, name).map_err(|e| self.err(&path, e))?;
                let made = rustix::fs::mknodat(
                    &parent_fd,
                    name,
                    file_type,
                    Mode::from_raw_mode(meta.mode),
                    rustix::fs::makedev(major, minor),
                );
                match made {
                    Ok(()) => {}
                    // Unprivileged unpacks cannot make device nodes (as rootless Docker).
                    Err(Errno::PERM) if !self.is_root && file_type != FileType::Fifo => {
                        tracing::warn!(path = %path.display(), "skipping device node: not running as root");
                        return Ok(());
                    }
                    Err(e) => return Err(self.err(&path, e)),
                }
                self.set_at_meta(&parent_fd, name, &path, &meta, true)?;
            }
            other => {
                return Err(LayerError::Unsupported {
                    path: display,
                    message: format!("tar entry type {other:?}"),
                });
            }
        }
        self.stats.entries += 1;
        self.parent_cache = Some(match entered_dir {
            // The entries that follow a directory are mostly its own.
            Some((fd, plain)) => (path.clone(), fd, plain),
            None => (parent, parent_fd, parent_is_plain),
        });
        self.created.insert(path);
        Ok(())
    }

    /// Hard-links `path` (`name` in `parent`, with `size` bytes and `meta`) from the reusable
    /// snapshot into `parent_fd`, when it is listed there and its file matches; false to write
    /// it instead.
    ///
    /// The snapshot's directory is opened without following symlinks (openat2), and the file
    /// is checked and linked by name in it without following one either; snapshots are never
    /// changed after they are made, so the file checked is the file linked.
    fn link_reused(
        &mut self,
        path: &Path,
        parent: &Path,
        name: &OsStr,
        size: u64,
        meta: &Meta,
        parent_fd: &OwnedFd,
    ) -> bool {
        let Some((root, paths)) = &self.reuse else {
            return false;
        };
        if !meta.xattrs.is_empty() || !path.to_str().is_some_and(|p| paths.contains(p)) {
            return false;
        }
        let reuse_dir = match self.reuse_parent.take() {
            Some((cached, fd)) if cached == parent => fd,
            _ => {
                let dir = if parent.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    parent
                };
                let Ok(fd) = rustix::fs::openat2(
                    root,
                    dir,
                    OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                    ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
                ) else {
                    return false;
                };
                fd
            }
        };
        let matches =
            rustix::fs::statat(&reuse_dir, name, AtFlags::SYMLINK_NOFOLLOW).is_ok_and(|st| {
                FileType::from_raw_mode(st.st_mode) == FileType::RegularFile
                    && u64::try_from(st.st_size) == Ok(size)
                    && st.st_mode & 0o7777 == meta.mode
                    && (st.st_uid, st.st_gid) == (meta.uid, meta.gid)
                    && st.st_mtime == meta.mtime
                    && st.st_mtime_nsec == 0
            });
        let linked = matches
            && rustix::fs::linkat(&reuse_dir, name, parent_fd, name, AtFlags::empty()).is_ok();
        self.reuse_parent = Some((parent.to_path_buf(), reuse_dir));
        linked
    }

    /// Mode, ownership, mtime and xattrs from the header and its PAX records.
    fn meta(
        &self,
        entry: &mut tar::Entry<'_, impl Read>,
        display: &str,
    ) -> Result<Meta, LayerError> {
        let header = entry.header();
        let bad = |what: &str| LayerError::UnsafePath {
            path: display.to_string(),
            reason: format!("invalid {what} in the tar header"),
        };
        let mut meta = Meta {
            mode: header.mode().map_err(|_| bad("mode"))? & 0o7777,
            uid: u32::try_from(header.uid().map_err(|_| bad("uid"))?).map_err(|_| bad("uid"))?,
            gid: u32::try_from(header.gid().map_err(|_| bad("gid"))?).map_err(|_| bad("gid"))?,
            mtime: i64::try_from(header.mtime().map_err(|_| bad("mtime"))?)
                .map_err(|_| bad("mtime"))?,
            xattrs: Vec::new(),
        };
        if let Some(pax) = entry.pax_extensions().map_err(LayerError::ReadTar)? {
            for record in pax {
                let record = record.map_err(LayerError::ReadTar)?;
                let Ok(key) = record.key() else { continue };
                let value = record.value_bytes();
                let text = std::str::from_utf8(value).unwrap_or("");
                match key {
                    "uid" => meta.uid = text.parse().map_err(|_| bad("PAX uid"))?,
                    "gid" => meta.gid = text.parse().map_err(|_| bad("PAX gid"))?,
                    "mtime" => {
                        let secs = text.split('.').next().unwrap_or("");
                        meta.mtime = secs.parse().map_err(|_| bad("PAX mtime"))?;
                    }
                    _ => {
                        if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                            meta.xattrs.push((name.to_string(), value.to_vec()));
                        }
                    }
                }
            }
        }
        Ok(meta)
    }

    /// Applies what `apply` asks of ownership, mode and mtime, and the xattrs, through an fd.
    fn set_fd_meta(
        &self,
        fd: &impl AsFd,
        path: &Path,
        meta: &Meta,
        apply: MetaToApply,
    ) -> Result<(), LayerError> {
        if self.is_root && apply.owner {
            rustix::fs::fchown(
                fd,
                Some(rustix::fs::Uid::from_raw(meta.uid)),
                Some(rustix::fs::Gid::from_raw(meta.gid)),
            )
            .map_err(|e| self.err(path, e))?;
        }
        // After chown, which clears setuid/setgid bits.
        if apply.mode {
            rustix::fs::fchmod(fd, Mode::from_raw_mode(meta.mode))
                .map_err(|e| self.err(path, e))?;
        }
        for (key, value) in &meta.xattrs {
            if key.starts_with("trusted.overlay.") {
                tracing::warn!(path = %path.display(), key, "ignoring overlayfs xattr from a layer");
                continue;
            }
            match rustix::fs::fsetxattr(fd, key.as_str(), value, XattrFlags::empty()) {
                Ok(()) => {}
                Err(e @ (Errno::NOTSUP | Errno::PERM)) => {
                    tracing::warn!(path = %path.display(), key, error = %e, "cannot set xattr");
                }
                Err(e) => return Err(self.err(path, e)),
            }
        }
        if apply.mtime {
            rustix::fs::futimens(fd, &timestamps(meta.mtime)).map_err(|e| self.err(path, e))?;
        }
        Ok(())
    }

    /// Applies ownership, mode (unless a symlink) and mtime by name, never following `name`.
    fn set_at_meta(
        &self,
        parent: &OwnedFd,
        name: &OsStr,
        path: &Path,
        meta: &Meta,
        set_mode: bool,
    ) -> Result<(), LayerError> {
        if self.is_root {
            rustix::fs::chownat(
                parent,
                name,
                Some(rustix::fs::Uid::from_raw(meta.uid)),
                Some(rustix::fs::Gid::from_raw(meta.gid)),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(|e| self.err(path, e))?;
        }
        if set_mode {
            // Only reached for device nodes and fifos we just created (not symlinks).
            rustix::fs::chmodat(
                parent,
                name,
                Mode::from_raw_mode(meta.mode),
                AtFlags::empty(),
            )
            .map_err(|e| self.err(path, e))?;
        }
        rustix::fs::utimensat(
            parent,
            name,
            &timestamps(meta.mtime),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| self.err(path, e))?;
        Ok(())
    }

    fn apply_opaque(&mut self, dir: &Path) -> Result<(), LayerError> {
        self.stats.whiteouts += 1;
        match self.mode {
            UnpackMode::Flatten => {
                let fd = match self.open_dir(dir) {
                    Ok(fd) => fd,
                    Err(Errno::NOENT) => return Ok(()),
                    Err(e) => return Err(self.err(dir, e)),
                };
                remove_lower_children(&fd, dir, &self.created).map_err(|e| self.err(dir, e))
            }
            UnpackMode::Overlay => {
                let fd = self.ensure_dir(dir)?;
                rustix::fs::fsetxattr(&fd, OVERLAY_OPAQUE_XATTR, b"y", XattrFlags::empty())
                    .map_err(|e| self.err(dir, e))
            }
        }
    }

    fn apply_whiteout(&mut self, parent: &Path, name: &OsStr) -> Result<(), LayerError> {
        self.stats.whiteouts += 1;
        let path = parent.join(name);
        match self.mode {
            UnpackMode::Flatten => {
                let fd = match self.open_dir(parent) {
                    Ok(fd) => fd,
                    Err(Errno::NOENT) => return Ok(()),
                    Err(e) => return Err(self.err(parent, e)),
                };
                remove_all_at(&fd, name).map_err(|e| self.err(&path, e))?;
            }
            UnpackMode::Overlay => {
                let fd = self.ensure_dir(parent)?;
                remove_all_at(&fd, name).map_err(|e| self.err(&path, e))?;
                rustix::fs::mknodat(
                    &fd,
                    name,
                    FileType::CharacterDevice,
                    Mode::empty(),
                    rustix::fs::makedev(0, 0),
                )
                .map_err(|e| self.err(&path, e))?;
                self.created.insert(path);
            }
        }
        Ok(())
    }

    /// Sets directory mtimes, deepest first, now that their contents are final.
    fn finish(mut self) -> Result<UnpackStats, LayerError> {
        let mut dir_times = std::mem::take(&mut self.dir_times);
        dir_times.sort_by_key(|(path, _)| std::cmp::Reverse(path.components().count()));
        for (path, mtime) in dir_times {
            match self.open_dir(&path) {
                Ok(fd) => {
                    rustix::fs::futimens(&fd, &timestamps(mtime)).map_err(|e| self.err(&path, e))?
                }
                // Removed by a later whiteout in the same layer.
                Err(Errno::NOENT) => {}
                Err(e) => return Err(self.err(&path, e)),
            }
        }
        Ok(self.stats)
    }
}

/// Removes `name` in `parent` (recursively for directories) without following symlinks.
/// A missing name is not an error.
fn remove_all_at(parent: &impl AsFd, name: &OsStr) -> Result<(), Errno> {
    let stat = match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(stat) => stat,
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(e),
    };
    if FileType::from_raw_mode(stat.st_mode) != FileType::Directory {
        return rustix::fs::unlinkat(parent, name, AtFlags::empty());
    }
    let dir = rustix::fs::openat(
        parent,
        name,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    for child in child_names(&dir)? {
        remove_all_at(&dir, &child)?;
    }
    rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR)
}

/// Names in a directory, without `.` and `..`.
fn child_names(dir: &OwnedFd) -> Result<Vec<std::ffi::OsString>, Errno> {
    let mut names = Vec::new();
    for child in rustix::fs::Dir::read_from(dir)? {
        let child = child?;
        let name = child.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(OsStr::from_bytes(name).to_os_string());
        }
    }
    Ok(names)
}

/// For an opaque directory in Flatten mode: deletes everything under `dir` that this layer did
/// not create, keeping this layer's own entries.
fn remove_lower_children(
    dir: &OwnedFd,
    dir_path: &Path,
    created: &HashSet<PathBuf>,
) -> Result<(), Errno> {
    for name in child_names(dir)? {
        let child_path = dir_path.join(&name);
        if !created.contains(&child_path) {
            remove_all_at(dir, &name)?;
            continue;
        }
        let is_dir = matches!(
            rustix::fs::statat(dir, &name, AtFlags::SYMLINK_NOFOLLOW),
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory
        );
        if is_dir {
            let child = rustix::fs::openat(
                dir,
                &name,
                OFlags::DIRECTORY | OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            remove_lower_children(&child, &child_path, created)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::tar_header::{self, HeaderFields, TypeFlag};
    use crate::layer::{
        Compression, Entry, EntryKind, FileSource, LayerOptions, write_layer, write_layer_deferred,
    };
    use crate::store::Store;
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};

    fn file(path: &str, content: &[u8]) -> Entry {
        Entry {
            path: path.to_string(),
            kind: EntryKind::File {
                source: FileSource::Bytes(content.to_vec()),
                size: content.len() as u64,
            },
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 1_600_000_000,
            xattrs: Vec::new(),
        }
    }

    fn node(path: &str, kind: EntryKind, mode: u32) -> Entry {
        Entry {
            kind,
            mode,
            ..file(path, b"")
        }
    }

    /// Writes entries as a layer and unpacks it into `dest`.
    fn layer_into(
        entries: Vec<Entry>,
        compression: Compression,
        dest: &Path,
        mode: UnpackMode,
    ) -> UnpackStats {
        let store_dir = tempfile::tempdir().unwrap();
        let store = Store::open(store_dir.path()).unwrap();
        let opts = LayerOptions {
            compression,
            source_date_epoch: None,
        };
        let info = write_layer(&store, entries, &opts).unwrap();
        unpack(store.open_blob(&info.digest).unwrap(), dest, mode).unwrap()
    }

    /// A raw tar, built without any validation, for malicious inputs.
    fn raw_tar(entries: &[(&str, TypeFlag, &str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, type_flag, link, data) in entries {
            out.extend(tar_header::encode(&HeaderFields {
                name,
                link_name: link,
                type_flag: *type_flag,
                mode: 0o755,
                uid: 0,
                gid: 0,
                size: data.len() as u64,
                mtime: 0,
                dev_major: 0,
                dev_minor: 0,
                xattrs: &[],
            }));
            out.extend_from_slice(data);
            out.resize(out.len() + tar_header::padding(data.len() as u64), 0);
        }
        out.resize(out.len() + 1024, 0);
        out
    }

    #[test]
    fn round_trip_keeps_content_modes_owners_times_links_devices_and_xattrs() {
        let dest = tempfile::tempdir().unwrap();
        let mut owned = file("etc/owned", b"mine");
        owned.uid = 1234;
        owned.gid = 4321;
        owned.mode = 0o4750;
        let long = format!("etc/{}", "L".repeat(180));
        let entries = vec![
            node("etc", EntryKind::Dir, 0o751),
            file("etc/hosts", b"127.0.0.1 localhost\n"),
            owned,
            file(&long, b"long"),
            node(
                "etc/hard",
                EntryKind::Hardlink {
                    target: "etc/hosts".into(),
                },
                0o644,
            ),
            node(
                "etc/sym",
                EntryKind::Symlink {
                    target: "/etc/hosts".into(),
                },
                0o777,
            ),
            node("etc/fifo", EntryKind::Fifo, 0o600),
            node(
                "dev/null",
                EntryKind::CharDevice { major: 1, minor: 3 },
                0o666,
            ),
            Entry {
                xattrs: vec![("user.note".into(), b"hello".to_vec())],
                ..file("etc/xattr", b"x")
            },
        ];
        for compression in [
            Compression::DEFAULT_GZIP,
            Compression::Zstd { level: 1 },
            Compression::Uncompressed,
        ] {
            let dest = dest.path().join(format!("{compression:?}"));
            let stats = layer_into(entries.clone(), compression, &dest, UnpackMode::Flatten);
            assert_eq!(stats.entries, 9);
            let etc = dest.join("etc");
            assert_eq!(
                std::fs::read(etc.join("hosts")).unwrap(),
                b"127.0.0.1 localhost\n"
            );
            assert_eq!(std::fs::read(etc.join(&long[4..])).unwrap(), b"long");
            let hosts = std::fs::metadata(etc.join("hosts")).unwrap();
            let hard = std::fs::metadata(etc.join("hard")).unwrap();
            assert_eq!(hosts.ino(), hard.ino(), "hard link shares the inode");
            assert_eq!(hosts.mtime(), 1_600_000_000);
            assert_eq!(
                std::fs::read_link(etc.join("sym")).unwrap(),
                Path::new("/etc/hosts")
            );
            assert!(
                std::fs::symlink_metadata(etc.join("fifo"))
                    .unwrap()
                    .file_type()
                    .is_fifo()
            );
            assert_eq!(
                std::fs::metadata(&etc).unwrap().permissions().mode() & 0o7777,
                0o751
            );
            assert_eq!(
                std::fs::metadata(&etc).unwrap().mtime(),
                1_600_000_000,
                "dir mtime set last"
            );
            let owned = std::fs::metadata(etc.join("owned")).unwrap();
            assert_eq!(owned.permissions().mode() & 0o7777, 0o4750);
            if rustix::process::geteuid().is_root() {
                assert_eq!((owned.uid(), owned.gid()), (1234, 4321));
                let null = std::fs::metadata(dest.join("dev/null")).unwrap();
                assert!(null.file_type().is_char_device());
                assert_eq!(null.rdev(), rustix::fs::makedev(1, 3));
            }
            let mut value = vec![0u8; 16];
            let n =
                rustix::fs::getxattr(etc.join("xattr").as_path(), "user.note", &mut value).unwrap();
            assert_eq!(&value[..n], b"hello");
        }
    }

    #[test]
    fn files_get_their_own_mode_and_owner_whatever_the_umask_or_a_setgid_parent() {
        let dest = tempfile::tempdir().unwrap();
        let shared = Entry {
            gid: 4321,
            ..node("shared", EntryKind::Dir, 0o2775)
        };
        let entries = vec![
            shared,
            // 0o666 and 0o777 lose bits to the usual umask (022) when created.
            Entry {
                mode: 0o666,
                ..file("shared/world-writable", b"w")
            },
            Entry {
                mode: 0o777,
                ..file("plain/all", b"a")
            },
            Entry {
                mode: 0o640,
                uid: 7,
                gid: 8,
                ..file("plain/owned", b"o")
            },
            file("plain/usual", b"u"),
        ];
        let dest = dest.path().join("out");
        layer_into(
            entries,
            Compression::DEFAULT_GZIP,
            &dest,
            UnpackMode::Overlay,
        );
        let meta = |path: &str| std::fs::metadata(dest.join(path)).unwrap();
        assert_eq!(meta("shared").mode() & 0o7777, 0o2775);
        assert_eq!(meta("shared/world-writable").mode() & 0o7777, 0o666);
        assert_eq!(meta("plain/all").mode() & 0o7777, 0o777);
        assert_eq!(meta("plain/owned").mode() & 0o7777, 0o640);
        assert_eq!(meta("plain/usual").mode() & 0o7777, 0o644);
        if rustix::process::geteuid().is_root() {
            assert_eq!(
                meta("shared/world-writable").gid(),
                0,
                "the layer's group, not the setgid parent's"
            );
            assert_eq!(
                (meta("plain/owned").uid(), meta("plain/owned").gid()),
                (7, 8)
            );
            assert_eq!(
                (meta("plain/usual").uid(), meta("plain/usual").gid()),
                (0, 0)
            );
        }
    }

    #[test]
    fn directories_get_their_own_mode_and_owner_and_serve_the_entries_inside_them() {
        let dest = tempfile::tempdir().unwrap();
        let entries = vec![
            // 0o777 loses bits to the usual umask (022) when created.
            node("open", EntryKind::Dir, 0o777),
            file("open/f", b"f"),
            Entry {
                uid: 7,
                gid: 8,
                ..node("private", EntryKind::Dir, 0o700)
            },
            Entry {
                mode: 0o600,
                uid: 7,
                gid: 8,
                ..file("private/f", b"p")
            },
            node("sticky", EntryKind::Dir, 0o1777),
            Entry {
                gid: 4321,
                ..node("shared", EntryKind::Dir, 0o2775)
            },
            // mkdir in a setgid directory makes a setgid directory of the parent's group.
            node("shared/plain", EntryKind::Dir, 0o755),
            file("shared/plain/f", b"s"),
        ];
        let dest = dest.path().join("out");
        layer_into(
            entries,
            Compression::DEFAULT_GZIP,
            &dest,
            UnpackMode::Overlay,
        );
        let meta = |path: &str| std::fs::metadata(dest.join(path)).unwrap();
        assert_eq!(meta("open").mode() & 0o7777, 0o777);
        assert_eq!(meta("private").mode() & 0o7777, 0o700);
        assert_eq!(meta("sticky").mode() & 0o7777, 0o1777);
        assert_eq!(meta("shared").mode() & 0o7777, 0o2775);
        assert_eq!(meta("shared/plain").mode() & 0o7777, 0o755);
        assert_eq!(std::fs::read(dest.join("open/f")).unwrap(), b"f");
        assert_eq!(meta("open/f").mode() & 0o7777, 0o644);
        assert_eq!(meta("private/f").mode() & 0o7777, 0o600);
        assert_eq!(meta("shared/plain/f").mode() & 0o7777, 0o644);
        if rustix::process::geteuid().is_root() {
            assert_eq!((meta("private").uid(), meta("private").gid()), (7, 8));
            assert_eq!((meta("private/f").uid(), meta("private/f").gid()), (7, 8));
            assert_eq!((meta("open").uid(), meta("open").gid()), (0, 0));
            assert_eq!(
                (meta("shared/plain").gid(), meta("shared/plain/f").gid()),
                (0, 0),
                "the layer's group, not the setgid parent's"
            );
        }
    }

    #[test]
    fn reusable_files_are_linked_only_when_they_match_and_never_through_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        let opts = LayerOptions {
            compression: Compression::Uncompressed,
            source_date_epoch: None,
        };
        // An earlier snapshot of the same files, as an earlier unpack made it.
        let same = file("app/same.txt", b"same");
        let other_mode = file("app/mode.txt", b"mode");
        let previous = dir.path().join("previous");
        let entries = vec![
            same.clone(),
            Entry {
                mode: 0o600,
                ..other_mode.clone()
            },
        ];
        write_layer_deferred(&store, entries, &opts, Some(&previous), None)
            .unwrap()
            .wait()
            .unwrap();
        std::os::unix::fs::symlink(previous.join("app"), previous.join("via")).unwrap();

        let reuse = ReusableFiles {
            root: previous.clone(),
            paths: ["app/same.txt", "app/mode.txt", "via/same.txt"]
                .map(String::from)
                .into(),
        };
        let next = dir.path().join("next");
        let entries = vec![same, other_mode, file("via/same.txt", b"same")];
        write_layer_deferred(&store, entries, &opts, Some(&next), Some(reuse))
            .unwrap()
            .wait()
            .unwrap();
        let ino = |path: &Path| std::fs::metadata(path).unwrap().ino();
        if rustix::process::geteuid().is_root() {
            assert_eq!(
                ino(&next.join("app/same.txt")),
                ino(&previous.join("app/same.txt")),
                "a matching file is linked"
            );
        }
        assert_ne!(
            ino(&next.join("app/mode.txt")),
            ino(&previous.join("app/mode.txt"))
        );
        assert_eq!(
            std::fs::metadata(next.join("app/mode.txt")).unwrap().mode() & 0o7777,
            0o644
        );
        assert_ne!(
            ino(&next.join("via/same.txt")),
            ino(&previous.join("app/same.txt")),
            "never linked through a symlink"
        );
        assert_eq!(std::fs::read(next.join("via/same.txt")).unwrap(), b"same");
    }

    #[test]
    fn dot_dot_entries_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("root");
        let tar = raw_tar(&[("../escaped", TypeFlag::Regular, "", b"pwned")]);
        let err = unpack(&tar[..], &dest, UnpackMode::Flatten).unwrap_err();
        assert!(matches!(err, LayerError::UnsafePath { .. }), "{err}");
        assert!(!dir.path().join("escaped").exists());

        let tar = raw_tar(&[("a/../../x", TypeFlag::Regular, "", b"pwned")]);
        assert!(matches!(
            unpack(&tar[..], &dest, UnpackMode::Flatten),
            Err(LayerError::UnsafePath { .. })
        ));
        let tar = raw_tar(&[("h", TypeFlag::Hardlink, "../../etc/passwd", b"")]);
        assert!(matches!(
            unpack(&tar[..], &dest, UnpackMode::Flatten),
            Err(LayerError::UnsafePath { .. })
        ));
    }

    #[test]
    fn absolute_names_stay_inside_dest() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("root");
        let outside = dir.path().join("outside.txt");
        let name = outside.display().to_string();
        let tar = raw_tar(&[(name.as_str(), TypeFlag::Regular, "", b"contained")]);
        unpack(&tar[..], &dest, UnpackMode::Flatten).unwrap();
        assert!(!outside.exists());
        let inside = dest.join(name.trim_start_matches('/'));
        assert_eq!(std::fs::read(inside).unwrap(), b"contained");
    }

    #[test]
    fn symlinked_parents_cannot_lead_outside() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("root");
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        let outside_abs = outside.display().to_string();
        for (link_target, label) in [
            (outside_abs.as_str(), "absolute"),
            ("../../../../../../", "relative"),
        ] {
            let tar = raw_tar(&[
                ("evil", TypeFlag::Symlink, link_target, b""),
                ("evil/pwned", TypeFlag::Regular, "", b"pwned"),
            ]);
            // Either an error or contained: never a file outside.
            let _ = unpack(&tar[..], &dest, UnpackMode::Flatten);
            assert!(!outside.join("pwned").exists(), "{label}");
            assert!(!dir.path().join("pwned").exists(), "{label}");
            let _ = std::fs::remove_dir_all(&dest);
        }
        // With the relative link, IN_ROOT clamps ".." at dest: the file lands in dest itself.
        let tar = raw_tar(&[
            ("up", TypeFlag::Symlink, "../../../../../../", b""),
            ("up/inside", TypeFlag::Regular, "", b"ok"),
        ]);
        unpack(&tar[..], &dest, UnpackMode::Flatten).unwrap();
        assert_eq!(std::fs::read(dest.join("inside")).unwrap(), b"ok");
    }

    #[test]
    fn symlinked_parents_inside_dest_are_followed_within_dest() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("root");
        // Merged-/usr style: "lib" is an absolute symlink to "/usr/lib", meaning dest/usr/lib.
        let tar = raw_tar(&[
            ("usr/lib/", TypeFlag::Dir, "", b""),
            ("lib", TypeFlag::Symlink, "/usr/lib", b""),
            ("lib/libc.so", TypeFlag::Regular, "", b"elf"),
            ("lib/libc.so.6", TypeFlag::Hardlink, "lib/libc.so", b""),
        ]);
        unpack(&tar[..], &dest, UnpackMode::Flatten).unwrap();
        assert_eq!(std::fs::read(dest.join("usr/lib/libc.so")).unwrap(), b"elf");
        let a = std::fs::metadata(dest.join("usr/lib/libc.so")).unwrap();
        let b = std::fs::metadata(dest.join("usr/lib/libc.so.6")).unwrap();
        assert_eq!(a.ino(), b.ino());
    }

    #[test]
    fn overlay_xattrs_from_a_layer_are_not_applied() {
        let dest = tempfile::tempdir().unwrap();
        let sneaky = Entry {
            xattrs: vec![
                ("trusted.overlay.redirect".into(), b"/etc".to_vec()),
                ("user.fine".into(), b"1".to_vec()),
            ],
            ..file("f", b"x")
        };
        layer_into(
            vec![sneaky],
            Compression::DEFAULT_GZIP,
            dest.path(),
            UnpackMode::Overlay,
        );
        let path = dest.path().join("f");
        let mut value = [0u8; 8];
        assert!(
            rustix::fs::getxattr(path.as_path(), "trusted.overlay.redirect", &mut value).is_err()
        );
        assert_eq!(
            rustix::fs::getxattr(path.as_path(), "user.fine", &mut value).unwrap(),
            1
        );
    }

    #[test]
    fn a_file_entry_replaces_a_symlink_instead_of_writing_through_it() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("root");
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"original").unwrap();
        let victim_abs = victim.display().to_string();
        let tar = raw_tar(&[
            ("f", TypeFlag::Symlink, victim_abs.as_str(), b""),
            ("f", TypeFlag::Regular, "", b"pwned"),
        ]);
        unpack(&tar[..], &dest, UnpackMode::Flatten).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"original");
        assert_eq!(std::fs::read(dest.join("f")).unwrap(), b"pwned");
    }

    #[test]
    fn hard_links_cannot_reach_outside_files() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("root");
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"secret").unwrap();
        let victim_abs = victim.display().to_string();
        let via_symlink = format!("sl{victim_abs}");
        for tar in [
            raw_tar(&[("h", TypeFlag::Hardlink, victim_abs.as_str(), b"")]),
            raw_tar(&[
                ("sl", TypeFlag::Symlink, "/", b""),
                ("h", TypeFlag::Hardlink, via_symlink.as_str(), b""),
            ]),
        ] {
            assert!(unpack(&tar[..], &dest, UnpackMode::Flatten).is_err());
            assert_eq!(std::fs::metadata(&victim).unwrap().nlink(), 1);
        }
    }

    #[test]
    fn flatten_applies_whiteouts_and_opaque_dirs() {
        let dest = tempfile::tempdir().unwrap();
        let lower = vec![
            node("a", EntryKind::Dir, 0o755),
            file("a/x", b"x"),
            node("a/sub", EntryKind::Dir, 0o755),
            file("a/sub/old", b"old"),
            node("b", EntryKind::Dir, 0o755),
            file("b/z", b"z"),
            file("keep", b"keep"),
        ];
        layer_into(
            lower,
            Compression::DEFAULT_GZIP,
            dest.path(),
            UnpackMode::Flatten,
        );
        let upper = vec![
            node("a", EntryKind::OpaqueDir, 0o755),
            node("a", EntryKind::Dir, 0o755),
            node("a/sub", EntryKind::Dir, 0o755),
            file("a/sub/new", b"new"),
            node("b", EntryKind::Whiteout, 0),
        ];
        let stats = layer_into(
            upper,
            Compression::DEFAULT_GZIP,
            dest.path(),
            UnpackMode::Flatten,
        );
        assert_eq!(stats.whiteouts, 2);
        assert!(!dest.path().join("b").exists());
        assert!(!dest.path().join("a/x").exists());
        assert!(!dest.path().join("a/sub/old").exists());
        assert!(dest.path().join("a/sub/new").exists());
        assert!(dest.path().join("keep").exists());
    }

    #[test]
    fn opaque_marker_after_siblings_spares_this_layers_content() {
        let dest = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dest.path().join("d")).unwrap();
        std::fs::write(dest.path().join("d/lower"), b"l").unwrap();
        let tar = raw_tar(&[
            ("d/", TypeFlag::Dir, "", b""),
            ("d/mine", TypeFlag::Regular, "", b"m"),
            ("d/.wh..wh..opq", TypeFlag::Regular, "", b""),
        ]);
        unpack(&tar[..], dest.path(), UnpackMode::Flatten).unwrap();
        assert!(!dest.path().join("d/lower").exists());
        assert!(dest.path().join("d/mine").exists());
    }

    #[test]
    fn overlay_mode_converts_whiteouts_to_overlayfs_form() {
        let dest = tempfile::tempdir().unwrap();
        let upper = vec![
            node("a", EntryKind::OpaqueDir, 0o755),
            node("a", EntryKind::Dir, 0o755),
            node("gone", EntryKind::Whiteout, 0),
        ];
        let stats = layer_into(
            upper,
            Compression::DEFAULT_GZIP,
            dest.path(),
            UnpackMode::Overlay,
        );
        assert_eq!(stats.whiteouts, 2);
        let gone = std::fs::symlink_metadata(dest.path().join("gone")).unwrap();
        assert!(gone.file_type().is_char_device());
        assert_eq!(gone.rdev(), 0);
        let mut value = [0u8; 4];
        let n = rustix::fs::getxattr(
            dest.path().join("a").as_path(),
            OVERLAY_OPAQUE_XATTR,
            &mut value,
        )
        .unwrap();
        assert_eq!(&value[..n], b"y");
    }

    #[test]
    fn truncated_or_garbage_input_is_an_error() {
        let dest = tempfile::tempdir().unwrap();
        let mut tar = raw_tar(&[("f", TypeFlag::Regular, "", &[7u8; 5000])]);
        tar.truncate(1500);
        assert!(unpack(&tar[..], dest.path(), UnpackMode::Flatten).is_err());
        let garbage = [0x1f, 0x8b, 8, 0, 1, 2, 3, 4, 5, 6, 7];
        assert!(unpack(&garbage[..], dest.path(), UnpackMode::Flatten).is_err());
    }

    /// A reader that yields `good` bytes, then fails: a disk or network error mid-layer.
    struct FailingAfter<'a> {
        good: &'a [u8],
    }

    impl Read for FailingAfter<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.good.is_empty() {
                return Err(io::Error::other("disk on fire"));
            }
            let n = buf.len().min(self.good.len());
            buf[..n].copy_from_slice(&self.good[..n]);
            self.good = &self.good[n..];
            Ok(n)
        }
    }

    #[test]
    fn a_read_error_between_entries_fails_the_unpack_instead_of_ending_it() {
        let dest = tempfile::tempdir().unwrap();
        let tar = raw_tar(&[
            ("a", TypeFlag::Regular, "", &[1u8; 512]),
            ("b", TypeFlag::Regular, "", &[2u8; 512]),
        ]);
        // Cut exactly at the boundary after "a": a clean end here would look like a valid tar.
        let err = unpack(
            FailingAfter { good: &tar[..1024] },
            dest.path(),
            UnpackMode::Flatten,
        )
        .unwrap_err();
        assert!(err.to_string().contains("disk on fire"), "{err}");
    }

    #[test]
    fn many_files_across_read_ahead_chunks_and_dirs_all_arrive() {
        let dest = tempfile::tempdir().unwrap();
        let mut entries = Vec::new();
        for dir in 0..5 {
            entries.push(node(&format!("d{dir}"), EntryKind::Dir, 0o755));
            for index in 0..60 {
                let content = vec![(dir * 60 + index) as u8; 9000 + index];
                entries.push(file(&format!("d{dir}/f{index}"), &content));
            }
        }
        let stats = layer_into(
            entries,
            Compression::DEFAULT_GZIP,
            dest.path(),
            UnpackMode::Flatten,
        );
        assert_eq!(stats.entries, 5 + 5 * 60);
        for dir in 0..5 {
            for index in 0..60 {
                let content = std::fs::read(dest.path().join(format!("d{dir}/f{index}"))).unwrap();
                assert_eq!(content, vec![(dir * 60 + index) as u8; 9000 + index]);
            }
        }
    }

    #[test]
    fn a_whiteout_of_the_current_directory_is_not_written_through_a_stale_fd() {
        let dest = tempfile::tempdir().unwrap();
        // Unsorted on purpose: x/y/a, then x/y removed, then x/y/b must land in a new x/y.
        let tar = raw_tar(&[
            ("x/y/a", TypeFlag::Regular, "", b"a"),
            ("x/.wh.y", TypeFlag::Regular, "", b""),
            ("x/y/b", TypeFlag::Regular, "", b"b"),
        ]);
        unpack(&tar[..], dest.path(), UnpackMode::Flatten).unwrap();
        assert!(!dest.path().join("x/y/a").exists());
        assert_eq!(std::fs::read(dest.path().join("x/y/b")).unwrap(), b"b");
    }

    #[test]
    fn a_file_replaces_an_existing_file_of_a_lower_layer() {
        let dest = tempfile::tempdir().unwrap();
        unpack(
            &raw_tar(&[("f", TypeFlag::Regular, "", b"old content")])[..],
            dest.path(),
            UnpackMode::Flatten,
        )
        .unwrap();
        unpack(
            &raw_tar(&[("f", TypeFlag::Regular, "", b"new")])[..],
            dest.path(),
            UnpackMode::Flatten,
        )
        .unwrap();
        assert_eq!(std::fs::read(dest.path().join("f")).unwrap(), b"new");
    }
}

//! Turning an overlayfs upper dir into layer entries: the upper dir IS the diff.
//!
//! Conversion rules:
//! - a character device 0/0 (overlay whiteout), or an empty file with the
//!   `trusted.overlay.whiteout` xattr, becomes [`EntryKind::Whiteout`];
//! - a dir with `trusted.overlay.opaque` = `y` becomes a [`EntryKind::Dir`] entry followed by
//!   an [`EntryKind::OpaqueDir`] entry for the same path (then its children);
//! - a regular file becomes [`FileSource::Path`] into the upper dir; a second path of the same
//!   inode becomes [`EntryKind::Hardlink`] to the first one in walk order (sorted, depth first);
//! - modes, uid/gid, mtimes and xattrs are kept, except `trusted.overlay.*` ones;
//! - sockets are skipped (a tar cannot hold them);
//! - upper entries made by `redirect_dir` or `metacopy` are refused: the mount turns both off.
//!
//! Mount-point placeholders: for bind mounts and the file systems of a container (`/proc`,
//! `/sys`, `/dev`, `/etc/hosts`, `/etc/resolv.conf`, ...) the runtime creates the mount point in
//! the rootfs when it is missing, which lands in the upper dir. Writes through the mounts never
//! reach the upper dir, so only these placeholders need care. An upper entry is skipped when
//! - its path is a mount point, it is an empty regular file or an empty dir (after skipping its
//!   children), and no lower has that path; or
//! - it is a dir on the way to a mount point (e.g. `etc` for `etc/hosts`) whose upper
//!   children were all skipped, that is not opaque, and that is either absent from the lowers
//!   or present there with the same mode and owner (a copy-up caused only by the placeholder).
//!
//! "A lower has the path" means the top-most lower holding the path (resolved inside that
//! lower, never following its symlinks out of it) has something other than a whiteout there.
//! Known gap: a mount point reached through a symlink in the rootfs (e.g. `/etc/resolv.conf`
//! pointing into `/run`) gets its placeholder where the link points, which is not recognised.

use std::collections::HashMap;
use std::fs;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags, ResolveFlags};

use super::error::SnapshotError;
use crate::layer::{Entry, EntryKind, FileSource};

/// Mount points an OCI runtime may create in a container's rootfs (relative, no leading `/`).
pub const DEFAULT_MOUNT_POINTS: &[&str] = &[
    "proc",
    "sys",
    "dev",
    "dev/pts",
    "dev/shm",
    "dev/mqueue",
    "etc/hosts",
    "etc/resolv.conf",
    "etc/hostname",
];

const OVERLAY_XATTR_PREFIX: &str = "trusted.overlay.";
const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
const WHITEOUT_XATTR: &str = "trusted.overlay.whiteout";
const REDIRECT_XATTR: &str = "trusted.overlay.redirect";
const METACOPY_XATTR: &str = "trusted.overlay.metacopy";

/// The entries of the layer that `upper` (an overlay upper dir over `lowers`, top-most first)
/// represents, skipping placeholders of [`DEFAULT_MOUNT_POINTS`].
pub fn diff_upper(upper: &Path, lowers: &[PathBuf]) -> Result<Vec<Entry>, SnapshotError> {
    diff_upper_ignoring(upper, lowers, &[])
}

/// Like [`diff_upper`], with more mount points whose placeholders to skip (the destinations
/// of the RUN's bind and tmpfs mounts), absolute or relative.
pub fn diff_upper_ignoring(
    upper: &Path,
    lowers: &[PathBuf],
    extra_mount_points: &[String],
) -> Result<Vec<Entry>, SnapshotError> {
    let mut lower_dirs = Vec::with_capacity(lowers.len());
    for lower in lowers {
        let fd = rustix::fs::open(
            lower,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| SnapshotError::io("opening lower dir", lower, e))?;
        lower_dirs.push(fd);
    }
    let mount_points = DEFAULT_MOUNT_POINTS
        .iter()
        .map(|p| p.to_string())
        .chain(extra_mount_points.iter().map(|p| normalize(p)))
        .filter(|p| !p.is_empty())
        .collect();
    let mut differ = Differ {
        lower_dirs,
        mount_points,
        first_path_of_inode: HashMap::new(),
    };
    let mut entries = Vec::new();
    differ.walk_dir("", upper, &mut entries)?;
    Ok(entries)
}

/// `/a//b/` -> `a/b`.
fn normalize(path: &str) -> String {
    path.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect::<Vec<_>>()
        .join("/")
}

struct Differ {
    lower_dirs: Vec<OwnedFd>,
    mount_points: Vec<String>,
    first_path_of_inode: HashMap<(u64, u64), String>,
}

impl Differ {
    fn walk_dir(
        &mut self,
        rel: &str,
        abs: &Path,
        out: &mut Vec<Entry>,
    ) -> Result<(), SnapshotError> {
        let mut names = Vec::new();
        for item in fs::read_dir(abs).map_err(|e| SnapshotError::io("reading dir", abs, e))? {
            let item = item.map_err(|e| SnapshotError::io("reading dir", abs, e))?;
            let name =
                item.file_name()
                    .into_string()
                    .map_err(|name| SnapshotError::Unsupported {
                        path: abs.join(&name),
                        reason: "file name is not UTF-8".to_string(),
                    })?;
            names.push(name);
        }
        names.sort_unstable();
        for name in names {
            let child_rel = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            self.visit(&child_rel, &abs.join(&name), out)?;
        }
        Ok(())
    }

    fn visit(&mut self, rel: &str, abs: &Path, out: &mut Vec<Entry>) -> Result<(), SnapshotError> {
        let meta = fs::symlink_metadata(abs).map_err(|e| SnapshotError::io("stat", abs, e))?;
        let file_type = meta.file_type();
        let all_xattrs = read_xattrs(abs)?;
        let has_xattr = |name: &str| all_xattrs.iter().any(|(n, _)| n == name);
        if has_xattr(REDIRECT_XATTR) || has_xattr(METACOPY_XATTR) {
            return Err(SnapshotError::Unsupported {
                path: abs.to_path_buf(),
                reason: "overlay redirect/metacopy entry; mount the overlay with redirect_dir=off,metacopy=off"
                    .to_string(),
            });
        }
        let is_whiteout = (file_type.is_char_device() && meta.rdev() == 0)
            || (file_type.is_file() && meta.len() == 0 && has_xattr(WHITEOUT_XATTR));
        if is_whiteout {
            out.push(Entry {
                path: rel.to_string(),
                kind: EntryKind::Whiteout,
                mode: 0,
                uid: 0,
                gid: 0,
                mtime: 0,
                xattrs: Vec::new(),
            });
            return Ok(());
        }
        let opaque = all_xattrs
            .iter()
            .any(|(n, v)| n == OPAQUE_XATTR && v.as_slice() == b"y");
        let xattrs: Vec<(String, Vec<u8>)> = all_xattrs
            .into_iter()
            .filter(|(n, _)| !n.starts_with(OVERLAY_XATTR_PREFIX))
            .collect();
        let entry = |kind| Entry {
            path: rel.to_string(),
            kind,
            mode: meta.mode() & 0o7777,
            uid: u64::from(meta.uid()),
            gid: u64::from(meta.gid()),
            mtime: u64::try_from(meta.mtime()).unwrap_or(0),
            xattrs: xattrs.clone(),
        };
        if file_type.is_dir() {
            let mut children = Vec::new();
            self.walk_dir(rel, abs, &mut children)?;
            if children.is_empty() && !opaque && self.is_placeholder_dir(rel, &meta) {
                tracing::debug!("diff: skipping mount-point placeholder dir {rel}");
                return Ok(());
            }
            out.push(entry(EntryKind::Dir));
            if opaque {
                let mut marker = entry(EntryKind::OpaqueDir);
                marker.xattrs.clear();
                out.push(marker);
            }
            out.extend(children);
        } else if file_type.is_file() {
            if meta.len() == 0 && self.is_mount_point(rel) && self.lower_stat(rel).is_none() {
                tracing::debug!("diff: skipping mount-point placeholder file {rel}");
                return Ok(());
            }
            if meta.nlink() > 1 {
                let key = (meta.dev(), meta.ino());
                if let Some(first) = self.first_path_of_inode.get(&key) {
                    out.push(entry(EntryKind::Hardlink {
                        target: first.clone(),
                    }));
                    return Ok(());
                }
                self.first_path_of_inode.insert(key, rel.to_string());
            }
            out.push(entry(EntryKind::File {
                source: FileSource::Path(abs.to_path_buf()),
                size: meta.len(),
            }));
        } else if file_type.is_symlink() {
            let target =
                fs::read_link(abs).map_err(|e| SnapshotError::io("reading symlink", abs, e))?;
            let target =
                target
                    .into_os_string()
                    .into_string()
                    .map_err(|_| SnapshotError::Unsupported {
                        path: abs.to_path_buf(),
                        reason: "symlink target is not UTF-8".to_string(),
                    })?;
            out.push(entry(EntryKind::Symlink { target }));
        } else if file_type.is_char_device() || file_type.is_block_device() {
            let rdev = meta.rdev();
            let (major, minor) = (rustix::fs::major(rdev), rustix::fs::minor(rdev));
            out.push(entry(if file_type.is_char_device() {
                EntryKind::CharDevice { major, minor }
            } else {
                EntryKind::BlockDevice { major, minor }
            }));
        } else if file_type.is_fifo() {
            out.push(entry(EntryKind::Fifo));
        } else {
            tracing::debug!("diff: skipping socket {rel}: a layer cannot hold sockets");
        }
        Ok(())
    }

    fn is_mount_point(&self, rel: &str) -> bool {
        self.mount_points.iter().any(|m| m == rel)
    }

    fn is_mount_point_or_ancestor(&self, rel: &str) -> bool {
        self.mount_points
            .iter()
            .any(|m| m == rel || (m.starts_with(rel) && m.as_bytes().get(rel.len()) == Some(&b'/')))
    }

    /// Whether an upper dir with no (kept) children exists only because of mount points.
    fn is_placeholder_dir(&self, rel: &str, meta: &fs::Metadata) -> bool {
        if !self.is_mount_point_or_ancestor(rel) {
            return false;
        }
        match self.lower_stat(rel) {
            None => true,
            Some(lower) => {
                let lower_is_dir = rustix::fs::FileType::from_raw_mode(lower.st_mode)
                    == rustix::fs::FileType::Directory;
                // A mount point itself that already exists in a lower is never created by the
                // runtime, so an upper copy of it means a real change.
                lower_is_dir
                    && !self.is_mount_point(rel)
                    && lower.st_mode & 0o7777 == meta.mode() & 0o7777
                    && lower.st_uid == meta.uid()
                    && lower.st_gid == meta.gid()
            }
        }
    }

    /// The stat of `rel` in the top-most lower that has it, or `None` if no lower has it or
    /// the top-most one holding it has a whiteout there.
    fn lower_stat(&self, rel: &str) -> Option<rustix::fs::Stat> {
        for lower in &self.lower_dirs {
            let flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            let Ok(fd) =
                rustix::fs::openat2(lower, rel, flags, Mode::empty(), ResolveFlags::IN_ROOT)
            else {
                continue;
            };
            let Ok(stat) = rustix::fs::fstat(&fd) else {
                continue;
            };
            let is_whiteout = rustix::fs::FileType::from_raw_mode(stat.st_mode)
                == rustix::fs::FileType::CharacterDevice
                && stat.st_rdev == 0;
            return if is_whiteout { None } else { Some(stat) };
        }
        None
    }
}

/// All extended attributes of `path` (not following a symlink), sorted by name.
/// A file system without xattr support has none.
fn read_xattrs(path: &Path) -> Result<Vec<(String, Vec<u8>)>, SnapshotError> {
    let unsupported =
        |e: rustix::io::Errno| e == rustix::io::Errno::NOTSUP || e == rustix::io::Errno::OPNOTSUPP;
    let size = match rustix::fs::llistxattr_query(path) {
        Ok(0) => return Ok(Vec::new()),
        Ok(size) => size,
        Err(e) if unsupported(e) => return Ok(Vec::new()),
        Err(e) => return Err(SnapshotError::io("listing xattrs", path, e)),
    };
    let mut names = vec![0u8; size];
    let len = rustix::fs::llistxattr(path, &mut names[..])
        .map_err(|e| SnapshotError::io("listing xattrs", path, e))?;
    names.truncate(len);
    let mut xattrs = Vec::new();
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name = String::from_utf8(name.to_vec()).map_err(|_| SnapshotError::Unsupported {
            path: path.to_path_buf(),
            reason: "xattr name is not UTF-8".to_string(),
        })?;
        let read_error = |e| SnapshotError::io("reading an xattr of", path, e);
        let value_size = rustix::fs::lgetxattr_query(path, name.as_str()).map_err(read_error)?;
        let mut value = vec![0u8; value_size];
        let value_len =
            rustix::fs::lgetxattr(path, name.as_str(), &mut value[..]).map_err(read_error)?;
        value.truncate(value_len);
        xattrs.push((name, value));
    }
    xattrs.sort();
    Ok(xattrs)
}

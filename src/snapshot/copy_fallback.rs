//! The slow path where overlayfs is unavailable: merge the lowers by copying them into the
//! target, and at the end write what changed (by stat comparison) into the upper dir in overlay
//! form (0/0 whiteout devices, `trusted.overlay.opaque`), so `diff_upper` handles both paths.
//!
//! A dir deleted and re-created is recognised by a new inode or birth time and becomes opaque;
//! where neither tells (inode reused, no birth time), its old children get whiteouts instead,
//! which hides the same files.
//!
//! Writing whiteouts and the opaque xattr needs CAP_MKNOD and CAP_SYS_ADMIN, as running a
//! container does anyway.

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, Timespec, Timestamps, XattrFlags};

use super::error::SnapshotError;

/// What identifies a file's state: any change of content or metadata changes one of these.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    mtime_ns: (i64, i64),
    ctime_ns: (i64, i64),
    /// Birth time where the file system records it: tells a re-created dir from the old one
    /// when the inode number is reused.
    birth: Option<(i64, u32)>,
}

impl Stamp {
    fn of(path: &Path, meta: &fs::Metadata) -> Stamp {
        let birth = rustix::fs::statx(
            rustix::fs::CWD,
            path,
            AtFlags::SYMLINK_NOFOLLOW,
            rustix::fs::StatxFlags::BTIME,
        )
        .ok()
        .filter(|statx| statx.stx_mask & rustix::fs::StatxFlags::BTIME.bits() != 0)
        .map(|statx| (statx.stx_btime.tv_sec, statx.stx_btime.tv_nsec));
        Stamp {
            birth,
            dev: meta.dev(),
            ino: meta.ino(),
            mode: meta.mode(),
            uid: meta.uid(),
            gid: meta.gid(),
            size: meta.size(),
            mtime_ns: (meta.mtime(), meta.mtime_nsec()),
            ctime_ns: (meta.ctime(), meta.ctime_nsec()),
        }
    }

    fn is_dir(&self) -> bool {
        FileType::from_raw_mode(self.mode) == FileType::Directory
    }
}

/// The stamps of every path of the merged copy right after it was made.
#[derive(Debug, Default)]
pub(crate) struct Baseline {
    stamps: HashMap<PathBuf, Stamp>,
}

/// Copies `lowers` (top-most first) into `target`, applying their whiteouts and opaque dirs.
pub(crate) fn merge_lowers(lowers: &[PathBuf], target: &Path) -> Result<Baseline, SnapshotError> {
    for lower in lowers.iter().rev() {
        merge_dir(lower, target, &mut LinkMap::new())?;
    }
    let mut baseline = Baseline::default();
    record_stamps(target, Path::new(""), &mut baseline.stamps)?;
    Ok(baseline)
}

fn sorted_children(dir: &Path) -> Result<Vec<std::ffi::OsString>, SnapshotError> {
    let mut names = Vec::new();
    for item in fs::read_dir(dir).map_err(|e| SnapshotError::io("reading dir", dir, e))? {
        names.push(
            item.map_err(|e| SnapshotError::io("reading dir", dir, e))?
                .file_name(),
        );
    }
    names.sort();
    Ok(names)
}

fn remove_any(path: &Path) -> Result<(), SnapshotError> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => {
            fs::remove_dir_all(path).map_err(|e| SnapshotError::io("removing", path, e))
        }
        Ok(_) => fs::remove_file(path).map_err(|e| SnapshotError::io("removing", path, e)),
        Err(_) => Ok(()),
    }
}

fn merge_dir(src_dir: &Path, dst_dir: &Path, links: &mut LinkMap) -> Result<(), SnapshotError> {
    for name in sorted_children(src_dir)? {
        let src = src_dir.join(&name);
        let dst = dst_dir.join(&name);
        let meta = fs::symlink_metadata(&src).map_err(|e| SnapshotError::io("stat", &src, e))?;
        if meta.file_type().is_char_device() && meta.rdev() == 0 {
            remove_any(&dst)?;
        } else if meta.is_dir() {
            let opaque = rustix::fs::lgetxattr(&src, "trusted.overlay.opaque", &mut [0u8; 1][..])
                .is_ok_and(|n| n == 1);
            let dst_is_dir = fs::symlink_metadata(&dst).is_ok_and(|m| m.is_dir());
            if opaque || !dst_is_dir {
                remove_any(&dst)?;
                fs::create_dir(&dst).map_err(|e| SnapshotError::io("creating dir", &dst, e))?;
            }
            merge_dir(&src, &dst, links)?;
            copy_metadata(&src, &meta, &dst)?;
        } else {
            remove_any(&dst)?;
            copy_node(&src, &meta, &dst, links)?;
        }
    }
    Ok(())
}

/// Where the first copy of each multiply-linked source inode went, to link the others to it.
type LinkMap = HashMap<(u64, u64), PathBuf>;

/// Copies one non-directory node with its metadata, keeping hard links among copied nodes.
fn copy_node(
    src: &Path,
    meta: &fs::Metadata,
    dst: &Path,
    links: &mut LinkMap,
) -> Result<(), SnapshotError> {
    let file_type = meta.file_type();
    if meta.nlink() > 1 && !meta.is_dir() {
        let key = (meta.dev(), meta.ino());
        if let Some(first) = links.get(&key) {
            return fs::hard_link(first, dst)
                .map_err(|e| SnapshotError::io("hard-linking", dst, e));
        }
        links.insert(key, dst.to_path_buf());
    }
    if file_type.is_file() {
        fs::copy(src, dst).map_err(|e| SnapshotError::io("copying to", dst, e))?;
    } else if file_type.is_symlink() {
        let target =
            fs::read_link(src).map_err(|e| SnapshotError::io("reading symlink", src, e))?;
        std::os::unix::fs::symlink(&target, dst)
            .map_err(|e| SnapshotError::io("creating symlink", dst, e))?;
    } else if file_type.is_socket() {
        return Ok(());
    } else {
        let node_type = FileType::from_raw_mode(meta.mode());
        rustix::fs::mknodat(
            rustix::fs::CWD,
            dst,
            node_type,
            Mode::from_raw_mode(meta.mode() & 0o7777),
            meta.rdev(),
        )
        .map_err(|e| SnapshotError::io("creating device node", dst, e))?;
    }
    copy_metadata(src, meta, dst)
}

/// Copies owner, mode, xattrs (except overlay ones) and mtime from `src` to `dst`.
fn copy_metadata(src: &Path, meta: &fs::Metadata, dst: &Path) -> Result<(), SnapshotError> {
    std::os::unix::fs::lchown(dst, Some(meta.uid()), Some(meta.gid()))
        .map_err(|e| SnapshotError::io("changing owner of", dst, e))?;
    if !meta.file_type().is_symlink() {
        fs::set_permissions(dst, fs::Permissions::from_mode(meta.mode() & 0o7777))
            .map_err(|e| SnapshotError::io("changing mode of", dst, e))?;
    }
    copy_xattrs(src, dst)?;
    set_mtime(dst, meta.mtime(), meta.mtime_nsec())
}

fn copy_xattrs(src: &Path, dst: &Path) -> Result<(), SnapshotError> {
    let size = rustix::fs::llistxattr_query(src).unwrap_or(0);
    if size == 0 {
        return Ok(());
    }
    let mut names = vec![0u8; size];
    let len = rustix::fs::llistxattr(src, &mut names[..])
        .map_err(|e| SnapshotError::io("listing xattrs", src, e))?;
    names.truncate(len);
    for name in names
        .split(|b| *b == 0)
        .filter(|n| !n.is_empty() && !n.starts_with(b"trusted.overlay."))
    {
        let value_size = rustix::fs::lgetxattr_query(src, name)
            .map_err(|e| SnapshotError::io("reading an xattr of", src, e))?;
        let mut value = vec![0u8; value_size];
        let value_len = rustix::fs::lgetxattr(src, name, &mut value[..])
            .map_err(|e| SnapshotError::io("reading an xattr of", src, e))?;
        rustix::fs::lsetxattr(dst, name, &value[..value_len], XattrFlags::empty())
            .map_err(|e| SnapshotError::io("setting an xattr of", dst, e))?;
    }
    Ok(())
}

fn set_mtime(path: &Path, seconds: i64, nanos: i64) -> Result<(), SnapshotError> {
    let time = Timespec {
        tv_sec: seconds,
        tv_nsec: nanos,
    };
    let times = Timestamps {
        last_access: time,
        last_modification: time,
    };
    rustix::fs::utimensat(rustix::fs::CWD, path, &times, AtFlags::SYMLINK_NOFOLLOW)
        .map_err(|e| SnapshotError::io("setting mtime of", path, e))
}

fn record_stamps(
    root: &Path,
    rel: &Path,
    stamps: &mut HashMap<PathBuf, Stamp>,
) -> Result<(), SnapshotError> {
    let dir = root.join(rel);
    for name in sorted_children(&dir)? {
        let child_rel = rel.join(&name);
        let child = root.join(&child_rel);
        let meta =
            fs::symlink_metadata(&child).map_err(|e| SnapshotError::io("stat", &child, e))?;
        stamps.insert(child_rel.clone(), Stamp::of(&child, &meta));
        if meta.is_dir() {
            record_stamps(root, &child_rel, stamps)?;
        }
    }
    Ok(())
}

/// Writes the changes of `target` since `baseline` into `upper` in overlay form, then empties
/// `target`.
pub(crate) fn move_changes_to_upper(
    baseline: &Baseline,
    target: &Path,
    upper: &Path,
) -> Result<(), SnapshotError> {
    let mut now = HashMap::new();
    record_stamps(target, Path::new(""), &mut now)?;
    let mut paths: Vec<&PathBuf> = now.keys().collect();
    paths.sort();
    // Dirs that are new or were re-created: everything below them is copied, nothing is whited out.
    let mut fresh_dirs: BTreeSet<PathBuf> = BTreeSet::new();
    let mut upper_dirs: Vec<PathBuf> = Vec::new();
    let mut links = LinkMap::new();
    for rel in paths {
        let stamp = &now[rel];
        let before = baseline.stamps.get(rel);
        let under_fresh = rel.ancestors().skip(1).any(|a| fresh_dirs.contains(a));
        let src = target.join(rel);
        let meta = fs::symlink_metadata(&src).map_err(|e| SnapshotError::io("stat", &src, e))?;
        if stamp.is_dir() {
            let same_dir = before.is_some_and(|b| {
                b.is_dir() && b.ino == stamp.ino && b.dev == stamp.dev && b.birth == stamp.birth
            });
            if !same_dir {
                fresh_dirs.insert(rel.clone());
            }
            if under_fresh || before != Some(stamp) {
                ensure_upper_parents(target, upper, rel, &mut upper_dirs)?;
                let dst = upper.join(rel);
                if !dst.exists() {
                    fs::create_dir(&dst).map_err(|e| SnapshotError::io("creating dir", &dst, e))?;
                    upper_dirs.push(rel.clone());
                }
                if !same_dir && before.is_some_and(Stamp::is_dir) && !under_fresh {
                    rustix::fs::lsetxattr(
                        &dst,
                        "trusted.overlay.opaque",
                        b"y",
                        XattrFlags::empty(),
                    )
                    .map_err(|e| SnapshotError::io("marking opaque", &dst, e))?;
                }
            }
        } else if under_fresh || before != Some(stamp) {
            ensure_upper_parents(target, upper, rel, &mut upper_dirs)?;
            copy_node(&src, &meta, &upper.join(rel), &mut links)?;
        }
    }
    let mut deleted: Vec<&PathBuf> = baseline
        .stamps
        .keys()
        .filter(|p| !now.contains_key(*p))
        .collect();
    deleted.sort();
    let mut whited_out: BTreeSet<&PathBuf> = BTreeSet::new();
    for rel in deleted {
        let covered = rel
            .ancestors()
            .skip(1)
            .any(|a| fresh_dirs.contains(a) || whited_out.iter().any(|w| w.as_path() == a));
        if covered {
            continue;
        }
        ensure_upper_parents(target, upper, rel, &mut upper_dirs)?;
        let dst = upper.join(rel);
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &dst,
            FileType::CharacterDevice,
            Mode::empty(),
            0,
        )
        .map_err(|e| SnapshotError::io("creating whiteout", &dst, e))?;
        whited_out.insert(rel);
    }
    // Dir mtimes last: creating entries inside them changed them.
    for rel in upper_dirs.iter().rev() {
        let src = target.join(rel);
        let meta = fs::symlink_metadata(&src).map_err(|e| SnapshotError::io("stat", &src, e))?;
        copy_metadata(&src, &meta, &upper.join(rel))?;
    }
    for name in sorted_children(target)? {
        remove_any(&target.join(name))?;
    }
    Ok(())
}

/// Creates the parent dirs of `rel` in `upper` that are missing (metadata is set at the end).
fn ensure_upper_parents(
    target: &Path,
    upper: &Path,
    rel: &Path,
    upper_dirs: &mut Vec<PathBuf>,
) -> Result<(), SnapshotError> {
    let parents: Vec<&Path> = rel
        .ancestors()
        .skip(1)
        .filter(|a| !a.as_os_str().is_empty())
        .collect();
    for parent in parents.into_iter().rev() {
        let dst = upper.join(parent);
        if !dst.exists() {
            debug_assert!(target.join(parent).is_dir());
            fs::create_dir(&dst).map_err(|e| SnapshotError::io("creating dir", &dst, e))?;
            upper_dirs.push(parent.to_path_buf());
        }
    }
    Ok(())
}

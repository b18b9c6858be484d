//! A stage's root file system, made visible for reading: each layer unpacked once into a
//! snapshot (by chain id), then mounted as a read-only overlay (no upper dir, so unmounting it
//! flushes nothing). Used to answer "does this directory exist", to read /etc/passwd, and as
//! the source of `COPY --from`.
//! Lookups inside it never leave the root (openat2 RESOLVE_IN_ROOT).

use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags, ResolveFlags};

use super::BuildError;
use crate::layer::{self, LayerInfo, UnpackMode};
use crate::snapshot::{self, Durability, OverlayMount, Snapshots};
use crate::store::Store;

/// Largest file `read_in_root` reads (passwd/group files).
const MAX_SMALL_FILE: u64 = 16 << 20;

/// Mounts read-only views of layer stacks for one build.
pub(crate) struct RootfsManager {
    snapshots: Snapshots,
    scratch: tempfile::TempDir,
}

/// A mounted (or empty) root file system; unmounted when dropped.
pub(crate) struct Rootfs {
    path: PathBuf,
    _mount: Option<OverlayMount>,
    _dirs: Option<tempfile::TempDir>,
}

impl Rootfs {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl RootfsManager {
    /// `durability`: how the snapshots this manager makes are kept (see [`Durability`]).
    pub fn new(store: &Store, durability: Durability) -> Result<RootfsManager, BuildError> {
        let scratch = tempfile::Builder::new()
            .prefix("build-")
            .tempdir_in(store.tmp_dir())
            .map_err(|source| crate::store::StoreError::Io {
                path: store.tmp_dir(),
                source,
            })?;
        Ok(RootfsManager {
            snapshots: Snapshots::open(&store.root().join("snapshots"), durability)
                .map_err(|e| BuildError::Snapshot(e.to_string()))?,
            scratch,
        })
    }

    /// Unpacks (once) and mounts the file system made of `layers` (bottom first).
    pub fn mount(&self, store: &Store, layers: &[LayerInfo]) -> Result<Rootfs, String> {
        let dirs = tempfile::Builder::new()
            .prefix("rootfs-")
            .tempdir_in(self.scratch.path())
            .map_err(|e| format!("cannot make a mount point: {e}"))?;
        let target = dirs.path().join("merged");
        std::fs::create_dir(&target).map_err(|e| format!("cannot make a mount point: {e}"))?;
        if layers.is_empty() {
            return Ok(Rootfs {
                path: target,
                _mount: None,
                _dirs: Some(dirs),
            });
        }
        let lowers = self.snapshot_dirs(store, layers)?;
        let mount = OverlayMount::mount_read_only(&lowers, &target)
            .map_err(|e| format!("cannot mount the image's file system: {e}"))?;
        Ok(Rootfs {
            path: target,
            _mount: Some(mount),
            _dirs: Some(dirs),
        })
    }

    /// The snapshot directory of each layer, top-most first, unpacking those not yet unpacked.
    pub fn snapshot_dirs(
        &self,
        store: &Store,
        layers: &[LayerInfo],
    ) -> Result<Vec<PathBuf>, String> {
        let mut dirs = Vec::with_capacity(layers.len());
        let mut parent: Option<crate::digest::Digest> = None;
        for layer in layers {
            let chain_id = snapshot::chain_id(parent.as_ref(), &layer.diff_id);
            let digest = layer.digest.clone();
            let dir = self
                .snapshots
                .ensure(
                    &chain_id,
                    parent.as_ref(),
                    |dest: &Path| -> Result<(), String> {
                        let blob = store.open_blob(&digest).map_err(|e| e.to_string())?;
                        layer::unpack(std::io::BufReader::new(blob), dest, UnpackMode::Overlay)
                            .map(|_| ())
                            .map_err(|e| e.to_string())
                    },
                )
                .map_err(|e| format!("cannot unpack layer {}: {e}", layer.digest))?;
            dirs.push(dir);
            parent = Some(chain_id);
        }
        dirs.reverse();
        Ok(dirs)
    }
}

impl RootfsManager {
    /// The file system dir of snapshot `chain_id`, if it exists and can be trusted.
    pub fn snapshot(&self, chain_id: &crate::digest::Digest) -> Option<PathBuf> {
        self.snapshots.get(chain_id)
    }

    /// An empty directory to unpack a new layer into, on the file system of the snapshots, for
    /// `adopt_upper` once the layer is written.
    pub fn unpack_dir(&self) -> Result<tempfile::TempDir, String> {
        tempfile::Builder::new()
            .prefix("unpack-")
            .tempdir_in(self.scratch.path())
            .map_err(|e| format!("cannot make a directory to unpack a layer into: {e}"))
    }

    /// Makes the upper dir of a RUN (or a layer unpacked while it was written, see
    /// `unpack_dir`) the snapshot of the layer it became (no re-unpack).
    pub fn adopt_upper(
        &self,
        below: &[LayerInfo],
        layer: &LayerInfo,
        upper: tempfile::TempDir,
    ) -> Result<(), String> {
        let mut parent = None;
        for info in below {
            parent = Some(snapshot::chain_id(parent.as_ref(), &info.diff_id));
        }
        let chain_id = snapshot::chain_id(parent.as_ref(), &layer.diff_id);
        let source = upper.path().to_path_buf();
        self.snapshots
            .ensure(
                &chain_id,
                parent.as_ref(),
                |dest: &Path| -> Result<(), std::io::Error> {
                    for entry in std::fs::read_dir(&source)? {
                        let entry = entry?;
                        std::fs::rename(entry.path(), dest.join(entry.file_name()))?;
                    }
                    Ok(())
                },
            )
            .map_err(|e| format!("cannot keep the snapshot of layer {}: {e}", layer.digest))?;
        Ok(())
    }
}

/// Joins `path` onto the directory `base` (when relative) and cleans the result like Go's
/// `path.Clean`, always absolute.
pub(crate) fn join_clean(base: &str, path: &str) -> String {
    let joined = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("{base}/{path}")
    };
    let mut parts: Vec<&str> = Vec::new();
    for part in joined.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    format!("/{}", parts.join("/"))
}

fn open_root(root: &Path) -> Option<OwnedFd> {
    rustix::fs::open(
        root,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()
}

fn open_in_root(root: &OwnedFd, relative: &str, flags: OFlags) -> Option<OwnedFd> {
    rustix::fs::openat2(
        root,
        relative,
        flags | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT,
    )
    .ok()
}

/// Reads a small text file at `relative` inside `root`, resolving symlinks within the root.
pub(crate) fn read_in_root(root: &Path, relative: &str) -> Option<String> {
    let root_fd = open_root(root)?;
    let fd = open_in_root(&root_fd, relative, OFlags::RDONLY)?;
    let mut text = String::new();
    std::fs::File::from(fd)
        .take(MAX_SMALL_FILE)
        .read_to_string(&mut text)
        .ok()?;
    Some(text)
}

/// Whether the directory at `relative` exists inside `root` (symlinks resolved within the root).
pub(crate) fn dir_exists_in_root(root: &Path, relative: &str) -> bool {
    let Some(root_fd) = open_root(root) else {
        return false;
    };
    open_in_root(&root_fd, relative, OFlags::PATH | OFlags::DIRECTORY).is_some()
}

/// The host path of `relative` inside `root`, with symlinks resolved within the root (so
/// the result never points outside it). None when it does not exist.
pub(crate) fn resolve_in_root(root: &Path, relative: &str) -> Option<PathBuf> {
    let root_fd = open_root(root)?;
    let relative = relative.trim_start_matches('/');
    let relative = if relative.is_empty() { "." } else { relative };
    let fd = open_in_root(&root_fd, relative, OFlags::PATH)?;
    std::fs::read_link(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&fd)
    ))
    .ok()
}

/// Creates the directory `path` (absolute, in the image) and its missing parents inside
/// `root`, never following a symlink out of the root. New directories get `uid:gid`, 0755.
pub(crate) fn mkdir_all_in_root(
    root: &Path,
    path: &str,
    uid: u32,
    gid: u32,
) -> std::io::Result<()> {
    let root_fd = open_root(root).ok_or_else(|| std::io::Error::other("cannot open root"))?;
    let mut parent = String::from(".");
    for part in path.split('/').filter(|p| !p.is_empty() && *p != ".") {
        let current = if parent == "." {
            part.to_string()
        } else {
            format!("{parent}/{part}")
        };
        if open_in_root(&root_fd, &current, OFlags::PATH | OFlags::DIRECTORY).is_none() {
            let parent_fd = open_in_root(&root_fd, &parent, OFlags::PATH | OFlags::DIRECTORY)
                .ok_or_else(|| std::io::Error::other(format!("{parent} is not a directory")))?;
            rustix::fs::mkdirat(&parent_fd, part, Mode::from_raw_mode(0o755))?;
            rustix::fs::chownat(
                &parent_fd,
                part,
                Some(rustix::fs::Uid::from_raw(uid)),
                Some(rustix::fs::Gid::from_raw(gid)),
                rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
            )?;
        }
        parent = current;
    }
    Ok(())
}

/// The directories of absolute `path` (itself included) missing under `root`, as relative
/// paths from the outermost missing one down, e.g. `["work", "work/sub"]`.
pub(crate) fn missing_dirs(root: &Path, path: &str) -> Vec<String> {
    let mut missing = Vec::new();
    let mut current = String::new();
    for part in path.split('/').filter(|p| !p.is_empty()) {
        if !current.is_empty() {
            current.push('/');
        }
        current.push_str(part);
        if !missing.is_empty() || !dir_exists_in_root(root, &current) {
            missing.push(current.clone());
        }
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_clean_resolves_like_go_path_clean() {
        assert_eq!(join_clean("/", "app"), "/app");
        assert_eq!(join_clean("/a/b", "../c/./d/"), "/a/c/d");
        assert_eq!(join_clean("/a", "/x//y"), "/x/y");
        assert_eq!(join_clean("/", "../.."), "/");
    }

    #[test]
    fn lookups_stay_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
        std::fs::write(dir.path().join("secret"), "host secret").unwrap();
        std::os::unix::fs::symlink("/../../secret", root.join("escape")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("etc-link")).unwrap();
        assert!(
            read_in_root(&root, "etc/passwd")
                .unwrap()
                .starts_with("root")
        );
        assert!(read_in_root(&root, "etc-link/passwd").is_some());
        assert_eq!(read_in_root(&root, "escape"), None);
        assert_eq!(
            missing_dirs(&root, "/etc/app/x"),
            vec!["etc/app", "etc/app/x"]
        );
        assert!(missing_dirs(&root, "/etc-link").is_empty());
        assert_eq!(
            resolve_in_root(&root, "/etc-link/passwd"),
            Some(root.join("etc/passwd"))
        );
        assert_eq!(resolve_in_root(&root, "escape"), None);
        std::os::unix::fs::symlink("/", root.join("to-root")).unwrap();
        mkdir_all_in_root(&root, "/to-root/made/here", 0, 0).unwrap();
        assert!(root.join("made/here").is_dir());
        assert!(!dir.path().join("made").exists());
    }
}

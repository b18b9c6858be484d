//! Unpacked layer snapshots on disk, one dir per OCI chain id, made once and atomically.
//!
//! Layout under the root:
//! ```text
//! sha256/<hex>/fs       the unpacked layer (overlay form: whiteouts are 0/0 devices)
//! sha256/<hex>/parent   the parent's chain id (absent for a base layer)
//! sha256/<hex>/boot     the boot id it was made in, when it was not synced (see below)
//! tmp/<random>/         unpacks in progress; renamed into place when complete
//! run/<random>/{upper,work,merged}   scratch dirs of one RUN step ([`ScratchDirs`])
//! ```
//! A snapshot dir exists only when complete: it is unpacked in `tmp/`, then renamed. When two
//! unpacks race, the loser's rename fails and its copy is removed.
//!
//! `tmp/` is a top directory ([`crate::inode_placement`]): each unpack starts its tree of
//! inodes in a lightly used block group.
//!
//! Durability ([`Durability`]): a snapshot is derived data (its layer blob is the durable
//! copy), so a build does not pay a file-system sync per step. Such a snapshot records the
//! boot it was made in and is trusted only within that boot: the page cache cannot lose it
//! without a crash, and a crash means a new boot, after which the snapshot is discarded and
//! unpacked again from its blob. Snapshots made by `pull` are synced and kept across boots.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use super::error::SnapshotError;
use crate::digest::Digest;

/// Unpacks older than this in `tmp/` are left over from a crash and removed on open.
const STALE_UNPACK_AGE: Duration = Duration::from_secs(3600);

/// When a new snapshot is made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Synced to disk before it is published; trusted across reboots.
    Synced,
    /// Left to the kernel's writeback; trusted only until the next boot (falls back to
    /// `Synced` where the boot id cannot be read).
    ThisBoot,
}

/// The snapshot dirs under one root.
#[derive(Debug, Clone)]
pub struct Snapshots {
    root: PathBuf,
    durability: Durability,
}

/// The kernel's id of the current boot, read once; None where /proc does not provide it.
fn current_boot_id() -> Option<&'static str> {
    static BOOT_ID: OnceLock<Option<String>> = OnceLock::new();
    BOOT_ID
        .get_or_init(|| {
            fs::read_to_string("/proc/sys/kernel/random/boot_id")
                .ok()
                .map(|id| id.trim().to_string())
                .filter(|id| !id.is_empty())
        })
        .as_deref()
}

impl Snapshots {
    /// Opens (creating) the snapshot root and removes stale unpacks left by crashes. New
    /// snapshots are made with `durability`.
    pub fn open(root: &Path, durability: Durability) -> Result<Snapshots, SnapshotError> {
        let snapshots = Snapshots {
            root: root.to_path_buf(),
            durability,
        };
        let tmp = snapshots.tmp_dir();
        fs::create_dir_all(&tmp).map_err(|e| SnapshotError::io("creating dir", &tmp, e))?;
        crate::inode_placement::mark_top_directory(&tmp);
        let now = SystemTime::now();
        for item in fs::read_dir(&tmp)
            .map_err(|e| SnapshotError::io("reading dir", &tmp, e))?
            .flatten()
        {
            let age = item
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| now.duration_since(t).ok());
            if age.is_some_and(|age| age > STALE_UNPACK_AGE) {
                tracing::info!("removing stale snapshot unpack {}", item.path().display());
                let _ = fs::remove_dir_all(item.path());
            }
        }
        Ok(snapshots)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Fresh `upper`, `work` and `merged` dirs for one overlay, on the snapshots' file system
    /// (overlayfs needs upper and work on one file system). Removed when dropped: drop it after
    /// the layer made from the upper dir's diff is written, since the diff points into it.
    pub fn scratch(&self) -> Result<ScratchDirs, SnapshotError> {
        let run_root = self.root.join("run");
        fs::create_dir_all(&run_root)
            .map_err(|e| SnapshotError::io("creating dir", &run_root, e))?;
        let dir = tempfile::Builder::new()
            .prefix("step-")
            .tempdir_in(&run_root)
            .map_err(|e| SnapshotError::io("creating a scratch dir in", &run_root, e))?;
        for name in ["upper", "work", "merged"] {
            let path = dir.path().join(name);
            fs::create_dir(&path).map_err(|e| SnapshotError::io("creating dir", &path, e))?;
        }
        Ok(ScratchDirs { dir })
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    fn snapshot_dir(&self, chain_id: &Digest) -> PathBuf {
        self.root
            .join(chain_id.algorithm().name())
            .join(chain_id.hex())
    }

    /// The unpacked file system of snapshot `chain_id`, if it exists and can be trusted.
    pub fn get(&self, chain_id: &Digest) -> Option<PathBuf> {
        let dir = self.snapshot_dir(chain_id);
        let fs_dir = dir.join("fs");
        (fs_dir.is_dir() && made_in_a_trusted_boot(&dir)).then_some(fs_dir)
    }

    /// Moves an untrusted snapshot of `chain_id` (unsynced, from an earlier boot) out of the
    /// way, so it can be made again. Losing a race to another process doing the same is fine.
    fn discard_untrusted(&self, chain_id: &Digest) {
        let dir = self.snapshot_dir(chain_id);
        if !dir.join("fs").is_dir() || made_in_a_trusted_boot(&dir) {
            return;
        }
        let Ok(graveyard) = tempfile::Builder::new()
            .prefix("discarded-")
            .tempdir_in(self.tmp_dir())
        else {
            return;
        };
        tracing::info!("snapshot {chain_id} was not synced before a reboot; unpacking it again");
        if fs::rename(&dir, graveyard.path().join("snapshot")).is_err() {
            tracing::debug!("snapshot {chain_id} was already moved away");
        }
    }

    /// The file system dir of snapshot `chain_id`, calling `unpack` (with an empty dir to fill)
    /// only if it does not exist yet. `parent` must already exist.
    pub fn ensure<E>(
        &self,
        chain_id: &Digest,
        parent: Option<&Digest>,
        unpack: impl FnOnce(&Path) -> Result<(), E>,
    ) -> Result<PathBuf, SnapshotError>
    where
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        if let Some(existing) = self.get(chain_id) {
            return Ok(existing);
        }
        self.discard_untrusted(chain_id);
        if let Some(parent) = parent
            && self.get(parent).is_none()
        {
            return Err(SnapshotError::MissingParent {
                chain_id: chain_id.clone(),
                parent: parent.clone(),
            });
        }
        let tmp_root = self.tmp_dir();
        fs::create_dir_all(&tmp_root)
            .map_err(|e| SnapshotError::io("creating dir", &tmp_root, e))?;
        let staging = tempfile::Builder::new()
            .prefix(chain_id.short())
            .tempdir_in(&tmp_root)
            .map_err(|e| SnapshotError::io("creating unpack dir in", &tmp_root, e))?;
        let fs_dir = staging.path().join("fs");
        fs::create_dir(&fs_dir).map_err(|e| SnapshotError::io("creating dir", &fs_dir, e))?;
        unpack(&fs_dir).map_err(|e| SnapshotError::Unpack {
            chain_id: chain_id.clone(),
            source: e.into(),
        })?;
        if let Some(parent) = parent {
            let parent_file = staging.path().join("parent");
            let mut file = fs::File::create(&parent_file)
                .map_err(|e| SnapshotError::io("creating", &parent_file, e))?;
            file.write_all(parent.to_string().as_bytes())
                .map_err(|e| SnapshotError::io("writing", &parent_file, e))?;
        }
        match (self.durability, current_boot_id()) {
            (Durability::ThisBoot, Some(boot_id)) => {
                let boot_file = staging.path().join("boot");
                fs::write(&boot_file, boot_id)
                    .map_err(|e| SnapshotError::io("writing", &boot_file, e))?;
            }
            _ => {
                // Make the content durable before the rename publishes it.
                let dir = fs::File::open(staging.path())
                    .map_err(|e| SnapshotError::io("opening", staging.path(), e))?;
                rustix::fs::syncfs(&dir)
                    .map_err(|e| SnapshotError::io("syncing file system of", staging.path(), e))?;
            }
        }
        let final_dir = self.snapshot_dir(chain_id);
        let algorithm_dir = self.root.join(chain_id.algorithm().name());
        fs::create_dir_all(&algorithm_dir)
            .map_err(|e| SnapshotError::io("creating dir", &algorithm_dir, e))?;
        let staged = staging.keep();
        match fs::rename(&staged, &final_dir) {
            Ok(()) => {
                if let Ok(parent_dir) = fs::File::open(&algorithm_dir) {
                    let _ = parent_dir.sync_all();
                }
                Ok(final_dir.join("fs"))
            }
            Err(_) if self.get(chain_id).is_some() => {
                // Another unpack of the same layer won the race.
                let _ = fs::remove_dir_all(&staged);
                Ok(final_dir.join("fs"))
            }
            Err(e) => {
                let _ = fs::remove_dir_all(&staged);
                Err(SnapshotError::io(
                    "renaming unpacked snapshot to",
                    final_dir,
                    e,
                ))
            }
        }
    }

    /// The lower dirs for an overlay whose top layer is snapshot `chain_id`, top-most first.
    pub fn lowers(&self, chain_id: &Digest) -> Result<Vec<PathBuf>, SnapshotError> {
        let mut lowers = Vec::new();
        let mut current = Some(chain_id.clone());
        while let Some(id) = current {
            let fs_dir = self.get(&id).ok_or_else(|| SnapshotError::Corrupt {
                chain_id: chain_id.clone(),
                message: format!("snapshot {id} in its chain does not exist"),
            })?;
            lowers.push(fs_dir);
            let parent_file = self.snapshot_dir(&id).join("parent");
            current = match fs::read_to_string(&parent_file) {
                Ok(text) => {
                    Some(
                        Digest::parse(text.trim()).map_err(|e| SnapshotError::Corrupt {
                            chain_id: id.clone(),
                            message: format!("{}: {e}", parent_file.display()),
                        })?,
                    )
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(SnapshotError::io("reading", parent_file, e)),
            };
            if lowers.len() > 1000 {
                return Err(SnapshotError::Corrupt {
                    chain_id: chain_id.clone(),
                    message: "parent chain longer than 1000 layers (a cycle?)".to_string(),
                });
            }
        }
        Ok(lowers)
    }
}

/// Whether the snapshot in `dir` can be trusted: it was synced (no `boot` file), or it was
/// made in the current boot.
fn made_in_a_trusted_boot(dir: &Path) -> bool {
    match fs::read_to_string(dir.join("boot")) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
        Err(_) => false,
        Ok(made_in) => current_boot_id() == Some(made_in.trim()),
    }
}

/// The upper, work and merged dirs of one RUN step's overlay; removed on drop.
#[derive(Debug)]
pub struct ScratchDirs {
    dir: tempfile::TempDir,
}

impl ScratchDirs {
    pub fn upper(&self) -> PathBuf {
        self.dir.path().join("upper")
    }

    pub fn work(&self) -> PathBuf {
        self.dir.path().join("work")
    }

    /// Where the overlay is mounted (the container's rootfs).
    pub fn merged(&self) -> PathBuf {
        self.dir.path().join("merged")
    }

    /// The dir holding the three, also a fine `work_dir` for `sandbox::run`'s bundle.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

//! Unpacked layer snapshots on disk, one dir per OCI chain id, made once and atomically.
//!
//! Layout under the root:
//! ```text
//! sha256/<hex>/fs       the unpacked layer (overlay form: whiteouts are 0/0 devices)
//! sha256/<hex>/parent   the parent's chain id (absent for a base layer)
//! tmp/<random>/         unpacks in progress; renamed into place when complete
//! run/<random>/{upper,work,merged}   scratch dirs of one RUN step ([`ScratchDirs`])
//! ```
//! A snapshot dir exists only when complete: it is unpacked and synced in `tmp/`, then renamed.
//! When two unpacks race, the loser's rename fails and its copy is removed.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::error::SnapshotError;
use crate::digest::Digest;

/// Unpacks older than this in `tmp/` are left over from a crash and removed on open.
const STALE_UNPACK_AGE: Duration = Duration::from_secs(3600);

/// The OCI chain id of a layer with diff id `diff_id` on top of the chain `parent`:
/// `ChainID(L0) = DiffID(L0)`, `ChainID(L0..Ln) = sha256(ChainID(L0..Ln-1) + " " + DiffID(Ln))`.
pub fn chain_id(parent: Option<&Digest>, diff_id: &Digest) -> Digest {
    match parent {
        None => diff_id.clone(),
        Some(parent) => Digest::sha256_of(format!("{parent} {diff_id}").as_bytes()),
    }
}

/// The snapshot dirs under one root.
#[derive(Debug, Clone)]
pub struct Snapshots {
    root: PathBuf,
}

impl Snapshots {
    /// Opens (creating) the snapshot root and removes stale unpacks left by crashes.
    pub fn open(root: &Path) -> Result<Snapshots, SnapshotError> {
        let snapshots = Snapshots {
            root: root.to_path_buf(),
        };
        let tmp = snapshots.tmp_dir();
        fs::create_dir_all(&tmp).map_err(|e| SnapshotError::io("creating dir", &tmp, e))?;
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

    /// The OCI chain id rule, as [`chain_id`].
    pub fn chain_id(parent: Option<&Digest>, diff_id: &Digest) -> Digest {
        chain_id(parent, diff_id)
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

    /// The unpacked file system of snapshot `chain_id`, if it exists.
    pub fn get(&self, chain_id: &Digest) -> Option<PathBuf> {
        let fs_dir = self.snapshot_dir(chain_id).join("fs");
        fs_dir.is_dir().then_some(fs_dir)
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
        // Make the content durable before the rename publishes it.
        let dir = fs::File::open(staging.path())
            .map_err(|e| SnapshotError::io("opening", staging.path(), e))?;
        rustix::fs::syncfs(&dir)
            .map_err(|e| SnapshotError::io("syncing file system of", staging.path(), e))?;
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

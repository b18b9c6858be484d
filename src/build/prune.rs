//! `imgbuild prune`: removes build cache records, then the blobs and unpacked snapshots that
//! neither an image in index.json nor a kept cache record needs.
//!
//! Runs under the cache lock taken exclusively (builds hold it shared), so it never removes
//! a layer a running build is about to reference.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::cache::{self, CacheError, StepRecord};
use crate::digest::Digest;
use crate::image::{self, ManifestOrIndex};
use crate::snapshot;
use crate::store::{Store, StoreError};

/// What to remove.
#[derive(Debug, Clone, Default)]
pub struct PruneOptions {
    /// Remove every cache record (and cache mounts), not only stale ones.
    pub all: bool,
    /// Keep at most this many bytes of layer blobs that only the cache needs, removing the
    /// least recently used records first.
    pub keep_storage: Option<u64>,
}

/// What was removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneReport {
    pub records_removed: usize,
    pub blobs_removed: usize,
    pub blob_bytes: u64,
    pub snapshots_removed: usize,
    pub snapshot_bytes: u64,
    pub cache_mount_bytes: u64,
}

impl PruneReport {
    pub fn reclaimed_bytes(&self) -> u64 {
        self.blob_bytes + self.snapshot_bytes + self.cache_mount_bytes
    }
}

/// Why pruning stopped (nothing an image needs is removed when it does).
#[derive(Debug, thiserror::Error)]
pub enum PruneError {
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot read image {digest}: {message}; nothing was removed")]
    Image { digest: Digest, message: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> PruneError + '_ {
    move |source| PruneError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A record on disk with when it was last used.
struct RecordFile {
    path: PathBuf,
    record: StepRecord,
    last_used: SystemTime,
}

/// Removes cache records as `opts` says, then every blob and snapshot nothing needs.
pub fn prune(store: &Store, opts: &PruneOptions) -> Result<PruneReport, PruneError> {
    let cache_dir = cache::cache_dir(store);
    let _cache_lock = cache::lock_cache(&cache_dir, true)?;
    let _store_lock = store.lock()?;
    let mut report = PruneReport::default();

    let needed = ImageNeeds::of_index(store)?;
    let mut records = read_records(&cache_dir.join("steps"))?;
    let mut remove: Vec<RecordFile> = Vec::new();
    if opts.all {
        remove.append(&mut records);
    } else {
        // Stale records (their layer is gone) are useless.
        let (stale, kept): (Vec<_>, Vec<_>) = records.into_iter().partition(|r| {
            r.record
                .layer
                .as_ref()
                .is_some_and(|l| !store.has_blob(&l.digest))
        });
        remove.extend(stale);
        records = kept;
        if let Some(limit) = opts.keep_storage {
            records.sort_by_key(|r| std::cmp::Reverse(r.last_used));
            while cache_only_bytes(store, &records, &needed) > limit {
                match records.pop() {
                    Some(oldest) => remove.push(oldest),
                    None => break,
                }
            }
        }
    }
    for record in &remove {
        match std::fs::remove_file(&record.path) {
            Ok(()) => report.records_removed += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_at(&record.path)(e)),
        }
    }
    if opts.all {
        for dir in ["slots", "context"] {
            remove_dir_if_present(&cache_dir.join(dir))?;
        }
        let mounts = store.root().join("cache-mounts");
        report.cache_mount_bytes = dir_size(&mounts);
        remove_dir_if_present(&mounts)?;
    }

    let mut keep_blobs = needed.blobs.clone();
    let mut keep_chains = needed.chains.clone();
    for kept in &records {
        if let Some(layer) = &kept.record.layer {
            keep_blobs.insert(layer.digest.clone());
        }
        if let Some(chain) = &kept.record.chain_id {
            keep_chains.insert(chain.clone());
        }
    }
    remove_unneeded_blobs(store, &keep_blobs, &mut report)?;
    remove_unneeded_snapshots(&store.root().join("snapshots"), &keep_chains, &mut report)?;
    Ok(report)
}

/// The blobs and snapshot chain ids the images listed in index.json need.
#[derive(Debug, Default)]
struct ImageNeeds {
    blobs: BTreeSet<Digest>,
    chains: BTreeSet<Digest>,
}

impl ImageNeeds {
    fn of_index(store: &Store) -> Result<ImageNeeds, PruneError> {
        let mut needs = ImageNeeds::default();
        let mut pending: Vec<Digest> = store
            .list_refs()?
            .into_iter()
            .map(|r| r.manifest_digest)
            .collect();
        while let Some(digest) = pending.pop() {
            if !needs.blobs.insert(digest.clone()) || !store.has_blob(&digest) {
                // Seen already, or not stored locally (a manifest list's other platforms).
                continue;
            }
            let parsed =
                image::load_manifest_or_index(store, &digest).map_err(|e| PruneError::Image {
                    digest: digest.clone(),
                    message: e.to_string(),
                })?;
            match parsed {
                ManifestOrIndex::Index(index) => {
                    pending.extend(index.manifests.into_iter().map(|d| d.digest));
                    pending.extend(index.subject.map(|d| d.digest));
                }
                ManifestOrIndex::Manifest(manifest) => {
                    needs.blobs.insert(manifest.config.digest.clone());
                    needs
                        .blobs
                        .extend(manifest.layers.iter().map(|l| l.digest.clone()));
                    pending.extend(manifest.subject.map(|d| d.digest));
                    needs.add_chains(store, &manifest.config.digest)?;
                }
            }
        }
        Ok(needs)
    }

    /// Every chain id of the image whose config is `config_digest` (its snapshots).
    fn add_chains(&mut self, store: &Store, config_digest: &Digest) -> Result<(), PruneError> {
        if !store.has_blob(config_digest) {
            return Ok(());
        }
        let bytes = store.read_blob(config_digest)?;
        // Not every config is an image config (artifacts); those have no snapshots.
        let Ok(config) = crate::image::ImageConfig::from_json(&bytes) else {
            return Ok(());
        };
        let mut chain: Option<Digest> = None;
        for diff_id in &config.rootfs.diff_ids {
            let id = snapshot::chain_id(chain.as_ref(), diff_id);
            self.chains.insert(id.clone());
            chain = Some(id);
        }
        Ok(())
    }
}

/// Bytes of layer blobs that only cache records (not images) need.
fn cache_only_bytes(store: &Store, records: &[RecordFile], needed: &ImageNeeds) -> u64 {
    let mut sizes: BTreeMap<&Digest, u64> = BTreeMap::new();
    for record in records {
        if let Some(layer) = &record.record.layer
            && !needed.blobs.contains(&layer.digest)
        {
            let size = store.blob_size(&layer.digest).unwrap_or(layer.size);
            sizes.insert(&layer.digest, size);
        }
    }
    sizes.values().sum()
}

fn read_records(dir: &Path) -> Result<Vec<RecordFile>, PruneError> {
    let mut records = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(records),
        Err(e) => return Err(io_at(dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io_at(dir))?;
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let parsed = std::fs::read(&path)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<StepRecord>(&bytes).ok());
        let Some(record) = parsed else {
            // Unreadable records are dropped; a build rewrites them on its next miss.
            let _ = std::fs::remove_file(&path);
            continue;
        };
        let last_used = entry
            .metadata()
            .and_then(|m| m.modified())
            .unwrap_or(SystemTime::UNIX_EPOCH);
        records.push(RecordFile {
            path,
            record,
            last_used,
        });
    }
    Ok(records)
}

fn remove_unneeded_blobs(
    store: &Store,
    keep: &BTreeSet<Digest>,
    report: &mut PruneReport,
) -> Result<(), PruneError> {
    let blobs = store.root().join("blobs");
    for algorithm in ["sha256", "sha512"] {
        let dir = blobs.join(algorithm);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let entry = entry.map_err(io_at(&dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Ok(digest) = Digest::parse(&format!("{algorithm}:{name}")) else {
                continue;
            };
            if keep.contains(&digest) {
                continue;
            }
            let size = entry.metadata().map_or(0, |m| m.len());
            std::fs::remove_file(entry.path()).map_err(io_at(&entry.path()))?;
            report.blobs_removed += 1;
            report.blob_bytes += size;
        }
    }
    Ok(())
}

fn remove_unneeded_snapshots(
    root: &Path,
    keep: &BTreeSet<Digest>,
    report: &mut PruneReport,
) -> Result<(), PruneError> {
    let dir = root.join("sha256");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(());
    };
    // A kept snapshot needs its parents too (they are its lower layers).
    let mut keep_all: BTreeSet<Digest> = BTreeSet::new();
    for chain in keep {
        let mut current = Some(chain.clone());
        while let Some(id) = current {
            if !keep_all.insert(id.clone()) {
                break;
            }
            current = std::fs::read_to_string(dir.join(id.hex()).join("parent"))
                .ok()
                .and_then(|text| Digest::parse(text.trim()).ok());
        }
    }
    for entry in entries {
        let entry = entry.map_err(io_at(&dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Ok(chain) = Digest::parse(&format!("sha256:{name}")) else {
            continue;
        };
        if keep_all.contains(&chain) {
            continue;
        }
        let size = dir_size(&entry.path());
        remove_tree(&entry.path())?;
        report.snapshots_removed += 1;
        report.snapshot_bytes += size;
    }
    Ok(())
}

/// Removes a directory tree (absent is fine).
fn remove_tree(path: &Path) -> Result<(), PruneError> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_at(path)(e)),
    }
}

fn remove_dir_if_present(path: &Path) -> Result<(), PruneError> {
    remove_tree(path)
}

/// Bytes used by regular files under `path` (symlinks not followed). A file hard-linked from
/// several snapshots counts its share of its size in each.
fn dir_size(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return if meta.is_file() {
            meta.len() / meta.nlink().max(1)
        } else {
            0
        };
    }
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries.flatten().map(|e| dir_size(&e.path())).sum()
}

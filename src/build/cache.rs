//! The build cache: a step's key is the sha256 of its named inputs (the parent step's key,
//! the expanded instruction, the content of the files it reads, its env...), and a record of
//! what the step produced is kept under `<root>/cache/steps/<key hex>.json`.
//!
//! A record holds the resulting layer (or "no layer"), the `created` time of the first build
//! (reused on a hit, so a no-change rebuild gives the same image digest), the chain id of the
//! resulting layer stack (so `prune` keeps its snapshot) and the inputs themselves, so a miss
//! can be explained by diffing them against the previous build of the same Dockerfile step,
//! whose key `<root>/cache/slots/<slot hex>` remembers.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};

use crate::digest::Digest;
use crate::layer::LayerInfo;
use crate::store::Store;

/// Bumped whenever what goes into a key changes meaning, so old records stop matching.
const KEY_VERSION: &str = "imgbuild-cache-v1";
/// Longest input value quoted in an explanation.
const MAX_EXPLAINED_VALUE: usize = 80;

/// Why the cache could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("build cache {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("build cache record {path}: {source}")]
    Encode {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> CacheError + '_ {
    move |source| CacheError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The named inputs of one step; the key is their hash.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct StepInputs {
    values: BTreeMap<String, String>,
}

impl StepInputs {
    /// Inputs starting from the key of the step before (or of the stage's base).
    pub fn after(parent: &Digest) -> StepInputs {
        let mut inputs = StepInputs::default();
        inputs.add("parent", parent.to_string());
        inputs
    }

    /// Inputs of a stage's base: the build settings and what the base is.
    pub fn base(settings: &str, base: &str) -> StepInputs {
        let mut inputs = StepInputs::default();
        inputs.add("settings", settings);
        inputs.add("base", base);
        inputs
    }

    pub fn add(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.values.insert(name.into(), value.into());
    }

    /// Adds `name`, or `name#2`, `name#3`... when the name is taken.
    pub fn add_unique(&mut self, name: String, value: String) {
        let name = match self.values.entry(name) {
            std::collections::btree_map::Entry::Vacant(slot) => {
                slot.insert(value);
                return;
            }
            std::collections::btree_map::Entry::Occupied(taken) => taken.key().clone(),
        };
        let mut candidate = format!("{name}#2");
        let mut n = 3;
        while self.values.contains_key(&candidate) {
            candidate = format!("{name}#{n}");
            n += 1;
        }
        self.values.insert(candidate, value);
    }

    /// Whether these are the inputs of a step that reads context files.
    pub fn has_files(&self) -> bool {
        self.values.keys().any(|name| name.starts_with("file:"))
    }

    /// The inputs by name (kept in records, to explain later misses).
    pub fn into_values(self) -> BTreeMap<String, String> {
        self.values
    }

    /// sha256 over the version and every `name=value` (length-prefixed, in name order).
    pub fn key(&self) -> Digest {
        let mut hasher = crate::digest::Hasher::new(crate::digest::Algorithm::Sha256);
        hasher.update(KEY_VERSION.as_bytes());
        for (name, value) in &self.values {
            for part in [name, value] {
                hasher.update(&(part.len() as u64).to_le_bytes());
                hasher.update(part.as_bytes());
            }
        }
        hasher.finish()
    }
}

/// A layer as stored in a record.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct CachedLayer {
    pub diff_id: Digest,
    pub digest: Digest,
    pub size: u64,
    pub media_type: String,
}

impl From<&LayerInfo> for CachedLayer {
    fn from(info: &LayerInfo) -> CachedLayer {
        CachedLayer {
            diff_id: info.diff_id.clone(),
            digest: info.digest.clone(),
            size: info.size,
            media_type: info.media_type.clone(),
        }
    }
}

impl From<CachedLayer> for LayerInfo {
    fn from(layer: CachedLayer) -> LayerInfo {
        LayerInfo {
            diff_id: layer.diff_id,
            digest: layer.digest,
            size: layer.size,
            media_type: layer.media_type,
        }
    }
}

/// What one step produced.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct StepRecord {
    pub key: Digest,
    /// The new layer, or None for a step that added none (metadata, RUN that changed nothing).
    pub layer: Option<CachedLayer>,
    /// Chain id of the stage's layers after this step (None while there are none).
    pub chain_id: Option<Digest>,
    /// The history `created` time of the first build of this step.
    pub created: String,
    pub inputs: BTreeMap<String, String>,
}

/// The records under `<root>/cache`, and whether lookups are allowed.
pub(crate) struct BuildCache {
    dir: PathBuf,
    /// Held shared for the whole build, so `prune` (exclusive) never runs in the middle of one.
    _lock: File,
}

/// The cache directory of a store.
pub(crate) fn cache_dir(store: &Store) -> PathBuf {
    store.root().join("cache")
}

/// Opens `<dir>/lock` and takes it shared (builds) or exclusive (prune), blocking.
pub(crate) fn lock_cache(dir: &Path, exclusive: bool) -> Result<File, CacheError> {
    std::fs::create_dir_all(dir).map_err(io_at(dir))?;
    let path = dir.join("lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(io_at(&path))?;
    let operation = if exclusive {
        rustix::fs::FlockOperation::LockExclusive
    } else {
        rustix::fs::FlockOperation::LockShared
    };
    rustix::fs::flock(&file, operation).map_err(|e| io_at(&path)(e.into()))?;
    Ok(file)
}

impl BuildCache {
    pub fn open(store: &Store) -> Result<BuildCache, CacheError> {
        let dir = cache_dir(store);
        let lock = lock_cache(&dir, false)?;
        Ok(BuildCache { dir, _lock: lock })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn record_path(&self, key: &Digest) -> PathBuf {
        self.dir.join("steps").join(format!("{}.json", key.hex()))
    }

    fn slot_path(&self, slot: &Digest) -> PathBuf {
        self.dir.join("slots").join(slot.hex())
    }

    fn read_record(&self, key: &Digest) -> Option<StepRecord> {
        let bytes = std::fs::read(self.record_path(key)).ok()?;
        serde_json::from_slice::<StepRecord>(&bytes)
            .ok()
            .filter(|record| &record.key == key)
    }

    /// The record of `key` when its layer blob is still in the store. A hit marks the
    /// record as used now (its mtime), which `prune --keep-storage` goes by.
    pub fn lookup(&self, store: &Store, key: &Digest) -> Option<StepRecord> {
        let record = self.read_record(key)?;
        if let Some(layer) = &record.layer
            && !store.has_blob(&layer.digest)
        {
            return None;
        }
        let touched = File::options()
            .write(true)
            .open(self.record_path(key))
            .and_then(|file| file.set_modified(std::time::SystemTime::now()));
        if let Err(e) = touched {
            tracing::debug!("cannot mark cache record {key} as used: {e}");
        }
        Some(record)
    }

    /// Writes a record atomically.
    pub fn save(&self, record: &StepRecord) -> Result<(), CacheError> {
        let path = self.record_path(&record.key);
        let bytes = serde_json::to_vec(record).map_err(|source| CacheError::Encode {
            path: path.clone(),
            source,
        })?;
        crate::context::stat_cache::write_atomic(&path, &bytes).map_err(io_at(&path))
    }

    /// Notes that the Dockerfile step `slot` last had key `key` (for explanations).
    pub fn remember_slot(&self, slot: &Digest, key: &Digest) -> Result<(), CacheError> {
        let path = self.slot_path(slot);
        if std::fs::read(&path).ok().as_deref() == Some(key.hex().as_bytes()) {
            return Ok(());
        }
        crate::context::stat_cache::write_atomic(&path, key.hex().as_bytes()).map_err(io_at(&path))
    }

    /// The record of the last build of the Dockerfile step `slot`.
    pub fn previous(&self, slot: &Digest) -> Option<StepRecord> {
        let hex = std::fs::read_to_string(self.slot_path(slot)).ok()?;
        let key = Digest::parse(&format!("sha256:{}", hex.trim())).ok()?;
        self.read_record(&key)
    }
}

/// The files (image paths without the leading `/`) that a COPY/ADD keyed by `inputs` reads
/// exactly as its previous build did: same source path, image path, mode and content digest.
pub(crate) fn unchanged_files(previous: &StepRecord, inputs: &StepInputs) -> HashSet<String> {
    inputs
        .values
        .iter()
        .filter(|(name, value)| {
            name.starts_with("file:") && previous.inputs.get(name.as_str()) == Some(value)
        })
        .filter_map(|(_, value)| {
            let (image_path, identity) = value.split_once(' ')?;
            identity
                .starts_with("file ")
                .then(|| image_path.trim_start_matches('/').to_string())
        })
        .collect()
}

/// Says why `inputs` missed, given the record of the step's previous build.
pub(crate) fn explain_miss(previous: Option<&StepRecord>, inputs: &StepInputs) -> String {
    let Some(previous) = previous else {
        return "first build of this step".to_string();
    };
    let old = &previous.inputs;
    let new = &inputs.values;
    let mut reasons = Vec::new();
    let mut parent_changed = false;
    for (name, value) in new {
        match old.get(name) {
            Some(before) if before == value => {}
            _ if name == "parent" => parent_changed = true,
            Some(before) => reasons.push(describe_change(name, Some(before), Some(value))),
            None => reasons.push(describe_change(name, None, Some(value))),
        }
    }
    for (name, value) in old {
        if !new.contains_key(name) {
            reasons.push(describe_change(name, Some(value), None));
        }
    }
    if reasons.is_empty() && parent_changed {
        return "a previous step changed".to_string();
    }
    if reasons.is_empty() {
        // Same inputs, so the record or its layer blob went away.
        return "its cache record or layer was removed (pruned)".to_string();
    }
    if parent_changed {
        reasons.push("a previous step changed".to_string());
    }
    reasons.join("; ")
}

fn describe_change(name: &str, before: Option<&str>, after: Option<&str>) -> String {
    if let Some(path) = name.strip_prefix("file:") {
        return match (before, after) {
            (Some(_), Some(_)) => format!("file {path} changed"),
            (None, _) => format!("file {path} was added"),
            (_, None) => format!("file {path} was removed"),
        };
    }
    let quote = |value: Option<&str>| match value {
        None => "(unset)".to_string(),
        Some(v) if v.chars().count() > MAX_EXPLAINED_VALUE => {
            let short: String = v.chars().take(MAX_EXPLAINED_VALUE).collect();
            format!("{short:?}...")
        }
        Some(v) => format!("{v:?}"),
    };
    format!("{name} changed from {} to {}", quote(before), quote(after))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(pairs: &[(&str, &str)]) -> StepInputs {
        let mut inputs = StepInputs::default();
        for (name, value) in pairs {
            inputs.add(*name, *value);
        }
        inputs
    }

    #[test]
    fn add_unique_numbers_repeated_names_from_two() {
        let mut inputs = StepInputs::default();
        for value in ["a", "b", "c"] {
            inputs.add_unique("file:x".to_string(), value.to_string());
        }
        inputs.add_unique("file:x#2".to_string(), "d".to_string());
        let values = inputs.into_values();
        let pairs: Vec<(&str, &str)> = values
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .collect();
        assert_eq!(
            pairs,
            [
                ("file:x", "a"),
                ("file:x#2", "b"),
                ("file:x#2#2", "d"),
                ("file:x#3", "c")
            ]
        );
    }

    #[test]
    fn keys_depend_on_every_name_and_value_and_nothing_else() {
        let a = inputs(&[("cmd", "echo hi"), ("env:A", "1")]);
        let same = inputs(&[("env:A", "1"), ("cmd", "echo hi")]);
        assert_eq!(a.key(), same.key(), "insertion order must not matter");
        assert_ne!(a.key(), inputs(&[("cmd", "echo hi"), ("env:A", "2")]).key());
        assert_ne!(a.key(), inputs(&[("cmd", "echo hi")]).key());
        // Length prefixes keep "ab"+"c" apart from "a"+"bc".
        assert_ne!(inputs(&[("ab", "c")]).key(), inputs(&[("a", "bc")]).key());
    }

    #[test]
    fn explanations_name_the_changed_input() {
        let old = inputs(&[("parent", "p1"), ("file:src/a.rs", "h1"), ("env:X", "1")]);
        let record = StepRecord {
            key: old.key(),
            layer: None,
            chain_id: None,
            created: String::new(),
            inputs: old.values.clone(),
        };
        let new = inputs(&[("parent", "p1"), ("file:src/a.rs", "h2"), ("env:X", "1")]);
        assert_eq!(explain_miss(Some(&record), &new), "file src/a.rs changed");
        let new = inputs(&[("parent", "p1"), ("file:src/a.rs", "h1"), ("env:X", "2")]);
        assert_eq!(
            explain_miss(Some(&record), &new),
            "env:X changed from \"1\" to \"2\""
        );
        let new = inputs(&[("parent", "p2"), ("file:src/a.rs", "h1"), ("env:X", "1")]);
        assert_eq!(explain_miss(Some(&record), &new), "a previous step changed");
        assert_eq!(explain_miss(None, &new), "first build of this step");
    }
}

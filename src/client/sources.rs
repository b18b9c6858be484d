//! Where blobs came from: `<store root>/client/blob-sources.json` maps a blob digest to the
//! `registry/repository` names known to hold it (recorded on pull and push), so a later push to
//! the same registry can cross-repo mount instead of uploading. Written atomically.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::auth::write_atomically;
use super::error::RegistryError;
use crate::digest::Digest;
use crate::store::Store;

/// Most source repositories remembered per blob (oldest dropped first).
const MAX_SOURCES_PER_BLOB: usize = 16;

/// The blob-sources file of one store.
pub struct BlobSources {
    path: PathBuf,
}

#[derive(Default, serde::Serialize, serde::Deserialize)]
struct SourcesFile {
    /// digest -> set of `registry/repository`.
    blobs: BTreeMap<String, BTreeSet<String>>,
}

impl BlobSources {
    pub fn for_store(store: &Store) -> BlobSources {
        BlobSources::at(&store.root().join("client").join("blob-sources.json"))
    }

    pub fn at(path: &Path) -> BlobSources {
        BlobSources {
            path: path.to_path_buf(),
        }
    }

    fn load(&self) -> Result<SourcesFile, RegistryError> {
        match std::fs::read(&self.path) {
            // A corrupt file only costs us mounts: start over rather than fail a pull/push.
            Ok(bytes) => Ok(serde_json::from_slice(&bytes).unwrap_or_default()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(SourcesFile::default()),
            Err(source) => Err(RegistryError::Io {
                what: format!("read {}", self.path.display()),
                source,
            }),
        }
    }

    /// Repositories on `registry` known to hold `digest` (repository paths, no registry).
    pub fn repositories_on(
        &self,
        registry: &str,
        digest: &Digest,
    ) -> Result<Vec<String>, RegistryError> {
        let file = self.load()?;
        let prefix = format!("{registry}/");
        Ok(file
            .blobs
            .get(&digest.to_string())
            .map(|names| {
                names
                    .iter()
                    .filter_map(|name| name.strip_prefix(&prefix).map(str::to_string))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Records that `registry/repository` holds every digest in `digests`.
    /// Callers serialize writers with the store lock.
    pub fn record<'a>(
        &self,
        registry: &str,
        repository: &str,
        digests: impl IntoIterator<Item = &'a Digest>,
    ) -> Result<(), RegistryError> {
        let mut file = self.load()?;
        let name = format!("{registry}/{repository}");
        for digest in digests {
            let names = file.blobs.entry(digest.to_string()).or_default();
            names.insert(name.clone());
            while names.len() > MAX_SOURCES_PER_BLOB {
                let Some(first) = names.iter().find(|n| **n != name).cloned() else {
                    break;
                };
                names.remove(&first);
            }
        }
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|source| RegistryError::Io {
            what: format!("create {}", dir.display()),
            source,
        })?;
        let bytes = serde_json::to_vec_pretty(&file).map_err(|e| RegistryError::Io {
            what: format!("encode {}", self.path.display()),
            source: std::io::Error::other(e),
        })?;
        write_atomically(&self.path, &bytes, 0o644)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_finds_sources_per_registry() {
        let dir = tempfile::tempdir().unwrap();
        let sources = BlobSources::at(&dir.path().join("client/blob-sources.json"));
        let a = Digest::sha256_of(b"a");
        let b = Digest::sha256_of(b"b");
        assert!(sources.repositories_on("r:1", &a).unwrap().is_empty());
        sources.record("r:1", "base/debian", [&a, &b]).unwrap();
        sources.record("r:2", "other", [&a]).unwrap();
        assert_eq!(
            sources.repositories_on("r:1", &a).unwrap(),
            vec!["base/debian"]
        );
        assert_eq!(sources.repositories_on("r:2", &a).unwrap(), vec!["other"]);
        assert!(sources.repositories_on("r:2", &b).unwrap().is_empty());
    }
}

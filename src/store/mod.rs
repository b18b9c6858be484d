//! Local content-addressed store: an OCI image layout (blobs/sha256, index.json) under the root,
//! with atomic writes (temp file, fsync, rename), digest verification on read, and a file lock.
//!
//! CONTRACT (used by build/, client/, cli/): the signatures below are fixed; the storage work
//! fills in the bodies and may add more items.
//!
//! Layout under the root:
//! - `oci-layout`, `index.json`, `blobs/<alg>/<hex>`: a standard OCI image layout;
//! - `tmp/`: temp files of in-progress writes (same file system, so renames are atomic);
//! - `lock`: the file flock'ed for read-modify-write of `index.json`.
//!
//! Invariants: a blob file exists only with its full, verified content (written to `tmp/`,
//! fsynced, renamed, directory fsynced); `index.json` is only ever replaced whole by rename, under
//! the exclusive lock, so concurrent builds never lose each other's refs.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::digest::{Algorithm, Digest, Hasher, HashingWriter};
use crate::fsutil::AtomicFile;

/// The annotation holding an entry's reference name in index.json (our convention: the full
/// normalized reference, e.g. `docker.io/library/busybox:latest`).
pub const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";

/// Media type of an OCI image index (the type of index.json itself).
const OCI_INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";

/// Temp files older than this are leftovers of crashed writes.
const STALE_TEMP_AGE: std::time::Duration = std::time::Duration::from_secs(24 * 60 * 60);

const OCI_LAYOUT_CONTENT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

/// Errors from the local store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store at {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("blob {0} is not in the store")]
    BlobNotFound(Digest),
    #[error("blob {expected} is corrupt: its content hashes to {actual}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("store index {path} is corrupt: {message}")]
    CorruptIndex { path: PathBuf, message: String },
}

/// Builds a closure mapping an io::Error to `StoreError::Io` at `path`.
fn io_at(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A reference-name entry of index.json: a tagged (or untagged, `name == None`) manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefEntry {
    /// Full normalized reference, e.g. `docker.io/library/busybox:latest`; None for untagged images.
    pub name: Option<String>,
    pub manifest_digest: Digest,
    pub media_type: String,
    pub size: u64,
}

/// The local store rooted at a directory.
pub struct Store {
    root: PathBuf,
}

/// A blob being written: a temp file under the store that becomes a blob on `commit`.
///
/// Dropping it without `commit` deletes the temp file.
pub struct BlobWriter {
    writer: HashingWriter<BufWriter<tempfile::NamedTempFile>>,
    blobs_root: PathBuf,
}

impl std::io::Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.writer.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.writer.flush()
    }
}

impl BlobWriter {
    /// fsyncs, verifies against `expected` when given, and renames into place. Returns (digest, size).
    pub fn commit(self, expected: Option<&Digest>) -> Result<(Digest, u64), StoreError> {
        let (buffered, digest, size) = self.writer.finish();
        let temp = buffered.into_inner().map_err(|e| {
            let source = io::Error::new(e.error().kind(), e.error().to_string());
            StoreError::Io {
                path: e.into_inner().get_ref().path().to_path_buf(),
                source,
            }
        })?;
        // Blobs are always hashed with sha256 while written; a sha512 expectation is checked
        // by re-reading (rare: only for content addressed by sha512 upstream).
        let digest = match expected {
            Some(want) if want.algorithm() != Algorithm::Sha256 => {
                let actual = hash_file(temp.path(), want.algorithm())?;
                if &actual != want {
                    return Err(StoreError::DigestMismatch {
                        expected: want.clone(),
                        actual,
                    });
                }
                actual
            }
            Some(want) if want != &digest => {
                return Err(StoreError::DigestMismatch {
                    expected: want.clone(),
                    actual: digest,
                });
            }
            _ => digest,
        };
        temp.as_file().sync_all().map_err(io_at(temp.path()))?;
        let dir = self.blobs_root.join(digest.algorithm().name());
        fs::create_dir_all(&dir).map_err(io_at(&dir))?;
        let dest = dir.join(digest.hex());
        if dest.exists() {
            // Content-addressed: an existing blob has the same bytes. The temp file is dropped.
            return Ok((digest, size));
        }
        temp.persist(&dest).map_err(|e| StoreError::Io {
            path: dest.clone(),
            source: e.error,
        })?;
        sync_dir(&dir)?;
        Ok((digest, size))
    }
}

/// Holds the store's exclusive lock until dropped.
pub struct StoreLock {
    _file: File,
}

/// index.json as stored: an OCI image index. Unknown fields survive a rewrite.
#[derive(Debug, Serialize, Deserialize)]
struct IndexFile {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType", default, skip_serializing_if = "Option::is_none")]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Vec<IndexDescriptor>,
    #[serde(flatten)]
    extra: BTreeMap<String, serde_json::Value>,
}

/// One descriptor of index.json.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct IndexDescriptor {
    #[serde(rename = "mediaType")]
    media_type: String,
    digest: Digest,
    size: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    annotations: BTreeMap<String, String>,
    #[serde(flatten)]
    extra: BTreeMap<String, serde_json::Value>,
}

impl IndexDescriptor {
    fn ref_name(&self) -> Option<&str> {
        self.annotations
            .get(REF_NAME_ANNOTATION)
            .map(String::as_str)
    }

    fn to_entry(&self) -> RefEntry {
        RefEntry {
            name: self.ref_name().map(str::to_string),
            manifest_digest: self.digest.clone(),
            media_type: self.media_type.clone(),
            size: self.size,
        }
    }

    fn from_entry(entry: RefEntry) -> IndexDescriptor {
        let mut annotations = BTreeMap::new();
        if let Some(name) = entry.name {
            annotations.insert(REF_NAME_ANNOTATION.to_string(), name);
        }
        IndexDescriptor {
            media_type: entry.media_type,
            digest: entry.manifest_digest,
            size: entry.size,
            annotations,
            extra: BTreeMap::new(),
        }
    }
}

impl IndexFile {
    fn empty() -> IndexFile {
        IndexFile {
            schema_version: 2,
            media_type: Some(OCI_INDEX_MEDIA_TYPE.to_string()),
            manifests: Vec::new(),
            extra: BTreeMap::new(),
        }
    }
}

/// fsyncs a directory so a rename inside it is durable.
fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_at(dir))
}

/// Hashes a whole file with `algorithm`, streaming.
fn hash_file(path: &Path, algorithm: Algorithm) -> Result<Digest, StoreError> {
    let mut file = File::open(path).map_err(io_at(path))?;
    let mut hasher = Hasher::new(algorithm);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf).map_err(io_at(path))?;
        if n == 0 {
            return Ok(hasher.finish());
        }
        hasher.update(&buf[..n]);
    }
}

impl Store {
    /// Opens (creating if needed) the OCI layout at `root`.
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        let store = Store {
            root: root.to_path_buf(),
        };
        for dir in [store.root.join("blobs").join("sha256"), store.tmp_dir()] {
            fs::create_dir_all(&dir).map_err(io_at(&dir))?;
        }
        // Builds unpack layers and run steps in tmp/ (see inode_placement).
        crate::inode_placement::mark_top_directory(&store.tmp_dir());
        store.remove_stale_temp_files();
        let layout = root.join("oci-layout");
        let index = store.index_path();
        if !layout.exists() || !index.exists() {
            let _lock = store.lock()?;
            if !layout.exists() {
                store.write_atomic(&layout, OCI_LAYOUT_CONTENT)?;
            }
            if !index.exists() {
                store.write_index(&IndexFile::empty())?;
            }
        }
        Ok(store)
    }
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// A directory under the root for temp files on the same file system (for atomic renames).
    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }
    /// Takes the exclusive store lock (blocking) for read-modify-write of index.json.
    pub fn lock(&self) -> Result<StoreLock, StoreError> {
        let path = self.root.join("lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io_at(&path))?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| io_at(&path)(e.into()))?;
        Ok(StoreLock { _file: file })
    }
    pub fn has_blob(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root
            .join("blobs")
            .join(digest.algorithm().name())
            .join(digest.hex())
    }
    /// Opens a blob for streaming reads (not verified; callers that need it hash while reading).
    pub fn open_blob(&self, digest: &Digest) -> Result<File, StoreError> {
        let path = self.blob_path(digest);
        File::open(&path).map_err(|source| {
            if source.kind() == io::ErrorKind::NotFound {
                StoreError::BlobNotFound(digest.clone())
            } else {
                StoreError::Io { path, source }
            }
        })
    }
    /// The size of a stored blob.
    pub fn blob_size(&self, digest: &Digest) -> Result<u64, StoreError> {
        let file = self.open_blob(digest)?;
        let meta = file.metadata().map_err(io_at(&self.blob_path(digest)))?;
        Ok(meta.len())
    }
    /// Reads a small blob (manifest, config) whole and verifies its digest.
    pub fn read_blob(&self, digest: &Digest) -> Result<Vec<u8>, StoreError> {
        let mut file = self.open_blob(digest)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(io_at(&self.blob_path(digest)))?;
        let actual = Digest::of(digest.algorithm(), &bytes);
        if &actual != digest {
            return Err(StoreError::DigestMismatch {
                expected: digest.clone(),
                actual,
            });
        }
        Ok(bytes)
    }
    /// Stores `bytes` as a blob (no-op if present) and returns its sha256 digest.
    pub fn put_blob_bytes(&self, bytes: &[u8]) -> Result<Digest, StoreError> {
        let digest = Digest::sha256_of(bytes);
        if self.has_blob(&digest) {
            return Ok(digest);
        }
        let mut writer = self.blob_writer()?;
        writer
            .write_all(bytes)
            .map_err(io_at(&self.blob_path(&digest)))?;
        writer.commit(Some(&digest))?;
        Ok(digest)
    }
    /// Starts writing a blob of unknown digest (sha256 computed while writing).
    pub fn blob_writer(&self) -> Result<BlobWriter, StoreError> {
        let tmp = self.tmp_dir();
        let temp = tempfile::Builder::new()
            .prefix("blob-")
            .tempfile_in(&tmp)
            .map_err(io_at(&tmp))?;
        Ok(BlobWriter {
            writer: HashingWriter::new(
                BufWriter::with_capacity(256 * 1024, temp),
                Algorithm::Sha256,
            ),
            blobs_root: self.root.join("blobs"),
        })
    }
    /// All index.json entries.
    pub fn list_refs(&self) -> Result<Vec<RefEntry>, StoreError> {
        Ok(self
            .read_index()?
            .manifests
            .iter()
            .map(IndexDescriptor::to_entry)
            .collect())
    }
    /// The entry named `name` (a full normalized reference).
    pub fn get_ref(&self, name: &str) -> Result<Option<RefEntry>, StoreError> {
        Ok(self
            .read_index()?
            .manifests
            .iter()
            .find(|d| d.ref_name() == Some(name))
            .map(IndexDescriptor::to_entry))
    }
    /// Adds or replaces an entry atomically (under the lock). `name == None` records an untagged image.
    pub fn set_ref(&self, entry: RefEntry) -> Result<(), StoreError> {
        let _lock = self.lock()?;
        let mut index = self.read_index()?;
        match &entry.name {
            Some(name) => index
                .manifests
                .retain(|d| d.ref_name() != Some(name.as_str())),
            None => {
                let already_listed = index
                    .manifests
                    .iter()
                    .any(|d| d.ref_name().is_none() && d.digest == entry.manifest_digest);
                if already_listed {
                    return Ok(());
                }
            }
        }
        index.manifests.push(IndexDescriptor::from_entry(entry));
        self.write_index(&index)
    }
    /// Removes the entry named `name`; returns whether it existed.
    pub fn remove_ref(&self, name: &str) -> Result<bool, StoreError> {
        let _lock = self.lock()?;
        let mut index = self.read_index()?;
        let before = index.manifests.len();
        index.manifests.retain(|d| d.ref_name() != Some(name));
        if index.manifests.len() == before {
            return Ok(false);
        }
        self.write_index(&index)?;
        Ok(true)
    }

    /// Removes the untagged entry of `digest`; returns whether it existed.
    pub fn remove_untagged(&self, digest: &Digest) -> Result<bool, StoreError> {
        let _lock = self.lock()?;
        let mut index = self.read_index()?;
        let before = index.manifests.len();
        index
            .manifests
            .retain(|d| !(d.ref_name().is_none() && d.digest == *digest));
        if index.manifests.len() == before {
            return Ok(false);
        }
        self.write_index(&index)?;
        Ok(true)
    }

    /// Deletes temp files left by writes that crashed (older than `STALE_TEMP_AGE`; younger
    /// ones may belong to a write in progress in another process). Best effort.
    fn remove_stale_temp_files(&self) {
        let Ok(entries) = fs::read_dir(self.tmp_dir()) else {
            return;
        };
        let now = std::time::SystemTime::now();
        for entry in entries.flatten() {
            let stale = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|modified| now.duration_since(modified).ok())
                .is_some_and(|age| age > STALE_TEMP_AGE);
            if stale {
                let _ = fs::remove_file(entry.path());
            }
        }
    }

    fn index_path(&self) -> PathBuf {
        self.root.join("index.json")
    }

    fn read_index(&self) -> Result<IndexFile, StoreError> {
        let path = self.index_path();
        let bytes = fs::read(&path).map_err(io_at(&path))?;
        let index: IndexFile =
            serde_json::from_slice(&bytes).map_err(|e| StoreError::CorruptIndex {
                path: path.clone(),
                message: e.to_string(),
            })?;
        if index.schema_version != 2 {
            return Err(StoreError::CorruptIndex {
                path,
                message: format!("schemaVersion is {}, expected 2", index.schema_version),
            });
        }
        Ok(index)
    }

    /// Rewrites index.json atomically. Callers hold the lock.
    fn write_index(&self, index: &IndexFile) -> Result<(), StoreError> {
        let path = self.index_path();
        let bytes = serde_json::to_vec_pretty(index).map_err(|e| StoreError::CorruptIndex {
            path: path.clone(),
            message: format!("cannot serialize: {e}"),
        })?;
        self.write_atomic(&path, &bytes)
    }

    /// Writes `bytes` to `path` atomically: temp file in tmp/ (swept of leftovers on open),
    /// fsync, rename, fsync the directory.
    pub fn write_atomic(&self, path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
        let tmp = self.tmp_dir();
        let mut file = AtomicFile::create_in(&tmp, path).map_err(io_at(&tmp))?;
        file.write_all(bytes).map_err(io_at(path))?;
        file.commit().map_err(io_at(path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: Option<&str>, content: &[u8]) -> RefEntry {
        RefEntry {
            name: name.map(str::to_string),
            manifest_digest: Digest::sha256_of(content),
            media_type: "application/vnd.oci.image.manifest.v1+json".to_string(),
            size: content.len() as u64,
        }
    }

    #[test]
    fn open_creates_an_oci_layout() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let layout: serde_json::Value =
            serde_json::from_slice(&fs::read(dir.path().join("oci-layout")).unwrap()).unwrap();
        assert_eq!(layout["imageLayoutVersion"], "1.0.0");
        let index: serde_json::Value =
            serde_json::from_slice(&fs::read(dir.path().join("index.json")).unwrap()).unwrap();
        assert_eq!(index["schemaVersion"], 2);
        assert_eq!(index["manifests"], serde_json::json!([]));
        assert!(dir.path().join("blobs/sha256").is_dir());
        assert!(store.tmp_dir().is_dir());
        // Reopening keeps existing content.
        store.set_ref(entry(Some("a"), b"x")).unwrap();
        let again = Store::open(dir.path()).unwrap();
        assert_eq!(again.list_refs().unwrap().len(), 1);
    }

    #[test]
    fn put_and_read_blob_round_trip_and_dedupe() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let digest = store.put_blob_bytes(b"hello").unwrap();
        assert_eq!(digest, Digest::sha256_of(b"hello"));
        assert!(store.has_blob(&digest));
        assert_eq!(store.read_blob(&digest).unwrap(), b"hello");
        assert_eq!(
            store.blob_path(&digest),
            dir.path().join("blobs/sha256").join(digest.hex())
        );
        assert_eq!(store.put_blob_bytes(b"hello").unwrap(), digest);
        assert_eq!(store.blob_size(&digest).unwrap(), 5);
        assert_eq!(fs::read_dir(store.tmp_dir()).unwrap().count(), 0);
    }

    #[test]
    fn read_blob_detects_corruption_and_missing_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let digest = store.put_blob_bytes(b"original").unwrap();
        fs::write(store.blob_path(&digest), b"tampered").unwrap();
        match store.read_blob(&digest) {
            Err(StoreError::DigestMismatch { expected, actual }) => {
                assert_eq!(expected, digest);
                assert_eq!(actual, Digest::sha256_of(b"tampered"));
            }
            other => panic!("expected a digest mismatch, got {other:?}"),
        }
        let missing = Digest::sha256_of(b"never stored");
        assert!(matches!(
            store.read_blob(&missing),
            Err(StoreError::BlobNotFound(d)) if d == missing
        ));
        assert!(!store.has_blob(&missing));
    }

    #[test]
    fn blob_writer_streams_and_verifies_expected_digest() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let data = vec![7u8; 1_000_000];
        let mut writer = store.blob_writer().unwrap();
        for chunk in data.chunks(4096) {
            writer.write_all(chunk).unwrap();
        }
        let (digest, size) = writer.commit(None).unwrap();
        assert_eq!(digest, Digest::sha256_of(&data));
        assert_eq!(size, 1_000_000);
        assert_eq!(store.read_blob(&digest).unwrap(), data);

        let mut writer = store.blob_writer().unwrap();
        writer.write_all(b"abc").unwrap();
        let wrong = Digest::sha256_of(b"xyz");
        assert!(matches!(
            writer.commit(Some(&wrong)),
            Err(StoreError::DigestMismatch { .. })
        ));
        assert!(!store.has_blob(&wrong));
        assert!(!store.has_blob(&Digest::sha256_of(b"abc")));
        assert_eq!(fs::read_dir(store.tmp_dir()).unwrap().count(), 0);
    }

    #[test]
    fn abandoned_blob_writer_leaves_no_blob_and_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut writer = store.blob_writer().unwrap();
        writer.write_all(b"half a blob").unwrap();
        drop(writer);
        assert_eq!(fs::read_dir(store.tmp_dir()).unwrap().count(), 0);
        assert_eq!(
            fs::read_dir(dir.path().join("blobs/sha256"))
                .unwrap()
                .count(),
            0
        );
    }

    #[test]
    fn refs_are_set_replaced_listed_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let first = entry(Some("docker.io/library/app:1"), b"one");
        store.set_ref(first.clone()).unwrap();
        assert_eq!(
            store.get_ref("docker.io/library/app:1").unwrap(),
            Some(first)
        );

        let replaced = entry(Some("docker.io/library/app:1"), b"two");
        store.set_ref(replaced.clone()).unwrap();
        store.set_ref(entry(None, b"untagged")).unwrap();
        store.set_ref(entry(None, b"untagged")).unwrap();
        let refs = store.list_refs().unwrap();
        assert_eq!(refs.len(), 2, "{refs:?}");
        assert_eq!(
            store.get_ref("docker.io/library/app:1").unwrap(),
            Some(replaced)
        );
        assert_eq!(store.get_ref("docker.io/library/app:2").unwrap(), None);

        // The annotation convention on disk.
        let index: serde_json::Value =
            serde_json::from_slice(&fs::read(dir.path().join("index.json")).unwrap()).unwrap();
        assert_eq!(
            index["manifests"][0]["annotations"][REF_NAME_ANNOTATION],
            "docker.io/library/app:1"
        );
        assert!(index["manifests"][1].get("annotations").is_none());

        assert!(
            !store.remove_untagged(&Digest::sha256_of(b"two")).unwrap(),
            "tagged, not untagged"
        );
        assert!(
            store
                .remove_untagged(&Digest::sha256_of(b"untagged"))
                .unwrap()
        );
        assert!(
            !store
                .remove_untagged(&Digest::sha256_of(b"untagged"))
                .unwrap()
        );
        store.set_ref(entry(None, b"untagged")).unwrap();
        assert!(store.remove_ref("docker.io/library/app:1").unwrap());
        assert!(!store.remove_ref("docker.io/library/app:1").unwrap());
        assert_eq!(store.list_refs().unwrap(), vec![entry(None, b"untagged")]);
    }

    #[test]
    fn corrupt_index_is_a_clear_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        fs::write(dir.path().join("index.json"), b"{not json").unwrap();
        let err = store.list_refs().unwrap_err();
        assert!(matches!(err, StoreError::CorruptIndex { .. }));
        assert!(
            err.to_string()
                .contains(&dir.path().join("index.json").display().to_string()),
            "{err}"
        );
        assert!(store.set_ref(entry(Some("a"), b"a")).is_err());
        fs::write(
            dir.path().join("index.json"),
            br#"{"schemaVersion":1,"manifests":[]}"#,
        )
        .unwrap();
        assert!(matches!(
            store.get_ref("a"),
            Err(StoreError::CorruptIndex { .. })
        ));
        fs::write(
            dir.path().join("index.json"),
            br#"{"schemaVersion":2,"manifests":[{"mediaType":"x","digest":"sha256:zz","size":1}]}"#,
        )
        .unwrap();
        assert!(matches!(
            store.list_refs(),
            Err(StoreError::CorruptIndex { .. })
        ));
    }

    #[test]
    fn index_keeps_unknown_fields_across_rewrites() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let digest = Digest::sha256_of(b"m");
        let text = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"m","digest":"{digest}","size":1,"platform":{{"os":"linux","architecture":"amd64"}}}}],"annotations":{{"k":"v"}}}}"#
        );
        fs::write(dir.path().join("index.json"), text).unwrap();
        store.set_ref(entry(Some("x"), b"x")).unwrap();
        let index: serde_json::Value =
            serde_json::from_slice(&fs::read(dir.path().join("index.json")).unwrap()).unwrap();
        assert_eq!(index["annotations"]["k"], "v");
        assert_eq!(index["manifests"][0]["platform"]["os"], "linux");
        assert_eq!(index["manifests"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn open_removes_stale_temp_files_but_keeps_fresh_ones() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let stale = store.tmp_dir().join("blob-crashed");
        let fresh = store.tmp_dir().join("blob-in-progress");
        fs::write(&stale, b"half").unwrap();
        fs::write(&fresh, b"half").unwrap();
        let two_days_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(2 * 86400);
        File::options()
            .write(true)
            .open(&stale)
            .unwrap()
            .set_modified(two_days_ago)
            .unwrap();
        Store::open(dir.path()).unwrap();
        assert!(!stale.exists());
        assert!(fresh.exists());
    }

    #[test]
    fn concurrent_set_ref_from_many_threads_loses_no_entry() {
        let dir = tempfile::tempdir().unwrap();
        Store::open(dir.path()).unwrap();
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let root = dir.path().to_path_buf();
                std::thread::spawn(move || {
                    // Separate Store values, like separate processes: each flock is its own open file.
                    let store = Store::open(&root).unwrap();
                    for i in 0..10 {
                        let name = format!("app:{t}-{i}");
                        store.set_ref(entry(Some(&name), name.as_bytes())).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.list_refs().unwrap().len(), 80);
        assert_eq!(fs::read_dir(store.tmp_dir()).unwrap().count(), 0);
    }
}

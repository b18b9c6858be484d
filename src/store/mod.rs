//! Local content-addressed store: an OCI image layout (blobs/sha256, index.json) under the root,
//! with atomic writes (temp file, fsync, rename), digest verification on read, and a file lock.
//!
//! CONTRACT (used by build/, client/, cli/): the signatures below are fixed; the storage work
//! fills in the bodies and may add more items.

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::digest::Digest;

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
pub struct BlobWriter {
    _private: (),
}

impl std::io::Write for BlobWriter {
    fn write(&mut self, _buf: &[u8]) -> std::io::Result<usize> {
        todo!()
    }
    fn flush(&mut self) -> std::io::Result<()> {
        todo!()
    }
}

impl BlobWriter {
    /// fsyncs, verifies against `expected` when given, and renames into place. Returns (digest, size).
    pub fn commit(self, _expected: Option<&Digest>) -> Result<(Digest, u64), StoreError> {
        todo!()
    }
}

/// Holds the store's exclusive lock until dropped.
pub struct StoreLock {
    _file: File,
}

impl Store {
    /// Opens (creating if needed) the OCI layout at `root`.
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        let _ = root;
        todo!()
    }
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// A directory under the root for temp files on the same file system (for atomic renames).
    pub fn tmp_dir(&self) -> PathBuf {
        todo!()
    }
    /// Takes the exclusive store lock (blocking) for read-modify-write of index.json.
    pub fn lock(&self) -> Result<StoreLock, StoreError> {
        todo!()
    }
    pub fn has_blob(&self, _digest: &Digest) -> bool {
        todo!()
    }
    pub fn blob_path(&self, _digest: &Digest) -> PathBuf {
        todo!()
    }
    /// Opens a blob for streaming reads (not verified; callers that need it hash while reading).
    pub fn open_blob(&self, _digest: &Digest) -> Result<File, StoreError> {
        todo!()
    }
    /// Reads a small blob (manifest, config) whole and verifies its digest.
    pub fn read_blob(&self, _digest: &Digest) -> Result<Vec<u8>, StoreError> {
        todo!()
    }
    /// Stores `bytes` as a blob (no-op if present) and returns its sha256 digest.
    pub fn put_blob_bytes(&self, _bytes: &[u8]) -> Result<Digest, StoreError> {
        todo!()
    }
    /// Starts writing a blob of unknown digest (sha256 computed while writing).
    pub fn blob_writer(&self) -> Result<BlobWriter, StoreError> {
        todo!()
    }
    /// All index.json entries.
    pub fn list_refs(&self) -> Result<Vec<RefEntry>, StoreError> {
        todo!()
    }
    /// The entry named `name` (a full normalized reference).
    pub fn get_ref(&self, _name: &str) -> Result<Option<RefEntry>, StoreError> {
        todo!()
    }
    /// Adds or replaces an entry atomically (under the lock). `name == None` records an untagged image.
    pub fn set_ref(&self, _entry: RefEntry) -> Result<(), StoreError> {
        todo!()
    }
    /// Removes the entry named `name`; returns whether it existed.
    pub fn remove_ref(&self, _name: &str) -> Result<bool, StoreError> {
        todo!()
    }
}

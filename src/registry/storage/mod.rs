//! The `Storage` trait: everything the registry keeps, behind one interface so a filesystem
//! backend (here) and an object-store backend (later) are interchangeable. Storage knows about
//! blobs, repository links, upload sessions, manifests, tags and referrers, but nothing about HTTP.

mod fs;
mod object;

pub use fs::FilesystemStorage;
pub use object::{ObjectStorage, PART_SIZE};

use std::path::PathBuf;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;

use super::name::{RepositoryName, UploadId};
use crate::digest::Digest;

/// A stream of body bytes, going into or out of storage.
pub type ByteStream = BoxStream<'static, Result<Bytes, std::io::Error>>;

/// A manifest as stored: its media type and its exact bytes.
#[derive(Debug, Clone)]
pub struct StoredManifest {
    pub media_type: String,
    pub bytes: Bytes,
}

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("upload session {0} is unknown")]
    UploadUnknown(String),
    #[error("chunk starts at byte {got}, but the upload is at byte {expected}")]
    UploadOutOfOrder { expected: u64, got: u64 },
    #[error("digest mismatch: expected {expected}, content is {actual}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("size mismatch: expected {expected} bytes, received {actual}")]
    SizeMismatch { expected: u64, actual: u64 },
    #[error("reading the request body failed: {0}")]
    BodyRead(String),
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("corrupt registry state in {path}: {detail}")]
    Corrupt { path: PathBuf, detail: String },
    #[error("background task failed: {0}")]
    Task(String),
    #[error("this storage backend does not support {0}")]
    Unsupported(&'static str),
}

/// A blob as garbage collection sees it.
#[derive(Debug, Clone)]
pub struct BlobInfo {
    pub digest: Digest,
    pub size: u64,
    /// When the blob was last stored, linked, or touched ([`Storage::blob_touch`]).
    pub last_used: SystemTime,
}

/// A manifest linked in a repository, as garbage collection sees it.
#[derive(Debug, Clone)]
pub struct ManifestInfo {
    pub digest: Digest,
    /// When the manifest was last put into this repository.
    pub linked_at: SystemTime,
}

/// An upload session, as garbage collection sees it.
#[derive(Debug, Clone)]
pub struct UploadInfo {
    pub repo: RepositoryName,
    pub id: UploadId,
    /// When the session last received bytes (or was started).
    pub last_activity: SystemTime,
}

pub type StorageResult<T> = Result<T, StorageError>;

/// The registry's persistent state. Implementations must make every acknowledged write durable
/// before returning, and never expose a blob whose content does not match its digest.
#[async_trait]
pub trait Storage: Send + Sync + 'static {
    // --- Content-addressed blobs, shared by all repositories.

    /// Size of the blob, if the registry holds it.
    async fn blob_size(&self, digest: &Digest) -> StorageResult<Option<u64>>;
    /// Streams `len` bytes of the blob starting at `start` (the caller checked the bounds).
    async fn blob_read(&self, digest: &Digest, start: u64, len: u64) -> StorageResult<ByteStream>;
    /// Stores a small blob whose digest the caller already verified (manifests).
    async fn blob_put(&self, digest: &Digest, bytes: Bytes) -> StorageResult<()>;

    // --- Repositories and their blob links.

    /// Whether the repository holds any blob or manifest.
    async fn repository_exists(&self, repo: &RepositoryName) -> StorageResult<bool>;
    /// All repository names, sorted.
    async fn repositories(&self) -> StorageResult<Vec<String>>;
    /// Makes an existing global blob visible in `repo`.
    async fn link_blob(&self, repo: &RepositoryName, digest: &Digest) -> StorageResult<()>;
    async fn blob_linked(&self, repo: &RepositoryName, digest: &Digest) -> StorageResult<bool>;
    /// Removes the blob from `repo`; returns whether it was linked.
    async fn unlink_blob(&self, repo: &RepositoryName, digest: &Digest) -> StorageResult<bool>;

    // --- Upload sessions (resumable across restarts).

    async fn upload_start(&self, repo: &RepositoryName) -> StorageResult<UploadId>;
    /// Bytes received and acknowledged so far.
    async fn upload_offset(&self, repo: &RepositoryName, id: &UploadId) -> StorageResult<u64>;
    /// Appends `body` to the upload. `start`, when given, must equal the current offset;
    /// `expected_len`, when given, must equal the number of bytes in `body`. On any failure the
    /// upload is left at its previous offset. Returns the new offset.
    async fn upload_append(
        &self,
        repo: &RepositoryName,
        id: &UploadId,
        start: Option<u64>,
        expected_len: Option<u64>,
        body: ByteStream,
    ) -> StorageResult<u64>;
    /// Verifies the upload against `digest`, stores it as a blob and links it into `repo`.
    /// On a digest mismatch the upload is discarded. Returns the blob size.
    async fn upload_finish(
        &self,
        repo: &RepositoryName,
        id: &UploadId,
        digest: &Digest,
    ) -> StorageResult<u64>;
    async fn upload_cancel(&self, repo: &RepositoryName, id: &UploadId) -> StorageResult<()>;
    /// Number of upload sessions currently on disk.
    async fn upload_count(&self) -> StorageResult<u64>;

    // --- Manifests, tags and referrers.

    /// Stores a verified manifest and links it into `repo`.
    async fn manifest_put(
        &self,
        repo: &RepositoryName,
        digest: &Digest,
        media_type: &str,
        bytes: Bytes,
    ) -> StorageResult<()>;
    async fn manifest_get(
        &self,
        repo: &RepositoryName,
        digest: &Digest,
    ) -> StorageResult<Option<StoredManifest>>;
    /// Unlinks the manifest and every tag pointing at it; returns whether it was linked.
    async fn manifest_delete(&self, repo: &RepositoryName, digest: &Digest) -> StorageResult<bool>;
    async fn tag_set(&self, repo: &RepositoryName, tag: &str, digest: &Digest)
    -> StorageResult<()>;
    async fn tag_get(&self, repo: &RepositoryName, tag: &str) -> StorageResult<Option<Digest>>;
    async fn tag_delete(&self, repo: &RepositoryName, tag: &str) -> StorageResult<bool>;
    /// All tags of `repo`, sorted.
    async fn tags(&self, repo: &RepositoryName) -> StorageResult<Vec<String>>;
    /// Records that manifest `referrer` (described by `descriptor`) has subject `subject`.
    async fn referrer_add(
        &self,
        repo: &RepositoryName,
        subject: &Digest,
        referrer: &Digest,
        descriptor: &serde_json::Value,
    ) -> StorageResult<()>;
    async fn referrer_remove(
        &self,
        repo: &RepositoryName,
        subject: &Digest,
        referrer: &Digest,
    ) -> StorageResult<()>;
    /// Descriptors of every manifest whose subject is `subject`, sorted by digest.
    async fn referrers(
        &self,
        repo: &RepositoryName,
        subject: &Digest,
    ) -> StorageResult<Vec<serde_json::Value>>;

    // --- Enumeration and removal, for garbage collection. The defaults refuse, so a backend
    // --- that cannot enumerate is never collected by mistake.

    /// Every global blob, with its size and last use.
    async fn blob_list(&self) -> StorageResult<Vec<BlobInfo>> {
        Err(StorageError::Unsupported("listing blobs"))
    }
    /// Marks the blob as used now, so a collection that started earlier keeps it. Touching a
    /// missing blob is not an error (callers check existence afterwards).
    async fn blob_touch(&self, _digest: &Digest) -> StorageResult<()> {
        Err(StorageError::Unsupported("touching blobs"))
    }
    /// Removes a global blob; returns whether it existed.
    async fn blob_delete(&self, _digest: &Digest) -> StorageResult<bool> {
        Err(StorageError::Unsupported("deleting blobs"))
    }
    /// Removes a global blob only if it was not used (stored, linked or touched) at or after
    /// `unused_since`; returns whether it was removed. Backends should make this atomic with
    /// respect to [`Storage::blob_touch`]: a touch that finds the blob present either keeps it
    /// or happens after the removal (and then sees it missing). The default only re-checks
    /// nothing and removes, which leaves a small window; the filesystem backend closes it.
    async fn blob_delete_unused(
        &self,
        digest: &Digest,
        _unused_since: SystemTime,
    ) -> StorageResult<bool> {
        self.blob_delete(digest).await
    }
    /// Digests of every blob linked into `repo`.
    async fn linked_blobs(&self, _repo: &RepositoryName) -> StorageResult<Vec<Digest>> {
        Err(StorageError::Unsupported("listing blob links"))
    }
    /// Every manifest linked into `repo`.
    async fn manifest_list(&self, _repo: &RepositoryName) -> StorageResult<Vec<ManifestInfo>> {
        Err(StorageError::Unsupported("listing manifests"))
    }
    /// Every upload session in progress.
    async fn upload_list(&self) -> StorageResult<Vec<UploadInfo>> {
        Err(StorageError::Unsupported("listing uploads"))
    }

    // --- Redirects.

    /// A URL the client may fetch the whole blob from directly (a presigned object URL), when
    /// the backend is configured to hand them out; `None` means serve the bytes.
    async fn blob_redirect(&self, _digest: &Digest) -> StorageResult<Option<String>> {
        Ok(None)
    }
}

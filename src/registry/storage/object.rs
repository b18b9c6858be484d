//! Object-store `Storage` (S3-compatible buckets via the `object_store` crate, or any other
//! `ObjectStore`): keeps every piece of registry state in the bucket, so any number of stateless
//! `imgbuild serve` replicas can share one bucket. Keys mirror the filesystem layout:
//!
//! ```text
//! blobs/<alg>/<hex[..2]>/<hex>                                   blob content
//! touched/<alg>/<hex>                                            "blob used now" marker (GC)
//! repositories/<name>/_layers/<alg>/<hex>                        blob link (empty)
//! repositories/<name>/_manifests/revisions/<alg>/<hex>           manifest link (media type)
//! repositories/<name>/_manifests/tags/<tag>                      tag -> digest
//! repositories/<name>/_referrers/<alg>/<hex>/<alg>-<hex>.json    referrer descriptor
//! uploads/<id>/state.json                                        upload session state
//! uploads/<id>/parts/<offset>-<nonce>                            bytes of one PATCH
//! ```
//!
//! Uploads: each append streams its body into one part object (a multipart upload of
//! `PART_SIZE` pieces once it outgrows one piece), then rewrites `state.json` listing the parts in
//! order with the new offset. The state lives in the bucket, so a session started on one replica
//! continues on any other. A failed append deletes its part and leaves the state as it was.
//!
//! Finishing streams the parts back in order, hashing them and writing them as one multipart
//! upload to the blob's final key; the multipart upload is completed (made visible, atomically)
//! only when the digest matches, and aborted otherwise. The trade-off: every blob crosses the
//! network three times (in, back, out again), because a SHA-256 state cannot be saved in the
//! bucket for another replica to resume, and `object_store` offers no server-side part copy. In
//! exchange memory stays bounded by a few `PART_SIZE` buffers per request whatever the blob size,
//! and no replica needs local disk.
//!
//! Within one replica, requests on one session are serialised by a lock; across replicas the
//! last state write wins (clients do not send two chunks of one session at once).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::signer::Signer;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use tokio::sync::Mutex;

use super::{
    BlobInfo, ByteStream, ManifestInfo, Storage, StorageError, StorageResult, StoredManifest,
    UploadInfo,
};
use crate::digest::{Digest, Hasher};
use crate::registry::config::S3Settings;
use crate::registry::name::{RepositoryName, UploadId};

/// Size of one multipart piece (S3 wants at least 5 MiB for all but the last one). Bodies up to
/// this size are stored with one PUT.
pub const PART_SIZE: usize = 8 * 1024 * 1024;
/// Multipart pieces in flight at once per request; memory per request stays below
/// `(MAX_PARTS_IN_FLIGHT + 1) * PART_SIZE`.
const MAX_PARTS_IN_FLIGHT: usize = 2;
/// How long a presigned blob URL stays valid.
const REDIRECT_EXPIRY: Duration = Duration::from_secs(15 * 60);

/// An upload session as stored in `uploads/<id>/state.json`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct UploadState {
    repository: String,
    /// Bytes acknowledged to the client: the sum of the part lengths.
    offset: u64,
    /// The parts, in upload order.
    parts: Vec<UploadPart>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct UploadPart {
    /// Object name below `uploads/<id>/parts/`.
    name: String,
    len: u64,
}

/// Registry storage in an object store (an S3 bucket in production).
pub struct ObjectStorage {
    store: Arc<dyn ObjectStore>,
    /// Present when blob GETs should redirect to presigned URLs.
    signer: Option<Arc<dyn Signer>>,
    /// Serialises requests on one upload session within this replica.
    session_locks: StdMutex<HashMap<UploadId, Arc<Mutex<()>>>>,
}

/// Maps an object-store failure on `key` to a storage error naming the key.
fn store_error(
    action: &'static str,
    key: &Path,
) -> impl FnOnce(object_store::Error) -> StorageError {
    let path = PathBuf::from(key.as_ref());
    move |e| StorageError::Io {
        action,
        path,
        source: io::Error::other(e),
    }
}

fn corrupt(key: &Path, detail: impl ToString) -> StorageError {
    StorageError::Corrupt {
        path: PathBuf::from(key.as_ref()),
        detail: detail.to_string(),
    }
}

fn key(text: &str) -> StorageResult<Path> {
    Path::parse(text).map_err(|e| StorageError::Corrupt {
        path: PathBuf::from(text),
        detail: format!("not a valid object key: {e}"),
    })
}

/// Parses `<alg>/<hex>` (the last two key components) back into a digest.
fn digest_from_parts(algorithm: &str, hex: &str) -> Option<Digest> {
    Digest::parse(&format!("{algorithm}:{hex}")).ok()
}

/// The last component of a key.
fn file_name(key: &Path) -> Option<String> {
    key.filename().map(str::to_string)
}

/// Streams bytes into one object: a single PUT when everything fits in one `PART_SIZE` buffer,
/// a multipart upload otherwise. Nothing is visible under the key until `finish`.
struct ObjectWriter {
    store: Arc<dyn ObjectStore>,
    key: Path,
    buffer: BytesMut,
    multipart: Option<WriteMultipart>,
    written: u64,
}

impl ObjectWriter {
    fn new(store: Arc<dyn ObjectStore>, key: Path) -> ObjectWriter {
        ObjectWriter {
            store,
            key,
            buffer: BytesMut::new(),
            multipart: None,
            written: 0,
        }
    }

    async fn write(&mut self, chunk: Bytes) -> StorageResult<()> {
        self.written += chunk.len() as u64;
        if let Some(multipart) = self.multipart.as_mut() {
            multipart
                .wait_for_capacity(MAX_PARTS_IN_FLIGHT)
                .await
                .map_err(store_error("upload part of", &self.key))?;
            multipart.put(chunk);
            return Ok(());
        }
        self.buffer.extend_from_slice(&chunk);
        if self.buffer.len() >= PART_SIZE {
            let upload = self
                .store
                .put_multipart(&self.key)
                .await
                .map_err(store_error("start multipart upload of", &self.key))?;
            let mut multipart = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
            multipart.put(self.buffer.split().freeze());
            self.multipart = Some(multipart);
        }
        Ok(())
    }

    /// Makes the object visible with everything written.
    async fn finish(self) -> StorageResult<()> {
        match self.multipart {
            Some(multipart) => multipart
                .finish()
                .await
                .map(|_| ())
                .map_err(store_error("complete multipart upload of", &self.key)),
            None => self
                .store
                .put(&self.key, PutPayload::from_bytes(self.buffer.freeze()))
                .await
                .map(|_| ())
                .map_err(store_error("write", &self.key)),
        }
    }

    /// Drops everything written; the key is left untouched.
    async fn abort(self) {
        if let Some(multipart) = self.multipart
            && let Err(e) = multipart.abort().await
        {
            tracing::warn!(key = %self.key, error = %e, "aborting a multipart upload failed");
        }
    }
}

impl ObjectStorage {
    /// Storage over any object store (tests use `InMemory` or `LocalFileSystem`).
    pub fn new(store: Arc<dyn ObjectStore>) -> ObjectStorage {
        ObjectStorage {
            store,
            signer: None,
            session_locks: StdMutex::new(HashMap::new()),
        }
    }

    /// Storage in an S3-compatible bucket. Settings left unset come from the `AWS_*`
    /// environment variables.
    pub fn s3(settings: &S3Settings) -> StorageResult<ObjectStorage> {
        let mut builder = object_store::aws::AmazonS3Builder::from_env()
            .with_bucket_name(&settings.bucket)
            .with_allow_http(settings.allow_http);
        if let Some(endpoint) = &settings.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        if let Some(region) = &settings.region {
            builder = builder.with_region(region);
        }
        if let Some(id) = &settings.access_key_id {
            builder = builder.with_access_key_id(id);
        }
        if let Some(secret) = &settings.secret_access_key {
            builder = builder.with_secret_access_key(secret);
        }
        let s3 = Arc::new(builder.build().map_err(|e| StorageError::Io {
            action: "configure S3 bucket",
            path: PathBuf::from(&settings.bucket),
            source: io::Error::other(e),
        })?);
        let mut storage = ObjectStorage::new(s3.clone());
        if settings.redirect {
            storage.signer = Some(s3);
        }
        Ok(storage)
    }

    fn blob_key(digest: &Digest) -> StorageResult<Path> {
        key(&format!(
            "blobs/{}/{}/{}",
            digest.algorithm().name(),
            &digest.hex()[..2],
            digest.hex()
        ))
    }

    fn touch_key(digest: &Digest) -> StorageResult<Path> {
        key(&format!(
            "touched/{}/{}",
            digest.algorithm().name(),
            digest.hex()
        ))
    }

    fn repo_prefix(repo: &RepositoryName) -> String {
        format!("repositories/{}", repo.as_str())
    }

    fn layer_link_key(repo: &RepositoryName, digest: &Digest) -> StorageResult<Path> {
        key(&format!(
            "{}/_layers/{}/{}",
            Self::repo_prefix(repo),
            digest.algorithm().name(),
            digest.hex()
        ))
    }

    fn revision_key(repo: &RepositoryName, digest: &Digest) -> StorageResult<Path> {
        key(&format!(
            "{}/_manifests/revisions/{}/{}",
            Self::repo_prefix(repo),
            digest.algorithm().name(),
            digest.hex()
        ))
    }

    fn tags_prefix(repo: &RepositoryName) -> StorageResult<Path> {
        key(&format!("{}/_manifests/tags", Self::repo_prefix(repo)))
    }

    fn referrers_prefix(repo: &RepositoryName, subject: &Digest) -> StorageResult<Path> {
        key(&format!(
            "{}/_referrers/{}/{}",
            Self::repo_prefix(repo),
            subject.algorithm().name(),
            subject.hex()
        ))
    }

    fn referrer_key(
        repo: &RepositoryName,
        subject: &Digest,
        referrer: &Digest,
    ) -> StorageResult<Path> {
        Ok(Self::referrers_prefix(repo, subject)?.join(format!(
            "{}-{}.json",
            referrer.algorithm().name(),
            referrer.hex()
        )))
    }

    fn upload_prefix(id: &UploadId) -> StorageResult<Path> {
        key(&format!("uploads/{}", id.as_str()))
    }

    fn upload_state_key(id: &UploadId) -> StorageResult<Path> {
        Ok(Self::upload_prefix(id)?.join("state.json"))
    }

    fn upload_part_key(id: &UploadId, name: &str) -> StorageResult<Path> {
        Ok(Self::upload_prefix(id)?.join("parts").join(name))
    }

    /// The object's bytes, or `None` when there is no such object.
    async fn get_optional(&self, key: &Path) -> StorageResult<Option<Bytes>> {
        let result = match self.store.get(key).await {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(store_error("read", key)(e)),
        };
        result
            .bytes()
            .await
            .map(Some)
            .map_err(store_error("read", key))
    }

    /// The object's size, or `None` when there is no such object.
    async fn head_size(&self, key: &Path) -> StorageResult<Option<u64>> {
        match self.store.head(key).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(store_error("stat", key)(e)),
        }
    }

    async fn put_small(&self, key: &Path, bytes: impl Into<Bytes>) -> StorageResult<()> {
        self.store
            .put(key, PutPayload::from_bytes(bytes.into()))
            .await
            .map(|_| ())
            .map_err(store_error("write", key))
    }

    /// Deletes an object; returns whether it existed.
    async fn delete_existing(&self, key: &Path) -> StorageResult<bool> {
        if self.head_size(key).await?.is_none() {
            return Ok(false);
        }
        match self.store.delete(key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(true),
            Err(e) => Err(store_error("delete", key)(e)),
        }
    }

    /// Every object below `prefix`, recursively.
    async fn list_all(&self, prefix: &Path) -> StorageResult<Vec<object_store::ObjectMeta>> {
        self.store
            .list(Some(prefix))
            .try_collect()
            .await
            .map_err(store_error("list", prefix))
    }

    /// One level below `prefix`: (object metadata, names of sub-prefixes).
    async fn list_level(
        &self,
        prefix: &Path,
    ) -> StorageResult<(Vec<object_store::ObjectMeta>, Vec<String>)> {
        let listing = self
            .store
            .list_with_delimiter(Some(prefix))
            .await
            .map_err(store_error("list", prefix))?;
        let children = listing
            .common_prefixes
            .iter()
            .filter_map(file_name)
            .collect();
        Ok((listing.objects, children))
    }

    /// Removes every object below `prefix`.
    async fn delete_prefix(&self, prefix: &Path) -> StorageResult<()> {
        for meta in self.list_all(prefix).await? {
            match self.store.delete(&meta.location).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(store_error("delete", &meta.location)(e)),
            }
        }
        Ok(())
    }

    fn session_lock(&self, id: &UploadId) -> Arc<Mutex<()>> {
        // A poisoned map only means a panic during a HashMap insert or remove, which leaves
        // the map consistent.
        let mut locks = self.session_locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.entry(id.clone()).or_default().clone()
    }

    fn forget_session_lock(&self, id: &UploadId) {
        let mut locks = self.session_locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.remove(id);
    }

    /// Loads the session state; `UploadUnknown` if it is missing or belongs to another repository.
    async fn load_session(
        &self,
        repo: &RepositoryName,
        id: &UploadId,
    ) -> StorageResult<UploadState> {
        let state_key = Self::upload_state_key(id)?;
        let Some(bytes) = self.get_optional(&state_key).await? else {
            return Err(StorageError::UploadUnknown(id.to_string()));
        };
        let state: UploadState =
            serde_json::from_slice(&bytes).map_err(|e| corrupt(&state_key, e))?;
        if state.repository != repo.as_str() {
            return Err(StorageError::UploadUnknown(id.to_string()));
        }
        Ok(state)
    }

    async fn save_session(&self, id: &UploadId, state: &UploadState) -> StorageResult<()> {
        let state_key = Self::upload_state_key(id)?;
        let bytes = serde_json::to_vec(state).map_err(|e| corrupt(&state_key, e))?;
        self.put_small(&state_key, bytes).await
    }

    /// Removes the session's parts, then its state. The state goes last so that a removal cut
    /// short leaves a session that `upload_list` still reports (and garbage collection cancels),
    /// never parts nobody knows about.
    async fn end_session(&self, id: &UploadId) -> StorageResult<()> {
        let state_key = Self::upload_state_key(id)?;
        let parts_prefix = Self::upload_prefix(id)?.join("parts");
        self.delete_prefix(&parts_prefix).await?;
        match self.store.delete(&state_key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(store_error("delete", &state_key)(e)),
        }
        self.forget_session_lock(id);
        Ok(())
    }

    /// Streams the session's parts in order into `hasher` and, when given, `writer`, checking
    /// each part's recorded length.
    async fn copy_parts(
        &self,
        id: &UploadId,
        state: &UploadState,
        hasher: &mut Hasher,
        mut writer: Option<&mut ObjectWriter>,
    ) -> StorageResult<()> {
        for part in &state.parts {
            let part_key = Self::upload_part_key(id, &part.name)?;
            let mut stream = self
                .store
                .get(&part_key)
                .await
                .map_err(store_error("read upload part", &part_key))?
                .into_stream();
            let mut seen = 0u64;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(store_error("read upload part", &part_key))?;
                seen += chunk.len() as u64;
                hasher.update(&chunk);
                if let Some(writer) = writer.as_deref_mut() {
                    writer.write(chunk).await?;
                }
            }
            if seen != part.len {
                return Err(corrupt(
                    &part_key,
                    format!("holds {seen} bytes, the session recorded {}", part.len),
                ));
            }
        }
        Ok(())
    }

    /// Digests the upload's bytes and stores them under the blob key (unless the blob is
    /// already there), completing the write only when the content matches `digest`.
    async fn assemble_blob(
        &self,
        id: &UploadId,
        state: &UploadState,
        digest: &Digest,
    ) -> StorageResult<()> {
        let blob_key = Self::blob_key(digest)?;
        let mut writer = match self.head_size(&blob_key).await? {
            Some(_) => None,
            None => Some(ObjectWriter::new(self.store.clone(), blob_key)),
        };
        let mut hasher = Hasher::new(digest.algorithm());
        let copied = self
            .copy_parts(id, state, &mut hasher, writer.as_mut())
            .await;
        let verified = copied.and_then(|()| {
            let actual = hasher.finish();
            if &actual == digest {
                Ok(())
            } else {
                Err(StorageError::DigestMismatch {
                    expected: digest.clone(),
                    actual,
                })
            }
        });
        match (verified, writer) {
            (Ok(()), Some(writer)) => writer.finish().await,
            (Ok(()), None) => Ok(()),
            (Err(e), Some(writer)) => {
                writer.abort().await;
                Err(e)
            }
            (Err(e), None) => Err(e),
        }
    }
}

#[async_trait]
impl Storage for ObjectStorage {
    async fn blob_size(&self, digest: &Digest) -> StorageResult<Option<u64>> {
        self.head_size(&Self::blob_key(digest)?).await
    }

    async fn blob_read(&self, digest: &Digest, start: u64, len: u64) -> StorageResult<ByteStream> {
        if len == 0 {
            return Ok(futures::stream::empty().boxed());
        }
        let blob_key = Self::blob_key(digest)?;
        let options = GetOptions {
            range: Some(GetRange::Bounded(start..start + len)),
            ..GetOptions::default()
        };
        let result = self
            .store
            .get_opts(&blob_key, options)
            .await
            .map_err(store_error("read", &blob_key))?;
        Ok(result.into_stream().map_err(io::Error::other).boxed())
    }

    async fn blob_put(&self, digest: &Digest, bytes: Bytes) -> StorageResult<()> {
        let blob_key = Self::blob_key(digest)?;
        if self.head_size(&blob_key).await?.is_some() {
            return Ok(());
        }
        self.put_small(&blob_key, bytes).await
    }

    async fn repository_exists(&self, repo: &RepositoryName) -> StorageResult<bool> {
        let (_, children) = self.list_level(&key(&Self::repo_prefix(repo))?).await?;
        Ok(children.iter().any(|c| c == "_layers" || c == "_manifests"))
    }

    async fn repositories(&self) -> StorageResult<Vec<String>> {
        let mut found = Vec::new();
        let mut pending = vec![String::new()];
        while let Some(name) = pending.pop() {
            let prefix = if name.is_empty() {
                key("repositories")?
            } else {
                key(&format!("repositories/{name}"))?
            };
            let (_, children) = self.list_level(&prefix).await?;
            if !name.is_empty() && children.iter().any(|c| c == "_layers" || c == "_manifests") {
                found.push(name.clone());
            }
            for child in children.into_iter().filter(|c| !c.starts_with('_')) {
                pending.push(if name.is_empty() {
                    child
                } else {
                    format!("{name}/{child}")
                });
            }
        }
        found.sort();
        Ok(found)
    }

    async fn link_blob(&self, repo: &RepositoryName, digest: &Digest) -> StorageResult<()> {
        let link = Self::layer_link_key(repo, digest)?;
        if self.head_size(&link).await?.is_none() {
            self.put_small(&link, Bytes::new()).await?;
        }
        // A linked blob counts as used now, so a collection that started earlier keeps it.
        self.blob_touch(digest).await
    }

    async fn blob_linked(&self, repo: &RepositoryName, digest: &Digest) -> StorageResult<bool> {
        Ok(self
            .head_size(&Self::layer_link_key(repo, digest)?)
            .await?
            .is_some())
    }

    async fn unlink_blob(&self, repo: &RepositoryName, digest: &Digest) -> StorageResult<bool> {
        self.delete_existing(&Self::layer_link_key(repo, digest)?)
            .await
    }

    async fn upload_start(&self, repo: &RepositoryName) -> StorageResult<UploadId> {
        let id = UploadId::random().map_err(|e| StorageError::Task(e.to_string()))?;
        let state = UploadState {
            repository: repo.to_string(),
            offset: 0,
            parts: Vec::new(),
        };
        self.save_session(&id, &state).await?;
        Ok(id)
    }

    async fn upload_offset(&self, repo: &RepositoryName, id: &UploadId) -> StorageResult<u64> {
        Ok(self.load_session(repo, id).await?.offset)
    }

    async fn upload_append(
        &self,
        repo: &RepositoryName,
        id: &UploadId,
        start: Option<u64>,
        expected_len: Option<u64>,
        mut body: ByteStream,
    ) -> StorageResult<u64> {
        let lock = self.session_lock(id);
        let _guard = lock.lock().await;
        let mut state = self.load_session(repo, id).await?;
        if let Some(start) = start
            && start != state.offset
        {
            return Err(StorageError::UploadOutOfOrder {
                expected: state.offset,
                got: start,
            });
        }
        let nonce = UploadId::random().map_err(|e| StorageError::Task(e.to_string()))?;
        let part_name = format!("{:020}-{}", state.offset, nonce.as_str());
        let part_key = Self::upload_part_key(id, &part_name)?;
        let mut writer = ObjectWriter::new(self.store.clone(), part_key.clone());
        let mut failure = None;
        while let Some(chunk) = body.next().await {
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(e) => {
                    failure = Some(StorageError::BodyRead(e.to_string()));
                    break;
                }
            };
            if let Some(expected) = expected_len
                && writer.written + chunk.len() as u64 > expected
            {
                failure = Some(StorageError::SizeMismatch {
                    expected,
                    actual: writer.written + chunk.len() as u64,
                });
                break;
            }
            if let Err(e) = writer.write(chunk).await {
                failure = Some(e);
                break;
            }
        }
        let received = writer.written;
        if failure.is_none()
            && let Some(expected) = expected_len
            && expected != received
        {
            failure = Some(StorageError::SizeMismatch {
                expected,
                actual: received,
            });
        }
        if let Some(failure) = failure {
            writer.abort().await;
            return Err(failure);
        }
        if received == 0 {
            writer.abort().await;
            return Ok(state.offset);
        }
        writer.finish().await?;
        state.offset += received;
        state.parts.push(UploadPart {
            name: part_name,
            len: received,
        });
        if let Err(e) = self.save_session(id, &state).await {
            let _ = self.store.delete(&part_key).await;
            return Err(e);
        }
        Ok(state.offset)
    }

    async fn upload_finish(
        &self,
        repo: &RepositoryName,
        id: &UploadId,
        digest: &Digest,
    ) -> StorageResult<u64> {
        let lock = self.session_lock(id);
        let _guard = lock.lock().await;
        let state = self.load_session(repo, id).await?;
        match self.assemble_blob(id, &state, digest).await {
            Ok(()) => {}
            Err(e @ StorageError::DigestMismatch { .. }) => {
                self.end_session(id).await?;
                return Err(e);
            }
            Err(e) => return Err(e),
        }
        self.link_blob(repo, digest).await?;
        self.end_session(id).await?;
        Ok(state.offset)
    }

    async fn upload_cancel(&self, repo: &RepositoryName, id: &UploadId) -> StorageResult<()> {
        let lock = self.session_lock(id);
        let _guard = lock.lock().await;
        self.load_session(repo, id).await?;
        self.end_session(id).await
    }

    async fn upload_count(&self) -> StorageResult<u64> {
        let (_, children) = self.list_level(&key("uploads")?).await?;
        Ok(children.len() as u64)
    }

    async fn manifest_put(
        &self,
        repo: &RepositoryName,
        digest: &Digest,
        media_type: &str,
        bytes: Bytes,
    ) -> StorageResult<()> {
        self.blob_put(digest, bytes).await?;
        self.put_small(
            &Self::revision_key(repo, digest)?,
            Bytes::from(media_type.to_string()),
        )
        .await
    }

    async fn manifest_get(
        &self,
        repo: &RepositoryName,
        digest: &Digest,
    ) -> StorageResult<Option<StoredManifest>> {
        let link = Self::revision_key(repo, digest)?;
        let Some(media_type) = self.get_optional(&link).await? else {
            return Ok(None);
        };
        let media_type = String::from_utf8(media_type.to_vec()).map_err(|e| corrupt(&link, e))?;
        let blob_key = Self::blob_key(digest)?;
        let bytes = self
            .get_optional(&blob_key)
            .await?
            .ok_or_else(|| corrupt(&blob_key, "manifest is linked but its blob is missing"))?;
        Ok(Some(StoredManifest { media_type, bytes }))
    }

    async fn manifest_delete(&self, repo: &RepositoryName, digest: &Digest) -> StorageResult<bool> {
        let existed = self
            .delete_existing(&Self::revision_key(repo, digest)?)
            .await?;
        let digest_text = digest.to_string();
        for meta in self.list_all(&Self::tags_prefix(repo)?).await? {
            let points_here = self
                .get_optional(&meta.location)
                .await?
                .is_some_and(|target| target.trim_ascii() == digest_text.as_bytes());
            if points_here {
                self.delete_existing(&meta.location).await?;
            }
        }
        Ok(existed)
    }

    async fn tag_set(
        &self,
        repo: &RepositoryName,
        tag: &str,
        digest: &Digest,
    ) -> StorageResult<()> {
        self.put_small(
            &Self::tags_prefix(repo)?.join(tag),
            Bytes::from(digest.to_string()),
        )
        .await
    }

    async fn tag_get(&self, repo: &RepositoryName, tag: &str) -> StorageResult<Option<Digest>> {
        let tag_key = Self::tags_prefix(repo)?.join(tag);
        let Some(text) = self.get_optional(&tag_key).await? else {
            return Ok(None);
        };
        let text = std::str::from_utf8(&text).map_err(|e| corrupt(&tag_key, e))?;
        Digest::parse(text.trim())
            .map(Some)
            .map_err(|e| corrupt(&tag_key, e))
    }

    async fn tag_delete(&self, repo: &RepositoryName, tag: &str) -> StorageResult<bool> {
        self.delete_existing(&Self::tags_prefix(repo)?.join(tag))
            .await
    }

    async fn tags(&self, repo: &RepositoryName) -> StorageResult<Vec<String>> {
        let (objects, _) = self.list_level(&Self::tags_prefix(repo)?).await?;
        let mut tags: Vec<String> = objects
            .iter()
            .filter_map(|meta| file_name(&meta.location))
            .collect();
        tags.sort();
        Ok(tags)
    }

    async fn referrer_add(
        &self,
        repo: &RepositoryName,
        subject: &Digest,
        referrer: &Digest,
        descriptor: &serde_json::Value,
    ) -> StorageResult<()> {
        let referrer_key = Self::referrer_key(repo, subject, referrer)?;
        let bytes = serde_json::to_vec(descriptor).map_err(|e| corrupt(&referrer_key, e))?;
        self.put_small(&referrer_key, bytes).await
    }

    async fn referrer_remove(
        &self,
        repo: &RepositoryName,
        subject: &Digest,
        referrer: &Digest,
    ) -> StorageResult<()> {
        self.delete_existing(&Self::referrer_key(repo, subject, referrer)?)
            .await
            .map(|_| ())
    }

    async fn referrers(
        &self,
        repo: &RepositoryName,
        subject: &Digest,
    ) -> StorageResult<Vec<serde_json::Value>> {
        let (mut objects, _) = self
            .list_level(&Self::referrers_prefix(repo, subject)?)
            .await?;
        objects.sort_by(|a, b| a.location.cmp(&b.location));
        let mut descriptors = Vec::new();
        for meta in objects {
            // A referrer removed between the listing and the read is simply gone.
            let Some(bytes) = self.get_optional(&meta.location).await? else {
                continue;
            };
            descriptors
                .push(serde_json::from_slice(&bytes).map_err(|e| corrupt(&meta.location, e))?);
        }
        Ok(descriptors)
    }

    async fn blob_list(&self) -> StorageResult<Vec<BlobInfo>> {
        let mut touched: HashMap<String, SystemTime> = HashMap::new();
        for meta in self.list_all(&key("touched")?).await? {
            let parts: Vec<_> = meta.location.parts().collect();
            if let [_, algorithm, hex] = parts.as_slice() {
                touched.insert(
                    format!("{}:{}", algorithm.as_ref(), hex.as_ref()),
                    meta.last_modified.into(),
                );
            }
        }
        let mut blobs = Vec::new();
        for meta in self.list_all(&key("blobs")?).await? {
            let parts: Vec<_> = meta.location.parts().collect();
            let [_, algorithm, _, hex] = parts.as_slice() else {
                continue;
            };
            let Some(digest) = digest_from_parts(algorithm.as_ref(), hex.as_ref()) else {
                continue;
            };
            let stored: SystemTime = meta.last_modified.into();
            let last_used = match touched.get(&digest.to_string()) {
                Some(&touch) if touch > stored => touch,
                _ => stored,
            };
            blobs.push(BlobInfo {
                digest,
                size: meta.size,
                last_used,
            });
        }
        Ok(blobs)
    }

    async fn blob_touch(&self, digest: &Digest) -> StorageResult<()> {
        self.put_small(&Self::touch_key(digest)?, Bytes::new())
            .await
    }

    async fn blob_delete(&self, digest: &Digest) -> StorageResult<bool> {
        let existed = self.delete_existing(&Self::blob_key(digest)?).await?;
        self.delete_existing(&Self::touch_key(digest)?).await?;
        Ok(existed)
    }

    async fn linked_blobs(&self, repo: &RepositoryName) -> StorageResult<Vec<Digest>> {
        let prefix = key(&format!("{}/_layers", Self::repo_prefix(repo)))?;
        let mut digests = BTreeSet::new();
        for meta in self.list_all(&prefix).await? {
            let parts: Vec<_> = meta.location.parts().collect();
            if let [.., algorithm, hex] = parts.as_slice()
                && let Some(digest) = digest_from_parts(algorithm.as_ref(), hex.as_ref())
            {
                digests.insert(digest.to_string());
            }
        }
        Ok(digests
            .iter()
            .filter_map(|text| Digest::parse(text).ok())
            .collect())
    }

    async fn manifest_list(&self, repo: &RepositoryName) -> StorageResult<Vec<ManifestInfo>> {
        let prefix = key(&format!("{}/_manifests/revisions", Self::repo_prefix(repo)))?;
        let mut manifests = BTreeMap::new();
        for meta in self.list_all(&prefix).await? {
            let parts: Vec<_> = meta.location.parts().collect();
            if let [.., algorithm, hex] = parts.as_slice()
                && let Some(digest) = digest_from_parts(algorithm.as_ref(), hex.as_ref())
            {
                manifests.insert(
                    digest.to_string(),
                    ManifestInfo {
                        digest,
                        linked_at: meta.last_modified.into(),
                    },
                );
            }
        }
        Ok(manifests.into_values().collect())
    }

    async fn upload_list(&self) -> StorageResult<Vec<UploadInfo>> {
        let mut uploads: BTreeMap<String, (Option<String>, SystemTime)> = BTreeMap::new();
        for meta in self.list_all(&key("uploads")?).await? {
            let parts: Vec<_> = meta.location.parts().collect();
            let Some(id) = parts.get(1).map(|p| p.as_ref().to_string()) else {
                continue;
            };
            let modified: SystemTime = meta.last_modified.into();
            let entry = uploads.entry(id).or_insert((None, modified));
            entry.1 = entry.1.max(modified);
            if parts.len() == 3 && parts[2].as_ref() == "state.json" {
                let state: Option<UploadState> = self
                    .get_optional(&meta.location)
                    .await?
                    .and_then(|bytes| serde_json::from_slice(&bytes).ok());
                entry.0 = state.map(|s| s.repository);
            }
        }
        Ok(uploads
            .into_iter()
            .filter_map(|(id, (repository, last_activity))| {
                Some(UploadInfo {
                    repo: RepositoryName::parse(&repository?)?,
                    id: UploadId::parse(&id)?,
                    last_activity,
                })
            })
            .collect())
    }

    async fn blob_redirect(&self, digest: &Digest) -> StorageResult<Option<String>> {
        let Some(signer) = &self.signer else {
            return Ok(None);
        };
        let blob_key = Self::blob_key(digest)?;
        let url = signer
            .signed_url(
                object_store::signer::Method::GET,
                &blob_key,
                REDIRECT_EXPIRY,
            )
            .await
            .map_err(store_error("presign", &blob_key))?;
        Ok(Some(url.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    fn stream_of(parts: Vec<Bytes>) -> ByteStream {
        futures::stream::iter(parts.into_iter().map(Ok)).boxed()
    }

    /// Two "replicas" over one shared bucket.
    fn two_replicas() -> (Arc<dyn ObjectStore>, ObjectStorage, ObjectStorage) {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let a = ObjectStorage::new(store.clone());
        let b = ObjectStorage::new(store.clone());
        (store, a, b)
    }

    async fn read_all(storage: &ObjectStorage, digest: &Digest) -> Vec<u8> {
        let size = storage.blob_size(digest).await.unwrap().unwrap();
        let chunks: Vec<Bytes> = storage
            .blob_read(digest, 0, size)
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        chunks.concat()
    }

    async fn object_count(store: &Arc<dyn ObjectStore>, prefix: &str) -> usize {
        store
            .list(Some(&key(prefix).unwrap()))
            .try_collect::<Vec<_>>()
            .await
            .unwrap()
            .len()
    }

    #[tokio::test]
    async fn upload_started_on_one_replica_finishes_on_another() {
        let (store, a, b) = two_replicas();
        let repo = RepositoryName::parse("team/app").unwrap();
        let id = a.upload_start(&repo).await.unwrap();
        let offset = a
            .upload_append(&repo, &id, Some(0), None, stream_of(vec!["hello ".into()]))
            .await
            .unwrap();
        assert_eq!(offset, 6);
        assert_eq!(b.upload_offset(&repo, &id).await.unwrap(), 6);
        assert!(matches!(
            b.upload_append(&repo, &id, Some(3), None, stream_of(vec!["x".into()]))
                .await,
            Err(StorageError::UploadOutOfOrder {
                expected: 6,
                got: 3
            })
        ));
        let other = RepositoryName::parse("other").unwrap();
        assert!(matches!(
            b.upload_offset(&other, &id).await,
            Err(StorageError::UploadUnknown(_))
        ));
        b.upload_append(
            &repo,
            &id,
            Some(6),
            Some(5),
            stream_of(vec!["world".into()]),
        )
        .await
        .unwrap();
        let digest = Digest::sha256_of(b"hello world");
        assert_eq!(b.upload_finish(&repo, &id, &digest).await.unwrap(), 11);
        assert_eq!(read_all(&a, &digest).await, b"hello world");
        assert!(a.blob_linked(&repo, &digest).await.unwrap());
        assert!(!a.blob_linked(&other, &digest).await.unwrap());
        assert_eq!(a.upload_count().await.unwrap(), 0);
        assert_eq!(object_count(&store, "uploads").await, 0);
        assert!(matches!(
            a.upload_offset(&repo, &id).await,
            Err(StorageError::UploadUnknown(_))
        ));
    }

    #[tokio::test]
    async fn blobs_larger_than_a_part_go_through_multipart_uploads_intact() {
        let (_, a, b) = two_replicas();
        let repo = RepositoryName::parse("big").unwrap();
        // 2.5 parts' worth in 64 KiB network-sized chunks, split over two appends.
        let chunk: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
        let chunks: Vec<Bytes> = (0..(PART_SIZE * 5 / 2) / chunk.len())
            .map(|i| {
                let mut c = chunk.clone();
                c[0] = i as u8;
                Bytes::from(c)
            })
            .collect();
        let mut hasher = Hasher::new(crate::digest::Algorithm::Sha256);
        for c in &chunks {
            hasher.update(c);
        }
        let digest = hasher.finish();
        let total: u64 = chunks.iter().map(|c| c.len() as u64).sum();
        let (first, second) = chunks.split_at(chunks.len() / 3);
        let id = a.upload_start(&repo).await.unwrap();
        a.upload_append(&repo, &id, Some(0), None, stream_of(first.to_vec()))
            .await
            .unwrap();
        let offset = b
            .upload_append(&repo, &id, None, None, stream_of(second.to_vec()))
            .await
            .unwrap();
        assert_eq!(offset, total);
        assert_eq!(b.upload_finish(&repo, &id, &digest).await.unwrap(), total);
        let stored = read_all(&a, &digest).await;
        assert_eq!(Digest::sha256_of(&stored), digest);
        // A range read starts where asked.
        let middle: Vec<Bytes> = a
            .blob_read(&digest, PART_SIZE as u64 - 2, 4)
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        assert_eq!(
            middle.concat(),
            stored[PART_SIZE - 2..PART_SIZE + 2].to_vec()
        );
    }

    #[tokio::test]
    async fn wrong_digest_keeps_nothing_and_ends_the_session() {
        let (store, a, _) = two_replicas();
        let repo = RepositoryName::parse("a").unwrap();
        let id = a.upload_start(&repo).await.unwrap();
        a.upload_append(&repo, &id, None, Some(3), stream_of(vec!["abc".into()]))
            .await
            .unwrap();
        let wrong = Digest::sha256_of(b"xyz");
        assert!(matches!(
            a.upload_finish(&repo, &id, &wrong).await,
            Err(StorageError::DigestMismatch { .. })
        ));
        assert_eq!(a.blob_size(&wrong).await.unwrap(), None);
        assert_eq!(object_count(&store, "blobs").await, 0);
        assert_eq!(object_count(&store, "uploads").await, 0);
    }

    #[tokio::test]
    async fn failed_append_leaves_offset_and_no_part_behind() {
        let (store, a, _) = two_replicas();
        let repo = RepositoryName::parse("a").unwrap();
        let id = a.upload_start(&repo).await.unwrap();
        assert!(matches!(
            a.upload_append(&repo, &id, Some(0), Some(5), stream_of(vec!["abc".into()]))
                .await,
            Err(StorageError::SizeMismatch {
                expected: 5,
                actual: 3
            })
        ));
        let broken: ByteStream = futures::stream::iter(vec![
            Ok(Bytes::from_static(b"abc")),
            Err(io::Error::other("connection reset")),
        ])
        .boxed();
        assert!(matches!(
            a.upload_append(&repo, &id, Some(0), None, broken).await,
            Err(StorageError::BodyRead(_))
        ));
        assert_eq!(a.upload_offset(&repo, &id).await.unwrap(), 0);
        // Only the session state is left.
        assert_eq!(object_count(&store, "uploads").await, 1);
        let sha512 = Digest::of(crate::digest::Algorithm::Sha512, b"abc");
        a.upload_append(&repo, &id, Some(0), Some(3), stream_of(vec!["abc".into()]))
            .await
            .unwrap();
        assert_eq!(a.upload_finish(&repo, &id, &sha512).await.unwrap(), 3);
        assert_eq!(read_all(&a, &sha512).await, b"abc");
    }

    #[tokio::test]
    async fn manifests_tags_and_referrers_round_trip() {
        let (_, a, b) = two_replicas();
        let repo = RepositoryName::parse("team/app").unwrap();
        let nested = RepositoryName::parse("team/app/sub").unwrap();
        let manifest = Bytes::from_static(b"{\"schemaVersion\":2}");
        let digest = Digest::sha256_of(&manifest);
        a.manifest_put(
            &repo,
            &digest,
            "application/vnd.oci.image.manifest.v1+json",
            manifest.clone(),
        )
        .await
        .unwrap();
        a.tag_set(&repo, "v1", &digest).await.unwrap();
        a.tag_set(&repo, "latest", &digest).await.unwrap();
        a.link_blob(&nested, &digest).await.unwrap();
        let got = b.manifest_get(&repo, &digest).await.unwrap().unwrap();
        assert_eq!(got.bytes, manifest);
        assert_eq!(got.media_type, "application/vnd.oci.image.manifest.v1+json");
        assert_eq!(b.tag_get(&repo, "v1").await.unwrap(), Some(digest.clone()));
        assert_eq!(b.tags(&repo).await.unwrap(), ["latest", "v1"]);
        assert_eq!(
            b.repositories().await.unwrap(),
            ["team/app", "team/app/sub"]
        );
        assert!(b.repository_exists(&repo).await.unwrap());
        assert!(
            !b.repository_exists(&RepositoryName::parse("team").unwrap())
                .await
                .unwrap()
        );
        let referrer = Digest::sha256_of(b"sig");
        let descriptor = serde_json::json!({"digest": referrer.to_string()});
        a.referrer_add(&repo, &digest, &referrer, &descriptor)
            .await
            .unwrap();
        assert_eq!(b.referrers(&repo, &digest).await.unwrap(), [descriptor]);
        b.referrer_remove(&repo, &digest, &referrer).await.unwrap();
        assert!(a.referrers(&repo, &digest).await.unwrap().is_empty());
        assert!(b.manifest_delete(&repo, &digest).await.unwrap());
        assert!(a.tags(&repo).await.unwrap().is_empty());
        assert!(a.manifest_get(&repo, &digest).await.unwrap().is_none());
        assert!(!a.manifest_delete(&repo, &digest).await.unwrap());
    }

    #[tokio::test]
    async fn garbage_collection_sees_blobs_links_manifests_and_uploads() {
        let (_, a, b) = two_replicas();
        let repo = RepositoryName::parse("gc/app").unwrap();
        let layer = Digest::sha256_of(b"layer");
        a.blob_put(&layer, Bytes::from_static(b"layer"))
            .await
            .unwrap();
        a.link_blob(&repo, &layer).await.unwrap();
        let manifest = Bytes::from_static(b"{}");
        let manifest_digest = Digest::sha256_of(&manifest);
        a.manifest_put(&repo, &manifest_digest, "application/json", manifest)
            .await
            .unwrap();
        let id = a.upload_start(&repo).await.unwrap();

        let blobs = b.blob_list().await.unwrap();
        let mut listed: Vec<String> = blobs.iter().map(|b| b.digest.to_string()).collect();
        listed.sort();
        let mut expected = vec![layer.to_string(), manifest_digest.to_string()];
        expected.sort();
        assert_eq!(listed, expected);
        let layer_info = blobs.iter().find(|b| b.digest == layer).unwrap();
        assert_eq!(layer_info.size, 5);
        assert_eq!(
            b.linked_blobs(&repo).await.unwrap(),
            std::slice::from_ref(&layer)
        );
        let manifests = b.manifest_list(&repo).await.unwrap();
        assert_eq!(manifests.len(), 1);
        assert_eq!(manifests[0].digest, manifest_digest);
        let uploads = b.upload_list().await.unwrap();
        assert_eq!(uploads.len(), 1);
        assert_eq!(uploads[0].id, id);
        assert_eq!(uploads[0].repo, repo);

        // A touch moves the blob's last use forward.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let before = layer_info.last_used;
        b.blob_touch(&layer).await.unwrap();
        let after = a.blob_list().await.unwrap();
        let touched = after.iter().find(|b| b.digest == layer).unwrap();
        assert!(
            touched.last_used > before,
            "{:?} <= {before:?}",
            touched.last_used
        );

        assert!(b.blob_delete(&layer).await.unwrap());
        assert!(!b.blob_delete(&layer).await.unwrap());
        assert_eq!(a.blob_size(&layer).await.unwrap(), None);
        assert!(b.unlink_blob(&repo, &layer).await.unwrap());
        assert!(b.linked_blobs(&repo).await.unwrap().is_empty());
    }
}

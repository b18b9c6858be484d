//! Registry logic between the HTTP routes and storage: repository existence, digest and
//! reference checks, manifest validation (referenced content must exist), mounts, tag paging,
//! and the referrers index, tag immutability, and the last-use stamps garbage collection relies
//! on (see `registry::gc` for why a manifest PUT touches and re-checks after linking).
//! Knows the spec's rules; knows nothing about HTTP framing.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::error::ApiError;
use super::gc::retention::ImmutableTags;
use super::manifest::{self, OCI_INDEX};
use super::metrics::Metrics;
use super::name::{Reference, RepositoryName, UploadId};
use super::storage::{ByteStream, Storage, StorageError, StoredManifest};
use crate::digest::{Digest, Hasher};

/// Largest manifest accepted, in bytes.
pub const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;

/// The result of a manifest PUT.
#[derive(Debug)]
pub struct PutManifest {
    pub digest: Digest,
    pub subject: Option<Digest>,
}

/// One page of a sorted listing (tags or repositories).
#[derive(Debug)]
pub struct Page {
    pub items: Vec<String>,
    /// Set when more items follow the page: the `last` to ask for next.
    pub next_last: Option<String>,
}

/// Where a manifest GET found its manifest.
#[derive(Debug)]
pub struct FoundManifest {
    pub digest: Digest,
    pub manifest: StoredManifest,
}

/// The registry service: shared by every request handler.
pub struct Registry {
    storage: Arc<dyn Storage>,
    metrics: Arc<Metrics>,
    immutable: ImmutableTags,
    /// Serialises check-and-set of immutable tags, so two pushes cannot both create one.
    immutable_lock: tokio::sync::Mutex<()>,
}

/// How often, and how long apart, a manifest PUT re-checks a referenced blob that a collection
/// may be putting back (it is missing only for the instant of a move and back).
const RECHECK_ATTEMPTS: u32 = 10;
const RECHECK_PAUSE: Duration = Duration::from_millis(20);

impl Registry {
    pub fn new(storage: Arc<dyn Storage>, metrics: Arc<Metrics>) -> Registry {
        Registry {
            storage,
            metrics,
            immutable: ImmutableTags::default(),
            immutable_lock: tokio::sync::Mutex::new(()),
        }
    }

    /// Protects the tags `immutable` matches from moving or being deleted.
    pub fn with_immutable_tags(mut self, immutable: ImmutableTags) -> Registry {
        self.immutable = immutable;
        self
    }

    /// Stamps the blob as used now (for garbage collection's grace period). A backend without
    /// garbage collection support has nothing to stamp.
    async fn touch(&self, digest: &Digest) -> Result<(), ApiError> {
        match self.storage.blob_touch(digest).await {
            Ok(()) | Err(StorageError::Unsupported(_)) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether the blob is present, waiting out a collection that is putting it back.
    async fn blob_still_present(&self, digest: &Digest) -> Result<bool, ApiError> {
        for attempt in 0..RECHECK_ATTEMPTS {
            if self.storage.blob_size(digest).await?.is_some() {
                return Ok(true);
            }
            if attempt + 1 < RECHECK_ATTEMPTS {
                tokio::time::sleep(RECHECK_PAUSE).await;
            }
        }
        Ok(false)
    }

    /// Refuses to move `tag` of `repo` away from `digest` (or delete it, with `None`) when an
    /// immutable rule protects it and it exists.
    async fn check_tag_mutable(
        &self,
        repo: &RepositoryName,
        tag: &str,
        digest: Option<&Digest>,
    ) -> Result<(), ApiError> {
        if !self.immutable.is_immutable(repo.as_str(), tag) {
            return Ok(());
        }
        match self.storage.tag_get(repo, tag).await? {
            Some(current) if Some(&current) != digest => Err(ApiError::TagImmutable(format!(
                "{repo}:{tag} points at {current} and is immutable; push a new tag instead"
            ))),
            _ => Ok(()),
        }
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    /// The size of a blob visible in `repo` (a linked blob or a manifest of the repository).
    pub async fn blob_size(&self, repo: &RepositoryName, digest: &Digest) -> Result<u64, ApiError> {
        let visible = self.storage.blob_linked(repo, digest).await?
            || self.storage.manifest_get(repo, digest).await?.is_some();
        let size = if visible {
            self.storage.blob_size(digest).await?
        } else {
            None
        };
        let size = size.ok_or_else(|| ApiError::BlobUnknown(format!("{digest} in {repo}")))?;
        // A client that finds a blob here may skip uploading it: keep it for the grace period.
        self.touch(digest).await?;
        Ok(size)
    }

    pub async fn blob_stream(
        &self,
        digest: &Digest,
        start: u64,
        len: u64,
    ) -> Result<ByteStream, ApiError> {
        Ok(self.storage.blob_read(digest, start, len).await?)
    }

    pub async fn delete_blob(
        &self,
        repo: &RepositoryName,
        digest: &Digest,
    ) -> Result<(), ApiError> {
        if self.storage.unlink_blob(repo, digest).await? {
            Ok(())
        } else {
            Err(ApiError::BlobUnknown(format!("{digest} in {repo}")))
        }
    }

    /// Links `digest` into `repo` if `from` (or, with no `from`, any repository) has it.
    /// Returns the blob size when mounted.
    pub async fn try_mount(
        &self,
        repo: &RepositoryName,
        digest: &Digest,
        from: Option<&RepositoryName>,
    ) -> Result<Option<u64>, ApiError> {
        let source_has_it = match from {
            Some(from) => self.storage.blob_linked(from, digest).await?,
            None => true,
        };
        if !source_has_it {
            return Ok(None);
        }
        let Some(size) = self.storage.blob_size(digest).await? else {
            return Ok(None);
        };
        self.storage.link_blob(repo, digest).await?;
        // Touch, then check: a collection either sees the touch or the mount sees it gone.
        self.touch(digest).await?;
        if self.storage.blob_size(digest).await?.is_none() {
            return Ok(None);
        }
        Ok(Some(size))
    }

    pub async fn start_upload(&self, repo: &RepositoryName) -> Result<UploadId, ApiError> {
        let id = self.storage.upload_start(repo).await?;
        self.metrics.upload_started();
        Ok(id)
    }

    pub async fn upload_offset(
        &self,
        repo: &RepositoryName,
        id: &UploadId,
    ) -> Result<u64, ApiError> {
        Ok(self.storage.upload_offset(repo, id).await?)
    }

    pub async fn append(
        &self,
        repo: &RepositoryName,
        id: &UploadId,
        start: Option<u64>,
        expected_len: Option<u64>,
        body: ByteStream,
    ) -> Result<u64, ApiError> {
        Ok(self
            .storage
            .upload_append(repo, id, start, expected_len, body)
            .await?)
    }

    pub async fn finish_upload(
        &self,
        repo: &RepositoryName,
        id: &UploadId,
        digest: &Digest,
    ) -> Result<u64, ApiError> {
        let size = self.storage.upload_finish(repo, id, digest).await?;
        self.touch(digest).await?;
        self.metrics.upload_completed();
        Ok(size)
    }

    pub async fn cancel_upload(
        &self,
        repo: &RepositoryName,
        id: &UploadId,
    ) -> Result<(), ApiError> {
        Ok(self.storage.upload_cancel(repo, id).await?)
    }

    /// Uploads `body` in one go (monolithic POST): start, append, finish; nothing kept on error.
    pub async fn upload_whole(
        &self,
        repo: &RepositoryName,
        digest: &Digest,
        expected_len: Option<u64>,
        body: ByteStream,
    ) -> Result<u64, ApiError> {
        let id = self.start_upload(repo).await?;
        let result = async {
            self.append(repo, &id, Some(0), expected_len, body).await?;
            self.finish_upload(repo, &id, digest).await
        }
        .await;
        if result.is_err() {
            // The upload may already be gone (digest mismatch discards it).
            let _ = self.storage.upload_cancel(repo, &id).await;
        }
        result
    }

    /// Validates and stores a manifest, tags it with `tags`, and records its subject.
    pub async fn put_manifest(
        &self,
        repo: &RepositoryName,
        reference: &Reference,
        content_type: Option<&str>,
        bytes: Bytes,
        extra_tags: &[String],
    ) -> Result<PutManifest, ApiError> {
        let info = manifest::inspect(&bytes, content_type)
            .map_err(|e| ApiError::ManifestInvalid(e.to_string()))?;
        let digest = match reference {
            Reference::Digest(expected) => {
                let mut hasher = Hasher::new(expected.algorithm());
                hasher.update(&bytes);
                let actual = hasher.finish();
                if &actual != expected {
                    return Err(ApiError::DigestInvalid(format!(
                        "manifest PUT to {expected} but its content is {actual}"
                    )));
                }
                actual
            }
            Reference::Tag(_) => Digest::sha256_of(&bytes),
        };
        let mut tags: Vec<&str> = extra_tags.iter().map(String::as_str).collect();
        if let Reference::Tag(tag) = reference {
            tags.insert(0, tag);
        }
        for tag in &tags {
            self.check_tag_mutable(repo, tag, Some(&digest)).await?;
        }
        for reference in &info.references {
            self.check_reference_exists(repo, reference).await?;
        }
        let existed = self.storage.manifest_get(repo, &digest).await?.is_some();
        self.storage
            .manifest_put(repo, &digest, &info.media_type, bytes.clone())
            .await?;
        if let Err(e) = self.confirm_references(repo, &digest, &bytes, &info).await {
            if !existed {
                self.storage.manifest_delete(repo, &digest).await?;
            }
            return Err(e);
        }
        let protected = tags
            .iter()
            .any(|tag| self.immutable.is_immutable(repo.as_str(), tag));
        let _guard = if protected {
            Some(self.immutable_lock.lock().await)
        } else {
            None
        };
        for tag in &tags {
            if protected {
                self.check_tag_mutable(repo, tag, Some(&digest)).await?;
            }
            self.storage.tag_set(repo, tag, &digest).await?;
        }
        if let Some(subject) = &info.subject {
            let mut descriptor = serde_json::json!({
                "mediaType": info.media_type,
                "digest": digest.to_string(),
                "size": bytes.len(),
            });
            if let Some(artifact_type) = &info.artifact_type {
                descriptor["artifactType"] = serde_json::Value::String(artifact_type.clone());
            }
            if let Some(annotations) = &info.annotations {
                descriptor["annotations"] = annotations.clone();
            }
            self.storage
                .referrer_add(repo, subject, &digest, &descriptor)
                .await?;
        }
        Ok(PutManifest {
            digest,
            subject: info.subject,
        })
    }

    /// After the manifest is linked: stamps its own blob and every blob it references as used
    /// and checks they are still there (a collection that started before the link may have
    /// removed them). The manifest's own blob is stored again if it went.
    async fn confirm_references(
        &self,
        repo: &RepositoryName,
        digest: &Digest,
        bytes: &Bytes,
        info: &manifest::ManifestInfo,
    ) -> Result<(), ApiError> {
        self.touch(digest).await?;
        self.storage.blob_put(digest, bytes.clone()).await?;
        for reference in &info.references {
            let present = if reference.is_manifest {
                self.storage
                    .manifest_get(repo, &reference.digest)
                    .await?
                    .is_some()
            } else {
                self.touch(&reference.digest).await?;
                self.blob_still_present(&reference.digest).await?
            };
            if !present {
                return Err(ApiError::ManifestBlobUnknown(format!(
                    "{} was removed by garbage collection while the manifest was pushed; push it again",
                    reference.digest
                )));
            }
        }
        Ok(())
    }

    async fn check_reference_exists(
        &self,
        repo: &RepositoryName,
        reference: &manifest::ContentReference,
    ) -> Result<(), ApiError> {
        let digest = &reference.digest;
        let actual_size = if reference.is_manifest {
            self.storage
                .manifest_get(repo, digest)
                .await?
                .map(|m| m.bytes.len() as u64)
        } else if self.storage.blob_linked(repo, digest).await? {
            self.storage.blob_size(digest).await?
        } else {
            None
        };
        match actual_size {
            None => Err(ApiError::ManifestBlobUnknown(format!(
                "{} {digest} is not in {repo}",
                if reference.is_manifest {
                    "manifest"
                } else {
                    "blob"
                }
            ))),
            Some(size) if size != reference.size => Err(ApiError::ManifestInvalid(format!(
                "descriptor of {digest} says {} bytes, the registry holds {size}",
                reference.size
            ))),
            Some(_) => Ok(()),
        }
    }

    /// Resolves `reference` in `repo` to a stored manifest.
    pub async fn get_manifest(
        &self,
        repo: &RepositoryName,
        reference: &Reference,
    ) -> Result<FoundManifest, ApiError> {
        let unknown = || ApiError::ManifestUnknown(format!("{reference} in {repo}"));
        let digest = match reference {
            Reference::Digest(digest) => digest.clone(),
            Reference::Tag(tag) => match self.storage.tag_get(repo, tag).await? {
                Some(digest) => digest,
                None => return Err(self.unknown_repo_or(repo, unknown()).await),
            },
        };
        match self.storage.manifest_get(repo, &digest).await? {
            Some(manifest) => Ok(FoundManifest { digest, manifest }),
            None => Err(self.unknown_repo_or(repo, unknown()).await),
        }
    }

    /// NAME_UNKNOWN if the repository does not exist, else `error`.
    async fn unknown_repo_or(&self, repo: &RepositoryName, error: ApiError) -> ApiError {
        match self.storage.repository_exists(repo).await {
            Ok(false) => ApiError::NameUnknown(repo.to_string()),
            _ => error,
        }
    }

    /// Deletes a tag, or a manifest (with its tags and referrer record) by digest.
    pub async fn delete_manifest(
        &self,
        repo: &RepositoryName,
        reference: &Reference,
    ) -> Result<(), ApiError> {
        match reference {
            Reference::Tag(tag) => {
                self.check_tag_mutable(repo, tag, None).await?;
                if self.storage.tag_delete(repo, tag).await? {
                    Ok(())
                } else {
                    Err(self
                        .unknown_repo_or(
                            repo,
                            ApiError::ManifestUnknown(format!("tag {tag} in {repo}")),
                        )
                        .await)
                }
            }
            Reference::Digest(digest) => {
                let Some(stored) = self.storage.manifest_get(repo, digest).await? else {
                    return Err(self
                        .unknown_repo_or(
                            repo,
                            ApiError::ManifestUnknown(format!("{digest} in {repo}")),
                        )
                        .await);
                };
                if !self.immutable.rules.is_empty() {
                    for tag in self.storage.tags(repo).await? {
                        if self.storage.tag_get(repo, &tag).await?.as_ref() == Some(digest) {
                            self.check_tag_mutable(repo, &tag, None).await?;
                        }
                    }
                }
                if let Ok(info) = manifest::inspect(&stored.bytes, Some(&stored.media_type))
                    && let Some(subject) = info.subject
                {
                    self.storage.referrer_remove(repo, &subject, digest).await?;
                }
                self.storage.manifest_delete(repo, digest).await?;
                Ok(())
            }
        }
    }

    /// Tags of `repo`, paged.
    pub async fn tags(
        &self,
        repo: &RepositoryName,
        limit: Option<usize>,
        last: Option<&str>,
    ) -> Result<Page, ApiError> {
        if !self.storage.repository_exists(repo).await? {
            return Err(ApiError::NameUnknown(repo.to_string()));
        }
        let tags = self.storage.tags(repo).await?;
        Ok(page(tags, limit, last))
    }

    /// Repository names, paged.
    pub async fn catalog(
        &self,
        limit: Option<usize>,
        last: Option<&str>,
    ) -> Result<Page, ApiError> {
        let repositories = self.storage.repositories().await?;
        Ok(page(repositories, limit, last))
    }

    /// The referrers of `subject` in `repo` as an OCI image index, optionally filtered by
    /// artifact type.
    pub async fn referrers(
        &self,
        repo: &RepositoryName,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<serde_json::Value, ApiError> {
        let mut descriptors = self.storage.referrers(repo, subject).await?;
        if let Some(wanted) = artifact_type {
            descriptors.retain(|d| d.get("artifactType").and_then(|a| a.as_str()) == Some(wanted));
        }
        Ok(serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": descriptors,
        }))
    }
}

/// Cuts a sorted list to the items after `last`, at most `limit` of them.
fn page(sorted: Vec<String>, limit: Option<usize>, last: Option<&str>) -> Page {
    let after_last: Vec<String> = match last {
        Some(last) => sorted
            .into_iter()
            .filter(|item| item.as_str() > last)
            .collect(),
        None => sorted,
    };
    match limit {
        Some(limit) if after_last.len() > limit => {
            let items: Vec<String> = after_last.into_iter().take(limit).collect();
            let next_last = items.last().cloned();
            Page { items, next_last }
        }
        _ => Page {
            items: after_last,
            next_last: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_after_last_and_links_only_when_more_remain() {
        let all: Vec<String> = ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect();
        let first = page(all.clone(), Some(2), None);
        assert_eq!(first.items, ["a", "b"]);
        assert_eq!(first.next_last.as_deref(), Some("b"));
        let second = page(all.clone(), Some(2), Some("b"));
        assert_eq!(second.items, ["c", "d"]);
        assert_eq!(second.next_last, None);
        assert!(page(all.clone(), Some(0), None).items.is_empty());
        assert_eq!(page(all, None, Some("c")).items, ["d"]);
    }

    use crate::registry::storage::{FilesystemStorage, StorageResult};
    use async_trait::async_trait;

    /// Filesystem storage where a collection removes `victim` right after a manifest is
    /// linked: the moment between a push's existence check and its touch.
    struct CollectedMidPush {
        inner: FilesystemStorage,
        victim: Digest,
    }

    #[async_trait]
    impl Storage for CollectedMidPush {
        async fn blob_size(&self, d: &Digest) -> StorageResult<Option<u64>> {
            self.inner.blob_size(d).await
        }
        async fn blob_read(&self, d: &Digest, start: u64, len: u64) -> StorageResult<ByteStream> {
            self.inner.blob_read(d, start, len).await
        }
        async fn blob_put(&self, d: &Digest, bytes: Bytes) -> StorageResult<()> {
            self.inner.blob_put(d, bytes).await
        }
        async fn repository_exists(&self, r: &RepositoryName) -> StorageResult<bool> {
            self.inner.repository_exists(r).await
        }
        async fn repositories(&self) -> StorageResult<Vec<String>> {
            self.inner.repositories().await
        }
        async fn link_blob(&self, r: &RepositoryName, d: &Digest) -> StorageResult<()> {
            self.inner.link_blob(r, d).await
        }
        async fn blob_linked(&self, r: &RepositoryName, d: &Digest) -> StorageResult<bool> {
            self.inner.blob_linked(r, d).await
        }
        async fn unlink_blob(&self, r: &RepositoryName, d: &Digest) -> StorageResult<bool> {
            self.inner.unlink_blob(r, d).await
        }
        async fn upload_start(&self, r: &RepositoryName) -> StorageResult<UploadId> {
            self.inner.upload_start(r).await
        }
        async fn upload_offset(&self, r: &RepositoryName, id: &UploadId) -> StorageResult<u64> {
            self.inner.upload_offset(r, id).await
        }
        async fn upload_append(
            &self,
            r: &RepositoryName,
            id: &UploadId,
            start: Option<u64>,
            len: Option<u64>,
            body: ByteStream,
        ) -> StorageResult<u64> {
            self.inner.upload_append(r, id, start, len, body).await
        }
        async fn upload_finish(
            &self,
            r: &RepositoryName,
            id: &UploadId,
            d: &Digest,
        ) -> StorageResult<u64> {
            self.inner.upload_finish(r, id, d).await
        }
        async fn upload_cancel(&self, r: &RepositoryName, id: &UploadId) -> StorageResult<()> {
            self.inner.upload_cancel(r, id).await
        }
        async fn upload_count(&self) -> StorageResult<u64> {
            self.inner.upload_count().await
        }
        async fn manifest_put(
            &self,
            r: &RepositoryName,
            d: &Digest,
            media_type: &str,
            bytes: Bytes,
        ) -> StorageResult<()> {
            self.inner.manifest_put(r, d, media_type, bytes).await?;
            self.inner.blob_delete(&self.victim).await.map(|_| ())
        }
        async fn manifest_get(
            &self,
            r: &RepositoryName,
            d: &Digest,
        ) -> StorageResult<Option<StoredManifest>> {
            self.inner.manifest_get(r, d).await
        }
        async fn manifest_delete(&self, r: &RepositoryName, d: &Digest) -> StorageResult<bool> {
            self.inner.manifest_delete(r, d).await
        }
        async fn tag_set(&self, r: &RepositoryName, t: &str, d: &Digest) -> StorageResult<()> {
            self.inner.tag_set(r, t, d).await
        }
        async fn tag_get(&self, r: &RepositoryName, t: &str) -> StorageResult<Option<Digest>> {
            self.inner.tag_get(r, t).await
        }
        async fn tag_delete(&self, r: &RepositoryName, t: &str) -> StorageResult<bool> {
            self.inner.tag_delete(r, t).await
        }
        async fn tags(&self, r: &RepositoryName) -> StorageResult<Vec<String>> {
            self.inner.tags(r).await
        }
        async fn referrer_add(
            &self,
            r: &RepositoryName,
            subject: &Digest,
            referrer: &Digest,
            descriptor: &serde_json::Value,
        ) -> StorageResult<()> {
            self.inner
                .referrer_add(r, subject, referrer, descriptor)
                .await
        }
        async fn referrer_remove(
            &self,
            r: &RepositoryName,
            subject: &Digest,
            referrer: &Digest,
        ) -> StorageResult<()> {
            self.inner.referrer_remove(r, subject, referrer).await
        }
        async fn referrers(
            &self,
            r: &RepositoryName,
            subject: &Digest,
        ) -> StorageResult<Vec<serde_json::Value>> {
            self.inner.referrers(r, subject).await
        }
        async fn blob_touch(&self, d: &Digest) -> StorageResult<()> {
            self.inner.blob_touch(d).await
        }
    }

    #[tokio::test]
    async fn a_push_whose_blob_is_collected_mid_push_fails_and_tags_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let inner = FilesystemStorage::open(dir.path()).unwrap();
        let repo = RepositoryName::parse("team/app").unwrap();
        let mut digests = Vec::new();
        for content in [&b"config"[..], b"layer"] {
            let digest = Digest::sha256_of(content);
            inner
                .blob_put(&digest, Bytes::copy_from_slice(content))
                .await
                .unwrap();
            inner.link_blob(&repo, &digest).await.unwrap();
            digests.push(digest);
        }
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": manifest::OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digests[0].to_string(), "size": 6},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digests[1].to_string(), "size": 5}],
        })
        .to_string();
        let storage = Arc::new(CollectedMidPush {
            inner,
            victim: digests[1].clone(),
        });
        let registry = Registry::new(storage.clone(), Arc::new(Metrics::default()));
        let result = registry
            .put_manifest(
                &repo,
                &Reference::Tag("v1".into()),
                None,
                Bytes::from(manifest.clone()),
                &[],
            )
            .await;
        assert!(
            matches!(result, Err(ApiError::ManifestBlobUnknown(_))),
            "{result:?}"
        );
        assert_eq!(storage.tag_get(&repo, "v1").await.unwrap(), None);
        let digest = Digest::sha256_of(manifest.as_bytes());
        assert!(
            storage
                .manifest_get(&repo, &digest)
                .await
                .unwrap()
                .is_none()
        );
    }
}

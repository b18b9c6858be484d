//! Online garbage collection of the registry: applies retention rules, then removes blobs no
//! manifest references and upload sessions left idle, while pushes and pulls go on. There is
//! no read-only window; safety comes from last-use stamps and the order of writes.
//!
//! # One collection
//!
//! 1. `started` = now; `cutoff` = `started − grace`.
//! 2. Retention ([`retention::plan_repository`]) per repository: tags beyond `keep_last` and
//!    manifests nothing keeps any more are deleted (by default no rule applies and no manifest
//!    is deleted: untagged manifests are kept unless `untagged_after` says otherwise).
//! 3. Mark: every manifest linked in any repository, listed *after* `started`, marks its own
//!    blob and its config and layer blobs. (Index children and referrers are manifests
//!    linked in the repository, so they mark their blobs themselves.)
//! 4. Sweep: a blob is removed only if it is unmarked AND its last use is older than `cutoff`,
//!    with [`Storage::blob_delete_unused`], which re-checks the last use atomically with
//!    respect to [`Storage::blob_touch`].
//! 5. Upload sessions idle longer than `upload_expiry` are cancelled.
//!
//! # Why a concurrent push never loses a blob
//!
//! A manifest PUT (see `service::Registry::put_manifest`) (P1) checks that every referenced
//! blob is present, (P2) writes the manifest blob and its repository link, then (P3) touches
//! the manifest blob and every referenced blob and (P4) checks again that they are present; only
//! then does it set tags and answer 201. If P4 finds a blob gone it undoes a link it created
//! and answers MANIFEST_BLOB_UNKNOWN, so a client never gets success for a broken image.
//! Take a blob B that a successful push references and a collection that deletes B:
//!
//! - If P2 came before the collection listed that repository's manifests (step 3), the mark
//!   includes the manifest, so B is marked and never a candidate.
//! - Otherwise P2, and so P3, came after `started` ≥ `cutoff`. The touch stamps B's last use
//!   with the precise clock. If it reached B before `blob_delete_unused` moved B away, the
//!   re-check after the move sees a last use ≥ `cutoff` and puts B back. If it came after the
//!   move, the touch found nothing and P4 (after the move) sees B missing unless B was put
//!   back or stored again, so the push fails instead of succeeding. Either way no successful
//!   push references a deleted blob.
//!
//! Blobs that were just uploaded, found by HEAD (a client skipping the upload) or mounted are
//! stamped too (an upload that finds its blob already stored touches it, or installs its own
//! copy if a collection moved it away). They are therefore kept for `grace` after that use: the
//! time a client has to push the manifest referencing them. Uploads in progress live outside
//! the blob store and are never swept; only sessions idle for `upload_expiry` are. With
//! `grace = 0` a client that uploads a blob and pushes its manifest later may have to push
//! again, but never ends up with a tagged image missing a blob.
//!
//! Known narrow window: retention deleting an old untagged manifest re-checks its tags and
//! link time just before deleting it, but an index pushed in that instant that references it as
//! a child can still end up pointing at a deleted child. Only with `untagged_after` rules.

pub mod retention;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use self::retention::{ImmutableTags, ManifestNode, RepoSnapshot, RetentionRule};
use super::manifest;
use super::metrics::Metrics;
use super::name::{RepositoryName, UploadId};
use super::storage::{Storage, StorageError};
use crate::digest::Digest;

/// Default time a blob is kept after its last use.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(3600);
/// Default idle time after which an upload session is abandoned.
pub const DEFAULT_UPLOAD_EXPIRY: Duration = Duration::from_secs(24 * 3600);

/// What a collection does.
#[derive(Debug, Clone)]
pub struct GcPolicy {
    pub grace: Duration,
    pub upload_expiry: Duration,
    pub retention: Vec<RetentionRule>,
    pub immutable: ImmutableTags,
}

impl Default for GcPolicy {
    fn default() -> GcPolicy {
        GcPolicy {
            grace: DEFAULT_GRACE,
            upload_expiry: DEFAULT_UPLOAD_EXPIRY,
            retention: Vec::new(),
            immutable: ImmutableTags::default(),
        }
    }
}

/// What a collection removed (or, in a dry run, would remove).
#[derive(Debug, Clone, Default)]
pub struct GcReport {
    pub dry_run: bool,
    pub tags: Vec<(RepositoryName, String)>,
    pub manifests: Vec<(RepositoryName, Digest)>,
    pub blobs: Vec<(Digest, u64)>,
    pub uploads: Vec<(RepositoryName, UploadId)>,
}

impl GcReport {
    pub fn bytes_reclaimed(&self) -> u64 {
        self.blobs.iter().map(|(_, size)| size).sum()
    }
}

/// Why a collection stopped.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    #[error("garbage collection: {action}: {source}")]
    Storage {
        action: String,
        #[source]
        source: StorageError,
    },
    #[error(
        "garbage collection stopped: manifest {digest} in {repository} cannot be read ({detail}); \
         no blob was removed because its references are unknown"
    )]
    UnreadableManifest {
        repository: String,
        digest: Digest,
        detail: String,
    },
    #[error("repository name {0:?} in storage is invalid")]
    BadRepositoryName(String),
}

fn storage_error(action: impl Into<String>) -> impl FnOnce(StorageError) -> GcError {
    let action = action.into();
    move |source| GcError::Storage { action, source }
}

/// Runs one collection over `storage`.
pub async fn collect(
    storage: &dyn Storage,
    policy: &GcPolicy,
    dry_run: bool,
) -> Result<GcReport, GcError> {
    let started = SystemTime::now();
    let cutoff = started
        .checked_sub(policy.grace)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let mut report = GcReport {
        dry_run,
        ..GcReport::default()
    };

    // Retention.
    let mut snapshots = Vec::new();
    for repo in repository_names(storage).await? {
        let snapshot = snapshot_repository(storage, &repo).await?;
        let plan = retention::plan_repository(
            repo.as_str(),
            &snapshot,
            &policy.retention,
            &policy.immutable,
            started,
        );
        if !dry_run {
            apply_plan(storage, &repo, &snapshot, &plan, started).await?;
        }
        report
            .tags
            .extend(plan.tags.iter().map(|tag| (repo.clone(), tag.clone())));
        report
            .manifests
            .extend(plan.manifests.iter().map(|d| (repo.clone(), d.clone())));
        snapshots.push((repo, snapshot, plan));
    }

    // Mark, from a listing taken after `started` (a dry run reuses the first one).
    let mut marked: HashSet<Digest> = HashSet::new();
    let mut mark = |snapshot: &RepoSnapshot, skip: &[Digest]| {
        for (digest, node) in &snapshot.manifests {
            if !skip.contains(digest) {
                marked.insert(digest.clone());
                marked.extend(node.blobs.iter().cloned());
            }
        }
    };
    if dry_run {
        for (_, snapshot, plan) in &snapshots {
            mark(snapshot, &plan.manifests);
        }
    } else {
        for repo in repository_names(storage).await? {
            mark(&snapshot_repository(storage, &repo).await?, &[]);
        }
    }

    // Sweep.
    let blobs = storage
        .blob_list()
        .await
        .map_err(storage_error("listing blobs"))?;
    for blob in blobs {
        if marked.contains(&blob.digest) || blob.last_used >= cutoff {
            continue;
        }
        let removed = dry_run
            || storage
                .blob_delete_unused(&blob.digest, cutoff)
                .await
                .map_err(storage_error(format!("deleting blob {}", blob.digest)))?;
        if removed {
            report.blobs.push((blob.digest, blob.size));
        }
    }

    // Abandoned uploads.
    let idle_since = SystemTime::now()
        .checked_sub(policy.upload_expiry)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let uploads = storage
        .upload_list()
        .await
        .map_err(storage_error("listing uploads"))?;
    for upload in uploads {
        if upload.last_activity >= idle_since {
            continue;
        }
        if !dry_run {
            match storage.upload_cancel(&upload.repo, &upload.id).await {
                Ok(()) | Err(StorageError::UploadUnknown(_)) => {}
                Err(e) => {
                    return Err(storage_error(format!("expiring upload {}", upload.id))(e));
                }
            }
        }
        report.uploads.push((upload.repo, upload.id));
    }
    Ok(report)
}

async fn repository_names(storage: &dyn Storage) -> Result<Vec<RepositoryName>, GcError> {
    storage
        .repositories()
        .await
        .map_err(storage_error("listing repositories"))?
        .into_iter()
        .map(|name| RepositoryName::parse(&name).ok_or(GcError::BadRepositoryName(name)))
        .collect()
}

/// Reads a repository's tags and manifests (with what each references).
async fn snapshot_repository(
    storage: &dyn Storage,
    repo: &RepositoryName,
) -> Result<RepoSnapshot, GcError> {
    let mut snapshot = RepoSnapshot::default();
    let listed = storage
        .manifest_list(repo)
        .await
        .map_err(storage_error(format!("listing manifests of {repo}")))?;
    for info in listed {
        let unreadable = |detail: String| GcError::UnreadableManifest {
            repository: repo.to_string(),
            digest: info.digest.clone(),
            detail,
        };
        let stored = match storage.manifest_get(repo, &info.digest).await {
            Ok(Some(stored)) => stored,
            // Deleted meanwhile.
            Ok(None) => continue,
            // Linked but its blob is gone: it references nothing that still exists.
            Err(StorageError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                tracing::warn!(%repo, digest = %info.digest, "manifest link without its blob");
                continue;
            }
            Err(e) => return Err(unreadable(e.to_string())),
        };
        let parsed = manifest::inspect(&stored.bytes, Some(&stored.media_type))
            .map_err(|e| unreadable(e.to_string()))?;
        let mut node = ManifestNode {
            linked_at: info.linked_at,
            children: Vec::new(),
            subject: parsed.subject,
            blobs: Vec::new(),
        };
        for reference in parsed.references {
            if reference.is_manifest {
                node.children.push(reference.digest);
            } else {
                node.blobs.push(reference.digest);
            }
        }
        snapshot.manifests.insert(info.digest, node);
    }
    for tag in storage
        .tags(repo)
        .await
        .map_err(storage_error(format!("listing tags of {repo}")))?
    {
        if let Some(digest) = storage
            .tag_get(repo, &tag)
            .await
            .map_err(storage_error(format!("reading tag {tag} of {repo}")))?
        {
            snapshot.tags.insert(tag, digest);
        }
    }
    Ok(snapshot)
}

/// Deletes the planned tags, then the planned manifests that are still untagged and were not
/// pushed again since the collection started.
async fn apply_plan(
    storage: &dyn Storage,
    repo: &RepositoryName,
    snapshot: &RepoSnapshot,
    plan: &retention::RepoPlan,
    started: SystemTime,
) -> Result<(), GcError> {
    for tag in &plan.tags {
        // Only if it still points where it pointed when planned.
        let now = storage
            .tag_get(repo, tag)
            .await
            .map_err(storage_error(format!("reading tag {tag} of {repo}")))?;
        if now.is_some() && now.as_ref() == snapshot.tags.get(tag) {
            storage
                .tag_delete(repo, tag)
                .await
                .map_err(storage_error(format!("deleting tag {tag} of {repo}")))?;
        }
    }
    if plan.manifests.is_empty() {
        return Ok(());
    }
    let mut tagged = HashSet::new();
    for tag in storage
        .tags(repo)
        .await
        .map_err(storage_error(format!("listing tags of {repo}")))?
    {
        if let Ok(Some(digest)) = storage.tag_get(repo, &tag).await {
            tagged.insert(digest);
        }
    }
    let linked_at: BTreeMap<Digest, SystemTime> = storage
        .manifest_list(repo)
        .await
        .map_err(storage_error(format!("listing manifests of {repo}")))?
        .into_iter()
        .map(|m| (m.digest, m.linked_at))
        .collect();
    for digest in &plan.manifests {
        let pushed_again = linked_at.get(digest).is_some_and(|t| *t >= started);
        if tagged.contains(digest) || pushed_again {
            continue;
        }
        if let Some(subject) = snapshot
            .manifests
            .get(digest)
            .and_then(|m| m.subject.as_ref())
        {
            storage
                .referrer_remove(repo, subject, digest)
                .await
                .map_err(storage_error(format!(
                    "removing referrer {digest} of {repo}"
                )))?;
        }
        storage
            .manifest_delete(repo, digest)
            .await
            .map_err(storage_error(format!(
                "deleting manifest {digest} of {repo}"
            )))?;
    }
    Ok(())
}

/// Runs a collection every `interval` until the task is aborted, recording results in
/// `metrics`. Failures are logged and the next run tries again.
pub fn spawn_periodic(
    storage: Arc<dyn Storage>,
    policy: GcPolicy,
    interval: Duration,
    metrics: Arc<Metrics>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(interval).await;
            match collect(storage.as_ref(), &policy, false).await {
                Ok(report) => {
                    metrics.gc_finished(&report);
                    tracing::info!(
                        blobs = report.blobs.len(),
                        bytes = report.bytes_reclaimed(),
                        manifests = report.manifests.len(),
                        tags = report.tags.len(),
                        uploads = report.uploads.len(),
                        "garbage collection finished"
                    );
                }
                Err(e) => {
                    metrics.gc_failed();
                    tracing::error!(error = %e, "garbage collection failed");
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::storage::FilesystemStorage;
    use bytes::Bytes;

    fn image_manifest(config: &Digest, layers: &[&Digest]) -> Bytes {
        let layers: Vec<serde_json::Value> = layers
            .iter()
            .map(|d| serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d.to_string(), "size": 1}))
            .collect();
        Bytes::from(
            serde_json::json!({
                "schemaVersion": 2,
                "mediaType": manifest::OCI_MANIFEST,
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.to_string(), "size": 1},
                "layers": layers,
            })
            .to_string(),
        )
    }

    async fn put_blob(
        storage: &FilesystemStorage,
        repo: &RepositoryName,
        content: &[u8],
    ) -> Digest {
        let digest = Digest::sha256_of(content);
        storage
            .blob_put(&digest, Bytes::copy_from_slice(content))
            .await
            .unwrap();
        storage.link_blob(repo, &digest).await.unwrap();
        digest
    }

    #[tokio::test]
    async fn sweeps_only_unmarked_blobs_older_than_the_grace_period() {
        let dir = tempfile::tempdir().unwrap();
        let storage = FilesystemStorage::open(dir.path()).unwrap();
        let repo = RepositoryName::parse("team/app").unwrap();
        let config = put_blob(&storage, &repo, b"c").await;
        let shared = put_blob(&storage, &repo, b"s").await;
        let only_old = put_blob(&storage, &repo, b"o").await;
        let stray = put_blob(&storage, &repo, b"stray").await;
        let keep = image_manifest(&config, &[&shared]);
        let keep_digest = Digest::sha256_of(&keep);
        storage
            .manifest_put(&repo, &keep_digest, manifest::OCI_MANIFEST, keep)
            .await
            .unwrap();
        storage.tag_set(&repo, "v2", &keep_digest).await.unwrap();
        let old = image_manifest(&config, &[&shared, &only_old]);
        let old_digest = Digest::sha256_of(&old);
        storage
            .manifest_put(&repo, &old_digest, manifest::OCI_MANIFEST, old)
            .await
            .unwrap();
        storage.manifest_delete(&repo, &old_digest).await.unwrap();

        // Inside the grace period nothing goes.
        let report = collect(&storage, &GcPolicy::default(), false)
            .await
            .unwrap();
        assert!(report.blobs.is_empty(), "{report:?}");

        let policy = GcPolicy {
            grace: Duration::ZERO,
            ..GcPolicy::default()
        };
        let dry = collect(&storage, &policy, true).await.unwrap();
        let mut expected = vec![old_digest.clone(), only_old.clone(), stray.clone()];
        expected.sort();
        let mut listed: Vec<Digest> = dry.blobs.iter().map(|(d, _)| d.clone()).collect();
        listed.sort();
        assert_eq!(listed, expected);
        assert!(
            storage.blob_size(&stray).await.unwrap().is_some(),
            "dry run deleted"
        );

        let real = collect(&storage, &policy, false).await.unwrap();
        assert_eq!(real.blobs.len(), 3);
        assert_eq!(real.bytes_reclaimed(), dry.bytes_reclaimed());
        for gone in [&old_digest, &only_old, &stray] {
            assert_eq!(storage.blob_size(gone).await.unwrap(), None);
        }
        for kept in [&keep_digest, &config, &shared] {
            assert!(storage.blob_size(kept).await.unwrap().is_some());
        }
    }

    #[tokio::test]
    async fn a_touch_after_the_decision_keeps_the_blob() {
        let dir = tempfile::tempdir().unwrap();
        let storage = FilesystemStorage::open(dir.path()).unwrap();
        let repo = RepositoryName::parse("a").unwrap();
        let blob = put_blob(&storage, &repo, b"x").await;
        let cutoff = SystemTime::now();
        storage.blob_touch(&blob).await.unwrap();
        assert!(!storage.blob_delete_unused(&blob, cutoff).await.unwrap());
        assert!(storage.blob_size(&blob).await.unwrap().is_some());
        let later = SystemTime::now() + Duration::from_secs(1);
        assert!(storage.blob_delete_unused(&blob, later).await.unwrap());
        assert_eq!(storage.blob_size(&blob).await.unwrap(), None);
        // Touching a missing blob is not an error.
        storage.blob_touch(&blob).await.unwrap();
    }

    #[tokio::test]
    async fn abandoned_uploads_expire() {
        let dir = tempfile::tempdir().unwrap();
        let storage = FilesystemStorage::open(dir.path()).unwrap();
        let repo = RepositoryName::parse("a").unwrap();
        storage.upload_start(&repo).await.unwrap();
        let report = collect(&storage, &GcPolicy::default(), false)
            .await
            .unwrap();
        assert!(report.uploads.is_empty());
        let policy = GcPolicy {
            upload_expiry: Duration::ZERO,
            ..GcPolicy::default()
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let report = collect(&storage, &policy, false).await.unwrap();
        assert_eq!(report.uploads.len(), 1);
        assert_eq!(storage.upload_count().await.unwrap(), 0);
    }
}

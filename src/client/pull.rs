//! Pull: resolve a reference to one image manifest (picking the platform from an index), fetch
//! only the blobs the store lacks, several at a time, each verified while it streams to disk,
//! and tag the image in the store only once every blob is present.

use futures::StreamExt as _;

use super::ConnectionOptions;
use super::error::{ClientError, RegistryError};
use super::manifest::{image_blobs, parse_image_manifest, parse_index, select_platform};
use super::progress::PullProgress;
use super::registry_client::{DownloadState, RegistryClient};
use super::sources::BlobSources;
use crate::digest::Digest;
use crate::image::Platform;
use crate::image::manifest::{Descriptor, media_types};
use crate::reference::Reference;
use crate::store::{RefEntry, Store};

/// Options for [`pull`].
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// Platform to pick from a multi-arch index; `None` means the host's (linux/amd64 here).
    pub platform: Option<Platform>,
    pub connection: ConnectionOptions,
    /// Blobs fetched at the same time.
    pub max_parallel: usize,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            platform: None,
            connection: ConnectionOptions::default(),
            max_parallel: 4,
        }
    }
}

/// What [`pull`] stored.
#[derive(Debug, Clone)]
pub struct PulledImage {
    /// Digest of the image manifest (for an index: the chosen platform's manifest).
    pub manifest_digest: Digest,
    pub config_digest: Digest,
    /// The reference as tagged in the store (with the default tag applied).
    pub reference: Reference,
    /// Blobs downloaded by this pull (0 when everything was already in the store).
    pub blobs_fetched: usize,
    pub bytes_fetched: u64,
}

/// Pulls `reference` into `store` and tags it there (as `reference.with_default_tag()`).
pub async fn pull(
    store: &Store,
    reference: &Reference,
    opts: &PullOptions,
    progress: &dyn PullProgress,
) -> Result<PulledImage, ClientError> {
    let reference = reference.clone().with_default_tag();
    let operation = format!("pull {}", reference.familiar());
    pull_inner(store, &reference, opts, progress)
        .await
        .map_err(|e| ClientError::new(operation, e))
}

async fn pull_inner(
    store: &Store,
    reference: &Reference,
    opts: &PullOptions,
    progress: &dyn PullProgress,
) -> Result<PulledImage, RegistryError> {
    let client = RegistryClient::new(&reference.registry, &opts.connection)?;
    let repository = &reference.repository;
    let mut fetched = client
        .get_manifest(repository, &reference.tag_or_digest())
        .await?;
    if media_types::is_index(&fetched.media_type) {
        let what = format!("index {reference}");
        let index = parse_index(&fetched.bytes, &fetched.media_type, &what)?;
        let wanted = opts.platform.clone().unwrap_or_else(Platform::host);
        let chosen = select_platform(&index, &wanted, &what)?;
        fetched = client
            .get_manifest(repository, &chosen.digest.to_string())
            .await?;
        if !media_types::is_image_manifest(&fetched.media_type) {
            return Err(RegistryError::BadManifest {
                what,
                reason: format!(
                    "entry {} for {wanted} is a {}, not an image manifest",
                    chosen.digest, fetched.media_type
                ),
            });
        }
    }
    let what = format!("manifest {}", fetched.digest);
    let manifest = parse_image_manifest(&fetched.bytes, &fetched.media_type, &what)?;
    let blobs = image_blobs(&manifest);
    progress.resolved(&fetched.digest, blobs.len());

    let mut missing = Vec::new();
    for blob in &blobs {
        if store.has_blob(&blob.digest) {
            progress.blob_present(&blob.digest, blob.size);
        } else if !missing.iter().any(|m: &Descriptor| m.digest == blob.digest) {
            missing.push(blob.clone());
        }
    }
    let results: Vec<Result<u64, RegistryError>> = futures::stream::iter(missing.iter())
        .map(|blob| fetch_blob(store, &client, repository, blob, progress))
        .buffer_unordered(opts.max_parallel.max(1))
        .collect()
        .await;
    let mut bytes_fetched = 0;
    for result in results {
        bytes_fetched += result?;
    }

    let stored = store.put_blob_bytes(&fetched.bytes)?;
    if stored.algorithm() == fetched.digest.algorithm() && stored != fetched.digest {
        return Err(RegistryError::DigestMismatch {
            what,
            expected: fetched.digest.clone(),
            actual: stored,
        });
    }
    {
        let _lock = store.lock()?;
        BlobSources::for_store(store).record(
            &reference.registry,
            repository,
            blobs.iter().map(|b| &b.digest),
        )?;
    }
    store.set_ref(RefEntry {
        name: Some(reference.to_string()),
        manifest_digest: fetched.digest.clone(),
        media_type: fetched.media_type.clone(),
        size: fetched.bytes.len() as u64,
    })?;
    Ok(PulledImage {
        manifest_digest: fetched.digest,
        config_digest: blobs[0].digest.clone(),
        reference: reference.clone(),
        blobs_fetched: missing.len(),
        bytes_fetched,
    })
}

/// Attempts per blob download before a transient error (connection drop, 5xx) is final.
const DOWNLOAD_ATTEMPTS: u32 = 3;

/// Downloads one blob into the store, verified against its digest and size; after a transient
/// failure the download resumes where it stopped (a `Range` request), in the same temp file.
async fn fetch_blob(
    store: &Store,
    client: &RegistryClient,
    repository: &str,
    blob: &Descriptor,
    progress: &dyn PullProgress,
) -> Result<u64, RegistryError> {
    progress.blob_started(&blob.digest, blob.size);
    let mut writer = store.blob_writer()?;
    let mut state = DownloadState::new(&blob.digest);
    let mut attempt = 0;
    let size = loop {
        attempt += 1;
        let downloaded = client
            .resume_download(
                repository,
                &blob.digest,
                Some(blob.size),
                &mut state,
                &mut writer,
                &mut |done| progress.blob_progress(&blob.digest, done, blob.size),
            )
            .await;
        match downloaded {
            Ok(size) => break size,
            Err(e) if e.is_transient() && attempt < DOWNLOAD_ATTEMPTS => {
                tracing::warn!(
                    "download of {} failed after {} bytes ({e}); resuming",
                    blob.digest,
                    state.received()
                );
                tokio::time::sleep(std::time::Duration::from_millis(300 * u64::from(attempt)))
                    .await;
            }
            Err(e) => return Err(e),
        }
    };
    writer.commit(Some(&blob.digest)).map_err(|e| match e {
        crate::store::StoreError::DigestMismatch { expected, actual } => {
            RegistryError::DigestMismatch {
                what: format!("blob {expected}"),
                expected,
                actual,
            }
        }
        other => RegistryError::Store(other),
    })?;
    progress.blob_finished(&blob.digest, blob.size);
    Ok(size)
}

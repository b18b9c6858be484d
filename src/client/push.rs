//! Push: send a stored image to a registry, transferring only what it lacks. Each blob is
//! HEADed first, mounted from another repository of the same registry when blob-sources knows
//! one, else uploaded streaming from disk; blobs go in parallel; a manifest is PUT only after
//! all its blobs (and, for an index, all its child manifests) are confirmed.

use std::collections::HashMap;
use std::fmt;

use futures::StreamExt as _;

use super::ConnectionOptions;
use super::error::{ClientError, RegistryError};
use super::manifest::{
    convert_image_manifest, image_blobs, parse, parse_image_manifest, parse_index,
};
use super::progress::{PushProgress, human_bytes};
use super::registry_client::{MountOutcome, RegistryClient, UploadTuning};
use super::sources::BlobSources;
use crate::digest::Digest;
use crate::image::manifest::{Descriptor, media_types};
use crate::reference::Reference;
use crate::store::Store;

/// The manifest family to push.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ManifestFormat {
    /// OCI image manifest / index (default).
    #[default]
    Oci,
    /// Docker schema2 manifest / manifest list. Converting changes the manifest digest; the
    /// config and layer bytes (and so their digests) stay the same.
    Docker,
}

/// Options for [`push`].
#[derive(Debug, Clone)]
pub struct PushOptions {
    /// Manifests already in this format are pushed byte-exact; others are converted.
    pub format: ManifestFormat,
    pub connection: ConnectionOptions,
    /// Blobs uploaded at the same time.
    pub max_parallel: usize,
    pub upload: UploadTuning,
}

impl Default for PushOptions {
    fn default() -> Self {
        PushOptions {
            format: ManifestFormat::Oci,
            connection: ConnectionOptions::default(),
            max_parallel: 4,
            upload: UploadTuning::default(),
        }
    }
}

/// What a push did. Layer counts exclude config blobs; `bytes_pushed` includes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushReport {
    pub layers_total: usize,
    /// Layers uploaded by this push.
    pub layers_pushed: usize,
    pub bytes_pushed: u64,
    /// Layers the registry already had in the destination repository.
    pub layers_present: usize,
    /// Layers mounted from another repository: (digest, source repository).
    pub layers_mounted: Vec<(Digest, String)>,
    /// Config blobs uploaded (0 when the registry had or mounted them).
    pub configs_pushed: usize,
    /// Digest of the top-level manifest as pushed (after any format conversion).
    pub manifest_digest: Digest,
}

/// Per-blob tallies gathered while pushing, before the manifest digest is known.
#[derive(Default)]
struct Tally {
    layers_total: usize,
    layers_pushed: usize,
    bytes_pushed: u64,
    layers_present: usize,
    layers_mounted: Vec<(Digest, String)>,
    configs_pushed: usize,
}

impl fmt::Display for PushReport {
    /// `pushed 2 of 6 layers (45.1MB), 3 already present, 1 mounted from base/debian`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pushed {} of {} layers ({})",
            self.layers_pushed,
            self.layers_total,
            human_bytes(self.bytes_pushed)
        )?;
        if self.layers_present > 0 {
            write!(f, ", {} already present", self.layers_present)?;
        }
        let mut mounted_from: Vec<(&str, usize)> = Vec::new();
        for (_, from) in &self.layers_mounted {
            match mounted_from.iter_mut().find(|(name, _)| *name == from) {
                Some((_, count)) => *count += 1,
                None => mounted_from.push((from, 1)),
            }
        }
        for (from, count) in mounted_from {
            write!(f, ", {count} mounted from {from}")?;
        }
        Ok(())
    }
}

/// Pushes the stored image `local` to `dest` (tag `latest` when neither tag nor digest).
pub async fn push(
    store: &Store,
    local: &Reference,
    dest: &Reference,
    opts: &PushOptions,
    progress: &dyn PushProgress,
) -> Result<PushReport, ClientError> {
    let dest = dest.clone().with_default_tag();
    let operation = format!("push {}", dest.familiar());
    push_inner(store, local, &dest, opts, progress)
        .await
        .map_err(|e| ClientError::new(operation, e))
}

/// How one blob reached the registry.
enum BlobOutcome {
    Present,
    Mounted(String),
    Uploaded(u64),
}

struct Pusher<'a> {
    store: &'a Store,
    client: RegistryClient,
    sources: BlobSources,
    dest: &'a Reference,
    opts: &'a PushOptions,
    progress: &'a dyn PushProgress,
    tally: Tally,
    /// Blobs confirmed in the destination repository, for blob-sources.
    confirmed: Vec<Digest>,
}

async fn push_inner(
    store: &Store,
    local: &Reference,
    dest: &Reference,
    opts: &PushOptions,
    progress: &dyn PushProgress,
) -> Result<PushReport, RegistryError> {
    let local_name = local.clone().with_default_tag().to_string();
    let entry = match store.get_ref(&local_name)? {
        Some(entry) => entry,
        None => match &local.digest {
            Some(digest) if store.has_blob(digest) => crate::store::RefEntry {
                name: None,
                manifest_digest: digest.clone(),
                media_type: media_type_of_stored(store, digest)?,
                size: 0,
            },
            _ => return Err(RegistryError::LocalImageNotFound(local.familiar())),
        },
    };
    let mut pusher = Pusher {
        store,
        client: RegistryClient::new(&dest.registry, &opts.connection)?,
        sources: BlobSources::for_store(store),
        dest,
        opts,
        progress,
        tally: Tally::default(),
        confirmed: Vec::new(),
    };
    let pushed = pusher
        .push_manifest(
            &entry.manifest_digest,
            &entry.media_type,
            &dest.tag_or_digest(),
        )
        .await?;
    {
        let _lock = store.lock()?;
        pusher
            .sources
            .record(&dest.registry, &dest.repository, pusher.confirmed.iter())?;
    }
    let tally = pusher.tally;
    Ok(PushReport {
        layers_total: tally.layers_total,
        layers_pushed: tally.layers_pushed,
        bytes_pushed: tally.bytes_pushed,
        layers_present: tally.layers_present,
        layers_mounted: tally.layers_mounted,
        configs_pushed: tally.configs_pushed,
        manifest_digest: pushed.digest,
    })
}

/// The `mediaType` recorded inside a stored manifest.
fn media_type_of_stored(store: &Store, digest: &Digest) -> Result<String, RegistryError> {
    let bytes = store.read_blob(digest)?;
    let parsed = parse(&bytes, None, &format!("manifest {digest}"))?;
    Ok(parsed.media_type().to_string())
}

impl Pusher<'_> {
    /// Pushes the manifest `digest` (and everything it references) under `tag_or_digest`;
    /// returns its descriptor as pushed (converted digest, size and media type).
    async fn push_manifest(
        &mut self,
        digest: &Digest,
        media_type: &str,
        tag_or_digest: &str,
    ) -> Result<Descriptor, RegistryError> {
        let bytes = self.store.read_blob(digest)?;
        let what = format!("manifest {digest}");
        let to_docker = self.opts.format == ManifestFormat::Docker;
        let (bytes, media_type) = if media_types::is_index(media_type) {
            let index = parse_index(&bytes, media_type, &what)?;
            let mut replaced: HashMap<Digest, Descriptor> = HashMap::new();
            for child in &index.manifests {
                if !self.store.has_blob(&child.digest) {
                    return Err(RegistryError::LocalImageNotFound(format!(
                        "{} (child {} of index {digest})",
                        self.dest.familiar(),
                        child.digest
                    )));
                }
                let pushed = Box::pin(self.push_manifest(
                    &child.digest,
                    &child.media_type,
                    &child.digest.to_string(),
                ))
                .await?;
                replaced.insert(child.digest.clone(), pushed);
            }
            convert_index(&bytes, media_type, to_docker, &replaced, &what)?
        } else if media_types::is_image_manifest(media_type) {
            let manifest = parse_image_manifest(&bytes, media_type, &what)?;
            let blobs = image_blobs(&manifest);
            self.push_blobs(&blobs).await?;
            let is_docker = media_type == media_types::DOCKER_MANIFEST;
            if is_docker == to_docker {
                (bytes, media_type.to_string())
            } else {
                convert_image_manifest(&bytes, to_docker, &what)?
            }
        } else {
            return Err(RegistryError::BadManifest {
                what,
                reason: format!("unsupported media type {media_type:?}"),
            });
        };
        let converted_digest = Digest::sha256_of(&bytes);
        // A child pushed by digest must be addressed by its (possibly new) digest.
        let target = if Digest::parse(tag_or_digest).is_ok() {
            converted_digest.to_string()
        } else {
            tag_or_digest.to_string()
        };
        self.client
            .put_manifest(&self.dest.repository, &target, &media_type, &bytes)
            .await?;
        self.progress.manifest_pushed(&converted_digest, &target);
        Ok(Descriptor::new(
            media_type,
            converted_digest,
            bytes.len() as u64,
        ))
    }

    /// Makes every blob present in the destination repository, several at a time.
    async fn push_blobs(&mut self, blobs: &[Descriptor]) -> Result<(), RegistryError> {
        let mut unique: Vec<(usize, &Descriptor)> = Vec::new();
        for (position, blob) in blobs.iter().enumerate() {
            if !unique.iter().any(|(_, b)| b.digest == blob.digest) {
                unique.push((position, blob));
            }
        }
        let this: &Self = self;
        let results: Vec<(usize, &Descriptor, Result<BlobOutcome, RegistryError>)> =
            futures::stream::iter(unique)
                .map(|(position, blob)| async move { (position, blob, this.push_blob(blob).await) })
                .buffer_unordered(self.opts.max_parallel.max(1))
                .collect()
                .await;
        for (position, blob, outcome) in results {
            let outcome = outcome?;
            let is_layer = position > 0;
            if is_layer {
                self.tally.layers_total += 1;
            }
            match outcome {
                BlobOutcome::Present => {
                    if is_layer {
                        self.tally.layers_present += 1;
                    }
                }
                BlobOutcome::Mounted(from) => {
                    if is_layer {
                        self.tally.layers_mounted.push((blob.digest.clone(), from));
                    }
                }
                BlobOutcome::Uploaded(bytes) => {
                    self.tally.bytes_pushed += bytes;
                    if is_layer {
                        self.tally.layers_pushed += 1;
                    } else {
                        self.tally.configs_pushed += 1;
                    }
                }
            }
            self.confirmed.push(blob.digest.clone());
        }
        Ok(())
    }

    async fn push_blob(&self, blob: &Descriptor) -> Result<BlobOutcome, RegistryError> {
        let repository = &self.dest.repository;
        let digest = &blob.digest;
        if self.client.blob_exists(repository, digest).await?.is_some() {
            self.progress.blob_present(digest, blob.size);
            return Ok(BlobOutcome::Present);
        }
        let path = self.store.blob_path(digest);
        let size = std::fs::metadata(&path)
            .map_err(|_| {
                RegistryError::Store(crate::store::StoreError::BlobNotFound(digest.clone()))
            })?
            .len();
        let mut session = None;
        for from in self
            .sources
            .repositories_on(&self.dest.registry, digest)?
            .into_iter()
            .filter(|from| from != repository)
            .take(2)
        {
            match self.client.mount_blob(repository, digest, &from).await {
                Ok(MountOutcome::Mounted) => {
                    self.progress.blob_mounted(digest, size, &from);
                    return Ok(BlobOutcome::Mounted(from));
                }
                Ok(MountOutcome::UploadStarted(url)) => {
                    session = Some(url);
                    break;
                }
                // A refused mount (e.g. no pull access to the source) just means uploading.
                Err(e) => tracing::debug!("mount of {digest} from {from} failed: {e}"),
            }
        }
        self.progress.blob_started(digest, size);
        self.client
            .upload_blob(
                repository,
                digest,
                size,
                &path,
                session,
                self.opts.upload,
                &mut |done| self.progress.blob_progress(digest, done, size),
            )
            .await?;
        self.progress.blob_finished(digest, size);
        Ok(BlobOutcome::Uploaded(size))
    }
}

/// Rewrites an index's child descriptors to the pushed ones (and its media types to the target
/// family); returns the input unchanged when nothing differs.
fn convert_index(
    bytes: &[u8],
    media_type: &str,
    to_docker: bool,
    replaced: &HashMap<Digest, Descriptor>,
    what: &str,
) -> Result<(Vec<u8>, String), RegistryError> {
    let target_type = if to_docker {
        media_types::DOCKER_MANIFEST_LIST
    } else {
        media_types::OCI_INDEX
    };
    let unchanged =
        media_type == target_type && replaced.iter().all(|(old, new)| *old == new.digest);
    if unchanged {
        return Ok((bytes.to_vec(), media_type.to_string()));
    }
    let conversion_error = |reason: String| RegistryError::Conversion {
        format: if to_docker { "Docker schema2" } else { "OCI" }.to_string(),
        reason: format!("{what}: {reason}"),
    };
    let mut value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| conversion_error(e.to_string()))?;
    let object = value
        .as_object_mut()
        .ok_or_else(|| conversion_error("index is not a JSON object".to_string()))?;
    object.insert("mediaType".to_string(), target_type.into());
    if let Some(manifests) = object.get_mut("manifests").and_then(|m| m.as_array_mut()) {
        for entry in manifests.iter_mut().filter_map(|m| m.as_object_mut()) {
            let old = entry
                .get("digest")
                .and_then(|d| d.as_str())
                .and_then(|d| Digest::parse(d).ok());
            if let Some(new) = old.and_then(|old| replaced.get(&old)) {
                entry.insert("digest".to_string(), new.digest.to_string().into());
                entry.insert("size".to_string(), new.size.into());
                entry.insert("mediaType".to_string(), new.media_type.clone().into());
            }
        }
    }
    let bytes = serde_json::to_vec_pretty(&value).map_err(|e| conversion_error(e.to_string()))?;
    Ok((bytes, target_type.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_summary_reads_like_docker() {
        let report = PushReport {
            layers_total: 6,
            layers_pushed: 2,
            bytes_pushed: 45_100_000,
            layers_present: 3,
            layers_mounted: vec![(Digest::sha256_of(b"x"), "base/debian".to_string())],
            configs_pushed: 1,
            manifest_digest: Digest::sha256_of(b"m"),
        };
        assert_eq!(
            report.to_string(),
            "pushed 2 of 6 layers (45.1MB), 3 already present, 1 mounted from base/debian"
        );
        let nothing_new = PushReport {
            layers_total: 1,
            layers_pushed: 0,
            bytes_pushed: 0,
            layers_present: 1,
            layers_mounted: Vec::new(),
            configs_pushed: 0,
            manifest_digest: Digest::sha256_of(b"m"),
        };
        assert_eq!(
            nothing_new.to_string(),
            "pushed 0 of 1 layers (0B), 1 already present"
        );
    }

    #[test]
    fn index_children_are_rewritten_to_pushed_digests() {
        let old = Digest::sha256_of(b"old");
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media_types::OCI_INDEX,
            "manifests": [{"mediaType": media_types::OCI_MANIFEST, "digest": old.to_string(), "size": 3,
                           "platform": {"os": "linux", "architecture": "amd64"}}],
        });
        let bytes = index.to_string().into_bytes();
        let new = Descriptor::new(media_types::DOCKER_MANIFEST, Digest::sha256_of(b"new"), 9);
        let replaced = HashMap::from([(old.clone(), new.clone())]);
        let (out, mt) =
            convert_index(&bytes, media_types::OCI_INDEX, true, &replaced, "i").unwrap();
        assert_eq!(mt, media_types::DOCKER_MANIFEST_LIST);
        let parsed: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(parsed["manifests"][0]["digest"], new.digest.to_string());
        assert_eq!(parsed["manifests"][0]["size"], 9);
        assert_eq!(parsed["manifests"][0]["platform"]["architecture"], "amd64");

        let same = HashMap::from([(
            old.clone(),
            Descriptor {
                digest: old.clone(),
                ..new
            },
        )]);
        let (out, _) = convert_index(&bytes, media_types::OCI_INDEX, false, &same, "i").unwrap();
        assert_eq!(out, bytes, "an unchanged index is pushed byte-exact");
    }
}

//! Image configs, manifests and indexes (OCI with Docker compatibility), and docker/OCI archive export.
//!
//! - `config.rs`: the image config JSON (`ImageConfig`, `ContainerConfig`, `History`...).
//! - `manifest.rs`: manifests, indexes, descriptors, media types (OCI and Docker schema2).
//! - `platform.rs`: the platform type (`linux/amd64`...): parsing, host, matching.
//! - `export.rs`: `docker load`-able archives and OCI layout archives, streamed.
//! - here: storing an image (config + manifest blobs) and loading one back from the store.
pub mod config;
pub mod export;
pub mod manifest;
pub mod platform;

pub use config::{
    ContainerConfig, EmptyObject, Healthcheck, History, ImageConfig, RootFs, rfc3339,
};
pub use export::{write_docker_archive, write_oci_archive};
pub use manifest::{Descriptor, Index, Manifest, ManifestError, ManifestOrIndex, media_types};
pub use platform::{Platform, PlatformError};

use crate::digest::Digest;
use crate::store::{Store, StoreError};

/// Errors from storing, loading and exporting images.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("manifest {digest}: {source}")]
    Manifest {
        digest: Digest,
        #[source]
        source: ManifestError,
    },
    #[error("manifest {digest} is an index ({media_type}), not an image manifest")]
    NotAnImage { digest: Digest, media_type: String },
    #[error("config {digest}: invalid JSON: {source}")]
    Config {
        digest: Digest,
        #[source]
        source: serde_json::Error,
    },
    #[error("image has {layers} layers but its config lists {diff_ids} diff_ids")]
    LayerCountMismatch { layers: usize, diff_ids: usize },
    #[error("writing the archive: {0}")]
    WriteArchive(#[source] std::io::Error),
    #[error("blob {digest} changed while being exported: expected {expected} bytes, read {actual}")]
    BlobChanged {
        digest: Digest,
        expected: u64,
        actual: u64,
    },
}

/// An image read back from the store.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadedImage {
    pub manifest: Manifest,
    pub config: ImageConfig,
    pub config_digest: Digest,
    pub manifest_digest: Digest,
}

/// The OCI architecture name of the host (`amd64`, `arm64`, ...).
pub fn host_architecture() -> String {
    Platform::host().architecture
}

/// The OCI chain id of a layer with diff id `diff_id` on top of the chain `parent`:
/// `ChainID(L0) = DiffID(L0)`, `ChainID(L0..Ln) = sha256(ChainID(L0..Ln-1) + " " + DiffID(Ln))`.
/// Chain ids name unpacked snapshots: equal chain ids mean equal root file systems.
pub fn chain_id(parent: Option<&Digest>, diff_id: &Digest) -> Digest {
    match parent {
        None => diff_id.clone(),
        Some(parent) => Digest::sha256_of(format!("{parent} {diff_id}").as_bytes()),
    }
}

/// The chain ids of a whole layer stack (bottom first), one per layer.
pub fn chain_ids(diff_ids: &[Digest]) -> Vec<Digest> {
    let mut chain: Vec<Digest> = Vec::with_capacity(diff_ids.len());
    for diff_id in diff_ids {
        chain.push(chain_id(chain.last(), diff_id));
    }
    chain
}

/// Stores `config` and an OCI manifest over `layers` (whose blobs must already be stored).
/// Returns the manifest's descriptor (OCI manifest media type, digest, size).
pub fn write_image(
    store: &Store,
    config: &ImageConfig,
    layers: &[Descriptor],
) -> Result<Descriptor, ImageError> {
    if config.rootfs.diff_ids.len() != layers.len() {
        return Err(ImageError::LayerCountMismatch {
            layers: layers.len(),
            diff_ids: config.rootfs.diff_ids.len(),
        });
    }
    for layer in layers {
        if !store.has_blob(&layer.digest) {
            return Err(StoreError::BlobNotFound(layer.digest.clone()).into());
        }
    }
    let config_bytes = config.to_json();
    let config_digest = store.put_blob_bytes(&config_bytes)?;
    let manifest = Manifest::new_oci(
        Descriptor::new(
            manifest::OCI_CONFIG,
            config_digest,
            config_bytes.len() as u64,
        ),
        layers.to_vec(),
    );
    let manifest_bytes = manifest.to_json();
    let manifest_digest = store.put_blob_bytes(&manifest_bytes)?;
    Ok(Descriptor::new(
        manifest::OCI_MANIFEST,
        manifest_digest,
        manifest_bytes.len() as u64,
    ))
}

/// Reads a manifest or index blob from the store (verified) and parses it.
pub fn load_manifest_or_index(
    store: &Store,
    digest: &Digest,
) -> Result<ManifestOrIndex, ImageError> {
    let bytes = store.read_blob(digest)?;
    ManifestOrIndex::parse(&bytes, None).map_err(|source| ImageError::Manifest {
        digest: digest.clone(),
        source,
    })
}

/// Loads the image whose manifest is `manifest_digest` (OCI or Docker schema2).
pub fn load_image(store: &Store, manifest_digest: &Digest) -> Result<LoadedImage, ImageError> {
    let manifest = match load_manifest_or_index(store, manifest_digest)? {
        ManifestOrIndex::Manifest(m) => m,
        ManifestOrIndex::Index(index) => {
            return Err(ImageError::NotAnImage {
                digest: manifest_digest.clone(),
                media_type: index
                    .media_type
                    .unwrap_or_else(|| manifest::OCI_INDEX.to_string()),
            });
        }
    };
    let config_digest = manifest.config.digest.clone();
    let config_bytes = store.read_blob(&config_digest)?;
    let config = ImageConfig::from_json(&config_bytes).map_err(|source| ImageError::Config {
        digest: config_digest.clone(),
        source,
    })?;
    Ok(LoadedImage {
        manifest,
        config,
        config_digest,
        manifest_digest: manifest_digest.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::{Compression, Entry, EntryKind, FileSource, LayerOptions, write_layer};

    pub(crate) fn tiny_image(store: &Store) -> (Descriptor, crate::layer::LayerInfo) {
        let entry = Entry {
            path: "hello.txt".into(),
            kind: EntryKind::File {
                source: FileSource::Bytes(b"hello\n".to_vec()),
                size: 6,
            },
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 0,
            xattrs: Vec::new(),
        };
        let opts = LayerOptions {
            compression: Compression::DEFAULT_GZIP,
            source_date_epoch: Some(0),
        };
        let layer = write_layer(store, vec![entry], &opts).unwrap();
        let config = ImageConfig {
            architecture: host_architecture(),
            os: "linux".into(),
            created: Some(rfc3339(0)),
            rootfs: RootFs {
                diff_ids: vec![layer.diff_id.clone()],
                ..RootFs::default()
            },
            config: ContainerConfig {
                cmd: vec!["/bin/sh".into()],
                ..ContainerConfig::default()
            },
            ..ImageConfig::default()
        };
        let descriptor = write_image(store, &config, &[Descriptor::from(&layer)]).unwrap();
        (descriptor, layer)
    }

    #[test]
    fn write_then_load_round_trips_and_is_deterministic() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (descriptor, layer) = tiny_image(&store);
        assert_eq!(descriptor.media_type, manifest::OCI_MANIFEST);
        let loaded = load_image(&store, &descriptor.digest).unwrap();
        assert_eq!(loaded.manifest.layers[0].digest, layer.digest);
        assert_eq!(loaded.manifest.config.media_type, manifest::OCI_CONFIG);
        assert_eq!(loaded.config.rootfs.diff_ids, vec![layer.diff_id.clone()]);
        assert_eq!(loaded.config.config.cmd, vec!["/bin/sh"]);
        assert_eq!(loaded.manifest_digest, descriptor.digest);

        let other = tempfile::tempdir().unwrap();
        let other_store = Store::open(other.path()).unwrap();
        assert_eq!(
            tiny_image(&other_store).0,
            descriptor,
            "same inputs, same manifest digest"
        );
    }

    #[test]
    fn chain_ids_follow_the_oci_definition() {
        let a = Digest::sha256_of(b"a");
        let b = Digest::sha256_of(b"b");
        let chain = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(chain[0], a);
        assert_eq!(chain[1], Digest::sha256_of(format!("{a} {b}").as_bytes()));
        assert!(chain_ids(&[]).is_empty());
    }

    #[test]
    fn write_image_checks_layers() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let missing = Descriptor::new(manifest::OCI_MANIFEST, Digest::sha256_of(b"nope"), 4);
        let config = ImageConfig {
            rootfs: RootFs {
                diff_ids: vec![Digest::sha256_of(b"x")],
                ..RootFs::default()
            },
            ..ImageConfig::default()
        };
        assert!(matches!(
            write_image(&store, &config, &[]),
            Err(ImageError::LayerCountMismatch {
                layers: 0,
                diff_ids: 1
            })
        ));
        assert!(matches!(
            write_image(&store, &config, &[missing]),
            Err(ImageError::Store(StoreError::BlobNotFound(_)))
        ));
    }

    #[test]
    fn load_image_reports_indexes_and_corrupt_configs() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let index = store
            .put_blob_bytes(br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#)
            .unwrap();
        assert!(matches!(
            load_image(&store, &index),
            Err(ImageError::NotAnImage { .. })
        ));

        let bad_config = store.put_blob_bytes(b"not json").unwrap();
        let manifest =
            Manifest::new_oci(Descriptor::new(manifest::OCI_CONFIG, bad_config, 8), vec![]);
        let digest = store.put_blob_bytes(&manifest.to_json()).unwrap();
        let err = load_image(&store, &digest).unwrap_err();
        assert!(matches!(err, ImageError::Config { .. }), "{err}");
    }
}

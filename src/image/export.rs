//! Exports images from the store as tar archives, streaming every blob (never whole in memory)
//! and verifying each blob's digest as it streams:
//! - `write_docker_archive`: what `docker load` reads (manifest.json with Config/RepoTags/Layers);
//! - `write_oci_archive`: an OCI image layout (oci-layout, index.json, blobs/) as one tar.
//!
//! Archive entries are deterministic: fixed mode, owner and mtime.

use std::collections::{BTreeMap, HashSet};
use std::io::{self, Read, Write};

use serde::Serialize;

use crate::digest::{Digest, HashingReader};
use crate::layer::tar_header::{self, HeaderFields, TypeFlag};
use crate::store::{REF_NAME_ANNOTATION, Store};

use super::manifest::{self, Descriptor, Index, ManifestOrIndex};
use super::{ImageError, load_image, load_manifest_or_index};

/// Writes tar entries for an archive, remembering which blobs it already holds.
struct ArchiveWriter<W: Write> {
    out: W,
    written_blobs: HashSet<Digest>,
}

impl<W: Write> ArchiveWriter<W> {
    fn new(out: W) -> Self {
        ArchiveWriter {
            out,
            written_blobs: HashSet::new(),
        }
    }

    fn header(
        &mut self,
        name: &str,
        type_flag: TypeFlag,
        mode: u32,
        size: u64,
    ) -> Result<(), ImageError> {
        let header = tar_header::encode(&HeaderFields {
            name,
            link_name: "",
            type_flag,
            mode,
            uid: 0,
            gid: 0,
            size,
            mtime: 0,
            dev_major: 0,
            dev_minor: 0,
            xattrs: &[],
        });
        self.out
            .write_all(&header)
            .map_err(ImageError::WriteArchive)
    }

    fn dir(&mut self, name: &str) -> Result<(), ImageError> {
        self.header(name, TypeFlag::Dir, 0o755, 0)
    }

    fn pad(&mut self, size: u64) -> Result<(), ImageError> {
        let pad = tar_header::padding(size);
        self.out
            .write_all(&[0u8; tar_header::BLOCK][..pad])
            .map_err(ImageError::WriteArchive)
    }

    fn file(&mut self, name: &str, bytes: &[u8]) -> Result<(), ImageError> {
        self.header(name, TypeFlag::Regular, 0o644, bytes.len() as u64)?;
        self.out
            .write_all(bytes)
            .map_err(ImageError::WriteArchive)?;
        self.pad(bytes.len() as u64)
    }

    /// Streams blob `digest` from the store as `blobs/<alg>/<hex>` (once per archive),
    /// verifying its digest and size on the way.
    fn blob(&mut self, store: &Store, digest: &Digest) -> Result<(), ImageError> {
        if !self.written_blobs.insert(digest.clone()) {
            return Ok(());
        }
        let file = store.open_blob(digest)?;
        let path = store.blob_path(digest);
        let size = file
            .metadata()
            .map_err(|source| crate::store::StoreError::Io {
                path: path.clone(),
                source,
            })?
            .len();
        self.header(&blob_name(digest), TypeFlag::Regular, 0o644, size)?;
        let mut reader = HashingReader::new(file.take(size), digest.algorithm());
        let mut buf = vec![0u8; 128 * 1024];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => return Err(crate::store::StoreError::Io { path, source }.into()),
            };
            self.out
                .write_all(&buf[..n])
                .map_err(ImageError::WriteArchive)?;
        }
        let (_, actual, read) = reader.finish();
        if read != size {
            return Err(ImageError::BlobChanged {
                digest: digest.clone(),
                expected: size,
                actual: read,
            });
        }
        if &actual != digest {
            return Err(crate::store::StoreError::DigestMismatch {
                expected: digest.clone(),
                actual,
            }
            .into());
        }
        self.pad(size)
    }

    fn blob_dirs(&mut self) -> Result<(), ImageError> {
        self.dir("blobs/")?;
        self.dir("blobs/sha256/")?;
        self.dir("blobs/sha512/")
    }

    fn finish(mut self) -> Result<W, ImageError> {
        self.out
            .write_all(&[0u8; 2 * tar_header::BLOCK])
            .map_err(ImageError::WriteArchive)?;
        self.out.flush().map_err(ImageError::WriteArchive)?;
        Ok(self.out)
    }
}

fn blob_name(digest: &Digest) -> String {
    format!("blobs/{}/{}", digest.algorithm().name(), digest.hex())
}

/// One image of a docker archive's manifest.json.
#[derive(Serialize)]
struct DockerArchiveImage {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags")]
    repo_tags: Vec<String>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

/// Writes a `docker load` archive of `images` (manifest digest, tags such as
/// `127.0.0.1:5000/app:1`) to `out`. Layers stay as stored (docker load accepts gzip).
pub fn write_docker_archive<W: Write>(
    store: &Store,
    images: &[(Digest, Vec<String>)],
    out: W,
) -> Result<W, ImageError> {
    let mut archive = ArchiveWriter::new(out);
    archive.blob_dirs()?;
    let mut entries = Vec::with_capacity(images.len());
    for (manifest_digest, tags) in images {
        let image = load_image(store, manifest_digest)?;
        archive.blob(store, &image.config_digest)?;
        let mut layers = Vec::with_capacity(image.manifest.layers.len());
        for layer in &image.manifest.layers {
            archive.blob(store, &layer.digest)?;
            layers.push(blob_name(&layer.digest));
        }
        entries.push(DockerArchiveImage {
            config: blob_name(&image.config_digest),
            repo_tags: tags.clone(),
            layers,
        });
    }
    let manifest_json =
        serde_json::to_vec(&entries).map_err(|e| ImageError::WriteArchive(e.into()))?;
    archive.file("manifest.json", &manifest_json)?;
    archive.finish()
}

/// Writes an OCI image layout archive holding the image (or index) `manifest_digest`, named
/// `ref_name` in index.json's `org.opencontainers.image.ref.name` annotation.
pub fn write_oci_archive<W: Write>(
    store: &Store,
    manifest_digest: &Digest,
    ref_name: &str,
    out: W,
) -> Result<W, ImageError> {
    let mut archive = ArchiveWriter::new(out);
    archive.file("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    archive.blob_dirs()?;
    let parsed = load_manifest_or_index(store, manifest_digest)?;
    let media_type = parsed.media_type().to_string();
    write_manifest_tree(store, &mut archive, manifest_digest, parsed)?;
    let size = store.read_blob(manifest_digest)?.len() as u64;
    let mut descriptor = Descriptor::new(media_type, manifest_digest.clone(), size);
    descriptor
        .annotations
        .insert(REF_NAME_ANNOTATION.to_string(), ref_name.to_string());
    let index = Index {
        schema_version: 2,
        media_type: Some(manifest::OCI_INDEX.to_string()),
        artifact_type: None,
        manifests: vec![descriptor],
        subject: None,
        annotations: BTreeMap::new(),
        extra: BTreeMap::new(),
    };
    archive.file("index.json", &index.to_json())?;
    archive.finish()
}

/// Writes a manifest and everything it references (for an index: each child manifest that is
/// in the store; children of other platforms that were never pulled are skipped).
fn write_manifest_tree<W: Write>(
    store: &Store,
    archive: &mut ArchiveWriter<W>,
    digest: &Digest,
    parsed: ManifestOrIndex,
) -> Result<(), ImageError> {
    match parsed {
        ManifestOrIndex::Manifest(m) => {
            archive.blob(store, &m.config.digest)?;
            for layer in &m.layers {
                archive.blob(store, &layer.digest)?;
            }
        }
        ManifestOrIndex::Index(index) => {
            for child in &index.manifests {
                if store.has_blob(&child.digest) {
                    let parsed = load_manifest_or_index(store, &child.digest)?;
                    write_manifest_tree(store, archive, &child.digest, parsed)?;
                }
            }
        }
    }
    archive.blob(store, digest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::tests::tiny_image;

    fn list(archive: &[u8]) -> BTreeMap<String, Vec<u8>> {
        let mut tar = tar::Archive::new(archive);
        tar.entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let mut bytes = Vec::new();
                e.read_to_end(&mut bytes).unwrap();
                (e.path().unwrap().to_string_lossy().into_owned(), bytes)
            })
            .collect()
    }

    #[test]
    fn docker_archive_has_manifest_json_config_and_layers() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (descriptor, layer) = tiny_image(&store);
        let tags = vec!["example.com/a:1".to_string(), "example.com/a:2".to_string()];
        // Two entries for the same image: its blobs are written once.
        let images = vec![
            (descriptor.digest.clone(), tags.clone()),
            (descriptor.digest.clone(), vec![]),
        ];
        let bytes = write_docker_archive(&store, &images, Vec::new()).unwrap();
        let files = list(&bytes);
        let manifest: serde_json::Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
        assert_eq!(manifest[0]["RepoTags"], serde_json::json!(tags));
        let layer_name = blob_name(&layer.digest);
        assert_eq!(manifest[0]["Layers"], serde_json::json!([layer_name]));
        let config_name = manifest[0]["Config"].as_str().unwrap();
        assert_eq!(
            Digest::sha256_of(&files[config_name]).to_string(),
            config_name.replace("blobs/sha256/", "sha256:")
        );
        assert_eq!(Digest::sha256_of(&files[&layer_name]), layer.digest);
        let blob_count = files
            .keys()
            .filter(|k| k.starts_with("blobs/sha256/") && k.len() > 13)
            .count();
        assert_eq!(blob_count, 2);
        // Deterministic.
        assert_eq!(
            write_docker_archive(&store, &images, Vec::new()).unwrap(),
            bytes
        );
    }

    #[test]
    fn oci_archive_is_an_image_layout_with_the_ref_name() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (descriptor, _) = tiny_image(&store);
        let bytes =
            write_oci_archive(&store, &descriptor.digest, "example.com/a:1", Vec::new()).unwrap();
        let files = list(&bytes);
        let index: serde_json::Value = serde_json::from_slice(&files["index.json"]).unwrap();
        let entry = &index["manifests"][0];
        assert_eq!(entry["digest"], descriptor.digest.to_string());
        assert_eq!(entry["size"], descriptor.size);
        assert_eq!(entry["mediaType"], manifest::OCI_MANIFEST);
        assert_eq!(entry["annotations"][REF_NAME_ANNOTATION], "example.com/a:1");
        assert!(files.contains_key(&blob_name(&descriptor.digest)));
        assert_eq!(files["oci-layout"], br#"{"imageLayoutVersion":"1.0.0"}"#);
    }

    #[test]
    fn export_refuses_a_corrupt_blob() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (descriptor, layer) = tiny_image(&store);
        std::fs::write(store.blob_path(&layer.digest), b"corrupted layer").unwrap();
        let err =
            write_docker_archive(&store, &[(descriptor.digest, vec![])], Vec::new()).unwrap_err();
        assert!(
            matches!(
                err,
                ImageError::Store(crate::store::StoreError::DigestMismatch { .. })
            ),
            "{err}"
        );
    }
}

//! Writing an image from the store to a docker-archive or OCI-archive tar file, atomically.

use std::path::Path;

use anyhow::Context as _;

use crate::digest::Digest;
use crate::fsutil::AtomicFile;
use crate::image;
use crate::reference::Reference;
use crate::store::Store;

/// The archive formats `save` and `build --output` write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ArchiveFormat {
    /// A `docker load` archive.
    Docker,
    /// An OCI image layout in a tar.
    Oci,
}

/// Writes `manifest_digest` (named by `tags`) to `dest` in `format`: temp file next to it,
/// fsync, rename, so a failed write never leaves a partial archive behind.
pub fn export(
    store: &Store,
    manifest_digest: &Digest,
    tags: &[Reference],
    format: ArchiveFormat,
    dest: &Path,
) -> anyhow::Result<()> {
    let file = AtomicFile::create(dest)
        .with_context(|| format!("cannot create a file next to {}", dest.display()))?;
    let writer = std::io::BufWriter::new(file);
    let writer = match format {
        ArchiveFormat::Docker => {
            let names: Vec<String> = tags.iter().map(Reference::familiar).collect();
            image::write_docker_archive(store, &[(manifest_digest.clone(), names)], writer)?
        }
        ArchiveFormat::Oci => {
            let name = tags.first().map(|t| t.to_string()).unwrap_or_default();
            image::write_oci_archive(store, manifest_digest, &name, writer)?
        }
    };
    let file = writer.into_inner().map_err(|e| e.into_error())?;
    file.commit()
        .with_context(|| format!("cannot write {}", dest.display()))
}

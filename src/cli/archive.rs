//! Writing an image from the store to a docker-archive or OCI-archive tar file, atomically.

use std::path::Path;

use anyhow::Context as _;

use crate::digest::Digest;
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
    let dir = match dest.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let temp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot create a file in {}", dir.display()))?;
    let writer = std::io::BufWriter::new(temp.reopen()?);
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
    file.sync_all()?;
    temp.persist(dest)
        .with_context(|| format!("cannot write {}", dest.display()))?;
    Ok(())
}

//! Local image commands: `images`, `inspect`, `tag`, `rmi`, `save`, `pull`.

use std::path::PathBuf;

use anyhow::{Context as _, bail};

use super::archive::{self, ArchiveFormat};
use crate::digest::Digest;
use crate::reference::Reference;
use crate::store::{RefEntry, Store};

#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// Image name, or manifest digest (or a unique prefix of its hex).
    pub image: String,
}

#[derive(Debug, clap::Args)]
pub struct TagArgs {
    /// Existing image.
    pub source: String,
    /// New name.
    pub target: String,
}

#[derive(Debug, clap::Args)]
pub struct RmiArgs {
    /// Image names (or digests) to remove.
    #[arg(required = true)]
    pub images: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct SaveArgs {
    /// Image to save.
    pub image: String,
    /// Output file.
    #[arg(short = 'o', long = "output")]
    pub output: PathBuf,
    /// Archive format: docker (for `docker load`) or oci.
    #[arg(long, value_enum, default_value = "docker")]
    pub format: ArchiveFormat,
}

#[derive(Debug, clap::Args)]
pub struct PullArgs {
    /// Image to pull, e.g. `busybox` or `127.0.0.1:5000/team/app:1`.
    pub image: String,
    /// Platform to pick from a multi-platform image [default: the host's].
    #[arg(long)]
    pub platform: Option<String>,
    /// Print nothing but the digest.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Only store the blobs. By default the layers are also unpacked for builds, as
    /// `docker pull` does, so that the first build on the image does not have to.
    #[arg(long)]
    pub no_unpack: bool,
    #[command(flatten)]
    pub registry: super::push::RegistryFlags,
}

/// Finds a local image by name, full digest, or unique digest-hex prefix.
pub(crate) fn resolve(store: &Store, text: &str) -> anyhow::Result<RefEntry> {
    let entries = store.list_refs()?;
    if let Ok(reference) = Reference::parse(text) {
        let name = reference.with_default_tag().to_string();
        if let Some(entry) = entries
            .iter()
            .find(|e| e.name.as_deref() == Some(name.as_str()))
        {
            return Ok(entry.clone());
        }
    }
    let hex = text.strip_prefix("sha256:").unwrap_or(text);
    if hex.len() >= 4 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        let mut matches: Vec<&RefEntry> = entries
            .iter()
            .filter(|e| e.manifest_digest.hex().starts_with(hex))
            .collect();
        matches.dedup_by(|a, b| a.manifest_digest == b.manifest_digest);
        match matches.as_slice() {
            [one] => return Ok((*one).clone()),
            [] => {}
            _ => bail!("{text:?} matches several images; give more of the digest"),
        }
    }
    bail!("no such image in the local store: {text}")
}

pub fn list(store: &Store) -> anyhow::Result<()> {
    let entries = store.list_refs()?;
    println!(
        "{:<48} {:<16} {:<14} {:>10}",
        "REPOSITORY", "TAG", "DIGEST", "SIZE"
    );
    for entry in entries {
        let (repository, tag) = match entry.name.as_deref().map(Reference::parse) {
            Some(Ok(reference)) => {
                let familiar = reference.familiar();
                let tag = reference
                    .tag
                    .clone()
                    .unwrap_or_else(|| "<none>".to_string());
                let repository = familiar
                    .strip_suffix(&format!(":{tag}"))
                    .unwrap_or(&familiar)
                    .to_string();
                (repository, tag)
            }
            _ => ("<none>".to_string(), "<none>".to_string()),
        };
        let size = crate::image::load_image(store, &entry.manifest_digest)
            .map(|img| img.manifest.layers.iter().map(|l| l.size).sum())
            .unwrap_or(0);
        println!(
            "{:<48} {:<16} {:<14} {:>10}",
            repository,
            tag,
            entry.manifest_digest.short(),
            crate::client::human_bytes(size)
        );
    }
    Ok(())
}

pub fn inspect(store: &Store, args: InspectArgs) -> anyhow::Result<()> {
    let entry = resolve(store, &args.image)?;
    let manifest_bytes = store.read_blob(&entry.manifest_digest)?;
    let manifest: serde_json::Value = serde_json::from_slice(&manifest_bytes)
        .with_context(|| format!("manifest {} is not JSON", entry.manifest_digest))?;
    let config_digest = manifest
        .pointer("/config/digest")
        .and_then(|d| d.as_str())
        .map(Digest::parse)
        .transpose()?
        .with_context(|| format!("manifest {} has no config", entry.manifest_digest))?;
    let config: serde_json::Value = serde_json::from_slice(&store.read_blob(&config_digest)?)
        .with_context(|| format!("config {config_digest} is not JSON"))?;
    let names: Vec<String> = store
        .list_refs()?
        .into_iter()
        .filter(|e| e.manifest_digest == entry.manifest_digest)
        .filter_map(|e| e.name)
        .collect();
    let out = serde_json::json!({
        "Names": names,
        "Digest": entry.manifest_digest.to_string(),
        "ConfigDigest": config_digest.to_string(),
        "Manifest": manifest,
        "Config": config,
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

pub fn tag(store: &Store, args: TagArgs) -> anyhow::Result<()> {
    let entry = resolve(store, &args.source)?;
    let target = Reference::parse(&args.target)
        .with_context(|| format!("invalid target name {:?}", args.target))?
        .with_default_tag();
    if target.digest.is_some() {
        bail!(
            "invalid target name {:?}: cannot tag with a digest",
            args.target
        );
    }
    store.set_ref(RefEntry {
        name: Some(target.to_string()),
        ..entry
    })?;
    Ok(())
}

pub fn rmi(store: &Store, args: RmiArgs) -> anyhow::Result<()> {
    for text in &args.images {
        let entry = resolve(store, text)?;
        match &entry.name {
            Some(name) => {
                store.remove_ref(name)?;
                println!("Untagged: {name}");
            }
            None => {
                store.remove_untagged(&entry.manifest_digest)?;
                println!("Deleted: {}", entry.manifest_digest);
            }
        }
    }
    Ok(())
}

pub fn save(store: &Store, args: SaveArgs) -> anyhow::Result<()> {
    let entry = resolve(store, &args.image)?;
    let tags: Vec<Reference> = entry
        .name
        .as_deref()
        .map(Reference::parse)
        .transpose()?
        .into_iter()
        .collect();
    archive::export(
        store,
        &entry.manifest_digest,
        &tags,
        args.format,
        &args.output,
    )
    .with_context(|| format!("cannot write {}", args.output.display()))?;
    Ok(())
}

pub fn pull(store: &Store, args: PullArgs) -> anyhow::Result<()> {
    let reference = Reference::parse(&args.image)
        .with_context(|| format!("invalid image name {:?}", args.image))?
        .with_default_tag();
    let platform = args
        .platform
        .as_deref()
        .map(crate::client::Platform::parse)
        .transpose()?;
    let options = crate::client::PullOptions {
        platform,
        connection: args.registry.connection(),
        ..Default::default()
    };
    let progress = super::transfer::TransferProgress::new(args.quiet);
    let runtime = super::runtime()?;
    let pulled = runtime.block_on(crate::client::pull(store, &reference, &options, &progress))?;
    if !args.quiet {
        eprintln!("pulled {}", reference.familiar());
    }
    // Only images a build here can run (the host's platform) are worth unpacking.
    let runnable = options
        .platform
        .as_ref()
        .is_none_or(|p| p.matches(&crate::build::Platform::host()));
    if runnable && !args.no_unpack {
        // The build unpacks whatever is missing, so a failure here costs time, not correctness.
        if let Err(e) = crate::build::unpack_image(store, &pulled.manifest_digest) {
            eprintln!(
                "warning: cannot unpack {} for builds yet: {e}",
                reference.familiar()
            );
        }
    }
    println!("{}", pulled.manifest_digest);
    Ok(())
}

//! `imgbuild registry gc`: one garbage collection over a registry's data directory, safe while
//! `imgbuild serve` keeps serving it. Prints what was (or with `--dry-run`, would be) removed.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;

use crate::registry::config::{self, ConfigFile};
use crate::registry::gc::{self, GcReport};
use crate::registry::storage::FilesystemStorage;

/// Flags of `imgbuild registry gc`.
#[derive(Debug, clap::Args)]
pub struct GcArgs {
    /// The registry's TOML config file (data directory, `[gc]` and retention rules).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Data directory (overrides the config file) [default: /var/lib/imgbuild/registry].
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Keep blobs used within this long (overrides `[gc] grace`), e.g. 30m, 1h, 0s.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub grace: Option<Duration>,
    /// List what would be removed, remove nothing.
    #[arg(long)]
    pub dry_run: bool,
}

pub fn run(args: GcArgs) -> anyhow::Result<()> {
    let file = match &args.config {
        Some(path) => ConfigFile::load(path)?,
        None => ConfigFile::default(),
    };
    let origin = args
        .config
        .as_ref()
        .map(|p| format!("config file {}", p.display()))
        .unwrap_or_else(|| "defaults".into());
    let (_, mut policy) = file.gc_settings(&origin)?;
    if let Some(grace) = args.grace {
        policy.grace = grace;
    }
    let data = args
        .data
        .clone()
        .or(file.data)
        .unwrap_or_else(|| PathBuf::from(config::DEFAULT_DATA));
    let storage = FilesystemStorage::open(&data)
        .with_context(|| format!("cannot open the registry data directory {}", data.display()))?;
    let report = super::runtime()?.block_on(gc::collect(&storage, &policy, args.dry_run))?;
    print!("{}", render(&report));
    Ok(())
}

/// One line per removed item, then a summary.
fn render(report: &GcReport) -> String {
    let verb = if report.dry_run {
        "would delete"
    } else {
        "deleted"
    };
    let mut out = String::new();
    for (repo, tag) in &report.tags {
        out.push_str(&format!("{verb} tag {repo}:{tag}\n"));
    }
    for (repo, digest) in &report.manifests {
        out.push_str(&format!("{verb} manifest {repo}@{digest}\n"));
    }
    for (digest, size) in &report.blobs {
        out.push_str(&format!("{verb} blob {digest} ({size} bytes)\n"));
    }
    for (repo, id) in &report.uploads {
        out.push_str(&format!("{verb} abandoned upload {id} in {repo}\n"));
    }
    out.push_str(&format!(
        "{}: {} tags, {} manifests, {} blobs ({} bytes), {} uploads\n",
        if report.dry_run {
            "dry run, would reclaim"
        } else {
            "reclaimed"
        },
        report.tags.len(),
        report.manifests.len(),
        report.blobs.len(),
        report.bytes_reclaimed(),
        report.uploads.len()
    ));
    out
}

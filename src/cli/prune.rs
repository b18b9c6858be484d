//! `imgbuild prune`: removes build cache records and the blobs and snapshots nothing needs,
//! then prints what was reclaimed.

use anyhow::{Context as _, bail};

use crate::build::prune::{self, PruneOptions};
use crate::store::Store;

/// Flags of `imgbuild prune`.
#[derive(Debug, clap::Args)]
pub struct PruneArgs {
    /// Remove every build cache record (and RUN cache mounts), not only stale ones.
    #[arg(short = 'a', long)]
    pub all: bool,
    /// Keep up to this much cached layer data (e.g. 500MB, 2GB), dropping the least
    /// recently used cache records first.
    #[arg(long, value_name = "SIZE")]
    pub keep_storage: Option<String>,
}

/// Parses `512`, `10kB`, `500MB`, `2GiB`... (decimal and binary units, case-insensitive).
fn parse_size(text: &str) -> anyhow::Result<u64> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let number: f64 = number
        .parse()
        .with_context(|| format!("invalid size {text:?}: expected e.g. 500MB"))?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "m" | "mb" => 1_000_000,
        "g" | "gb" => 1_000_000_000,
        "t" | "tb" => 1_000_000_000_000,
        "ki" | "kib" => 1 << 10,
        "mi" | "mib" => 1 << 20,
        "gi" | "gib" => 1 << 30,
        "ti" | "tib" => 1 << 40,
        other => bail!("invalid size {text:?}: unknown unit {other:?}"),
    };
    if !number.is_finite() || number < 0.0 {
        bail!("invalid size {text:?}");
    }
    Ok((number * multiplier as f64) as u64)
}

pub fn run(store: &Store, args: PruneArgs) -> anyhow::Result<()> {
    let opts = PruneOptions {
        all: args.all,
        keep_storage: args.keep_storage.as_deref().map(parse_size).transpose()?,
    };
    let report = prune::prune(store, &opts).context("cannot prune the store")?;
    println!(
        "removed {} cache records, {} blobs ({}), {} snapshots ({}), cache mounts ({})",
        report.records_removed,
        report.blobs_removed,
        crate::client::human_bytes(report.blob_bytes),
        report.snapshots_removed,
        crate::client::human_bytes(report.snapshot_bytes),
        crate::client::human_bytes(report.cache_mount_bytes),
    );
    println!(
        "Total reclaimed space: {}",
        crate::client::human_bytes(report.reclaimed_bytes())
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("512").unwrap(), 512);
        assert_eq!(parse_size("10kB").unwrap(), 10_000);
        assert_eq!(parse_size("1.5GB").unwrap(), 1_500_000_000);
        assert_eq!(parse_size("2MiB").unwrap(), 2 << 20);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("5 parsecs").is_err());
    }
}

//! `imgbuild build`: flags in `docker build`'s style, turned into `BuildOptions`; prints the
//! image digest and writes the requested outputs.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context as _, bail};

use super::archive::{self, ArchiveFormat};
use super::progress::{PlainProgress, ProgressMode};
use crate::build::{self, BuildOptions};
use crate::layer::Compression;
use crate::reference::Reference;
use crate::store::Store;

/// Flags of `imgbuild build` (the same names as `docker build`).
#[derive(Debug, clap::Args)]
pub struct BuildArgs {
    /// Build context directory.
    pub context: PathBuf,
    /// Name of the Dockerfile [default: CONTEXT/Dockerfile].
    #[arg(short = 'f', long = "file")]
    pub file: Option<PathBuf>,
    /// Name and optionally a tag (`name:tag`); may be repeated.
    #[arg(short = 't', long = "tag")]
    pub tags: Vec<String>,
    /// Set a build-time variable (`KEY=VALUE`, or `KEY` to take it from the environment).
    #[arg(long = "build-arg")]
    pub build_args: Vec<String>,
    /// Build this stage and the stages it needs, not the last one.
    #[arg(long)]
    pub target: Option<String>,
    /// Do not use the build cache (steps still record their results for later builds).
    #[arg(long)]
    pub no_cache: bool,
    /// Do not use the build cache for this stage (name or index); may be repeated.
    #[arg(long = "no-cache-filter", value_name = "STAGE")]
    pub no_cache_filter: Vec<String>,
    /// Say why each step missed the build cache (changed file, ARG, ENV...).
    #[arg(long)]
    pub explain_cache: bool,
    /// Set a label on the image (`KEY=VALUE`); may be repeated.
    #[arg(long = "label")]
    pub labels: Vec<String>,
    /// Target platform; only the host's platform is supported.
    #[arg(long)]
    pub platform: Option<String>,
    /// Always pull base images.
    #[arg(long)]
    pub pull: bool,
    /// Progress output.
    #[arg(long, value_enum, default_value = "auto")]
    pub progress: ProgressMode,
    /// Print only the image digest.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Write the image digest to this file.
    #[arg(long)]
    pub iidfile: Option<PathBuf>,
    /// Also export the image: `type=docker,dest=F.tar` or `type=oci,dest=F.tar`.
    #[arg(short = 'o', long = "output")]
    pub outputs: Vec<String>,
    /// Layer compression: gzip[:LEVEL] (0-9, default 5), zstd[:LEVEL] (default 3), or
    /// uncompressed.
    #[arg(long, default_value = "gzip")]
    pub compression: String,
    /// Network for RUN steps: default (the host's), host, or none.
    #[arg(long)]
    pub network: Option<String>,
    /// A secret RUN can mount: `id=ID,src=FILE` (or `id=ID,env=VAR`); may be repeated.
    #[arg(long = "secret")]
    pub secrets: Vec<String>,
    /// Push the image to its registry after building (every -t name).
    #[arg(long)]
    pub push: bool,
    /// OCI runtime for RUN steps (path or name, e.g. runc) [default: the first of crun, runc that works].
    #[arg(long)]
    pub runtime: Option<PathBuf>,
    /// Reuse step results from a registry cache: `type=registry,ref=REF` (repeatable).
    #[arg(long = "cache-from", value_name = "type=registry,ref=REF")]
    pub cache_from: Vec<String>,
    /// Push this build's step results to a registry cache:
    /// `type=registry,ref=REF[,mode=min|max]`.
    #[arg(long = "cache-to", value_name = "type=registry,ref=REF")]
    pub cache_to: Option<String>,
}

/// Parses `--secret id=ID,src=FILE` / `id=ID,env=VAR` (env secrets are written to a private
/// temp file that lives as long as `keep`).
fn parse_secret(
    text: &str,
    keep: &mut Vec<tempfile::NamedTempFile>,
) -> anyhow::Result<(String, PathBuf)> {
    let mut id = None;
    let mut src = None;
    let mut env = None;
    for field in text.split(',') {
        match field.split_once('=') {
            Some(("id", v)) => id = Some(v.to_string()),
            Some(("src" | "source", v)) => src = Some(PathBuf::from(v)),
            Some(("env", v)) => env = Some(v.to_string()),
            Some(("type", "file" | "env")) => {}
            _ => bail!("invalid --secret {text:?}: expected id=ID,src=FILE or id=ID,env=VAR"),
        }
    }
    let id = id.with_context(|| format!("invalid --secret {text:?}: missing id="))?;
    let path = match (src, env) {
        (Some(path), _) => {
            if !path.is_file() {
                bail!("--secret {id}: {} is not a file", path.display());
            }
            std::fs::canonicalize(&path)?
        }
        (None, Some(var)) => {
            let value = std::env::var(&var)
                .with_context(|| format!("--secret {id}: environment variable {var} is not set"))?;
            let mut file = tempfile::NamedTempFile::new()?;
            std::io::Write::write_all(&mut file, value.as_bytes())?;
            let path = file.path().to_path_buf();
            keep.push(file);
            path
        }
        (None, None) => bail!("invalid --secret {text:?}: missing src=FILE or env=VAR"),
    };
    Ok((id, path))
}

/// On Ctrl-C, kill running RUN containers and stop the build (it then cleans up and fails).
fn stop_build_on_interrupt() {
    std::thread::spawn(|| {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        runtime.block_on(async {
            while tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("interrupted: stopping the build");
                build::interrupt();
            }
        });
    });
}

/// A parsed `--output` value.
struct Output {
    format: ArchiveFormat,
    dest: PathBuf,
}

fn parse_output(text: &str) -> anyhow::Result<Output> {
    let mut kind = None;
    let mut dest = None;
    for field in text.split(',') {
        match field.split_once('=') {
            Some(("type", value)) => kind = Some(value.to_string()),
            Some(("dest", value)) => dest = Some(PathBuf::from(value)),
            _ => bail!("invalid --output {text:?}: expected type=docker|oci,dest=FILE"),
        }
    }
    let format = match kind.as_deref() {
        Some("docker") => ArchiveFormat::Docker,
        Some("oci") => ArchiveFormat::Oci,
        Some(other) => bail!("invalid --output {text:?}: unsupported type {other:?} (docker, oci)"),
        None => bail!("invalid --output {text:?}: missing type=docker|oci"),
    };
    let dest = dest.with_context(|| format!("invalid --output {text:?}: missing dest=FILE"))?;
    Ok(Output { format, dest })
}

fn parse_key_values(
    flag: &str,
    values: &[String],
    from_env: bool,
) -> anyhow::Result<BTreeMap<String, String>> {
    let mut map = BTreeMap::new();
    for value in values {
        match value.split_once('=') {
            Some(("", _)) => bail!("invalid {flag} {value:?}: empty name"),
            Some((key, val)) => {
                map.insert(key.to_string(), val.to_string());
            }
            None if from_env && !value.is_empty() => {
                if let Ok(val) = std::env::var(value) {
                    map.insert(value.clone(), val);
                }
            }
            None => bail!("invalid {flag} {value:?}: expected KEY=VALUE"),
        }
    }
    Ok(map)
}

pub(crate) fn parse_compression(text: &str) -> anyhow::Result<Compression> {
    Ok(match text.split_once(':') {
        None if text == "gzip" => Compression::DEFAULT_GZIP,
        None if text == "uncompressed" => Compression::Uncompressed,
        None if text == "zstd" => Compression::Zstd { level: 3 },
        Some(("zstd", level)) => Compression::Zstd {
            level: level
                .parse()
                .with_context(|| format!("invalid --compression {text:?}: bad zstd level"))?,
        },
        Some(("gzip", level)) => Compression::Gzip {
            level: level
                .parse()
                .ok()
                .filter(|level| *level <= 9)
                .with_context(|| format!("invalid --compression {text:?}: gzip levels are 0-9"))?,
        },
        _ => bail!(
            "invalid --compression {text:?}: expected gzip[:LEVEL], zstd[:LEVEL] or uncompressed"
        ),
    })
}

fn source_date_epoch() -> anyhow::Result<Option<u64>> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(value) if !value.is_empty() => Ok(Some(value.parse().with_context(|| {
            format!("invalid SOURCE_DATE_EPOCH {value:?}: expected seconds since 1970")
        })?)),
        _ => Ok(None),
    }
}

pub fn run(store: &Store, args: BuildArgs) -> anyhow::Result<()> {
    let mut opts = BuildOptions::new(&args.context);
    opts.dockerfile = args.file.clone();
    for tag in &args.tags {
        let reference = Reference::parse(tag).with_context(|| format!("invalid tag {tag:?}"))?;
        opts.tags.push(reference.with_default_tag());
    }
    opts.build_args = parse_key_values("--build-arg", &args.build_args, true)?;
    opts.labels = parse_key_values("--label", &args.labels, false)?;
    opts.target = args.target.clone();
    opts.no_cache = args.no_cache;
    opts.no_cache_filter = args
        .no_cache_filter
        .iter()
        .flat_map(|f| f.split(','))
        .filter(|f| !f.is_empty())
        .map(str::to_string)
        .collect();
    opts.explain_cache = args.explain_cache;
    opts.platform = args.platform.clone();
    opts.pull = args.pull;
    opts.source_date_epoch = source_date_epoch()?;
    opts.compression = parse_compression(&args.compression)?;
    let outputs = args
        .outputs
        .iter()
        .map(|o| parse_output(o))
        .collect::<anyhow::Result<Vec<_>>>()?;

    opts.network = args.network.clone();
    opts.runtime = args.runtime.clone();
    for value in &args.cache_from {
        opts.cache_from
            .push(build::registry_cache::parse_cache_from(value)?);
    }
    if let Some(value) = &args.cache_to {
        opts.cache_to = Some(build::registry_cache::parse_cache_to(value)?);
    }
    let mut secret_files = Vec::new();
    for secret in &args.secrets {
        let (id, path) = parse_secret(secret, &mut secret_files)?;
        opts.secrets.insert(id, path);
    }
    stop_build_on_interrupt();

    let mode = if args.quiet {
        ProgressMode::Quiet
    } else {
        args.progress
    };
    let mut progress = PlainProgress::new(mode);
    let outcome = build::build(store, &opts, &mut progress)?;

    for output in &outputs {
        let tags: Vec<Reference> = outcome.tags.clone();
        archive::export(
            store,
            &outcome.manifest_digest,
            &tags,
            output.format,
            &output.dest,
        )
        .with_context(|| format!("cannot write {}", output.dest.display()))?;
    }
    if let Some(path) = &args.iidfile {
        write_file_atomic(path, outcome.manifest_digest.to_string().as_bytes())
            .with_context(|| format!("cannot write --iidfile {}", path.display()))?;
    }
    if mode != ProgressMode::Quiet {
        for tag in &outcome.tags {
            eprintln!("naming to {tag}");
        }
    }
    if args.push {
        if outcome.tags.is_empty() {
            bail!("--push needs a name to push to: add -t REGISTRY/NAME:TAG");
        }
        let options = crate::client::PushOptions::default();
        for tag in &outcome.tags {
            let name = tag.to_string();
            super::push::push_image(store, &name, None, &options, mode == ProgressMode::Quiet)?;
        }
    }
    println!("{}", outcome.manifest_digest);
    Ok(())
}

/// Writes a small output file atomically (temp file next to it, fsync, rename).
pub(crate) fn write_file_atomic(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    crate::fsutil::write_file_atomic(path, bytes, None)
}

//! Build planner and executor: turns a parsed Dockerfile plus a context directory into an image
//! in the local store (stages, steps, layers, config, manifest, refs).
//!
//! `build()` is the entry point. `plan` picks the stages the target needs and resolves the
//! global ARGs; `stage` runs one stage's instructions; `copy` turns COPY/ADD into layer entries;
//! `cache` keeps each step's result by a key of its inputs; `prune` removes what nothing needs.
mod cache;
pub mod chmod;
mod copy;
mod heredoc;
mod pending;
mod plan;
pub mod platform;
pub mod prune;
pub mod registry_cache;
mod rootfs;
mod run;
mod stage;
pub mod users;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::digest::Digest;
use crate::dockerfile::{self, Location};
use crate::image::Descriptor;
use crate::layer::Compression;
use crate::reference::Reference;
use crate::snapshot::Durability;
use crate::store::{RefEntry, Store};

pub use cache::CacheError;
pub use platform::Platform;

/// What to build and how (the `imgbuild build` flags).
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// The context directory.
    pub context: PathBuf,
    /// The Dockerfile; defaults to `<context>/Dockerfile`.
    pub dockerfile: Option<PathBuf>,
    pub tags: Vec<Reference>,
    /// `--build-arg` values.
    pub build_args: BTreeMap<String, String>,
    pub target: Option<String>,
    /// `--no-cache`: no cache lookups (results are still recorded).
    pub no_cache: bool,
    /// `--no-cache-filter`: stages (by name or index) that never use cached results.
    pub no_cache_filter: Vec<String>,
    /// `--explain-cache`: say why each step missed the cache.
    pub explain_cache: bool,
    /// `--label` values, applied to the final image.
    pub labels: BTreeMap<String, String>,
    /// `--platform`; only the host platform is supported.
    pub platform: Option<String>,
    /// Always pull base images, even when they are in the local store.
    pub pull: bool,
    /// `SOURCE_DATE_EPOCH`: clamps file times and sets every `created` time.
    pub source_date_epoch: Option<u64>,
    pub compression: Compression,
    /// `--network` for RUN: `default` (the host's), `host` or `none`.
    pub network: Option<String>,
    /// `--secret id=ID,src=FILE`: files RUN can mount with `--mount=type=secret`.
    pub secrets: BTreeMap<String, PathBuf>,
    /// `--runtime`: the OCI runtime for RUN (default: detected, crun or runc).
    pub runtime: Option<PathBuf>,
    /// `--cache-from type=registry,ref=R`: registry caches whose step records may be reused.
    pub cache_from: Vec<Reference>,
    /// `--cache-to type=registry,ref=R`: where to push this build's step records and layers.
    pub cache_to: Option<registry_cache::CacheExport>,
}

impl BuildOptions {
    /// Options with defaults for building `context`.
    pub fn new(context: impl Into<PathBuf>) -> BuildOptions {
        BuildOptions {
            context: context.into(),
            dockerfile: None,
            tags: Vec::new(),
            build_args: BTreeMap::new(),
            target: None,
            no_cache: false,
            no_cache_filter: Vec::new(),
            explain_cache: false,
            labels: BTreeMap::new(),
            platform: None,
            pull: false,
            source_date_epoch: None,
            compression: Compression::DEFAULT_GZIP,
            network: None,
            secrets: BTreeMap::new(),
            runtime: None,
            cache_from: Vec::new(),
            cache_to: None,
        }
    }
}

/// The image a build produced.
#[derive(Debug, Clone)]
pub struct BuildOutcome {
    pub manifest_digest: Digest,
    pub config_digest: Digest,
    pub tags: Vec<Reference>,
}

/// Progress of a build, reported to the CLI.
#[derive(Debug)]
pub enum BuildEvent<'a> {
    /// A step starts: `[stage index/total] INSTRUCTION`.
    Step {
        stage: &'a str,
        index: usize,
        total: usize,
        text: &'a str,
    },
    /// The step just announced was found in the build cache (nothing was run).
    Cached,
    /// A line of information (pulls, warnings).
    Note(&'a str),
    /// Output of a RUN command, as it arrives.
    Output(&'a [u8]),
}

/// Receives build progress.
pub trait BuildProgress {
    fn event(&mut self, event: BuildEvent<'_>);
}

/// Ignores progress.
pub struct NoProgress;

impl BuildProgress for NoProgress {
    fn event(&mut self, _event: BuildEvent<'_>) {}
}

/// Why a build failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("cannot read Dockerfile {path}: {source}")]
    ReadDockerfile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("build context {path} is not a directory")]
    BadContext { path: PathBuf },
    #[error(transparent)]
    Dockerfile(#[from] dockerfile::DockerfileError),
    #[error(transparent)]
    Ignore(#[from] dockerfile::ignore::IgnoreError),
    #[error("platform {requested:?} is not supported: this host builds only for {host}")]
    UnsupportedPlatform { requested: String, host: String },
    #[error("target stage {0:?} could not be found")]
    UnknownTarget(String),
    #[error("{location}: {instruction}: {message}")]
    Step {
        location: String,
        instruction: String,
        message: String,
    },
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Image(#[from] crate::image::ImageError),
    #[error(transparent)]
    Layer(#[from] crate::layer::LayerError),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("snapshots: {0}")]
    Snapshot(String),
    #[error("the thread building stage {0} panicked")]
    StagePanicked(usize),
    #[error("build interrupted")]
    Interrupted,
    #[error("cannot export the build {0}")]
    CacheExport(Box<registry_cache::RegistryCacheError>),
    #[error("cannot start the async runtime for the registry cache: {0}")]
    AsyncRuntime(std::io::Error),
}

static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Asks running builds to stop: running RUN containers are killed, and no further step starts.
pub fn interrupt() {
    INTERRUPTED.store(true, std::sync::atomic::Ordering::SeqCst);
    crate::sandbox::kill_all_containers();
}

pub(crate) fn interrupted() -> bool {
    INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst)
}

impl BuildError {
    /// An error in the instruction at `location`.
    pub(crate) fn step(location: &Location, instruction: &str, message: impl ToString) -> Self {
        let first_line = instruction.lines().next().unwrap_or_default();
        BuildError::Step {
            location: format!("{}:{}", location.file, location.line),
            instruction: first_line.trim().to_string(),
            message: message.to_string(),
        }
    }
}

/// The time to write into `created` fields, in seconds: SOURCE_DATE_EPOCH when set, else now.
pub(crate) fn build_epoch_seconds(opts: &BuildOptions) -> u64 {
    opts.source_date_epoch.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    })
}

/// Builds the image described by `opts` into `store`, tags it, and returns its digests.
/// Nothing is tagged unless the whole build succeeded.
pub fn build(
    store: &Store,
    opts: &BuildOptions,
    progress: &mut dyn BuildProgress,
) -> Result<BuildOutcome, BuildError> {
    let host = Platform::host();
    if let Some(requested) = &opts.platform {
        let supported = Platform::parse(requested).is_ok_and(|p| p.matches(&host));
        if !supported {
            return Err(BuildError::UnsupportedPlatform {
                requested: requested.clone(),
                host: host.to_string(),
            });
        }
    }
    if !opts.context.is_dir() {
        return Err(BuildError::BadContext {
            path: opts.context.clone(),
        });
    }
    let dockerfile_path = opts
        .dockerfile
        .clone()
        .unwrap_or_else(|| opts.context.join("Dockerfile"));
    let text =
        std::fs::read_to_string(&dockerfile_path).map_err(|source| BuildError::ReadDockerfile {
            path: dockerfile_path.clone(),
            source,
        })?;
    let label = dockerfile_label(&dockerfile_path);
    let parsed = dockerfile::parse(&text, &label)?;
    let ignore = dockerfile::ignore::load_for_build(&opts.context, &dockerfile_path)?;

    let plan = plan::Plan::new(&parsed, opts, &host)?;
    let cache_runtime = if opts.cache_from.is_empty() && opts.cache_to.is_none() {
        None
    } else {
        Some(
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(BuildError::AsyncRuntime)?,
        )
    };
    let connection = crate::client::ConnectionOptions::default();
    let remote = match &cache_runtime {
        Some(runtime) => {
            let (remote, warnings) = runtime.block_on(registry_cache::RemoteCache::import(
                &opts.cache_from,
                &connection,
            ));
            for warning in &warnings {
                progress.event(BuildEvent::Note(warning));
            }
            Some(std::sync::Arc::new(remote))
        }
        None => None,
    };
    let mut executor = stage::Executor::new(store, opts, &host, &parsed, &plan, ignore, progress)?;
    executor.remote = remote.clone();
    let image = executor.run()?;
    drop(executor);

    let mut config = image.config;
    for (key, value) in &opts.labels {
        config.config.labels.insert(key.clone(), value.clone());
    }
    // Like BuildKit: the image is as old as its newest step, so a rebuild from the cache
    // (whose steps keep their recorded times) gives the same config and manifest digests.
    config.created = match (opts.source_date_epoch, config.history.last()) {
        (None, Some(last)) if last.created.is_some() => last.created.clone(),
        _ => Some(crate::image::rfc3339(build_epoch_seconds(opts))),
    };
    let layers: Vec<Descriptor> = image
        .layers
        .iter()
        .map(|l| Descriptor::new(l.media_type.clone(), l.digest.clone(), l.size))
        .collect();
    let written = crate::image::write_image(store, &config, &layers)?;
    let config_digest = Digest::sha256_of(&config.to_json());
    if let (Some(export), Some(remote), Some(runtime)) = (&opts.cache_to, &remote, &cache_runtime) {
        let stages = match export.mode {
            registry_cache::CacheMode::Max => None,
            registry_cache::CacheMode::Min => Some(registry_cache::final_image_stages(&plan)),
        };
        let records = remote.used_records(stages.as_ref());
        let pushed = runtime
            .block_on(registry_cache::export(
                store,
                records,
                &export.reference,
                &connection,
            ))
            .map_err(|e| BuildError::CacheExport(Box::new(e)))?;
        let note = format!(
            "exported build cache to {}@{pushed}",
            export.reference.familiar()
        );
        progress.event(BuildEvent::Note(&note));
    }
    let tags = opts.tags.clone();
    for tag in &tags {
        store.set_ref(RefEntry {
            name: Some(tag.to_string()),
            manifest_digest: written.digest.clone(),
            media_type: written.media_type.clone(),
            size: written.size,
        })?;
    }
    if tags.is_empty() {
        store.set_ref(RefEntry {
            name: None,
            manifest_digest: written.digest.clone(),
            media_type: written.media_type.clone(),
            size: written.size,
        })?;
    }
    Ok(BuildOutcome {
        manifest_digest: written.digest,
        config_digest,
        tags,
    })
}

/// Unpacks the layers of the local image `manifest_digest` into snapshots now (each layer
/// once, by chain id), so that the first build on it does not spend its time unpacking the base
/// image: what `docker pull` does when it extracts layers. Already unpacked layers are skipped.
pub fn unpack_image(store: &Store, manifest_digest: &Digest) -> Result<(), BuildError> {
    let loaded = crate::image::load_image(store, manifest_digest)?;
    let layers: Vec<crate::layer::LayerInfo> = loaded
        .manifest
        .layers
        .iter()
        .zip(&loaded.config.rootfs.diff_ids)
        .map(|(descriptor, diff_id)| crate::layer::LayerInfo {
            diff_id: diff_id.clone(),
            digest: descriptor.digest.clone(),
            size: descriptor.size,
            media_type: descriptor.media_type.clone(),
        })
        .collect();
    rootfs::RootfsManager::new(store, Durability::Synced)?
        .snapshot_dirs(store, &layers)
        .map_err(BuildError::Snapshot)?;
    Ok(())
}

/// How a Dockerfile path is named in messages: its file name, or the path when that is short.
fn dockerfile_label(path: &Path) -> String {
    path.file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

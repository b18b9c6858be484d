//! The executor's side of the build cache: what goes into each step's key (COPY/ADD sources'
//! content, RUN's command, env and mounts, metadata), and running a step through the cache
//! (reuse the recorded layer on a hit, record the result on a miss).

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use super::{Executor, ExpandedCopy, StageState, run_env};
use crate::build::BuildEvent;
use crate::build::cache::{self, StepInputs, StepRecord};
use crate::build::copy;
use crate::build::plan::CopyFrom;
use crate::build::registry_cache;
use crate::build::run::{self, MountSpec};
use crate::context::{self, CopyItem, CopyOptions, StatCache};
use crate::digest::Digest;
use crate::dockerfile::{CopyInstr, RunInstr};
use crate::layer::{LayerInfo, ReusableFiles};
use crate::snapshot;

impl Executor<'_> {
    /// Runs a layer-producing step through the cache. `inputs` None means the step cannot be
    /// keyed before it runs (an ADD URL without --checksum): it always runs, and what follows
    /// is keyed by its result. Returns the layer and the history `created` time to use.
    pub(super) fn cached_layer_step(
        &mut self,
        state: &mut StageState,
        inputs: Option<StepInputs>,
        run_step: impl FnOnce(&mut Self, &StageState) -> Result<Option<LayerInfo>, String>,
    ) -> Result<(Option<LayerInfo>, String), String> {
        let Some(inputs) = inputs else {
            let layer = run_step(self, state)?;
            state.key = result_key(&state.key, layer.as_ref());
            return Ok((layer, self.created()));
        };
        let key = inputs.key();
        let slot = self.slot_digest(state);
        if state.use_cache
            && let Some(record) = self.lookup_step(&key)
        {
            self.note_used(state, &record);
            self.progress.event(BuildEvent::Cached);
            self.remember_slot(&slot, &key);
            let layer: Option<LayerInfo> = record.layer.map(Into::into);
            state.key = result_key(&key, layer.as_ref());
            return Ok((layer, record.created));
        }
        if self.opts.explain_cache {
            let why = if state.use_cache {
                cache::explain_miss(self.cache.previous(&slot).as_ref(), &inputs)
            } else {
                "the cache is disabled for this stage".to_string()
            };
            let note = format!("cache miss: {why}");
            self.progress.event(BuildEvent::Note(&note));
        }
        self.reusable = self.reusable_files(&slot, &inputs);
        let layer = run_step(self, state);
        self.reusable = None;
        let layer = layer?;
        let created = self.created();
        let mut chain_id = chain_of(&state.image.layers);
        if let Some(layer) = &layer {
            chain_id = Some(snapshot::chain_id(chain_id.as_ref(), &layer.diff_id));
        }
        let record = StepRecord {
            key: key.clone(),
            layer: layer.as_ref().map(Into::into),
            chain_id,
            created: created.clone(),
            inputs: inputs.into_values(),
        };
        if layer
            .as_ref()
            .is_some_and(|layer| self.pending.is_placeholder(layer))
        {
            // Saved once the layer's blob exists (see `settle_pending`).
            self.pending.defer_record(state.stage, record);
        } else {
            self.save_record(&record);
            self.note_used(state, &record);
        }
        self.remember_slot(&slot, &key);
        state.key = result_key(&key, layer.as_ref());
        Ok((layer, created))
    }

    /// Folds a metadata-only instruction into the stage's key; its history entry (if it made
    /// one) takes the `created` time recorded by the first build of the same step.
    pub(super) fn fold_metadata(
        &mut self,
        state: &mut StageState,
        history_before: usize,
        source_text: &str,
    ) -> Result<(), String> {
        let history = &state.image.config.history;
        let mut inputs = StepInputs::after(&state.key);
        let created_by = history
            .get(history_before)
            .and_then(|h| h.created_by.clone());
        inputs.add(
            "instruction",
            created_by.unwrap_or_else(|| source_text.trim().to_string()),
        );
        let config = serde_json::to_string(&state.image.config.config)
            .map_err(|e| format!("cannot encode the image config: {e}"))?;
        inputs.add("config", config);
        inputs.add(
            "author",
            state.image.config.author.clone().unwrap_or_default(),
        );
        let key = inputs.key();
        state.key = key.clone();
        if history.len() <= history_before {
            return Ok(());
        }
        if state.use_cache
            && let Some(record) = self.lookup_step(&key)
        {
            self.note_used(state, &record);
            if let Some(entry) = state.image.config.history.get_mut(history_before) {
                entry.created = Some(record.created);
            }
            return Ok(());
        }
        let created = history
            .get(history_before)
            .and_then(|h| h.created.clone())
            .unwrap_or_else(|| self.created());
        let record = StepRecord {
            key,
            layer: None,
            chain_id: chain_of(&state.image.layers),
            created,
            inputs: inputs.into_values(),
        };
        self.save_record(&record);
        self.note_used(state, &record);
        Ok(())
    }

    /// The record of `key`: the local cache's, else one imported with `--cache-from` (its
    /// layer is downloaded now, verified, and the record saved locally). A cache layer that
    /// cannot be fetched is a warning and a miss.
    fn lookup_step(&mut self, key: &Digest) -> Option<StepRecord> {
        if let Some(record) = self.cache.lookup(self.store, key) {
            return Some(record);
        }
        let remote = self.remote.clone()?;
        let (record, source) = remote.imported(key)?;
        if let Some(layer) = &record.layer {
            let store = self.store;
            let connection = crate::client::ConnectionOptions::default();
            let fetched = match self.runtime() {
                Ok(runtime) => runtime
                    .block_on(registry_cache::fetch_layer(
                        store,
                        source,
                        &layer.digest,
                        layer.size,
                        &connection,
                    ))
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e),
            };
            if let Err(e) = fetched {
                let note = format!("warning: cannot use the registry cache: {e}");
                self.progress.event(BuildEvent::Note(&note));
                return None;
            }
            let note = format!("CACHED (from registry {})", source.familiar());
            self.progress.event(BuildEvent::Note(&note));
        }
        self.save_record(record);
        Some(record.clone())
    }

    /// Remembers that this build used `record` (for `--cache-to`).
    fn note_used(&self, state: &StageState, record: &StepRecord) {
        if let Some(remote) = &self.remote {
            remote.note_used(state.stage, record);
        }
    }

    /// The inputs of a COPY/ADD: its expanded fields and the identity of what it copies
    /// (context files' content, the `--from` stage's key or image digest, a URL's --checksum
    /// or else its downloaded content's digest). None when planning the sources fails (the
    /// step then runs and reports the error itself).
    pub(super) fn copy_inputs(
        &mut self,
        state: &StageState,
        stage_index: usize,
        instr: &CopyInstr,
        expanded: &mut ExpandedCopy,
        is_add: bool,
    ) -> Result<Option<StepInputs>, String> {
        let mut inputs = StepInputs::after(&state.key);
        inputs.add("instruction", if is_add { "ADD" } else { "COPY" });
        inputs.add("sources", json(&expanded.sources));
        inputs.add("heredocs", json(&expanded.heredocs));
        inputs.add("dest", expanded.dest.clone());
        inputs.add("workdir", state.workdir());
        inputs.add("excludes", json(&expanded.excludes));
        inputs.add("chown", json(&expanded.chown));
        inputs.add("chmod", json(&expanded.chmod_text));
        inputs.add(
            "flags",
            format!(
                "parents={} link={} unpack={:?} keep_git_dir={}",
                instr.parents, instr.link, instr.unpack, instr.keep_git_dir
            ),
        );
        inputs.add("checksum", json(&instr.checksum));
        if let Some(from) = self.plan.copy_from(self.dockerfile, stage_index, instr)? {
            inputs.add("from", self.source_identity(&from)?);
            return Ok(Some(inputs));
        }
        let mut local = Vec::new();
        for source in expanded.sources.clone() {
            if is_add && copy::is_url(&source) {
                let identity = match &instr.checksum {
                    Some(checksum) => checksum.clone(),
                    None => self.download_for_key(expanded, &source)?.to_string(),
                };
                inputs.add(format!("url:{source}"), identity);
            } else {
                local.push(source);
            }
        }
        if local.is_empty() {
            return Ok(Some(inputs));
        }
        let options = CopyOptions {
            ignore: Some(&self.ignore),
            excludes: &expanded.excludes,
            parents: instr.parents,
        };
        let context_dir = self.opts.context.clone();
        let Ok(planned) = copy::plan_local(
            &context_dir,
            &local,
            expanded.sources.len() + expanded.heredocs.len(),
            &expanded.dest,
            &state.workdir(),
            &options,
        ) else {
            return Ok(None);
        };
        for item in &planned.items {
            let relative = item
                .host_path
                .strip_prefix(&context_dir)
                .unwrap_or(&item.host_path)
                .to_string_lossy();
            let mut name = String::with_capacity(5 + relative.len());
            name.push_str("file:");
            name.push_str(&relative);
            let identity = self.item_identity(item)?;
            let mut value = String::with_capacity(item.image_path.len() + 1 + identity.len());
            value.push_str(&item.image_path);
            value.push(' ');
            value.push_str(&identity);
            inputs.add_unique(name, value);
        }
        expanded.planned.set(Some(planned));
        Ok(Some(inputs))
    }

    /// The inputs of a RUN: its argv (and heredoc script), environment, user, working dir,
    /// network, security mode and the identity of each mount (bind sources by content or
    /// stage key; cache, tmpfs and secret mounts by their options only).
    pub(super) fn run_inputs(
        &mut self,
        state: &StageState,
        stage_index: usize,
        instr: &RunInstr,
    ) -> Result<Option<StepInputs>, String> {
        let mut inputs = StepInputs::after(&state.key);
        let (argv, script) = run::command_args(instr, &state.shell());
        inputs.add("instruction", "RUN");
        inputs.add("argv", json(&argv));
        inputs.add("script", json(&script));
        for entry in run_env(state) {
            let (name, value) = entry.split_once('=').unwrap_or((entry.as_str(), ""));
            inputs.add(format!("env:{name}"), value.to_string());
        }
        inputs.add("user", state.image.config.config.user.clone());
        inputs.add("workdir", state.workdir());
        inputs.add(
            "network",
            format!("{:?} default={:?}", instr.network, self.opts.network),
        );
        inputs.add("security", json(&instr.security));
        for (index, raw) in instr.mounts.iter().enumerate() {
            let mount = MountSpec::parse(&self.expand(state, raw)?)?;
            inputs.add(format!("mount:{index}"), format!("{mount:?}"));
            let MountSpec::Bind { source, from, .. } = &mount else {
                continue;
            };
            let identity = match from {
                Some(name) => {
                    let from = self.plan.resolve_from(self.dockerfile, stage_index, name)?;
                    self.source_identity(&from)?
                }
                None => match self.context_tree_identity(source)? {
                    Some(identity) => identity,
                    None => return Ok(None),
                },
            };
            inputs.add(format!("mount-source:{index}"), identity);
        }
        Ok(Some(inputs))
    }

    /// Downloads an ADD URL (once per step) so its content can be keyed; the step reuses
    /// the file on a miss. Returns the content's sha256.
    fn download_for_key(
        &mut self,
        expanded: &mut ExpandedCopy,
        url: &str,
    ) -> Result<Digest, String> {
        if let Some(done) = expanded.downloads.get(url) {
            return Ok(done.digest.clone());
        }
        if expanded.download_dir.is_none() {
            let dir = tempfile::Builder::new()
                .prefix("download-")
                .tempdir_in(self.store.tmp_dir())
                .map_err(|e| format!("cannot make a download dir: {e}"))?;
            expanded.download_dir = Some(dir);
        }
        let dir = expanded
            .download_dir
            .as_ref()
            .map(|d| d.path().to_path_buf())
            .ok_or_else(|| "no download dir".to_string())?;
        let runtime = self.runtime()?;
        let downloaded = copy::prefetch(runtime, url, &dir, crate::digest::Algorithm::Sha256)?;
        let digest = downloaded.digest.clone();
        expanded.downloads.insert(url.to_string(), downloaded);
        Ok(digest)
    }

    /// The key of a built stage, or the manifest digest of an image.
    fn source_identity(&mut self, from: &CopyFrom) -> Result<String, String> {
        match from {
            CopyFrom::Stage(index) => self
                .stage_keys
                .get(index)
                .map(|key| format!("stage {key}"))
                .ok_or_else(|| format!("stage {index} was not built")),
            CopyFrom::Image(reference) => {
                self.image(reference)?;
                self.image_digests
                    .get(&reference.to_string())
                    .map(|digest| format!("image {digest}"))
                    .ok_or_else(|| format!("image {reference} was not loaded"))
            }
        }
    }

    /// A digest of everything under `source` in the context (a bind mount's view: no
    /// .dockerignore). None when it cannot be planned (the RUN reports the error).
    fn context_tree_identity(&mut self, source: &str) -> Result<Option<String>, String> {
        let context_dir = self.opts.context.clone();
        let options = CopyOptions::default();
        let Ok(items) = context::plan_copy(&context_dir, &[source.to_string()], "/", "/", &options)
        else {
            return Ok(None);
        };
        let mut hasher = crate::digest::Hasher::new(crate::digest::Algorithm::Sha256);
        for item in &items {
            let line = format!("{} {}\n", item.image_path, self.item_identity(item)?);
            hasher.update(line.as_bytes());
        }
        Ok(Some(hasher.finish().to_string()))
    }

    /// What of a context entry reaches the layer: its type and mode, plus the content digest
    /// (files), link target (symlinks) or device numbers. Never mtime, never owner (context
    /// files are always copied as 0:0 unless --chown says otherwise).
    fn item_identity(&mut self, item: &CopyItem) -> Result<String, String> {
        let meta = &item.metadata;
        let file_type = meta.file_type();
        let mode = meta.mode() & 0o7777;
        Ok(if file_type.is_file() {
            let digest = self
                .stat_cache()
                .file_digest(&item.host_path, meta)
                .map_err(|e| e.to_string())?;
            format!("file {mode:o} {digest}")
        } else if file_type.is_dir() {
            format!("dir {mode:o}")
        } else if file_type.is_symlink() {
            let target = std::fs::read_link(&item.host_path)
                .map_err(|e| format!("cannot read link {}: {e}", item.host_path.display()))?;
            format!("symlink {}", target.display())
        } else if file_type.is_fifo() {
            format!("fifo {mode:o}")
        } else if file_type.is_char_device() || file_type.is_block_device() {
            format!("device {mode:o} {}", meta.rdev())
        } else {
            "other".to_string()
        })
    }

    /// The files a COPY/ADD about to run reads unchanged since its previous build, with that
    /// build's snapshot of the step: its unpack links them instead of writing them again.
    fn reusable_files(&self, slot: &Digest, inputs: &StepInputs) -> Option<ReusableFiles> {
        if !inputs.has_files() {
            return None;
        }
        let previous = self.cache.previous(slot)?;
        previous.layer.as_ref()?;
        let root = self.rootfs.snapshot(previous.chain_id.as_ref()?)?;
        let paths = cache::unchanged_files(&previous, inputs);
        (!paths.is_empty()).then_some(ReusableFiles { root, paths })
    }

    fn stat_cache(&mut self) -> &mut StatCache {
        let dir = self.cache.dir().to_path_buf();
        let context = self.opts.context.clone();
        self.stat_cache
            .get_or_insert_with(|| StatCache::open(&dir, &context))
    }

    /// Saves the context's stat cache and reports how much hashing the build did.
    pub(super) fn finish_context_hashing(&mut self) {
        let Some(stat_cache) = self.stat_cache.as_mut() else {
            return;
        };
        let stats = stat_cache.stats();
        let saved = stat_cache.save();
        let note = format!(
            "context: {} files checked, {} read ({} bytes)",
            stats.checked, stats.hashed, stats.bytes
        );
        self.progress.event(BuildEvent::Note(&note));
        if let Err(e) = saved {
            let note = format!("warning: cannot save the context's stat cache: {e}");
            self.progress.event(BuildEvent::Note(&note));
        }
    }

    /// Identifies the Dockerfile step being run, across builds: context, Dockerfile, step.
    fn slot_digest(&self, state: &StageState) -> Digest {
        let dockerfile = self
            .opts
            .dockerfile
            .clone()
            .unwrap_or_else(|| self.opts.context.join("Dockerfile"));
        let canonical = |path: &Path| std::fs::canonicalize(path).unwrap_or(path.to_path_buf());
        let text = format!(
            "{}\n{}\n{}\n{:?}",
            canonical(&self.opts.context).display(),
            canonical(&dockerfile).display(),
            state.slot,
            self.opts.target
        );
        Digest::sha256_of(text.as_bytes())
    }

    fn remember_slot(&mut self, slot: &Digest, key: &Digest) {
        if let Err(e) = self.cache.remember_slot(slot, key) {
            let note = format!("warning: {e}");
            self.progress.event(BuildEvent::Note(&note));
        }
    }

    /// Writes a cache record; a failure only costs the next build a miss, so it is a warning.
    pub(super) fn save_record(&mut self, record: &StepRecord) {
        if let Err(e) = self.cache.save(record) {
            let note = format!("warning: {e}");
            self.progress.event(BuildEvent::Note(&note));
        }
    }
}

/// The key after a layer step: its input key and what it produced, so later steps depend
/// on the actual result (a step re-run without the cache may produce something else).
fn result_key(key: &Digest, layer: Option<&LayerInfo>) -> Digest {
    let mut inputs = StepInputs::after(key);
    inputs.add(
        "result",
        layer.map_or_else(|| "none".to_string(), |l| l.diff_id.to_string()),
    );
    inputs.key()
}

/// The chain id of a layer stack (None when empty).
fn chain_of(layers: &[LayerInfo]) -> Option<Digest> {
    let mut chain: Option<Digest> = None;
    for layer in layers {
        chain = Some(snapshot::chain_id(chain.as_ref(), &layer.diff_id));
    }
    chain
}

fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

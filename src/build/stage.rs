//! The executor: runs each planned stage's instructions in order, keeping the stage's image
//! config and layer list, and turning each instruction into config changes, history entries
//! and (for COPY/ADD/WORKDIR/RUN) new layers. Layer steps go through the build cache
//! (`keys.rs`: what each step's key is made of; `super::cache`: the records).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use super::cache::{BuildCache, StepInputs};
use super::copy::{self, CopyJob};
use super::pending::PendingLayers;
use super::plan::{Base, CopyFrom, Plan};
use super::rootfs::{self, Rootfs};
use super::run::{self, MountSpec, RunContext, RunStep};
use super::{
    BuildError, BuildEvent, BuildOptions, BuildProgress, Platform, build_epoch_seconds, users,
};
use crate::context::StatCache;
use crate::digest::Digest;
use crate::dockerfile::{
    self, CommandForm, CopyInstr, CopySource, Dockerfile, Healthcheck, IgnoreMatcher, Instruction,
    Lexer, Located, Location, RunInstr,
};
use crate::image::{self, ContainerConfig, Healthcheck as HealthConfig, History, ImageConfig};
use crate::layer::{self, Entry, EntryKind, LayerInfo, LayerOptions, ReusableFiles};
use crate::reference::Reference;
use crate::sandbox::{Network, Runtime};
use crate::snapshot::Durability;
use crate::store::Store;

mod keys;
mod parallel;

/// Docker's default PATH for Linux images.
pub(crate) const DEFAULT_PATH: &str =
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const HISTORY_COMMENT: &str = "imgbuild.dockerfile.v0";

/// A stage's (or base image's) result: its config and layers.
#[derive(Debug, Clone)]
pub(crate) struct StageImage {
    pub config: ImageConfig,
    pub layers: Vec<LayerInfo>,
}

/// The state of the stage being built.
struct StageState {
    image: StageImage,
    /// ARGs declared in this stage: name -> value (None when declared without any value).
    args: BTreeMap<String, Option<String>>,
    /// Whether this stage set CMD (ENTRYPOINT resets an inherited CMD only).
    cmd_set: bool,
    /// Cache key of everything so far: the base, then each step (and its result).
    key: Digest,
    /// Whether cache lookups are allowed in this stage (not with --no-cache / --no-cache-filter).
    use_cache: bool,
    /// Names the Dockerfile step being run (stage, step index), for --explain-cache.
    slot: String,
    /// Index of the stage in the Dockerfile (which steps `--cache-to mode=min` exports).
    stage: usize,
}

impl StageState {
    /// Variables visible to expansion: the stage's ARGs, overridden by the config's ENV.
    fn vars(&self) -> BTreeMap<String, String> {
        let mut vars: BTreeMap<String, String> = self
            .args
            .iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| (k.clone(), v.clone())))
            .collect();
        for pair in &self.image.config.config.env {
            if let Some((key, value)) = pair.split_once('=') {
                vars.insert(key.to_string(), value.to_string());
            }
        }
        vars
    }

    fn set_env(&mut self, key: &str, value: &str) {
        let env = &mut self.image.config.config.env;
        let entry = format!("{key}={value}");
        match env
            .iter_mut()
            .find(|e| e.split_once('=').map(|(k, _)| k) == Some(key))
        {
            Some(existing) => *existing = entry,
            None => env.push(entry),
        }
    }

    fn shell(&self) -> Vec<String> {
        match self.image.config.config.shell.as_slice() {
            [] => vec!["/bin/sh".to_string(), "-c".to_string()],
            shell => shell.to_vec(),
        }
    }

    fn workdir(&self) -> String {
        match self.image.config.config.working_dir.as_str() {
            "" => "/".to_string(),
            dir => dir.to_string(),
        }
    }
}

/// Runs the stages of a plan.
pub(crate) struct Executor<'a> {
    store: &'a Store,
    opts: &'a BuildOptions,
    platform: &'a Platform,
    dockerfile: &'a Dockerfile,
    plan: &'a Plan,
    ignore: IgnoreMatcher,
    progress: &'a mut dyn BuildProgress,
    lexer: Lexer,
    done: BTreeMap<usize, StageImage>,
    images: BTreeMap<String, StageImage>,
    runtime: Option<tokio::runtime::Runtime>,
    sandbox_runtime: Option<Runtime>,
    rootfs: rootfs::RootfsManager,
    /// Seconds since the epoch written into `created` and synthesized mtimes.
    time: u64,
    used_build_args: BTreeSet<String>,
    cache: BuildCache,
    /// Content hashes of context files, opened on first use.
    stat_cache: Option<StatCache>,
    /// Final cache key of each built stage.
    stage_keys: BTreeMap<usize, Digest>,
    /// Manifest digest of each base/`--from` image by reference.
    image_digests: BTreeMap<String, Digest>,
    /// Build settings that change every layer (platform, compression, SOURCE_DATE_EPOCH).
    settings: String,
    /// Whether a later step will mount the file system of the step being dispatched (a later
    /// RUN, COPY, ADD or WORKDIR in its stage, or another stage built on or copying from it):
    /// then COPY/ADD layers are unpacked into their snapshot while they are written.
    mounted_later: bool,
    /// The step being dispatched (its location and text), to name it in later errors.
    current_step: Option<(Location, String)>,
    /// Layers of the current stage whose blobs are still being compressed.
    pending: PendingLayers,
    /// For the COPY/ADD being run: files its previous build's snapshot has unchanged.
    reusable: Option<ReusableFiles>,
    /// Records imported with `--cache-from`, and the record of every step used (`--cache-to`).
    pub(super) remote: Option<std::sync::Arc<super::registry_cache::RemoteCache>>,
}

impl<'a> Executor<'a> {
    pub fn new(
        store: &'a Store,
        opts: &'a BuildOptions,
        platform: &'a Platform,
        dockerfile: &'a Dockerfile,
        plan: &'a Plan,
        ignore: IgnoreMatcher,
        progress: &'a mut dyn BuildProgress,
    ) -> Result<Executor<'a>, BuildError> {
        let mut used_build_args: BTreeSet<String> = dockerfile
            .global_args
            .iter()
            .map(|a| a.name.clone())
            .collect();
        used_build_args.extend(super::platform::predefined_args(platform).into_keys());
        Ok(Executor {
            store,
            opts,
            platform,
            dockerfile,
            plan,
            ignore,
            progress,
            lexer: Lexer::new(dockerfile.escape),
            done: BTreeMap::new(),
            images: BTreeMap::new(),
            runtime: None,
            sandbox_runtime: None,
            // Step snapshots are remade from their blobs after a reboot rather than synced per step.
            rootfs: rootfs::RootfsManager::new(store, Durability::ThisBoot)?,
            time: build_epoch_seconds(opts),
            used_build_args,
            cache: BuildCache::open(store)?,
            stat_cache: None,
            mounted_later: true,
            current_step: None,
            pending: PendingLayers::default(),
            reusable: None,
            stage_keys: BTreeMap::new(),
            image_digests: BTreeMap::new(),
            settings: format!(
                "platform={platform} compression={:?} source_date_epoch={:?}",
                opts.compression, opts.source_date_epoch
            ),
            remote: None,
        })
    }

    /// Builds every planned stage and returns the target stage's image.
    pub fn run(&mut self) -> Result<StageImage, BuildError> {
        let order = self.plan.order.clone();
        let mut pending = order.clone();
        while !pending.is_empty() {
            let ready = self.ready_stages(&pending);
            if let [index] = ready.as_slice() {
                let image = self.build_stage(*index)?;
                self.done.insert(*index, image);
            } else {
                self.build_concurrently(&ready)?;
            }
            pending.retain(|index| !self.done.contains_key(index));
        }
        self.finish_context_hashing();
        let unused: Vec<&String> = self
            .opts
            .build_args
            .keys()
            .filter(|k| !self.used_build_args.contains(*k))
            .collect();
        if !unused.is_empty() {
            let names: Vec<&str> = unused.iter().map(|s| s.as_str()).collect();
            let note = format!(
                "warning: one or more build args were not consumed: {}",
                names.join(", ")
            );
            self.progress.event(BuildEvent::Note(&note));
        }
        let target = order.last().copied().unwrap_or_default();
        self.done
            .remove(&target)
            .ok_or_else(|| BuildError::UnknownTarget(target.to_string()))
    }

    fn created(&self) -> String {
        image::rfc3339(self.time)
    }

    fn build_stage(&mut self, index: usize) -> Result<StageImage, BuildError> {
        let stage = &self.dockerfile.stages[index];
        let stage_name = stage
            .name
            .clone()
            .unwrap_or_else(|| format!("stage-{index}"));
        let from_text = format!("FROM {}", stage.base);
        let base = match self.plan.bases[index].clone() {
            Base::Scratch => self.scratch_image(),
            Base::Stage(parent) => self.done.get(&parent).cloned().ok_or_else(|| {
                BuildError::step(&stage.location, &from_text, "base stage was not built")
            })?,
            Base::Image(reference) => self
                .image(&reference)
                .map_err(|e| BuildError::step(&stage.location, &from_text, e))?,
        };
        let base_key = match &self.plan.bases[index] {
            Base::Scratch => StepInputs::base(&self.settings, "scratch").key(),
            Base::Stage(parent) => self.stage_keys.get(parent).cloned().ok_or_else(|| {
                BuildError::step(&stage.location, &from_text, "base stage was not built")
            })?,
            Base::Image(reference) => {
                let digest = self
                    .image_digests
                    .get(&reference.to_string())
                    .ok_or_else(|| {
                        BuildError::step(&stage.location, &from_text, "base image was not loaded")
                    })?;
                StepInputs::base(&self.settings, &format!("image {digest}")).key()
            }
        };
        let filtered = self.opts.no_cache_filter.iter().any(|f| {
            stage.name.as_deref() == Some(f.to_lowercase().as_str()) || *f == index.to_string()
        });
        let total = stage.instructions.len() + 1;
        self.progress.event(BuildEvent::Step {
            stage: &stage_name,
            index: 1,
            total,
            text: &from_text,
        });
        let mut state = StageState {
            image: base,
            args: BTreeMap::new(),
            cmd_set: false,
            key: base_key,
            use_cache: !self.opts.no_cache && !filtered,
            slot: String::new(),
            stage: index,
        };

        // ONBUILD triggers of the base run first, then are cleared from the new image. Their
        // layers are assumed to be mounted later (the stage's own steps follow).
        self.mounted_later = true;
        let triggers = std::mem::take(&mut state.image.config.config.on_build);
        for (trigger_index, trigger) in triggers.into_iter().enumerate() {
            let parsed = parse_trigger(&trigger, &stage.location)?;
            state.slot = format!("{index} onbuild {trigger_index}");
            let text = format!("ONBUILD {trigger}");
            self.progress.event(BuildEvent::Step {
                stage: &stage_name,
                index: 1,
                total,
                text: &text,
            });
            self.dispatch(&mut state, index, &parsed)?;
        }

        let needed_by_other_stages = self.plan.deps.values().any(|deps| deps.contains(&index));
        for (step, located) in stage.instructions.iter().enumerate() {
            if super::interrupted() {
                return Err(BuildError::Interrupted);
            }
            self.progress.event(BuildEvent::Step {
                stage: &stage_name,
                index: step + 2,
                total,
                text: &located.source_text,
            });
            state.slot = format!("{index} {step}");
            self.mounted_later = needed_by_other_stages
                || stage.instructions[step + 1..].iter().any(|later| {
                    matches!(
                        later.instruction,
                        Instruction::Run(_)
                            | Instruction::Copy(_)
                            | Instruction::Add(_)
                            | Instruction::Workdir(_)
                    )
                });
            self.dispatch(&mut state, index, located)?;
        }
        self.settle_pending(&mut state.image)?;
        self.stage_keys.insert(index, state.key.clone());
        Ok(state.image)
    }

    /// Waits for the blobs still being compressed for this stage, puts them into `image` and
    /// saves the cache records that waited for them.
    fn settle_pending(&mut self, image: &mut StageImage) -> Result<(), BuildError> {
        let settled = self
            .pending
            .settle(&mut image.layers)
            .map_err(|e| BuildError::step(&e.location, &e.instruction, e.message))?;
        for (stage, record) in settled.records {
            self.save_record(&record);
            if let Some(remote) = &self.remote {
                remote.note_used(stage, &record);
            }
        }
        Ok(())
    }

    /// Writes a layer in the background when a later step will use this stage's file
    /// system (that step can start meanwhile), else right away. `unpack_into`: as in
    /// [`layer::write_layer_unpacking`], linking the step's reusable files.
    fn write_step_layer(
        &mut self,
        entries: Vec<Entry>,
        unpack_into: Option<&Path>,
    ) -> Result<LayerInfo, String> {
        let opts = self.layer_options();
        let reuse = self.reusable.take();
        if let (true, Some((location, text))) = (self.mounted_later, &self.current_step) {
            let pending =
                layer::write_layer_deferred(self.store, entries, &opts, unpack_into, reuse)
                    .map_err(|e| e.to_string())?;
            return Ok(self.pending.add(pending, location, text));
        }
        match unpack_into {
            Some(dir) => layer::write_layer_unpacking(self.store, entries, &opts, dir),
            None => layer::write_layer(self.store, entries, &opts),
        }
        .map_err(|e| e.to_string())
    }

    fn scratch_image(&self) -> StageImage {
        let config = ImageConfig {
            architecture: self.platform.architecture.clone(),
            os: self.platform.os.clone(),
            variant: self.platform.variant.clone(),
            config: ContainerConfig {
                env: vec![DEFAULT_PATH.to_string()],
                working_dir: "/".to_string(),
                ..Default::default()
            },
            ..Default::default()
        };
        StageImage {
            config,
            layers: Vec::new(),
        }
    }

    /// A base image from the local store, pulled first when missing (or with --pull).
    fn image(&mut self, reference: &Reference) -> Result<StageImage, String> {
        let name = reference.to_string();
        if let Some(image) = self.images.get(&name) {
            return Ok(image.clone());
        }
        let existing = if self.opts.pull {
            None
        } else {
            self.store.get_ref(&name).map_err(|e| e.to_string())?
        };
        let manifest_digest = match existing {
            Some(entry) => entry.manifest_digest,
            None => {
                let note = format!("pulling {}", reference.familiar());
                self.progress.event(BuildEvent::Note(&note));
                let options = crate::client::PullOptions {
                    platform: Some(self.platform.clone()),
                    ..Default::default()
                };
                let store = self.store;
                let runtime = self.runtime()?;
                let pulled = runtime
                    .block_on(crate::client::pull(
                        store,
                        reference,
                        &options,
                        &crate::client::NoProgress,
                    ))
                    .map_err(|e| e.to_string())?;
                pulled.manifest_digest
            }
        };
        let loaded = image::load_image(self.store, &manifest_digest).map_err(|e| e.to_string())?;
        self.image_digests
            .insert(name.clone(), manifest_digest.clone());
        let layers = loaded
            .manifest
            .layers
            .iter()
            .zip(&loaded.config.rootfs.diff_ids)
            .map(|(descriptor, diff_id)| LayerInfo {
                diff_id: diff_id.clone(),
                digest: descriptor.digest.clone(),
                size: descriptor.size,
                media_type: oci_layer_media_type(&descriptor.media_type),
            })
            .collect();
        let image = StageImage {
            layers,
            config: loaded.config,
        };
        self.images.insert(name, image.clone());
        Ok(image)
    }

    /// The async runtime for registry and URL downloads, started on first use.
    fn runtime(&mut self) -> Result<&tokio::runtime::Runtime, String> {
        if self.runtime.is_none() {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("cannot start async runtime: {e}"))?;
            self.runtime = Some(runtime);
        }
        self.runtime
            .as_ref()
            .ok_or_else(|| "no async runtime".to_string())
    }

    fn expand(&self, state: &StageState, word: &str) -> Result<String, String> {
        let vars = state.vars();
        let lookup = |name: &str| vars.get(name).cloned();
        self.lexer
            .process_word(word, &lookup)
            .map_err(|e| e.to_string())
    }

    fn expand_words(&self, state: &StageState, word: &str) -> Result<Vec<String>, String> {
        let vars = state.vars();
        let lookup = |name: &str| vars.get(name).cloned();
        self.lexer
            .process_words(word, &lookup)
            .map_err(|e| e.to_string())
    }

    fn history(&self, state: &mut StageState, created_by: String, empty_layer: bool) {
        let created = self.created();
        self.history_at(state, created_by, empty_layer, created);
    }

    fn history_at(
        &self,
        state: &mut StageState,
        created_by: String,
        empty_layer: bool,
        created: String,
    ) {
        state.image.config.history.push(History {
            created: Some(created),
            created_by: Some(created_by),
            comment: Some(HISTORY_COMMENT.to_string()),
            empty_layer,
            ..Default::default()
        });
    }

    /// Runs one instruction; metadata-only instructions are then folded into the stage's key.
    fn dispatch(
        &mut self,
        state: &mut StageState,
        stage_index: usize,
        located: &Located,
    ) -> Result<(), BuildError> {
        let history_before = state.image.config.history.len();
        self.current_step = Some((located.location.clone(), located.source_text.clone()));
        self.dispatch_instruction(state, stage_index, located)?;
        match located.instruction {
            Instruction::Arg(_)
            | Instruction::Workdir(_)
            | Instruction::Copy(_)
            | Instruction::Add(_)
            | Instruction::Run(_) => Ok(()),
            _ => self
                .fold_metadata(state, history_before, &located.source_text)
                .map_err(|e| BuildError::step(&located.location, &located.source_text, e)),
        }
    }

    fn dispatch_instruction(
        &mut self,
        state: &mut StageState,
        stage_index: usize,
        located: &Located,
    ) -> Result<(), BuildError> {
        let fail = |e: String| BuildError::step(&located.location, &located.source_text, e);
        match &located.instruction {
            Instruction::Env(pairs) => {
                let mut expanded = Vec::new();
                for (key, value) in pairs {
                    expanded.push((key.clone(), self.expand(state, value).map_err(fail)?));
                }
                let mut text = Vec::new();
                for (key, value) in &expanded {
                    state.set_env(key, value);
                    text.push(format!("{key}={value}"));
                }
                self.history(state, format!("ENV {}", text.join(" ")), true);
            }
            Instruction::Arg(decls) => {
                for decl in decls {
                    self.used_build_args.insert(decl.name.clone());
                    let value = match (self.opts.build_args.get(&decl.name), &decl.default) {
                        (Some(value), _) => Some(value.clone()),
                        (None, Some(default)) => Some(self.expand(state, default).map_err(fail)?),
                        (None, None) => self.plan.global_args.get(&decl.name).cloned(),
                    };
                    state.args.insert(decl.name.clone(), value);
                }
            }
            Instruction::Label(pairs) => {
                let mut text = Vec::new();
                for (key, value) in pairs {
                    let key = self.expand(state, key).map_err(fail)?;
                    let value = self.expand(state, value).map_err(fail)?;
                    text.push(format!("{key}={value}"));
                    state.image.config.config.labels.insert(key, value);
                }
                self.history(state, format!("LABEL {}", text.join(" ")), true);
            }
            Instruction::Workdir(dir) => {
                let dir = self.expand(state, dir).map_err(fail)?;
                let path = rootfs::join_clean(&state.workdir(), &dir);
                state.image.config.config.working_dir = path.clone();
                let mut inputs = StepInputs::after(&state.key);
                inputs.add("instruction", format!("WORKDIR {path}"));
                let (layer, created) = self
                    .cached_layer_step(state, Some(inputs), |this, state| {
                        this.workdir_layer(state, &path)
                    })
                    .map_err(fail)?;
                let empty = layer.is_none();
                if let Some(layer) = layer {
                    state
                        .image
                        .config
                        .rootfs
                        .diff_ids
                        .push(layer.diff_id.clone());
                    state.image.layers.push(layer);
                }
                self.history_at(state, format!("WORKDIR {path}"), empty, created);
            }
            Instruction::User(user) => {
                let user = self.expand(state, user).map_err(fail)?;
                if user.is_empty() {
                    return Err(fail("USER requires a user name or id".to_string()));
                }
                state.image.config.config.user = user.clone();
                self.history(state, format!("USER {user}"), true);
            }
            Instruction::Expose(ports) => {
                let mut added = BTreeSet::new();
                for word in ports {
                    for port in self.expand_words(state, word).map_err(fail)? {
                        added.extend(parse_ports(&port).map_err(fail)?);
                    }
                }
                let exposed = &mut state.image.config.config.exposed_ports;
                for port in &added {
                    exposed.insert(port.clone(), Default::default());
                }
                let text: Vec<String> = added.iter().map(|p| format!("{p}:{{}}")).collect();
                self.history(state, format!("EXPOSE map[{}]", text.join(" ")), true);
            }
            Instruction::Volume(volumes) => {
                let mut added = Vec::new();
                for volume in volumes {
                    let volume = self.expand(state, volume).map_err(fail)?;
                    if volume.trim().is_empty() {
                        return Err(fail("VOLUME specified can not be an empty string".into()));
                    }
                    added.push(volume);
                }
                let map = &mut state.image.config.config.volumes;
                for volume in &added {
                    map.insert(volume.clone(), Default::default());
                }
                self.history(state, format!("VOLUME [{}]", added.join(" ")), true);
            }
            Instruction::Stopsignal(signal) => {
                let signal = self.expand(state, signal).map_err(fail)?;
                validate_signal(&signal).map_err(fail)?;
                state.image.config.config.stop_signal = signal.clone();
                self.history(state, format!("STOPSIGNAL {signal}"), true);
            }
            Instruction::Cmd(form) => {
                let args = self.command_args(state, form);
                state.image.config.config.cmd = args.clone();
                state.image.config.config.args_escaped = true;
                state.cmd_set = true;
                self.history(state, format!("CMD {}", go_quoted_list(&args)), true);
            }
            Instruction::Entrypoint(form) => {
                let args = self.command_args(state, form);
                state.image.config.config.entrypoint = args.clone();
                state.image.config.config.args_escaped = true;
                if !state.cmd_set {
                    state.image.config.config.cmd = Vec::new();
                }
                self.history(state, format!("ENTRYPOINT {}", go_quoted_list(&args)), true);
            }
            Instruction::Shell(shell) => {
                state.image.config.config.shell = shell.clone();
                self.history(state, format!("SHELL [{}]", shell.join(" ")), true);
            }
            Instruction::Healthcheck(check) => {
                let health = match check {
                    Healthcheck::None => HealthConfig {
                        test: vec!["NONE".to_string()],
                        ..Default::default()
                    },
                    Healthcheck::Cmd {
                        test,
                        interval,
                        timeout,
                        start_period,
                        start_interval,
                        retries,
                    } => HealthConfig {
                        test: match test {
                            CommandForm::Exec(args) => std::iter::once("CMD".to_string())
                                .chain(args.clone())
                                .collect(),
                            CommandForm::Shell(cmd) => vec!["CMD-SHELL".to_string(), cmd.clone()],
                        },
                        interval: nanos(*interval),
                        timeout: nanos(*timeout),
                        start_period: nanos(*start_period),
                        start_interval: nanos(*start_interval),
                        retries: retries.map_or(0, i64::from),
                    },
                };
                let text = format!(
                    "HEALTHCHECK &{{{} \"{}\" \"{}\" \"{}\" '\\x{:02x}'}}",
                    go_quoted_list(&health.test),
                    go_duration(health.interval),
                    go_duration(health.timeout),
                    go_duration(health.start_period),
                    health.retries
                );
                state.image.config.config.healthcheck = Some(health);
                self.history(state, text, true);
            }
            Instruction::Onbuild(trigger) => {
                state.image.config.config.on_build.push(trigger.clone());
            }
            Instruction::Maintainer(name) => {
                state.image.config.author = Some(name.clone());
                self.history(state, format!("MAINTAINER {name}"), true);
            }
            Instruction::Copy(copy) | Instruction::Add(copy) => {
                let is_add = matches!(located.instruction, Instruction::Add(_));
                let mut expanded = self.expand_copy(state, copy).map_err(fail)?;
                let inputs = self
                    .copy_inputs(state, stage_index, copy, &mut expanded, is_add)
                    .map_err(fail)?;
                let (layer, created) = self
                    .cached_layer_step(state, inputs, |this, state| {
                        this.copy_layer(state, stage_index, copy, &expanded, is_add)
                            .map(Some)
                    })
                    .map_err(fail)?;
                let layer = layer.ok_or_else(|| fail("COPY/ADD produced no layer".to_string()))?;
                state
                    .image
                    .config
                    .rootfs
                    .diff_ids
                    .push(layer.diff_id.clone());
                state.image.layers.push(layer);
                let text = format!("{} # imgbuild", located.source_text.trim());
                self.history_at(state, text, false, created);
            }
            Instruction::Run(instr) => {
                let args = run::command_args(instr, &state.shell()).0;
                let inputs = self.run_inputs(state, stage_index, instr).map_err(fail)?;
                let (layer, created) = self
                    .cached_layer_step(state, inputs, |this, state| {
                        this.run_layer(state, stage_index, instr)
                    })
                    .map_err(fail)?;
                let created_by = format!("RUN {} # imgbuild", args.join(" "));
                let empty = layer.is_none();
                if let Some(layer) = layer {
                    state
                        .image
                        .config
                        .rootfs
                        .diff_ids
                        .push(layer.diff_id.clone());
                    state.image.layers.push(layer);
                }
                self.history_at(state, created_by, empty, created);
            }
        }
        Ok(())
    }

    /// CMD/ENTRYPOINT arguments: exec form as written, shell form through the stage's SHELL.
    fn command_args(&self, state: &StageState, form: &CommandForm) -> Vec<String> {
        match form {
            CommandForm::Exec(args) => args.clone(),
            CommandForm::Shell(command) => {
                let mut args = state.shell();
                args.push(command.clone());
                args
            }
        }
    }

    fn layer_options(&self) -> LayerOptions {
        LayerOptions {
            compression: self.opts.compression,
            source_date_epoch: self.opts.source_date_epoch,
        }
    }

    /// The layer that creates a WORKDIR, or None when it already exists.
    fn workdir_layer(
        &mut self,
        state: &StageState,
        path: &str,
    ) -> Result<Option<LayerInfo>, String> {
        let rootfs = self.rootfs.mount(self.store, &state.image.layers)?;
        let missing = rootfs::missing_dirs(rootfs.path(), path);
        drop(rootfs);
        if missing.is_empty() {
            return Ok(None);
        }
        let entries: Vec<Entry> = missing
            .into_iter()
            .map(|dir| Entry {
                path: dir,
                kind: EntryKind::Dir,
                mode: 0o755,
                uid: 0,
                gid: 0,
                mtime: self.time,
                xattrs: Vec::new(),
            })
            .collect();
        let info = layer::write_layer(self.store, entries, &self.layer_options())
            .map_err(|e| e.to_string())?;
        Ok(Some(info))
    }

    /// Expands the variables of a COPY/ADD's sources, heredocs, destination and flags.
    fn expand_copy(&self, state: &StageState, copy: &CopyInstr) -> Result<ExpandedCopy, String> {
        let mut sources = Vec::new();
        let mut heredocs = Vec::new();
        for source in &copy.sources {
            match source {
                CopySource::Path(path) => sources.push(self.expand(state, path)?),
                CopySource::HereDoc(doc) => {
                    let content = if doc.expand {
                        self.expand_heredoc(state, &doc.content)?
                    } else {
                        doc.content.clone()
                    };
                    heredocs.push((doc.name.clone(), content));
                }
            }
        }
        let dest = self.expand(state, &copy.dest)?;
        let mut excludes = Vec::new();
        for pattern in &copy.excludes {
            excludes.push(self.expand(state, pattern)?);
        }
        let chmod_text = copy
            .chmod
            .as_deref()
            .map(|c| self.expand(state, c))
            .transpose()?;
        let chown = copy
            .chown
            .as_deref()
            .map(|c| self.expand(state, c))
            .transpose()?;
        Ok(ExpandedCopy {
            sources,
            heredocs,
            dest,
            excludes,
            chmod_text,
            chown,
            downloads: BTreeMap::new(),
            download_dir: None,
            planned: std::cell::Cell::new(None),
        })
    }

    fn copy_layer(
        &mut self,
        state: &StageState,
        stage_index: usize,
        copy: &CopyInstr,
        expanded: &ExpandedCopy,
        is_add: bool,
    ) -> Result<LayerInfo, String> {
        let ExpandedCopy {
            sources,
            heredocs,
            dest,
            excludes,
            chmod_text,
            chown,
            downloads,
            download_dir: _,
            planned,
        } = expanded;
        let chmod = chmod_text
            .as_deref()
            .map(|c| super::chmod::Chmod::parse(c).map_err(|e| e.to_string()))
            .transpose()?;

        if is_add && sources.iter().any(|s| copy::is_url(s)) {
            if copy.from.is_some() {
                return Err("ADD --from cannot be used with a URL source".into());
            }
            self.runtime()?;
        }

        // The target rootfs answers which parent dirs exist and resolves --chown names.
        let target = self.rootfs.mount(self.store, &state.image.layers)?;
        let owner = match chown {
            Some(spec) => {
                let passwd = rootfs::read_in_root(target.path(), "etc/passwd").unwrap_or_default();
                let group = rootfs::read_in_root(target.path(), "etc/group").unwrap_or_default();
                Some(users::resolve_chown(spec, &passwd, &group).map_err(|e| e.to_string())?)
            }
            None => None,
        };

        let from = self.plan.copy_from(self.dockerfile, stage_index, copy)?;
        let source_image = match &from {
            None => None,
            Some(CopyFrom::Stage(index)) => Some(
                self.done
                    .get(index)
                    .cloned()
                    .ok_or_else(|| format!("stage {index} was not built"))?,
            ),
            Some(CopyFrom::Image(reference)) => Some(self.image(reference)?),
        };
        let source_mount: Option<Rootfs> = match &source_image {
            Some(image) => Some(self.rootfs.mount(self.store, &image.layers)?),
            None => None,
        };
        let (source_root, ignore): (&Path, Option<&IgnoreMatcher>) = match &source_mount {
            Some(mount) => (mount.path(), None),
            None => (self.opts.context.as_path(), Some(&self.ignore)),
        };
        let job = CopyJob {
            sources,
            heredocs,
            dest,
            workdir: &state.workdir(),
            source_root,
            ignore,
            excludes,
            parents: copy.parents,
            preserve_owner: source_mount.is_some(),
            owner,
            chmod: chmod.as_ref(),
            is_add: is_add && source_mount.is_none(),
            unpack: copy.unpack.unwrap_or(true),
            checksum: copy.checksum.as_deref(),
            target_root: target.path(),
            created_mtime: self.opts.source_date_epoch.unwrap_or(0),
            store: self.store,
            runtime: self.runtime.as_ref(),
            downloads,
            planned: planned.take(),
        };
        let (entries, _scratch) = copy::entries(job)?;
        if !self.mounted_later {
            return layer::write_layer(self.store, entries, &self.layer_options())
                .map_err(|e| e.to_string());
        }
        // A later step mounts this layer: unpack it while writing it, instead of reading and
        // decompressing the blob again when it is mounted.
        let snapshot = self.rootfs.unpack_dir()?;
        let info = self.write_step_layer(entries, Some(snapshot.path()))?;
        drop(source_mount);
        drop(target);
        self.rootfs
            .adopt_upper(&state.image.layers, &info, snapshot)?;
        Ok(info)
    }

    /// The OCI runtime for RUN, detected on first use.
    fn sandbox_runtime(&mut self) -> Result<Runtime, String> {
        if let Some(runtime) = &self.sandbox_runtime {
            return Ok(runtime.clone());
        }
        let runtime = Runtime::detect(self.store.root(), self.opts.runtime.as_deref())
            .map_err(|e| e.to_string())?;
        self.sandbox_runtime = Some(runtime.clone());
        Ok(runtime)
    }

    /// Runs a RUN; returns its layer (None when it changed nothing) and the command line.
    fn run_layer(
        &mut self,
        state: &StageState,
        stage_index: usize,
        instr: &RunInstr,
    ) -> Result<Option<LayerInfo>, String> {
        let mut mounts = Vec::new();
        for raw in &instr.mounts {
            mounts.push(MountSpec::parse(&self.expand(state, raw)?)?);
        }
        // Root file systems of the stages/images bind mounts read from.
        let mut from_mounts: Vec<Rootfs> = Vec::new();
        let mut from_roots = BTreeMap::new();
        for mount in &mounts {
            let Some(name) = mount.from() else { continue };
            let image = match self.plan.resolve_from(self.dockerfile, stage_index, name)? {
                CopyFrom::Stage(index) => self
                    .done
                    .get(&index)
                    .cloned()
                    .ok_or_else(|| format!("stage {name} was not built"))?,
                CopyFrom::Image(reference) => self.image(&reference)?,
            };
            let rootfs = self.rootfs.mount(self.store, &image.layers)?;
            from_roots.insert(name.to_string(), rootfs.path().to_path_buf());
            from_mounts.push(rootfs);
        }
        let env = run_env(state);
        let runtime = self.sandbox_runtime()?;
        let step = RunStep {
            instr,
            layers: &state.image.layers,
            shell: state.shell(),
            env,
            workdir: state.workdir(),
            user: state.image.config.config.user.clone(),
            mounts,
            from_roots,
        };
        let ctx = RunContext {
            store: self.store,
            runtime: &runtime,
            rootfs: &self.rootfs,
            context_dir: &self.opts.context,
            secrets: &self.opts.secrets,
            default_network: run::parse_network(self.opts.network.as_deref(), Network::Host)?,
        };
        let progress = &mut *self.progress;
        let result = run::run_step(&ctx, &step, &mut |bytes: &[u8]| {
            progress.event(BuildEvent::Output(bytes));
        })?;
        drop(from_mounts);
        if result.entries.is_empty() {
            return Ok(None);
        }
        let info = self.write_step_layer(result.entries, None)?;
        self.rootfs
            .adopt_upper(&state.image.layers, &info, result.upper)?;
        Ok(Some(info))
    }

    /// Heredoc bodies of COPY expand variables unless the delimiter was quoted.
    fn expand_heredoc(&self, state: &StageState, content: &str) -> Result<String, String> {
        let vars = state.vars();
        let lookup = |name: &str| vars.get(name).cloned();
        super::heredoc::expand(&self.lexer, content, &lookup).map_err(|e| e.to_string())
    }
}

/// The environment of a RUN: the image's ENV plus the stage's ARGs that ENV does not set.
fn run_env(state: &StageState) -> Vec<String> {
    let mut env = state.image.config.config.env.clone();
    for (key, value) in &state.args {
        let Some(value) = value else { continue };
        if !env
            .iter()
            .any(|e| e.split_once('=').map(|(k, _)| k) == Some(key.as_str()))
        {
            env.push(format!("{key}={value}"));
        }
    }
    env
}

/// A COPY/ADD with its variables expanded.
struct ExpandedCopy {
    sources: Vec<String>,
    /// (file name, content) of heredoc sources.
    heredocs: Vec<(String, String)>,
    dest: String,
    excludes: Vec<String>,
    chmod_text: Option<String>,
    chown: Option<String>,
    /// ADD URLs downloaded to key the cache (reused by the step on a miss).
    downloads: BTreeMap<String, copy::Downloaded>,
    /// Where those downloads live until the step is done.
    download_dir: Option<tempfile::TempDir>,
    /// The context files a COPY selects, as planned to key the cache (reused by the step on a
    /// miss, so the context is walked once).
    planned: std::cell::Cell<Option<crate::context::CopyPlan>>,
}

/// Parses an ONBUILD trigger (one instruction) as if it stood at `location`.
fn parse_trigger(trigger: &str, location: &Location) -> Result<Located, BuildError> {
    let text = format!("FROM scratch\n{trigger}\n");
    let parsed = dockerfile::parse(&text, &format!("{} (ONBUILD trigger)", location.file))?;
    let mut located = parsed
        .stages
        .into_iter()
        .next()
        .and_then(|stage| stage.instructions.into_iter().next())
        .ok_or_else(|| BuildError::step(location, trigger, "empty ONBUILD trigger"))?;
    located.location = location.clone();
    Ok(located)
}

/// Expands an EXPOSE word into `port/proto` keys (ranges become each port).
fn parse_ports(text: &str) -> Result<Vec<String>, String> {
    let (ports, proto) = match text.split_once('/') {
        Some((ports, proto)) => (ports, proto.to_lowercase()),
        None => (text, "tcp".to_string()),
    };
    if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
        return Err(format!("invalid proto in EXPOSE {text:?}: {proto}"));
    }
    let parse = |p: &str| {
        p.parse::<u16>()
            .map_err(|_| format!("invalid port in EXPOSE: {text:?}"))
    };
    let (start, end) = match ports.split_once('-') {
        Some((a, b)) => (parse(a)?, parse(b)?),
        None => {
            let p = parse(ports)?;
            (p, p)
        }
    };
    if end < start {
        return Err(format!("invalid port range in EXPOSE: {text:?}"));
    }
    Ok((start..=end).map(|p| format!("{p}/{proto}")).collect())
}

/// Accepts what Docker accepts for STOPSIGNAL: a signal name (with or without SIG) or number.
fn validate_signal(signal: &str) -> Result<(), String> {
    const NAMES: &[&str] = &[
        "ABRT", "ALRM", "BUS", "CHLD", "CONT", "FPE", "HUP", "ILL", "INT", "IO", "IOT", "KILL",
        "PIPE", "PROF", "PWR", "QUIT", "SEGV", "STKFLT", "STOP", "SYS", "TERM", "TRAP", "TSTP",
        "TTIN", "TTOU", "URG", "USR1", "USR2", "VTALRM", "WINCH", "XCPU", "XFSZ",
    ];
    if signal.parse::<u8>().is_ok_and(|n| n > 0) {
        return Ok(());
    }
    let name = signal.to_uppercase();
    let name = name.strip_prefix("SIG").unwrap_or(&name);
    let is_rt = name.starts_with("RTMIN") || name.starts_with("RTMAX");
    if NAMES.contains(&name) || is_rt {
        Ok(())
    } else {
        Err(format!("invalid signal: {signal}"))
    }
}

/// Formats like Go's `%q` of a string slice: `["a" "b"]`.
fn go_quoted_list(items: &[String]) -> String {
    let quoted: Vec<String> = items
        .iter()
        .map(|s| serde_json::to_string(s).unwrap_or_default())
        .collect();
    format!("[{}]", quoted.join(" "))
}

/// A HEALTHCHECK duration in Docker's nanoseconds (0 when unset).
fn nanos(value: Option<u64>) -> i64 {
    value.map_or(0, |v| i64::try_from(v).unwrap_or(i64::MAX))
}

/// The OCI media type for a layer media type (Docker's schema2 types map to their twins).
fn oci_layer_media_type(media_type: &str) -> String {
    match media_type {
        "application/vnd.docker.image.rootfs.diff.tar.gzip" => {
            layer::MEDIA_TYPE_TAR_GZIP.to_string()
        }
        "application/vnd.docker.image.rootfs.diff.tar" => {
            "application/vnd.oci.image.layer.v1.tar".to_string()
        }
        other => other.to_string(),
    }
}

/// Formats nanoseconds like Go's time.Duration (`5s`, `1m30s`, `0s`).
fn go_duration(nanos: i64) -> String {
    let nanos = u64::try_from(nanos).unwrap_or(0);
    if nanos == 0 {
        return "0s".to_string();
    }
    let secs = nanos / 1_000_000_000;
    let frac = nanos % 1_000_000_000;
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if h > 0 || m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if frac == 0 {
        out.push_str(&format!("{s}s"));
    } else {
        let frac_text = format!("{frac:09}");
        out.push_str(&format!("{s}.{}s", frac_text.trim_end_matches('0')));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_expand_like_docker() {
        assert_eq!(parse_ports("80").unwrap(), vec!["80/tcp"]);
        assert_eq!(parse_ports("53/udp").unwrap(), vec!["53/udp"]);
        assert_eq!(
            parse_ports("8000-8002").unwrap(),
            vec!["8000/tcp", "8001/tcp", "8002/tcp"]
        );
        assert!(parse_ports("http").is_err());
        assert!(parse_ports("80/xyz").is_err());
    }

    #[test]
    fn signals_are_validated() {
        assert!(validate_signal("SIGKILL").is_ok());
        assert!(validate_signal("term").is_ok());
        assert!(validate_signal("9").is_ok());
        assert!(validate_signal("SIGFOO").is_err());
    }

    #[test]
    fn durations_format_like_go() {
        assert_eq!(go_duration(5_000_000_000), "5s");
        assert_eq!(go_duration(90_000_000_000), "1m30s");
        assert_eq!(go_duration(0), "0s");
        assert_eq!(go_duration(1_500_000_000), "1.5s");
    }
}

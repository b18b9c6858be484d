//! Building independent stages at the same time: stages whose dependencies are all built run
//! on their own threads, each with its own executor seeded with what is built so far. Their
//! progress is recorded and replayed stage by stage when they are done, so the log stays
//! readable (one stage's steps together) instead of interleaved.

use std::collections::{BTreeMap, BTreeSet};

use super::{Executor, StageImage};
use crate::build::plan::Base;
use crate::build::{BuildError, BuildEvent, BuildProgress};
use crate::context::StatCache;
use crate::digest::Digest;

/// A build event kept for later.
enum RecordedEvent {
    Step {
        stage: String,
        index: usize,
        total: usize,
        text: String,
    },
    Cached,
    Note(String),
    Output(Vec<u8>),
}

/// Records the events of a stage built on another thread.
#[derive(Default)]
struct RecordedProgress {
    events: Vec<RecordedEvent>,
}

impl BuildProgress for RecordedProgress {
    fn event(&mut self, event: BuildEvent<'_>) {
        self.events.push(match event {
            BuildEvent::Step {
                stage,
                index,
                total,
                text,
            } => RecordedEvent::Step {
                stage: stage.to_string(),
                index,
                total,
                text: text.to_string(),
            },
            BuildEvent::Cached => RecordedEvent::Cached,
            BuildEvent::Note(note) => RecordedEvent::Note(note.to_string()),
            BuildEvent::Output(bytes) => RecordedEvent::Output(bytes.to_vec()),
        });
    }
}

/// What a worker learned besides the stage's image, merged back into the main executor.
struct WorkerOutcome {
    image: StageImage,
    key: Option<Digest>,
    images: BTreeMap<String, StageImage>,
    image_digests: BTreeMap<String, Digest>,
    used_build_args: BTreeSet<String>,
    stat_cache: Option<StatCache>,
}

impl Executor<'_> {
    /// The pending stages whose dependencies are all built (at least one, in plan order).
    pub(super) fn ready_stages(&self, pending: &[usize]) -> Vec<usize> {
        let ready: Vec<usize> = pending
            .iter()
            .copied()
            .filter(|index| {
                self.plan
                    .deps
                    .get(index)
                    .is_none_or(|deps| deps.iter().all(|d| self.done.contains_key(d)))
            })
            .collect();
        if ready.is_empty() {
            // Cannot happen with a plan in dependency order; fall back to that order.
            return pending.iter().take(1).copied().collect();
        }
        ready
    }

    /// Builds `indexes` (independent of each other) on one thread each, then replays their
    /// progress in stage order and keeps their results. The first failure (in stage order)
    /// is returned once all threads are done.
    pub(super) fn build_concurrently(&mut self, indexes: &[usize]) -> Result<(), BuildError> {
        // Base images are loaded (pulled) once, here, rather than by each thread.
        for &index in indexes {
            if let Base::Image(reference) = &self.plan.bases[index] {
                let stage = &self.dockerfile.stages[index];
                self.image(reference).map_err(|e| {
                    BuildError::step(&stage.location, &format!("FROM {}", stage.base), e)
                })?;
            }
        }
        let (store, opts, platform, dockerfile, plan) = (
            self.store,
            self.opts,
            self.platform,
            self.dockerfile,
            self.plan,
        );
        let results: Vec<(usize, RecordedProgress, Result<WorkerOutcome, BuildError>)> =
            std::thread::scope(|scope| {
                let handles: Vec<_> = indexes
                    .iter()
                    .map(|&index| {
                        let done = self.done.clone();
                        let images = self.images.clone();
                        let stage_keys = self.stage_keys.clone();
                        let image_digests = self.image_digests.clone();
                        let ignore = self.ignore.clone();
                        let remote = self.remote.clone();
                        let handle = scope.spawn(move || {
                            let mut progress = RecordedProgress::default();
                            let outcome = (|| {
                                let mut worker = Executor::new(
                                    store,
                                    opts,
                                    platform,
                                    dockerfile,
                                    plan,
                                    ignore,
                                    &mut progress,
                                )?;
                                worker.done = done;
                                worker.images = images;
                                worker.stage_keys = stage_keys;
                                worker.image_digests = image_digests;
                                worker.remote = remote;
                                let image = worker.build_stage(index)?;
                                Ok(WorkerOutcome {
                                    image,
                                    key: worker.stage_keys.remove(&index),
                                    images: std::mem::take(&mut worker.images),
                                    image_digests: std::mem::take(&mut worker.image_digests),
                                    used_build_args: std::mem::take(&mut worker.used_build_args),
                                    stat_cache: worker.stat_cache.take(),
                                })
                            })();
                            (progress, outcome)
                        });
                        (index, handle)
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|(index, handle)| match handle.join() {
                        Ok((progress, outcome)) => (index, progress, outcome),
                        Err(_) => (
                            index,
                            RecordedProgress::default(),
                            Err(BuildError::StagePanicked(index)),
                        ),
                    })
                    .collect()
            });

        let mut first_error = None;
        for (index, progress, outcome) in results {
            self.replay(progress);
            match outcome {
                Ok(outcome) => self.absorb(index, outcome),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn replay(&mut self, recorded: RecordedProgress) {
        for event in recorded.events {
            let event = match &event {
                RecordedEvent::Step {
                    stage,
                    index,
                    total,
                    text,
                } => BuildEvent::Step {
                    stage,
                    index: *index,
                    total: *total,
                    text,
                },
                RecordedEvent::Cached => BuildEvent::Cached,
                RecordedEvent::Note(note) => BuildEvent::Note(note),
                RecordedEvent::Output(bytes) => BuildEvent::Output(bytes),
            };
            self.progress.event(event);
        }
    }

    fn absorb(&mut self, index: usize, outcome: WorkerOutcome) {
        self.done.insert(index, outcome.image);
        if let Some(key) = outcome.key {
            self.stage_keys.insert(index, key);
        }
        self.images.extend(outcome.images);
        self.image_digests.extend(outcome.image_digests);
        self.used_build_args.extend(outcome.used_build_args);
        if let Some(worker_cache) = outcome.stat_cache {
            match &mut self.stat_cache {
                Some(main) => main.absorb(worker_cache),
                None => self.stat_cache = Some(worker_cache),
            }
        }
    }
}

//! Pull and push progress: per-blob bars with bytes and rate on a terminal (indicatif), plain
//! lines otherwise, nothing when quiet.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::Mutex;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::client::{PullProgress, PushProgress, human_bytes};
use crate::digest::Digest;

/// How progress is shown.
enum Mode {
    Bars(MultiProgress),
    Lines,
    Quiet,
}

/// Renders pull/push events to stderr.
pub struct TransferProgress {
    mode: Mode,
    bars: Mutex<BTreeMap<Digest, ProgressBar>>,
}

impl TransferProgress {
    /// Bars on a terminal, lines otherwise, or nothing when `quiet`.
    pub fn new(quiet: bool) -> Self {
        let mode = if quiet {
            Mode::Quiet
        } else if std::io::stderr().is_terminal() {
            Mode::Bars(MultiProgress::with_draw_target(ProgressDrawTarget::stderr()))
        } else {
            Mode::Lines
        };
        TransferProgress {
            mode,
            bars: Mutex::new(BTreeMap::new()),
        }
    }

    fn line(&self, digest: &Digest, text: &str) {
        match &self.mode {
            Mode::Lines => eprintln!("{}: {text}", digest.short()),
            Mode::Bars(multi) => {
                let _ = multi.println(format!("{}: {text}", digest.short()));
            }
            Mode::Quiet => {}
        }
    }

    fn start(&self, digest: &Digest, size: u64, verb: &str) {
        match &self.mode {
            Mode::Bars(multi) => {
                let bar = multi.add(ProgressBar::new(size));
                let style = ProgressStyle::with_template(
                    "{prefix} {msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
                bar.set_style(style);
                bar.set_prefix(digest.short().to_string());
                bar.set_message(verb.to_string());
                self.bars_lock().insert(digest.clone(), bar);
            }
            Mode::Lines => eprintln!("{}: {verb} {}", digest.short(), human_bytes(size)),
            Mode::Quiet => {}
        }
    }

    fn progress(&self, digest: &Digest, done: u64) {
        if let Some(bar) = self.bars_lock().get(digest) {
            bar.set_position(done);
        }
    }

    fn finish(&self, digest: &Digest, verb: &str) {
        match self.bars_lock().remove(digest) {
            Some(bar) => bar.finish_with_message(verb.to_string()),
            None => self.line(digest, verb),
        }
    }

    fn bars_lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<Digest, ProgressBar>> {
        self.bars
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl PullProgress for TransferProgress {
    fn blob_present(&self, digest: &Digest, _size: u64) {
        self.line(digest, "already present");
    }
    fn blob_started(&self, digest: &Digest, size: u64) {
        self.start(digest, size, "downloading");
    }
    fn blob_progress(&self, digest: &Digest, done: u64, _size: u64) {
        self.progress(digest, done);
    }
    fn blob_finished(&self, digest: &Digest, _size: u64) {
        self.finish(digest, "pulled");
    }
}

impl PushProgress for TransferProgress {
    fn blob_present(&self, digest: &Digest, _size: u64) {
        self.line(digest, "already present");
    }
    fn blob_mounted(&self, digest: &Digest, _size: u64, from_repository: &str) {
        self.line(digest, &format!("mounted from {from_repository}"));
    }
    fn blob_started(&self, digest: &Digest, size: u64) {
        self.start(digest, size, "pushing");
    }
    fn blob_progress(&self, digest: &Digest, done: u64, _size: u64) {
        self.progress(digest, done);
    }
    fn blob_finished(&self, digest: &Digest, _size: u64) {
        self.finish(digest, "pushed");
    }
    fn manifest_pushed(&self, digest: &Digest, tag_or_digest: &str) {
        self.line(digest, &format!("manifest pushed as {tag_or_digest}"));
    }
}

//! Build progress rendering: plain numbered step lines on stderr, or nothing when quiet.

use std::io::Write;

use crate::build::{BuildEvent, BuildProgress};

/// How much progress to print (`--progress`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressMode {
    /// Plain lines (the same as plain here; a terminal gets the same readable log).
    Auto,
    /// One line per step: `#3 [build 2/5] COPY . /app`.
    Plain,
    /// Nothing but errors.
    Quiet,
}

/// Prints build events to stderr as numbered lines.
pub struct PlainProgress {
    mode: ProgressMode,
    step: usize,
}

impl PlainProgress {
    pub fn new(mode: ProgressMode) -> Self {
        PlainProgress { mode, step: 0 }
    }
}

impl BuildProgress for PlainProgress {
    fn event(&mut self, event: BuildEvent<'_>) {
        if self.mode == ProgressMode::Quiet {
            return;
        }
        let mut err = std::io::stderr().lock();
        let _ = match event {
            BuildEvent::Step {
                stage,
                index,
                total,
                text,
            } => {
                self.step += 1;
                let first_line = text.lines().next().unwrap_or_default().trim();
                writeln!(err, "#{} [{stage} {index}/{total}] {first_line}", self.step)
            }
            BuildEvent::Cached => writeln!(err, "#{} CACHED", self.step),
            BuildEvent::Note(note) => writeln!(err, "{note}"),
            BuildEvent::Output(bytes) => {
                let text = String::from_utf8_lossy(bytes);
                let mut result = Ok(());
                for line in text.split_inclusive('\n') {
                    result = write!(err, "#{} {line}", self.step);
                }
                result
            }
        };
    }
}

//! Running `imgbuild build --progress plain` and reading its log: the image digest, and per
//! step its text and whether it was CACHED.

use std::path::Path;

use super::{imgbuild, ok};

/// The output of one build: the image digest and, per step, its text and whether it was CACHED.
pub struct Built {
    pub digest: String,
    pub steps: Vec<(String, bool)>,
    pub log: String,
}

impl Built {
    /// Whether the step whose text is exactly `text` was CACHED (panics if there is none).
    pub fn cached(&self, text: &str) -> bool {
        self.step(|step| step == text, text)
    }

    /// Whether the first step whose text starts with `prefix` was CACHED.
    pub fn cached_starting(&self, prefix: &str) -> bool {
        self.step(|step| step.starts_with(prefix), prefix)
    }

    pub fn cached_count(&self) -> usize {
        self.steps.iter().filter(|(_, cached)| *cached).count()
    }

    fn step(&self, matches: impl Fn(&str) -> bool, what: &str) -> bool {
        self.steps
            .iter()
            .find(|(step, _)| matches(step))
            .unwrap_or_else(|| panic!("no step {what:?} in:\n{}", self.log))
            .1
    }
}

/// Builds `context` into the store at `root` with `extra` flags; asserts success.
pub fn build(root: &Path, context: &Path, extra: &[&str]) -> Built {
    let mut args = vec!["build", "--progress", "plain"];
    args.extend_from_slice(extra);
    let context_text = context.to_str().unwrap().to_string();
    args.push(&context_text);
    let output = imgbuild(root, &args);
    let log = String::from_utf8_lossy(&output.stderr).into_owned();
    let digest = ok(output).trim().to_string();
    // "#3 [stage-0 2/4] COPY a.txt /a.txt" then maybe "#3 CACHED".
    let mut steps: Vec<(String, bool)> = Vec::new();
    for line in log.lines().filter(|line| line.starts_with('#')) {
        if line.ends_with(" CACHED") {
            if let Some(last) = steps.last_mut() {
                last.1 = true;
            }
        } else if let Some((_, text)) = line.split_once("] ") {
            steps.push((text.to_string(), false));
        }
    }
    Built { digest, steps, log }
}

//! Build context: selecting COPY/ADD sources (globs, excludes, .dockerignore) from a directory.
//!
//! [`plan_copy`] turns the local sources and destination of one `COPY`/`ADD` into the list of
//! files, directories and symlinks to write into the image, with BuildKit's rules; it reads only
//! metadata, never file contents.

mod error;
mod plan;
mod resolve;

pub use error::ContextError;
pub use plan::{CopyItem, CopyOptions, CopyPlan, plan_copy, plan_copy_full};

#[cfg(test)]
mod tests;

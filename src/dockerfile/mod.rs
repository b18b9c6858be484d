//! Dockerfile front end: parsing into typed instructions, variable expansion, and .dockerignore matching.
//!
//! - [`parse`] turns Dockerfile text into a [`Dockerfile`] (stages of [`Located`] instructions), values
//!   left unexpanded; see [`model`] for which instructions the executor expands.
//! - [`expand`] is Docker's shell-like word expansion (`$VAR`, `${VAR:-default}`, quotes, escapes).
//! - [`ignore`] matches paths against `.dockerignore` rules.

mod duration;
mod error;
pub mod expand;
mod flags;
pub mod glob;
mod heredoc;
pub mod ignore;
pub mod model;
mod parse;
mod words;

pub use error::DockerfileError;
pub use expand::{ExpandError, Lexer};
pub use ignore::IgnoreMatcher;
pub use model::*;
pub use parse::parse;

#[cfg(test)]
mod tests;

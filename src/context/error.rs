//! Errors of COPY/ADD source selection: what failed and for which source or path.

use std::path::PathBuf;

use crate::dockerfile::ignore::IgnoreError;

/// A COPY/ADD source that cannot be planned.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("no source files were specified")]
    NoSources,
    #[error("file not found in build context: {source_path}")]
    NotFound { source_path: String },
    #[error("{source_path}: path is outside the build context")]
    OutsideContext { source_path: String },
    #[error("{source_path}: invalid wildcard pattern")]
    BadPattern { source_path: String },
    #[error("invalid --exclude pattern: {0}")]
    BadExclude(#[source] IgnoreError),
    #[error("{path}: too many levels of symbolic links")]
    SymlinkLoop { path: PathBuf },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl ContextError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> ContextError {
        let path = path.into();
        move |source| ContextError::Io { path, source }
    }
}

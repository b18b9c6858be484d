//! The error type of snapshot operations: what failed and on which path.

use std::io;
use std::path::PathBuf;

use crate::digest::Digest;

/// Why a snapshot, mount or diff operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("mounting overlay on {target}: {message}")]
    Mount { target: PathBuf, message: String },
    #[error("unmounting {target}: {source}")]
    Unmount {
        target: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: {reason}")]
    Unsupported { path: PathBuf, reason: String },
    #[error("snapshot {chain_id}: parent snapshot {parent} does not exist")]
    MissingParent { chain_id: Digest, parent: Digest },
    #[error("snapshot {chain_id}: {message}")]
    Corrupt { chain_id: Digest, message: String },
    #[error("unpacking snapshot {chain_id}: {source}")]
    Unpack {
        chain_id: Digest,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl SnapshotError {
    /// An I/O error of operation `op` on `path`.
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
        source: impl Into<io::Error>,
    ) -> Self {
        SnapshotError::Io {
            op,
            path: path.into(),
            source: source.into(),
        }
    }
}

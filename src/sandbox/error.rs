//! The error type of the RUN sandbox: what failed, with which runtime, container or path.

use std::io;
use std::path::PathBuf;

/// Why a sandboxed run failed (a non-zero exit of the command is not an error).
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("invalid run spec: {0}")]
    InvalidSpec(String),
    #[error("building the OCI runtime config: {0}")]
    Spec(#[from] oci_spec::OciSpecError),
    #[error("starting {runtime}: {source}")]
    Spawn {
        runtime: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{runtime} failed to run container {id}: {message}")]
    Runtime {
        runtime: String,
        id: String,
        message: String,
    },
    #[error("{runtime} running container {id} was killed by signal {signal}")]
    RuntimeKilled {
        runtime: String,
        id: String,
        signal: i32,
    },
    #[error("container {id} was cancelled")]
    Cancelled { id: String },
    #[error("no working OCI runtime (install runc, or pass --runtime): {tried}")]
    NoRuntime { tried: String },
}

impl SandboxError {
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
        source: impl Into<io::Error>,
    ) -> Self {
        SandboxError::Io {
            op,
            path: path.into(),
            source: source.into(),
        }
    }
}

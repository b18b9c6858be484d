//! Client errors: what went wrong talking to a registry, and the operation it happened in.
//!
//! Every message is one line that names the registry or reference, e.g.
//! `pull 127.0.0.1:5999/x:1: cannot connect to registry 127.0.0.1:5999: connection refused`.

use std::error::Error as _;

use crate::digest::Digest;
use crate::store::StoreError;

/// An error in one registry operation, without the operation's name.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("cannot connect to registry {registry}: {reason}")]
    Unreachable { registry: String, reason: String },
    #[error("registry {registry} requires authentication (401 Unauthorized){detail}")]
    Unauthorized { registry: String, detail: String },
    #[error("registry {registry} rejected the user name or password (401 Unauthorized)")]
    CredentialsRejected { registry: String },
    #[error("registry {registry} denied access (403 Forbidden){detail}")]
    Denied { registry: String, detail: String },
    #[error("{what} not found in registry {registry}")]
    NotFound { registry: String, what: String },
    #[error("registry {registry} answered {status} to {request}{detail}")]
    Status {
        registry: String,
        status: u16,
        request: String,
        detail: String,
    },
    #[error("digest mismatch for {what}: expected {expected}, content hashes to {actual}")]
    DigestMismatch {
        what: String,
        expected: Digest,
        actual: Digest,
    },
    #[error(
        "size mismatch for {what}: the manifest declares {expected} bytes, the registry sent {actual}"
    )]
    SizeMismatch {
        what: String,
        expected: u64,
        actual: String,
    },
    #[error("invalid manifest {what}: {reason}")]
    BadManifest { what: String, reason: String },
    #[error("no image for platform {wanted} in {what} (it has: {available})")]
    PlatformNotFound {
        what: String,
        wanted: String,
        available: String,
    },
    #[error("bad authentication challenge from registry {registry}: {reason}")]
    BadChallenge { registry: String, reason: String },
    #[error("credentials for {registry}: {reason}")]
    Credentials { registry: String, reason: String },
    #[error("TLS setup for registry {registry}: {reason}")]
    Tls { registry: String, reason: String },
    #[error("image {0} is not in the local store")]
    LocalImageNotFound(String),
    #[error("cannot convert image to {format} format: {reason}")]
    Conversion { format: String, reason: String },
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl RegistryError {
    /// Whether retrying the same request might succeed (connection drops, 5xx, 429).
    pub fn is_transient(&self) -> bool {
        match self {
            RegistryError::Unreachable { .. } => true,
            RegistryError::Status { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }

    /// Classifies a reqwest transport error for `registry`, naming the root cause the way
    /// Docker does (`connection refused`, `timed out`, ...).
    pub(crate) fn transport(registry: &str, error: &reqwest::Error) -> RegistryError {
        let mut reason = error.to_string();
        let mut source = error.source();
        while let Some(cause) = source {
            if let Some(io) = cause.downcast_ref::<std::io::Error>() {
                reason = match io.kind() {
                    std::io::ErrorKind::ConnectionRefused => "connection refused".to_string(),
                    std::io::ErrorKind::ConnectionReset => "connection reset".to_string(),
                    std::io::ErrorKind::TimedOut => "timed out".to_string(),
                    _ => io.to_string(),
                };
                break;
            }
            reason = cause.to_string();
            source = cause.source();
        }
        if error.is_timeout() {
            reason = "timed out".to_string();
        }
        RegistryError::Unreachable {
            registry: registry.to_string(),
            reason,
        }
    }
}

/// A failed client operation: `<operation>: <what happened>`.
#[derive(Debug, thiserror::Error)]
#[error("{operation}: {source}")]
pub struct ClientError {
    /// What was being done, e.g. `pull 127.0.0.1:5000/app:1`.
    pub operation: String,
    #[source]
    pub source: RegistryError,
}

impl ClientError {
    pub fn new(operation: impl Into<String>, source: RegistryError) -> ClientError {
        ClientError {
            operation: operation.into(),
            source,
        }
    }
}

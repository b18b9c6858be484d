//! Registry client: auth, pull and push over the OCI distribution API.
//!
//! - [`RegistryClient`] speaks the wire protocol for one registry (manifests, blobs, uploads),
//!   with Docker-style auth (config.json, credential helpers, Basic, Bearer tokens).
//! - [`pull`] fetches an image into the local [`Store`](crate::store::Store) and tags it only
//!   once everything is present; [`push`] sends only what the registry lacks.
//! - [`login`] / [`logout`] maintain `~/.docker/config.json`.

mod auth;
mod error;
mod manifest;
mod progress;
mod pull;
mod push;
mod registry_client;
mod sources;

use std::path::PathBuf;

pub use crate::image::manifest::media_types;
pub use crate::image::{Platform, PlatformError};
pub use auth::{Credentials, docker_config_dir, login, logout};
pub use error::{ClientError, RegistryError};
pub use progress::{NoProgress, PullProgress, PushProgress, human_bytes};
pub use pull::{PullOptions, PulledImage, pull};
pub use push::{ManifestFormat, PushOptions, PushReport, push};
pub use registry_client::{
    DownloadState, FetchedManifest, MountOutcome, RegistryClient, UploadTuning,
};
pub use sources::BlobSources;

/// How to reach a registry: transport security and where credentials live.
#[derive(Debug, Clone)]
pub struct ConnectionOptions {
    /// Verify TLS certificates (default true). False accepts any certificate.
    pub tls_verify: bool,
    /// Force plain HTTP (`Some(true)`) or HTTPS (`Some(false)`); `None` means plain HTTP for
    /// loopback registries (localhost, 127.0.0.0/8, ::1) and HTTPS elsewhere, as Docker does.
    pub plain_http: Option<bool>,
    /// Directory holding `config.json`; `None` means `$DOCKER_CONFIG` or `~/.docker`.
    pub docker_config_dir: Option<PathBuf>,
    /// Directories searched for `HOST[:PORT]/*.crt` CA files; defaults to
    /// `/etc/docker/certs.d` and `~/.config/imgbuild/certs.d`.
    pub certs_dirs: Vec<PathBuf>,
}

impl Default for ConnectionOptions {
    fn default() -> Self {
        let mut certs_dirs = vec![PathBuf::from("/etc/docker/certs.d")];
        if let Some(home) = std::env::var_os("HOME") {
            certs_dirs.push(PathBuf::from(home).join(".config/imgbuild/certs.d"));
        }
        ConnectionOptions {
            tls_verify: true,
            plain_http: None,
            docker_config_dir: None,
            certs_dirs,
        }
    }
}

//! The registry's configuration: defaults, the TOML file format, and validation. Sections for
//! features of later releases (`[auth.htpasswd]`, `[storage]`, `[gc]`) are parsed so that a
//! value this version cannot honour is refused with a clear message instead of being ignored.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Default listen address.
pub const DEFAULT_ADDR: &str = "127.0.0.1:5000";
/// Default data directory.
pub const DEFAULT_DATA: &str = "/var/lib/imgbuild/registry";

/// Everything the server needs to run.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    pub addr: SocketAddr,
    pub data: PathBuf,
    /// Longest pause allowed between two pieces of a request body.
    pub body_idle_timeout: Duration,
    /// Longest time a request may take apart from reading its body.
    pub request_timeout: Duration,
    /// Where blobs, manifests and upload sessions are kept.
    pub storage: StorageBackend,
}

/// The storage backend chosen by `[storage] driver`.
#[derive(Debug, Clone, Default)]
pub enum StorageBackend {
    /// Files under the data directory (`driver = "filesystem"`, the default).
    #[default]
    Filesystem,
    /// An S3-compatible bucket (`driver = "s3"`), shareable by many replicas.
    S3(S3Settings),
}

/// `[storage]` settings of the `s3` driver. Unset credentials and region fall back to the
/// usual `AWS_*` environment variables.
#[derive(Clone, Default)]
pub struct S3Settings {
    pub bucket: String,
    /// e.g. `http://127.0.0.1:3900` for Garage; unset means AWS.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// Permit a plain-HTTP endpoint.
    pub allow_http: bool,
    /// Answer blob GETs with a 307 redirect to a presigned URL of the object.
    pub redirect: bool,
}

impl std::fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Settings")
            .field("bucket", &self.bucket)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "<redacted>"),
            )
            .field("allow_http", &self.allow_http)
            .field("redirect", &self.redirect)
            .finish()
    }
}

impl RegistryConfig {
    /// A configuration with default timeouts.
    pub fn new(addr: SocketAddr, data: impl Into<PathBuf>) -> RegistryConfig {
        RegistryConfig {
            addr,
            data: data.into(),
            body_idle_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(300),
            storage: StorageBackend::Filesystem,
        }
    }
}

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{origin}: invalid listen address {value:?}: {message}")]
    BadAddr {
        origin: String,
        value: String,
        message: String,
    },
    #[error("{origin}: {message}")]
    Unsupported { origin: String, message: String },
}

/// The TOML file, as written by the user.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub addr: Option<String>,
    pub data: Option<PathBuf>,
    pub log_format: Option<String>,
    #[serde(default)]
    pub auth: AuthSection,
    pub storage: Option<StorageSection>,
    pub gc: Option<GcSection>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSection {
    pub htpasswd: Option<HtpasswdSection>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HtpasswdSection {
    pub path: PathBuf,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageSection {
    /// `"filesystem"` (default) or `"s3"`.
    pub driver: Option<String>,
    pub bucket: Option<String>,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub allow_http: Option<bool>,
    pub redirect: Option<bool>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GcSection {
    pub enabled: Option<bool>,
}

impl ConfigFile {
    /// Reads and parses a config file.
    pub fn load(path: &Path) -> Result<ConfigFile, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let file: ConfigFile = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        file.check_supported(&path.display().to_string())?;
        Ok(file)
    }

    /// Refuses settings this version cannot honour.
    fn check_supported(&self, origin: &str) -> Result<(), ConfigError> {
        let unsupported = |message: String| ConfigError::Unsupported {
            origin: origin.to_string(),
            message,
        };
        if let Some(htpasswd) = &self.auth.htpasswd {
            return Err(unsupported(format!(
                "[auth.htpasswd] path = {:?}: htpasswd authentication is not implemented in this \
                 version; refusing to serve without the authentication you asked for",
                htpasswd.path
            )));
        }
        self.storage_backend(origin)?;
        if let Some(gc) = &self.gc
            && gc.enabled == Some(true)
        {
            return Err(unsupported(
                "[gc] enabled = true: garbage collection is not implemented in this version".into(),
            ));
        }
        if let Some(format) = &self.log_format
            && format != "json"
            && format != "text"
        {
            return Err(unsupported(format!(
                "log_format = {format:?}: expected \"json\" or \"text\""
            )));
        }
        Ok(())
    }
}

impl ConfigFile {
    /// The storage backend the `[storage]` section asks for (the filesystem when absent).
    pub fn storage_backend(&self, origin: &str) -> Result<StorageBackend, ConfigError> {
        let Some(section) = &self.storage else {
            return Ok(StorageBackend::Filesystem);
        };
        let unsupported = |message: String| ConfigError::Unsupported {
            origin: origin.to_string(),
            message,
        };
        match section.driver.as_deref().unwrap_or("filesystem") {
            "filesystem" => {
                let s3_only = [
                    ("bucket", section.bucket.is_some()),
                    ("endpoint", section.endpoint.is_some()),
                    ("region", section.region.is_some()),
                    ("access_key_id", section.access_key_id.is_some()),
                    ("secret_access_key", section.secret_access_key.is_some()),
                    ("allow_http", section.allow_http.is_some()),
                    ("redirect", section.redirect.is_some()),
                ];
                match s3_only.iter().find(|(_, set)| *set) {
                    Some((key, _)) => Err(unsupported(format!(
                        "[storage] {key} applies to driver = \"s3\" only, but the driver is \"filesystem\""
                    ))),
                    None => Ok(StorageBackend::Filesystem),
                }
            }
            "s3" => {
                let bucket = section
                    .bucket
                    .clone()
                    .filter(|b| !b.is_empty())
                    .ok_or_else(|| unsupported("[storage] driver = \"s3\" needs bucket".into()))?;
                Ok(StorageBackend::S3(S3Settings {
                    bucket,
                    endpoint: section.endpoint.clone(),
                    region: section.region.clone(),
                    access_key_id: section.access_key_id.clone(),
                    secret_access_key: section.secret_access_key.clone(),
                    allow_http: section.allow_http.unwrap_or(false),
                    redirect: section.redirect.unwrap_or(false),
                }))
            }
            other => Err(unsupported(format!(
                "[storage] driver = {other:?} is not supported; expected \"filesystem\" or \"s3\""
            ))),
        }
    }
}

/// Parses a listen address, naming where it came from in the error.
pub fn parse_addr(value: &str, origin: &str) -> Result<SocketAddr, ConfigError> {
    value
        .parse()
        .map_err(|e: std::net::AddrParseError| ConfigError::BadAddr {
            origin: origin.to_string(),
            value: value.to_string(),
            message: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_s3_storage_section() {
        let file = parse(
            "[storage]\ndriver = \"s3\"\nbucket = \"registry\"\nendpoint = \"http://127.0.0.1:3900\"\n\
             region = \"garage\"\naccess_key_id = \"GK1\"\nsecret_access_key = \"s3cr3t\"\n\
             allow_http = true\nredirect = true\n",
        )
        .unwrap();
        let StorageBackend::S3(s3) = file.storage_backend("test").unwrap() else {
            panic!("expected the s3 backend");
        };
        assert_eq!(s3.bucket, "registry");
        assert_eq!(s3.endpoint.as_deref(), Some("http://127.0.0.1:3900"));
        assert_eq!(s3.region.as_deref(), Some("garage"));
        assert_eq!(s3.access_key_id.as_deref(), Some("GK1"));
        assert!(s3.allow_http && s3.redirect);
        assert!(!format!("{s3:?}").contains("s3cr3t"));
        assert!(matches!(
            ConfigFile::default().storage_backend("test").unwrap(),
            StorageBackend::Filesystem
        ));
    }

    fn parse(text: &str) -> Result<ConfigFile, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.toml");
        std::fs::write(&path, text).unwrap();
        ConfigFile::load(&path)
    }

    #[test]
    fn reads_top_level_keys_and_accepted_sections() {
        let file = parse(
            "addr = \"127.0.0.1:5001\"\ndata = \"/srv/reg\"\n[storage]\ndriver = \"filesystem\"\n[gc]\nenabled = false\n",
        )
        .unwrap();
        assert_eq!(file.addr.as_deref(), Some("127.0.0.1:5001"));
        assert_eq!(file.data, Some(PathBuf::from("/srv/reg")));
    }

    #[test]
    fn refuses_unknown_keys_and_unsupported_values() {
        let err = parse("adr = \"x\"\n").unwrap_err().to_string();
        assert!(err.contains("adr"), "{err}");
        let err = parse("[auth.htpasswd]\npath = \"/etc/htpasswd\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("htpasswd authentication is not implemented"),
            "{err}"
        );
        let err = parse("[storage]\ndriver = \"azure\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("expected \"filesystem\" or \"s3\""), "{err}");
        let err = parse("[storage]\ndriver = \"s3\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("needs bucket"), "{err}");
        let err = parse("[storage]\nbucket = \"b\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("driver = \"s3\" only"), "{err}");
        let err = parse("[gc]\nenabled = true\n").unwrap_err().to_string();
        assert!(err.contains("garbage collection"), "{err}");
        assert!(
            parse_addr("nope", "--addr")
                .unwrap_err()
                .to_string()
                .contains("--addr")
        );
    }
}

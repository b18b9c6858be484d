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
}

impl RegistryConfig {
    /// A configuration with default timeouts.
    pub fn new(addr: SocketAddr, data: impl Into<PathBuf>) -> RegistryConfig {
        RegistryConfig {
            addr,
            data: data.into(),
            body_idle_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(300),
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
    pub driver: Option<String>,
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
        if let Some(storage) = &self.storage
            && let Some(driver) = &storage.driver
            && driver != "filesystem"
        {
            return Err(unsupported(format!(
                "[storage] driver = {driver:?} is not supported; only \"filesystem\" is"
            )));
        }
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
        let err = parse("[storage]\ndriver = \"s3\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("only \"filesystem\""), "{err}");
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

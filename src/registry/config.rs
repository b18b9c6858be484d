//! The registry's configuration: defaults, the TOML file format, and validation. Unknown keys
//! and values this version cannot honour are refused with a clear message instead of being
//! ignored. `[auth]` and `[tls]` are described in docs/registry.md ("Securing the registry");
//! `[gc]`, `[[gc.retention]]` and `[[immutable]]` configure garbage collection, retention and
//! tag immutability (see `registry::gc`); `[storage]` picks the filesystem or an S3 bucket.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::auth::Auth;
use super::auth::access::AccessRule;
use super::gc::GcPolicy;
use super::gc::retention::{ImmutableTags, Pattern, RetentionRule};

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
    /// Longest time a client may take to send a request's head.
    pub header_read_timeout: Duration,
    /// Loaded authentication and access rules; `None` serves everyone.
    pub auth: Option<Arc<Auth>>,
    /// Certificate and key files; `None` serves plain HTTP.
    pub tls: Option<TlsSection>,
    /// How often `imgbuild serve` collects garbage; `None`: never on its own.
    pub gc_interval: Option<Duration>,
    /// Grace period, upload expiry, retention rules and immutable tags.
    pub gc: GcPolicy,
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
            header_read_timeout: super::http::HEADER_READ_TIMEOUT,
            auth: None,
            tls: None,
            gc_interval: None,
            gc: GcPolicy::default(),
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
    pub tls: Option<TlsSection>,
    pub storage: Option<StorageSection>,
    pub gc: Option<GcSection>,
    #[serde(default)]
    pub immutable: Vec<ImmutableSection>,
}

/// `[auth]`: who may get in, and what they may do.
#[derive(Debug, Default, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSection {
    pub htpasswd: Option<HtpasswdSection>,
    pub token: Option<TokenSection>,
    /// Anyone, without credentials, may pull every repository.
    #[serde(default)]
    pub anonymous_pull: bool,
    /// `[auth.groups]`: group name -> user names.
    #[serde(default)]
    pub groups: BTreeMap<String, Vec<String>>,
    /// `[[auth.access]]` rules; none means every authenticated user may do everything.
    #[serde(default)]
    pub access: Vec<AccessRule>,
}

/// `[auth.htpasswd]`: bcrypt user file (`htpasswd -B`).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HtpasswdSection {
    pub path: PathBuf,
}

/// `[auth.token]`: the Docker bearer-token flow (ES256 JWTs).
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenSection {
    /// Token server URL put into challenges; default `http(s)://<Host>/token` (this server).
    pub realm: Option<String>,
    /// `service` of challenges and the token audience [default: "imgbuild"].
    pub service: Option<String>,
    /// Token issuer [default: "imgbuild"].
    pub issuer: Option<String>,
    /// P-256 private key (PKCS#8 PEM): this server issues tokens at `/token`.
    pub key: Option<PathBuf>,
    /// P-256 public keys (PEM) of external token issuers whose tokens are accepted too.
    #[serde(default)]
    pub public_keys: Vec<PathBuf>,
    /// How long issued tokens are valid [default: "5m"].
    pub lifetime: Option<String>,
}

/// `[tls]`: serve HTTPS with these PEM files (reloaded on SIGHUP).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// Private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
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

/// `[gc]`: durations are humantime strings ("90s", "1h", "7days").
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GcSection {
    /// `false` turns the periodic collection off; `true` without `interval` means every hour.
    pub enabled: Option<bool>,
    /// How often `imgbuild serve` collects.
    pub interval: Option<String>,
    /// How long a blob is kept after its last use [default 1h].
    pub grace: Option<String>,
    /// How long an upload session may stay idle [default 24h].
    pub upload_expiry: Option<String>,
    #[serde(default)]
    pub retention: Vec<RetentionSection>,
}

/// `[[gc.retention]]`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionSection {
    /// Repository glob (`*` within a path segment, `**` across).
    pub repository: String,
    /// Tag glob that `keep_last` counts [default "*"].
    pub tags: Option<String>,
    pub keep_last: Option<usize>,
    pub untagged_after: Option<String>,
}

/// `[[immutable]]`: tags that never move and cannot be deleted once pushed.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImmutableSection {
    pub repository: String,
    /// Tag glob [default "*"].
    pub tags: Option<String>,
}

/// Parses a humantime duration from the config file.
fn parse_duration(value: &str, key: &str, origin: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(value).map_err(|e| ConfigError::Unsupported {
        origin: origin.to_string(),
        message: format!("{key} = {value:?}: {e} (write e.g. \"30s\", \"1h\", \"7days\")"),
    })
}

/// Periodic collection interval and policy from the file.
pub type GcSettings = (Option<Duration>, GcPolicy);

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

    /// The `[gc]`, `[[gc.retention]]` and `[[immutable]]` settings, validated.
    pub fn gc_settings(&self, origin: &str) -> Result<GcSettings, ConfigError> {
        let immutable = ImmutableTags {
            rules: self
                .immutable
                .iter()
                .map(|rule| {
                    (
                        Pattern::new(&rule.repository),
                        Pattern::new(rule.tags.as_deref().unwrap_or("*")),
                    )
                })
                .collect(),
        };
        let mut policy = GcPolicy {
            immutable,
            ..GcPolicy::default()
        };
        let Some(gc) = &self.gc else {
            return Ok((None, policy));
        };
        if let Some(grace) = &gc.grace {
            policy.grace = parse_duration(grace, "[gc] grace", origin)?;
        }
        if let Some(expiry) = &gc.upload_expiry {
            policy.upload_expiry = parse_duration(expiry, "[gc] upload_expiry", origin)?;
        }
        for (i, rule) in gc.retention.iter().enumerate() {
            let untagged_after = rule
                .untagged_after
                .as_deref()
                .map(|value| {
                    parse_duration(
                        value,
                        &format!("[[gc.retention]] #{} untagged_after", i + 1),
                        origin,
                    )
                })
                .transpose()?;
            if rule.keep_last.is_none() && untagged_after.is_none() {
                return Err(ConfigError::Unsupported {
                    origin: origin.to_string(),
                    message: format!(
                        "[[gc.retention]] #{} (repository = {:?}) has neither keep_last nor untagged_after",
                        i + 1,
                        rule.repository
                    ),
                });
            }
            policy.retention.push(RetentionRule {
                repository: Pattern::new(&rule.repository),
                tags: Pattern::new(rule.tags.as_deref().unwrap_or("*")),
                keep_last: rule.keep_last,
                untagged_after,
            });
        }
        let interval = match (&gc.interval, gc.enabled) {
            (_, Some(false)) => None,
            (Some(interval), _) => Some(parse_duration(interval, "[gc] interval", origin)?),
            (None, Some(true)) => Some(Duration::from_secs(3600)),
            (None, None) => None,
        };
        if interval == Some(Duration::ZERO) {
            return Err(ConfigError::Unsupported {
                origin: origin.to_string(),
                message: "[gc] interval must be more than 0".into(),
            });
        }
        Ok((interval, policy))
    }

    /// Refuses settings this version cannot honour.
    fn check_supported(&self, origin: &str) -> Result<(), ConfigError> {
        let unsupported = |message: String| ConfigError::Unsupported {
            origin: origin.to_string(),
            message,
        };
        self.storage_backend(origin)?;
        self.gc_settings(origin)?;
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
    fn reads_auth_and_tls_sections() {
        let file = parse(
            r#"
[tls]
cert = "/etc/imgbuild/cert.pem"
key = "/etc/imgbuild/key.pem"
[auth]
anonymous_pull = true
[auth.htpasswd]
path = "/etc/imgbuild/htpasswd"
[auth.token]
key = "/etc/imgbuild/token.key"
service = "reg"
lifetime = "10m"
[auth.groups]
devs = ["alice", "bob"]
[[auth.access]]
repository = "team/**"
groups = ["devs"]
actions = ["pull", "push"]
"#,
        )
        .unwrap();
        assert_eq!(
            file.tls.unwrap().cert,
            PathBuf::from("/etc/imgbuild/cert.pem")
        );
        assert!(file.auth.anonymous_pull);
        assert_eq!(file.auth.token.unwrap().service.as_deref(), Some("reg"));
        assert_eq!(file.auth.groups["devs"], ["alice", "bob"]);
        assert_eq!(file.auth.access[0].repository, "team/**");
        let err = parse("[[auth.access]]\nrepository = \"x\"\nactions = [\"own\"]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("own"), "{err}");
    }

    #[test]
    fn refuses_unknown_keys_and_unsupported_values() {
        let err = parse("adr = \"x\"\n").unwrap_err().to_string();
        assert!(err.contains("adr"), "{err}");
        let err = parse("[auth.htpasswd]\npath = \"/etc/htpasswd\"\nbcrypt = 1\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("bcrypt"), "{err}");
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
        let err = parse("[gc]\ngrace = \"soon\"\n").unwrap_err().to_string();
        assert!(err.contains("[gc] grace"), "{err}");
        let err = parse("[[gc.retention]]\nrepository = \"a\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("neither keep_last nor untagged_after"),
            "{err}"
        );
        assert!(
            parse_addr("nope", "--addr")
                .unwrap_err()
                .to_string()
                .contains("--addr")
        );
    }

    #[test]
    fn reads_gc_retention_and_immutable_sections() {
        let file = parse(
            "[gc]\ninterval = \"10m\"\ngrace = \"30s\"\nupload_expiry = \"2h\"\n\
             [[gc.retention]]\nrepository = \"team/**\"\ntags = \"v*\"\nkeep_last = 3\n\
             [[gc.retention]]\nrepository = \"*\"\nuntagged_after = \"7days\"\n\
             [[immutable]]\nrepository = \"release/*\"\ntags = \"v*\"\n",
        )
        .unwrap();
        let (interval, policy) = file.gc_settings("test").unwrap();
        assert_eq!(interval, Some(Duration::from_secs(600)));
        assert_eq!(policy.grace, Duration::from_secs(30));
        assert_eq!(policy.upload_expiry, Duration::from_secs(7200));
        assert_eq!(policy.retention.len(), 2);
        assert_eq!(policy.retention[0].keep_last, Some(3));
        assert_eq!(
            policy.retention[1].untagged_after,
            Some(Duration::from_secs(7 * 86400))
        );
        assert!(policy.immutable.is_immutable("release/app", "v1"));
        assert!(!policy.immutable.is_immutable("release/app", "latest"));
        let (interval, _) = parse("[gc]\nenabled = false\ninterval = \"1m\"\n")
            .unwrap()
            .gc_settings("test")
            .unwrap();
        assert_eq!(interval, None);
    }
}

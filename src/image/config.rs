//! The image configuration JSON (OCI image config with Docker's extensions), as our own serde
//! types so the bytes are deterministic and match what `docker build` (BuildKit) writes.
//!
//! Why not oci-spec's `ImageConfiguration`: it lacks Docker's Healthcheck, OnBuild, Shell and
//! ArgsEscaped, and its maps are HashMaps (random key order changes the config digest).
//!
//! Field order follows BuildKit's output (checked against `docker save` of a BuildKit build):
//! top-level keys alphabetical; `config` keys in Docker's struct order; empty fields omitted.
//! Unknown fields of pulled configs land in `extra` and survive a round trip.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

use crate::digest::Digest;

/// Deserializes `null` (common in pulled Docker configs) as the type's default.
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

fn is_false(value: &bool) -> bool {
    !*value
}

fn is_zero(value: &i64) -> bool {
    *value == 0
}

/// An empty JSON object, the value type of `ExposedPorts` and `Volumes` entries.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmptyObject {}

/// The whole image config blob.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageConfig {
    #[serde(default, deserialize_with = "null_as_default")]
    pub architecture: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub config: ContainerConfig,
    /// RFC 3339 creation time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub history: Vec<History>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub os: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub rootfs: RootFs,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// Fields this type does not model (e.g. `os.version`, Docker's `container_config`).
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// The runtime defaults of a container (`config` in the image config), with Docker's names.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ContainerConfig {
    #[serde(
        rename = "User",
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub user: String,
    /// Keys like `80/tcp`.
    #[serde(
        rename = "ExposedPorts",
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub exposed_ports: BTreeMap<String, EmptyObject>,
    #[serde(
        rename = "Env",
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub env: Vec<String>,
    #[serde(
        rename = "Entrypoint",
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub entrypoint: Vec<String>,
    #[serde(
        rename = "Cmd",
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub cmd: Vec<String>,
    #[serde(
        rename = "Volumes",
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub volumes: BTreeMap<String, EmptyObject>,
    #[serde(
        rename = "WorkingDir",
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub working_dir: String,
    #[serde(
        rename = "Labels",
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub labels: BTreeMap<String, String>,
    #[serde(
        rename = "StopSignal",
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub stop_signal: String,
    #[serde(
        rename = "Healthcheck",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub healthcheck: Option<Healthcheck>,
    #[serde(
        rename = "ArgsEscaped",
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "is_false"
    )]
    pub args_escaped: bool,
    #[serde(
        rename = "OnBuild",
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub on_build: Vec<String>,
    #[serde(
        rename = "Shell",
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub shell: Vec<String>,
    /// Fields this type does not model (e.g. Docker's `Hostname`, `Tty`, `Image`).
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// Docker's HEALTHCHECK settings. Durations are nanoseconds, as Docker writes them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Healthcheck {
    /// `["NONE"]`, `["CMD", args...]` or `["CMD-SHELL", command]`.
    #[serde(
        rename = "Test",
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub test: Vec<String>,
    #[serde(rename = "Interval", default, skip_serializing_if = "is_zero")]
    pub interval: i64,
    #[serde(rename = "Timeout", default, skip_serializing_if = "is_zero")]
    pub timeout: i64,
    #[serde(rename = "StartPeriod", default, skip_serializing_if = "is_zero")]
    pub start_period: i64,
    #[serde(rename = "StartInterval", default, skip_serializing_if = "is_zero")]
    pub start_interval: i64,
    #[serde(rename = "Retries", default, skip_serializing_if = "is_zero")]
    pub retries: i64,
}

/// `rootfs`: the uncompressed digests of the layers, bottom first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type")]
    pub fs_type: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub diff_ids: Vec<Digest>,
}

impl Default for RootFs {
    fn default() -> Self {
        RootFs {
            fs_type: "layers".to_string(),
            diff_ids: Vec::new(),
        }
    }
}

/// One history entry; `empty_layer` marks steps that added no layer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "is_false"
    )]
    pub empty_layer: bool,
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl ImageConfig {
    /// Parses a config blob.
    pub fn from_json(bytes: &[u8]) -> Result<ImageConfig, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// The canonical bytes of this config (compact JSON, deterministic key order).
    pub fn to_json(&self) -> Vec<u8> {
        // Serializing these types cannot fail: all keys are strings and all values are JSON.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// Formats seconds since the epoch as RFC 3339 UTC (`2024-01-02T03:04:05Z`), for `created`.
pub fn rfc3339(seconds_since_epoch: u64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(seconds_since_epoch);
    humantime::format_rfc3339_seconds(time).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The config `docker save` produced for a BuildKit build using every config instruction
    /// (Docker 20.10, `DOCKER_BUILDKIT=1`), trimmed to two history entries.
    const BUILDKIT_CONFIG: &str = r#"{"architecture":"amd64","config":{"User":"1000:1000","ExposedPorts":{"80/tcp":{},"8080/udp":{}},"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin","ZED=1","ALPHA=2"],"Entrypoint":["/bin/echo"],"Cmd":["hello"],"Volumes":{"/cache":{},"/data":{}},"WorkingDir":"/app","Labels":{"a.label":"1","b.label":"2"},"StopSignal":"SIGTERM","Healthcheck":{"Test":["CMD","/bin/true"],"Interval":30000000000,"Timeout":5000000000,"StartPeriod":10000000000,"Retries":3},"ArgsEscaped":true,"OnBuild":["RUN echo hi"],"Shell":["/bin/sh","-ec"]},"created":"2026-11-28T04:22:32.81975395Z","history":[{"created":"2026-11-28T04:09:54.469240111Z","comment":"Imported from -"},{"created":"2026-11-28T04:22:32.81975395Z","created_by":"LABEL b.label=2 a.label=1","comment":"buildkit.dockerfile.v0","empty_layer":true}],"os":"linux","rootfs":{"type":"layers","diff_ids":["sha256:3defc1fcf590a90021a69aaa43a98c70cca910efa34134e1496d9a9112618911","sha256:4272f4c4c8ce0f0f166ac8745e1ee8e585e6f39867760c07b93c43dd11551a61"]}}"#;

    #[test]
    fn buildkit_config_round_trips_byte_for_byte() {
        let config = ImageConfig::from_json(BUILDKIT_CONFIG.as_bytes()).unwrap();
        assert_eq!(config.config.user, "1000:1000");
        assert_eq!(config.config.healthcheck.as_ref().unwrap().retries, 3);
        assert!(config.config.args_escaped);
        assert!(config.history[1].empty_layer);
        assert!(config.extra.is_empty() && config.config.extra.is_empty());
        assert_eq!(
            String::from_utf8(config.to_json()).unwrap(),
            BUILDKIT_CONFIG
        );
    }

    #[test]
    fn empty_fields_are_omitted_like_buildkit() {
        let config = ImageConfig {
            architecture: "amd64".into(),
            os: "linux".into(),
            ..ImageConfig::default()
        };
        assert_eq!(
            String::from_utf8(config.to_json()).unwrap(),
            r#"{"architecture":"amd64","config":{},"os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#
        );
    }

    #[test]
    fn pulled_docker_configs_with_nulls_and_unknown_fields_survive() {
        let pulled = r#"{"architecture":"amd64","config":{"Hostname":"","Tty":false,"Env":null,"Cmd":["sh"],"Entrypoint":null,"OnBuild":null,"Labels":null,"Image":"sha256:abc"},"container":"1234","container_config":{"Cmd":["/bin/sh"]},"created":"2024-01-01T00:00:00Z","docker_version":"20.10.0","history":[{"created":"2024-01-01T00:00:00Z","created_by":"/bin/sh","empty_layer":null}],"os":"linux","os.version":"10","rootfs":{"type":"layers","diff_ids":[]}}"#;
        let config = ImageConfig::from_json(pulled.as_bytes()).unwrap();
        assert_eq!(config.config.cmd, vec!["sh"]);
        assert!(config.config.env.is_empty());
        assert_eq!(config.config.extra["Image"], "sha256:abc");
        assert_eq!(config.extra["docker_version"], "20.10.0");
        assert_eq!(config.extra["os.version"], "10");
        let again = ImageConfig::from_json(&config.to_json()).unwrap();
        assert_eq!(again, config);
        let value: serde_json::Value = serde_json::from_slice(&config.to_json()).unwrap();
        assert_eq!(value["container_config"]["Cmd"][0], "/bin/sh");
        assert_eq!(value["config"]["Hostname"], "");
    }

    #[test]
    fn rfc3339_formats_utc_seconds() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }
}

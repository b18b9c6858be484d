//! Manifest JSON as the client needs it: media types, the descriptors a manifest or index names,
//! platform matching for multi-arch indexes, and OCI <-> Docker schema2 media-type rewriting.

use std::fmt;

use serde::Deserialize;

use super::error::RegistryError;
use crate::digest::Digest;

/// Media types of manifests, configs and layers (OCI and Docker schema2).
pub mod media_types {
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
    pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    pub const DOCKER_MANIFEST_LIST: &str =
        "application/vnd.docker.distribution.manifest.list.v2+json";
    pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
    pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

    /// The Accept header for manifest GETs: every manifest and index type we understand.
    pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
        application/vnd.oci.image.manifest.v1+json, \
        application/vnd.docker.distribution.manifest.list.v2+json, \
        application/vnd.docker.distribution.manifest.v2+json";

    pub fn is_index(media_type: &str) -> bool {
        media_type == OCI_INDEX || media_type == DOCKER_MANIFEST_LIST
    }

    pub fn is_image_manifest(media_type: &str) -> bool {
        media_type == OCI_MANIFEST || media_type == DOCKER_MANIFEST
    }
}

/// A content descriptor inside a manifest or index.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default)]
    pub platform: Option<PlatformJson>,
}

/// The `platform` object of an index entry.
#[derive(Debug, Clone, Deserialize)]
pub struct PlatformJson {
    pub os: String,
    pub architecture: String,
    #[serde(default)]
    pub variant: Option<String>,
}

/// The fields of an image manifest or index the client reads.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManifestJson {
    #[serde(default)]
    pub media_type: Option<String>,
    #[serde(default)]
    pub config: Option<Descriptor>,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
}

impl ManifestJson {
    /// Parses manifest bytes; `what` names the manifest in errors.
    pub fn parse(bytes: &[u8], what: &str) -> Result<ManifestJson, RegistryError> {
        serde_json::from_slice(bytes).map_err(|e| RegistryError::BadManifest {
            what: what.to_string(),
            reason: e.to_string(),
        })
    }

    /// Config then layers, for an image manifest (an error for an index).
    pub fn image_blobs(&self, what: &str) -> Result<Vec<Descriptor>, RegistryError> {
        let config = self
            .config
            .clone()
            .ok_or_else(|| RegistryError::BadManifest {
                what: what.to_string(),
                reason: "it has no config descriptor".to_string(),
            })?;
        let mut blobs = vec![config];
        blobs.extend(self.layers.iter().cloned());
        Ok(blobs)
    }
}

/// Why a platform string is invalid.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid platform {0:?}: expected OS/ARCH[/VARIANT], e.g. linux/amd64 or linux/arm64/v8")]
pub struct PlatformError(pub String);

/// A target platform such as `linux/amd64` or `linux/arm/v7`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    /// Parses `os/arch[/variant]` (TARGETPLATFORM style).
    pub fn parse(text: &str) -> Result<Platform, PlatformError> {
        let parts: Vec<&str> = text.split('/').collect();
        let valid_part = |p: &str| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        };
        if !(2..=3).contains(&parts.len()) || !parts.iter().all(|p| valid_part(p)) {
            return Err(PlatformError(text.to_string()));
        }
        Ok(Platform {
            os: parts[0].to_string(),
            architecture: parts[1].to_string(),
            variant: parts.get(2).map(|v| v.to_string()),
        }
        .normalized())
    }

    /// The platform this program runs on, in OCI terms (`x86_64` -> `amd64`, ...).
    pub fn host() -> Platform {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", None),
            "arm" => ("arm", Some("v7")),
            "x86" => ("386", None),
            "powerpc64" => ("ppc64le", None),
            "s390x" => ("s390x", None),
            "riscv64" => ("riscv64", None),
            other => (other, None),
        };
        Platform {
            os: "linux".to_string(),
            architecture: architecture.to_string(),
            variant: variant.map(str::to_string),
        }
    }

    /// Applies the containerd defaults: `arm64` implies `v8`, `arm` implies `v7`.
    fn normalized(mut self) -> Platform {
        if self.architecture == "arm64" && self.variant.as_deref() == Some("v8") {
            self.variant = None;
        }
        if self.architecture == "arm" && self.variant.is_none() {
            self.variant = Some("v7".to_string());
        }
        self
    }

    fn matches(&self, entry: &PlatformJson) -> bool {
        let entry = Platform {
            os: entry.os.clone(),
            architecture: entry.architecture.clone(),
            variant: entry.variant.clone().filter(|v| !v.is_empty()),
        }
        .normalized();
        entry.os == self.os
            && entry.architecture == self.architecture
            && (self.variant.is_none() || entry.variant == self.variant)
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

/// Picks the index entry for `wanted`: an exact variant match wins over a variant-less one.
pub fn select_platform<'a>(
    index: &'a ManifestJson,
    wanted: &Platform,
    what: &str,
) -> Result<&'a Descriptor, RegistryError> {
    let candidates: Vec<&Descriptor> = index
        .manifests
        .iter()
        .filter(|d| d.platform.as_ref().is_some_and(|p| wanted.matches(p)))
        .collect();
    if let Some(best) = candidates
        .iter()
        .find(|d| d.platform.as_ref().and_then(|p| p.variant.as_ref()) == wanted.variant.as_ref())
        .or(candidates.first())
    {
        return Ok(best);
    }
    let available: Vec<String> = index
        .manifests
        .iter()
        .filter_map(|d| d.platform.as_ref())
        .map(|p| match &p.variant {
            Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
            None => format!("{}/{}", p.os, p.architecture),
        })
        .collect();
    Err(RegistryError::PlatformNotFound {
        what: what.to_string(),
        wanted: wanted.to_string(),
        available: if available.is_empty() {
            "no platform entries".to_string()
        } else {
            available.join(", ")
        },
    })
}

/// Rewrites the media types of an image manifest (`manifest` and its descriptors) to the OCI
/// or Docker schema2 family. Returns the new manifest bytes and media type. The config bytes
/// are unchanged (both families share the config JSON), so only the manifest digest changes.
pub fn convert_image_manifest(
    bytes: &[u8],
    to_docker: bool,
    what: &str,
) -> Result<(Vec<u8>, String), RegistryError> {
    let format = if to_docker { "Docker schema2" } else { "OCI" };
    let conversion_error = |reason: String| RegistryError::Conversion {
        format: format.to_string(),
        reason: format!("{what}: {reason}"),
    };
    let mut value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| conversion_error(e.to_string()))?;
    let object = value
        .as_object_mut()
        .ok_or_else(|| conversion_error("manifest is not a JSON object".to_string()))?;
    let manifest_type = if to_docker {
        media_types::DOCKER_MANIFEST
    } else {
        media_types::OCI_MANIFEST
    };
    object.insert("mediaType".to_string(), manifest_type.into());
    if to_docker {
        object.remove("annotations");
        object.remove("artifactType");
        object.remove("subject");
    }
    if let Some(config) = object.get_mut("config").and_then(|c| c.as_object_mut()) {
        let config_type = if to_docker {
            media_types::DOCKER_CONFIG
        } else {
            media_types::OCI_CONFIG
        };
        config.insert("mediaType".to_string(), config_type.into());
    }
    if let Some(layers) = object.get_mut("layers").and_then(|l| l.as_array_mut()) {
        for layer in layers {
            let Some(layer) = layer.as_object_mut() else {
                return Err(conversion_error("a layer is not a JSON object".to_string()));
            };
            let current = layer
                .get("mediaType")
                .and_then(|m| m.as_str())
                .unwrap_or_default()
                .to_string();
            let converted = convert_layer_type(&current, to_docker).ok_or_else(|| {
                conversion_error(format!("layer media type {current:?} has no equivalent"))
            })?;
            layer.insert("mediaType".to_string(), converted.into());
            if to_docker {
                layer.remove("annotations");
            }
        }
    }
    let bytes = serde_json::to_vec_pretty(&value).map_err(|e| conversion_error(e.to_string()))?;
    Ok((bytes, manifest_type.to_string()))
}

fn convert_layer_type(current: &str, to_docker: bool) -> Option<&'static str> {
    use media_types::*;
    match (current, to_docker) {
        (OCI_LAYER_GZIP | DOCKER_LAYER_GZIP, true) => Some(DOCKER_LAYER_GZIP),
        (OCI_LAYER_GZIP | DOCKER_LAYER_GZIP, false) => Some(OCI_LAYER_GZIP),
        (OCI_LAYER_TAR, false) => Some(OCI_LAYER_TAR),
        (OCI_LAYER_ZSTD, false) => Some(OCI_LAYER_ZSTD),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index_json(entries: &[(&str, &str, Option<&str>, char)]) -> ManifestJson {
        let manifests: Vec<serde_json::Value> = entries
            .iter()
            .map(|(os, arch, variant, fill)| {
                let mut platform = serde_json::json!({"os": os, "architecture": arch});
                if let Some(v) = variant {
                    platform["variant"] = (*v).into();
                }
                serde_json::json!({
                    "mediaType": media_types::OCI_MANIFEST,
                    "digest": format!("sha256:{}", fill.to_string().repeat(64)),
                    "size": 1,
                    "platform": platform,
                })
            })
            .collect();
        let json = serde_json::json!({"schemaVersion": 2, "manifests": manifests});
        ManifestJson::parse(json.to_string().as_bytes(), "test").unwrap()
    }

    #[test]
    fn platform_parse_accepts_os_arch_variant_and_rejects_garbage() {
        let p = Platform::parse("linux/arm/v6").unwrap();
        assert_eq!(p.variant.as_deref(), Some("v6"));
        assert_eq!(
            Platform::parse("linux/arm64/v8").unwrap().to_string(),
            "linux/arm64"
        );
        assert_eq!(
            Platform::parse("linux/arm").unwrap().to_string(),
            "linux/arm/v7"
        );
        assert!(Platform::parse("linux").is_err());
        assert!(Platform::parse("linux/amd64/v1/x").is_err());
        assert!(Platform::parse("Linux/AMD64").is_err());
        assert_eq!(Platform::host().to_string(), "linux/amd64");
    }

    #[test]
    fn select_platform_picks_matching_entry_and_variant() {
        let index = index_json(&[
            ("linux", "arm", Some("v6"), 'a'),
            ("linux", "amd64", None, 'b'),
            ("linux", "arm", Some("v7"), 'c'),
            ("linux", "arm64", Some("v8"), 'd'),
        ]);
        let pick = |p: &str| {
            select_platform(&index, &Platform::parse(p).unwrap(), "i")
                .unwrap()
                .digest
                .hex()[..1]
                .to_string()
        };
        assert_eq!(pick("linux/amd64"), "b");
        assert_eq!(pick("linux/arm/v7"), "c");
        assert_eq!(pick("linux/arm"), "c");
        assert_eq!(pick("linux/arm/v6"), "a");
        assert_eq!(pick("linux/arm64"), "d");
        let err = select_platform(&index, &Platform::parse("windows/amd64").unwrap(), "idx")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("windows/amd64") && err.contains("linux/arm/v6"),
            "{err}"
        );
    }

    #[test]
    fn converting_to_docker_rewrites_media_types_and_back() {
        let oci = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media_types::OCI_MANIFEST,
            "config": {"mediaType": media_types::OCI_CONFIG, "digest": format!("sha256:{}", "a".repeat(64)), "size": 2},
            "layers": [{"mediaType": media_types::OCI_LAYER_GZIP, "digest": format!("sha256:{}", "b".repeat(64)), "size": 3, "annotations": {"x": "y"}}],
            "annotations": {"k": "v"},
        });
        let (docker, mt) = convert_image_manifest(oci.to_string().as_bytes(), true, "m").unwrap();
        assert_eq!(mt, media_types::DOCKER_MANIFEST);
        let text = String::from_utf8(docker.clone()).unwrap();
        assert!(
            text.contains(media_types::DOCKER_CONFIG)
                && text.contains(media_types::DOCKER_LAYER_GZIP)
        );
        assert!(!text.contains("annotations"), "{text}");
        let (back, mt) = convert_image_manifest(&docker, false, "m").unwrap();
        assert_eq!(mt, media_types::OCI_MANIFEST);
        assert!(
            String::from_utf8(back)
                .unwrap()
                .contains(media_types::OCI_LAYER_GZIP)
        );

        let zstd = oci
            .to_string()
            .replace(media_types::OCI_LAYER_GZIP, media_types::OCI_LAYER_ZSTD);
        let err = convert_image_manifest(zstd.as_bytes(), true, "m").unwrap_err();
        assert!(err.to_string().contains("tar+zstd"), "{err}");
    }
}

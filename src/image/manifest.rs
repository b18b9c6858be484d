//! Manifests, indexes and descriptors, for both OCI and Docker schema2 media types (the JSON
//! shapes are the same; only media types differ).
//!
//! Why our own types instead of oci-spec's: oci-spec keeps annotations in a HashMap, so
//! serializing the same manifest twice can give different bytes (and digests); and it rejects
//! unknown fields less gracefully. These use BTreeMap and keep unknown fields in `extra`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::platform::Platform;
use crate::digest::Digest;

/// Media types of manifests, indexes, configs and layers (OCI and Docker schema2).
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

    /// Whether `media_type` is an index type (OCI index or Docker manifest list).
    pub fn is_index(media_type: &str) -> bool {
        media_type == OCI_INDEX || media_type == DOCKER_MANIFEST_LIST
    }

    /// Whether `media_type` is an image manifest type (OCI or Docker).
    pub fn is_image_manifest(media_type: &str) -> bool {
        media_type == OCI_MANIFEST || media_type == DOCKER_MANIFEST
    }
}

pub use media_types::{
    DOCKER_CONFIG, DOCKER_LAYER_GZIP, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_CONFIG, OCI_INDEX,
    OCI_MANIFEST,
};

/// A content descriptor: what a blob is, its digest and size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType")]
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(
        rename = "artifactType",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub artifact_type: Option<String>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl Descriptor {
    /// A plain descriptor with no annotations or platform.
    pub fn new(media_type: impl Into<String>, digest: Digest, size: u64) -> Descriptor {
        Descriptor {
            media_type: media_type.into(),
            digest,
            size,
            urls: Vec::new(),
            annotations: BTreeMap::new(),
            platform: None,
            artifact_type: None,
            extra: BTreeMap::new(),
        }
    }
}

impl From<&crate::layer::LayerInfo> for Descriptor {
    fn from(layer: &crate::layer::LayerInfo) -> Descriptor {
        Descriptor::new(layer.media_type.clone(), layer.digest.clone(), layer.size)
    }
}

/// An image manifest (OCI or Docker schema2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    #[serde(rename = "mediaType", default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(
        rename = "artifactType",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub artifact_type: Option<String>,
    pub config: Descriptor,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// An image index (OCI) or manifest list (Docker schema2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Index {
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    #[serde(rename = "mediaType", default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(
        rename = "artifactType",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub artifact_type: Option<String>,
    pub manifests: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// Why manifest bytes could not be parsed.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("invalid manifest JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("unsupported manifest media type {0:?}")]
    UnsupportedMediaType(String),
    #[error("unsupported manifest schemaVersion {0} (only 2 is supported)")]
    UnsupportedSchema(u64),
}

/// A parsed manifest-or-index.
#[derive(Debug, Clone, PartialEq, Eq)]
// Values are short-lived (one per parsed blob); boxing would only make matching clumsier.
#[allow(clippy::large_enum_variant)]
pub enum ManifestOrIndex {
    Manifest(Manifest),
    Index(Index),
}

impl ManifestOrIndex {
    /// Parses manifest bytes. The kind comes from `content_type` (e.g. an HTTP Content-Type),
    /// else the JSON's `mediaType`, else its shape (`manifests` => index, otherwise manifest).
    pub fn parse(
        bytes: &[u8],
        content_type: Option<&str>,
    ) -> Result<ManifestOrIndex, ManifestError> {
        let value: serde_json::Value = serde_json::from_slice(bytes)?;
        let schema = value
            .get("schemaVersion")
            .and_then(|v| v.as_u64())
            .unwrap_or(0);
        if schema != 2 {
            return Err(ManifestError::UnsupportedSchema(schema));
        }
        let declared = value.get("mediaType").and_then(|v| v.as_str());
        let media_type = content_type
            .filter(|t| media_types::is_image_manifest(t) || media_types::is_index(t))
            .or(declared);
        let is_index = match media_type {
            Some(t) if media_types::is_index(t) => true,
            Some(t) if media_types::is_image_manifest(t) => false,
            Some(t) => return Err(ManifestError::UnsupportedMediaType(t.to_string())),
            None => value.get("manifests").is_some(),
        };
        Ok(if is_index {
            ManifestOrIndex::Index(serde_json::from_value(value)?)
        } else {
            ManifestOrIndex::Manifest(serde_json::from_value(value)?)
        })
    }

    /// The media type to serve these bytes with.
    pub fn media_type(&self) -> &str {
        match self {
            ManifestOrIndex::Manifest(m) => m.media_type.as_deref().unwrap_or(OCI_MANIFEST),
            ManifestOrIndex::Index(i) => i.media_type.as_deref().unwrap_or(OCI_INDEX),
        }
    }
}

impl Manifest {
    /// A new OCI image manifest.
    pub fn new_oci(config: Descriptor, layers: Vec<Descriptor>) -> Manifest {
        Manifest {
            schema_version: 2,
            media_type: Some(OCI_MANIFEST.to_string()),
            artifact_type: None,
            config,
            layers,
            subject: None,
            annotations: BTreeMap::new(),
            extra: BTreeMap::new(),
        }
    }

    /// Canonical bytes: compact JSON in field order.
    pub fn to_json(&self) -> Vec<u8> {
        // Cannot fail: string keys, JSON values only.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

impl Index {
    /// The entry for `wanted` (see [`Platform::matches`]): among matching entries, one with
    /// exactly the wanted variant wins, else the first.
    pub fn select(&self, wanted: &Platform) -> Option<&Descriptor> {
        let matching = || {
            self.manifests
                .iter()
                .filter(|d| d.platform.as_ref().is_some_and(|p| wanted.matches(p)))
        };
        matching()
            .find(|d| {
                d.platform.as_ref().and_then(|p| p.variant.as_ref()) == wanted.variant.as_ref()
            })
            .or_else(|| matching().next())
    }

    /// Canonical bytes: compact JSON in field order.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:3defc1fcf590a90021a69aaa43a98c70cca910efa34134e1496d9a9112618911";

    #[test]
    fn parses_docker_schema2_and_oci_manifests() {
        let docker = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","config":{{"mediaType":"{DOCKER_CONFIG}","size":10,"digest":"{DIGEST}"}},"layers":[{{"mediaType":"{DOCKER_LAYER_GZIP}","size":20,"digest":"{DIGEST}"}}]}}"#
        );
        let ManifestOrIndex::Manifest(m) = ManifestOrIndex::parse(docker.as_bytes(), None).unwrap()
        else {
            panic!("expected a manifest");
        };
        assert_eq!(m.layers[0].size, 20);
        assert_eq!(m.media_type.as_deref(), Some(DOCKER_MANIFEST));

        let oci_no_media_type = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"{OCI_CONFIG}","size":1,"digest":"{DIGEST}"}},"layers":[],"annotations":{{"b":"2","a":"1"}}}}"#
        );
        let parsed =
            ManifestOrIndex::parse(oci_no_media_type.as_bytes(), Some(OCI_MANIFEST)).unwrap();
        let ManifestOrIndex::Manifest(m) = parsed else {
            panic!()
        };
        assert_eq!(
            String::from_utf8(m.to_json()).unwrap(),
            format!(
                r#"{{"schemaVersion":2,"config":{{"mediaType":"{OCI_CONFIG}","digest":"{DIGEST}","size":1}},"layers":[],"annotations":{{"a":"1","b":"2"}}}}"#
            )
        );
    }

    #[test]
    fn parses_indexes_and_selects_a_platform() {
        let list = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST_LIST}","manifests":[{{"mediaType":"{DOCKER_MANIFEST}","size":1,"digest":"{DIGEST}","platform":{{"architecture":"arm","os":"linux","variant":"v7"}}}},{{"mediaType":"{DOCKER_MANIFEST}","size":2,"digest":"{DIGEST}","platform":{{"architecture":"amd64","os":"linux"}}}}]}}"#
        );
        let ManifestOrIndex::Index(index) = ManifestOrIndex::parse(list.as_bytes(), None).unwrap()
        else {
            panic!("expected an index");
        };
        let select = |p: &str| index.select(&Platform::parse(p).unwrap()).map(|d| d.size);
        assert_eq!(select("linux/amd64"), Some(2));
        assert_eq!(select("linux/arm/v7"), Some(1));
        assert_eq!(select("linux/arm"), Some(1));
        assert_eq!(select("linux/arm/v6"), None);
        // Shape decides when no media type is given.
        let bare = r#"{"schemaVersion":2,"manifests":[]}"#;
        assert!(matches!(
            ManifestOrIndex::parse(bare.as_bytes(), None).unwrap(),
            ManifestOrIndex::Index(_)
        ));
    }

    #[test]
    fn rejects_schema1_unknown_types_and_garbage() {
        assert!(matches!(
            ManifestOrIndex::parse(br#"{"schemaVersion":1,"fsLayers":[]}"#, None),
            Err(ManifestError::UnsupportedSchema(1))
        ));
        assert!(matches!(
            ManifestOrIndex::parse(br#"{"schemaVersion":2,"mediaType":"text/plain"}"#, None),
            Err(ManifestError::UnsupportedMediaType(_))
        ));
        assert!(matches!(
            ManifestOrIndex::parse(b"{", None),
            Err(ManifestError::Json(_))
        ));
        assert!(matches!(
            ManifestOrIndex::parse(
                br#"{"schemaVersion":2,"config":{"mediaType":"x","digest":"sha256:bad","size":1}}"#,
                None
            ),
            Err(ManifestError::Json(_))
        ));
    }
}

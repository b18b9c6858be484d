//! Manifest inspection for the registry: which media type a pushed manifest has, which blobs
//! and child manifests it references, and its subject (for the referrers API). Manifests are
//! stored byte-exact; this module only reads them.

use crate::digest::Digest;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// Media types of manifests this registry accepts.
pub const SUPPORTED_MANIFEST_TYPES: [&str; 4] = [
    OCI_MANIFEST,
    OCI_INDEX,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
];

/// A reference from a manifest to content that must already be in the repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentReference {
    pub digest: Digest,
    pub size: u64,
    /// Whether the target is a manifest (from an index) rather than a blob.
    pub is_manifest: bool,
}

/// What the registry needs to know about a pushed manifest.
#[derive(Debug, Clone)]
pub struct ManifestInfo {
    pub media_type: String,
    pub references: Vec<ContentReference>,
    pub subject: Option<Digest>,
    /// `artifactType`, or for an image manifest without it, the config media type.
    pub artifact_type: Option<String>,
    pub annotations: Option<serde_json::Value>,
}

/// Why a manifest was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    #[error("manifest is not valid JSON: {0}")]
    NotJson(String),
    #[error(
        "manifest media type {0:?} is not supported (supported: OCI image manifest and index, Docker schema2 manifest and manifest list)"
    )]
    UnsupportedMediaType(String),
    #[error("Content-Type {content_type:?} does not match the manifest's mediaType {in_body:?}")]
    MediaTypeMismatch {
        content_type: String,
        in_body: String,
    },
    #[error("manifest has no media type: set Content-Type or the mediaType field")]
    NoMediaType,
    #[error("invalid descriptor at {at}: {detail}")]
    BadDescriptor { at: String, detail: String },
    #[error("schemaVersion must be 2")]
    BadSchemaVersion,
}

/// Strips parameters (`; charset=...`) and whitespace from a Content-Type value.
pub fn bare_media_type(content_type: &str) -> &str {
    content_type.split(';').next().unwrap_or("").trim()
}

/// Parses a descriptor object at JSON location `at`.
fn descriptor(
    value: &serde_json::Value,
    at: &str,
    is_manifest: bool,
) -> Result<ContentReference, ManifestError> {
    let bad = |detail: &str| ManifestError::BadDescriptor {
        at: at.to_string(),
        detail: detail.to_string(),
    };
    let digest_text = value
        .get("digest")
        .and_then(|d| d.as_str())
        .ok_or_else(|| bad("missing digest"))?;
    let digest = Digest::parse(digest_text).map_err(|e| bad(&e.to_string()))?;
    let size = value
        .get("size")
        .and_then(|s| s.as_u64())
        .ok_or_else(|| bad("missing or negative size"))?;
    if value.get("mediaType").is_some_and(|m| !m.is_string()) {
        return Err(bad("mediaType must be a string"));
    }
    Ok(ContentReference {
        digest,
        size,
        is_manifest,
    })
}

/// Inspects manifest `bytes` pushed with `content_type` (the request's Content-Type, if any).
pub fn inspect(bytes: &[u8], content_type: Option<&str>) -> Result<ManifestInfo, ManifestError> {
    let json: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| ManifestError::NotJson(e.to_string()))?;
    if !json.is_object() {
        return Err(ManifestError::NotJson("top level is not an object".into()));
    }
    let in_body = json.get("mediaType").and_then(|m| m.as_str());
    let content_type = content_type.map(bare_media_type).filter(|c| !c.is_empty());
    let media_type = match (content_type, in_body) {
        (Some(header), Some(body)) if header != body => {
            return Err(ManifestError::MediaTypeMismatch {
                content_type: header.to_string(),
                in_body: body.to_string(),
            });
        }
        (_, Some(body)) => body,
        (Some(header), None) => header,
        (None, None) => return Err(ManifestError::NoMediaType),
    };
    if !SUPPORTED_MANIFEST_TYPES.contains(&media_type) {
        return Err(ManifestError::UnsupportedMediaType(media_type.to_string()));
    }
    if json.get("schemaVersion").and_then(|v| v.as_u64()) != Some(2) {
        return Err(ManifestError::BadSchemaVersion);
    }

    let mut references = Vec::new();
    let is_index = media_type == OCI_INDEX || media_type == DOCKER_MANIFEST_LIST;
    if is_index {
        let manifests = json
            .get("manifests")
            .and_then(|m| m.as_array())
            .ok_or_else(|| ManifestError::BadDescriptor {
                at: "manifests".into(),
                detail: "an index needs a manifests array".into(),
            })?;
        for (i, child) in manifests.iter().enumerate() {
            references.push(descriptor(child, &format!("manifests[{i}]"), true)?);
        }
    } else {
        let config = json
            .get("config")
            .ok_or_else(|| ManifestError::BadDescriptor {
                at: "config".into(),
                detail: "an image manifest needs a config descriptor".into(),
            })?;
        references.push(descriptor(config, "config", false)?);
        let layers = json
            .get("layers")
            .and_then(|l| l.as_array())
            .ok_or_else(|| ManifestError::BadDescriptor {
                at: "layers".into(),
                detail: "an image manifest needs a layers array".into(),
            })?;
        for (i, layer) in layers.iter().enumerate() {
            // Foreign (non-distributable) layers live elsewhere, at their `urls`.
            if layer
                .get("urls")
                .is_some_and(|u| u.as_array().is_some_and(|a| !a.is_empty()))
            {
                continue;
            }
            references.push(descriptor(layer, &format!("layers[{i}]"), false)?);
        }
    }

    let subject = match json.get("subject") {
        None | Some(serde_json::Value::Null) => None,
        Some(subject) => Some(descriptor(subject, "subject", true)?.digest),
    };
    let artifact_type = json
        .get("artifactType")
        .and_then(|a| a.as_str())
        .or_else(|| {
            (!is_index)
                .then(|| json.pointer("/config/mediaType").and_then(|m| m.as_str()))
                .flatten()
        })
        .map(str::to_string);
    let annotations = json.get("annotations").filter(|a| a.is_object()).cloned();
    Ok(ManifestInfo {
        media_type: media_type.to_string(),
        references,
        subject,
        artifact_type,
        annotations,
    })
}

/// Whether a response of `media_type` satisfies the request's Accept header values.
/// No Accept header accepts anything.
pub fn accepts(accept_values: &[&str], media_type: &str) -> bool {
    if accept_values.is_empty() {
        return true;
    }
    accept_values
        .iter()
        .flat_map(|value| value.split(','))
        .map(bare_media_type)
        .any(|accepted| accepted == media_type || accepted == "*/*" || accepted == "application/*")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(byte: &str) -> String {
        format!("sha256:{}", byte.repeat(64))
    }

    #[test]
    fn inspects_image_manifest_with_subject() {
        let body = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": "application/vnd.example.sbom",
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": digest("a"), "size": 2},
            "layers": [
                {"mediaType": "x", "digest": digest("b"), "size": 5},
                {"mediaType": "x", "digest": digest("c"), "size": 5, "urls": ["http://example.invalid/"]}
            ],
            "subject": {"mediaType": OCI_MANIFEST, "digest": digest("d"), "size": 9},
            "annotations": {"k": "v"}
        });
        let info = inspect(body.to_string().as_bytes(), None).unwrap();
        assert_eq!(info.media_type, OCI_MANIFEST);
        assert_eq!(
            info.references.len(),
            2,
            "the foreign layer is not required"
        );
        assert_eq!(info.subject.unwrap().to_string(), digest("d"));
        assert_eq!(
            info.artifact_type.as_deref(),
            Some("application/vnd.example.sbom")
        );
    }

    #[test]
    fn refuses_mismatched_or_unsupported_media_types() {
        let body = serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []});
        let text = body.to_string();
        assert!(matches!(
            inspect(text.as_bytes(), Some(OCI_MANIFEST)),
            Err(ManifestError::MediaTypeMismatch { .. })
        ));
        assert!(inspect(text.as_bytes(), Some(OCI_INDEX)).is_ok());
        let bare = serde_json::json!({"schemaVersion": 2, "manifests": []}).to_string();
        assert!(matches!(
            inspect(bare.as_bytes(), Some("application/json")),
            Err(ManifestError::UnsupportedMediaType(_))
        ));
        assert!(matches!(
            inspect(b"{", None),
            Err(ManifestError::NotJson(_))
        ));
    }

    #[test]
    fn accept_negotiation() {
        assert!(accepts(&[], OCI_INDEX));
        assert!(accepts(
            &[&format!("{OCI_MANIFEST}, {OCI_INDEX};q=0.5")],
            OCI_INDEX
        ));
        assert!(!accepts(&[DOCKER_MANIFEST], OCI_INDEX));
        assert!(accepts(&["*/*"], OCI_INDEX));
    }
}

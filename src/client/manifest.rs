//! Manifests as the client reads them: parsing fetched or stored bytes into the image module's
//! types (with errors naming the manifest), platform selection from an index, and OCI <->
//! Docker schema2 media-type rewriting. Manifests travel as their raw bytes; parsing is only
//! for reading what they reference.

use super::error::RegistryError;
use crate::image::Platform;
use crate::image::manifest::{Descriptor, Index, Manifest, ManifestOrIndex, media_types};

/// Parses index bytes (`media_type` as served or stored); `what` names the index in errors.
pub fn parse_index(bytes: &[u8], media_type: &str, what: &str) -> Result<Index, RegistryError> {
    match parse(bytes, Some(media_type), what)? {
        ManifestOrIndex::Index(index) => Ok(index),
        ManifestOrIndex::Manifest(_) => {
            Err(bad_manifest(what, "it is an image manifest, not an index"))
        }
    }
}

/// Parses image manifest bytes; `what` names the manifest in errors.
pub fn parse_image_manifest(
    bytes: &[u8],
    media_type: &str,
    what: &str,
) -> Result<Manifest, RegistryError> {
    match parse(bytes, Some(media_type), what)? {
        ManifestOrIndex::Manifest(manifest) => Ok(manifest),
        ManifestOrIndex::Index(_) => {
            Err(bad_manifest(what, "it is an index, not an image manifest"))
        }
    }
}

/// Parses manifest or index bytes; the kind comes from `media_type` when it names one, else
/// from the JSON's own `mediaType` or shape.
pub fn parse(
    bytes: &[u8],
    media_type: Option<&str>,
    what: &str,
) -> Result<ManifestOrIndex, RegistryError> {
    ManifestOrIndex::parse(bytes, media_type).map_err(|e| bad_manifest(what, &e.to_string()))
}

fn bad_manifest(what: &str, reason: &str) -> RegistryError {
    RegistryError::BadManifest {
        what: what.to_string(),
        reason: reason.to_string(),
    }
}

/// Config then layers: every blob an image manifest references.
pub fn image_blobs(manifest: &Manifest) -> Vec<Descriptor> {
    std::iter::once(&manifest.config)
        .chain(&manifest.layers)
        .cloned()
        .collect()
}

/// Picks the index entry for `wanted` (see [`Index::select`]); the error lists what the index
/// offers.
pub fn select_platform<'a>(
    index: &'a Index,
    wanted: &Platform,
    what: &str,
) -> Result<&'a Descriptor, RegistryError> {
    if let Some(chosen) = index.select(wanted) {
        return Ok(chosen);
    }
    let available: Vec<String> = index
        .manifests
        .iter()
        .filter_map(|d| d.platform.as_ref())
        .map(Platform::to_string)
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

    fn index_json(entries: &[(&str, &str, Option<&str>, char)]) -> Index {
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
        parse_index(json.to_string().as_bytes(), media_types::OCI_INDEX, "test").unwrap()
    }

    #[test]
    fn parse_helpers_check_the_kind_and_name_the_manifest() {
        let index = br#"{"schemaVersion":2,"manifests":[]}"#;
        let err = parse_image_manifest(index, "", "manifest X")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("manifest X") && err.contains("an index"),
            "{err}"
        );
        let err = parse_index(b"{", media_types::OCI_INDEX, "index Y")
            .unwrap_err()
            .to_string();
        assert!(err.contains("index Y"), "{err}");
        let manifest = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"{}","digest":"sha256:{}","size":2}},"layers":[{{"mediaType":"{}","digest":"sha256:{}","size":3}}]}}"#,
            media_types::OCI_CONFIG,
            "a".repeat(64),
            media_types::OCI_LAYER_GZIP,
            "b".repeat(64)
        );
        let parsed =
            parse_image_manifest(manifest.as_bytes(), media_types::OCI_MANIFEST, "m").unwrap();
        let sizes: Vec<u64> = image_blobs(&parsed).iter().map(|d| d.size).collect();
        assert_eq!(sizes, vec![2, 3], "config first, then layers");
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

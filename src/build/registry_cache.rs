//! The build cache shared through a registry (`--cache-to` / `--cache-from type=registry`).
//!
//! A cache is an OCI image manifest whose `artifactType` is [`CACHE_ARTIFACT_TYPE`]; its config
//! blob ([`CACHE_CONFIG_MEDIA_TYPE`]) lists step records (step key -> layer descriptor, chain id,
//! `created`; not the inputs, which may hold build-arg values) and its layers are those
//! records' layer blobs. Keys are content hashes (see `cache.rs`), so a record made on one
//! machine matches the same step on another.
//! Importing fetches only the manifest and the config; a layer is downloaded (and verified)
//! only when a build actually hits its step.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;

use super::cache::StepRecord;
use super::plan::{Base, Plan};
use crate::client::{ConnectionOptions, PushOptions, RegistryClient, RegistryError};
use crate::digest::Digest;
use crate::image::manifest::{Descriptor, Manifest, media_types};
use crate::reference::Reference;
use crate::store::Store;

/// `artifactType` of a cache manifest.
pub const CACHE_ARTIFACT_TYPE: &str = "application/vnd.imgbuild.cache.v1+json";
/// Media type of a cache manifest's config blob (the step records).
pub const CACHE_CONFIG_MEDIA_TYPE: &str = "application/vnd.imgbuild.cache.config.v1+json";
/// Largest cache config accepted from a registry.
const MAX_CONFIG_BYTES: u64 = 64 * 1024 * 1024;

/// Which steps `--cache-to` exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CacheMode {
    /// Only the steps of the target stage and the stages it is based on (`FROM stage`).
    #[default]
    Min,
    /// The steps of every stage built.
    Max,
}

/// A parsed `--cache-to type=registry,ref=R[,mode=min|max]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheExport {
    pub reference: Reference,
    pub mode: CacheMode,
}

/// A `--cache-to` / `--cache-from` value that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("invalid {flag} {value:?}: {reason}")]
pub struct CacheOptionError {
    pub flag: &'static str,
    pub value: String,
    pub reason: String,
}

fn invalid(flag: &'static str, value: &str, reason: impl Into<String>) -> CacheOptionError {
    CacheOptionError {
        flag,
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// Splits `type=registry,ref=R,...` into fields; checks the type and that `ref` is a reference.
fn parse_fields(
    flag: &'static str,
    value: &str,
    allowed: &[&str],
) -> Result<(Reference, BTreeMap<String, String>), CacheOptionError> {
    let mut fields = BTreeMap::new();
    for field in value.split(',') {
        let Some((name, field_value)) = field.split_once('=') else {
            return Err(invalid(
                flag,
                value,
                format!("expected NAME=VALUE, got {field:?}"),
            ));
        };
        if name != "type" && name != "ref" && !allowed.contains(&name) {
            return Err(invalid(flag, value, format!("unknown field {name:?}")));
        }
        fields.insert(name.to_string(), field_value.to_string());
    }
    match fields.get("type").map(String::as_str) {
        Some("registry") => {}
        Some(other) => {
            return Err(invalid(
                flag,
                value,
                format!("unsupported type {other:?} (only type=registry)"),
            ));
        }
        None => return Err(invalid(flag, value, "missing type=registry")),
    }
    let Some(reference) = fields.get("ref") else {
        return Err(invalid(flag, value, "missing ref=REFERENCE"));
    };
    let reference = Reference::parse(reference)
        .map_err(|e| invalid(flag, value, format!("bad ref: {e}")))?
        .with_default_tag();
    Ok((reference, fields))
}

/// Parses a `--cache-to` value.
pub fn parse_cache_to(value: &str) -> Result<CacheExport, CacheOptionError> {
    let (reference, fields) = parse_fields("--cache-to", value, &["mode"])?;
    let mode = match fields.get("mode").map(String::as_str) {
        None | Some("min") => CacheMode::Min,
        Some("max") => CacheMode::Max,
        Some(other) => {
            return Err(invalid(
                "--cache-to",
                value,
                format!("unsupported mode {other:?} (min or max)"),
            ));
        }
    };
    Ok(CacheExport { reference, mode })
}

/// Parses a `--cache-from` value.
pub fn parse_cache_from(value: &str) -> Result<Reference, CacheOptionError> {
    Ok(parse_fields("--cache-from", value, &[])?.0)
}

/// The stages whose layers end up in the image: the target and the stages it is based on.
pub(crate) fn final_image_stages(plan: &Plan) -> BTreeSet<usize> {
    let mut stages = BTreeSet::new();
    let mut next = plan.order.last().copied();
    while let Some(index) = next {
        if !stages.insert(index) {
            break;
        }
        next = match plan.bases.get(index) {
            Some(Base::Stage(parent)) => Some(*parent),
            _ => None,
        };
    }
    stages
}

/// The config blob of a cache manifest.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct CacheConfig {
    pub records: Vec<StepRecord>,
}

/// Why importing, downloading from or exporting a registry cache failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryCacheError {
    #[error("cache {reference}: {source}")]
    Registry {
        reference: String,
        #[source]
        source: RegistryError,
    },
    #[error("cache {reference}: {reason}")]
    Invalid { reference: String, reason: String },
    #[error("cache {reference}: {source}")]
    Store {
        reference: String,
        #[source]
        source: crate::store::StoreError,
    },
    #[error("cache {reference}: {source}")]
    Push {
        reference: String,
        #[source]
        source: crate::client::ClientError,
    },
}

/// Records imported with `--cache-from`, and what this build used (for `--cache-to`).
#[derive(Default)]
pub(crate) struct RemoteCache {
    /// Step key -> (record, the cache it came from).
    imported: HashMap<Digest, (StepRecord, Reference)>,
    /// (stage index, record) of every keyed step of this build, in order.
    used: Mutex<Vec<(usize, StepRecord)>>,
}

impl RemoteCache {
    /// The imported record of `key`, with the cache it came from.
    pub fn imported(&self, key: &Digest) -> Option<&(StepRecord, Reference)> {
        self.imported.get(key)
    }

    /// Notes that stage `stage` produced or reused `record`.
    pub fn note_used(&self, stage: usize, record: &StepRecord) {
        if let Ok(mut used) = self.used.lock() {
            used.push((stage, record.clone()));
        }
    }

    /// The records used by the given stages (all when `stages` is None), first use of a key.
    pub fn used_records(&self, stages: Option<&BTreeSet<usize>>) -> Vec<StepRecord> {
        let Ok(used) = self.used.lock() else {
            return Vec::new();
        };
        let mut seen = BTreeSet::new();
        used.iter()
            .filter(|(stage, _)| stages.is_none_or(|s| s.contains(stage)))
            .filter(|(_, record)| seen.insert(record.key.clone()))
            .map(|(_, record)| record.clone())
            .collect()
    }

    /// Fetches the cache manifests and configs of `references` (earlier ones win on a
    /// shared key). A cache that cannot be read is returned as a warning, not an error.
    pub async fn import(
        references: &[Reference],
        connection: &ConnectionOptions,
    ) -> (RemoteCache, Vec<String>) {
        let mut cache = RemoteCache::default();
        let mut warnings = Vec::new();
        for reference in references {
            match fetch_config(reference, connection).await {
                Ok(config) => {
                    for record in config.records {
                        cache
                            .imported
                            .entry(record.key.clone())
                            .or_insert_with(|| (record, reference.clone()));
                    }
                }
                Err(e) => warnings.push(format!("warning: cannot import build {e}")),
            }
        }
        (cache, warnings)
    }
}

fn registry_error(reference: &Reference) -> impl FnOnce(RegistryError) -> RegistryCacheError {
    let reference = reference.familiar();
    move |source| RegistryCacheError::Registry { reference, source }
}

async fn fetch_config(
    reference: &Reference,
    connection: &ConnectionOptions,
) -> Result<CacheConfig, RegistryCacheError> {
    let client =
        RegistryClient::new(&reference.registry, connection).map_err(registry_error(reference))?;
    let fetched = client
        .get_manifest(&reference.repository, &reference.tag_or_digest())
        .await
        .map_err(registry_error(reference))?;
    let bad = |reason: String| RegistryCacheError::Invalid {
        reference: reference.familiar(),
        reason,
    };
    let manifest: Manifest = serde_json::from_slice(&fetched.bytes).map_err(|e| {
        bad(format!(
            "manifest {} is not an image manifest: {e}",
            fetched.digest
        ))
    })?;
    if manifest.config.media_type != CACHE_CONFIG_MEDIA_TYPE {
        return Err(bad(format!(
            "manifest {} is not an imgbuild cache (config media type {:?})",
            fetched.digest, manifest.config.media_type
        )));
    }
    if manifest.config.size > MAX_CONFIG_BYTES {
        return Err(bad(format!(
            "cache config {} is {} bytes, more than the {MAX_CONFIG_BYTES} accepted",
            manifest.config.digest, manifest.config.size
        )));
    }
    let mut bytes = Vec::new();
    client
        .download_blob(
            &reference.repository,
            &manifest.config.digest,
            Some(manifest.config.size),
            &mut bytes,
            &mut |_| {},
        )
        .await
        .map_err(registry_error(reference))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| bad(format!("cache config {}: {e}", manifest.config.digest)))
}

/// Downloads the layer `digest` of `source` into the store (verified), unless it is there.
pub(crate) async fn fetch_layer(
    store: &Store,
    source: &Reference,
    digest: &Digest,
    size: u64,
    connection: &ConnectionOptions,
) -> Result<(), RegistryCacheError> {
    if store.has_blob(digest) {
        return Ok(());
    }
    let store_error = |source_error| RegistryCacheError::Store {
        reference: source.familiar(),
        source: source_error,
    };
    let client =
        RegistryClient::new(&source.registry, connection).map_err(registry_error(source))?;
    let mut writer = store.blob_writer().map_err(store_error)?;
    client
        .download_blob(
            &source.repository,
            digest,
            Some(size),
            &mut writer,
            &mut |_| {},
        )
        .await
        .map_err(registry_error(source))?;
    writer.commit(Some(digest)).map_err(store_error)?;
    Ok(())
}

/// Writes a cache manifest for `records` into the store and pushes it (with the layers the
/// registry lacks) to `dest`. Returns the pushed manifest's digest.
pub(crate) async fn export(
    store: &Store,
    records: Vec<StepRecord>,
    dest: &Reference,
    connection: &ConnectionOptions,
) -> Result<Digest, RegistryCacheError> {
    let store_error = |source| RegistryCacheError::Store {
        reference: dest.familiar(),
        source,
    };
    let encode_error = |what: &str, e: serde_json::Error| RegistryCacheError::Invalid {
        reference: dest.familiar(),
        reason: format!("cannot encode the cache {what}: {e}"),
    };
    let mut layers: Vec<Descriptor> = Vec::new();
    let mut seen = BTreeSet::new();
    for layer in records.iter().filter_map(|r| r.layer.as_ref()) {
        if seen.insert(layer.digest.clone()) {
            layers.push(Descriptor::new(
                layer.media_type.clone(),
                layer.digest.clone(),
                layer.size,
            ));
        }
    }
    // A record's inputs hold build-arg and env values (maybe secrets) and only serve
    // `--explain-cache`: they stay on this machine.
    let records: Vec<StepRecord> = records
        .into_iter()
        .map(|record| StepRecord {
            inputs: Default::default(),
            ..record
        })
        .collect();
    let config =
        serde_json::to_vec(&CacheConfig { records }).map_err(|e| encode_error("config", e))?;
    let config_digest = store.put_blob_bytes(&config).map_err(store_error)?;
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(media_types::OCI_MANIFEST.to_string()),
        artifact_type: Some(CACHE_ARTIFACT_TYPE.to_string()),
        config: Descriptor::new(
            CACHE_CONFIG_MEDIA_TYPE.to_string(),
            config_digest,
            config.len() as u64,
        ),
        layers,
        subject: None,
        annotations: BTreeMap::new(),
        extra: BTreeMap::new(),
    };
    let manifest_bytes = serde_json::to_vec(&manifest).map_err(|e| encode_error("manifest", e))?;
    let manifest_digest = store.put_blob_bytes(&manifest_bytes).map_err(store_error)?;
    // Addressed by digest only, so push never mistakes it for a tagged image of the store.
    let local = Reference {
        registry: dest.registry.clone(),
        repository: dest.repository.clone(),
        tag: None,
        digest: Some(manifest_digest),
    };
    let options = PushOptions {
        connection: connection.clone(),
        ..Default::default()
    };
    let report = crate::client::push(store, &local, dest, &options, &crate::client::NoProgress)
        .await
        .map_err(|source| RegistryCacheError::Push {
            reference: dest.familiar(),
            source,
        })?;
    Ok(report.manifest_digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_flags_parse_and_bad_values_name_the_flag_and_value() {
        let export = parse_cache_to("type=registry,ref=127.0.0.1:5000/c/cache,mode=max").unwrap();
        assert_eq!(export.mode, CacheMode::Max);
        assert_eq!(export.reference.repository, "c/cache");
        assert_eq!(export.reference.tag.as_deref(), Some("latest"));
        let export = parse_cache_to("type=registry,ref=localhost:5000/c:t").unwrap();
        assert_eq!(export.mode, CacheMode::Min);
        let from = parse_cache_from("type=registry,ref=localhost:5000/c:t").unwrap();
        assert_eq!(from.tag.as_deref(), Some("t"));

        let err = parse_cache_to("type=foo,ref=x").unwrap_err().to_string();
        assert!(err.contains("--cache-to \"type=foo,ref=x\""), "{err}");
        assert!(err.contains("unsupported type \"foo\""), "{err}");
        let err = parse_cache_to("type=registry,ref=x,mode=all")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unsupported mode \"all\""), "{err}");
        let err = parse_cache_from("type=registry").unwrap_err().to_string();
        assert!(
            err.contains("--cache-from") && err.contains("missing ref"),
            "{err}"
        );
        let err = parse_cache_from("type=registry,ref=x,mode=max")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field \"mode\""), "{err}");
        let err = parse_cache_from("registry").unwrap_err().to_string();
        assert!(err.contains("expected NAME=VALUE"), "{err}");
    }
}

//! Pull against the real CNCF registry on 127.0.0.1:5000 (started by `scripts/test`): a first
//! pull stores the image, a second fetches nothing, errors are one clear line, and a
//! multi-arch index resolves to the requested platform, and a full disk fails cleanly.

mod common;

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use imgbuild::client::{
    ConnectionOptions, NoProgress, Platform, PullOptions, PullProgress, RegistryClient,
    media_types, pull,
};
use imgbuild::digest::Digest;
use imgbuild::reference::Reference;
use imgbuild::store::Store;

use common::peer_registry;

fn base_image() -> Reference {
    Reference::parse(&common::base_image()).unwrap()
}

/// Counts blob downloads reported through the progress callbacks.
#[derive(Default)]
struct CountingProgress {
    started: AtomicUsize,
    finished: AtomicUsize,
    present: AtomicUsize,
    resolved: Mutex<Option<Digest>>,
}

impl PullProgress for CountingProgress {
    fn resolved(&self, manifest_digest: &Digest, _blobs: usize) {
        *self.resolved.lock().unwrap() = Some(manifest_digest.clone());
    }
    fn blob_present(&self, _digest: &Digest, _size: u64) {
        self.present.fetch_add(1, Ordering::SeqCst);
    }
    fn blob_started(&self, _digest: &Digest, _size: u64) {
        self.started.fetch_add(1, Ordering::SeqCst);
    }
    fn blob_finished(&self, _digest: &Digest, _size: u64) {
        self.finished.fetch_add(1, Ordering::SeqCst);
    }
}

/// The manifest digest skopeo (an independent client) reports for `image`.
fn skopeo_digest(image: &str) -> String {
    let output = std::process::Command::new("skopeo")
        .args(["inspect", "--tls-verify=false", "--format", "{{.Digest}}"])
        .arg(format!("docker://{image}"))
        .output()
        .expect("skopeo must be installed: run scripts/test");
    assert!(
        output.status.success(),
        "skopeo inspect {image}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

#[tokio::test]
async fn pull_stores_the_image_and_a_second_pull_fetches_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let reference = base_image();

    let progress = CountingProgress::default();
    let pulled = pull(&store, &reference, &PullOptions::default(), &progress)
        .await
        .unwrap();
    assert_eq!(
        pulled.manifest_digest.to_string(),
        skopeo_digest(&reference.to_string())
    );
    assert!(
        pulled.blobs_fetched >= 2,
        "config and at least one layer are fetched"
    );
    assert!(pulled.bytes_fetched > 0);
    assert_eq!(
        progress.started.load(Ordering::SeqCst),
        pulled.blobs_fetched
    );
    assert_eq!(
        progress.finished.load(Ordering::SeqCst),
        pulled.blobs_fetched
    );
    assert_eq!(
        progress.resolved.lock().unwrap().as_ref(),
        Some(&pulled.manifest_digest)
    );

    // Everything the manifest names is in the store, and the tag points at the manifest.
    let manifest_bytes = store.read_blob(&pulled.manifest_digest).unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(&manifest_bytes).unwrap();
    assert!(store.has_blob(&pulled.config_digest));
    for layer in manifest["layers"].as_array().unwrap() {
        let digest = Digest::parse(layer["digest"].as_str().unwrap()).unwrap();
        assert!(
            store.read_blob(&digest).is_ok(),
            "layer {digest} stored and verifiable"
        );
    }
    let entry = store
        .get_ref(&reference.to_string())
        .unwrap()
        .expect("image is tagged");
    assert_eq!(entry.manifest_digest, pulled.manifest_digest);
    assert_eq!(entry.media_type, media_types::DOCKER_MANIFEST);
    assert_eq!(entry.size, manifest_bytes.len() as u64);
    let sources = std::fs::read_to_string(dir.path().join("client/blob-sources.json")).unwrap();
    assert!(sources.contains(&format!("{}/{}", reference.registry, reference.repository)));

    let again = CountingProgress::default();
    let second = pull(&store, &reference, &PullOptions::default(), &again)
        .await
        .unwrap();
    assert_eq!(second.manifest_digest, pulled.manifest_digest);
    assert_eq!(second.blobs_fetched, 0, "nothing is downloaded twice");
    assert_eq!(second.bytes_fetched, 0);
    assert_eq!(again.started.load(Ordering::SeqCst), 0);
    assert_eq!(
        again.present.load(Ordering::SeqCst),
        manifest["layers"].as_array().unwrap().len() + 1
    );
}

#[tokio::test]
async fn pull_of_unknown_tag_fails_clearly_and_tags_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut reference = base_image();
    reference.tag = Some("no-such-tag".to_string());
    let err = pull(&store, &reference, &PullOptions::default(), &NoProgress)
        .await
        .unwrap_err()
        .to_string();
    let expected = format!(
        "pull {familiar}: manifest {name}:no-such-tag not found in registry {registry}",
        familiar = reference.familiar(),
        name = reference.name(),
        registry = reference.registry,
    );
    assert_eq!(err, expected);
    assert!(store.list_refs().unwrap().is_empty());
}

#[tokio::test]
async fn pull_from_unreachable_registry_says_connection_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    // Nothing listens on this port: bind and drop a listener to find a free one.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let reference = Reference::parse(&format!("127.0.0.1:{port}/x:1")).unwrap();
    let err = pull(&store, &reference, &PullOptions::default(), &NoProgress)
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        format!(
            "pull 127.0.0.1:{port}/x:1: cannot connect to registry 127.0.0.1:{port}: connection refused"
        )
    );
}

/// Puts a two-platform Docker manifest list into a fresh repository of the peer registry:
/// linux/arm64 (a copy of the base image with a different config) first, then linux/amd64
/// (the base image itself). Returns (list reference, amd64 digest, arm64 digest).
async fn make_multi_arch_image(
    client: &RegistryClient,
    base: &Reference,
) -> (Reference, Digest, Digest) {
    let repository = format!("test/multiarch-{}", std::process::id());
    let base_manifest = client
        .get_manifest(&base.repository, &base.tag_or_digest())
        .await
        .unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(&base_manifest.bytes).unwrap();
    for layer in manifest["layers"].as_array().unwrap() {
        let digest = Digest::parse(layer["digest"].as_str().unwrap()).unwrap();
        client
            .mount_blob(&repository, &digest, &base.repository)
            .await
            .unwrap();
    }
    let config_digest = Digest::parse(manifest["config"]["digest"].as_str().unwrap()).unwrap();
    client
        .mount_blob(&repository, &config_digest, &base.repository)
        .await
        .unwrap();
    let amd64_digest = client
        .put_manifest(
            &repository,
            &base_manifest.digest.to_string(),
            &base_manifest.media_type,
            &base_manifest.bytes,
        )
        .await
        .unwrap();

    let arm_config = serde_json::json!({
        "architecture": "arm64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": []},
    })
    .to_string();
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("config.json");
    std::fs::write(&config_path, &arm_config).unwrap();
    let arm_config_digest = Digest::sha256_of(arm_config.as_bytes());
    client
        .upload_blob(
            &repository,
            &arm_config_digest,
            arm_config.len() as u64,
            &config_path,
            None,
            Default::default(),
            &mut |_| {},
        )
        .await
        .unwrap();
    let mut arm_manifest = manifest.clone();
    arm_manifest["config"]["digest"] = arm_config_digest.to_string().into();
    arm_manifest["config"]["size"] = arm_config.len().into();
    let arm_bytes = serde_json::to_vec(&arm_manifest).unwrap();
    let arm_digest = client
        .put_manifest(
            &repository,
            &Digest::sha256_of(&arm_bytes).to_string(),
            media_types::DOCKER_MANIFEST,
            &arm_bytes,
        )
        .await
        .unwrap();

    let list = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media_types::DOCKER_MANIFEST_LIST,
        "manifests": [
            {"mediaType": media_types::DOCKER_MANIFEST, "digest": arm_digest.to_string(), "size": arm_bytes.len(),
             "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
            {"mediaType": media_types::DOCKER_MANIFEST, "digest": amd64_digest.to_string(), "size": base_manifest.bytes.len(),
             "platform": {"os": "linux", "architecture": "amd64"}},
        ],
    });
    let list_bytes = serde_json::to_vec(&list).unwrap();
    client
        .put_manifest(
            &repository,
            "multi",
            media_types::DOCKER_MANIFEST_LIST,
            &list_bytes,
        )
        .await
        .unwrap();
    let reference = Reference::parse(&format!("{}/{repository}:multi", client.registry())).unwrap();
    (reference, amd64_digest, arm_digest)
}

#[tokio::test]
async fn pull_of_multi_arch_index_picks_the_requested_platform() {
    let base = base_image();
    assert_eq!(
        base.registry,
        peer_registry(),
        "the base image lives on the peer registry"
    );
    let client = RegistryClient::new(&base.registry, &ConnectionOptions::default()).unwrap();
    let (list, amd64, arm64) = make_multi_arch_image(&client, &base).await;

    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let host = pull(&store, &list, &PullOptions::default(), &NoProgress)
        .await
        .unwrap();
    assert_eq!(
        host.manifest_digest, amd64,
        "the host platform linux/amd64 is chosen"
    );
    assert_eq!(
        store
            .get_ref(&list.to_string())
            .unwrap()
            .unwrap()
            .manifest_digest,
        amd64
    );

    let arm_options = PullOptions {
        platform: Some(Platform::parse("linux/arm64").unwrap()),
        ..PullOptions::default()
    };
    let arm = pull(&store, &list, &arm_options, &NoProgress)
        .await
        .unwrap();
    assert_eq!(arm.manifest_digest, arm64);
    assert_eq!(
        arm.blobs_fetched, 1,
        "only the arm64 config is new; layers are shared"
    );

    let s390x = PullOptions {
        platform: Some(Platform::parse("linux/s390x").unwrap()),
        ..PullOptions::default()
    };
    let err = pull(&store, &list, &s390x, &NoProgress)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no image for platform linux/s390x")
            && err.contains("linux/arm64/v8, linux/amd64"),
        "{err}"
    );
}

/// Unmounts the test's tmpfs when dropped, whatever the test's outcome.
struct TmpfsMount(std::path::PathBuf);

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn pull_onto_a_full_disk_fails_in_one_line_and_leaves_no_partial_state() {
    let dir = common::temp_dir();
    let mount_point = dir.path().join("small-disk");
    std::fs::create_dir(&mount_point).unwrap();
    // Room for the config and the store's files, not for busybox's 1 MB layer.
    common::run(
        "mount",
        &[
            "-t",
            "tmpfs",
            "-o",
            "size=600k",
            "tmpfs",
            mount_point.to_str().unwrap(),
        ],
    );
    let _mount = TmpfsMount(mount_point.clone());
    let root = mount_point.join("store");
    let image = common::base_image();
    let stderr = common::fails(common::imgbuild(&root, &["pull", "-q", &image]));
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    assert!(
        lines[0].starts_with(&format!("error: pull {image}: write blob sha256:")),
        "{stderr}"
    );
    assert!(lines[0].contains("No space left on device"), "{stderr}");
    let store = Store::open(&root).unwrap();
    assert!(store.list_refs().unwrap().is_empty(), "nothing is tagged");
    let leftovers = std::fs::read_dir(root.join("tmp")).unwrap().count();
    assert_eq!(leftovers, 0, "no temp file is left behind");
}

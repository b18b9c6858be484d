//! Garbage collection, retention and tag immutability of `imgbuild serve` against the real
//! server: in-server periodic collection (checked through `/metrics`), `imgbuild registry gc`
//! run as a separate process while the server serves, and a stress test of concurrent pushes
//! sharing layers while collections with no grace period run in a loop.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::v2::V2Client;
use imgbuild::digest::Digest;
use imgbuild::registry::gc::retention::{ImmutableTags, Pattern};
use imgbuild::registry::gc::{self, GcPolicy};
use imgbuild::registry::storage::FilesystemStorage;
use imgbuild::registry::{RegistryConfig, RunningServer, spawn};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

struct Registry {
    server: RunningServer,
    v2: V2Client,
}

impl std::ops::Deref for Registry {
    type Target = V2Client;
    fn deref(&self) -> &V2Client {
        &self.v2
    }
}

/// An image as pushed: its manifest digest and every blob it references.
#[derive(Clone)]
struct Pushed {
    digest: Digest,
    manifest_len: u64,
    blobs: Vec<(Digest, u64)>,
}

impl Registry {
    async fn start(data: &Path, configure: impl FnOnce(&mut RegistryConfig)) -> Registry {
        let mut config = RegistryConfig::new("127.0.0.1:0".parse().unwrap(), data);
        configure(&mut config);
        let server = spawn(&config).await.unwrap();
        let v2 = V2Client::new(format!("http://{}", server.addr));
        Registry { server, v2 }
    }

    /// Pushes blobs then the manifest; pushes again when a collection removed a blob in
    /// between (MANIFEST_BLOB_UNKNOWN). Returns the image and how many retries it took.
    async fn push_image(
        &self,
        repo: &str,
        reference: &str,
        blobs: &[Vec<u8>],
        subject: Option<&Pushed>,
    ) -> (Pushed, u64) {
        let (config, layers) = blobs.split_first().unwrap();
        let descriptor = |bytes: &[u8], media_type: &str| json!({"mediaType": media_type, "digest": Digest::sha256_of(bytes).to_string(), "size": bytes.len()});
        let mut manifest = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor(config, "application/vnd.oci.image.config.v1+json"),
            "layers": layers.iter().map(|l| descriptor(l, "application/vnd.oci.image.layer.v1.tar")).collect::<Vec<_>>(),
        });
        if let Some(subject) = subject {
            manifest["subject"] = json!({"mediaType": OCI_MANIFEST, "digest": subject.digest.to_string(), "size": subject.manifest_len});
            manifest["artifactType"] = json!("application/vnd.example.signature");
        }
        let body = serde_json::to_vec(&manifest).unwrap();
        let mut retries = 0;
        loop {
            // Like real clients: HEAD first, upload only what is missing.
            for blob in blobs {
                let digest = Digest::sha256_of(blob);
                let head = self
                    .status(Method::HEAD, &format!("/v2/{repo}/blobs/{digest}"))
                    .await;
                if head != StatusCode::OK {
                    self.push_blob(repo, blob).await;
                }
            }
            let response = self
                .put_manifest(repo, reference, OCI_MANIFEST, &body)
                .await;
            if response.status() == StatusCode::CREATED {
                break;
            }
            let status = response.status();
            let text = response.text().await.unwrap();
            assert!(
                status == StatusCode::BAD_REQUEST && text.contains("MANIFEST_BLOB_UNKNOWN"),
                "manifest PUT failed with {status}: {text}"
            );
            retries += 1;
            assert!(
                retries < 200,
                "push of {repo}:{reference} never got through"
            );
        }
        let pushed = Pushed {
            digest: Digest::sha256_of(&body),
            manifest_len: body.len() as u64,
            blobs: blobs
                .iter()
                .map(|b| (Digest::sha256_of(b), b.len() as u64))
                .collect(),
        };
        (pushed, retries)
    }

    /// Pulls a manifest by tag or digest and every blob it references, verifying digests.
    async fn pull_and_verify(&self, repo: &str, reference: &str) -> Digest {
        let response = self
            .request(Method::GET, &format!("/v2/{repo}/manifests/{reference}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{repo}:{reference}");
        let bytes = response.bytes().await.unwrap();
        let manifest: Value = serde_json::from_slice(&bytes).unwrap();
        let mut descriptors: Vec<Value> =
            manifest["layers"].as_array().cloned().unwrap_or_default();
        if manifest.get("config").is_some() {
            descriptors.push(manifest["config"].clone());
        }
        for child in manifest["manifests"]
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            Box::pin(self.pull_and_verify(repo, child["digest"].as_str().unwrap())).await;
        }
        for descriptor in descriptors {
            let digest = descriptor["digest"].as_str().unwrap();
            let response = self
                .request(Method::GET, &format!("/v2/{repo}/blobs/{digest}"))
                .send()
                .await
                .unwrap();
            assert_eq!(
                response.status(),
                StatusCode::OK,
                "blob {digest} of {repo}:{reference}"
            );
            let blob = response.bytes().await.unwrap();
            assert_eq!(Digest::sha256_of(&blob).to_string(), digest, "corrupt blob");
        }
        Digest::sha256_of(&bytes)
    }

    async fn status(&self, method: Method, path: &str) -> StatusCode {
        self.request(method, path).send().await.unwrap().status()
    }

    async fn metric(&self, name: &str) -> u64 {
        let text = self
            .request(Method::GET, "/metrics")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|line| line.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("/metrics has no {name}:\n{text}"))
            .trim()
            .parse()
            .unwrap()
    }

    async fn tags(&self, repo: &str) -> Vec<String> {
        let body: Value = self
            .request(Method::GET, &format!("/v2/{repo}/tags/list"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        body["tags"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap().to_string())
            .collect()
    }
}

/// Deterministic pseudo-random bytes (xorshift), distinct per seed.
fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

fn blob_exists(data: &Path, digest: &Digest) -> bool {
    data.join("blobs")
        .join(digest.algorithm().name())
        .join(&digest.hex()[..2])
        .join(digest.hex())
        .exists()
}

/// Runs `imgbuild registry gc` as a separate process; returns stdout.
fn gc_command(args: &[&str]) -> String {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_imgbuild"))
        .args(["registry", "gc"])
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "imgbuild registry gc {args:?} failed:\n{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

fn files_under(dir: &Path) -> Vec<String> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push(path.display().to_string());
        }
    }
    files.sort();
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_lists_but_deletes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let registry = Registry::start(&data, |_| {}).await;
    let (image, _) = registry
        .push_image("team/app", "v1", &[bytes(1, 100), bytes(2, 5000)], None)
        .await;
    let stray = registry.push_blob("team/app", &bytes(3, 777)).await;
    let before = files_under(&data);
    let data_arg = data.to_str().unwrap();

    let out = gc_command(&["--data", data_arg, "--grace", "0s", "--dry-run"]);
    assert!(
        out.contains(&format!("would delete blob {stray} (777 bytes)")),
        "{out}"
    );
    assert!(!out.contains(&image.digest.to_string()), "{out}");
    assert!(
        out.contains("dry run, would reclaim: 0 tags, 0 manifests, 1 blobs (777 bytes)"),
        "{out}"
    );
    assert_eq!(
        files_under(&data),
        before,
        "a dry run changed the data directory"
    );

    // With the default grace period of an hour the stray blob is still too young.
    let out = gc_command(&["--data", data_arg]);
    assert!(
        out.contains("reclaimed: 0 tags, 0 manifests, 0 blobs"),
        "{out}"
    );
    assert!(blob_exists(&data, &stray));
    registry.server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_gc_after_deleting_a_manifest_reclaims_exactly_the_unshared_blobs() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Pushed and deleted with no collection running, so nothing of b can be taken mid-push.
    let registry = Registry::start(&data, |_| {}).await;
    let shared = bytes(10, 40_000);
    let (a, _) = registry
        .push_image(
            "team/a",
            "v1",
            &[bytes(11, 300), shared.clone(), bytes(12, 9_000)],
            None,
        )
        .await;
    let (b, _) = registry
        .push_image("team/b", "v1", &[bytes(13, 301), shared.clone()], None)
        .await;
    let response = registry
        .request(
            Method::DELETE,
            &format!("/v2/team/a/manifests/{}", a.digest),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let deleted_at = Instant::now();
    registry.server.stop().await.unwrap();
    let grace = Duration::from_secs(1);
    let registry = Registry::start(&data, |config| {
        config.gc_interval = Some(Duration::from_millis(200));
        config.gc.grace = grace;
    })
    .await;

    // Wait for two complete runs that started after the grace period ran out.
    tokio::time::sleep(grace + Duration::from_millis(300)).await;
    let runs = registry.metric("imgbuild_registry_gc_runs_total").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while registry.metric("imgbuild_registry_gc_runs_total").await < runs + 2 {
        assert!(
            Instant::now() < deadline,
            "periodic collection does not run"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(deleted_at.elapsed() > grace);

    let unshared: Vec<&(Digest, u64)> = a
        .blobs
        .iter()
        .filter(|(d, _)| *d != Digest::sha256_of(&shared))
        .collect();
    let expected_bytes = a.manifest_len + unshared.iter().map(|(_, size)| size).sum::<u64>();
    assert_eq!(
        registry
            .metric("imgbuild_registry_gc_bytes_reclaimed_total")
            .await,
        expected_bytes
    );
    assert_eq!(
        registry
            .metric("imgbuild_registry_gc_blobs_deleted_total")
            .await,
        unshared.len() as u64 + 1
    );
    for (digest, _) in unshared {
        assert!(!blob_exists(&data, digest), "{digest} should be collected");
    }
    assert!(!blob_exists(&data, &a.digest));
    assert_eq!(registry.pull_and_verify("team/b", "v1").await, b.digest);
    registry.server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_children_and_referrers_survive_untagged_retention() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let registry = Registry::start(&data, |_| {}).await;
    let repo = "multi/app";
    let (amd64, _) = registry
        .push_image(repo, "tmp-amd64", &[bytes(20, 200), bytes(21, 3000)], None)
        .await;
    let (arm64, _) = registry
        .push_image(repo, "tmp-arm64", &[bytes(22, 201), bytes(23, 3001)], None)
        .await;
    // The children are pushed by tag here only to be untagged: as an image builder does.
    for tag in ["tmp-amd64", "tmp-arm64"] {
        let status = registry
            .status(Method::DELETE, &format!("/v2/{repo}/manifests/{tag}"))
            .await;
        assert_eq!(status, StatusCode::ACCEPTED);
    }
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": amd64.digest.to_string(), "size": amd64.manifest_len, "platform": {"os": "linux", "architecture": "amd64"}},
            {"mediaType": OCI_MANIFEST, "digest": arm64.digest.to_string(), "size": arm64.manifest_len, "platform": {"os": "linux", "architecture": "arm64"}},
        ],
    }))
    .unwrap();
    let response = registry.put_manifest(repo, "v1", OCI_INDEX, &index).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    // An untagged signature of a child, and an untagged image nothing keeps.
    let (signature, _) = registry
        .push_image(repo, "sig", &[bytes(24, 2), bytes(25, 50)], Some(&amd64))
        .await;
    registry
        .status(Method::DELETE, &format!("/v2/{repo}/manifests/sig"))
        .await;
    let (orphan, _) = registry
        .push_image(repo, "old", &[bytes(26, 202), bytes(27, 4000)], None)
        .await;
    registry
        .status(Method::DELETE, &format!("/v2/{repo}/manifests/old"))
        .await;

    let config = dir.path().join("registry.toml");
    std::fs::write(
        &config,
        format!(
            "data = {:?}\n[gc]\ngrace = \"0s\"\n[[gc.retention]]\nrepository = \"multi/**\"\nuntagged_after = \"0s\"\n",
            data
        ),
    )
    .unwrap();
    let out = gc_command(&["--config", config.to_str().unwrap()]);
    assert!(
        out.contains(&format!("deleted manifest {repo}@{}", orphan.digest)),
        "{out}"
    );
    assert!(
        out.contains("reclaimed: 0 tags, 1 manifests, 3 blobs"),
        "{out}"
    );

    registry.pull_and_verify(repo, "v1").await;
    registry
        .pull_and_verify(repo, &signature.digest.to_string())
        .await;
    let referrers: Value = registry
        .request(
            Method::GET,
            &format!("/v2/{repo}/referrers/{}", amd64.digest),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        referrers["manifests"][0]["digest"],
        signature.digest.to_string()
    );
    let status = registry
        .status(
            Method::GET,
            &format!("/v2/{repo}/manifests/{}", orphan.digest),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    for (digest, _) in &orphan.blobs {
        assert!(!blob_exists(&data, digest));
    }
    registry.server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_uploads_expire() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let registry = Registry::start(&data, |_| {}).await;
    let response = registry
        .request(Method::POST, "/v2/up/blobs/uploads/")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let location = response.headers()["location"].to_str().unwrap().to_string();
    let response = registry
        .request(Method::PATCH, &location)
        .body(vec![1u8; 1000])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);

    let config = dir.path().join("registry.toml");
    std::fs::write(
        &config,
        format!("data = {data:?}\n[gc]\nupload_expiry = \"1s\"\n"),
    )
    .unwrap();
    let out = gc_command(&["--config", config.to_str().unwrap()]);
    assert!(
        out.contains(", 0 uploads"),
        "an active upload expired: {out}"
    );
    assert_eq!(
        registry.status(Method::GET, &location).await,
        StatusCode::NO_CONTENT
    );

    tokio::time::sleep(Duration::from_millis(1200)).await;
    let out = gc_command(&["--config", config.to_str().unwrap()]);
    assert!(out.contains("deleted abandoned upload"), "{out}");
    assert_eq!(
        registry.status(Method::GET, &location).await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        registry.metric("imgbuild_registry_upload_sessions").await,
        0
    );
    registry.server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_keeps_the_last_tags_and_deletes_old_untagged_manifests() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let registry = Registry::start(&data, |_| {}).await;
    let mut images = Vec::new();
    for n in 1..=4u64 {
        let (image, _) = registry
            .push_image(
                "keep/app",
                &format!("v{n}"),
                &[bytes(30 + n, 100), bytes(40 + n, 2000)],
                None,
            )
            .await;
        if n == 1 {
            // `latest` is not a v* tag: it keeps v1's manifest.
            registry
                .push_image(
                    "keep/app",
                    "latest",
                    &[bytes(31, 100), bytes(41, 2000)],
                    None,
                )
                .await;
        }
        images.push(image);
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    // Another repository without rules keeps everything.
    registry
        .push_image("other/app", "v1", &[bytes(50, 100), bytes(51, 100)], None)
        .await;

    let config = dir.path().join("registry.toml");
    std::fs::write(
        &config,
        format!(
            "data = {data:?}\n[gc]\ngrace = \"0s\"\n[[gc.retention]]\nrepository = \"keep/*\"\ntags = \"v*\"\nkeep_last = 2\n"
        ),
    )
    .unwrap();
    let out = gc_command(&["--config", config.to_str().unwrap()]);
    assert!(out.contains("deleted tag keep/app:v1"), "{out}");
    assert!(out.contains("deleted tag keep/app:v2"), "{out}");
    assert!(
        out.contains(&format!("deleted manifest keep/app@{}", images[1].digest)),
        "{out}"
    );
    assert_eq!(registry.tags("keep/app").await, ["latest", "v3", "v4"]);
    assert_eq!(
        registry.pull_and_verify("keep/app", "latest").await,
        images[0].digest
    );
    assert_eq!(
        registry.pull_and_verify("keep/app", "v3").await,
        images[2].digest
    );
    for (digest, _) in &images[1].blobs {
        assert!(!blob_exists(&data, digest), "v2's blobs are reclaimed");
    }
    assert_eq!(registry.tags("other/app").await, ["v1"]);

    // untagged_after: v1 loses its last tag, and goes once it is older than the limit.
    assert_eq!(
        registry
            .status(Method::DELETE, "/v2/keep/app/manifests/latest")
            .await,
        StatusCode::ACCEPTED
    );
    std::fs::write(
        &config,
        format!(
            "data = {data:?}\n[gc]\ngrace = \"0s\"\n[[gc.retention]]\nrepository = \"keep/*\"\nuntagged_after = \"1h\"\n"
        ),
    )
    .unwrap();
    let out = gc_command(&["--config", config.to_str().unwrap()]);
    assert!(
        out.contains("reclaimed: 0 tags, 0 manifests"),
        "too young: {out}"
    );
    std::fs::write(
        &config,
        format!(
            "data = {data:?}\n[gc]\ngrace = \"0s\"\n[[gc.retention]]\nrepository = \"keep/*\"\nuntagged_after = \"10ms\"\n"
        ),
    )
    .unwrap();
    let out = gc_command(&["--config", config.to_str().unwrap()]);
    assert!(
        out.contains(&format!("deleted manifest keep/app@{}", images[0].digest)),
        "{out}"
    );
    assert!(out.contains("reclaimed: 0 tags, 1 manifests"), "{out}");
    registry.pull_and_verify("keep/app", "v4").await;
    registry.server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn immutable_tags_cannot_move_or_be_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start(&dir.path().join("data"), |config| {
        config.gc.immutable = ImmutableTags {
            rules: vec![(Pattern::new("release/*"), Pattern::new("v*"))],
        };
    })
    .await;
    let (first, _) = registry
        .push_image("release/app", "v1", &[bytes(60, 10), bytes(61, 10)], None)
        .await;
    // The same content again is fine.
    registry
        .push_image("release/app", "v1", &[bytes(60, 10), bytes(61, 10)], None)
        .await;
    let other = json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": first.blobs[0].0.to_string(), "size": 10},
        "layers": [],
    });
    let other = serde_json::to_vec(&other).unwrap();
    for reference in ["v1", &format!("{}?tag=v1", Digest::sha256_of(&other))] {
        let response = registry
            .put_manifest("release/app", reference, OCI_MANIFEST, &other)
            .await;
        assert_eq!(response.status(), StatusCode::CONFLICT);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["errors"][0]["code"], "DENIED", "{body}");
    }
    assert_eq!(
        registry
            .status(Method::DELETE, "/v2/release/app/manifests/v1")
            .await,
        StatusCode::CONFLICT
    );
    assert_eq!(
        registry
            .status(
                Method::DELETE,
                &format!("/v2/release/app/manifests/{}", first.digest)
            )
            .await,
        StatusCode::CONFLICT
    );
    assert_eq!(
        registry.pull_and_verify("release/app", "v1").await,
        first.digest
    );
    // Tags no rule protects move freely.
    for tag in ["latest", "latest"] {
        let response = registry
            .put_manifest("release/app", tag, OCI_MANIFEST, &other)
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
    }
    let response = registry
        .put_manifest("other/app", "v1", OCI_MANIFEST, &other)
        .await;
    assert_eq!(
        response.status(),
        StatusCode::BAD_REQUEST,
        "its config blob is not in other/app"
    );
    registry.server.stop().await.unwrap();
}

/// Several pushers push images sharing layers (and delete some again) while an in-server
/// collection every 100 ms and a second collector on its own storage handle (like
/// `imgbuild registry gc` in another process, pausing 40 ms between runs) loop with no grace
/// period. With no grace a blob uploaded before a collection started may be taken before its
/// manifest arrives: the push then gets MANIFEST_BLOB_UNKNOWN and pushes again (counted).
/// Afterwards every tagged image pulls and verifies, also after one more collection.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stress_concurrent_pushes_sharing_layers_while_gc_loops() {
    const PUSHERS: u64 = 4;
    const IMAGES: u64 = 12;
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let policy = GcPolicy {
        grace: Duration::ZERO,
        upload_expiry: Duration::from_secs(3600),
        ..GcPolicy::default()
    };
    let registry = Arc::new(
        Registry::start(&data, |config| {
            config.gc_interval = Some(Duration::from_millis(100));
            config.gc = policy.clone();
        })
        .await,
    );
    let base_layer = bytes(1000, 256 * 1024);
    let tool_layer = bytes(1001, 64 * 1024);

    let stop = Arc::new(AtomicBool::new(false));
    let side_runs = Arc::new(AtomicU64::new(0));
    let side_bytes = Arc::new(AtomicU64::new(0));
    let collector = {
        let (stop, runs, reclaimed, data) = (
            stop.clone(),
            side_runs.clone(),
            side_bytes.clone(),
            data.clone(),
        );
        let policy = policy.clone();
        tokio::spawn(async move {
            let storage = FilesystemStorage::open(&data).unwrap();
            while !stop.load(Ordering::Relaxed) {
                let report = gc::collect(&storage, &policy, false).await.unwrap();
                runs.fetch_add(1, Ordering::Relaxed);
                reclaimed.fetch_add(report.bytes_reclaimed(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
        })
    };

    let mut pushers = Vec::new();
    for pusher in 0..PUSHERS {
        let registry = registry.clone();
        let (base_layer, tool_layer) = (base_layer.clone(), tool_layer.clone());
        pushers.push(tokio::spawn(async move {
            let repo = format!("stress/p{pusher}");
            let mut kept = Vec::new();
            let mut retries = 0;
            for image in 0..IMAGES {
                let seed = pusher * 1000 + image;
                let mut blobs = vec![bytes(seed * 7 + 1, 500), base_layer.clone()];
                if image % 2 == 0 {
                    blobs.push(tool_layer.clone());
                }
                blobs.push(bytes(seed * 7 + 2, 32 * 1024));
                let tag = format!("i{image}");
                let (pushed, n) = registry.push_image(&repo, &tag, &blobs, None).await;
                retries += n;
                if image % 3 == 2 {
                    // Deleting while others push: this image's own layers become garbage.
                    let status = registry
                        .status(
                            Method::DELETE,
                            &format!("/v2/{repo}/manifests/{}", pushed.digest),
                        )
                        .await;
                    assert_eq!(status, StatusCode::ACCEPTED);
                } else {
                    kept.push((repo.clone(), tag, pushed));
                }
            }
            (kept, retries)
        }));
    }
    let mut kept = Vec::new();
    let mut retries = 0;
    for pusher in pushers {
        let (images, n) = pusher.await.unwrap();
        kept.extend(images);
        retries += n;
    }
    stop.store(true, Ordering::Relaxed);
    collector.await.unwrap();

    for (repo, tag, pushed) in &kept {
        assert_eq!(registry.pull_and_verify(repo, tag).await, pushed.digest);
    }
    // One more full collection keeps every tagged image whole.
    let storage = FilesystemStorage::open(&data).unwrap();
    let last = gc::collect(&storage, &policy, false).await.unwrap();
    for (repo, tag, pushed) in &kept {
        assert_eq!(registry.pull_and_verify(repo, tag).await, pushed.digest);
    }
    // A real client agrees: skopeo copies (and verifies) one image of each pusher.
    let addr = registry.server.addr;
    for (repo, tag, _) in kept.iter().filter(|(_, tag, _)| tag == "i0") {
        let target = dir.path().join(format!("copy-{}", repo.replace('/', "-")));
        let output = tokio::process::Command::new("skopeo")
            .args(["copy", "--src-tls-verify=false"])
            .arg(format!("docker://{addr}/{repo}:{tag}"))
            .arg(format!("dir:{}", target.display()))
            .output()
            .await
            .unwrap_or_else(|e| panic!("cannot run skopeo (run scripts/test to install it): {e}"));
        assert!(
            output.status.success(),
            "skopeo copy of {repo}:{tag}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let server_runs = registry.metric("imgbuild_registry_gc_runs_total").await;
    let server_bytes = registry
        .metric("imgbuild_registry_gc_bytes_reclaimed_total")
        .await;
    let side = side_runs.load(Ordering::Relaxed);
    eprintln!(
        "stress: {} pushes ({} kept tagged), {retries} manifest retries after a collection took a blob, \
         {server_runs} in-server + {side} side collections reclaiming {} bytes, final run {} bytes, {:?}",
        PUSHERS * IMAGES,
        kept.len(),
        server_bytes + side_bytes.load(Ordering::Relaxed),
        last.bytes_reclaimed(),
        started.elapsed()
    );
    assert!(
        server_runs >= 3 && side >= 3,
        "collections did not run concurrently"
    );
    assert!(
        server_bytes + side_bytes.load(Ordering::Relaxed) + last.bytes_reclaimed() > 0,
        "deleted images' layers were never reclaimed"
    );
    assert_eq!(kept.len() as u64, PUSHERS * (IMAGES - IMAGES / 3));
    Arc::try_unwrap(registry)
        .ok()
        .unwrap()
        .server
        .stop()
        .await
        .unwrap();
}

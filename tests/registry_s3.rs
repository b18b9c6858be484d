//! Scale-out over S3: two `imgbuild serve` processes share one bucket of a 3-node Garage cluster
//! on loopback (started by `scripts/test` through `scripts/garage-cluster.sh`). Pushes through one
//! replica are pulled through the other, a chunked upload moves between replicas, pulls keep
//! working with a Garage node down, memory stays bounded for a 100 MiB blob, and blob GETs can
//! redirect to presigned URLs.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use imgbuild::digest::{Algorithm, Digest, Hasher};
use reqwest::StatusCode;

/// A required environment variable; fails the test with a pointer to `scripts/test` if missing.
fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run `scripts/test --test registry_s3` (it starts the Garage cluster)")
    })
}

/// A repository name no earlier run used (the bucket outlives test runs).
fn unique_repo(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("s3test/{prefix}-{nanos}-{}", std::process::id())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One `imgbuild serve` process on the shared bucket, killed on drop.
struct Replica {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Replica {
    /// Starts a replica talking to Garage node `node` (1-based), optionally redirecting blob GETs.
    async fn start(node: usize, redirect: bool) -> Replica {
        let endpoints = env("IMGBUILD_TEST_S3_ENDPOINTS");
        let endpoint = endpoints
            .split_whitespace()
            .nth(node - 1)
            .expect("IMGBUILD_TEST_S3_ENDPOINTS lists every node")
            .to_string();
        let dir = tempfile::tempdir().unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let config = format!(
            "addr = \"{addr}\"\ndata = \"{data}\"\n[storage]\ndriver = \"s3\"\nbucket = \"{bucket}\"\n\
             endpoint = \"{endpoint}\"\nregion = \"{region}\"\naccess_key_id = \"{key}\"\n\
             secret_access_key = \"{secret}\"\nallow_http = true\nredirect = {redirect}\n",
            data = dir.path().join("unused").display(),
            bucket = env("IMGBUILD_TEST_S3_BUCKET"),
            region = env("IMGBUILD_TEST_S3_REGION"),
            key = env("IMGBUILD_TEST_S3_ACCESS_KEY_ID"),
            secret = env("IMGBUILD_TEST_S3_SECRET_ACCESS_KEY"),
        );
        let config_path = dir.path().join("registry.toml");
        std::fs::write(&config_path, config).unwrap();
        let log = std::fs::File::create(dir.path().join("serve.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_imgbuild"))
            .arg("serve")
            .arg("--config")
            .arg(&config_path)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let replica = Replica {
            child,
            addr,
            _dir: dir,
        };
        replica.wait_ready().await;
        replica
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let client = reqwest::Client::new();
        while Instant::now() < deadline {
            if let Ok(response) = client.get(self.url("/healthz")).send().await
                && response.status() == StatusCode::OK
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("replica on {} did not become healthy", self.addr);
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Peak resident memory of the process, in bytes.
    fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .expect("VmHWM in /proc/<pid>/status");
        let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kib * 1024
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn skopeo_copy(from: &str, to: &str) {
    let output = Command::new("skopeo")
        .args([
            "copy",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            "--retry-times=2",
            from,
            to,
        ])
        .output()
        .expect("skopeo is installed (scripts/test installs it)");
    assert!(
        output.status.success(),
        "skopeo copy {from} {to}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

async fn manifest_digest(replica: &Replica, repo: &str, tag: &str) -> String {
    let response = reqwest::Client::new()
        .get(replica.url(&format!("/v2/{repo}/manifests/{tag}")))
        .header(
            "Accept",
            "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK, "manifest {repo}:{tag}");
    let bytes = response.bytes().await.unwrap();
    Digest::sha256_of(&bytes).to_string()
}

/// Pulls `repo:tag` from `replica` into a fresh `dir:` layout (skopeo verifies every digest);
/// returns the number of files pulled.
fn pull_into_dir(replica: &Replica, repo: &str, tag: &str) -> usize {
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("image");
    skopeo_copy(
        &format!("docker://{}/{repo}:{tag}", replica.addr),
        &format!("dir:{}", target.display()),
    );
    std::fs::read_dir(&target).unwrap().count()
}

/// Restarts a stopped Garage node when dropped, even if the test fails first.
struct StoppedNode {
    ctl: PathBuf,
    node: usize,
}

impl StoppedNode {
    fn stop(node: usize) -> StoppedNode {
        let ctl = PathBuf::from(env("IMGBUILD_TEST_GARAGE_CTL"));
        garage_ctl(&ctl, "stop-node", node);
        StoppedNode { ctl, node }
    }
}

impl Drop for StoppedNode {
    fn drop(&mut self) {
        garage_ctl(&self.ctl, "start-node", self.node);
    }
}

fn garage_ctl(ctl: &Path, action: &str, node: usize) {
    let status = Command::new(ctl)
        .arg(action)
        .arg(node.to_string())
        .status()
        .unwrap();
    assert!(status.success(), "{} {action} {node} failed", ctl.display());
}

#[tokio::test]
async fn push_through_one_replica_pull_through_the_other() {
    let base = env("IMGBUILD_TEST_BASE_IMAGE");
    let a = Replica::start(1, false).await;
    let b = Replica::start(2, false).await;
    let repo = unique_repo("push");
    skopeo_copy(
        &format!("docker://{base}"),
        &format!("docker://{}/{repo}:v1", a.addr),
    );
    assert_eq!(
        manifest_digest(&a, &repo, "v1").await,
        manifest_digest(&b, &repo, "v1").await
    );
    assert!(pull_into_dir(&b, &repo, "v1") >= 3);
    let tags: serde_json::Value = reqwest::get(b.url(&format!("/v2/{repo}/tags/list")))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(tags["tags"], serde_json::json!(["v1"]));
}

#[tokio::test]
async fn chunked_upload_started_on_one_replica_finishes_on_the_other() {
    let a = Replica::start(1, false).await;
    let b = Replica::start(2, false).await;
    let client = reqwest::Client::new();
    let repo = unique_repo("chunked");
    let first = vec![7u8; 1000];
    let second = b"the rest of the blob".to_vec();
    let digest = Digest::sha256_of(&[first.clone(), second.clone()].concat());

    let started = client
        .post(a.url(&format!("/v2/{repo}/blobs/uploads/")))
        .send()
        .await
        .unwrap();
    assert_eq!(started.status(), StatusCode::ACCEPTED);
    let location = started.headers()["location"].to_str().unwrap().to_string();
    let patched = client
        .patch(a.url(&location))
        .header("Content-Type", "application/octet-stream")
        .header("Content-Range", format!("0-{}", first.len() - 1))
        .body(first.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), StatusCode::ACCEPTED);
    let location = patched.headers()["location"].to_str().unwrap().to_string();

    // Replica B knows the session: its offset, and the next chunk.
    let status = client.get(b.url(&location)).send().await.unwrap();
    assert_eq!(status.status(), StatusCode::NO_CONTENT);
    assert_eq!(status.headers()["range"], "0-999");
    let patched = client
        .patch(b.url(&location))
        .header("Content-Type", "application/octet-stream")
        .header(
            "Content-Range",
            format!("{}-{}", first.len(), first.len() + second.len() - 1),
        )
        .body(second.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), StatusCode::ACCEPTED);
    let location = patched.headers()["location"].to_str().unwrap().to_string();
    let separator = if location.contains('?') { '&' } else { '?' };
    let finished = client
        .put(b.url(&format!("{location}{separator}digest={digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(finished.status(), StatusCode::CREATED);

    // Replica A serves the blob B completed.
    let blob = client
        .get(a.url(&format!("/v2/{repo}/blobs/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(blob.status(), StatusCode::OK);
    assert_eq!(blob.bytes().await.unwrap(), [first, second].concat());
}

#[tokio::test]
async fn pulls_and_pushes_keep_working_with_a_garage_node_down() {
    let base = env("IMGBUILD_TEST_BASE_IMAGE");
    let a = Replica::start(1, false).await;
    let b = Replica::start(2, false).await;
    let repo = unique_repo("outage");
    skopeo_copy(
        &format!("docker://{base}"),
        &format!("docker://{}/{repo}:v1", a.addr),
    );
    {
        let _down = StoppedNode::stop(3);
        assert!(pull_into_dir(&b, &repo, "v1") >= 3);
        // Writes need 2 of 3 nodes too: a push during the outage works.
        skopeo_copy(
            &format!("docker://{}/{repo}:v1", b.addr),
            &format!("docker://{}/{repo}:v2", a.addr),
        );
        assert_eq!(
            manifest_digest(&b, &repo, "v2").await,
            manifest_digest(&a, &repo, "v1").await
        );
    }
    // With the node back, everything is still served.
    assert!(pull_into_dir(&a, &repo, "v2") >= 3);
}

#[tokio::test]
async fn a_100_mib_upload_keeps_replica_memory_bounded() {
    const SIZE: usize = 100 * 1024 * 1024;
    const CHUNK: usize = 256 * 1024;
    let a = Replica::start(1, false).await;
    let b = Replica::start(2, false).await;
    let repo = unique_repo("big");
    // Content unique to this run, so the blob is really written (not found already stored).
    let salt = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let chunk_of = move |i: usize| -> Bytes {
        let mut chunk = vec![(i % 251) as u8; CHUNK];
        chunk[..8].copy_from_slice(&(i as u64).to_le_bytes());
        chunk[8..16].copy_from_slice(&salt.to_le_bytes());
        Bytes::from(chunk)
    };
    let mut hasher = Hasher::new(Algorithm::Sha256);
    for i in 0..SIZE / CHUNK {
        hasher.update(&chunk_of(i));
    }
    let digest = hasher.finish();

    {
        let client = reqwest::Client::new();
        let started = client
            .post(a.url(&format!("/v2/{repo}/blobs/uploads/")))
            .send()
            .await
            .unwrap();
        let location = started.headers()["location"].to_str().unwrap().to_string();
        let body = futures::stream::iter(
            (0..SIZE / CHUNK).map(move |i| Ok::<_, std::io::Error>(chunk_of(i))),
        );
        let patched = client
            .patch(a.url(&location))
            .header("Content-Type", "application/octet-stream")
            .body(reqwest::Body::wrap_stream(body))
            .send()
            .await
            .unwrap();
        assert_eq!(patched.status(), StatusCode::ACCEPTED);
        let location = patched.headers()["location"].to_str().unwrap().to_string();
        let separator = if location.contains('?') { '&' } else { '?' };
        let finished = client
            .put(b.url(&format!("{location}{separator}digest={digest}")))
            .send()
            .await
            .unwrap();
        assert_eq!(finished.status(), StatusCode::CREATED);
        let head = client
            .head(a.url(&format!("/v2/{repo}/blobs/{digest}")))
            .send()
            .await
            .unwrap();
        assert_eq!(head.headers()["content-length"], SIZE.to_string().as_str());
    }
    // Each replica handled 100 MiB (A received it, B assembled it) with a few 8 MiB parts in
    // memory at most.
    let limit = 80 * 1024 * 1024;
    for (name, replica) in [("receiving", &a), ("assembling", &b)] {
        let peak = replica.peak_rss();
        eprintln!("{name} replica peak RSS: {} MiB", peak / 1024 / 1024);
        assert!(
            peak < limit,
            "{name} replica peaked at {} MiB for a 100 MiB blob",
            peak / 1024 / 1024
        );
    }
    // Each run stores a new 100 MiB blob: remove it from the shared bucket.
    delete_object(&format!(
        "blobs/sha256/{}/{}",
        &digest.hex()[..2],
        digest.hex()
    ))
    .await;
}

/// Deletes one object of the test bucket directly (test cleanup).
async fn delete_object(key: &str) {
    use object_store::ObjectStoreExt as _;
    let bucket = object_store::aws::AmazonS3Builder::new()
        .with_endpoint(env("IMGBUILD_TEST_S3_ENDPOINT"))
        .with_region(env("IMGBUILD_TEST_S3_REGION"))
        .with_bucket_name(env("IMGBUILD_TEST_S3_BUCKET"))
        .with_access_key_id(env("IMGBUILD_TEST_S3_ACCESS_KEY_ID"))
        .with_secret_access_key(env("IMGBUILD_TEST_S3_SECRET_ACCESS_KEY"))
        .with_allow_http(true)
        .build()
        .unwrap();
    let key = object_store::path::Path::parse(key).unwrap();
    bucket.head(&key).await.unwrap();
    bucket.delete(&key).await.unwrap();
}

#[tokio::test]
async fn blob_gets_redirect_to_presigned_urls_when_configured() {
    let a = Replica::start(1, true).await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let repo = unique_repo("redirect");
    let content = b"served straight from the bucket".to_vec();
    let digest = Digest::sha256_of(&content);
    let pushed = client
        .post(a.url(&format!("/v2/{repo}/blobs/uploads/?digest={digest}")))
        .header("Content-Type", "application/octet-stream")
        .body(content.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(pushed.status(), StatusCode::CREATED);
    let response = client
        .get(a.url(&format!("/v2/{repo}/blobs/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TEMPORARY_REDIRECT);
    let target = response.headers()["location"].to_str().unwrap().to_string();
    assert!(
        target.starts_with(&env("IMGBUILD_TEST_S3_ENDPOINT")),
        "{target}"
    );
    let fetched = client.get(&target).send().await.unwrap();
    assert_eq!(fetched.status(), StatusCode::OK);
    assert_eq!(fetched.bytes().await.unwrap(), content);
    // Range requests and HEAD are still answered by the registry itself.
    let head = client
        .head(a.url(&format!("/v2/{repo}/blobs/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    // A blob of another repository is not redirected to.
    let other = client
        .get(a.url(&format!("/v2/{}/blobs/{digest}", unique_repo("none"))))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), StatusCode::NOT_FOUND);
}

//! Real clients against `imgbuild serve`: skopeo copies in both directions (Docker and OCI
//! formats), `docker push`/`pull`/`run` through the real Docker engine with a cross-repository
//! mount, layer dedup on disk, containerd (`ctr`) and podman pulls and pushes, and a kill -9
//! crash test of the real binary mid-upload.
//!
//! Needs the parts `scripts/test` starts (Docker engine, peer registry with the base image);
//! without them these tests fail and say so.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use imgbuild::digest::Digest;
use imgbuild::registry::{RegistryConfig, RunningServer, spawn};
use reqwest::{Method, StatusCode};

fn required_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run these tests through scripts/test, which starts the peer registry and Docker")
    })
}

fn peer_registry() -> String {
    required_env("IMGBUILD_TEST_PEER_REGISTRY")
}

fn base_image() -> String {
    required_env("IMGBUILD_TEST_BASE_IMAGE")
}

/// A name unique to this test process, so runs do not see each other's images.
fn unique(prefix: &str) -> String {
    format!("{prefix}{}", std::process::id())
}

/// Runs a command, asserts it succeeds, and returns stdout followed by stderr.
async fn run(program: &str, args: &[&str]) -> String {
    let output = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {program} (run scripts/test to install it): {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "{program} {args:?} failed:\n{text}"
    );
    text
}

async fn start_registry(dir: &Path) -> RunningServer {
    let config = RegistryConfig::new("127.0.0.1:0".parse().unwrap(), dir);
    spawn(&config).await.unwrap()
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return files;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// Every blob file's content hashes to its file name (no corrupt blob is visible).
fn assert_blobs_verify(data: &Path) {
    for path in files_under(&data.join("blobs")) {
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        if name.starts_with(".tmp-") {
            continue; // a temp file of an interrupted atomic write: never visible
        }
        let algorithm = path
            .parent()
            .unwrap()
            .parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        let digest = Digest::parse(&format!("{algorithm}:{name}"))
            .unwrap_or_else(|e| panic!("stray file in the blob store {}: {e}", path.display()));
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(
            Digest::of(digest.algorithm(), &bytes),
            digest,
            "corrupt blob {}",
            path.display()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_copies_docker_and_oci_images_both_ways() {
    let peer = peer_registry();
    let base = base_image();
    let dir = tempfile::tempdir().unwrap();
    let server = start_registry(&dir.path().join("data")).await;
    let ours = server.addr.to_string();
    let no_tls = ["--src-tls-verify=false", "--dest-tls-verify=false"];

    // Peer -> ours, as the Docker schema2 image it is, and converted to OCI.
    let docker_ref = format!("docker://{ours}/test/busybox:latest");
    let oci_ref = format!("docker://{ours}/test/busybox-oci:latest");
    run(
        "skopeo",
        &[
            &["copy"],
            &no_tls[..],
            &[&format!("docker://{base}"), &docker_ref],
        ]
        .concat(),
    )
    .await;
    run(
        "skopeo",
        &[
            &["copy", "--format", "oci"],
            &no_tls[..],
            &[&format!("docker://{base}"), &oci_ref],
        ]
        .concat(),
    )
    .await;

    let inspect = run(
        "skopeo",
        &["inspect", "--raw", "--tls-verify=false", &docker_ref],
    )
    .await;
    assert!(
        inspect.contains("application/vnd.docker.distribution.manifest.v2+json"),
        "{inspect}"
    );
    let inspect = run(
        "skopeo",
        &["inspect", "--raw", "--tls-verify=false", &oci_ref],
    )
    .await;
    assert!(
        inspect.contains("application/vnd.oci.image.manifest.v1+json"),
        "{inspect}"
    );
    // The Docker-format copy is byte-identical to the peer's manifest.
    let peer_raw = run(
        "skopeo",
        &[
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{base}"),
        ],
    )
    .await;
    let our_raw = run(
        "skopeo",
        &["inspect", "--raw", "--tls-verify=false", &docker_ref],
    )
    .await;
    assert_eq!(peer_raw, our_raw);

    // Ours -> an OCI layout and a dir (skopeo verifies every digest on the way).
    let layout = dir.path().join("layout");
    let plain = dir.path().join("plain");
    run(
        "skopeo",
        &[
            "copy",
            "--src-tls-verify=false",
            &oci_ref,
            &format!("oci:{}:latest", layout.display()),
        ],
    )
    .await;
    run(
        "skopeo",
        &[
            "copy",
            "--src-tls-verify=false",
            &docker_ref,
            &format!("dir:{}", plain.display()),
        ],
    )
    .await;
    assert!(layout.join("index.json").exists());
    assert!(plain.join("manifest.json").exists());

    // Ours -> back out to the peer registry.
    let back = format!(
        "docker://{peer}/imgbuild-test/registry-roundtrip:{}",
        unique("run")
    );
    run(
        "skopeo",
        &[&["copy"], &no_tls[..], &[&docker_ref, &back]].concat(),
    )
    .await;
    let round_trip = run("skopeo", &["inspect", "--raw", "--tls-verify=false", &back]).await;
    assert_eq!(round_trip, peer_raw);

    assert_blobs_verify(&dir.path().join("data"));
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_push_pull_run_with_cross_repository_mount() {
    let base = base_image();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = start_registry(&data).await;
    let ours = server.addr.to_string();
    let first = format!("{ours}/clients/{}:1", unique("app"));
    let second = format!("{ours}/clients/{}:1", unique("other"));

    run("docker", &["pull", "-q", &base]).await;
    run("docker", &["tag", &base, &first]).await;
    run("docker", &["tag", &base, &second]).await;
    let pushed = run("docker", &["push", &first]).await;
    assert!(pushed.contains("Pushed"), "{pushed}");
    let mounted = run("docker", &["push", &second]).await;
    let first_repo = first
        .trim_start_matches(&format!("{ours}/"))
        .trim_end_matches(":1");
    assert!(
        mounted.contains(&format!("Mounted from {first_repo}")),
        "{mounted}"
    );

    // Two repositories sharing the layer: stored once (layer + config + manifest).
    let blob_files = files_under(&data.join("blobs"));
    assert_eq!(blob_files.len(), 3, "{blob_files:?}");
    assert_blobs_verify(&data);

    run("docker", &["rmi", &first, &second]).await;
    let pulled = run("docker", &["pull", &second]).await;
    assert!(
        pulled.contains("Downloaded newer image") || pulled.contains("Image is up to date"),
        "{pulled}"
    );
    let output = run(
        "docker",
        &[
            "run",
            "--rm",
            "--network",
            "none",
            &second,
            "echo",
            "hello from imgbuild serve",
        ],
    )
    .await;
    assert!(output.contains("hello from imgbuild serve"), "{output}");
    run("docker", &["rmi", &second]).await;
    server.stop().await.unwrap();
}

/// A free TCP port on 127.0.0.1.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Child {
    process: tokio::process::Child,
}

impl Child {
    async fn start(port: u16, data: &Path) -> Child {
        let process = tokio::process::Command::new(env!("CARGO_BIN_EXE_imgbuild"))
            .args(["serve", "--addr", &format!("127.0.0.1:{port}"), "--data"])
            .arg(data)
            .args(["--log-format", "json"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let client = reqwest::Client::new();
        for _ in 0..100 {
            if client
                .get(format!("http://127.0.0.1:{port}/v2/"))
                .send()
                .await
                .is_ok()
            {
                return Child { process };
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("imgbuild serve did not answer on port {port}");
    }

    /// Peak resident memory of the server process, in bytes (VmHWM).
    fn peak_rss(&self) -> u64 {
        let pid = self.process.id().unwrap();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
        let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kib * 1024
    }

    /// SIGKILL, no chance to clean up.
    async fn kill_9(mut self) {
        self.process.kill().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_chunked_upload_loses_nothing_acknowledged() {
    const CHUNK: usize = 1 << 20;
    const CHUNKS: usize = 48;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let child = Child::start(port, &data_dir).await;

    // Something pushed before the crash.
    let early = b"pushed before the crash".to_vec();
    let early_digest = Digest::sha256_of(&early);
    let response = client
        .post(format!(
            "{base}/v2/crash/early/blobs/uploads/?digest={early_digest}"
        ))
        .body(early.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);

    let blob: Vec<u8> = (0..CHUNK * CHUNKS)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let digest = Digest::sha256_of(&blob);
    let response = client
        .post(format!("{base}/v2/crash/big/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    let location = response.headers()["location"].to_str().unwrap().to_string();

    // Acknowledged chunks, then one chunk in flight that the server is killed during.
    let acknowledged = CHUNKS / 3;
    for i in 0..acknowledged {
        let response = client
            .patch(format!("{base}{location}"))
            .header(
                "Content-Range",
                format!("{}-{}", i * CHUNK, (i + 1) * CHUNK - 1),
            )
            .body(blob[i * CHUNK..(i + 1) * CHUNK].to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::ACCEPTED);
    }
    let (sender, receiver) = futures::channel::mpsc::unbounded::<Result<Vec<u8>, std::io::Error>>();
    let start = acknowledged * CHUNK;
    sender
        .unbounded_send(Ok(blob[start..start + CHUNK / 2].to_vec()))
        .unwrap();
    let in_flight = tokio::spawn(
        client
            .patch(format!("{base}{location}"))
            .header("Content-Range", format!("{}-{}", start, start + CHUNK - 1))
            .body(reqwest::Body::wrap_stream(receiver))
            .send(),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    child.kill_9().await;
    assert!(
        in_flight.await.unwrap().is_err(),
        "the in-flight PATCH cannot have succeeded"
    );
    drop(sender);

    // Restart: the upload continues from the acknowledged offset; no partial blob is visible.
    let child = Child::start(port, &data_dir).await;
    assert_blobs_verify(&data_dir);
    let response = client
        .head(format!("{base}/v2/crash/big/blobs/{digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let response = client
        .get(format!("{base}{location}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let range = response.headers()["range"].to_str().unwrap().to_string();
    assert_eq!(range, format!("0-{}", acknowledged * CHUNK - 1));

    for i in acknowledged..CHUNKS {
        let response = client
            .patch(format!("{base}{location}"))
            .header(
                "Content-Range",
                format!("{}-{}", i * CHUNK, (i + 1) * CHUNK - 1),
            )
            .body(blob[i * CHUNK..(i + 1) * CHUNK].to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::ACCEPTED, "chunk {i}");
    }
    let response = client
        .request(Method::PUT, format!("{base}{location}?digest={digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    // Uploads stream to disk: memory stays far below the 48 MiB blob.
    let peak = child.peak_rss();
    assert!(
        peak < 40 << 20,
        "peak RSS {} MiB while uploading a 48 MiB blob",
        peak >> 20
    );

    // Kill again right after: both blobs survive and verify.
    child.kill_9().await;
    let _child = Child::start(port, &data_dir).await;
    for (repo, digest, bytes) in [
        ("crash/big", &digest, &blob),
        ("crash/early", &early_digest, &early),
    ] {
        let response = client
            .get(format!("{base}/v2/{repo}/blobs/{digest}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body = response.bytes().await.unwrap();
        assert_eq!(Digest::sha256_of(&body), *digest);
        assert_eq!(body.len(), bytes.len());
    }
    assert_blobs_verify(&data_dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_reads_config_file_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("registry.toml");
    let data = dir.path().join("from-config");
    std::fs::write(
        &config,
        format!("addr = \"127.0.0.1:{port}\"\ndata = \"{}\"\nlog_format = \"json\"\n[storage]\ndriver = \"filesystem\"\n", data.display()),
    )
    .unwrap();
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_imgbuild"))
        .args(["serve", "--config"])
        .arg(&config)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let mut up = false;
    for _ in 0..100 {
        if client
            .get(format!("http://127.0.0.1:{port}/healthz"))
            .send()
            .await
            .is_ok()
        {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        up,
        "imgbuild serve --config did not listen on the configured port {port}"
    );
    assert!(
        data.join("blobs").is_dir(),
        "the data directory from the config file is used"
    );
    let pid = child.id().unwrap().to_string();
    run("kill", &["-TERM", &pid]).await;
    let output = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(output.status.success(), "exit status {:?}", output.status);
    let log = String::from_utf8_lossy(&output.stderr);
    let first: serde_json::Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    assert_eq!(first["fields"]["message"], "registry listening");
    assert!(log.contains("SIGTERM received"), "{log}");

    // An invalid setting is refused with a message naming it.
    std::fs::write(&config, "[gc]\ngrace = \"soon\"\n").unwrap();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_imgbuild"))
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("[gc] grace = \"soon\""));
}

/// The containerd socket of the Docker engine that `scripts/test` starts.
const CONTAINERD_SOCKET: &str = "/var/run/docker/containerd/containerd.sock";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_pulls_and_pushes_through_ctr() {
    let base = base_image();
    assert!(
        Path::new(CONTAINERD_SOCKET).exists(),
        "{CONTAINERD_SOCKET} is missing: run scripts/test, which starts the Docker engine"
    );
    let dir = tempfile::tempdir().unwrap();
    let server = start_registry(&dir.path().join("data")).await;
    let ours = server.addr.to_string();
    // One fixed namespace, so repeated runs do not pile up namespaces in the engine.
    let namespace = "imgbuild-registry-test".to_string();
    let ctr = |args: &[&str]| {
        let mut all = vec!["-a", CONTAINERD_SOCKET, "-n", namespace.as_str()];
        all.extend_from_slice(args);
        all.into_iter().map(str::to_string).collect::<Vec<String>>()
    };
    let run_ctr = |args: Vec<String>| async move {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run("ctr", &args).await
    };

    // Seed our registry with skopeo, then let containerd pull it and push it elsewhere.
    let first = format!("{ours}/ctr/first:1");
    let second = format!("{ours}/ctr/second:1");
    run(
        "skopeo",
        &[
            "copy",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            &format!("docker://{base}"),
            &format!("docker://{first}"),
        ],
    )
    .await;
    run_ctr(ctr(&["images", "pull", "--plain-http", &first])).await;
    run_ctr(ctr(&["images", "tag", &first, &second])).await;
    run_ctr(ctr(&["images", "push", "--plain-http", &second])).await;
    let raw_first = run(
        "skopeo",
        &[
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{first}"),
        ],
    )
    .await;
    let raw_second = run(
        "skopeo",
        &[
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{second}"),
        ],
    )
    .await;
    assert_eq!(
        raw_first, raw_second,
        "containerd pushed the manifest byte for byte"
    );
    run_ctr(ctr(&["images", "rm", &first, &second])).await;
    server.stop().await.unwrap();
}

#[tokio::test]
async fn podman_pulls_and_pushes() {
    let base = base_image();
    let dir = tempfile::tempdir().unwrap();
    let server = start_registry(&dir.path().join("data")).await;
    let ours = server.addr.to_string();
    let first = format!("{ours}/podman/first:1");
    let second = format!("{ours}/podman/second:1");
    run(
        "skopeo",
        &[
            "copy",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            &format!("docker://{base}"),
            &format!("docker://{first}"),
        ],
    )
    .await;
    run("podman", &["pull", "-q", "--tls-verify=false", &first]).await;
    run("podman", &["tag", &first, &second]).await;
    run("podman", &["push", "-q", "--tls-verify=false", &second]).await;
    // Podman may recompress layers on push; the uncompressed content (diff ids) must match.
    let diff_ids = |image: String| async move {
        let config = run(
            "skopeo",
            &[
                "inspect",
                "--config",
                "--tls-verify=false",
                &format!("docker://{image}"),
            ],
        )
        .await;
        let config: serde_json::Value = serde_json::from_str(&config).unwrap();
        config["rootfs"]["diff_ids"].clone()
    };
    let pushed = diff_ids(second.clone()).await;
    assert!(pushed.as_array().is_some_and(|ids| !ids.is_empty()));
    assert_eq!(pushed, diff_ids(first.clone()).await);
    assert_blobs_verify(&dir.path().join("data"));
    let tags = reqwest::get(format!("http://{ours}/v2/podman/second/tags/list"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(tags, r#"{"name":"podman/second","tags":["1"]}"#);
    run("podman", &["rmi", "-f", &first, &second]).await;
    server.stop().await.unwrap();
}

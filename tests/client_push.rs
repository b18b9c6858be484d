//! Push against the real CNCF registry on 127.0.0.1:5000 (started by `scripts/test`): new blobs
//! are uploaded (monolithic and chunked), a second push uploads nothing, a push to another
//! repository mounts, Docker format conversion, and an htpasswd-protected registry started here
//! refuses a push without credentials and accepts it after `login`.

mod common;

use std::io::Write as _;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use imgbuild::client::{
    ConnectionOptions, ManifestFormat, NoProgress, PullOptions, PushOptions, login, logout,
    media_types, pull, push,
};
use imgbuild::digest::Digest;
use imgbuild::reference::Reference;
use imgbuild::store::{RefEntry, Store};

use common::peer_registry;
use common::serve::incompressible;

fn required_tool(name: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "{name} is not installed: run the tests through scripts/test"
    );
}

/// A unique repository name per test run.
fn repository(label: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("test/push-{label}-{}-{nanos}", std::process::id())
}

/// Stores a fresh two-layer OCI image (a 3 MiB layer and a 10 kB layer, unique per call) and
/// tags it as `name`. Returns (manifest digest, layer sizes + config size).
fn store_fresh_image(store: &Store, name: &Reference) -> (Digest, u64) {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let big = store
        .put_blob_bytes(&incompressible(3 * 1024 * 1024 + 17, seed))
        .unwrap();
    let small = store
        .put_blob_bytes(&incompressible(10_000, seed + 1))
        .unwrap();
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [big.to_string(), small.to_string()]},
    })
    .to_string();
    let config_digest = store.put_blob_bytes(config.as_bytes()).unwrap();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media_types::OCI_MANIFEST,
        "config": {"mediaType": media_types::OCI_CONFIG, "digest": config_digest.to_string(), "size": config.len()},
        "layers": [
            {"mediaType": media_types::OCI_LAYER_GZIP, "digest": big.to_string(), "size": 3 * 1024 * 1024 + 17},
            {"mediaType": media_types::OCI_LAYER_GZIP, "digest": small.to_string(), "size": 10_000},
        ],
    });
    let manifest_bytes = serde_json::to_vec(&manifest).unwrap();
    let manifest_digest = store.put_blob_bytes(&manifest_bytes).unwrap();
    store
        .set_ref(RefEntry {
            name: Some(name.to_string()),
            manifest_digest: manifest_digest.clone(),
            media_type: media_types::OCI_MANIFEST.to_string(),
            size: manifest_bytes.len() as u64,
        })
        .unwrap();
    (
        manifest_digest,
        3 * 1024 * 1024 + 17 + 10_000 + config.len() as u64,
    )
}

/// `skopeo inspect --raw` of `image`: (manifest bytes, digest of those bytes).
fn skopeo_raw(image: &str) -> (Vec<u8>, Digest) {
    required_tool("skopeo");
    let output = Command::new("skopeo")
        .args(["inspect", "--tls-verify=false", "--raw"])
        .arg(format!("docker://{image}"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "skopeo inspect {image}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let digest = Digest::sha256_of(&output.stdout);
    (output.stdout, digest)
}

fn small_chunks() -> PushOptions {
    let mut options = PushOptions::default();
    options.upload.monolithic_max = 1024 * 1024;
    options.upload.chunk_size = 1024 * 1024;
    options
}

#[tokio::test]
async fn push_uploads_new_blobs_then_nothing_then_mounts_into_another_repo() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let local = Reference::parse("imgbuild-test/fresh:1").unwrap();
    let (manifest_digest, total_bytes) = store_fresh_image(&store, &local);
    let registry = peer_registry();
    let first = Reference::parse(&format!("{registry}/{}:1", repository("a"))).unwrap();

    // The 3 MiB layer goes in 1 MiB PATCH chunks, the small ones in one PUT each.
    let report = push(&store, &local, &first, &small_chunks(), &NoProgress)
        .await
        .unwrap();
    assert_eq!(report.layers_total, 2);
    assert_eq!(report.layers_pushed, 2);
    assert_eq!(report.configs_pushed, 1);
    assert_eq!(report.bytes_pushed, total_bytes);
    assert_eq!(
        report.manifest_digest, manifest_digest,
        "OCI pushed byte-exact"
    );
    let (raw, digest) = skopeo_raw(&first.to_string());
    assert_eq!(digest, manifest_digest);
    assert_eq!(raw, store.read_blob(&manifest_digest).unwrap());

    let again = push(&store, &local, &first, &small_chunks(), &NoProgress)
        .await
        .unwrap();
    assert_eq!(again.layers_pushed, 0, "{again}");
    assert_eq!(again.layers_present, 2);
    assert_eq!(again.bytes_pushed, 0);
    assert_eq!(
        again.to_string(),
        "pushed 0 of 2 layers (0B), 2 already present"
    );

    let second = Reference::parse(&format!("{registry}/{}:1", repository("b"))).unwrap();
    let mounted = push(&store, &local, &second, &small_chunks(), &NoProgress)
        .await
        .unwrap();
    assert_eq!(mounted.layers_pushed, 0, "{mounted}");
    assert_eq!(mounted.bytes_pushed, 0, "the config is mounted too");
    assert_eq!(mounted.layers_mounted.len(), 2);
    assert!(
        mounted
            .layers_mounted
            .iter()
            .all(|(_, from)| *from == first.repository)
    );
    assert_eq!(
        mounted.to_string(),
        format!(
            "pushed 0 of 2 layers (0B), 2 mounted from {}",
            first.repository
        )
    );
    assert_eq!(skopeo_raw(&second.to_string()).1, manifest_digest);
}

#[tokio::test]
async fn push_in_docker_format_rewrites_media_types_and_changes_the_manifest_digest() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let local = Reference::parse("imgbuild-test/fresh:docker").unwrap();
    let (manifest_digest, _) = store_fresh_image(&store, &local);
    let dest =
        Reference::parse(&format!("{}/{}:1", peer_registry(), repository("docker"))).unwrap();
    let options = PushOptions {
        format: ManifestFormat::Docker,
        ..PushOptions::default()
    };
    let report = push(&store, &local, &dest, &options, &NoProgress)
        .await
        .unwrap();
    let (raw, digest) = skopeo_raw(&dest.to_string());
    assert_ne!(digest, manifest_digest);
    assert_eq!(report.manifest_digest, digest);
    let manifest: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(manifest["mediaType"], media_types::DOCKER_MANIFEST);
    assert_eq!(manifest["config"]["mediaType"], media_types::DOCKER_CONFIG);
    assert_eq!(
        manifest["layers"][0]["mediaType"],
        media_types::DOCKER_LAYER_GZIP
    );
}

#[tokio::test]
async fn pushing_a_pulled_image_mounts_from_its_source_repository() {
    let base = Reference::parse(&common::base_image()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let pulled = pull(&store, &base, &PullOptions::default(), &NoProgress)
        .await
        .unwrap();
    let dest = Reference::parse(&format!(
        "{}/{}:copy",
        peer_registry(),
        repository("busybox")
    ))
    .unwrap();
    let options = PushOptions {
        format: ManifestFormat::Docker,
        ..PushOptions::default()
    };
    let report = push(&store, &base, &dest, &options, &NoProgress)
        .await
        .unwrap();
    assert_eq!(report.layers_pushed, 0, "{report}");
    assert_eq!(report.bytes_pushed, 0, "{report}");
    assert_eq!(report.layers_mounted.len(), report.layers_total);
    assert!(
        report
            .layers_mounted
            .iter()
            .all(|(_, from)| *from == base.repository)
    );
    assert_eq!(
        report.manifest_digest, pulled.manifest_digest,
        "Docker kept byte-exact"
    );
    assert_eq!(skopeo_raw(&dest.to_string()).1, pulled.manifest_digest);
}

#[tokio::test]
async fn push_of_an_image_missing_locally_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let local = Reference::parse("imgbuild-test/absent:1").unwrap();
    let dest = Reference::parse(&format!("{}/test/absent:1", peer_registry())).unwrap();
    let err = push(&store, &local, &dest, &PushOptions::default(), &NoProgress)
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        format!(
            "push {}: image imgbuild-test/absent:1 is not in the local store",
            dest.familiar()
        )
    );
}

/// A `docker-registry` with htpasswd auth on a free 127.0.0.1 port, killed on drop.
struct AuthRegistry {
    child: Child,
    address: String,
    _dir: tempfile::TempDir,
}

impl Drop for AuthRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_auth_registry(user: &str, password: &str) -> AuthRegistry {
    required_tool("docker-registry");
    required_tool("htpasswd");
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = Command::new("htpasswd")
        .args(["-Bbn", user, password])
        .output()
        .unwrap();
    assert!(htpasswd.status.success());
    std::fs::write(dir.path().join("htpasswd"), &htpasswd.stdout).unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let address = format!("127.0.0.1:{port}");
    let config = format!(
        "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {root}\n\
         http:\n  addr: {address}\nauth:\n  htpasswd:\n    realm: imgbuild-test\n    path: {htpasswd}\n",
        root = dir.path().join("data").display(),
        htpasswd = dir.path().join("htpasswd").display(),
    );
    let config_path = dir.path().join("config.yml");
    std::fs::File::create(&config_path)
        .unwrap()
        .write_all(config.as_bytes())
        .unwrap();
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(&config_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let registry = AuthRegistry {
        child,
        address,
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::net::TcpStream::connect(&registry.address).is_err() {
        assert!(
            Instant::now() < deadline,
            "docker-registry on {} did not start",
            registry.address
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    registry
}

fn connection_with_config(dir: &Path) -> ConnectionOptions {
    ConnectionOptions {
        docker_config_dir: Some(dir.to_path_buf()),
        ..ConnectionOptions::default()
    }
}

#[tokio::test]
async fn push_to_htpasswd_registry_fails_without_credentials_and_works_after_login() {
    let registry = start_auth_registry("builder", "s3cret-pw");
    let docker_config = tempfile::tempdir().unwrap();
    let connection = connection_with_config(docker_config.path());
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let local = Reference::parse("imgbuild-test/fresh:auth").unwrap();
    store_fresh_image(&store, &local);
    let dest = Reference::parse(&format!("{}/team/app:1", registry.address)).unwrap();
    let options = PushOptions {
        connection: connection.clone(),
        ..PushOptions::default()
    };

    let err = push(&store, &local, &dest, &options, &NoProgress)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with(&format!(
            "push {}/team/app:1: registry {} requires authentication (401 Unauthorized)",
            registry.address, registry.address
        )),
        "{err}"
    );

    let wrong = login(&registry.address, "builder", "wrong", &connection)
        .await
        .unwrap_err();
    assert_eq!(
        wrong.to_string(),
        format!(
            "login {0}: registry {0} rejected the user name or password (401 Unauthorized)",
            registry.address
        )
    );
    assert!(
        !docker_config.path().join("config.json").exists(),
        "bad credentials are not saved"
    );

    login(&registry.address, "builder", "s3cret-pw", &connection)
        .await
        .unwrap();
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(docker_config.path().join("config.json")).unwrap())
            .unwrap();
    assert!(
        config["auths"][&registry.address]["auth"].is_string(),
        "{config}"
    );

    let report = push(&store, &local, &dest, &options, &NoProgress)
        .await
        .unwrap();
    assert_eq!(report.layers_pushed, 2, "{report}");

    assert!(logout(&registry.address, &connection).unwrap());
    assert!(
        !logout(&registry.address, &connection).unwrap(),
        "second logout finds nothing"
    );
    let err = push(&store, &local, &dest, &options, &NoProgress)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("401 Unauthorized"), "{err}");
}

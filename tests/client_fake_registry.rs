//! Client behaviour that a well-behaved registry cannot provoke, against a small in-test fake
//! registry on 127.0.0.1: the Bearer token flow with credentials from config.json and a token
//! cache per scope, digest mismatches on manifests and blobs, resuming a chunked upload
//! from the registry's reported offset after a transient failure, and resuming a download that
//! was cut off with a `Range` request.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use futures::StreamExt as _;
use imgbuild::client::{
    ConnectionOptions, NoProgress, PullOptions, RegistryClient, media_types, pull,
};
use imgbuild::digest::Digest;
use imgbuild::reference::Reference;
use imgbuild::store::Store;

#[derive(Default)]
struct FakeState {
    address: String,
    /// Serve these bytes for the layer instead of the real ones.
    corrupt_layer: bool,
    /// Send a wrong Docker-Content-Digest for the manifest.
    wrong_manifest_digest: bool,
    token_requests: Vec<String>,
    authorized_requests: usize,
    manifest: Vec<u8>,
    config: Vec<u8>,
    layer: Vec<u8>,
    /// Upload session state.
    uploaded: Vec<u8>,
    patches: usize,
    fail_patch_number: Option<usize>,
    completed_digest: Option<String>,
    /// Cut the connection after half of the layer, once.
    cut_layer_once: bool,
    /// The `Range` header of each layer GET (None when absent).
    layer_ranges: Vec<Option<String>>,
    layer_bytes_served: usize,
}

type Shared = Arc<Mutex<FakeState>>;

const TOKEN: &str = "fake-token";
const USER: &str = "robot";
const PASSWORD: &str = "hunter2";

async fn handle(
    State(state): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut state = state.lock().unwrap();
    let path = uri.path().to_string();
    if path == "/token" {
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"))
        );
        if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(expected.as_str()) {
            return StatusCode::UNAUTHORIZED.into_response();
        }
        state
            .token_requests
            .push(uri.query().unwrap_or("").to_string());
        return (
            [("content-type", "application/json")],
            format!(r#"{{"token":"{TOKEN}"}}"#),
        )
            .into_response();
    }
    if headers.get("authorization").and_then(|v| v.to_str().ok())
        != Some(&format!("Bearer {TOKEN}"))
    {
        let challenge = format!(
            r#"Bearer realm="http://{}/token",service="fake",scope="repository:app:pull""#,
            state.address
        );
        return (StatusCode::UNAUTHORIZED, [("www-authenticate", challenge)]).into_response();
    }
    state.authorized_requests += 1;
    let manifest_digest = Digest::sha256_of(&state.manifest).to_string();
    let config_path = format!("/v2/app/blobs/{}", Digest::sha256_of(&state.config));
    let layer_path = format!("/v2/app/blobs/{}", Digest::sha256_of(&state.layer));
    match (method, path.as_str()) {
        (Method::GET, "/v2/app/manifests/1") => {
            let digest = if state.wrong_manifest_digest {
                Digest::sha256_of(b"something else").to_string()
            } else {
                manifest_digest
            };
            (
                [
                    ("content-type", media_types::OCI_MANIFEST.to_string()),
                    ("docker-content-digest", digest),
                ],
                state.manifest.clone(),
            )
                .into_response()
        }
        (Method::GET, p) if p == config_path => state.config.clone().into_response(),
        (Method::GET, p) if p == layer_path => {
            let mut layer = state.layer.clone();
            if state.corrupt_layer {
                layer[0] ^= 0xff;
            }
            let range = headers
                .get("range")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            state.layer_ranges.push(range.clone());
            if state.cut_layer_once {
                state.cut_layer_once = false;
                let half = layer[..layer.len() / 2].to_vec();
                state.layer_bytes_served += half.len();
                let first = futures::stream::once(async move { Ok(Bytes::from(half)) });
                let cut = futures::stream::once(async {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    Err(std::io::Error::other("connection cut by the test"))
                });
                return Body::from_stream(first.chain(cut)).into_response();
            }
            if let Some(start) = range
                .as_deref()
                .and_then(|r| r.strip_prefix("bytes="))
                .and_then(|r| r.strip_suffix('-'))
                .and_then(|r| r.parse::<usize>().ok())
            {
                let total = layer.len();
                let rest = layer[start..].to_vec();
                state.layer_bytes_served += rest.len();
                return (
                    StatusCode::PARTIAL_CONTENT,
                    [(
                        "content-range",
                        format!("bytes {start}-{}/{total}", total - 1),
                    )],
                    rest,
                )
                    .into_response();
            }
            state.layer_bytes_served += layer.len();
            layer.into_response()
        }
        (Method::POST, "/v2/app/blobs/uploads/") => {
            state.uploaded.clear();
            (StatusCode::ACCEPTED, [("location", "/upload/1")]).into_response()
        }
        (Method::PATCH, "/upload/1") => {
            state.patches += 1;
            if state.fail_patch_number == Some(state.patches) {
                // Keep half of the chunk, as a registry that lost the connection mid-way might.
                let half = body.len() / 2;
                state.uploaded.extend_from_slice(&body[..half]);
                return StatusCode::SERVICE_UNAVAILABLE.into_response();
            }
            let range = headers
                .get("content-range")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let start: usize = range
                .split('-')
                .next()
                .and_then(|s| s.parse().ok())
                .unwrap_or(usize::MAX);
            if start != state.uploaded.len() {
                return StatusCode::RANGE_NOT_SATISFIABLE.into_response();
            }
            state.uploaded.extend_from_slice(&body);
            let end = state.uploaded.len() - 1;
            (
                StatusCode::ACCEPTED,
                [
                    ("location", "/upload/1".to_string()),
                    ("range", format!("0-{end}")),
                ],
            )
                .into_response()
        }
        (Method::GET, "/upload/1") => {
            let end = state.uploaded.len().saturating_sub(1);
            (
                StatusCode::NO_CONTENT,
                [
                    ("location", "/upload/1".to_string()),
                    ("range", format!("0-{end}")),
                ],
            )
                .into_response()
        }
        (Method::PUT, "/upload/1") => {
            state.uploaded.extend_from_slice(&body);
            let digest = uri
                .query()
                .and_then(|q| q.strip_prefix("digest="))
                .map(|d| d.replace("%3A", ":"))
                .unwrap_or_default();
            if Digest::sha256_of(&state.uploaded).to_string() != digest {
                return StatusCode::BAD_REQUEST.into_response();
            }
            state.completed_digest = Some(digest);
            StatusCode::CREATED.into_response()
        }
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

/// Starts the fake registry holding a one-layer OCI image `app:1`.
async fn start_fake(configure: impl FnOnce(&mut FakeState)) -> (Shared, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let layer = b"not really a tarball, but bytes with a digest".repeat(100);
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#
            .to_vec();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media_types::OCI_MANIFEST,
        "config": {"mediaType": media_types::OCI_CONFIG, "digest": Digest::sha256_of(&config).to_string(), "size": config.len()},
        "layers": [{"mediaType": media_types::OCI_LAYER_GZIP, "digest": Digest::sha256_of(&layer).to_string(), "size": layer.len()}],
    }))
    .unwrap();
    let mut state = FakeState {
        address: address.clone(),
        manifest,
        config,
        layer,
        ..FakeState::default()
    };
    configure(&mut state);
    let shared = Arc::new(Mutex::new(state));
    let app = Router::new().fallback(handle).with_state(shared.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (shared, address)
}

/// A DOCKER_CONFIG-style directory holding credentials for `registry`.
fn docker_config_with_credentials(registry: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
    let config = serde_json::json!({"auths": {registry: {"auth": auth}}});
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    dir
}

fn options_with_config(dir: &std::path::Path) -> PullOptions {
    PullOptions {
        connection: ConnectionOptions {
            docker_config_dir: Some(dir.to_path_buf()),
            ..ConnectionOptions::default()
        },
        ..PullOptions::default()
    }
}

#[tokio::test]
async fn bearer_token_flow_uses_config_credentials_and_caches_the_token_per_scope() {
    let (state, address) = start_fake(|_| {}).await;
    let config = docker_config_with_credentials(&address);
    let store_dir = tempfile::tempdir().unwrap();
    let store = Store::open(store_dir.path()).unwrap();
    let reference = Reference::parse(&format!("{address}/app:1")).unwrap();
    let pulled = pull(
        &store,
        &reference,
        &options_with_config(config.path()),
        &NoProgress,
    )
    .await
    .unwrap();
    assert_eq!(pulled.blobs_fetched, 2);
    let state = state.lock().unwrap();
    assert_eq!(
        state.token_requests,
        vec!["service=fake&scope=repository%3Aapp%3Apull"]
    );
    assert_eq!(
        state.authorized_requests, 3,
        "manifest, config and layer, one token for all"
    );
}

#[tokio::test]
async fn bearer_token_flow_without_credentials_is_a_clear_error() {
    let (_state, address) = start_fake(|_| {}).await;
    let empty_config = tempfile::tempdir().unwrap();
    let store_dir = tempfile::tempdir().unwrap();
    let store = Store::open(store_dir.path()).unwrap();
    let reference = Reference::parse(&format!("{address}/app:1")).unwrap();
    let err = pull(
        &store,
        &reference,
        &options_with_config(empty_config.path()),
        &NoProgress,
    )
    .await
    .unwrap_err()
    .to_string();
    assert_eq!(
        err,
        format!(
            "pull {address}/app:1: registry {address} requires authentication (401 Unauthorized): \
             the token service http://{address}/token refused the credentials"
        )
    );
}

#[tokio::test]
async fn corrupt_layer_is_a_digest_mismatch_and_the_image_is_not_tagged() {
    let (state, address) = start_fake(|s| s.corrupt_layer = true).await;
    let config = docker_config_with_credentials(&address);
    let store_dir = tempfile::tempdir().unwrap();
    let store = Store::open(store_dir.path()).unwrap();
    let reference = Reference::parse(&format!("{address}/app:1")).unwrap();
    let err = pull(
        &store,
        &reference,
        &options_with_config(config.path()),
        &NoProgress,
    )
    .await
    .unwrap_err()
    .to_string();
    let layer_digest = Digest::sha256_of(&state.lock().unwrap().layer);
    assert!(
        err.starts_with(&format!(
            "pull {address}/app:1: digest mismatch for blob {layer_digest} of {address}/app: expected {layer_digest}"
        )),
        "{err}"
    );
    assert!(
        store.list_refs().unwrap().is_empty(),
        "a half-pulled image is never tagged"
    );
    assert!(!store.has_blob(&layer_digest));
}

#[tokio::test]
async fn manifest_with_wrong_registry_digest_is_rejected() {
    let (_state, address) = start_fake(|s| s.wrong_manifest_digest = true).await;
    let config = docker_config_with_credentials(&address);
    let store_dir = tempfile::tempdir().unwrap();
    let store = Store::open(store_dir.path()).unwrap();
    let reference = Reference::parse(&format!("{address}/app:1")).unwrap();
    let err = pull(
        &store,
        &reference,
        &options_with_config(config.path()),
        &NoProgress,
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.contains(&format!("digest mismatch for manifest {address}/app:1")),
        "{err}"
    );
    assert!(store.list_refs().unwrap().is_empty());
}

#[tokio::test]
async fn chunked_upload_resumes_from_the_registry_offset_after_a_transient_error() {
    let (state, address) = start_fake(|s| s.fail_patch_number = Some(2)).await;
    let config = docker_config_with_credentials(&address);
    let connection = ConnectionOptions {
        docker_config_dir: Some(config.path().to_path_buf()),
        ..ConnectionOptions::default()
    };
    let client = RegistryClient::new(&address, &connection).unwrap();
    let blob: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("blob");
    std::fs::write(&path, &blob).unwrap();
    let digest = Digest::sha256_of(&blob);
    let tuning = imgbuild::client::UploadTuning {
        monolithic_max: 1000,
        chunk_size: 3000,
    };
    let mut confirmed = Vec::new();
    client
        .upload_blob(
            "app",
            &digest,
            blob.len() as u64,
            &path,
            None,
            tuning,
            &mut |done| confirmed.push(done),
        )
        .await
        .unwrap();
    let state = state.lock().unwrap();
    assert_eq!(
        state.completed_digest.as_deref(),
        Some(digest.to_string().as_str())
    );
    assert_eq!(
        state.uploaded, blob,
        "the registry ends up with exactly the blob"
    );
    // 0-3000 ok, 3000-6000 fails after 1500 bytes, resume at 4500: 4500-7500, 7500-10000.
    assert_eq!(state.patches, 4);
    assert_eq!(confirmed, vec![3000, 7500, 10_000, 10_000]);
}

#[tokio::test]
async fn interrupted_download_resumes_with_a_range_request() {
    let (state, address) = start_fake(|s| s.cut_layer_once = true).await;
    let config = docker_config_with_credentials(&address);
    let store_dir = tempfile::tempdir().unwrap();
    let store = Store::open(store_dir.path()).unwrap();
    let reference = Reference::parse(&format!("{address}/app:1")).unwrap();
    pull(
        &store,
        &reference,
        &options_with_config(config.path()),
        &NoProgress,
    )
    .await
    .unwrap();
    let state = state.lock().unwrap();
    let half = state.layer.len() / 2;
    assert_eq!(
        state.layer_ranges,
        vec![None, Some(format!("bytes={half}-"))],
        "the retry asks only for the missing bytes"
    );
    assert_eq!(
        state.layer_bytes_served,
        state.layer.len(),
        "no byte is sent twice"
    );
    assert!(store.has_blob(&Digest::sha256_of(&state.layer)));
}

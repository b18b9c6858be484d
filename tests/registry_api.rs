//! Conformance suite for `imgbuild serve`: every distribution-spec endpoint and error code,
//! exercised over HTTP against a server started in-process on 127.0.0.1:0.

mod common;

use std::time::Duration;

use common::v2::V2Client;
use imgbuild::digest::{Algorithm, Digest};
use imgbuild::registry::{RegistryConfig, RunningServer, spawn};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

struct TestRegistry {
    server: Option<RunningServer>,
    v2: V2Client,
    dir: tempfile::TempDir,
}

impl std::ops::Deref for TestRegistry {
    type Target = V2Client;
    fn deref(&self) -> &V2Client {
        &self.v2
    }
}

impl TestRegistry {
    async fn start() -> TestRegistry {
        let dir = tempfile::tempdir().unwrap();
        let mut registry = TestRegistry {
            server: None,
            v2: V2Client::new(String::new()),
            dir,
        };
        registry.restart().await;
        registry
    }

    /// Starts (again) on the same data directory.
    async fn restart(&mut self) {
        if let Some(server) = self.server.take() {
            server.stop().await.unwrap();
        }
        let config = RegistryConfig::new("127.0.0.1:0".parse().unwrap(), self.dir.path());
        let server = spawn(&config).await.unwrap();
        self.v2.base = format!("http://{}", server.addr);
        self.server = Some(server);
    }

    /// Pushes a config and one layer, then an image manifest; returns (manifest bytes, digest).
    async fn push_image(&self, repo: &str, tag: &str, layer: &[u8]) -> (Vec<u8>, Digest) {
        let config = format!(
            "{{\"architecture\":\"amd64\",\"os\":\"linux\",\"layer\":{}}}",
            layer.len()
        );
        let config_digest = self.push_blob(repo, config.as_bytes()).await;
        let layer_digest = self.push_blob(repo, layer).await;
        let manifest = image_manifest(
            &config_digest,
            config.len(),
            &layer_digest,
            layer.len(),
            None,
        );
        let response = self.put_manifest(repo, tag, OCI_MANIFEST, &manifest).await;
        assert_eq!(response.status(), StatusCode::CREATED);
        let digest = Digest::sha256_of(&manifest);
        (manifest, digest)
    }
}

fn image_manifest(
    config: &Digest,
    config_size: usize,
    layer: &Digest,
    layer_size: usize,
    extra: Option<(&str, Value)>,
) -> Vec<u8> {
    let mut manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.to_string(), "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer.to_string(), "size": layer_size}],
    });
    if let Some((key, value)) = extra {
        manifest[key] = value;
    }
    // Unusual formatting on purpose: the registry must store bytes, not re-serialize.
    format!("{}\n\n", serde_json::to_string_pretty(&manifest).unwrap()).into_bytes()
}

fn header<'a>(response: &'a reqwest::Response, name: &str) -> &'a str {
    response
        .headers()
        .get(name)
        .unwrap_or_else(|| panic!("response has no {name} header: {:?}", response.headers()))
        .to_str()
        .unwrap()
}

/// Asserts an error response with `status` and spec error `code`.
async fn assert_error(response: reqwest::Response, status: StatusCode, code: &str) {
    assert_eq!(response.status(), status, "expected {code}");
    assert_eq!(
        header(&response, "docker-distribution-api-version"),
        "registry/2.0"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], code, "{body}");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
}

#[tokio::test]
async fn ping_and_every_response_carry_the_api_version_header() {
    let registry = TestRegistry::start().await;
    for path in [
        "/v2/",
        "/v2",
        "/healthz",
        "/nope",
        "/v2/a/blobs/sha256:zz",
        "/v2/x/unknown/y",
    ] {
        let response = registry.request(Method::GET, path).send().await.unwrap();
        assert_eq!(
            header(&response, "docker-distribution-api-version"),
            "registry/2.0",
            "{path}"
        );
    }
    let response = registry.request(Method::GET, "/v2/").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn monolithic_upload_then_blob_get_head_and_delete() {
    let registry = TestRegistry::start().await;
    let data = b"hello blob".repeat(1000);
    let digest = Digest::sha256_of(&data);
    let response = registry
        .request(
            Method::POST,
            &format!("/v2/team/app/blobs/uploads/?digest={digest}"),
        )
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(
        header(&response, "location"),
        format!("/v2/team/app/blobs/{digest}")
    );
    assert_eq!(
        header(&response, "docker-content-digest"),
        digest.to_string()
    );

    let response = registry
        .request(Method::GET, &format!("/v2/team/app/blobs/{digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        header(&response, "docker-content-digest"),
        digest.to_string()
    );
    assert_eq!(header(&response, "content-length"), data.len().to_string());
    assert_eq!(response.bytes().await.unwrap(), data);

    let response = registry
        .request(Method::HEAD, &format!("/v2/team/app/blobs/{digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header(&response, "content-length"), data.len().to_string());

    // Blobs are per repository: another repository does not see it.
    let response = registry
        .request(Method::HEAD, &format!("/v2/other/blobs/{digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);

    let response = registry
        .request(Method::DELETE, &format!("/v2/team/app/blobs/{digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let response = registry
        .request(Method::GET, &format!("/v2/team/app/blobs/{digest}"))
        .send()
        .await
        .unwrap();
    assert_error(response, StatusCode::NOT_FOUND, "BLOB_UNKNOWN").await;
    let response = registry
        .request(Method::DELETE, &format!("/v2/team/app/blobs/{digest}"))
        .send()
        .await
        .unwrap();
    assert_error(response, StatusCode::NOT_FOUND, "BLOB_UNKNOWN").await;
}

#[tokio::test]
async fn blob_range_requests_return_206_or_416() {
    let registry = TestRegistry::start().await;
    let data: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
    let digest = registry.push_blob("r", &data).await;
    let path = format!("/v2/r/blobs/{digest}");

    let response = registry
        .request(Method::GET, &path)
        .header("Range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(header(&response, "content-range"), "bytes 10-19/1000");
    assert_eq!(header(&response, "content-length"), "10");
    assert_eq!(response.bytes().await.unwrap(), &data[10..20]);

    let response = registry
        .request(Method::GET, &path)
        .header("Range", "bytes=-5")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(response.bytes().await.unwrap(), &data[995..]);

    let response = registry
        .request(Method::GET, &path)
        .header("Range", "bytes=990-")
        .send()
        .await
        .unwrap();
    assert_eq!(response.bytes().await.unwrap(), &data[990..]);

    let response = registry
        .request(Method::GET, &path)
        .header("Range", "bytes=1000-1005")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(header(&response, "content-range"), "bytes */1000");
}

#[tokio::test]
async fn chunked_upload_with_status_and_out_of_order_chunk() {
    let registry = TestRegistry::start().await;
    let data: Vec<u8> = (0..3000u32).map(|i| (i * 7) as u8).collect();
    let digest = Digest::sha256_of(&data);

    let response = registry
        .request(Method::POST, "/v2/team/app/blobs/uploads/")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let location = header(&response, "location").to_string();
    let uuid = header(&response, "docker-upload-uuid").to_string();
    assert!(location.ends_with(&uuid), "{location} {uuid}");

    let response = registry
        .request(Method::PATCH, &location)
        .header("Content-Range", "0-999")
        .header("Content-Type", "application/octet-stream")
        .body(data[..1000].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert_eq!(header(&response, "range"), "0-999");
    let location = header(&response, "location").to_string();

    // Out of order: starts at 2000 while the upload is at 1000.
    let response = registry
        .request(Method::PATCH, &location)
        .header("Content-Range", "2000-2999")
        .body(data[2000..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(header(&response, "range"), "0-999");

    let response = registry
        .request(Method::GET, &location)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&response, "range"), "0-999");
    assert_eq!(header(&response, "docker-upload-uuid"), uuid);

    let response = registry
        .request(Method::PATCH, &location)
        .header("Content-Range", "1000-1999")
        .body(data[1000..2000].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);

    // The last chunk rides on the PUT.
    let response = registry
        .request(Method::PUT, &format!("{location}?digest={digest}"))
        .header("Content-Range", "2000-2999")
        .body(data[2000..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(
        header(&response, "docker-content-digest"),
        digest.to_string()
    );
    let blob = registry
        .request(Method::GET, header(&response, "location"))
        .send()
        .await
        .unwrap();
    assert_eq!(blob.bytes().await.unwrap(), data);

    // The finished session is gone.
    let response = registry
        .request(Method::GET, &location)
        .send()
        .await
        .unwrap();
    assert_error(response, StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN").await;
}

#[tokio::test]
async fn streamed_patch_without_range_and_sha512_digest() {
    let registry = TestRegistry::start().await;
    let data = b"streamed".repeat(50_000);
    let digest = Digest::of(Algorithm::Sha512, &data);
    let response = registry
        .request(Method::POST, "/v2/s/blobs/uploads/")
        .send()
        .await
        .unwrap();
    let location = header(&response, "location").to_string();
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        data.chunks(7777).map(|c| Ok(c.to_vec())).collect();
    let response = registry
        .request(Method::PATCH, &location)
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert_eq!(header(&response, "range"), format!("0-{}", data.len() - 1));
    let response = registry
        .request(Method::PUT, &format!("{location}?digest={digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let response = registry
        .request(Method::GET, &format!("/v2/s/blobs/{digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        header(&response, "docker-content-digest"),
        digest.to_string()
    );
    assert_eq!(response.bytes().await.unwrap(), data);
}

#[tokio::test]
async fn wrong_digest_or_size_is_rejected_and_nothing_is_kept() {
    let registry = TestRegistry::start().await;
    let data = b"the real content";
    let wrong = Digest::sha256_of(b"something else");

    // Monolithic POST with the wrong digest.
    let response = registry
        .request(
            Method::POST,
            &format!("/v2/w/blobs/uploads/?digest={wrong}"),
        )
        .body(data.to_vec())
        .send()
        .await
        .unwrap();
    assert_error(response, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;

    // Session upload finished with the wrong digest: the session is discarded too.
    let response = registry
        .request(Method::POST, "/v2/w/blobs/uploads/")
        .send()
        .await
        .unwrap();
    let location = header(&response, "location").to_string();
    registry
        .request(Method::PATCH, &location)
        .body(data.to_vec())
        .send()
        .await
        .unwrap();
    let response = registry
        .request(Method::PUT, &format!("{location}?digest={wrong}"))
        .send()
        .await
        .unwrap();
    assert_error(response, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
    let response = registry
        .request(Method::GET, &location)
        .send()
        .await
        .unwrap();
    assert_error(response, StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN").await;

    for digest in [wrong, Digest::sha256_of(data)] {
        let response = registry
            .request(Method::HEAD, &format!("/v2/w/blobs/{digest}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
    }
    let blobs = walk_files(&registry.dir.path().join("blobs"));
    assert!(blobs.is_empty(), "no blob may be kept: {blobs:?}");

    // Content-Range and Content-Length that disagree.
    let response = registry
        .request(Method::POST, "/v2/w/blobs/uploads/")
        .send()
        .await
        .unwrap();
    let location = header(&response, "location").to_string();
    let response = registry
        .request(Method::PATCH, &location)
        .header("Content-Range", "0-99")
        .body(data.to_vec())
        .send()
        .await
        .unwrap();
    assert_error(response, StatusCode::BAD_REQUEST, "SIZE_INVALID").await;
    let response = registry
        .request(Method::GET, &location)
        .send()
        .await
        .unwrap();
    assert_eq!(header(&response, "range"), "0-0");

    // PUT without a digest, and with a malformed one.
    let response = registry
        .request(Method::PUT, &location)
        .send()
        .await
        .unwrap();
    assert_error(response, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
    let response = registry
        .request(Method::PUT, &format!("{location}?digest=sha256:nothex"))
        .send()
        .await
        .unwrap();
    assert_error(response, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
}

fn walk_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return files;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk_files(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[tokio::test]
async fn cancelled_upload_is_gone() {
    let registry = TestRegistry::start().await;
    let response = registry
        .request(Method::POST, "/v2/c/blobs/uploads/")
        .send()
        .await
        .unwrap();
    let location = header(&response, "location").to_string();
    let response = registry
        .request(Method::DELETE, &location)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let response = registry
        .request(Method::PATCH, &location)
        .body("x")
        .send()
        .await
        .unwrap();
    assert_error(response, StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN").await;
    // A session id of another repository is unknown here.
    let response = registry
        .request(Method::POST, "/v2/c/blobs/uploads/")
        .send()
        .await
        .unwrap();
    let uuid = header(&response, "docker-upload-uuid").to_string();
    let response = registry
        .request(Method::GET, &format!("/v2/d/blobs/uploads/{uuid}"))
        .send()
        .await
        .unwrap();
    assert_error(response, StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN").await;
    let response = registry
        .request(Method::GET, "/v2/c/blobs/uploads/not-a-uuid")
        .send()
        .await
        .unwrap();
    assert_error(response, StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN").await;
}

#[tokio::test]
async fn cross_repository_and_anonymous_mounts() {
    let registry = TestRegistry::start().await;
    let digest = registry.push_blob("source/app", b"shared layer").await;

    let response = registry
        .request(
            Method::POST,
            &format!("/v2/target/app/blobs/uploads/?mount={digest}&from=source/app"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(
        header(&response, "location"),
        format!("/v2/target/app/blobs/{digest}")
    );
    let response = registry
        .request(Method::HEAD, &format!("/v2/target/app/blobs/{digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    // The source does not have it: falls back to an upload session.
    let missing = Digest::sha256_of(b"not here");
    let response = registry
        .request(
            Method::POST,
            &format!("/v2/target/app/blobs/uploads/?mount={missing}&from=source/app"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert!(response.headers().contains_key("docker-upload-uuid"));
    // From a repository that lacks the blob even though the registry has it.
    let response = registry
        .request(
            Method::POST,
            &format!("/v2/third/blobs/uploads/?mount={digest}&from=empty"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);

    // Anonymous mount: no `from`, the registry knows the blob.
    let response = registry
        .request(
            Method::POST,
            &format!("/v2/anon/blobs/uploads/?mount={digest}"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let response = registry
        .request(Method::GET, &format!("/v2/anon/blobs/{digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.bytes().await.unwrap(), &b"shared layer"[..]);

    // Stored once.
    assert_eq!(walk_files(&registry.dir.path().join("blobs")).len(), 1);
}

#[tokio::test]
async fn manifests_by_tag_and_digest_are_stored_byte_exact() {
    let registry = TestRegistry::start().await;
    let (manifest, digest) = registry.push_image("team/app", "v1", b"layer one").await;

    for reference in ["v1".to_string(), digest.to_string()] {
        let response = registry
            .request(Method::GET, &format!("/v2/team/app/manifests/{reference}"))
            .header("Accept", OCI_MANIFEST)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(header(&response, "content-type"), OCI_MANIFEST);
        assert_eq!(
            header(&response, "docker-content-digest"),
            digest.to_string()
        );
        assert_eq!(response.bytes().await.unwrap(), manifest);

        let response = registry
            .request(Method::HEAD, &format!("/v2/team/app/manifests/{reference}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            header(&response, "content-length"),
            manifest.len().to_string()
        );
        assert_eq!(
            header(&response, "docker-content-digest"),
            digest.to_string()
        );
    }

    // A manifest is also readable through the blobs endpoint.
    let response = registry
        .request(Method::GET, &format!("/v2/team/app/blobs/{digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.bytes().await.unwrap(), manifest);

    // Delete the tag: the digest stays.
    let response = registry
        .request(Method::DELETE, "/v2/team/app/manifests/v1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let response = registry
        .request(Method::GET, "/v2/team/app/manifests/v1")
        .send()
        .await
        .unwrap();
    assert_error(response, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
    let response = registry
        .request(Method::HEAD, &format!("/v2/team/app/manifests/{digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    // Delete by digest.
    let response = registry
        .request(Method::DELETE, &format!("/v2/team/app/manifests/{digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let response = registry
        .request(Method::GET, &format!("/v2/team/app/manifests/{digest}"))
        .send()
        .await
        .unwrap();
    assert_error(response, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
    let response = registry
        .request(Method::DELETE, &format!("/v2/team/app/manifests/{digest}"))
        .send()
        .await
        .unwrap();
    assert_error(response, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
}

#[tokio::test]
async fn docker_schema2_manifest_and_manifest_list() {
    let registry = TestRegistry::start().await;
    let config = b"{\"architecture\":\"arm64\"}";
    let config_digest = registry.push_blob("d", config).await;
    let layer_digest = registry.push_blob("d", b"gzip-ish").await;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": config.len(), "digest": config_digest.to_string()},
        "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": 8, "digest": layer_digest.to_string()}]
    })
    .to_string();
    let response = registry
        .put_manifest("d", "arm64", DOCKER_MANIFEST, manifest.as_bytes())
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let child = Digest::sha256_of(manifest.as_bytes());
    let list = json!({
        "schemaVersion": 2,
        "mediaType": DOCKER_LIST,
        "manifests": [{"mediaType": DOCKER_MANIFEST, "size": manifest.len(), "digest": child.to_string(), "platform": {"architecture": "arm64", "os": "linux"}}]
    })
    .to_string();
    let response = registry
        .put_manifest("d", "multi", DOCKER_LIST, list.as_bytes())
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let response = registry
        .request(Method::GET, "/v2/d/manifests/multi")
        .header("Accept", format!("{DOCKER_MANIFEST}, {DOCKER_LIST}"))
        .send()
        .await
        .unwrap();
    assert_eq!(header(&response, "content-type"), DOCKER_LIST);
    assert_eq!(response.text().await.unwrap(), list);
}

#[tokio::test]
async fn accept_negotiation_refuses_unacceptable_media_types() {
    let registry = TestRegistry::start().await;
    let (manifest, digest) = registry.push_image("n", "img", b"l").await;
    let index = json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "size": manifest.len(), "digest": digest.to_string()}]
    })
    .to_string();
    let response = registry
        .put_manifest("n", "idx", OCI_INDEX, index.as_bytes())
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);

    let response = registry
        .request(Method::GET, "/v2/n/manifests/idx")
        .header("Accept", DOCKER_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_error(response, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
    let response = registry
        .request(Method::GET, "/v2/n/manifests/idx")
        .header("Accept", DOCKER_MANIFEST)
        .header("Accept", OCI_INDEX)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header(&response, "content-type"), OCI_INDEX);
    let response = registry
        .request(Method::GET, "/v2/n/manifests/idx")
        .header("Accept", "*/*")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn manifest_referencing_unknown_content_is_refused() {
    let registry = TestRegistry::start().await;
    let config_digest = registry.push_blob("m", b"{}").await;
    let absent = Digest::sha256_of(b"never uploaded");
    let manifest = image_manifest(&config_digest, 2, &absent, 14, None);
    let response = registry
        .put_manifest("m", "t", OCI_MANIFEST, &manifest)
        .await;
    assert_error(response, StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN").await;

    // A blob of another repository does not count.
    let elsewhere = registry.push_blob("elsewhere", b"layer").await;
    let manifest = image_manifest(&config_digest, 2, &elsewhere, 5, None);
    let response = registry
        .put_manifest("m", "t", OCI_MANIFEST, &manifest)
        .await;
    assert_error(response, StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN").await;

    let index = json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "size": 10, "digest": absent.to_string()}]
    })
    .to_string();
    let response = registry
        .put_manifest("m", "i", OCI_INDEX, index.as_bytes())
        .await;
    assert_error(response, StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN").await;

    // Wrong size in a descriptor.
    let layer = registry.push_blob("m", b"12345").await;
    let manifest = image_manifest(&config_digest, 2, &layer, 999, None);
    let response = registry
        .put_manifest("m", "t", OCI_MANIFEST, &manifest)
        .await;
    assert_error(response, StatusCode::BAD_REQUEST, "MANIFEST_INVALID").await;

    // Not JSON, unsupported type, Content-Type that contradicts the body.
    let response = registry
        .put_manifest("m", "t", OCI_MANIFEST, b"{not json")
        .await;
    assert_error(response, StatusCode::BAD_REQUEST, "MANIFEST_INVALID").await;
    let response = registry
        .put_manifest(
            "m",
            "t",
            "application/vnd.docker.distribution.manifest.v1+json",
            b"{\"schemaVersion\":1}",
        )
        .await;
    assert_error(response, StatusCode::BAD_REQUEST, "MANIFEST_INVALID").await;
    let good = image_manifest(&config_digest, 2, &layer, 5, None);
    let response = registry.put_manifest("m", "t", OCI_INDEX, &good).await;
    assert_error(response, StatusCode::BAD_REQUEST, "MANIFEST_INVALID").await;
    let response = registry.put_manifest("m", "t", OCI_MANIFEST, &good).await;
    assert_eq!(response.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn oversized_manifest_gets_413() {
    let registry = TestRegistry::start().await;
    let big = vec![b' '; 4 * 1024 * 1024 + 1];
    let response = registry.put_manifest("big", "t", OCI_MANIFEST, &big).await;
    assert_error(response, StatusCode::PAYLOAD_TOO_LARGE, "SIZE_INVALID").await;
    // Streamed without Content-Length as well.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        big.chunks(65536).map(|c| Ok(c.to_vec())).collect();
    let response = registry
        .request(Method::PUT, "/v2/big/manifests/t")
        .header("Content-Type", OCI_MANIFEST)
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_error(response, StatusCode::PAYLOAD_TOO_LARGE, "SIZE_INVALID").await;
}

#[tokio::test]
async fn put_by_digest_with_several_tags_and_digest_check() {
    let registry = TestRegistry::start().await;
    let config = registry.push_blob("p", b"{}").await;
    let layer = registry.push_blob("p", b"abc").await;
    let manifest = image_manifest(&config, 2, &layer, 3, None);
    let digest = Digest::sha256_of(&manifest);
    let response = registry
        .put_manifest(
            "p",
            &format!("{digest}?tag=a&tag=b&tag=c"),
            OCI_MANIFEST,
            &manifest,
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(
        header(&response, "docker-content-digest"),
        digest.to_string()
    );
    let tags: Value = registry
        .request(Method::GET, "/v2/p/tags/list")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(tags, json!({"name": "p", "tags": ["a", "b", "c"]}));

    let wrong = Digest::sha256_of(b"other");
    let response = registry
        .put_manifest("p", &wrong.to_string(), OCI_MANIFEST, &manifest)
        .await;
    assert_error(response, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
    let response = registry
        .put_manifest("p", "sha256:short", OCI_MANIFEST, &manifest)
        .await;
    assert_error(response, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
    let response = registry
        .put_manifest("p", &format!("{digest}?tag=.bad"), OCI_MANIFEST, &manifest)
        .await;
    assert_error(response, StatusCode::BAD_REQUEST, "TAG_INVALID").await;

    // sha512 manifest digests work too.
    let digest512 = Digest::of(Algorithm::Sha512, &manifest);
    let response = registry
        .put_manifest("p", &digest512.to_string(), OCI_MANIFEST, &manifest)
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let response = registry
        .request(Method::GET, &format!("/v2/p/manifests/{digest512}"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        header(&response, "docker-content-digest"),
        digest512.to_string()
    );
    assert_eq!(response.bytes().await.unwrap(), manifest);
}

#[tokio::test]
async fn referrers_api_lists_and_filters_by_artifact_type() {
    let registry = TestRegistry::start().await;
    let (subject_bytes, subject) = registry.push_image("ref/app", "v1", b"base layer").await;
    let empty = registry.push_blob("ref/app", b"{}").await;
    let payload = registry.push_blob("ref/app", b"sbom contents").await;
    let subject_descriptor = json!({"mediaType": OCI_MANIFEST, "digest": subject.to_string(), "size": subject_bytes.len()});

    let mut pushed = Vec::new();
    for artifact_type in [
        "application/vnd.example.sbom",
        "application/vnd.example.signature",
    ] {
        let mut manifest: Value = serde_json::from_slice(&image_manifest(
            &empty,
            2,
            &payload,
            13,
            Some(("subject", subject_descriptor.clone())),
        ))
        .unwrap();
        manifest["artifactType"] = json!(artifact_type);
        manifest["annotations"] = json!({"org.example.kind": artifact_type});
        let bytes = serde_json::to_vec(&manifest).unwrap();
        let digest = Digest::sha256_of(&bytes);
        let response = registry
            .put_manifest("ref/app", &digest.to_string(), OCI_MANIFEST, &bytes)
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
        assert_eq!(header(&response, "oci-subject"), subject.to_string());
        pushed.push((digest, artifact_type));
    }

    let response = registry
        .request(Method::GET, &format!("/v2/ref/app/referrers/{subject}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header(&response, "content-type"), OCI_INDEX);
    assert!(!response.headers().contains_key("oci-filters-applied"));
    let index: Value = response.json().await.unwrap();
    assert_eq!(index["mediaType"], OCI_INDEX);
    assert_eq!(index["manifests"].as_array().unwrap().len(), 2);

    let response = registry
        .request(
            Method::GET,
            &format!("/v2/ref/app/referrers/{subject}?artifactType=application/vnd.example.sbom"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(header(&response, "oci-filters-applied"), "artifactType");
    let index: Value = response.json().await.unwrap();
    let manifests = index["manifests"].as_array().unwrap();
    assert_eq!(manifests.len(), 1);
    assert_eq!(manifests[0]["digest"], pushed[0].0.to_string());
    assert_eq!(manifests[0]["artifactType"], "application/vnd.example.sbom");
    assert_eq!(
        manifests[0]["annotations"]["org.example.kind"],
        "application/vnd.example.sbom"
    );

    // Deleting a referrer removes it from the list; an unknown subject has an empty list.
    let response = registry
        .request(
            Method::DELETE,
            &format!("/v2/ref/app/manifests/{}", pushed[0].0),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let index: Value = registry
        .request(Method::GET, &format!("/v2/ref/app/referrers/{subject}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(index["manifests"].as_array().unwrap().len(), 1);
    let unknown = Digest::sha256_of(b"nobody");
    let index: Value = registry
        .request(Method::GET, &format!("/v2/ref/app/referrers/{unknown}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(index["manifests"], json!([]));
    let response = registry
        .request(Method::GET, "/v2/ref/app/referrers/sha256:bad")
        .send()
        .await
        .unwrap();
    assert_error(response, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
}

#[tokio::test]
async fn tags_and_catalog_page_with_link_header() {
    let registry = TestRegistry::start().await;
    let (manifest, _) = registry.push_image("pg/one", "t0", b"x").await;
    for tag in ["t1", "t2", "t3", "t4"] {
        let response = registry
            .put_manifest("pg/one", tag, OCI_MANIFEST, &manifest)
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
    }
    registry.push_image("pg/two", "a", b"y").await;
    registry.push_image("aaa", "a", b"z").await;

    let response = registry
        .request(Method::GET, "/v2/pg/one/tags/list?n=2")
        .send()
        .await
        .unwrap();
    assert_eq!(
        header(&response, "link"),
        "</v2/pg/one/tags/list?n=2&last=t1>; rel=\"next\""
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body, json!({"name": "pg/one", "tags": ["t0", "t1"]}));
    let response = registry
        .request(Method::GET, "/v2/pg/one/tags/list?n=2&last=t3")
        .send()
        .await
        .unwrap();
    assert!(!response.headers().contains_key("link"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["tags"], json!(["t4"]));
    let body: Value = registry
        .request(Method::GET, "/v2/pg/one/tags/list?n=0")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["tags"], json!([]));
    let response = registry
        .request(Method::GET, "/v2/pg/one/tags/list?n=x")
        .send()
        .await
        .unwrap();
    assert_error(
        response,
        StatusCode::BAD_REQUEST,
        "PAGINATION_NUMBER_INVALID",
    )
    .await;

    let response = registry
        .request(Method::GET, "/v2/_catalog?n=2")
        .send()
        .await
        .unwrap();
    assert_eq!(
        header(&response, "link"),
        "</v2/_catalog?n=2&last=pg/one>; rel=\"next\""
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body, json!({"repositories": ["aaa", "pg/one"]}));
    let body: Value = registry
        .request(Method::GET, "/v2/_catalog?n=2&last=pg/one")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body, json!({"repositories": ["pg/two"]}));

    let response = registry
        .request(Method::GET, "/v2/nothing/tags/list")
        .send()
        .await
        .unwrap();
    assert_error(response, StatusCode::NOT_FOUND, "NAME_UNKNOWN").await;
}

#[tokio::test]
async fn bad_names_digests_and_methods_get_spec_errors() {
    let registry = TestRegistry::start().await;
    let digest = Digest::sha256_of(b"x");
    for name in ["UPPER", "a//b", "-a", "a/_layers", "a%2F..%2Fb"] {
        let response = registry
            .request(Method::GET, &format!("/v2/{name}/tags/list"))
            .send()
            .await
            .unwrap();
        assert_error(response, StatusCode::BAD_REQUEST, "NAME_INVALID").await;
        let response = registry
            .request(Method::POST, &format!("/v2/{name}/blobs/uploads/"))
            .send()
            .await
            .unwrap();
        assert_error(response, StatusCode::BAD_REQUEST, "NAME_INVALID").await;
        let response = registry
            .request(Method::GET, &format!("/v2/{name}/blobs/{digest}"))
            .send()
            .await
            .unwrap();
        assert_error(response, StatusCode::BAD_REQUEST, "NAME_INVALID").await;
    }
    let response = registry
        .request(Method::GET, "/v2/a/blobs/sha256:1234")
        .send()
        .await
        .unwrap();
    assert_error(response, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
    let response = registry
        .request(Method::GET, "/v2/a/blobs/md5:1234")
        .send()
        .await
        .unwrap();
    assert_error(response, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
    let response = registry
        .request(Method::GET, &format!("/v2/a/blobs/{digest}"))
        .send()
        .await
        .unwrap();
    assert_error(response, StatusCode::NOT_FOUND, "BLOB_UNKNOWN").await;
    let response = registry
        .request(Method::GET, "/v2/a/manifests/latest")
        .send()
        .await
        .unwrap();
    assert_error(response, StatusCode::NOT_FOUND, "NAME_UNKNOWN").await;
    registry.push_image("a", "v1", b"q").await;
    let response = registry
        .request(Method::GET, "/v2/a/manifests/latest")
        .send()
        .await
        .unwrap();
    assert_error(response, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
    let response = registry
        .request(Method::GET, "/v2/a/manifests/.bad")
        .send()
        .await
        .unwrap();
    assert_error(response, StatusCode::BAD_REQUEST, "TAG_INVALID").await;
    let response = registry
        .request(Method::POST, "/v2/a/manifests/v1")
        .send()
        .await
        .unwrap();
    assert_error(response, StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED").await;
    let response = registry
        .request(Method::PUT, &format!("/v2/a/blobs/{digest}"))
        .send()
        .await
        .unwrap();
    assert_error(response, StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED").await;
    let response = registry
        .request(Method::GET, "/v2/a/blobs/uploads/")
        .send()
        .await
        .unwrap();
    assert_error(response, StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED").await;
    let response = registry
        .request(
            Method::POST,
            &format!("/v2/a/blobs/uploads/?mount={digest}&from=BAD"),
        )
        .send()
        .await
        .unwrap();
    assert_error(response, StatusCode::BAD_REQUEST, "NAME_INVALID").await;
    // Nothing escaped the data directory.
    assert!(!registry.dir.path().join("b").exists());
}

#[tokio::test]
async fn health_and_metrics_endpoints() {
    let registry = TestRegistry::start().await;
    let response = registry
        .request(Method::GET, "/healthz")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    registry.push_blob("met", &[7u8; 1234]).await;
    registry
        .request(Method::POST, "/v2/met/blobs/uploads/")
        .send()
        .await
        .unwrap();
    registry
        .request(Method::GET, "/v2/met/blobs/sha256:00")
        .send()
        .await
        .unwrap();
    let text = registry
        .request(Method::GET, "/metrics")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains(
            "imgbuild_registry_requests_total{route=\"upload\",method=\"POST\",status=\"201\"} 1"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "imgbuild_registry_requests_total{route=\"blob\",method=\"GET\",status=\"400\"} 1"
        ),
        "{text}"
    );
    assert!(
        text.contains("imgbuild_registry_bytes_received_total 1234"),
        "{text}"
    );
    assert!(
        text.contains("imgbuild_registry_upload_sessions 1"),
        "{text}"
    );
    assert!(
        text.contains("imgbuild_registry_uploads_completed_total 1"),
        "{text}"
    );
}

#[tokio::test]
async fn unfinished_upload_continues_after_restart() {
    let mut registry = TestRegistry::start().await;
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let response = registry
        .request(Method::POST, "/v2/resume/blobs/uploads/")
        .send()
        .await
        .unwrap();
    let location = header(&response, "location").to_string();
    let response = registry
        .request(Method::PATCH, &location)
        .header("Content-Range", "0-99999")
        .body(data[..100_000].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);

    registry.restart().await;
    let response = registry
        .request(Method::GET, &location)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&response, "range"), "0-99999");
    let digest = Digest::sha256_of(&data);
    let response = registry
        .request(Method::PUT, &format!("{location}?digest={digest}"))
        .header("Content-Range", "100000-199999")
        .body(data[100_000..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let response = registry
        .request(Method::GET, &format!("/v2/resume/blobs/{digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.bytes().await.unwrap(), data);
}

#[tokio::test]
async fn graceful_shutdown_lets_in_flight_requests_finish() {
    let mut registry = TestRegistry::start().await;
    let response = registry
        .request(Method::POST, "/v2/slow/blobs/uploads/")
        .send()
        .await
        .unwrap();
    let location = header(&response, "location").to_string();
    let (sender, receiver) = futures::channel::mpsc::unbounded::<Result<Vec<u8>, std::io::Error>>();
    sender.unbounded_send(Ok(b"first ".to_vec())).unwrap();
    let request = registry
        .request(Method::PATCH, &location)
        .body(reqwest::Body::wrap_stream(receiver))
        .send();
    let in_flight = tokio::spawn(request);
    tokio::time::sleep(Duration::from_millis(200)).await;

    let server = registry.server.take().unwrap();
    let stopping = tokio::spawn(server.stop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !stopping.is_finished(),
        "the server must wait for the in-flight upload"
    );
    sender.unbounded_send(Ok(b"second".to_vec())).unwrap();
    drop(sender);
    let response = in_flight.await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert_eq!(header(&response, "range"), "0-11");
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    // New connections are refused once stopped.
    assert!(
        registry
            .client
            .get(registry.url("/v2/"))
            .send()
            .await
            .is_err()
    );
}

#[tokio::test]
async fn oversized_request_headers_get_431() {
    let registry = TestRegistry::start().await;
    let response = registry
        .request(Method::GET, "/v2/")
        .header("X-Padding", "p".repeat(70 * 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
    );
    assert_eq!(
        header(&response, "docker-distribution-api-version"),
        "registry/2.0"
    );
    let mut request = registry.request(Method::GET, "/v2/");
    for i in 0..80 {
        request = request.header(format!("x-h{i}"), "v");
    }
    assert_eq!(
        request.send().await.unwrap().status(),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
    );
}

#[tokio::test]
async fn concurrent_uploads_serialize_per_session_and_dedupe_blobs() {
    let registry = TestRegistry::start().await;
    // Two streamed PATCHes to one session at once: both land, one after the other.
    let response = registry
        .request(Method::POST, "/v2/con/blobs/uploads/")
        .send()
        .await
        .unwrap();
    let location = header(&response, "location").to_string();
    let part = vec![b'z'; 300_000];
    let (a, b) = tokio::join!(
        registry
            .request(Method::PATCH, &location)
            .body(part.clone())
            .send(),
        registry
            .request(Method::PATCH, &location)
            .body(part.clone())
            .send(),
    );
    assert_eq!(a.unwrap().status(), StatusCode::ACCEPTED);
    assert_eq!(b.unwrap().status(), StatusCode::ACCEPTED);
    let whole = [part.clone(), part.clone()].concat();
    let digest = Digest::sha256_of(&whole);
    let response = registry
        .request(Method::PUT, &format!("{location}?digest={digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);

    // The same blob pushed to many repositories at once: all succeed, stored once.
    let data = b"same content everywhere".to_vec();
    let pushes = (0..8).map(|i| {
        let data = data.clone();
        let digest = Digest::sha256_of(&data);
        registry
            .request(
                Method::POST,
                &format!("/v2/con/r{i}/blobs/uploads/?digest={digest}"),
            )
            .body(data)
            .send()
    });
    for response in futures::future::join_all(pushes).await {
        assert_eq!(response.unwrap().status(), StatusCode::CREATED);
    }
    assert_eq!(walk_files(&registry.dir.path().join("blobs")).len(), 2);
}

#[tokio::test]
async fn corrupt_storage_is_a_500_without_internal_details() {
    let registry = TestRegistry::start().await;
    registry.push_image("broken", "v1", b"l").await;
    let tag_file = registry
        .dir
        .path()
        .join("repositories/broken/_manifests/tags/v1");
    std::fs::write(&tag_file, "not a digest").unwrap();
    let response = registry
        .request(Method::GET, "/v2/broken/manifests/v1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let body = response.text().await.unwrap();
    assert!(body.contains("\"UNKNOWN\""), "{body}");
    let data_dir = registry.dir.path().display().to_string();
    assert!(
        !body.contains(&data_dir),
        "the data directory leaked: {body}"
    );
}

/// Extra request headers of a test case.
type Headers = Vec<(&'static str, &'static str)>;

#[tokio::test]
async fn hostile_input_is_refused_with_4xx_never_500() {
    let registry = TestRegistry::start().await;
    let (_, digest) = registry.push_image("h", "v1", b"layer").await;
    let response = registry
        .request(Method::POST, "/v2/h/blobs/uploads/")
        .send()
        .await
        .unwrap();
    let upload = header(&response, "location").to_string();
    let long_name = "a/".repeat(200) + "a";
    let cases: Vec<(Method, String, Headers)> = vec![
        (
            Method::PATCH,
            upload.clone(),
            vec![("Content-Range", "0-18446744073709551615")],
        ),
        (
            Method::PATCH,
            upload.clone(),
            vec![("Content-Range", "bytes=-")],
        ),
        (
            Method::PATCH,
            upload.clone(),
            vec![("Content-Range", "5-2")],
        ),
        (
            Method::PATCH,
            upload.clone(),
            vec![("Content-Length", "abc")],
        ),
        (
            Method::PUT,
            format!("{upload}?digest=sha256:{}", "A".repeat(64)),
            vec![],
        ),
        (Method::PUT, format!("{upload}?digest=%ZZ"), vec![]),
        (
            Method::GET,
            format!("/v2/h/blobs/{digest}"),
            vec![("Range", "bytes=99999999999999999999-")],
        ),
        (
            Method::GET,
            format!("/v2/h/blobs/{digest}"),
            vec![("Range", "bytes=--1")],
        ),
        (
            Method::GET,
            format!("/v2/h/blobs/{digest}"),
            vec![("Range", "bytes=0-0,5-6")],
        ),
        (
            Method::GET,
            "/v2/h/manifests/v1".to_string(),
            vec![("Accept", "\u{e9}t\u{e9}")],
        ),
        (
            Method::GET,
            "/v2/h/tags/list?n=99999999999999999999999".to_string(),
            vec![],
        ),
        (Method::GET, "/v2/_catalog?n=-1".to_string(), vec![]),
        (Method::GET, format!("/v2/{long_name}/tags/list"), vec![]),
        (Method::GET, "/v2/h/manifests/".to_string(), vec![]),
        (Method::GET, "/v2/h/blobs/".to_string(), vec![]),
        (Method::GET, "/v2/h/referrers/".to_string(), vec![]),
        (Method::GET, "/v2//tags/list".to_string(), vec![]),
        (Method::GET, "/v2/%00/tags/list".to_string(), vec![]),
        (
            Method::GET,
            "/v2/h/blobs/uploads/../../../etc".to_string(),
            vec![],
        ),
        (
            Method::PUT,
            "/v2/h/manifests/v2".to_string(),
            vec![("Content-Type", OCI_MANIFEST)],
        ),
        (Method::PUT, "/v2/h/manifests/v2".to_string(), vec![]),
        (
            Method::POST,
            "/v2/h/blobs/uploads/?mount=sha256:zz".to_string(),
            vec![],
        ),
        (Method::DELETE, "/v2/h/blobs/uploads/".to_string(), vec![]),
    ];
    for (method, path, headers) in cases {
        let mut request = registry.request(method.clone(), &path);
        for (name, value) in &headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        assert!(
            status.is_client_error() || status.is_success(),
            "{method} {path} {headers:?} -> {status}: {}",
            response.text().await.unwrap()
        );
    }
    // The repository still works afterwards.
    let response = registry
        .request(Method::GET, "/v2/h/manifests/v1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_client_that_never_finishes_its_request_head_is_disconnected() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let dir = tempfile::tempdir().unwrap();
    let mut config = RegistryConfig::new("127.0.0.1:0".parse().unwrap(), dir.path());
    config.header_read_timeout = Duration::from_millis(500);
    let server = spawn(&config).await.unwrap();

    // A complete request head is answered.
    let mut prompt = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    prompt
        .write_all(b"GET /v2/ HTTP/1.1\r\nHost: registry\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    prompt.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // A head that stops half-way is cut off after the timeout, with nothing answered.
    let mut slow = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    slow.write_all(b"GET /v2/ HTTP/1.1\r\nHost: regi")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut rest))
        .await
        .expect("the server must close the connection");
    assert!(
        read.is_err() || rest.is_empty() || String::from_utf8_lossy(&rest).contains("408"),
        "no response but a timeout: {:?}",
        String::from_utf8_lossy(&rest)
    );
    assert!(started.elapsed() >= Duration::from_millis(400));
    server.stop().await.unwrap();
}

//! The wire protocol for one registry (OCI distribution-spec v1.1): manifest GET/PUT, blob
//! HEAD/GET, uploads (monolithic, chunked with resume, cross-repo mount), with authentication
//! retried transparently on 401 and every fetched byte verified against its digest.

use std::io::{Seek as _, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt as _;
use reqwest::header::{
    ACCEPT, CONTENT_LENGTH, CONTENT_TYPE, HeaderMap, LOCATION, WWW_AUTHENTICATE,
};
use reqwest::{RequestBuilder, Response, StatusCode, Url};
use tokio::io::AsyncReadExt as _;

use super::ConnectionOptions;
use super::auth::{Authenticator, Credentials, docker_config_dir};
use super::error::RegistryError;
use crate::digest::{Digest, Hasher};
use crate::image::manifest::media_types;
use crate::reference::{DOCKER_HUB, DOCKER_HUB_API_HOST, host_of, is_loopback_host};

/// Largest manifest accepted (the distribution spec suggests registries cap at 4 MiB).
const MANIFEST_MAX_BYTES: usize = 4 * 1024 * 1024;
/// How much of an error response body is read for its message.
const ERROR_BODY_MAX_BYTES: usize = 8 * 1024;
/// Attempts for one upload before giving up on transient errors.
const UPLOAD_ATTEMPTS: u32 = 5;

/// A manifest as fetched: exact bytes, media type, and the digest verified against the bytes.
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    pub bytes: Vec<u8>,
    pub media_type: String,
    pub digest: Digest,
}

/// Result of asking the registry to mount a blob from another repository.
pub enum MountOutcome {
    Mounted,
    /// The registry did not mount and opened an ordinary upload session at this URL instead.
    UploadStarted(Url),
}

/// Sizes that decide how blobs are uploaded.
#[derive(Debug, Clone, Copy)]
pub struct UploadTuning {
    /// Blobs up to this size go in one PUT; larger ones in PATCH chunks.
    pub monolithic_max: u64,
    pub chunk_size: u64,
}

impl Default for UploadTuning {
    fn default() -> Self {
        UploadTuning {
            // Small enough that progress advances and a failure costs little; large enough
            // that round trips do not dominate.
            monolithic_max: 8 * 1024 * 1024,
            chunk_size: 16 * 1024 * 1024,
        }
    }
}

/// A client for one registry.
pub struct RegistryClient {
    http: reqwest::Client,
    registry: String,
    base_url: Url,
    auth: Authenticator,
}

fn pull_scope(repository: &str) -> String {
    format!("repository:{repository}:pull")
}

fn push_scope(repository: &str) -> String {
    format!("repository:{repository}:pull,push")
}

/// How far an interrupted blob download got: the bytes written so far and their running hash,
/// so a retry asks only for the rest ([`RegistryClient::resume_download`]).
pub struct DownloadState {
    received: u64,
    hasher: Hasher,
}

impl DownloadState {
    pub fn new(digest: &Digest) -> DownloadState {
        DownloadState {
            received: 0,
            hasher: Hasher::new(digest.algorithm()),
        }
    }

    /// Bytes written so far.
    pub fn received(&self) -> u64 {
        self.received
    }
}

impl RegistryClient {
    /// A client for `registry` (as written in references: `docker.io`, `127.0.0.1:5000`).
    pub fn new(
        registry: &str,
        options: &ConnectionOptions,
    ) -> Result<RegistryClient, RegistryError> {
        let config_dir = options
            .docker_config_dir
            .clone()
            .unwrap_or_else(docker_config_dir);
        Self::build(registry, options, Authenticator::new(registry, config_dir))
    }

    /// A client that uses `credentials` instead of looking them up.
    pub fn with_credentials(
        registry: &str,
        options: &ConnectionOptions,
        credentials: Credentials,
    ) -> Result<RegistryClient, RegistryError> {
        let auth = Authenticator::new(registry, PathBuf::new()).with_credentials(credentials);
        Self::build(registry, options, auth)
    }

    fn build(
        registry: &str,
        options: &ConnectionOptions,
        auth: Authenticator,
    ) -> Result<RegistryClient, RegistryError> {
        let tls_error = |reason: String| RegistryError::Tls {
            registry: registry.to_string(),
            reason,
        };
        let api_host = if registry == DOCKER_HUB {
            DOCKER_HUB_API_HOST
        } else {
            registry
        };
        let plain_http = options
            .plain_http
            .unwrap_or_else(|| is_loopback_host(host_of(registry)));
        let scheme = if plain_http { "http" } else { "https" };
        let base_url = Url::parse(&format!("{scheme}://{api_host}/"))
            .map_err(|e| tls_error(format!("bad registry address {api_host:?}: {e}")))?;
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("imgbuild/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(30))
            .read_timeout(Duration::from_secs(120));
        if !options.tls_verify {
            builder = builder.tls_danger_accept_invalid_certs(true);
        }
        let mut certificates = Vec::new();
        for dir in &options.certs_dirs {
            for path in ca_files(&dir.join(registry)) {
                let pem = std::fs::read(&path)
                    .map_err(|e| tls_error(format!("cannot read {}: {e}", path.display())))?;
                let certificate = reqwest::Certificate::from_pem(&pem).map_err(|e| {
                    tls_error(format!("{} is not a PEM certificate: {e}", path.display()))
                })?;
                certificates.push(certificate);
            }
        }
        if !certificates.is_empty() {
            builder = builder.tls_certs_merge(certificates);
        }
        let http = builder
            .build()
            .map_err(|e| tls_error(format!("cannot set up HTTP client: {e}")))?;
        Ok(RegistryClient {
            http,
            registry: registry.to_string(),
            base_url,
            auth,
        })
    }

    /// The registry name this client talks to.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.http
    }

    fn url(&self, path: &str) -> Result<Url, RegistryError> {
        self.base_url
            .join(path)
            .map_err(|e| RegistryError::BadManifest {
                what: path.to_string(),
                reason: format!("cannot form a URL: {e}"),
            })
    }

    /// Sends the request `build` makes, authenticating and re-sending once on 401.
    /// `build` is called again for the retry, so streaming bodies are recreated.
    async fn send(
        &self,
        scope: &str,
        build: impl Fn() -> Result<RequestBuilder, RegistryError>,
    ) -> Result<Response, RegistryError> {
        let mut authenticated = false;
        loop {
            let mut request = build()?;
            if let Some(header) = self.auth.header_for(scope).await? {
                request = request.header(reqwest::header::AUTHORIZATION, header);
            }
            let response = request
                .send()
                .await
                .map_err(|e| RegistryError::transport(&self.registry, &e))?;
            if response.status() == StatusCode::UNAUTHORIZED && !authenticated {
                authenticated = true;
                let challenge = header_str(response.headers(), WWW_AUTHENTICATE);
                if self
                    .auth
                    .authenticate(self, challenge.as_deref(), scope)
                    .await?
                {
                    continue;
                }
            }
            return Ok(response);
        }
    }

    /// Turns a non-success response into an error; `what` names the object for 404s.
    async fn check(
        &self,
        response: Response,
        request: &str,
        what: &str,
    ) -> Result<Response, RegistryError> {
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let detail = error_detail(response).await;
        let registry = self.registry.clone();
        Err(match status {
            StatusCode::UNAUTHORIZED => RegistryError::Unauthorized { registry, detail },
            StatusCode::FORBIDDEN => RegistryError::Denied { registry, detail },
            StatusCode::NOT_FOUND => RegistryError::NotFound {
                registry,
                what: what.to_string(),
            },
            _ => RegistryError::Status {
                registry,
                status: status.as_u16(),
                request: request.to_string(),
                detail,
            },
        })
    }

    /// Checks that the registry accepts this client's credentials (GET /v2/).
    pub async fn verify_login(&self) -> Result<(), RegistryError> {
        let url = self.url("/v2/")?;
        let response = self.send("", || Ok(self.http.get(url.clone()))).await?;
        match self
            .check(response, "GET /v2/", "the API endpoint /v2/")
            .await
        {
            Err(RegistryError::Unauthorized { registry, .. }) => {
                Err(RegistryError::CredentialsRejected { registry })
            }
            other => other.map(|_| ()),
        }
    }

    /// Fetches a manifest or index by tag or digest and verifies its digest: against
    /// `tag_or_digest` when it is a digest, and against the registry's Docker-Content-Digest.
    pub async fn get_manifest(
        &self,
        repository: &str,
        tag_or_digest: &str,
    ) -> Result<FetchedManifest, RegistryError> {
        let what = format!("manifest {}/{repository}:{tag_or_digest}", self.registry)
            .replace(":sha256:", "@sha256:")
            .replace(":sha512:", "@sha512:");
        let url = self.url(&format!("/v2/{repository}/manifests/{tag_or_digest}"))?;
        let scope = pull_scope(repository);
        let response = self
            .send(&scope, || {
                Ok(self
                    .http
                    .get(url.clone())
                    .header(ACCEPT, media_types::MANIFEST_ACCEPT))
            })
            .await?;
        let response = self.check(response, &format!("GET {what}"), &what).await?;
        let header_digest = header_str(response.headers(), "docker-content-digest")
            .and_then(|d| Digest::parse(&d).ok());
        let content_type = header_str(response.headers(), CONTENT_TYPE)
            .map(|t| t.split(';').next().unwrap_or("").trim().to_string());
        let bytes = read_limited(response, MANIFEST_MAX_BYTES, &self.registry, &what).await?;
        let expected = Digest::parse(tag_or_digest).ok().or(header_digest);
        let digest = match &expected {
            Some(expected) => {
                let actual = Digest::of(expected.algorithm(), &bytes);
                if &actual != expected {
                    return Err(RegistryError::DigestMismatch {
                        what,
                        expected: expected.clone(),
                        actual,
                    });
                }
                actual
            }
            None => Digest::sha256_of(&bytes),
        };
        let media_type = match content_type
            .filter(|t| media_types::is_index(t) || media_types::is_image_manifest(t))
        {
            Some(media_type) => media_type,
            None => media_type_from_body(&bytes).ok_or_else(|| RegistryError::BadManifest {
                what: what.clone(),
                reason: "unknown media type (not an OCI or Docker schema2 manifest or index)"
                    .to_string(),
            })?,
        };
        Ok(FetchedManifest {
            bytes,
            media_type,
            digest,
        })
    }

    /// HEAD a blob: `Some(size)` when the repository has it.
    pub async fn blob_exists(
        &self,
        repository: &str,
        digest: &Digest,
    ) -> Result<Option<u64>, RegistryError> {
        let url = self.url(&format!("/v2/{repository}/blobs/{digest}"))?;
        let scope = pull_scope(repository);
        let response = self
            .send(&scope, || Ok(self.http.head(url.clone())))
            .await?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let what = format!("blob {digest} in {repository}");
        let response = self.check(response, &format!("HEAD {what}"), &what).await?;
        let size = header_str(response.headers(), CONTENT_LENGTH)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        Ok(Some(size))
    }

    /// Streams a blob into `writer` while hashing it; fails on a digest or size mismatch.
    /// `on_progress` gets the byte count after every chunk. Returns the size.
    pub async fn download_blob(
        &self,
        repository: &str,
        digest: &Digest,
        expected_size: Option<u64>,
        writer: &mut dyn Write,
        on_progress: &mut dyn FnMut(u64),
    ) -> Result<u64, RegistryError> {
        let mut state = DownloadState::new(digest);
        self.resume_download(
            repository,
            digest,
            expected_size,
            &mut state,
            writer,
            on_progress,
        )
        .await
    }

    /// Like [`Self::download_blob`], continuing from `state`: after a transient failure, call
    /// it again with the same state and writer and it asks only for the missing bytes
    /// (`Range: bytes=N-`). A registry that ignores the range sends the whole blob again; the
    /// bytes already written are then skipped.
    pub async fn resume_download(
        &self,
        repository: &str,
        digest: &Digest,
        expected_size: Option<u64>,
        state: &mut DownloadState,
        writer: &mut dyn Write,
        on_progress: &mut dyn FnMut(u64),
    ) -> Result<u64, RegistryError> {
        let what = format!("blob {digest} of {}/{repository}", self.registry);
        let url = self.url(&format!("/v2/{repository}/blobs/{digest}"))?;
        let scope = pull_scope(repository);
        let resume_from = state.received;
        let response = self
            .send(&scope, || {
                let request = self.http.get(url.clone());
                Ok(if resume_from > 0 {
                    request.header(reqwest::header::RANGE, format!("bytes={resume_from}-"))
                } else {
                    request
                })
            })
            .await?;
        let response = self.check(response, &format!("GET {what}"), &what).await?;
        // Bytes of this response that were already written by an earlier attempt.
        let mut to_skip = if response.status() == reqwest::StatusCode::PARTIAL_CONTENT {
            let content_range = response
                .headers()
                .get(reqwest::header::CONTENT_RANGE)
                .and_then(|value| value.to_str().ok())
                .unwrap_or("");
            if !content_range.starts_with(&format!("bytes {resume_from}-")) {
                return Err(RegistryError::SizeMismatch {
                    what,
                    expected: resume_from,
                    actual: format!("a range starting elsewhere ({content_range:?})"),
                });
            }
            0
        } else {
            resume_from
        };
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| RegistryError::transport(&self.registry, &e))?;
            let skipped = to_skip.min(chunk.len() as u64);
            to_skip -= skipped;
            let chunk = &chunk[skipped as usize..];
            if chunk.is_empty() {
                continue;
            }
            let received = state.received + chunk.len() as u64;
            if let Some(size) = expected_size
                && received > size
            {
                return Err(RegistryError::SizeMismatch {
                    what,
                    expected: size,
                    actual: format!("more than {size}"),
                });
            }
            writer
                .write_all(chunk)
                .map_err(|source| RegistryError::Io {
                    what: format!("write {what}"),
                    source,
                })?;
            state.hasher.update(chunk);
            state.received = received;
            on_progress(received);
        }
        let received = state.received;
        let actual = std::mem::replace(&mut state.hasher, Hasher::new(digest.algorithm())).finish();
        if &actual != digest {
            return Err(RegistryError::DigestMismatch {
                what,
                expected: digest.clone(),
                actual,
            });
        }
        if let Some(size) = expected_size
            && size != received
        {
            return Err(RegistryError::SizeMismatch {
                what,
                expected: size,
                actual: received.to_string(),
            });
        }
        Ok(received)
    }

    /// Asks the registry to mount `digest` from `from_repository` into `repository`.
    pub async fn mount_blob(
        &self,
        repository: &str,
        digest: &Digest,
        from_repository: &str,
    ) -> Result<MountOutcome, RegistryError> {
        let mut url = self.url(&format!("/v2/{repository}/blobs/uploads/"))?;
        url.query_pairs_mut()
            .append_pair("mount", &digest.to_string())
            .append_pair("from", from_repository);
        let scope = format!("{} {}", push_scope(repository), pull_scope(from_repository));
        let response = self
            .send(&scope, || {
                Ok(self.http.post(url.clone()).header(CONTENT_LENGTH, "0"))
            })
            .await?;
        let what = format!("upload to {}/{repository}", self.registry);
        let status = response.status();
        let response = self.check(response, &format!("POST {what}"), &what).await?;
        if status == StatusCode::CREATED {
            return Ok(MountOutcome::Mounted);
        }
        Ok(MountOutcome::UploadStarted(self.location(&response, &url)?))
    }

    /// Opens an upload session; returns its URL.
    pub async fn start_upload(&self, repository: &str) -> Result<Url, RegistryError> {
        let url = self.url(&format!("/v2/{repository}/blobs/uploads/"))?;
        let scope = push_scope(repository);
        let response = self
            .send(&scope, || {
                Ok(self.http.post(url.clone()).header(CONTENT_LENGTH, "0"))
            })
            .await?;
        let what = format!("upload to {}/{repository}", self.registry);
        let response = self.check(response, &format!("POST {what}"), &what).await?;
        self.location(&response, &url)
    }

    fn location(&self, response: &Response, request_url: &Url) -> Result<Url, RegistryError> {
        let location =
            header_str(response.headers(), LOCATION).ok_or_else(|| RegistryError::Status {
                registry: self.registry.clone(),
                status: response.status().as_u16(),
                request: format!("upload {request_url}"),
                detail: ": the response has no Location header".to_string(),
            })?;
        request_url
            .join(&location)
            .map_err(|e| RegistryError::Status {
                registry: self.registry.clone(),
                status: response.status().as_u16(),
                request: format!("upload {request_url}"),
                detail: format!(": bad Location {location:?}: {e}"),
            })
    }

    /// Uploads the blob stored at `path` (`size` bytes, digest `digest`), streaming from disk:
    /// one PUT when small, PATCH chunks when large, resuming from the registry's offset after
    /// transient errors. `session` is an upload already opened (e.g. by a failed mount).
    /// `on_progress` gets the bytes confirmed so far.
    #[allow(clippy::too_many_arguments)]
    pub async fn upload_blob(
        &self,
        repository: &str,
        digest: &Digest,
        size: u64,
        path: &Path,
        session: Option<Url>,
        tuning: UploadTuning,
        on_progress: &mut (dyn FnMut(u64) + Send),
    ) -> Result<(), RegistryError> {
        let mut session = session;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let location = match session.take() {
                Some(location) => location,
                None => self.start_upload(repository).await?,
            };
            let result = if size <= tuning.monolithic_max {
                self.put_whole(repository, digest, size, path, location)
                    .await
            } else {
                self.upload_chunks(
                    repository,
                    digest,
                    size,
                    path,
                    location,
                    tuning,
                    on_progress,
                )
                .await
            };
            match result {
                Ok(()) => {
                    on_progress(size);
                    return Ok(());
                }
                Err(e) if e.is_transient() && attempt < UPLOAD_ATTEMPTS => {
                    tracing::warn!("upload of {digest} failed ({e}); retrying");
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn put_whole(
        &self,
        repository: &str,
        digest: &Digest,
        size: u64,
        path: &Path,
        location: Url,
    ) -> Result<(), RegistryError> {
        let mut url = location;
        url.query_pairs_mut()
            .append_pair("digest", &digest.to_string());
        let scope = push_scope(repository);
        let response = self
            .send(&scope, || {
                Ok(self
                    .http
                    .put(url.clone())
                    .header(CONTENT_TYPE, "application/octet-stream")
                    .header(CONTENT_LENGTH, size)
                    .body(file_body(path, 0, size)?))
            })
            .await?;
        let what = format!("blob {digest} upload to {}/{repository}", self.registry);
        self.check(response, &format!("PUT {what}"), &what).await?;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn upload_chunks(
        &self,
        repository: &str,
        digest: &Digest,
        size: u64,
        path: &Path,
        location: Url,
        tuning: UploadTuning,
        on_progress: &mut (dyn FnMut(u64) + Send),
    ) -> Result<(), RegistryError> {
        let scope = push_scope(repository);
        let what = format!("blob {digest} upload to {}/{repository}", self.registry);
        let mut location = location;
        let mut offset: u64 = 0;
        let mut failures = 0;
        while offset < size {
            let length = tuning.chunk_size.max(1).min(size - offset);
            let chunk_url = location.clone();
            let sent = self
                .send(&scope, || {
                    Ok(self
                        .http
                        .patch(chunk_url.clone())
                        .header(CONTENT_TYPE, "application/octet-stream")
                        .header(CONTENT_LENGTH, length)
                        .header(
                            "Content-Range",
                            format!("{}-{}", offset, offset + length - 1),
                        )
                        .body(file_body(path, offset, length)?))
                })
                .await;
            let checked = match sent {
                Ok(response) => self.check(response, &format!("PATCH {what}"), &what).await,
                Err(e) => Err(e),
            };
            match checked {
                Ok(response) => {
                    location = self.location(&response, &chunk_url)?;
                    offset = match range_end(response.headers()) {
                        Some(end) => end + 1,
                        None => offset + length,
                    };
                    on_progress(offset);
                }
                Err(e) if e.is_transient() && failures + 1 < UPLOAD_ATTEMPTS => {
                    failures += 1;
                    tracing::warn!("chunk of {digest} at {offset} failed ({e}); resuming");
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(failures))).await;
                    let (resumed_location, resumed_offset) =
                        self.upload_status(&scope, &chunk_url, &what).await?;
                    location = resumed_location;
                    offset = resumed_offset;
                }
                Err(e) => return Err(e),
            }
        }
        let mut url = location;
        url.query_pairs_mut()
            .append_pair("digest", &digest.to_string());
        let response = self
            .send(&scope, || {
                Ok(self.http.put(url.clone()).header(CONTENT_LENGTH, "0"))
            })
            .await?;
        self.check(response, &format!("PUT {what}"), &what).await?;
        Ok(())
    }

    /// GET on an upload session: where to continue and from which offset.
    async fn upload_status(
        &self,
        scope: &str,
        location: &Url,
        what: &str,
    ) -> Result<(Url, u64), RegistryError> {
        let response = self
            .send(scope, || Ok(self.http.get(location.clone())))
            .await?;
        let response = self
            .check(response, &format!("GET status of {what}"), what)
            .await?;
        let next = range_end(response.headers()).map_or(0, |end| end + 1);
        let url = self
            .location(&response, location)
            .unwrap_or_else(|_| location.clone());
        Ok((url, next))
    }

    /// PUTs a manifest under a tag or digest; returns the digest of the bytes sent.
    pub async fn put_manifest(
        &self,
        repository: &str,
        tag_or_digest: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<Digest, RegistryError> {
        let url = self.url(&format!("/v2/{repository}/manifests/{tag_or_digest}"))?;
        let scope = push_scope(repository);
        let body = bytes::Bytes::copy_from_slice(bytes);
        let response = self
            .send(&scope, || {
                Ok(self
                    .http
                    .put(url.clone())
                    .header(CONTENT_TYPE, media_type)
                    .body(body.clone()))
            })
            .await?;
        let what = format!("manifest {}/{repository}:{tag_or_digest}", self.registry);
        self.check(response, &format!("PUT {what}"), &what).await?;
        Ok(Digest::sha256_of(bytes))
    }
}

/// `*.crt` files in a certs.d host directory (missing directory: none).
fn ca_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|ext| ext == "crt"))
        .collect();
    files.sort();
    files
}

/// A streaming request body of `length` bytes of `path` from `offset`.
fn file_body(path: &Path, offset: u64, length: u64) -> Result<reqwest::Body, RegistryError> {
    let io_error = |source| RegistryError::Io {
        what: format!("read {}", path.display()),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io_error)?;
    file.seek(SeekFrom::Start(offset)).map_err(io_error)?;
    let reader = tokio::fs::File::from_std(file).take(length);
    let stream = tokio_util::io::ReaderStream::with_capacity(reader, 256 * 1024);
    Ok(reqwest::Body::wrap_stream(stream))
}

fn header_str(headers: &HeaderMap, name: impl reqwest::header::AsHeaderName) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// The end offset of a `Range: 0-N` upload-status header.
fn range_end(headers: &HeaderMap) -> Option<u64> {
    let range = header_str(headers, "range")?;
    let range = range.strip_prefix("bytes=").unwrap_or(&range);
    range.split_once('-')?.1.trim().parse().ok()
}

/// The `mediaType` field of a manifest body, when it is one we understand.
fn media_type_from_body(bytes: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
    }
    let probe: Probe = serde_json::from_slice(bytes).ok()?;
    match probe.media_type {
        Some(t) if media_types::is_index(&t) || media_types::is_image_manifest(&t) => Some(t),
        Some(_) => None,
        None if probe.manifests.is_some() => Some(media_types::OCI_INDEX.to_string()),
        None => Some(media_types::OCI_MANIFEST.to_string()),
    }
}

/// Reads at most `limit` bytes of a response body.
async fn read_limited(
    response: Response,
    limit: usize,
    registry: &str,
    what: &str,
) -> Result<Vec<u8>, RegistryError> {
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| RegistryError::transport(registry, &e))?;
        if body.len() + chunk.len() > limit {
            return Err(RegistryError::BadManifest {
                what: what.to_string(),
                reason: format!("it is larger than {limit} bytes"),
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// `": CODE: message"` from a distribution-spec error body, or `""`.
async fn error_detail(response: Response) -> String {
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<ErrorItem>,
    }
    #[derive(serde::Deserialize)]
    struct ErrorItem {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    let Ok(body) = read_limited(response, ERROR_BODY_MAX_BYTES, "", "").await else {
        return String::new();
    };
    match serde_json::from_slice::<Errors>(&body) {
        Ok(errors) if !errors.errors.is_empty() => {
            let items: Vec<String> = errors
                .errors
                .iter()
                .map(|e| format!("{} {}", e.code, e.message).trim().to_string())
                .collect();
            // Keep error messages on one line whatever the registry sent.
            format!(": {}", items.join("; ").replace(['\n', '\r'], " "))
        }
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_header_parsing() {
        let mut headers = HeaderMap::new();
        headers.insert("range", "0-1023".parse().unwrap());
        assert_eq!(range_end(&headers), Some(1023));
        headers.insert("range", "bytes=0-9".parse().unwrap());
        assert_eq!(range_end(&headers), Some(9));
        assert_eq!(range_end(&HeaderMap::new()), None);
    }

    #[test]
    fn media_type_is_sniffed_from_body_when_header_is_generic() {
        let index = br#"{"schemaVersion":2,"manifests":[]}"#;
        assert_eq!(
            media_type_from_body(index).as_deref(),
            Some(media_types::OCI_INDEX)
        );
        let docker = format!(r#"{{"mediaType":"{}"}}"#, media_types::DOCKER_MANIFEST);
        assert_eq!(
            media_type_from_body(docker.as_bytes()).as_deref(),
            Some(media_types::DOCKER_MANIFEST)
        );
        assert_eq!(media_type_from_body(br#"{"mediaType":"text/plain"}"#), None);
    }

    #[test]
    fn loopback_registries_use_plain_http_and_others_https() {
        let options = ConnectionOptions::default();
        let local = RegistryClient::new("127.0.0.1:5000", &options).unwrap();
        assert_eq!(local.base_url.as_str(), "http://127.0.0.1:5000/");
        let hub = RegistryClient::new("docker.io", &options).unwrap();
        assert_eq!(hub.base_url.as_str(), "https://registry-1.docker.io/");
        let forced = ConnectionOptions {
            plain_http: Some(false),
            ..ConnectionOptions::default()
        };
        let tls = RegistryClient::new("localhost:5000", &forced).unwrap();
        assert_eq!(tls.base_url.as_str(), "https://localhost:5000/");
    }
}

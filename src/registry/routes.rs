//! HTTP routes of the distribution API: parses paths, headers and query strings, calls the
//! service, and shapes responses (status, Location, Range, digest headers). Handlers stay thin.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::{StreamExt, TryStreamExt};
use http_body_util::BodyExt as _;

use super::error::ApiError;
use super::manifest::accepts;
use super::name::{Reference, ReferenceError, RepositoryName, UploadId, is_valid_tag};
use super::service::{MAX_MANIFEST_BYTES, Page, Registry};
use super::storage::ByteStream;
use crate::digest::Digest;

pub const API_VERSION_HEADER: &str = "docker-distribution-api-version";
const CONTENT_DIGEST: &str = "docker-content-digest";
const UPLOAD_UUID: &str = "docker-upload-uuid";
const OCI_SUBJECT: &str = "oci-subject";
const OCI_FILTERS_APPLIED: &str = "oci-filters-applied";

/// What a `/v2/...` path addresses.
#[derive(Debug, PartialEq, Eq)]
pub enum Endpoint {
    Base,
    Catalog,
    Tags(String),
    Manifest(String, String),
    Blob(String, String),
    /// Upload with an optional session id (none for `.../blobs/uploads/`).
    Upload(String, Option<String>),
    Referrers(String, String),
}

impl Endpoint {
    /// A short name of the route for metrics.
    pub fn route_name(&self) -> &'static str {
        match self {
            Endpoint::Base => "base",
            Endpoint::Catalog => "catalog",
            Endpoint::Tags(_) => "tags",
            Endpoint::Manifest(..) => "manifest",
            Endpoint::Blob(..) => "blob",
            Endpoint::Upload(..) => "upload",
            Endpoint::Referrers(..) => "referrers",
        }
    }
}

/// Splits a request path below `/v2/` into an endpoint. The repository name is returned
/// unvalidated; matching works from the right because names contain `/`.
pub fn parse_endpoint(path: &str) -> Option<Endpoint> {
    let rest = path.strip_prefix("/v2")?;
    if rest.is_empty() || rest == "/" {
        return Some(Endpoint::Base);
    }
    let rest = rest.strip_prefix('/')?;
    if rest == "_catalog" {
        return Some(Endpoint::Catalog);
    }
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return Some(Endpoint::Tags(name.to_string()));
    }
    let (head, last) = rest.rsplit_once('/')?;
    let last = last.to_string();
    if let Some(name) = head.strip_suffix("/blobs/uploads") {
        let id = (!last.is_empty()).then_some(last);
        return Some(Endpoint::Upload(name.to_string(), id));
    }
    if let Some(name) = head.strip_suffix("/manifests") {
        return Some(Endpoint::Manifest(name.to_string(), last));
    }
    if let Some(name) = head.strip_suffix("/blobs") {
        return Some(Endpoint::Blob(name.to_string(), last));
    }
    if let Some(name) = head.strip_suffix("/referrers") {
        return Some(Endpoint::Referrers(name.to_string(), last));
    }
    None
}

/// What every handler shares.
pub struct AppState {
    pub registry: Registry,
    /// Longest time a request other than an upload may take (uploads are bounded by the
    /// body idle timeout instead, so large layers on slow links still get through).
    pub request_timeout: Duration,
}

/// The single entry point for `/v2/...`: routes by path shape and method.
pub async fn dispatch(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let path = request.uri().path().to_string();
    let Some(endpoint) = parse_endpoint(&path) else {
        return not_found(&path);
    };
    if matches!(endpoint, Endpoint::Upload(..)) {
        return handle(&state.registry, endpoint, request).await;
    }
    match tokio::time::timeout(
        state.request_timeout,
        handle(&state.registry, endpoint, request),
    )
    .await
    {
        Ok(response) => response,
        Err(_) => {
            tracing::warn!(%path, "request timed out");
            (StatusCode::REQUEST_TIMEOUT, "request timed out\n").into_response()
        }
    }
}

async fn handle(registry: &Registry, endpoint: Endpoint, request: Request) -> Response {
    let path = request.uri().path().to_string();
    let method = request.method().clone();
    let result = match (endpoint, method) {
        (Endpoint::Base, Method::GET | Method::HEAD) => Ok(empty(StatusCode::OK)),
        (Endpoint::Catalog, Method::GET) => match query_pairs(&request) {
            Ok(pairs) => catalog(registry, pairs).await,
            Err(e) => Err(e),
        },
        (Endpoint::Tags(name), Method::GET) => match query_pairs(&request) {
            Ok(pairs) => tags(registry, &name, pairs).await,
            Err(e) => Err(e),
        },
        (Endpoint::Manifest(name, reference), method) => {
            manifest(registry, &name, &reference, method, request).await
        }
        (Endpoint::Blob(name, digest), method) => {
            blob(registry, &name, &digest, method, request).await
        }
        (Endpoint::Upload(name, id), method) => upload(registry, &name, id, method, request).await,
        (Endpoint::Referrers(name, digest), Method::GET) => match query_pairs(&request) {
            Ok(pairs) => referrers(registry, &name, &digest, pairs).await,
            Err(e) => Err(e),
        },
        (_, method) => Err(ApiError::Unsupported(format!("{method} {path}"))),
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

pub fn not_found(path: &str) -> Response {
    let body = serde_json::json!({
        "errors": [{"code": "NOT_FOUND", "message": format!("no such endpoint: {path}"), "detail": null}]
    });
    (StatusCode::NOT_FOUND, axum::Json(body)).into_response()
}

fn empty(status: StatusCode) -> Response {
    let mut response = (status, Body::empty()).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    response
}

fn header_value(text: &str) -> Result<HeaderValue, ApiError> {
    HeaderValue::from_str(text)
        .map_err(|e| ApiError::Internal(format!("header value {text:?}: {e}")))
}

fn repository(name: &str) -> Result<RepositoryName, ApiError> {
    RepositoryName::parse(name).ok_or_else(|| ApiError::NameInvalid(format!("{name:?}")))
}

fn digest_param(text: &str) -> Result<Digest, ApiError> {
    Digest::parse(text).map_err(|e| ApiError::DigestInvalid(e.to_string()))
}

/// The query string as ordered key/value pairs (repeated keys kept).
fn query_pairs(request: &Request) -> Result<Vec<(String, String)>, ApiError> {
    axum::extract::Query::<Vec<(String, String)>>::try_from_uri(request.uri())
        .map(|q| q.0)
        .map_err(|e| ApiError::BlobUploadInvalid(format!("bad query string: {e}")))
}

fn query_one<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

fn header_str(headers: &HeaderMap, name: impl header::AsHeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn content_length(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    match header_str(headers, header::CONTENT_LENGTH) {
        None => Ok(None),
        Some(text) => text
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| ApiError::SizeInvalid(format!("bad Content-Length {text:?}"))),
    }
}

/// The request body as a byte stream that counts bytes into the metrics.
fn body_stream(registry: &Registry, request: Request) -> ByteStream {
    let metrics = registry.metrics().clone();
    TryStreamExt::map_err(
        request.into_body().into_data_stream(),
        std::io::Error::other,
    )
    .inspect_ok(move |chunk| metrics.add_bytes_in(chunk.len() as u64))
    .boxed()
}

// ---------------------------------------------------------------- listings

fn paging(pairs: &[(String, String)]) -> Result<(Option<usize>, Option<String>), ApiError> {
    let limit = match query_one(pairs, "n") {
        None => None,
        Some(n) => Some(
            n.parse::<usize>()
                .map_err(|_| ApiError::PaginationInvalid(format!("n={n:?} is not a number")))?,
        ),
    };
    Ok((limit, query_one(pairs, "last").map(str::to_string)))
}

fn page_response(
    path: &str,
    key: &str,
    name: Option<&str>,
    page: Page,
    limit: Option<usize>,
) -> Result<Response, ApiError> {
    let mut body = serde_json::Map::new();
    if let Some(name) = name {
        body.insert("name".into(), name.into());
    }
    body.insert(key.into(), page.items.into());
    let mut response = axum::Json(serde_json::Value::Object(body)).into_response();
    if let (Some(last), Some(limit)) = (page.next_last, limit) {
        let link = format!("<{path}?n={limit}&last={last}>; rel=\"next\"");
        response
            .headers_mut()
            .insert(header::LINK, header_value(&link)?);
    }
    Ok(response)
}

/// Page size used for the catalog when the client does not say.
const DEFAULT_CATALOG_PAGE: usize = 1000;

async fn catalog(registry: &Registry, pairs: Vec<(String, String)>) -> Result<Response, ApiError> {
    let (limit, last) = paging(&pairs)?;
    let limit = Some(limit.unwrap_or(DEFAULT_CATALOG_PAGE));
    let page = registry.catalog(limit, last.as_deref()).await?;
    page_response("/v2/_catalog", "repositories", None, page, limit)
}

async fn tags(
    registry: &Registry,
    name: &str,
    pairs: Vec<(String, String)>,
) -> Result<Response, ApiError> {
    let repo = repository(name)?;
    let (limit, last) = paging(&pairs)?;
    let page = registry.tags(&repo, limit, last.as_deref()).await?;
    page_response(
        &format!("/v2/{repo}/tags/list"),
        "tags",
        Some(repo.as_str()),
        page,
        limit,
    )
}

// ---------------------------------------------------------------- manifests

async fn manifest(
    registry: &Registry,
    name: &str,
    reference: &str,
    method: Method,
    request: Request,
) -> Result<Response, ApiError> {
    let repo = repository(name)?;
    let reference = Reference::parse(reference).map_err(|e| match e {
        ReferenceError::BadDigest(detail) => ApiError::DigestInvalid(detail),
        ReferenceError::BadTag(tag) => ApiError::TagInvalid(format!("{tag:?}")),
    })?;
    match method {
        Method::GET | Method::HEAD => {
            let found = registry.get_manifest(&repo, &reference).await?;
            let accept: Vec<&str> = request
                .headers()
                .get_all(header::ACCEPT)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            if !accepts(&accept, &found.manifest.media_type) {
                return Err(ApiError::ManifestUnknown(format!(
                    "{reference} is a {}, which the Accept header does not allow",
                    found.manifest.media_type
                )));
            }
            let len = found.manifest.bytes.len();
            let body = if method == Method::HEAD {
                Body::empty()
            } else {
                registry.metrics().add_bytes_out(len as u64);
                Body::from(found.manifest.bytes)
            };
            let mut response = (StatusCode::OK, body).into_response();
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                header_value(&found.manifest.media_type)?,
            );
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
            headers.insert(CONTENT_DIGEST, header_value(&found.digest.to_string())?);
            Ok(response)
        }
        Method::PUT => {
            let pairs = query_pairs(&request)?;
            let extra_tags: Vec<String> = pairs
                .iter()
                .filter(|(k, _)| k == "tag")
                .map(|(_, v)| v.clone())
                .collect();
            if let Some(bad) = extra_tags.iter().find(|t| !is_valid_tag(t)) {
                return Err(ApiError::TagInvalid(format!("{bad:?}")));
            }
            let content_type =
                header_str(request.headers(), header::CONTENT_TYPE).map(str::to_string);
            if content_length(request.headers())?.is_some_and(|n| n > MAX_MANIFEST_BYTES as u64) {
                return Err(ApiError::ManifestTooLarge(format!(
                    "manifests are limited to {MAX_MANIFEST_BYTES} bytes"
                )));
            }
            let limited = http_body_util::Limited::new(request.into_body(), MAX_MANIFEST_BYTES);
            let bytes = match limited.collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                    return Err(ApiError::ManifestTooLarge(format!(
                        "manifests are limited to {MAX_MANIFEST_BYTES} bytes"
                    )));
                }
                Err(e) => return Err(ApiError::ManifestInvalid(format!("reading body: {e}"))),
            };
            registry.metrics().add_bytes_in(bytes.len() as u64);
            let put = registry
                .put_manifest(
                    &repo,
                    &reference,
                    content_type.as_deref(),
                    bytes,
                    &extra_tags,
                )
                .await?;
            let mut response = empty(StatusCode::CREATED);
            let headers = response.headers_mut();
            headers.insert(
                header::LOCATION,
                header_value(&format!("/v2/{repo}/manifests/{}", put.digest))?,
            );
            headers.insert(CONTENT_DIGEST, header_value(&put.digest.to_string())?);
            if let Some(subject) = put.subject {
                headers.insert(OCI_SUBJECT, header_value(&subject.to_string())?);
            }
            Ok(response)
        }
        Method::DELETE => {
            registry.delete_manifest(&repo, &reference).await?;
            Ok(empty(StatusCode::ACCEPTED))
        }
        other => Err(ApiError::Unsupported(format!("{other} on a manifest"))),
    }
}

// ---------------------------------------------------------------- blobs

/// A single byte range `bytes=a-b`, `bytes=a-` or `bytes=-n`, resolved against `size`.
/// `Ok(None)` means "serve the whole blob"; `Err` means unsatisfiable.
fn parse_range(text: &str, size: u64) -> Result<Option<(u64, u64)>, ApiError> {
    let unsatisfiable = || ApiError::RangeInvalid {
        detail: format!("range {text:?} of a {size}-byte blob"),
        blob_size: Some(size),
    };
    let Some(spec) = text.trim().strip_prefix("bytes=") else {
        return Err(unsatisfiable());
    };
    if spec.contains(',') {
        // Multiple ranges are not supported: serve the whole blob, as RFC 9110 allows.
        return Ok(None);
    }
    let (start, end) = spec.split_once('-').ok_or_else(unsatisfiable)?;
    let parse = |s: &str| s.trim().parse::<u64>().map_err(|_| unsatisfiable());
    let (first, last) = match (start.trim().is_empty(), end.trim().is_empty()) {
        (true, true) => return Err(unsatisfiable()),
        (true, false) => {
            let suffix = parse(end)?;
            if suffix == 0 || size == 0 {
                return Err(unsatisfiable());
            }
            (size.saturating_sub(suffix), size - 1)
        }
        (false, true) => (parse(start)?, size.saturating_sub(1)),
        (false, false) => (parse(start)?, parse(end)?.min(size.saturating_sub(1))),
    };
    if first >= size || first > last {
        return Err(unsatisfiable());
    }
    Ok(Some((first, last)))
}

async fn blob(
    registry: &Registry,
    name: &str,
    digest: &str,
    method: Method,
    request: Request,
) -> Result<Response, ApiError> {
    let repo = repository(name)?;
    let digest = digest_param(digest)?;
    match method {
        Method::GET | Method::HEAD => {
            let size = registry.blob_size(&repo, &digest).await?;
            let range = match header_str(request.headers(), header::RANGE) {
                Some(text) => parse_range(text, size)?,
                None => None,
            };
            let (status, start, len) = match range {
                Some((first, last)) => (StatusCode::PARTIAL_CONTENT, first, last - first + 1),
                None => (StatusCode::OK, 0, size),
            };
            // With a redirecting backend, a whole-blob GET goes to the object store directly.
            if method == Method::GET
                && range.is_none()
                && let Some(url) = registry.storage().blob_redirect(&digest).await?
            {
                let mut response = empty(StatusCode::TEMPORARY_REDIRECT);
                let headers = response.headers_mut();
                headers.insert(header::LOCATION, header_value(&url)?);
                headers.insert(CONTENT_DIGEST, header_value(&digest.to_string())?);
                return Ok(response);
            }
            let body = if method == Method::HEAD {
                Body::empty()
            } else {
                let metrics = registry.metrics().clone();
                let stream = registry
                    .blob_stream(&digest, start, len)
                    .await?
                    .inspect_ok(move |chunk| metrics.add_bytes_out(chunk.len() as u64));
                Body::from_stream(stream)
            };
            let mut response = (status, body).into_response();
            let headers = response.headers_mut();
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            headers.insert(CONTENT_DIGEST, header_value(&digest.to_string())?);
            headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
            if status == StatusCode::PARTIAL_CONTENT {
                let value = format!("bytes {start}-{}/{size}", start + len - 1);
                headers.insert(header::CONTENT_RANGE, header_value(&value)?);
            }
            Ok(response)
        }
        Method::DELETE => {
            registry.delete_blob(&repo, &digest).await?;
            Ok(empty(StatusCode::ACCEPTED))
        }
        other => Err(ApiError::Unsupported(format!("{other} on a blob"))),
    }
}

// ---------------------------------------------------------------- uploads

/// 202 response describing an upload session at `offset`.
fn upload_status(
    repo: &RepositoryName,
    id: &UploadId,
    offset: u64,
    status: StatusCode,
) -> Result<Response, ApiError> {
    let mut response = empty(status);
    let headers = response.headers_mut();
    headers.insert(
        header::LOCATION,
        header_value(&format!("/v2/{repo}/blobs/uploads/{id}"))?,
    );
    headers.insert(UPLOAD_UUID, header_value(id.as_str())?);
    headers.insert(
        header::RANGE,
        header_value(&format!("0-{}", offset.saturating_sub(1)))?,
    );
    Ok(response)
}

fn blob_created(repo: &RepositoryName, digest: &Digest) -> Result<Response, ApiError> {
    let mut response = empty(StatusCode::CREATED);
    let headers = response.headers_mut();
    headers.insert(
        header::LOCATION,
        header_value(&format!("/v2/{repo}/blobs/{digest}"))?,
    );
    headers.insert(CONTENT_DIGEST, header_value(&digest.to_string())?);
    Ok(response)
}

/// Parses a PATCH `Content-Range: <start>-<end>` (also `bytes <start>-<end>/<total>`) into
/// the start offset and the length of the chunk.
fn parse_content_range(text: &str) -> Result<(u64, u64), ApiError> {
    let bad = || ApiError::BlobUploadInvalid(format!("bad Content-Range {text:?}"));
    let spec = text.trim();
    let spec = spec
        .strip_prefix("bytes=")
        .or_else(|| spec.strip_prefix("bytes "))
        .unwrap_or(spec);
    let spec = spec.split('/').next().unwrap_or(spec);
    let (start, end) = spec.split_once('-').ok_or_else(bad)?;
    let start: u64 = start.trim().parse().map_err(|_| bad())?;
    let end: u64 = end.trim().parse().map_err(|_| bad())?;
    if end < start {
        return Err(bad());
    }
    let len = (end - start).checked_add(1).ok_or_else(bad)?;
    Ok((start, len))
}

async fn upload(
    registry: &Registry,
    name: &str,
    id: Option<String>,
    method: Method,
    request: Request,
) -> Result<Response, ApiError> {
    let repo = repository(name)?;
    let Some(id) = id else {
        return match method {
            Method::POST => start_upload(registry, &repo, request).await,
            other => Err(ApiError::Unsupported(format!(
                "{other} on the uploads collection"
            ))),
        };
    };
    let id = UploadId::parse(&id).ok_or_else(|| ApiError::BlobUploadUnknown(format!("{id:?}")))?;
    match method {
        Method::GET => {
            let offset = registry.upload_offset(&repo, &id).await?;
            upload_status(&repo, &id, offset, StatusCode::NO_CONTENT)
        }
        Method::PATCH => {
            let headers = request.headers();
            let length = content_length(headers)?;
            let (start, expected_len) = match header_str(headers, header::CONTENT_RANGE) {
                Some(text) => {
                    let (start, range_len) = parse_content_range(text)?;
                    if length.is_some_and(|n| n != range_len) {
                        return Err(ApiError::SizeInvalid(format!(
                            "Content-Range {text:?} is {range_len} bytes but Content-Length is {}",
                            length.unwrap_or_default()
                        )));
                    }
                    (Some(start), Some(range_len))
                }
                None => (None, length),
            };
            let body = body_stream(registry, request);
            let offset = registry
                .append(&repo, &id, start, expected_len, body)
                .await?;
            upload_status(&repo, &id, offset, StatusCode::ACCEPTED)
        }
        Method::PUT => {
            let pairs = query_pairs(&request)?;
            let digest = query_one(&pairs, "digest")
                .ok_or_else(|| ApiError::DigestInvalid("PUT needs ?digest=".into()))?;
            let digest = digest_param(digest)?;
            let length = content_length(request.headers())?;
            let range = header_str(request.headers(), header::CONTENT_RANGE)
                .map(parse_content_range)
                .transpose()?;
            if length.unwrap_or(1) > 0 {
                // A final chunk (or a body without Content-Length): append it first.
                let (start, expected_len) = match range {
                    Some((start, len)) => (Some(start), Some(len)),
                    None => (None, length),
                };
                let body = body_stream(registry, request);
                registry
                    .append(&repo, &id, start, expected_len, body)
                    .await?;
            }
            registry.finish_upload(&repo, &id, &digest).await?;
            blob_created(&repo, &digest)
        }
        Method::DELETE => {
            registry.cancel_upload(&repo, &id).await?;
            Ok(empty(StatusCode::NO_CONTENT))
        }
        other => Err(ApiError::Unsupported(format!(
            "{other} on an upload session"
        ))),
    }
}

async fn start_upload(
    registry: &Registry,
    repo: &RepositoryName,
    request: Request,
) -> Result<Response, ApiError> {
    let pairs = query_pairs(&request)?;
    if let Some(mount) = query_one(&pairs, "mount") {
        let digest = digest_param(mount)?;
        let from = query_one(&pairs, "from").map(repository).transpose()?;
        if registry
            .try_mount(repo, &digest, from.as_ref())
            .await?
            .is_some()
        {
            return blob_created(repo, &digest);
        }
        // Not mountable: fall back to a new upload session.
    } else if let Some(digest) = query_one(&pairs, "digest") {
        let digest = digest_param(digest)?;
        let length = content_length(request.headers())?;
        let body = body_stream(registry, request);
        registry.upload_whole(repo, &digest, length, body).await?;
        return blob_created(repo, &digest);
    }
    let id = registry.start_upload(repo).await?;
    upload_status(repo, &id, 0, StatusCode::ACCEPTED)
}

// ---------------------------------------------------------------- referrers

async fn referrers(
    registry: &Registry,
    name: &str,
    digest: &str,
    pairs: Vec<(String, String)>,
) -> Result<Response, ApiError> {
    let repo = repository(name)?;
    let subject = digest_param(digest)?;
    let artifact_type = query_one(&pairs, "artifactType");
    let index = registry.referrers(&repo, &subject, artifact_type).await?;
    let mut response = axum::Json(index).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(super::manifest::OCI_INDEX),
    );
    if artifact_type.is_some() {
        headers.insert(
            OCI_FILTERS_APPLIED,
            HeaderValue::from_static("artifactType"),
        );
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_endpoints_from_the_right() {
        assert_eq!(parse_endpoint("/v2/"), Some(Endpoint::Base));
        assert_eq!(parse_endpoint("/v2/_catalog"), Some(Endpoint::Catalog));
        assert_eq!(
            parse_endpoint("/v2/a/blobs/tags/list"),
            Some(Endpoint::Tags("a/blobs".into()))
        );
        assert_eq!(
            parse_endpoint("/v2/team/app/manifests/v1"),
            Some(Endpoint::Manifest("team/app".into(), "v1".into()))
        );
        assert_eq!(
            parse_endpoint("/v2/x/blobs/uploads/"),
            Some(Endpoint::Upload("x".into(), None))
        );
        assert_eq!(
            parse_endpoint("/v2/x/blobs/uploads/abc"),
            Some(Endpoint::Upload("x".into(), Some("abc".into())))
        );
        assert_eq!(
            parse_endpoint("/v2/x/blobs/sha256:00"),
            Some(Endpoint::Blob("x".into(), "sha256:00".into()))
        );
        assert_eq!(
            parse_endpoint("/v2/x/referrers/sha256:00"),
            Some(Endpoint::Referrers("x".into(), "sha256:00".into()))
        );
        assert_eq!(parse_endpoint("/v2/x/other/y"), None);
        assert_eq!(parse_endpoint("/v3/"), None);
    }

    #[test]
    fn resolves_byte_ranges() {
        assert_eq!(parse_range("bytes=0-9", 100).unwrap(), Some((0, 9)));
        assert_eq!(parse_range("bytes=90-", 100).unwrap(), Some((90, 99)));
        assert_eq!(parse_range("bytes=-10", 100).unwrap(), Some((90, 99)));
        assert_eq!(parse_range("bytes=50-500", 100).unwrap(), Some((50, 99)));
        assert!(parse_range("bytes=100-", 100).is_err());
        assert!(parse_range("bytes=5-2", 100).is_err());
        assert!(parse_range("items=0-1", 100).is_err());
    }

    #[test]
    fn parses_content_ranges() {
        assert_eq!(parse_content_range("0-99").unwrap(), (0, 100));
        assert_eq!(parse_content_range("bytes 100-199/*").unwrap(), (100, 100));
        assert!(parse_content_range("0-18446744073709551615").is_err());
        assert!(parse_content_range("9-1").is_err());
        assert!(parse_content_range("x").is_err());
    }
}

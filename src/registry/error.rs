//! Errors the registry API returns: each maps to a distribution-spec error code and HTTP status
//! and renders as `{"errors":[{"code","message","detail"}]}`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::storage::StorageError;

/// An error reported to a registry client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("invalid repository name: {0}")]
    NameInvalid(String),
    #[error("repository name not known to registry: {0}")]
    NameUnknown(String),
    #[error("provided digest did not match uploaded content: {0}")]
    DigestInvalid(String),
    #[error("blob unknown to registry: {0}")]
    BlobUnknown(String),
    #[error("blob upload unknown to registry: {0}")]
    BlobUploadUnknown(String),
    #[error("blob upload invalid: {0}")]
    BlobUploadInvalid(String),
    #[error("manifest invalid: {0}")]
    ManifestInvalid(String),
    #[error("manifest unknown: {0}")]
    ManifestUnknown(String),
    #[error("manifest references a manifest or blob unknown to registry: {0}")]
    ManifestBlobUnknown(String),
    #[error("provided length did not match content length: {0}")]
    SizeInvalid(String),
    #[error("tag invalid: {0}")]
    TagInvalid(String),
    #[error("the operation is unsupported: {0}")]
    Unsupported(String),
    #[error("manifest too large: {0}")]
    ManifestTooLarge(String),
    #[error("requested range not satisfiable: {detail}")]
    RangeInvalid {
        detail: String,
        blob_size: Option<u64>,
    },
    /// A chunk did not start at the session's current offset.
    #[error("upload chunk out of order: {detail}")]
    UploadRangeInvalid { detail: String, offset: u64 },
    #[error("pagination parameter invalid: {0}")]
    PaginationInvalid(String),
    /// A tag protected by an `[[immutable]]` rule would move or be deleted.
    #[error("tag is immutable: {0}")]
    TagImmutable(String),
    #[error("internal storage error: {0}")]
    Internal(String),
}

impl ApiError {
    /// The error code and HTTP status of this error. Codes are the distribution-spec's, plus
    /// three that CNCF distribution also sends where the spec has none: `TAG_INVALID`,
    /// `RANGE_INVALID` and `PAGINATION_NUMBER_INVALID` (and `UNKNOWN` for internal errors).
    pub fn code_and_status(&self) -> (&'static str, StatusCode) {
        use ApiError::*;
        match self {
            NameInvalid(_) => ("NAME_INVALID", StatusCode::BAD_REQUEST),
            NameUnknown(_) => ("NAME_UNKNOWN", StatusCode::NOT_FOUND),
            DigestInvalid(_) => ("DIGEST_INVALID", StatusCode::BAD_REQUEST),
            BlobUnknown(_) => ("BLOB_UNKNOWN", StatusCode::NOT_FOUND),
            BlobUploadUnknown(_) => ("BLOB_UPLOAD_UNKNOWN", StatusCode::NOT_FOUND),
            BlobUploadInvalid(_) => ("BLOB_UPLOAD_INVALID", StatusCode::BAD_REQUEST),
            ManifestInvalid(_) => ("MANIFEST_INVALID", StatusCode::BAD_REQUEST),
            ManifestUnknown(_) => ("MANIFEST_UNKNOWN", StatusCode::NOT_FOUND),
            ManifestBlobUnknown(_) => ("MANIFEST_BLOB_UNKNOWN", StatusCode::BAD_REQUEST),
            SizeInvalid(_) => ("SIZE_INVALID", StatusCode::BAD_REQUEST),
            TagInvalid(_) => ("TAG_INVALID", StatusCode::BAD_REQUEST),
            Unsupported(_) => ("UNSUPPORTED", StatusCode::METHOD_NOT_ALLOWED),
            ManifestTooLarge(_) => ("SIZE_INVALID", StatusCode::PAYLOAD_TOO_LARGE),
            RangeInvalid { .. } => ("BLOB_UNKNOWN", StatusCode::RANGE_NOT_SATISFIABLE),
            UploadRangeInvalid { .. } => ("BLOB_UPLOAD_INVALID", StatusCode::RANGE_NOT_SATISFIABLE),
            PaginationInvalid(_) => ("PAGINATION_NUMBER_INVALID", StatusCode::BAD_REQUEST),
            TagImmutable(_) => ("DENIED", StatusCode::CONFLICT),
            Internal(_) => ("UNKNOWN", StatusCode::INTERNAL_SERVER_ERROR),
        }
    }
}

impl From<StorageError> for ApiError {
    fn from(error: StorageError) -> ApiError {
        match error {
            StorageError::UploadUnknown(id) => ApiError::BlobUploadUnknown(id),
            StorageError::UploadOutOfOrder { expected, got } => ApiError::UploadRangeInvalid {
                detail: format!("chunk starts at byte {got}, the upload is at byte {expected}"),
                offset: expected,
            },
            StorageError::DigestMismatch { expected, actual } => ApiError::DigestInvalid(format!(
                "expected {expected}, the uploaded content is {actual}"
            )),
            StorageError::SizeMismatch { expected, actual } => {
                ApiError::SizeInvalid(format!("expected {expected} bytes, received {actual}"))
            }
            StorageError::BodyRead(detail) => ApiError::BlobUploadInvalid(detail),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (code, status) = self.code_and_status();
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        } else {
            tracing::debug!(error = %self, code, "request refused");
        }
        let detail = match &self {
            ApiError::UploadRangeInvalid { offset, .. } => {
                serde_json::json!({ "offset": offset })
            }
            _ => serde_json::Value::Null,
        };
        // Internal details (file paths, OS errors) go to the log, not to the client.
        let message = match &self {
            ApiError::Internal(_) => "internal server error; see the registry log".to_string(),
            other => other.to_string(),
        };
        let body = serde_json::json!({
            "errors": [{ "code": code, "message": message, "detail": detail }]
        });
        let mut response = (status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        match &self {
            ApiError::RangeInvalid {
                blob_size: Some(size),
                ..
            } => {
                if let Ok(value) = HeaderValue::from_str(&format!("bytes */{size}")) {
                    headers.insert(header::CONTENT_RANGE, value);
                }
            }
            ApiError::UploadRangeInvalid { offset, .. } => {
                let last = offset.saturating_sub(1);
                if let Ok(value) = HeaderValue::from_str(&format!("0-{last}")) {
                    headers.insert(header::RANGE, value);
                }
            }
            _ => {}
        }
        response
    }
}

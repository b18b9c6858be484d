//! A plain HTTP client for the `/v2/` API of an in-process `imgbuild serve`: requests by
//! path, monolithic blob uploads and manifest PUTs, shared by the registry test suites.

use imgbuild::digest::Digest;
use reqwest::{Method, StatusCode};

pub struct V2Client {
    pub base: String,
    pub client: reqwest::Client,
}

impl V2Client {
    /// A client for the server at `base` (`http://host:port`).
    pub fn new(base: String) -> V2Client {
        V2Client {
            base,
            client: reqwest::Client::new(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A request to `path` on the server, or to `path` itself when it is a full URL.
    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let url = if path.starts_with("http") {
            path.to_string()
        } else {
            self.url(path)
        };
        self.client.request(method, url)
    }

    /// Uploads `data` monolithically to `repo` (asserting 201 Created); returns its digest.
    pub async fn push_blob(&self, repo: &str, data: &[u8]) -> Digest {
        let digest = Digest::sha256_of(data);
        let response = self
            .request(
                Method::POST,
                &format!("/v2/{repo}/blobs/uploads/?digest={digest}"),
            )
            .body(data.to_vec())
            .send()
            .await
            .unwrap();
        let status = response.status();
        assert_eq!(
            status,
            StatusCode::CREATED,
            "blob upload: {}",
            response.text().await.unwrap()
        );
        digest
    }

    pub async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> reqwest::Response {
        self.request(Method::PUT, &format!("/v2/{repo}/manifests/{reference}"))
            .header("Content-Type", media_type)
            .body(body.to_vec())
            .send()
            .await
            .unwrap()
    }
}

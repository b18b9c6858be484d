//! Registry credentials and authentication: Docker's `config.json` (`auths`, `credsStore`,
//! `credHelpers`), `docker-credential-*` helpers, `WWW-Authenticate` challenges (Basic and
//! Bearer), the token flow with a per-scope token cache, and `login` / `logout`.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::Deserialize;

use super::ConnectionOptions;
use super::error::{ClientError, RegistryError};
use super::registry_client::RegistryClient;
use crate::reference::DOCKER_HUB;

/// The key Docker uses for Docker Hub in `config.json` and with credential helpers.
const DOCKER_HUB_AUTH_KEY: &str = "https://index.docker.io/v1/";

/// A user name and password (or token) for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, <password hidden>)", self.username)
    }
}

impl Credentials {
    fn basic_header(&self) -> String {
        let pair = format!("{}:{}", self.username, self.password);
        format!("Basic {}", BASE64.encode(pair))
    }
}

/// The directory holding Docker's `config.json`: `$DOCKER_CONFIG`, else `~/.docker`.
pub fn docker_config_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".docker")
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DockerConfig {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
    #[serde(default)]
    creds_store: Option<String>,
    #[serde(default)]
    cred_helpers: HashMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

/// Normalizes a `config.json` key (`https://index.docker.io/v1/`, `http://host:5000/`) to the
/// registry name used in references (`docker.io`, `host:5000`).
fn normalize_auth_key(key: &str) -> String {
    let without_scheme = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = without_scheme.split('/').next().unwrap_or(without_scheme);
    match host {
        "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB.to_string(),
        other => other.to_string(),
    }
}

/// The key under which credentials for `registry` are stored by Docker.
fn auth_key_for(registry: &str) -> String {
    if registry == DOCKER_HUB {
        DOCKER_HUB_AUTH_KEY.to_string()
    } else {
        registry.to_string()
    }
}

fn credentials_error(registry: &str, reason: impl Into<String>) -> RegistryError {
    RegistryError::Credentials {
        registry: registry.to_string(),
        reason: reason.into(),
    }
}

/// Looks up credentials for `registry` in `config_dir/config.json`: a matching `credHelpers`
/// entry first, then `credsStore`, then `auths`. `Ok(None)` when none are configured.
pub fn lookup_credentials(
    config_dir: &Path,
    registry: &str,
) -> Result<Option<Credentials>, RegistryError> {
    lookup_credentials_with_path(config_dir, registry, None)
}

/// [`lookup_credentials`] with `search_path` as the PATH for finding credential helpers.
fn lookup_credentials_with_path(
    config_dir: &Path,
    registry: &str,
    search_path: Option<&str>,
) -> Result<Option<Credentials>, RegistryError> {
    let path = config_dir.join("config.json");
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(credentials_error(
                registry,
                format!("cannot read {}: {e}", path.display()),
            ));
        }
    };
    let config: DockerConfig = serde_json::from_str(&text).map_err(|e| {
        credentials_error(registry, format!("{} is not valid: {e}", path.display()))
    })?;
    let helper = config
        .cred_helpers
        .iter()
        .find(|(key, _)| normalize_auth_key(key) == registry)
        .map(|(_, helper)| helper.clone())
        .or_else(|| config.creds_store.clone().filter(|s| !s.is_empty()));
    if let Some(helper) = helper
        && let Some(credentials) = run_credential_helper(&helper, registry, search_path)?
    {
        return Ok(Some(credentials));
    }
    for (key, entry) in &config.auths {
        if normalize_auth_key(key) != registry {
            continue;
        }
        if let Some(encoded) = entry.auth.as_deref().filter(|a| !a.is_empty()) {
            let decoded = BASE64.decode(encoded.trim()).map_err(|e| {
                credentials_error(
                    registry,
                    format!("auth in {} is not base64: {e}", path.display()),
                )
            })?;
            let decoded = String::from_utf8(decoded).map_err(|_| {
                credentials_error(registry, format!("auth in {} is not UTF-8", path.display()))
            })?;
            let (username, password) = decoded.split_once(':').ok_or_else(|| {
                credentials_error(
                    registry,
                    format!("auth in {} is not user:password", path.display()),
                )
            })?;
            return Ok(Some(Credentials {
                username: username.to_string(),
                password: password.to_string(),
            }));
        }
        if let (Some(username), Some(password)) = (&entry.username, &entry.password) {
            return Ok(Some(Credentials {
                username: username.clone(),
                password: password.clone(),
            }));
        }
    }
    Ok(None)
}

/// Runs `docker-credential-<helper> get` with the server URL on stdin.
fn run_credential_helper(
    helper: &str,
    registry: &str,
    search_path: Option<&str>,
) -> Result<Option<Credentials>, RegistryError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct HelperOutput {
        username: String,
        secret: String,
    }
    let program = format!("docker-credential-{helper}");
    let mut command = Command::new(&program);
    if let Some(search_path) = search_path {
        command.env("PATH", search_path);
    }
    let mut child = command
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| credentials_error(registry, format!("cannot run {program}: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(auth_key_for(registry).as_bytes())
            .map_err(|e| credentials_error(registry, format!("{program}: {e}")))?;
    }
    let output = child
        .wait_with_output()
        .map_err(|e| credentials_error(registry, format!("{program}: {e}")))?;
    if !output.status.success() {
        let message = String::from_utf8_lossy(&output.stdout).trim().to_string();
        // Helpers report a missing entry as "credentials not found in native keychain".
        if message.contains("not found") {
            return Ok(None);
        }
        return Err(credentials_error(
            registry,
            format!("{program} get failed: {message}"),
        ));
    }
    let parsed: HelperOutput = serde_json::from_slice(&output.stdout)
        .map_err(|e| credentials_error(registry, format!("{program} printed invalid JSON: {e}")))?;
    Ok(Some(Credentials {
        username: parsed.username,
        password: parsed.secret,
    }))
}

/// A parsed `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

/// Parses `Basic realm="x"` or `Bearer realm="...",service="...",scope="..."`.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, params) = header.split_once(' ').unwrap_or((header, ""));
    let params = parse_auth_params(params);
    match scheme.to_ascii_lowercase().as_str() {
        "basic" => Some(Challenge::Basic),
        "bearer" => Some(Challenge::Bearer {
            realm: params.get("realm")?.clone(),
            service: params.get("service").cloned(),
            scope: params.get("scope").cloned(),
        }),
        _ => None,
    }
}

/// `key="quoted, value",key2=token` -> map (keys lowercased).
fn parse_auth_params(text: &str) -> HashMap<String, String> {
    let mut params = HashMap::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let after = after.trim_start();
        let (value, remaining) = if let Some(quoted) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let mut end = quoted.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, escaped)) = chars.next() {
                            value.push(escaped);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => value.push(c),
                }
            }
            (value, &quoted[end.min(quoted.len())..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_string(), &after[end..])
        };
        params.insert(key, value);
        rest = remaining.trim_start().trim_start_matches(',').trim_start();
    }
    params
}

/// Per-registry authentication state: credentials (looked up once, lazily), the scheme the
/// registry asked for, and bearer tokens cached per scope.
pub struct Authenticator {
    registry: String,
    config_dir: PathBuf,
    credentials: tokio::sync::OnceCell<Option<Credentials>>,
    state: Mutex<AuthState>,
}

#[derive(Default)]
struct AuthState {
    challenge: Option<Challenge>,
    tokens: HashMap<String, String>,
}

impl Authenticator {
    pub fn new(registry: &str, config_dir: PathBuf) -> Authenticator {
        Authenticator {
            registry: registry.to_string(),
            config_dir,
            credentials: tokio::sync::OnceCell::new(),
            state: Mutex::new(AuthState::default()),
        }
    }

    /// Uses `credentials` instead of looking them up (for `login`).
    pub fn with_credentials(self, credentials: Credentials) -> Authenticator {
        let cell = tokio::sync::OnceCell::new();
        let _ = cell.set(Some(credentials));
        Authenticator {
            credentials: cell,
            ..self
        }
    }

    async fn credentials(&self) -> Result<Option<Credentials>, RegistryError> {
        self.credentials
            .get_or_try_init(|| async { lookup_credentials(&self.config_dir, &self.registry) })
            .await
            .cloned()
    }

    fn lock_state(&self) -> std::sync::MutexGuard<'_, AuthState> {
        // A poisoned lock only means another request panicked mid-update of a cache.
        self.state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// The Authorization header to send for `scope`, if the registry asked for auth before.
    pub async fn header_for(&self, scope: &str) -> Result<Option<String>, RegistryError> {
        {
            // The guard must be dropped before the await below.
            let state = self.lock_state();
            match &state.challenge {
                None => return Ok(None),
                Some(Challenge::Bearer { .. }) => {
                    return Ok(state.tokens.get(scope).map(|t| format!("Bearer {t}")));
                }
                Some(Challenge::Basic) => {}
            }
        }
        Ok(self.credentials().await?.map(|c| c.basic_header()))
    }

    /// Handles a 401: remembers the scheme, and for Bearer fetches a token for `scope`.
    /// Returns false when there is nothing new to try (no credentials for Basic).
    pub async fn authenticate(
        &self,
        client: &RegistryClient,
        www_authenticate: Option<&str>,
        scope: &str,
    ) -> Result<bool, RegistryError> {
        let challenge = www_authenticate.and_then(parse_challenge).ok_or_else(|| {
            RegistryError::BadChallenge {
                registry: self.registry.clone(),
                reason: format!(
                    "401 with unusable WWW-Authenticate header {:?}",
                    www_authenticate.unwrap_or("")
                ),
            }
        })?;
        self.lock_state().challenge = Some(challenge.clone());
        match challenge {
            Challenge::Basic => Ok(self.credentials().await?.is_some()),
            Challenge::Bearer {
                realm,
                service,
                scope: challenge_scope,
            } => {
                // Our scope names what the request needs; the challenge's is a fallback
                // for scope-less requests such as GET /v2/.
                let token_scope = if scope.is_empty() {
                    challenge_scope.unwrap_or_default()
                } else {
                    scope.to_string()
                };
                let token = self
                    .fetch_token(client, &realm, service.as_deref(), &token_scope)
                    .await?;
                self.lock_state().tokens.insert(scope.to_string(), token);
                Ok(true)
            }
        }
    }

    /// GETs a bearer token from `realm` (with Basic credentials when configured).
    async fn fetch_token(
        &self,
        client: &RegistryClient,
        realm: &str,
        service: Option<&str>,
        scope: &str,
    ) -> Result<String, RegistryError> {
        #[derive(Deserialize)]
        struct TokenResponse {
            #[serde(default)]
            token: Option<String>,
            #[serde(default)]
            access_token: Option<String>,
        }
        let mut url = reqwest::Url::parse(realm).map_err(|e| RegistryError::BadChallenge {
            registry: self.registry.clone(),
            reason: format!("token realm {realm:?} is not a URL: {e}"),
        })?;
        {
            let mut query = url.query_pairs_mut();
            if let Some(service) = service {
                query.append_pair("service", service);
            }
            for one_scope in scope.split(' ').filter(|s| !s.is_empty()) {
                query.append_pair("scope", one_scope);
            }
        }
        let mut request = client.http().get(url);
        if let Some(credentials) = self.credentials().await? {
            request = request.header(reqwest::header::AUTHORIZATION, credentials.basic_header());
        }
        let response = request
            .send()
            .await
            .map_err(|e| RegistryError::transport(&self.registry, &e))?;
        let status = response.status();
        if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
            return Err(RegistryError::Unauthorized {
                registry: self.registry.clone(),
                detail: format!(": the token service {realm} refused the credentials"),
            });
        }
        if !status.is_success() {
            return Err(RegistryError::Status {
                registry: self.registry.clone(),
                status: status.as_u16(),
                request: format!("GET token {realm}"),
                detail: String::new(),
            });
        }
        let body: TokenResponse =
            response
                .json()
                .await
                .map_err(|e| RegistryError::BadChallenge {
                    registry: self.registry.clone(),
                    reason: format!("token response from {realm} is not valid JSON: {e}"),
                })?;
        body.token
            .or(body.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| RegistryError::BadChallenge {
                registry: self.registry.clone(),
                reason: format!("token response from {realm} has no token"),
            })
    }
}

/// Checks `username`/`password` against `registry` and saves them in `config.json`
/// (in `options.docker_config_dir` or the default directory), atomically.
pub async fn login(
    registry: &str,
    username: &str,
    password: &str,
    options: &ConnectionOptions,
) -> Result<(), ClientError> {
    let operation = format!("login {registry}");
    let fail = |e| ClientError::new(operation.clone(), e);
    let credentials = Credentials {
        username: username.to_string(),
        password: password.to_string(),
    };
    let client =
        RegistryClient::with_credentials(registry, options, credentials.clone()).map_err(fail)?;
    client.verify_login().await.map_err(fail)?;
    let dir = options
        .docker_config_dir
        .clone()
        .unwrap_or_else(docker_config_dir);
    update_config(&dir, registry, |auths| {
        let key = auth_key_for(registry);
        let pair = format!("{}:{}", credentials.username, credentials.password);
        auths.retain(|k, _| normalize_auth_key(k) != registry);
        auths.insert(key, serde_json::json!({ "auth": BASE64.encode(pair) }));
    })
    .map_err(fail)
}

/// Removes saved credentials for `registry`; returns whether there were any.
pub fn logout(registry: &str, options: &ConnectionOptions) -> Result<bool, ClientError> {
    let dir = options
        .docker_config_dir
        .clone()
        .unwrap_or_else(docker_config_dir);
    let mut removed = false;
    update_config(&dir, registry, |auths| {
        let before = auths.len();
        auths.retain(|k, _| normalize_auth_key(k) != registry);
        removed = auths.len() != before;
    })
    .map_err(|e| ClientError::new(format!("logout {registry}"), e))?;
    Ok(removed)
}

/// Read-modify-writes the `auths` object of `dir/config.json`, keeping every other field,
/// and replaces the file atomically (temp file, fsync, rename) with mode 0600.
fn update_config(
    dir: &Path,
    registry: &str,
    change: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>),
) -> Result<(), RegistryError> {
    let path = dir.join("config.json");
    let io_error = |what: String| {
        move |source| RegistryError::Io {
            what: what.clone(),
            source,
        }
    };
    let mut config: serde_json::Value = match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            credentials_error(
                registry,
                format!("{} is not valid JSON: {e}", path.display()),
            )
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => serde_json::json!({}),
        Err(e) => return Err(io_error(format!("read {}", path.display()))(e)),
    };
    let object = config.as_object_mut().ok_or_else(|| {
        credentials_error(registry, format!("{} is not a JSON object", path.display()))
    })?;
    let auths = object
        .entry("auths")
        .or_insert_with(|| serde_json::json!({}));
    if !auths.is_object() {
        *auths = serde_json::json!({});
    }
    if let Some(auths) = auths.as_object_mut() {
        change(auths);
    }
    std::fs::create_dir_all(dir).map_err(io_error(format!("create {}", dir.display())))?;
    let bytes = serde_json::to_vec_pretty(&config)
        .map_err(|e| credentials_error(registry, e.to_string()))?;
    write_atomically(&path, &bytes, 0o600)
}

/// Replaces `path` with `bytes` atomically, with permission bits `mode`.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<(), RegistryError> {
    crate::fsutil::write_file_atomic(path, bytes, Some(mode)).map_err(|source| RegistryError::Io {
        what: format!("write {}", path.display()),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_and_basic_challenges() {
        let header = r#"Bearer realm="https://auth.example.com/token",service="registry.example.com",scope="repository:a/b:pull,push""#;
        assert_eq!(
            parse_challenge(header),
            Some(Challenge::Bearer {
                realm: "https://auth.example.com/token".into(),
                service: Some("registry.example.com".into()),
                scope: Some("repository:a/b:pull,push".into()),
            })
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(
            parse_challenge("Bearer service=x"),
            None,
            "realm is required"
        );
        assert_eq!(parse_challenge("Negotiate abc"), None);
    }

    #[test]
    fn reads_auths_entries_by_normalized_key() {
        let dir = tempfile::tempdir().unwrap();
        let config = serde_json::json!({"auths": {
            "https://index.docker.io/v1/": {"auth": BASE64.encode("hub:secret")},
            "http://127.0.0.1:5001/": {"auth": BASE64.encode("me:p:w")},
        }});
        std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
        let hub = lookup_credentials(dir.path(), "docker.io")
            .unwrap()
            .unwrap();
        assert_eq!(
            (hub.username.as_str(), hub.password.as_str()),
            ("hub", "secret")
        );
        let local = lookup_credentials(dir.path(), "127.0.0.1:5001")
            .unwrap()
            .unwrap();
        assert_eq!(
            local.password, "p:w",
            "only the first ':' separates user and password"
        );
        assert_eq!(lookup_credentials(dir.path(), "other:1").unwrap(), None);
        assert_eq!(
            lookup_credentials(&dir.path().join("missing"), "x").unwrap(),
            None
        );
    }

    #[test]
    fn credential_helpers_are_run_and_missing_helpers_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let helper = bin.join("docker-credential-imgbuildtest");
        std::fs::write(
            &helper,
            "#!/bin/sh\nread server\necho \"{\\\"Username\\\":\\\"u-$server\\\",\\\"Secret\\\":\\\"s\\\"}\"\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
        let config = serde_json::json!({"credHelpers": {"127.0.0.1:5002": "imgbuildtest"},
                                        "credsStore": "imgbuild-no-such-helper"});
        std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
        let path = format!("{}:/usr/bin:/bin", bin.display());
        let creds = lookup_credentials_with_path(dir.path(), "127.0.0.1:5002", Some(&path))
            .unwrap()
            .unwrap();
        assert_eq!(
            creds.username, "u-127.0.0.1:5002",
            "the helper gets the server on stdin"
        );
        let err =
            lookup_credentials_with_path(dir.path(), "127.0.0.1:5003", Some(&path)).unwrap_err();
        assert!(
            err.to_string()
                .contains("docker-credential-imgbuild-no-such-helper"),
            "{err}"
        );
    }

    #[test]
    fn update_config_keeps_other_fields_and_replaces_entry() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"auths":{"http://h:1/":{"auth":"eDp5"}},"credsStore":"","proxies":{"a":1}}"#,
        )
        .unwrap();
        update_config(dir.path(), "h:1", |auths| {
            auths.retain(|k, _| normalize_auth_key(k) != "h:1");
            auths.insert("h:1".into(), serde_json::json!({"auth": "bmV3"}));
        })
        .unwrap();
        let text = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["proxies"]["a"], 1);
        assert_eq!(value["auths"].as_object().unwrap().len(), 1);
        assert_eq!(value["auths"]["h:1"]["auth"], "bmV3");
    }
}

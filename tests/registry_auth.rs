//! Access control of `imgbuild serve`, tried from outside: every way in that should be refused
//! (no credentials, wrong password, a user on a repository it may not push to, a token for
//! another scope, an expired token, a token signed by another key, forged tokens, path and
//! digest tricks) gets the right status and never a 500; and the real clients get in with
//! valid credentials: `docker login` + `docker push`, `skopeo --dest-creds`, `imgbuild login`
//! + `imgbuild push`, over htpasswd Basic auth and the Docker token flow.
//!
//! Needs the parts `scripts/test` starts (Docker engine, peer registry, htpasswd, openssl,
//! skopeo); without them these tests fail and say so.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use imgbuild::registry::auth::Auth;
use imgbuild::registry::auth::token::{Scope, TokenSigner, claims_for, now_secs};
use imgbuild::registry::config::ConfigFile;
use imgbuild::registry::{RegistryConfig, RunningServer, spawn};
use reqwest::StatusCode;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

fn required_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run these tests through scripts/test, which starts the peer registry and Docker")
    })
}

/// A name unique to this test process.
fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}{}x{nanos}", std::process::id())
}

/// Runs a command (optionally feeding `stdin`); returns whether it succeeded and its output.
async fn try_run(
    program: &str,
    args: &[&str],
    env: &[(&str, &Path)],
    stdin: Option<&str>,
) -> (bool, String) {
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program} (run scripts/test to install it): {e}"));
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(text.as_bytes()).await.unwrap();
        drop(pipe);
    }
    let output = child.wait_with_output().await.unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

async fn run(program: &str, args: &[&str], env: &[(&str, &Path)], stdin: Option<&str>) -> String {
    let (ok, text) = try_run(program, args, env, stdin).await;
    assert!(ok, "{program} {args:?} failed:\n{text}");
    text
}

async fn run_fails(
    program: &str,
    args: &[&str],
    env: &[(&str, &Path)],
    stdin: Option<&str>,
) -> String {
    let (ok, text) = try_run(program, args, env, stdin).await;
    assert!(!ok, "{program} {args:?} should have failed:\n{text}");
    text
}

const ALICE_PW: &str = "alice-pw";
const BOB_PW: &str = "bob-pw";
const CAROL_PW: &str = "carol-pw";

/// Users alice and bob (group devs) and carol; keys; a config file.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    async fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let htpasswd = dir.path().join("htpasswd");
        let path = htpasswd.to_str().unwrap();
        run(
            "htpasswd",
            &["-B", "-b", "-c", path, "alice", ALICE_PW],
            &[],
            None,
        )
        .await;
        run("htpasswd", &["-B", "-b", path, "bob", BOB_PW], &[], None).await;
        run(
            "htpasswd",
            &["-B", "-b", path, "carol", CAROL_PW],
            &[],
            None,
        )
        .await;
        for key in ["token.key", "other.key"] {
            let out = dir.path().join(key);
            run(
                "openssl",
                &[
                    "genpkey",
                    "-algorithm",
                    "EC",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                    "-out",
                    out.to_str().unwrap(),
                ],
                &[],
                None,
            )
            .await;
        }
        Fixture { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Starts a registry with the rules below, with or without the token flow.
    async fn start(&self, tokens: bool) -> RunningServer {
        self.start_with(tokens, false).await
    }

    async fn start_with(&self, tokens: bool, anonymous_pull: bool) -> RunningServer {
        let token_section = if tokens {
            format!("[auth.token]\nkey = {:?}\n", self.path("token.key"))
        } else {
            String::new()
        };
        let text = format!(
            r#"
[auth]
anonymous_pull = {anonymous_pull}

[auth.htpasswd]
path = {htpasswd:?}
{token_section}
[auth.groups]
devs = ["alice", "bob"]

[[auth.access]]
repository = "alice/**"
users = ["alice"]
actions = ["pull", "push", "delete"]

[[auth.access]]
repository = "shared/*"
groups = ["devs"]
actions = ["pull", "push"]

[[auth.access]]
repository = "shared/*"
users = ["*"]
actions = ["pull"]
"#,
            htpasswd = self.path("htpasswd"),
        );
        let config_path = self.path(&format!("registry-{tokens}-{anonymous_pull}.toml"));
        std::fs::write(&config_path, text).unwrap();
        let file = ConfigFile::load(&config_path).unwrap();
        let data = self.path(&format!("data-{tokens}-{anonymous_pull}"));
        let mut config = RegistryConfig::new("127.0.0.1:0".parse().unwrap(), data);
        config.auth = Some(Arc::new(Auth::load(&file.auth, false).unwrap().unwrap()));
        spawn(&config).await.unwrap()
    }
}

fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{user}:{password}")))
}

/// Sends one raw HTTP/1.1 request, so that paths reach the server exactly as written (HTTP
/// client libraries normalize `..` away). Returns the status and the response head.
async fn raw_request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    authorization: Option<&str>,
) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(value) = authorization {
        request.push_str(&format!("Authorization: {value}\r\n"));
    }
    request.push_str("Content-Length: 0\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    (status, text)
}

/// The distribution error code of a response body.
fn error_code(text: &str) -> String {
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    let start = body.find('{').unwrap_or(0);
    let value: serde_json::Value = serde_json::from_str(&body[start..]).unwrap_or_default();
    value["errors"][0]["code"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Every path and digest trick is refused with `expected`, never a 500.
async fn assert_tricks_refused(
    addr: std::net::SocketAddr,
    authorization: Option<&str>,
    cases: &[(&str, &str, u16)],
) {
    for (method, path, expected) in cases {
        let (status, text) = raw_request(addr, method, path, authorization).await;
        assert_eq!(
            status, *expected,
            "{method} {path} with {authorization:?}:\n{text}"
        );
    }
}

/// Path and digest tricks with the status expected with valid credentials and without any:
/// invalid repository names are refused before any rule sees them (400), invalid digests in a
/// valid repository need credentials first (401, then 400), unroutable paths are 404.
fn path_tricks(long: &str) -> Vec<(&'static str, String, u16, u16)> {
    vec![
        (
            "GET",
            "/v2/alice/../carol/manifests/latest".into(),
            400,
            400,
        ),
        (
            "GET",
            "/v2/alice/%2e%2e/carol/manifests/latest".into(),
            400,
            400,
        ),
        ("GET", "/v2/alice/%2E%2E/tags/list".into(), 400, 400),
        ("POST", "/v2/alice/../carol/blobs/uploads/".into(), 400, 400),
        ("GET", "/v2/Alice/app/manifests/latest".into(), 400, 400),
        ("GET", "/v2/alice/APP/tags/list".into(), 400, 400),
        (
            "GET",
            format!("/v2/alice/{long}/manifests/latest"),
            400,
            400,
        ),
        ("GET", "/v2/../v2/alice/app/tags/list".into(), 400, 400),
        ("GET", "/v2/alice/app/blobs/sha256:..".into(), 400, 401),
        ("GET", "/v2/alice/app/blobs/sha256:..%2f..".into(), 400, 401),
        (
            "GET",
            "/v2/alice/app/manifests/sha256:..%2F..%2Fetc".into(),
            400,
            401,
        ),
        ("GET", "/v2/alice/app/blobs/sha256:../..".into(), 404, 404),
        (
            "DELETE",
            "/v2/alice/app/blobs/sha256:../../x".into(),
            404,
            404,
        ),
    ]
}

/// The tricks as (method, path, expected status) for a client with or without credentials.
fn trick_cases<'a>(
    tricks: &'a [(&'static str, String, u16, u16)],
    credentials: bool,
) -> Vec<(&'static str, &'a str, u16)> {
    tricks
        .iter()
        .map(|(m, p, with, without)| (*m, p.as_str(), if credentials { *with } else { *without }))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_refuses_every_way_in_and_allows_what_the_rules_say() {
    let fixture = Fixture::new().await;
    let server = fixture.start(false).await;
    let addr = server.addr;
    let alice = basic("alice", ALICE_PW);
    let carol = basic("carol", CAROL_PW);

    // No credentials, wrong password, unknown user, garbage: 401 with a Basic challenge.
    for authorization in [
        None,
        Some(basic("alice", "wrong")),
        Some(basic("mallory", ALICE_PW)),
        Some(basic("", "")),
        Some("Basic !!!".to_string()),
        Some("Bearer not-a-token".to_string()),
        Some("Negotiate abc".to_string()),
    ] {
        let (status, text) = raw_request(addr, "GET", "/v2/", authorization.as_deref()).await;
        assert_eq!(status, 401, "{authorization:?}: {text}");
        assert!(
            text.to_ascii_lowercase()
                .contains("www-authenticate: basic realm=\"imgbuild\""),
            "{text}"
        );
        assert_eq!(error_code(&text), "UNAUTHORIZED");
    }
    assert_eq!(raw_request(addr, "GET", "/v2/", Some(&alice)).await.0, 200);

    // Unauthenticated writes are refused; so are reads without anonymous_pull.
    let (status, _) = raw_request(addr, "POST", "/v2/alice/app/blobs/uploads/", None).await;
    assert_eq!(status, 401);
    let (status, _) = raw_request(addr, "GET", "/v2/shared/x/tags/list", None).await;
    assert_eq!(status, 401);

    // A valid user on a repository it may not push to (or read): 403 DENIED.
    let (status, text) =
        raw_request(addr, "POST", "/v2/alice/app/blobs/uploads/", Some(&carol)).await;
    assert_eq!(status, 403, "{text}");
    assert_eq!(error_code(&text), "DENIED");
    let (status, _) = raw_request(addr, "GET", "/v2/alice/app/tags/list", Some(&carol)).await;
    assert_eq!(status, 403);
    let (status, _) = raw_request(addr, "POST", "/v2/shared/x/blobs/uploads/", Some(&carol)).await;
    assert_eq!(status, 403, "carol may only pull shared/*");
    let (status, _) = raw_request(
        addr,
        "DELETE",
        "/v2/shared/x/manifests/latest",
        Some(&basic("bob", BOB_PW)),
    )
    .await;
    assert_eq!(status, 403, "no rule lets bob delete");

    // What the rules allow gets through to the API.
    let (status, text) =
        raw_request(addr, "POST", "/v2/alice/app/blobs/uploads/", Some(&alice)).await;
    assert_eq!(status, 202, "{text}");
    let (status, _) = raw_request(
        addr,
        "POST",
        "/v2/shared/x/blobs/uploads/",
        Some(&basic("bob", BOB_PW)),
    )
    .await;
    assert_eq!(status, 202);
    let (status, _) = raw_request(addr, "GET", "/v2/shared/x/tags/list", Some(&carol)).await;
    assert_eq!(
        status, 404,
        "carol may pull shared/x, which does not exist yet"
    );

    // Path and digest tricks: refused as invalid names/digests, with or without credentials.
    let long = "a".repeat(300);
    let tricks = path_tricks(&long);
    assert_tricks_refused(addr, Some(&alice), &trick_cases(&tricks, true)).await;
    assert_tricks_refused(addr, None, &trick_cases(&tricks, false)).await;
    assert!(
        !fixture.path("data-false-false").join("carol").exists() && !fixture.path("carol").exists(),
        "nothing was written outside the repositories addressed"
    );

    // A blob upload by alice, monolithic, then a pull by carol is refused.
    let client = reqwest::Client::new();
    let blob = b"hello".to_vec();
    let digest = format!("sha256:{}", hex_sha256(&blob));
    let response = client
        .post(format!(
            "http://{addr}/v2/alice/app/blobs/uploads/?digest={digest}"
        ))
        .header("authorization", &alice)
        .body(blob)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let response = client
        .get(format!("http://{addr}/v2/alice/app/blobs/{digest}"))
        .header("authorization", &carol)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);

    // Cross-repository mount from a repository bob may not pull becomes a plain upload.
    let response = client
        .post(format!(
            "http://{addr}/v2/shared/x/blobs/uploads/?mount={digest}&from=alice/app"
        ))
        .header("authorization", basic("bob", BOB_PW))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::ACCEPTED,
        "no mount from a repository bob cannot read"
    );

    // The catalog lists only what the user may pull.
    let catalog: serde_json::Value = client
        .get(format!("http://{addr}/v2/_catalog"))
        .header("authorization", &carol)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(catalog["repositories"], serde_json::json!([]), "{catalog}");
    let catalog: serde_json::Value = client
        .get(format!("http://{addr}/v2/_catalog"))
        .header("authorization", &alice)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(catalog["repositories"], serde_json::json!(["alice/app"]));
    server.stop().await.unwrap();
}

fn hex_sha256(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Fetches a token from the server's `/token` endpoint.
async fn fetch_token(
    addr: std::net::SocketAddr,
    credentials: Option<(&str, &str)>,
    scope: &str,
) -> (StatusCode, serde_json::Value) {
    let mut request = reqwest::Client::new().get(format!(
        "http://{addr}/token?service=imgbuild&scope={scope}"
    ));
    if let Some((user, password)) = credentials {
        request = request.basic_auth(user, Some(password));
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or_default())
}

fn token_claims(token: &str) -> serde_json::Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_flow_refuses_every_way_in_and_grants_only_allowed_scopes() {
    let fixture = Fixture::new().await;
    let server = fixture.start(true).await;
    let addr = server.addr;

    // No credentials: a Bearer challenge pointing at our /token, with the scope needed.
    let (status, text) = raw_request(addr, "GET", "/v2/", None).await;
    assert_eq!(status, 401);
    let expected =
        format!("www-authenticate: bearer realm=\"http://{addr}/token\",service=\"imgbuild\"");
    assert!(text.to_ascii_lowercase().contains(&expected), "{text}");
    let (status, text) = raw_request(addr, "POST", "/v2/alice/app/blobs/uploads/", None).await;
    assert_eq!(status, 401);
    assert!(
        text.contains("scope=\"repository:alice/app:pull,push\""),
        "{text}"
    );

    // Wrong password at /token: 401.
    let (status, _) =
        fetch_token(addr, Some(("alice", "wrong")), "repository:alice/app:pull").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = fetch_token(addr, Some(("mallory", "x")), "repository:alice/app:pull").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // alice gets what she asked for; the token works for that repository.
    let (status, body) = fetch_token(
        addr,
        Some(("alice", ALICE_PW)),
        "repository:alice/app:pull,push",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let alice_token = body["token"].as_str().unwrap().to_string();
    assert_eq!(body["access_token"], body["token"]);
    assert!(body["expires_in"].as_u64().unwrap() > 0);
    assert!(body["issued_at"].is_string());
    let claims = token_claims(&alice_token);
    assert_eq!(claims["sub"], "alice");
    assert_eq!(
        claims["access"],
        serde_json::json!([{"type": "repository", "name": "alice/app", "actions": ["pull", "push"]}])
    );
    let (status, text) = raw_request(
        addr,
        "POST",
        "/v2/alice/app/blobs/uploads/",
        Some(&bearer(&alice_token)),
    )
    .await;
    assert_eq!(status, 202, "{text}");
    assert_eq!(
        raw_request(addr, "GET", "/v2/", Some(&bearer(&alice_token)))
            .await
            .0,
        200
    );

    // A token for another scope: 401 insufficient_scope.
    let (status, text) = raw_request(
        addr,
        "POST",
        "/v2/alice/other/blobs/uploads/",
        Some(&bearer(&alice_token)),
    )
    .await;
    assert_eq!(status, 401, "{text}");
    assert!(text.contains("error=\"insufficient_scope\""), "{text}");
    let (status, _) = raw_request(
        addr,
        "DELETE",
        "/v2/alice/app/manifests/latest",
        Some(&bearer(&alice_token)),
    )
    .await;
    assert_eq!(status, 401, "the token has no delete");

    // carol asks for push on alice/app: the token grants nothing there.
    let (status, body) = fetch_token(
        addr,
        Some(("carol", CAROL_PW)),
        "repository:alice/app:pull,push",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let carol_token = body["token"].as_str().unwrap().to_string();
    assert_eq!(
        token_claims(&carol_token)["access"][0]["actions"],
        serde_json::json!([])
    );
    let (status, _) = raw_request(
        addr,
        "POST",
        "/v2/alice/app/blobs/uploads/",
        Some(&bearer(&carol_token)),
    )
    .await;
    assert_eq!(status, 401);
    // carol may pull shared/*, but not push there.
    let (_, body) = fetch_token(
        addr,
        Some(("carol", CAROL_PW)),
        "repository:shared/x:pull,push",
    )
    .await;
    assert_eq!(
        token_claims(body["token"].as_str().unwrap())["access"][0]["actions"],
        serde_json::json!(["pull"])
    );

    // Anonymous tokens grant nothing without anonymous_pull.
    let (status, body) = fetch_token(addr, None, "repository:shared/x:pull").await;
    assert_eq!(status, StatusCode::OK);
    let anonymous = body["token"].as_str().unwrap().to_string();
    assert_eq!(token_claims(&anonymous)["sub"], "");
    let (status, _) = raw_request(
        addr,
        "GET",
        "/v2/shared/x/tags/list",
        Some(&bearer(&anonymous)),
    )
    .await;
    assert_eq!(status, 401);

    // Expired, signed by another key, for another service, forged "none" and HS256 tokens.
    let scopes = [Scope::Repository {
        name: "alice/app".into(),
        actions: [
            imgbuild::registry::auth::access::Action::Push,
            imgbuild::registry::auth::access::Action::Pull,
        ]
        .into(),
    }];
    let signer = TokenSigner::load(&fixture.path("token.key")).unwrap();
    let other_signer = TokenSigner::load(&fixture.path("other.key")).unwrap();
    let mut expired = claims_for(
        "imgbuild",
        "imgbuild",
        Some("alice"),
        &scopes,
        Duration::from_secs(60),
    );
    expired.exp = now_secs() - 3600;
    expired.nbf = now_secs() - 7200;
    expired.iat = now_secs() - 7200;
    let fresh = claims_for(
        "imgbuild",
        "imgbuild",
        Some("alice"),
        &scopes,
        Duration::from_secs(60),
    );
    let other_service = claims_for(
        "imgbuild",
        "elsewhere",
        Some("alice"),
        &scopes,
        Duration::from_secs(60),
    );
    let other_issuer = claims_for(
        "mallory",
        "imgbuild",
        Some("alice"),
        &scopes,
        Duration::from_secs(60),
    );
    let mut not_yet = fresh.clone();
    not_yet.nbf = now_secs() + 3600;
    let valid = signer.sign(&fresh).unwrap();
    let payload = valid.split('.').nth(1).unwrap();
    let none_header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
    let hs_header = URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","typ":"JWT"}"#);
    let refused = [
        ("expired", signer.sign(&expired).unwrap()),
        ("another key", other_signer.sign(&fresh).unwrap()),
        ("another service", signer.sign(&other_service).unwrap()),
        ("another issuer", signer.sign(&other_issuer).unwrap()),
        ("not yet valid", signer.sign(&not_yet).unwrap()),
        ("alg none", format!("{none_header}.{payload}.")),
        (
            "alg HS256",
            format!(
                "{hs_header}.{payload}.{}",
                URL_SAFE_NO_PAD.encode([0u8; 32])
            ),
        ),
        ("garbage", "a.b.c".to_string()),
        ("tampered", {
            let mut claims = token_claims(&valid);
            claims["access"][0]["name"] = "carol/app".into();
            let parts: Vec<&str> = valid.split('.').collect();
            format!(
                "{}.{}.{}",
                parts[0],
                URL_SAFE_NO_PAD.encode(claims.to_string()),
                parts[2]
            )
        }),
    ];
    for (what, token) in &refused {
        let (status, text) = raw_request(
            addr,
            "POST",
            "/v2/alice/app/blobs/uploads/",
            Some(&bearer(token)),
        )
        .await;
        assert_eq!(status, 401, "{what}: {text}");
        assert!(text.contains("error=\"invalid_token\""), "{what}: {text}");
        assert!(
            text.contains("scope=\"repository:alice/app:pull,push\""),
            "{what}: {text}"
        );
    }
    let (status, _) = raw_request(
        addr,
        "POST",
        "/v2/alice/app/blobs/uploads/",
        Some(&bearer(&valid)),
    )
    .await;
    assert_eq!(
        status, 202,
        "the same claims signed by the right key get in"
    );

    // The catalog needs registry:catalog:*, and lists only what the user may pull.
    let (status, _) = raw_request(addr, "GET", "/v2/_catalog", Some(&bearer(&alice_token))).await;
    assert_eq!(status, 401);
    let (_, body) = fetch_token(addr, Some(("carol", CAROL_PW)), "registry:catalog:*").await;
    let (status, text) = raw_request(
        addr,
        "GET",
        "/v2/_catalog",
        Some(&bearer(body["token"].as_str().unwrap())),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("\"repositories\":[]"), "{text}");

    // Tricks with a valid token: invalid names and digests are 400, never 500.
    let long = "a".repeat(300);
    let tricks = path_tricks(&long);
    assert_tricks_refused(
        addr,
        Some(&bearer(&alice_token)),
        &trick_cases(&tricks, true),
    )
    .await;
    assert_tricks_refused(addr, None, &trick_cases(&tricks, false)).await;

    // /token refuses a service it is not, and scopes for invalid names grant nothing.
    let response = reqwest::Client::new()
        .get(format!(
            "http://{addr}/token?service=elsewhere&scope=repository:alice/app:pull"
        ))
        .basic_auth("alice", Some(ALICE_PW))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let (_, body) = fetch_token(
        addr,
        Some(("alice", ALICE_PW)),
        "repository:alice/../carol:pull,push",
    )
    .await;
    assert_eq!(
        token_claims(body["token"].as_str().unwrap())["access"],
        serde_json::json!([])
    );

    // POST /token with the OAuth2 password grant.
    let response = reqwest::Client::new()
        .post(format!("http://{addr}/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "grant_type=password&username=alice&password={ALICE_PW}&service=imgbuild\
             &scope=repository%3Aalice%2Fapp%3Apull&client_id=test"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        token_claims(body["access_token"].as_str().unwrap())["access"][0]["actions"],
        serde_json::json!(["pull"])
    );
    let response = reqwest::Client::new()
        .post(format!("http://{addr}/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=password&username=alice&password=wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_pull_lets_anyone_read_but_never_write() {
    let fixture = Fixture::new().await;
    let peer = required_env("IMGBUILD_TEST_PEER_REGISTRY");
    for tokens in [false, true] {
        let server = fixture.start_with(tokens, true).await;
        let addr = server.addr;
        let repository = format!("shared/{}", unique("anon"));
        let destination = format!("docker://{addr}/{repository}:v1");
        run(
            "skopeo",
            &[
                "copy",
                "--src-tls-verify=false",
                "--dest-tls-verify=false",
                "--dest-creds",
                &format!("bob:{BOB_PW}"),
                &format!("docker://{peer}/test/busybox:latest"),
                &destination,
            ],
            &[],
            None,
        )
        .await;
        // skopeo without credentials reads it.
        let inspected = run(
            "skopeo",
            &["inspect", "--raw", "--tls-verify=false", &destination],
            &[],
            None,
        )
        .await;
        assert!(
            inspected.contains("schemaVersion"),
            "tokens={tokens}: {inspected}"
        );
        // Writes and deletes without credentials are refused.
        let (status, _) = raw_request(
            addr,
            "POST",
            &format!("/v2/{repository}/blobs/uploads/"),
            None,
        )
        .await;
        assert_eq!(status, 401, "tokens={tokens}");
        let (status, _) = raw_request(
            addr,
            "DELETE",
            &format!("/v2/{repository}/manifests/v1"),
            None,
        )
        .await;
        assert_eq!(status, 401, "tokens={tokens}");
        if tokens {
            // An anonymous token asked for push grants pull only.
            let (_, body) =
                fetch_token(addr, None, &format!("repository:{repository}:pull,push")).await;
            let token = body["token"].as_str().unwrap();
            assert_eq!(
                token_claims(token)["access"][0]["actions"],
                serde_json::json!(["pull"])
            );
            let (status, _) = raw_request(
                addr,
                "POST",
                &format!("/v2/{repository}/blobs/uploads/"),
                Some(&bearer(token)),
            )
            .await;
            assert_eq!(status, 401);
        } else {
            let (status, text) =
                raw_request(addr, "GET", &format!("/v2/{repository}/tags/list"), None).await;
            assert_eq!(status, 200, "{text}");
        }
        server.stop().await.unwrap();
    }
}

/// Pulls the base image into Docker and returns its name.
async fn docker_base() -> String {
    let base = required_env("IMGBUILD_TEST_BASE_IMAGE");
    run("docker", &["pull", "-q", &base], &[], None).await;
    base
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_login_and_push_through_the_token_flow() {
    let fixture = Fixture::new().await;
    let server = fixture.start(true).await;
    let ours = server.addr.to_string();
    let docker_config = fixture.path("docker-config");
    std::fs::create_dir_all(&docker_config).unwrap();
    let env = [("DOCKER_CONFIG", docker_config.as_path())];
    let base = docker_base().await;

    let refused = run_fails(
        "docker",
        &["login", &ours, "-u", "alice", "--password-stdin"],
        &env,
        Some("wrong\n"),
    )
    .await;
    assert!(refused.to_lowercase().contains("unauthorized"), "{refused}");
    let logged_in = run(
        "docker",
        &["login", &ours, "-u", "alice", "--password-stdin"],
        &env,
        Some(&format!("{ALICE_PW}\n")),
    )
    .await;
    assert!(logged_in.contains("Login Succeeded"), "{logged_in}");

    let image = format!("{ours}/alice/{}:v1", unique("docker"));
    run("docker", &["tag", &base, &image], &env, None).await;
    let pushed = run("docker", &["push", &image], &env, None).await;
    assert!(pushed.contains("digest: sha256:"), "{pushed}");
    run("docker", &["rmi", &image], &env, None).await;
    run("docker", &["pull", &image], &env, None).await;

    // bob is logged in but may not push to alice's repositories.
    run(
        "docker",
        &["login", &ours, "-u", "bob", "--password-stdin"],
        &env,
        Some(&format!("{BOB_PW}\n")),
    )
    .await;
    let denied = format!("{ours}/alice/{}:v1", unique("denied"));
    run("docker", &["tag", &base, &denied], &env, None).await;
    let refused = run_fails("docker", &["push", &denied], &env, None).await;
    assert!(
        refused.contains("denied") || refused.contains("unauthorized"),
        "{refused}"
    );
    run("docker", &["logout", &ours], &env, None).await;
    let _ = try_run("docker", &["rmi", &image, &denied], &[], None).await;
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_copies_with_credentials_over_basic_and_token_auth() {
    let fixture = Fixture::new().await;
    let peer = required_env("IMGBUILD_TEST_PEER_REGISTRY");
    for tokens in [false, true] {
        let server = fixture.start(tokens).await;
        let ours = server.addr.to_string();
        let source = format!("docker://{peer}/test/busybox:latest");
        let destination = format!("docker://{ours}/shared/{}:v1", unique("skopeo"));
        let creds = format!("bob:{BOB_PW}");
        let no_tls = ["--src-tls-verify=false", "--dest-tls-verify=false"];
        let copy = |creds: String| {
            let source = source.clone();
            let destination = destination.clone();
            async move {
                try_run(
                    "skopeo",
                    &[
                        "copy",
                        no_tls[0],
                        no_tls[1],
                        "--dest-creds",
                        &creds,
                        &source,
                        &destination,
                    ],
                    &[],
                    None,
                )
                .await
            }
        };
        let (ok, text) = copy("bob:wrong".to_string()).await;
        assert!(!ok, "tokens={tokens}: wrong password must fail:\n{text}");
        let (ok, text) = copy(format!("carol:{CAROL_PW}")).await;
        assert!(
            !ok,
            "tokens={tokens}: carol may not push to shared/*:\n{text}"
        );
        let (ok, text) = copy(creds.clone()).await;
        assert!(ok, "tokens={tokens}: {text}");
        let inspected = run(
            "skopeo",
            &[
                "inspect",
                "--raw",
                "--tls-verify=false",
                "--creds",
                &format!("carol:{CAROL_PW}"),
                &destination,
            ],
            &[],
            None,
        )
        .await;
        assert!(inspected.contains("schemaVersion"), "{inspected}");
        server.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imgbuild_login_and_push_over_basic_and_token_auth() {
    let fixture = Fixture::new().await;
    let base = required_env("IMGBUILD_TEST_BASE_IMAGE");
    let root = fixture.path("store");
    let imgbuild = env!("CARGO_BIN_EXE_imgbuild");
    let docker_config = fixture.path("imgbuild-docker-config");
    std::fs::create_dir_all(&docker_config).unwrap();
    let env = [("DOCKER_CONFIG", docker_config.as_path())];
    let store = ["--root", root.to_str().unwrap()];
    run(
        imgbuild,
        &[&store[..], &["pull", "-q", &base]].concat(),
        &env,
        None,
    )
    .await;
    for tokens in [false, true] {
        let server = fixture.start(tokens).await;
        let ours = server.addr.to_string();
        let destination = format!("{ours}/alice/{}:v1", unique("ib"));
        let refused = run_fails(
            imgbuild,
            &[&store[..], &["push", &base, &destination]].concat(),
            &env,
            None,
        )
        .await;
        assert!(
            refused.contains("401") || refused.to_lowercase().contains("unauthorized"),
            "tokens={tokens}: {refused}"
        );
        run_fails(
            imgbuild,
            &[
                &store[..],
                &["login", &ours, "-u", "alice", "--password-stdin"],
            ]
            .concat(),
            &env,
            Some("wrong\n"),
        )
        .await;
        run(
            imgbuild,
            &[
                &store[..],
                &["login", &ours, "-u", "alice", "--password-stdin"],
            ]
            .concat(),
            &env,
            Some(&format!("{ALICE_PW}\n")),
        )
        .await;
        run(
            imgbuild,
            &[&store[..], &["push", &base, &destination]].concat(),
            &env,
            None,
        )
        .await;
        let client = reqwest::Client::new();
        let tag = destination.rsplit_once(':').unwrap();
        let repo = tag.0.trim_start_matches(&format!("{ours}/"));
        let response = client
            .get(format!("http://{ours}/v2/{repo}/tags/list"))
            .header("authorization", basic("alice", ALICE_PW))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "tokens={tokens}");
        let tags: serde_json::Value = response.json().await.unwrap();
        assert_eq!(tags["tags"], serde_json::json!(["v1"]));
        run(
            imgbuild,
            &[&store[..], &["logout", &ours]].concat(),
            &env,
            None,
        )
        .await;
        server.stop().await.unwrap();
    }
}
